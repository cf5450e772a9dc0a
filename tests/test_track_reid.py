"""Re-identification, chronological gap closing, partial masks and the movie's ripening law
(``etemseg.tracking.temporal``), on hand-made disc movies with known answers.

Every test here fails without the mechanism it names: ``reid_ms`` (a particle lost longer than
``gap_ms`` or across the frame edge found again at its drift-corrected place), shortest gaps
first (a flicker chain is one trajectory), the containment rule (a partial mask inside the
particle's disc is that particle), and the LSW law measured on the movie's own tracks (no
re-identification after a particle's extinction; vanish time from the law, integrated from
every detection, and only when the law is determined -- else from the particle's own slope).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from etemseg.analysis.sintering import size_trajectories
from etemseg.tracking import link_movie, temporal
from tests.test_track import FPS, PS, STATIC, measure, movie, paint, pid, run

K_LSW = 20.0  # nm^3/s, d(r^3)/dt = 3 k (r / r_c - 1)
SHAPE = (160, 200)
GRID = [(25 + 37 * i, 25 + 37 * j) for i in range(4) for j in range(5)]  # 20 sites, px


def lsw_radii(r0_nm: np.ndarray, frames: int, k: float = K_LSW) -> np.ndarray:
    """(frames, P) radii, nm, of particles ripening by LSW (r_c the mean radius of the
    survivors); a particle below 0.3 nm is gone (NaN)."""
    dt = 1.0 / FPS
    r3 = np.asarray(r0_nm, float) ** 3
    out = np.full((frames, r3.size), np.nan)
    alive = np.ones(r3.size, bool)
    for f in range(frames):
        r = np.cbrt(np.maximum(r3, 0))
        alive &= r > 0.3
        out[f, alive] = r[alive]
        rc = r[alive].mean()
        r3 = np.where(alive, r3 + 3 * k * (r / rc - 1) * dt, 0.0)
    return out


def lsw_movie(r0_nm, frames, hide=None, extra=None, move=None):
    """Label images and detections of discs on :data:`GRID` ripening by :func:`lsw_radii`.
    ``hide(f, i)``: particle ``i`` not in the mask in frame ``f``; ``extra(f)``: more discs
    ``(y, x, r_px)``; ``move(f, i)``: displacement ``(dy, dx)`` px of particle ``i``."""
    radii = lsw_radii(np.asarray(r0_nm), frames)
    labs, parts = [], []
    for f in range(frames):
        discs = []
        for i, (y, x) in enumerate(GRID[:radii.shape[1]]):
            r = radii[f, i]
            if np.isnan(r) or (hide is not None and hide(f, i)):
                continue
            dy, dx = (0, 0) if move is None else move(f, i)
            discs.append((y + dy, x + dx, r / PS))
        if extra is not None:
            discs += extra(f)
        lab = paint(SHAPE, discs)
        labs.append(lab)
        if lab.max():
            parts.append(measure(lab, f))
    return labs, pd.concat(parts, ignore_index=True), radii


def link(labs, det, **kw):
    return link_movie(det, lambda f: labs[f], frame_shape=SHAPE,
                      all_frames=np.arange(len(labs)), **kw)


# a population around r_c ~ 2.8 nm: big ones grow, small ones shrink; particle 8 is gone at
# frame 135, particle 3 at frame 213
R0 = np.array([2.5, 2.6, 3.0, 2.2, 3.4, 2.8, 2.4, 3.1, 2.0, 2.9, 3.2, 2.7])
DET_NM = 1.1  # detection limit of the vanish tests: smaller particles are not in the masks


def test_lost_particle_is_found_again_within_reid_not_after_its_extinction():
    """A stationary particle missing for 150 ms (> gap_ms) keeps its id; a nucleus appearing
    where a shrinking particle vanished, after the law says it is gone, is new."""
    frames = 300
    radii = lsw_radii(R0, frames)
    t_ext = int(np.flatnonzero(np.isnan(radii[:, 8]))[0])  # particle 8 is gone here
    y8, x8 = GRID[8]
    y5, x5 = GRID[5]

    def hide(f, i):  # particle 5 undetected for 60 frames = 150 ms; the detection limit
        return (i == 5 and 100 <= f < 160) or radii[f, i] < DET_NM

    def extra(f):  # a nucleus beside particle 8's place, 100 ms after its extinction
        return [(y8 + 2, x8 - 1, 1.5 / PS)] if f >= t_ext + 40 else []

    def move(f, i):  # particle 5 comes back 0.4 nm away (it diffused while unseen)
        return (1, 1.5) if i == 5 and f >= 160 else (0, 0)

    labs, det, _ = lsw_movie(R0, frames, hide=hide, extra=extra, move=move)
    traj, events, _ = link(labs, det)
    assert pid(traj, 99, y5, x5) == pid(traj, 160, y5, x5)  # found again (reid)
    van = events[events.kind == "vanish"]
    app = events[events.kind == "appear"]
    assert len(van) == 2 and len(app) == 1  # particles 8 and 3 vanish, the nucleus is new
    assert pid(traj, 0, y8, x8) in {int(p[0]) for p in van.parents}
    assert int(app.child.iloc[0]) == pid(traj, t_ext + 40, y8, x8)
    assert pid(traj, 0, y8, x8) != pid(traj, t_ext + 40, y8, x8)
    # without re-identification beyond gap_ms, particle 5's absence is a vanish and an appear
    _, ev0, _ = link(labs, det, reid_ms=0)
    assert (ev0.kind == "vanish").sum() == 3 and (ev0.kind == "appear").sum() == 2


def test_vanish_time_from_the_movie_law():
    """A shrinking particle flickers at the detection limit (seen in one frame of eight below
    r = 1.6 nm, never below 1.3 nm) and is lost well before it is gone: the vanish is dated
    by the LSW law measured on the other particles, within 10 frames of the truth (its own last
    detections are too few for a slope of its own)."""
    frames = 200
    radii = lsw_radii(R0, frames)
    t_ext = int(np.flatnonzero(np.isnan(radii[:, 8]))[0])

    def hide(f, i):
        return i == 8 and (radii[f, i] < 1.3 or (radii[f, i] < 1.6 and f % 8))

    labs, det, _ = lsw_movie(R0, frames, hide=hide)
    traj, events, _ = link(labs, det)
    van = events[events.kind == "vanish"]
    assert len(van) == 1
    last = traj[traj.particle == int(van.parents.iloc[0][0])].frame.max()
    assert t_ext - last >= 15  # the particle was lost well before its extinction
    assert abs(int(van.frame.iloc[0]) - t_ext) <= 10


def test_border_crossing_re_identified():
    """A big particle cut by the frame edge whose sliver drops out for 150 ms (> gap_ms) and
    comes back is one trajectory: no exit, no enter."""
    frames = []
    for f in range(120):
        d = [STATIC, (30, 60, 6)]
        if not 40 <= f < 100:  # centre outside the frame: a sliver at the left edge, back
            d.append((20 if f < 40 else 22, -6, 12))  # 2 px further down (it diffused)
        frames.append(d)
    labs, det = movie(frames)
    traj, events, _ = run("overlap", labs, det)
    assert len(events) == 0
    assert pid(traj, 39, 20, 2) == pid(traj, 100, 20, 2)
    _, ev0, _ = run("overlap", labs, det, reid_ms=0)
    assert sorted(ev0.kind) == ["enter", "exit"]


@pytest.mark.parametrize("mode", ["overlap", "centroid"])
def test_flicker_chain_shortest_gap_first(mode):
    """A particle flickering at the detection limit: gone 2 frames, back for 2 frames as a
    smaller (partial) mask, gone 6 frames, back in full.  The lost particle is joined to the
    first detection that fits, then on: one trajectory, no event."""
    frames = []
    for f in range(50):
        d = [STATIC]
        if f < 20 or f >= 30:
            d.append((20, 30, 6))
        elif 22 <= f < 24:
            d.append((20, 31, 4))
        frames.append(d)
    labs, det = movie(frames)
    traj, events, _ = run(mode, labs, det, memory=0)
    assert len(events) == 0
    ids = {pid(traj, f, 20, 30) for f in (0, 22, 23, 30, 49)}
    assert len(ids) == 1


def test_partial_mask_inside_the_particle_keeps_its_id():
    """A big particle whose mask shrinks to a small piece inside its disc (contrast lost over
    most of it) after a 3-frame drop-out: the volume ratio is far outside any size tolerance,
    but the piece lies inside the particle's disc, where no other particle can be."""
    frames = []
    for f in range(60):
        d = [STATIC]
        if f < 20 or f >= 23:
            d.append((25, 30, 12) if not 23 <= f < 35 else (25, 34, 4))
        frames.append(d)
    labs, det = movie(frames)
    traj, events, _ = run("overlap", labs, det)
    assert len(events) == 0
    assert len({pid(traj, f, 25, 31) for f in (19, 23, 34, 35, 59)}) == 1


def test_gap_sizes_from_several_detections():
    """Across a detection gap the size comes from the running median of the detections on
    either side, not from one faint (partial) detection at the gap's edge."""
    f = np.r_[np.arange(0, 20), np.arange(60, 80)]
    d = np.full(f.size, 6.0)
    d[19] = 2.0  # the last detection before the gap is a partial mask
    traj = pd.DataFrame({"particle": 1, "frame": f, "time_s": f / FPS, "eq_diameter_nm": d,
                         "touches_border": False})
    sz = size_trajectories(traj)
    mid = sz[sz.frame.between(20, 40)]
    assert (mid.r_smooth_nm > 2.9).all()  # r = 3 nm on both sides


def _shrinking(k: float, rc: float, r0: float, det_nm: float, fps: float = FPS):
    """Radii, nm, at the frames of a particle ripening by the exact LSW law at a fixed critical
    radius ``rc`` (fine Euler steps of 10 us), its true extinction time, s, and the frames in
    which it is above ``det_nm``."""
    h, t, r3, ts, rs = 1e-5, 0.0, r0 ** 3, [], []
    while r3 > 0:
        ts.append(t)
        rs.append(np.cbrt(r3))
        r3 += 3 * k * (np.cbrt(r3) / rc - 1) * h
        t += h
    times = np.arange(int(t * fps) + 1) / fps
    radii = np.interp(times, ts, rs)
    return radii, t, np.flatnonzero(radii > det_nm)


def test_extinction_integrates_the_law_from_every_detection():
    """A particle that shrinks from r/r_c 0.64 to 0.36 over its last 20 detections: each
    detection's own time to extinction under the law, averaged with inverse-variance weights
    (the smallest count most), is the true extinction within 0.5 ms (the law linearised at
    each detection's size and moved to the last one was 3 ms late); with +-1 px boundary noise
    on every radius, within a frame."""
    k, rc = 50.0, 2.5
    radii, t_gone, seen = _shrinking(k, rc, 1.8, 0.9)
    rows = seen[-20:]
    assert radii[rows[0]] / rc > 0.6 and radii[rows[-1]] / rc < 0.4
    law = temporal._Lsw(k, np.full(radii.size, rc), 0.9 * k, 1.1 * k)
    assert law.known
    t_ext = law.extinction(radii[rows], rows / FPS, rows)
    assert abs(t_ext - t_gone) < 0.5e-3
    rng = np.random.default_rng(3)  # +-1 px boundary noise on every radius: still within a frame
    noisy = radii[rows] + PS * rng.choice([-1.0, 0.0, 1.0], rows.size)
    assert abs(law.extinction(noisy, rows / FPS, rows) - t_gone) < 1.0 / FPS


@pytest.mark.parametrize("n, frames, determined", [(8, 60, False), (12, 80, True)])
def test_law_used_only_when_determined(monkeypatch, n, frames, determined):
    """The movie's law dates vanishes only when it is determined (its 95 % interval, over
    resampled tracks, within a factor 2 of k).  10 particles over 60 frames (150 ms) measure k
    from a handful of track pieces: its interval reaches down to ~0, so the vanishes are dated
    by the particles' own r^3 slope, exactly as without a law (a law from a few pieces dated
    the demo's vanishes by k ~ 0.07 nm^3/s: all at the movie's end); 14 particles over 80
    frames determine it, and the law dates them (closer to the truth here)."""
    r0 = np.r_[R0[:n], 1.3, 1.5]
    radii = lsw_radii(r0, frames)
    gone = sorted(int(np.flatnonzero(np.isnan(radii[:, i]))[0]) for i in range(r0.size)
                  if np.isnan(radii[:, i]).any())
    labs, det, _ = lsw_movie(r0, frames, hide=lambda f, i: radii[f, i] < DET_NM)
    laws = []
    measure_law = temporal._lsw

    def spy(*args):
        laws.append(measure_law(*args))
        return laws[-1]

    monkeypatch.setattr(temporal, "_lsw", spy)
    _, events, _ = link(labs, det)
    law = laws[-1]
    assert law.measured and law.known is determined
    assert law.lo <= K_LSW <= law.hi  # the interval covers the simulated rate either way
    monkeypatch.setattr(temporal, "_lsw", lambda *a: temporal._Lsw(float("nan"), law.rc))
    _, direct, _ = link(labs, det)
    van, van_direct = (sorted(e[e.kind == "vanish"].frame) for e in (events, direct))
    assert len(van) == len(gone) == 2
    assert (van == van_direct) is not determined
    assert all(abs(a - b) <= 5 for a, b in zip(van, gone))  # 12.5 ms, half the event tolerance
    if determined:
        assert sum(abs(a - b) for a, b in zip(van, gone)) < sum(
            abs(a - b) for a, b in zip(van_direct, gone))


@pytest.mark.parametrize("mode", ["overlap", "centroid"])
def test_piece_in_a_gap_is_the_particle(monkeypatch, mode):
    """A particle drops out of the masks for 3 frames and shows a small piece of itself (inside
    its disc) in the middle one: the pair linker's memory bridges the gap and the piece is a
    1-frame trajectory of its own (it would take the particle's identity for that frame); it
    joins the particle.  A piece outside the particle's disc stays apart."""
    def frames_with(piece):
        out = []
        for f in range(40):
            d = [STATIC]
            if not 20 <= f < 23:
                d.append((20, 30, 6))
            elif f == 21:
                d.append(piece)
            out.append(d)
        return movie(out)

    labs, det = frames_with((21, 32, 2))
    traj, events, _ = run(mode, labs, det)
    assert len(events) == 0
    assert traj.particle.nunique() == 2
    assert len({pid(traj, f, 20, 30) for f in (19, 23)} | {pid(traj, 21, 21, 32)}) == 1
    monkeypatch.setattr(temporal, "_fill_gaps", lambda *a: None)
    traj0, _, _ = run(mode, labs, det)
    assert traj0.particle.nunique() == 3  # without the step: a piece of its own
    monkeypatch.undo()
    labs, det = frames_with((20, 52, 2))  # 22 px away: beyond the disc and any step
    traj, _, _ = run(mode, labs, det)
    assert traj.particle.nunique() == 3
