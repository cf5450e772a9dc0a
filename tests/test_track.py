"""Tests of etemseg.tracking: hand-made disc movies with known answers and the simulator's truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy import ndimage

from etemseg.errors import ConfigError, EtemsegError
from etemseg.analysis.scoring import raster_relabel
from etemseg.synth import SynthParams, simulate, simulate_tracks
from etemseg.tracking import (
    EVENTS_SCHEMA,
    estimate_drift,
    frames_table,
    link,
    link_movie,
    overlap_pairs,
    overlap_table,
)

PS = 0.2  # nm per px
FPS = 400.0
MODES = ["overlap", "centroid"]


# ------------------------------------------------------------------------------------------
# helpers: draw discs, measure components (bincount; independent of etemseg.stages.measure)


def paint(shape, discs, *, components=True):
    """Label image of discs ``(y, x, r)`` (px); connected components in raster order (8-conn.)
    like the pipeline, or one id per disc (in list order) when ``components`` is False."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    if components:
        mask = np.zeros(shape, bool)
        for y, x, r in discs:
            mask |= (yy - y) ** 2 + (xx - x) ** 2 < r * r
        lab, _ = ndimage.label(mask, np.ones((3, 3), bool))
        return lab.astype(np.int32)
    lab = np.zeros(shape, np.int32)
    for i, (y, x, r) in enumerate(discs, start=1):
        lab[(yy - y) ** 2 + (xx - x) ** 2 < r * r] = i
    return lab


def measure(lab, frame, ps=PS, fps=FPS):
    """Detections table of a label image (labels 1..n, all present)."""
    w = lab.shape[1]
    n = int(lab.max())
    flat = lab.ravel().astype(np.int64)
    yy, xx = np.divmod(np.arange(flat.size), w)
    area = np.bincount(flat, minlength=n + 1)[1:].astype(float)
    assert (area > 0).all()
    x = np.bincount(flat, weights=xx, minlength=n + 1)[1:] / area
    y = np.bincount(flat, weights=yy, minlength=n + 1)[1:] / area
    edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    return pd.DataFrame({
        "movie": "m", "frame": np.full(n, frame, np.int64), "time_s": frame / fps,
        "label": np.arange(1, n + 1, dtype=np.int64),
        "x_nm": x * ps, "y_nm": y * ps, "x_px": x, "y_px": y,
        "area_nm2": area * ps * ps, "area_px": area,
        "eq_diameter_nm": 2 * np.sqrt(area / np.pi) * ps,
        "touches_border": np.isin(np.arange(1, n + 1), edge),
    })


def movie(frames, shape=(64, 96), *, components=True):
    """``frames``: list of disc lists -> (label images, detections)."""
    labs = [paint(shape, d, components=components) for d in frames]
    parts = [measure(lab, f) for f, lab in enumerate(labs)]
    det = pd.concat([p for p in parts if len(p)], ignore_index=True)
    return labs, det


def run(mode, labs, det, **kw):
    src = (lambda f: labs[f]) if mode == "overlap" else None
    kw.setdefault("all_frames", np.arange(len(labs)))
    return link_movie(det, src, frame_shape=labs[0].shape, **kw)


def pid(traj, frame, y, x):
    """Trajectory id of the particle nearest to (y, x) px in ``frame``."""
    t = traj[traj.frame == frame]
    k = np.argmin((t.y_px - y) ** 2 + (t.x_px - x) ** 2)
    return int(t.particle.iloc[k])


STATIC = (50, 80, 5)  # a particle that just sits there


# ------------------------------------------------------------------------------------------
# overlap_pairs


def test_overlap_pairs_contingency_and_shift():
    a = np.zeros((6, 8), np.int32)
    b = np.zeros((6, 8), np.int32)
    a[1:3, 1:4] = 1  # 6 px
    a[4:6, 5:8] = 2  # 6 px
    b[1:3, 2:5] = 7  # a1 shifted right by one
    b[4:6, 0:2] = 3
    df = overlap_pairs(a, b)
    assert df.to_dict("list") == {"a": [1], "b": [7], "n_px": [4]}
    df = overlap_pairs(a, b, shift=(0, 1))  # a(i, j) vs b(i, j + 1): exact match of a1
    assert df.to_dict("list") == {"a": [1], "b": [7], "n_px": [6]}
    df = overlap_pairs(a, b, shift=(0, -5))  # a2 columns 5..7 vs b columns 0..2
    assert df.to_dict("list") == {"a": [2], "b": [3], "n_px": [4]}
    # large ids take the np.unique path
    big = a.astype(np.int64) * 10**7
    df = overlap_pairs(big, b * 10**6, shift=(0, 1))
    assert df.to_dict("list") == {"a": [10**7], "b": [7 * 10**6], "n_px": [6]}
    assert list(overlap_pairs(a, np.zeros_like(a)).columns) == ["a", "b", "n_px"]
    with pytest.raises(EtemsegError):
        overlap_pairs(a, b[:5])


@pytest.mark.parametrize("level", [0.1, 0.9])  # 0.9: sparse, most 8 x 8 tiles of la are empty
@pytest.mark.parametrize("shift", [(0, 0), (1, -2), (-3, 4), (9, -13), (-8, 8)])
def test_overlap_pairs_matches_reference(shift, level):
    rng = np.random.default_rng(7)
    smooth = [ndimage.gaussian_filter(rng.standard_normal((70, 90)), 2) for _ in range(2)]
    smooth = [s / s.std() for s in smooth]
    la, _ = ndimage.label(smooth[0] > level, np.ones((3, 3)))
    lb, _ = ndimage.label(smooth[1] > level, np.ones((3, 3)))
    dy, dx = shift
    h, w = la.shape
    a = la[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
    b = lb[max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)]
    both = (a > 0) & (b > 0)
    ref = (pd.DataFrame({"a": a[both].astype(np.int64), "b": b[both].astype(np.int64)})
           .value_counts().rename("n_px").reset_index().sort_values(["a", "b"])
           .reset_index(drop=True))
    got = overlap_pairs(la, lb, shift=shift)
    pd.testing.assert_frame_equal(got, ref, check_dtype=False)
    assert got.dtypes.tolist() == [np.int64] * 3
    # uint16 / uint32 label images give the same table
    pd.testing.assert_frame_equal(overlap_pairs(la.astype(np.uint16), lb.astype(np.uint32),
                                                shift=shift), got)


@pytest.mark.parametrize("scale", [7.0, 60.0])  # 60: more pairs than the first buffer holds
def test_neighbour_search_matches_brute_force(scale):
    from etemseg.tracking.neighbours import near_pairs

    rng = np.random.default_rng(3)
    ya, xa, ka = rng.random(300) * 50, rng.random(300) * 80 - 20, rng.integers(0, 5, 300)
    yb, xb, kb = rng.random(400) * 50, rng.random(400) * 80 - 20, rng.integers(0, 5, 400)
    reach = rng.random(300) * scale
    i, j, d = near_pairs(ya, xa, ka, reach, yb, xb, kb)
    dist = np.hypot(ya[:, None] - yb[None], xa[:, None] - xb[None])
    hit = (dist < reach[:, None]) & (ka[:, None] == kb[None])
    bi, bj = np.nonzero(hit)
    assert sorted(zip(i.tolist(), j.tolist())) == sorted(zip(bi.tolist(), bj.tolist()))
    assert np.allclose(d, dist[i, j])


# ------------------------------------------------------------------------------------------
# events on hand-made movies


@pytest.mark.parametrize("mode", MODES)
def test_merge(mode):
    frames = []
    for f in range(6):  # two discs approach 1.5 px/frame each; they never touch before
        frames.append([(20, 20 + 1.5 * f, 6), (20, 50 - 1.5 * f, 6), STATIC])
    r = (2 * 6**3) ** (1 / 3)
    for f in range(6, 10):
        frames.append([(20, 35, r), STATIC])
    labs, det = movie(frames)
    traj, events, fr = run(mode, labs, det)
    left, right, static = pid(traj, 0, 20, 20), pid(traj, 0, 20, 50), pid(traj, 0, 50, 80)
    assert len({left, right, static}) == 3
    assert list(events.kind) == ["coalescence"]
    ev = events.iloc[0]
    assert ev.frame == 6 and ev.time_s == pytest.approx(6 / FPS)
    assert sorted(ev.parents) == sorted([left, right])
    child = pid(traj, 6, 20, 35)
    assert list(ev.children) == [child] and ev.child == child
    assert child not in (left, right, static)
    assert ev.x_px == pytest.approx(35, abs=0.5) and ev.y_px == pytest.approx(20, abs=0.5)
    assert ev.volume_ratio == pytest.approx(1.0, abs=0.1)
    # parents end at frame 5, the child lives 6..9, the static one throughout
    span = traj.groupby("particle").frame.agg(["min", "max"])
    assert tuple(span.loc[left]) == (0, 5) and tuple(span.loc[right]) == (0, 5)
    assert tuple(span.loc[child]) == (6, 9) and tuple(span.loc[static]) == (0, 9)
    assert fr.n_coalescence.tolist() == [0] * 6 + [1, 0, 0, 0]


@pytest.mark.parametrize("mode", MODES)
def test_small_particle_swallowed_is_coalescence(mode):
    """A small particle absorbed by a big neighbour barely overlaps the merged disc: the volume
    balance makes it a parent nonetheless."""
    big, small = (30, 40, 12), (30, 40 + 12 + 5 + 1, 5)  # 7 % of the volume
    v = 12**3 + 5**3
    xm = (40 * 12**3 + 58 * 5**3) / v
    frames = [[big, small, STATIC]] * 4 + [[(30, xm, v ** (1 / 3)), STATIC]] * 3
    labs, det = movie(frames)
    traj, events, _ = run(mode, labs, det)
    assert list(events.kind) == ["coalescence"]
    assert sorted(events.parents.iloc[0]) == sorted([pid(traj, 3, *big[:2]),
                                                     pid(traj, 3, *small[:2])])


@pytest.mark.parametrize("mode", MODES)
def test_vanish(mode):
    frames = [[(25, 30, r), STATIC] for r in (7, 6, 5, 4, 3, 2)] + [[STATIC]] * 3
    labs, det = movie(frames)
    traj, events, fr = run(mode, labs, det)
    shrinking = pid(traj, 0, 25, 30)
    assert list(events.kind) == ["vanish"]
    ev = events.iloc[0]
    assert ev.frame == 6 and list(ev.parents) == [shrinking] and ev.child == -1
    assert list(ev.children) == []
    assert ev.x_px == pytest.approx(30, abs=0.5) and ev.eq_diameter_nm < 1.0
    assert traj[traj.particle == shrinking].frame.tolist() == list(range(6))
    assert traj.particle.nunique() == 2
    assert fr["count"].tolist() == [2] * 6 + [1] * 3


@pytest.mark.parametrize("mode", MODES)
def test_appear_enter_exit(mode):
    frames = []
    for f in range(8):
        d = [STATIC]
        if f >= 3:
            d.append((20, 30, 5))  # nucleates in the middle (2 nm: above min_diameter_nm)
        if f >= 5:
            d.append((30, 1, 4))  # at the left border: drifts into view
        if f < 4:
            d.append((5, 94, 4))  # at the right border: leaves the view
        frames.append(d)
    labs, det = movie(frames)
    traj, events, _ = run(mode, labs, det)
    got = {(e.kind, e.frame) for e in events.itertuples()}
    assert got == {("appear", 3), ("enter", 5), ("exit", 4)}
    ev = events.set_index("kind")
    assert ev.loc["appear", "child"] == pid(traj, 3, 20, 30)
    assert list(ev.loc["appear", "parents"]) == []
    assert ev.loc["enter", "child"] == pid(traj, 5, 30, 1)
    assert list(ev.loc["exit", "parents"]) == [pid(traj, 0, 5, 94)]
    assert traj[traj.frame == 3].particle.nunique() == 3


@pytest.mark.parametrize("mode", MODES)
def test_ripening_away_at_the_border_is_a_vanish(mode):
    """Two particles end touching the right edge: one shrinks with its centre in view (it
    ripened away: vanish), the other keeps its size while the edge cuts past its centre (exit)."""
    frames = []
    for f in range(24):
        d = [STATIC]
        if f < 14:
            d.append((20, 94.5, 8 - 6 * f / 13))  # centre 1 px inside the edge, shrinking
        if f < 12:
            d.append((38, 90 + f, 6))  # carried out through the edge
        frames.append(d)
    labs, det = movie(frames)
    assert det[det.frame == 13].touches_border.sum() == 1
    traj, events, _ = run(mode, labs, det)
    got = {(e.kind, int(e.parents[0])) for e in events.itertuples()}
    assert got == {("vanish", pid(traj, 0, 20, 94)), ("exit", pid(traj, 0, 38, 90))}
    assert events.set_index("kind").loc["vanish", "frame"] >= 14


@pytest.mark.parametrize("mode", MODES)
def test_border_particle_absorbed_by_a_neighbour_is_a_coalescence(mode):
    """A particle at the edge shrinks below the detection limit with its centre in view, and a
    neighbour gains its volume within the gap: the pair linker's exit is a vanish at the border
    that was absorbed, so a coalescence whose child is the neighbour from its gain on."""
    grown = 16
    frames = []
    for f in range(48):
        d = [STATIC, (36, 82, 6 if f < grown else 7)]
        if f < 14:
            d.append((20, 94.5, 8 - 4 * f / 13))  # centre 1 px inside the edge, 8 -> 4 px
        frames.append(d)
    labs, det = movie(frames)
    assert det[det.frame == 13].touches_border.sum() == 1
    traj, events, _ = run(mode, labs, det)
    assert list(events.kind) == ["coalescence"]
    ev = events.iloc[0]
    edge, nb = pid(traj, 0, 20, 94), pid(traj, 0, 36, 82)
    assert sorted(ev.parents) == sorted([edge, nb]) and ev.frame == grown
    assert ev.child == pid(traj, grown, 36, 82) not in (edge, nb)
    assert traj[traj.particle == nb].frame.max() == grown - 1


def test_centre_in_view_of_a_disc_cut_by_the_edge():
    """A disc's visible part tells whether its centre is in view, at any size and either edge."""
    from etemseg.tracking.detections import Detections

    shape = (64, 96)
    for r in (4, 7, 12):
        for inside in (-0.5, 0.3, 0.6):  # centre's distance inside the edge, in radii
            discs = [(20, 95.5 - inside * r, r), (44, -0.5 + inside * r, r)]
            parts = [measure(paint(shape, [d]), f) for f, d in enumerate(discs)]
            det = Detections(pd.concat(parts, ignore_index=True), PS, shape)
            assert det.border.all()
            assert det.centre_in_view(np.arange(2)).tolist() == [inside > 0] * 2, (r, inside)


def test_radius_of_a_disc_cut_by_the_edge():
    """The whole disc behind a visible part cut by the frame edge: its radius from the part's
    area and centroid, on either edge, whatever the depth; the equivalent radius of the visible
    part is far too small.  A particle is sized by it only with its centre in view."""
    from etemseg.tracking.detections import Detections

    shape = (64, 96)
    for r in (7, 12):
        for inside in (-0.4, 0.0, 0.3, 0.6, 0.9):  # centre's distance inside the edge, radii
            discs = [(20, 95.5 - inside * r, r), (44, -0.5 + inside * r, r), (30, 48, r)]
            parts = [measure(paint(shape, [d]), f) for f, d in enumerate(discs)]
            det = Detections(pd.concat(parts, ignore_index=True), PS, shape)
            whole = det.radius[2]  # the same disc in view
            assert det.border.tolist() == [True, True, False]
            assert det.cut_disc_radius(np.arange(2)) == pytest.approx([whole] * 2, rel=0.06), \
                (r, inside)
            if inside <= 0.3:
                assert (det.radius[:2] < 0.9 * whole).all()
            r_nm = det.whole_radius_nm(np.arange(3))
            assert r_nm[2] == det.diam_nm[2] / 2
            seen = det.diam_nm[:2] / 2 if inside < 0 else det.cut_disc_radius(np.arange(2)) * PS
            assert r_nm[:2] == pytest.approx(seen)


@pytest.mark.parametrize("mode", MODES)
def test_vanish_at_the_border_is_dated_by_the_whole_disc(mode):
    """A particle that ripens away with its centre just inside the edge is dated as the same
    particle in view: its size is its whole disc, not the part the edge leaves."""
    def vanish_frame(x):
        frames = [[STATIC, (45, 20, 12)] + ([(20, x, 12 - 4 * f / 19)] if f < 20 else [])
                  for f in range(60)]
        labs, det = movie(frames)
        _, events, _ = run(mode, labs, det)
        assert list(events.kind) == ["vanish"]
        return int(events.frame.iloc[0])

    in_view = vanish_frame(50)
    assert in_view > 20  # extrapolated past the last detection
    assert vanish_frame(94.5) == vanish_frame(92.5) == in_view


@pytest.mark.parametrize("mode", MODES)
def test_split_is_flagged(mode):
    frames = [[(30, 40, 7), (30, 50, 7), STATIC]] * 3  # one peanut-shaped component
    frames += [[(30, 37, 6), (30, 53, 6), STATIC]] * 3  # two discs
    labs, det = movie(frames)
    assert det.groupby("frame").size().tolist() == [2, 2, 2, 3, 3, 3]
    traj, events, _ = run(mode, labs, det)
    assert list(events.kind) == ["split"]
    ev = events.iloc[0]
    parent = pid(traj, 2, 30, 45)
    kids = sorted([pid(traj, 3, 30, 37), pid(traj, 3, 30, 53)])
    assert ev.frame == 3 and list(ev.parents) == [parent] and sorted(ev.children) == kids
    assert ev.child == -1 and parent not in kids
    assert traj[traj.particle == parent].frame.max() == 2


@pytest.mark.parametrize("mode", MODES)
def test_drift_no_spurious_events(mode):
    rng = np.random.default_rng(4)
    centres = [(14, 16), (46, 18), (22, 44), (50, 52), (30, 74), (12, 78)]
    radii = rng.uniform(4, 6, len(centres))
    step = (0.3, -0.7)  # px per frame (dy, dx)
    n = 20
    frames = [[(y + f * step[0], x + 10 + f * step[1], r) for (y, x), r in zip(centres, radii)]
              for f in range(n)]
    labs, det = movie(frames)
    assert (det.groupby("frame").size() == len(centres)).all()
    traj, events, fr = run(mode, labs, det)
    assert len(events) == 0
    assert traj.particle.nunique() == len(centres)
    assert (traj.groupby("particle").size() == n).all()
    truth_x = np.arange(n) * step[1] * PS
    truth_y = np.arange(n) * step[0] * PS
    assert np.abs(fr.drift_x_nm - truth_x).max() < 0.2 * PS
    assert np.abs(fr.drift_y_nm - truth_y).max() < 0.2 * PS
    drift = estimate_drift(det)
    assert np.abs(drift.dx_px - np.arange(n) * step[1]).max() < 0.2
    assert np.abs(drift.dy_px - np.arange(n) * step[0]).max() < 0.2
    # the sample-frame positions are stationary
    spread = traj.groupby("particle")[["x_sample_nm", "y_sample_nm"]].std().to_numpy()
    assert spread.max() < 0.2 * PS


def test_large_drift_shifts_label_images():
    """3 px/frame: discs of radius 3 overlap nothing unshifted; the rounded-drift shift and the
    drift-corrected fallbacks keep the ids."""
    centres = [(15, 20), (40, 25), (25, 50), (45, 60), (15, 70)]
    n = 8
    frames = [[(y, x + 3.0 * f, 3) for y, x in centres] for f in range(n)]
    labs, det = movie(frames, shape=(64, 120))
    drift = estimate_drift(det)
    assert np.allclose(drift.step_dx_px.iloc[1:], 3.0, atol=0.05)
    for mode in MODES:
        traj, events, _ = run(mode, labs, det)
        assert len(events) == 0 and traj.particle.nunique() == len(centres)


@pytest.mark.parametrize("mode", MODES)
def test_memory_bridges_a_flicker(mode):
    frames = [[(20, 30, 6), STATIC]] * 4 + [[STATIC]] + [[(20, 30.3, 6), STATIC]] * 4
    labs, det = movie(frames)
    traj, events, _ = run(mode, labs, det, memory=0, gap_ms=0)
    assert sorted(events.kind) == ["appear", "vanish"]
    assert traj.particle.nunique() == 3
    traj, events, _ = run(mode, labs, det, memory=0, gap_ms=2.5)  # 1 frame at 400 fps
    assert len(events) == 0 and traj.particle.nunique() == 2
    traj, events, fr = run(mode, labs, det, memory=1, gap_ms=0)
    assert len(events) == 0 and traj.particle.nunique() == 2
    assert traj[traj.particle == pid(traj, 0, 20, 30)].frame.tolist() == [0, 1, 2, 3, 5, 6, 7, 8]
    assert fr["count"].tolist() == [2, 2, 2, 2, 1, 2, 2, 2, 2]


@pytest.mark.parametrize("mode", MODES)
def test_missing_frame_numbers_link_present_frames(mode):
    frames = [[(20, 30 + 0.2 * f, 6), STATIC] for f in range(6)]
    labs, det = movie(frames)
    keep = [0, 1, 2, 5]  # frames 3 and 4 were never recorded
    det = det[det.frame.isin(keep)]
    traj, events, fr = run(mode, labs, det, all_frames=np.array(keep))
    assert len(events) == 0 and traj.particle.nunique() == 2
    assert fr.frame.tolist() == keep


# ------------------------------------------------------------------------------------------
# chunking, empty frames, the frames table


@pytest.mark.parametrize("mode", MODES)
def test_chunked_detections_link_identically(mode):
    frames = []
    for f in range(20):
        d = [STATIC]
        if f < 12:  # merges at frame 8 (just before a chunk boundary at 10)
            d += ([(20, 20 + 1.5 * f, 6), (20, 50 - 1.5 * f, 6)] if f < 8 else
                  [(20, 35, (2 * 216) ** (1 / 3))])
        if 9 <= f < 11:
            d.append((45, 30, 3 - (f - 9)))  # appears at 9, vanishes at 11 (chunk edge)
        frames.append(d if f not in (14, 15) else [])  # two empty frames
    labs, _ = movie(frames)
    parts = [measure(lab, f) for f, lab in enumerate(labs)]
    whole = pd.concat(parts, ignore_index=True)
    chunk_a = pd.concat(parts[:10], ignore_index=True)
    chunk_b = pd.concat(parts[10:], ignore_index=True)
    chunked = pd.concat([chunk_b, chunk_a], ignore_index=True)  # any order
    off = {"memory": 0, "gap_ms": 0, "persist_ms": 0, "confirm_ms": 0}  # frame pairs only
    t1, e1, f1 = run(mode, labs, whole, **off)
    t2, e2, f2 = run(mode, labs, chunked, **off)
    # with the default windows the same, chunked or not; the 5 ms gap is bridged
    t3, e3, _ = run(mode, labs, whole)
    t4, e4, _ = run(mode, labs, chunked)
    pd.testing.assert_frame_equal(t3, t4)
    pd.testing.assert_frame_equal(e3, e4)
    assert (e3.frame == 14).sum() == 0 and (e3.frame == 16).sum() == 0
    pd.testing.assert_frame_equal(t1, t2)
    pd.testing.assert_frame_equal(e1, e2)
    pd.testing.assert_frame_equal(f1, f2)
    # every frame has a row, the empty ones with count 0
    assert f1.frame.tolist() == list(range(20))
    assert f1.loc[f1.frame.isin([14, 15]), "count"].tolist() == [0, 0]
    assert f1.loc[f1.frame == 14, "coverage"].item() == 0.0
    assert f1.time_s.to_numpy() == pytest.approx(np.arange(20) / FPS)
    # the empty frames end and restart the static particle
    assert e1[e1.frame == 14].kind.tolist() == ["vanish"]
    assert e1[e1.frame == 16].kind.tolist() == ["appear"]
    assert set(e1.kind) == {"coalescence", "appear", "vanish"}


def test_frames_table_values():
    det = pd.DataFrame({"frame": [0, 0, 2], "label": [1, 2, 1], "area_px": [100.0, 300.0, 50.0],
                        "eq_diameter_nm": [2.0, 4.0, 3.0], "time_s": [0.0, 0.0, 0.005]})
    fr = frames_table(det, frame_shape=(100, 200), pixel_size_nm=0.5, all_frames=[0, 1, 2, 3])
    assert fr.frame.tolist() == [0, 1, 2, 3]
    assert fr["count"].tolist() == [2, 0, 1, 0]
    assert fr.coverage.tolist() == pytest.approx([400 / 20000, 0, 50 / 20000, 0])
    assert fr.mean_eq_diameter_nm.iloc[0] == 3.0 and np.isnan(fr.mean_eq_diameter_nm.iloc[1])
    assert fr.median_eq_diameter_nm.iloc[0] == 3.0 and fr.median_eq_diameter_nm.iloc[2] == 3.0
    assert fr.std_eq_diameter_nm.iloc[0] == pytest.approx(np.sqrt(2.0))
    assert np.isnan(fr.std_eq_diameter_nm.iloc[2])
    area_um2 = 100 * 200 * 0.25 * 1e-6
    assert fr.number_density_per_um2.tolist() == pytest.approx([2 / area_um2, 0, 1 / area_um2, 0])
    assert fr.time_s.tolist() == pytest.approx([0, 0.0025, 0.005, 0.0075])  # linear fill
    assert fr.drift_x_nm.isna().all()
    fr = frames_table(det, frame_shape=(100, 200), pixel_size_nm=0.5, all_frames=[0, 1, 2, 3],
                      fps=100.0)
    assert fr.time_s.tolist() == pytest.approx([0, 0.01, 0.02, 0.03])
    with pytest.raises(EtemsegError, match="not in all_frames"):
        frames_table(det, frame_shape=(100, 200), pixel_size_nm=0.5, all_frames=[0, 1])


def test_link_with_overlap_table_equals_link_movie():
    frames = [[(20, 20 + 1.5 * f, 6), (20, 50 - 1.5 * f, 6), STATIC] for f in range(6)]
    frames += [[(20, 35, (2 * 216) ** (1 / 3)), STATIC]] * 3
    labs, det = movie(frames)
    t1, e1, _ = run("overlap", labs, det)
    drift = estimate_drift(det)
    ov = overlap_table(lambda f: labs[f], range(len(labs)), drift)
    assert {"frame_a", "frame_b", "a", "b", "n_px"} <= set(ov.columns)
    t2, e2 = link(det, overlaps=ov, drift=drift)
    pd.testing.assert_frame_equal(t1, t2)
    pd.testing.assert_frame_equal(e1, e2)
    _, e3 = link(det)  # centroid-only
    assert e3.kind.tolist() == ["coalescence"]


def test_measured_overlaps_link_as_label_images():
    """The zero-shift overlaps the measure stage records give the edges of the label images:
    alone where no pair drifted by a whole pixel; with the label images of the pairs that did,
    and only of those."""
    still = [[(20, 20 + 1.5 * f, 6), (20, 50 - 1.5 * f, 6), STATIC] for f in range(6)]
    still += [[(20, 35, (2 * 216) ** (1 / 3)), STATIC]] * 3
    centres = [(15, 20), (40, 25), (25, 50), (45, 60)]
    jumpy = [[(y, x + 3.0 * max(f - 3, 0), 3) for y, x in centres] for f in range(8)]
    for frames, shape, moved in ((still, (64, 96), False), (jumpy, (64, 120), True)):
        labs, det = movie(frames, shape=shape)
        ov = overlap_table(lambda f: labs[f], range(len(labs)))  # no drift: at the same place
        asked = []

        def src(f):
            asked.append(f)
            return labs[f]

        want = run("overlap", labs, det)
        got = link_movie(det, src, frame_shape=shape, all_frames=np.arange(len(labs)),
                         overlaps=ov)
        for a, b in zip(want, got):
            pd.testing.assert_frame_equal(a, b)
        assert asked == sorted(set(asked))  # each label image once, in order
        assert (asked and asked[0] > 0) if moved else asked == []  # frame 0 has not moved
        if moved:
            with pytest.raises(EtemsegError, match="drifted by a whole pixel"):
                link_movie(det, None, frame_shape=shape, overlaps=ov)
        else:
            got = link_movie(det, None, frame_shape=shape, all_frames=np.arange(len(labs)),
                             overlaps=ov)
            pd.testing.assert_frame_equal(want[0], got[0])
            assert want[1]["kind"].tolist() == got[1]["kind"].tolist() == ["coalescence"]


def test_events_arrow_schema_and_empty_inputs():
    labs, det = movie([[STATIC]] * 3)
    traj, events, fr = run("overlap", labs, det)
    assert len(events) == 0
    tab = pa.Table.from_pandas(events, schema=EVENTS_SCHEMA, preserve_index=False)
    assert tab.schema.field("parents").type == pa.list_(pa.int64())
    labs, det = movie([[STATIC], [(20, 30, 5), STATIC]])
    _, events, _ = run("overlap", labs, det)
    tab = pa.Table.from_pandas(events, schema=EVENTS_SCHEMA, preserve_index=False)
    assert tab.column("children").to_pylist() == [[int(events.child.iloc[0])]]
    # no detections at all: still a frames row per frame
    empty = det.iloc[:0]
    traj, events, fr = link_movie(empty, None, frame_shape=(64, 96), pixel_size_nm=PS,
                                  all_frames=np.arange(4), fps=FPS)
    assert len(traj) == 0 and len(events) == 0
    assert fr["count"].tolist() == [0] * 4 and fr.time_s.tolist() == pytest.approx(
        np.arange(4) / FPS)


def test_bad_input():
    labs, det = movie([[STATIC], [STATIC]])
    with pytest.raises(EtemsegError, match="missing column 'label'"):
        link(det.drop(columns="label"))
    with pytest.raises(EtemsegError, match="twice"):
        link(pd.concat([det, det]))
    with pytest.raises(EtemsegError, match="pixel size"):
        link(det.drop(columns=["x_nm", "y_nm"]))
    with pytest.raises(ConfigError, match="max_disp_nm"):
        link(det, max_disp_nm=0)
    with pytest.raises(ConfigError, match="memory"):
        link(det, memory=-1)
    with pytest.raises(EtemsegError, match="frame_shape"):
        link_movie(det, None)
    with pytest.raises(EtemsegError, match="not in all_frames"):
        link(det, all_frames=[0])
    with pytest.raises(EtemsegError, match="shape"):
        link_movie(det, lambda f: labs[f][: 10 + f])


# ------------------------------------------------------------------------------------------
# against the simulator's truth


@pytest.fixture(scope="module", params=[1, 2, 5])
def simulated(request):
    p = SynthParams(frames=48, height=256, width=256, coverage=0.3, seed=request.param)
    labs, maps, parts = [], [], []
    for f, (_, truth) in enumerate(simulate(p)):
        lab, ids = raster_relabel(truth)
        labs.append(lab)
        maps.append(ids)
        parts.append(measure(lab, f, ps=p.pixel_size_nm, fps=p.fps))
    return p, labs, maps, pd.concat(parts, ignore_index=True), simulate_tracks(p)


@pytest.mark.parametrize("mode", MODES)
def test_against_simulator_truth(simulated, mode):
    p, labs, maps, det, (_, truth_events) = simulated
    traj, events, fr = run(mode, labs, det)
    truth_id = np.concatenate([maps[f][traj.label[traj.frame == f].to_numpy() - 1]
                               for f in range(p.frames)])
    traj = traj.assign(truth=truth_id)
    ours = {(int(f), int(t)): int(q) for f, t, q in zip(traj.frame, traj.truth, traj.particle)}
    border = {(int(f), int(t)) for f, t, b in zip(traj.frame, traj.truth, traj.touches_border)
              if b}
    back = {(f, q): t for (f, t), q in ours.items()}

    # identity: a truth particle seen in two consecutive frames keeps its trajectory id
    n_checked = switches = 0
    for (f, t), q in ours.items():
        if (f - 1, t) in ours:
            n_checked += 1
            switches += ours[(f - 1, t)] != q
    assert n_checked > 1000 and switches == 0

    # coalescences away from the border: every one found with exactly its parents and child
    found = total = 0
    oc = events[events.kind == "coalescence"]
    for ev in truth_events[truth_events.kind == "coalescence"].itertuples():
        f = int(ev.frame)
        parents = [int(q) for q in ev.parents if (f - 1, int(q)) in ours]
        touched = {(f - 1, q) for q in parents} | {(f, int(ev.child))}
        if len(parents) < 2 or (f, int(ev.child)) not in ours or touched & border:
            continue
        total += 1
        cand = oc[oc.frame == f]
        for e in cand.itertuples():
            if ([back.get((f, c)) for c in e.children] == [int(ev.child)]
                    and sorted(back.get((f - 1, c)) for c in e.parents) == sorted(parents)):
                found += 1
                break
    assert total >= 2
    assert found / total >= 0.95
    # no invented coalescence: each of ours is a truth merge (of visible parents)
    truth_children = set(zip(truth_events.frame.astype(int), truth_events.child.astype(int)))
    for e in oc.itertuples():
        assert (int(e.frame), back[(int(e.frame), e.child)]) in truth_children
    # every frame summarised; counts agree with the table
    assert fr.frame.tolist() == list(range(p.frames))
    assert fr["count"].tolist() == det.groupby("frame").size().tolist()


# ------------------------------------------------------------------------------------------
# layering


def test_tracking_imports_no_stage():
    """etemseg.tracking depends downwards only: never on etemseg.stages or the CLI."""
    import ast
    from pathlib import Path

    import etemseg.tracking

    files = sorted(Path(etemseg.tracking.__file__).parent.glob("*.py"))
    assert len(files) >= 5
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert not name.startswith(("etemseg.stages", "etemseg.cli")), (path.name, name)


# ------------------------------------------------------------------------------------------
# the track stage reads the overlaps the measure stage recorded


def test_track_stage_uses_recorded_overlaps(tmp_path, caplog):
    import logging

    from etemseg.cli import main
    from etemseg.io.store import MovieStore, create_store
    from etemseg.stages.track import track_movie

    frames = [[(20, 20 + 1.5 * f, 6), (20, 50 - 1.5 * f, 6), STATIC] for f in range(6)]
    frames += [[(20, 35, (2 * 216) ** (1 / 3)), STATIC]] * 4
    labs, _ = movie(frames)
    create_store(tmp_path / "frames.zarr", n_frames=len(labs), frame_shape=labs[0].shape,
                 dtype=np.uint16, chunk_frames=4, fps=FPS, pixel_size_nm=PS,
                 zarr_chunk_frames=2)
    fs = MovieStore.open(tmp_path / "frames.zarr", mode="r+")
    fs.array[...] = 100
    ms = fs.like(tmp_path / "mask.zarr", np.uint8)
    ms.array[...] = np.stack(labs) > 0
    parts = tmp_path / "particles"

    def measure(k, overlaps=True):
        extra = ["--overlaps", str(parts / f"overlaps-{k}.parquet")] if overlaps else []
        assert main(["--quiet", "measure", str(fs.path), str(ms.path),
                     str(parts / f"chunk-{k}.parquet"), "--chunk", str(k), "--min-area-px", "5",
                     *extra]) == 0

    def track():
        return track_movie(fs.path, ms.path, parts, movie="m", model="x")

    for k in range(ms.n_chunks):
        measure(k)
    with caplog.at_level(logging.INFO, logger="etemseg.stages.track"):
        recorded = track()
        assert not caplog.records
        assert recorded[1]["kind"].tolist() == ["coalescence"]
        (parts / "overlaps-0.parquet").unlink()
        missing = track()
        assert "overlaps-0.parquet is missing" in caplog.text
        for a, b in zip(recorded, missing):
            pd.testing.assert_frame_equal(a, b)
        measure(0)
        # the masks of chunk 1 change and only its detections are measured again: its overlaps
        # belong to the old masks and are not used
        ms.array[5] = paint(labs[0].shape, [STATIC]) > 0
        measure(1, overlaps=False)
        caplog.clear()
        stale = track()
        assert "overlaps-1.parquet was not measured with chunk-1.parquet" in caplog.text
        measure(1)
        caplog.clear()
        fresh = track()
        assert not caplog.records
    for a, b in zip(stale, fresh):
        pd.testing.assert_frame_equal(a, b)
    assert len(fresh[0]) == len(recorded[0]) - 2
