"""Tests of etemseg.synth: determinism, truth consistency, output layout."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr
from scipy import ndimage

from etemseg import synth
from etemseg.errors import ConfigError, InputFileError
from etemseg.synth import (
    SynthParams,
    k2_frame_name,
    simulate,
    simulate_drift,
    simulate_tracks,
    write_synthetic_movie,
)

# Small, non-square, event-rich movie: coarse pixels so a small frame holds ~15 particles,
# fast ripening / migration / nucleation so all event kinds happen within 12 frames.
SMALL = SynthParams(
    frames=12,
    height=96,
    width=128,
    pixel_size_nm=0.4,
    ripening_rate=400.0,
    migration_nm2_per_s=30.0,
    appear_rate=30000.0,
    seed=3,
)


@pytest.fixture(scope="module")
def small_run():
    frames = list(simulate(SMALL))
    parts, events = simulate_tracks(SMALL)
    return frames, parts, events


# ------------------------------------------------------------------------------------------
# parameters


@pytest.mark.parametrize(
    "field, value",
    [
        ("frames", 0),
        ("height", 8),
        ("width", 15),
        ("fps", 0.0),
        ("pixel_size_nm", -0.1),
        ("coverage", 0.0),
        ("coverage", 0.7),
        ("dose", 0.0),
        ("contrast", 1.0),
        ("radius_mean_nm", 0.0),
        ("radius_sigma", -0.1),
        ("edge_width_px", -1.0),
        ("gradient", 0.9),
        ("drift_px_per_frame", (0.1,)),
        ("drift_px_per_frame", (0.1, float("nan"))),
        ("ripening_rate", -1.0),
        ("n_particles", -3),
        ("seed", -1),
        ("frames", True),
        ("appear_radius_nm", 0.4),
        ("dose", -5.0),
        ("imaging", "phase-contrast"),
        ("accelerating_voltage_kv", 0.0),
        ("defocus_nm", float("nan")),
        ("spherical_aberration_mm", "1.2"),
        ("aperture_per_nm", 4.5),
        ("aperture_per_nm", 0.0),
        ("focal_spread_nm", -1.0),
        ("convergence_mrad", -0.1),
        ("mean_inner_potential_v", 0.0),
        ("absorption_ratio", 1.0),
        ("rotation_deg2_per_s", -1.0),
        ("support_phase_rad", -0.1),
        ("support_length_nm", 0.0),
        ("mtf_sigma_px", -0.5),
        ("support", "graphene"),
        ("carbon_radius_nm", 0.0),
        ("carbon_coverage", 1.0),
        ("carbon_coverage", 0.0),
        ("carbon_mfp_nm", -5.0),
        ("carbon_inner_potential_v", float("nan")),
        ("carbon_texture_rad", 3.5),
    ],
)
def test_validate_names_bad_field(field, value):
    p = dataclasses.replace(SynthParams(), **{field: value})
    with pytest.raises(ConfigError, match=field):
        p.validate()


def test_defaults_valid_and_roundtrip():
    p = SynthParams()
    p.validate()
    assert SynthParams.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    with pytest.raises(ConfigError, match="bogus"):
        SynthParams.from_dict({"bogus": 1})


def test_impossible_packing_is_config_error():
    p = SynthParams(frames=1, height=16, width=16, n_particles=500)
    with pytest.raises(ConfigError, match="n_particles"):
        list(simulate_tracks(p))


def test_k2_frame_name():
    assert k2_frame_name(405, 400) == "Capture1_Hour_00_Minute_00_Second_01_Frame_0005.tif"
    assert k2_frame_name(0, 400.0) == "Capture1_Hour_00_Minute_00_Second_00_Frame_0000.tif"
    assert (
        k2_frame_name(400 * 3661 + 7, 400)
        == "Capture1_Hour_01_Minute_01_Second_01_Frame_0007.tif"
    )


# ------------------------------------------------------------------------------------------
# determinism


def test_deterministic_same_seed(small_run):
    frames, parts, events = small_run
    again = list(simulate(SMALL))
    for (a_img, a_lab), (b_img, b_lab) in zip(frames, again):
        assert a_img.dtype == np.uint16 and a_lab.dtype == np.uint32
        assert a_img.shape == (SMALL.height, SMALL.width)
        np.testing.assert_array_equal(a_img, b_img)
        np.testing.assert_array_equal(a_lab, b_lab)
    parts2, events2 = simulate_tracks(SMALL)
    pd.testing.assert_frame_equal(parts, parts2)
    pd.testing.assert_frame_equal(events, events2)


def test_different_seed_differs(small_run):
    frames, parts, _ = small_run
    other = dataclasses.replace(SMALL, seed=SMALL.seed + 1)
    img, lab = next(iter(simulate(other)))
    assert not np.array_equal(img, frames[0][0])
    assert not np.array_equal(lab, frames[0][1])
    parts2, _ = simulate_tracks(other)
    assert not parts2[parts2.frame == 0][["x_nm", "y_nm"]].equals(
        parts[parts.frame == 0][["x_nm", "y_nm"]]
    )


# ------------------------------------------------------------------------------------------
# truth consistency


def test_small_movie_has_all_event_kinds(small_run):
    _, _, events = small_run
    kinds = set(events["kind"])
    assert {"coalescence", "vanish", "appear"} <= kinds


def test_label_ids_match_table(small_run):
    frames, parts, _ = small_run
    for f, (_, lab) in enumerate(frames):
        ids = set(np.unique(lab).tolist()) - {0}
        rows = parts[(parts.frame == f) & parts.in_frame]
        assert ids == set(rows.particle.tolist()), f"frame {f}"


def test_label_area_and_centroid(small_run):
    frames, parts, _ = small_run
    h, w = SMALL.height, SMALL.width
    checked = 0
    for f, (_, lab) in enumerate(frames):
        counts = np.bincount(lab.ravel())
        rows = parts[(parts.frame == f) & parts.in_frame]
        for row in rows.itertuples():
            r = row.radius_px
            inside = (
                row.y_px - r > 0.5 and row.y_px + r < h - 1.5
                and row.x_px - r > 0.5 and row.x_px + r < w - 1.5
            )
            if not inside or r <= 3:
                continue
            n = counts[row.particle]
            expect = np.pi * r * r
            tol = 0.12 if r < 5 else 0.05
            assert abs(n - expect) / expect < tol, (f, row.particle, n, expect)
            yy, xx = np.nonzero(lab == row.particle)
            assert abs(yy.mean() - row.y_px) < 0.5
            assert abs(xx.mean() - row.x_px) < 0.5
            checked += 1
    assert checked > 50


def test_volume_conservation(small_run):
    _, parts, events = small_run
    v = parts.groupby("frame")["volume_nm3"].sum()
    appear = events[events.kind == "appear"]
    for f in range(1, SMALL.frames):
        added = 0.0
        for child in appear[appear.frame == f].child:
            added += float(
                parts[(parts.frame == f) & (parts.particle == child)].volume_nm3.iloc[0]
            )
        assert v[f] == pytest.approx(v[f - 1] + added, rel=1e-6), f
    # r^3 and volume columns agree
    np.testing.assert_allclose(parts.volume_nm3, 4 / 3 * np.pi * parts.radius_nm**3)


def test_events_consistent_with_tables(small_run):
    _, parts, events = small_run
    by_frame = {f: set(g.particle.tolist()) for f, g in parts.groupby("frame")}
    vol = parts.set_index(["frame", "particle"]).volume_nm3
    for f in range(1, SMALL.frames):
        ev = events[events.frame == f]
        gone = by_frame[f - 1] - by_frame[f]
        born = by_frame[f] - by_frame[f - 1]
        ended = set()
        for e in ev.itertuples():
            ended |= set(int(p) for p in e.parents)
            if e.kind == "vanish":
                assert e.child == -1 and len(e.parents) >= 1
            else:
                assert e.child in born
            if e.kind == "appear":
                assert len(e.parents) == 0
            if e.kind == "coalescence":
                assert len(e.parents) >= 2
                before = sum(vol[(f - 1, int(p))] for p in e.parents)
                # the parents also ripen during the step (8x the default rate here)
                assert vol[(f, e.child)] == pytest.approx(before, rel=0.1)
        assert ended == gone, f
        assert set(ev[ev.child >= 0].child.tolist()) == born, f


def test_default_demo_events_and_coverage():
    p = SynthParams()
    parts, events = simulate_tracks(p)
    seen = events[events.in_frame]
    assert (seen.kind == "coalescence").sum() >= 3
    assert (seen.kind == "vanish").sum() >= 3
    vol = parts.set_index(["frame", "particle"]).volume_nm3
    for e in events[events.kind == "coalescence"].itertuples():
        before = sum(vol[(e.frame - 1, int(q))] for q in e.parents)
        assert vol[(e.frame, e.child)] == pytest.approx(before, rel=0.02)
    _, lab = next(iter(simulate(p)))
    cov = np.count_nonzero(lab) / lab.size
    assert 0.10 <= cov <= 0.20
    # mean radius grows (ripening + coalescence)
    r0 = parts[(parts.frame == 0)].radius_nm.mean()
    r1 = parts[(parts.frame == p.frames - 1)].radius_nm.mean()
    assert r1 > r0


def test_drift_moves_static_particles():
    p = SynthParams(
        frames=5, height=64, width=80, pixel_size_nm=0.4, ripening_rate=0.0,
        migration_nm2_per_s=0.0, appear_rate=0.0, drift_px_per_frame=(0.7, -0.4),
    )
    parts, events = simulate_tracks(p)
    assert len(events) == 0
    drift = simulate_drift(p)
    np.testing.assert_allclose(drift.dy_px, 0.7 * np.arange(5))
    first = parts[parts.frame == 0].set_index("particle")
    for f in range(1, 5):
        cur = parts[parts.frame == f].set_index("particle")
        np.testing.assert_allclose(cur.y_px - first.y_px, 0.7 * f, atol=1e-9)
        np.testing.assert_allclose(cur.x_px - first.x_px, -0.4 * f, atol=1e-9)
        np.testing.assert_allclose(cur.x_nm, cur.x_px * p.pixel_size_nm)


# ------------------------------------------------------------------------------------------
# images


def test_particles_dark_and_poisson(small_run):
    frames, _, _ = small_run
    img, lab = frames[0]
    assert img[lab > 0].mean() < 0.9 * img[lab == 0].mean()
    flat = SynthParams(
        frames=1, height=64, width=96, n_particles=0, texture=0.0, gradient=0.0,
        appear_rate=0.0, dose=150.0,
    )
    img, lab = next(iter(simulate(flat)))
    assert not lab.any()
    assert img.mean() == pytest.approx(150.0, rel=0.02)
    assert img.var() == pytest.approx(150.0, rel=0.15)


def test_full_size_frame():
    p = SynthParams(frames=1, height=1792, width=1920)
    img, lab = next(iter(simulate(p)))
    assert img.shape == (1792, 1920) and img.dtype == np.uint16
    assert lab.shape == (1792, 1920) and lab.dtype == np.uint32
    assert 0.10 < np.count_nonzero(lab) / lab.size < 0.20


# ------------------------------------------------------------------------------------------
# writing


def test_write_synthetic_movie(tmp_path):
    p = dataclasses.replace(SMALL, fps=10.0)
    out = tmp_path / "movie"
    summary = write_synthetic_movie(out, p, progress=False)
    names = sorted(x.name for x in (out / "frames").iterdir())
    assert len(names) == p.frames
    assert "Capture1_Hour_00_Minute_00_Second_01_Frame_0001.tif" in names
    img = tifffile.imread(out / "frames" / k2_frame_name(11, 10.0))
    assert img.dtype == np.uint16 and img.shape == (p.height, p.width)
    with tifffile.TiffFile(out / "frames" / names[0]) as tf:
        assert tf.imagej_metadata["unit"] == "nm"
    labels = zarr.open_array(str(out / "truth" / "labels.zarr"), mode="r")
    assert labels.shape == (p.frames, p.height, p.width) and labels.dtype == np.uint32
    assert labels.attrs["pixel_size_nm"] == p.pixel_size_nm
    frames = list(simulate(p))
    np.testing.assert_array_equal(img, frames[11][0])
    np.testing.assert_array_equal(labels[5], frames[5][1])
    parts = pd.read_parquet(out / "truth" / "particles.parquet")
    events = pd.read_parquet(out / "truth" / "events.parquet")
    drift = pd.read_parquet(out / "truth" / "drift.parquet")
    parts2, events2 = simulate_tracks(p)
    pd.testing.assert_frame_equal(parts, parts2)
    assert len(events) == len(events2)
    assert list(drift.columns) == ["frame", "dy_px", "dx_px"]
    import pyarrow.parquet as pq     # truth tables carry units like every other table
    assert pq.read_schema(out / "truth" / "particles.parquet").field("radius_nm").metadata == \
        {b"unit": b"nm"}
    assert pq.read_schema(out / "truth" / "drift.parquet").field("dx_px").metadata == \
        {b"unit": b"px"}
    assert b"etemseg" in pq.read_schema(out / "truth" / "events.parquet").metadata
    meta = json.loads((out / "synth.json").read_text())
    assert SynthParams.from_dict(meta["params"]) == p
    assert meta["summary"]["n_frames"] == p.frames == summary["n_frames"]
    for kind in ("coalescence", "vanish", "appear"):
        assert summary[f"n_{kind}"] == int((events.kind == kind).sum())
    # a previous synth output is replaced
    p2 = dataclasses.replace(p, frames=3)
    write_synthetic_movie(out, p2, progress=False)
    assert len(list((out / "frames").iterdir())) == 3
    assert [x.name for x in tmp_path.iterdir()] == ["movie"]


def test_write_refuses_foreign_dir(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    with pytest.raises(InputFileError):
        write_synthetic_movie(out, dataclasses.replace(SMALL, frames=2), progress=False)
    assert (out / "precious.txt").read_text() == "keep"
    assert sorted(x.name for x in out.iterdir()) == ["precious.txt"]


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    real = synth.writers._run

    def broken(p):
        for i, item in enumerate(real(p)):
            if i == 2:
                raise RuntimeError("killed")
            yield item

    monkeypatch.setattr(synth.writers, "_run", broken)
    with pytest.raises(RuntimeError):
        write_synthetic_movie(tmp_path / "movie", SMALL, progress=False)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------
# realistic imaging (diffraction contrast, Fresnel fringes, support, MTF, low dose)

REAL = dataclasses.replace(SMALL, imaging="realistic", pixel_size_nm=0.25)


def _bright(p: SynthParams, **changes) -> SynthParams:
    """A static, evenly lit, nearly noise-free variant (shot noise ~0.7 % per pixel)."""
    return dataclasses.replace(p, gradient=0.0, dose=20000.0, **changes)


def _particle_contrast(img: np.ndarray, lab: np.ndarray, parts: pd.DataFrame,
                       min_radius_nm: float) -> pd.Series:
    """1 - mean(particle) / median(background), per particle whose disc lies inside the frame."""
    h, w = img.shape
    bg = float(np.median(img[lab == 0]))
    area = np.bincount(lab.ravel(), minlength=int(parts.particle.max()) + 1)
    total = np.bincount(lab.ravel(), weights=img.ravel().astype(float), minlength=area.size)
    rows = parts[(parts.radius_nm >= min_radius_nm) & (parts.y_px - parts.radius_px > 1)
                 & (parts.y_px + parts.radius_px < h - 2) & (parts.x_px - parts.radius_px > 1)
                 & (parts.x_px + parts.radius_px < w - 2)]
    ids = rows.particle.to_numpy()
    return pd.Series(1.0 - total[ids] / area[ids] / bg, index=ids)


def _edge_profile(img: np.ndarray, lab: np.ndarray, parts: pd.DataFrame) -> np.ndarray:
    """Azimuthal average of img / background - 1 against distance from the particle edge, px.

    Bin ``b`` holds distances ``[b - 4, b - 3)`` px (bin 4: the first pixel outside the edge);
    pixels of other particles are left out.
    """
    h, w = img.shape
    bg = float(np.median(img[lab == 0]))
    yy, xx = np.mgrid[:h, :w]
    prof, count = np.zeros(16), np.zeros(16)
    for row in parts.itertuples():
        if row.radius_px < 5 or not (16 < row.y_px < h - 16 and 16 < row.x_px < w - 16):
            continue
        d = np.hypot(yy - row.y_px, xx - row.x_px) - row.radius_px
        sel = (d > -4) & (d < 12) & ((lab == 0) | (lab == row.particle))
        b = np.floor(d[sel] + 4).astype(int)
        np.add.at(prof, b, img[sel] / bg - 1.0)
        np.add.at(count, b, 1)
    assert count[4:7].min() > 500
    return prof / np.maximum(count, 1)


def test_realistic_deterministic_and_seeded():
    a = list(simulate(dataclasses.replace(REAL, frames=4)))
    b = list(simulate(dataclasses.replace(REAL, frames=4)))
    for (ai, al), (bi, bl) in zip(a, b):
        assert ai.dtype == np.uint16 and ai.shape == (REAL.height, REAL.width)
        np.testing.assert_array_equal(ai, bi)
        np.testing.assert_array_equal(al, bl)
    other = next(iter(simulate(dataclasses.replace(REAL, frames=1, seed=REAL.seed + 1))))
    assert not np.array_equal(other[0], a[0][0])


def test_labels_and_tables_identical_between_imaging_modes(small_run):
    frames, parts, events = small_run
    real = list(simulate(dataclasses.replace(SMALL, imaging="realistic")))
    for (mi, ml), (ri, rl) in zip(frames, real):
        np.testing.assert_array_equal(ml, rl)
        assert not np.array_equal(mi, ri)
    parts2, events2 = simulate_tracks(dataclasses.replace(SMALL, imaging="realistic"))
    pd.testing.assert_frame_equal(parts, parts2)
    pd.testing.assert_frame_equal(events, events2)


def test_mass_thickness_ignores_realistic_fields(small_run):
    frames, _, _ = small_run
    p = dataclasses.replace(SMALL, defocus_nm=-900.0, mtf_sigma_px=2.0,
                            support_phase_rad=1.0, rotation_deg2_per_s=1e4)
    for (a, _), (b, _) in zip(frames, simulate(p)):
        np.testing.assert_array_equal(a, b)


def test_realistic_particles_dark_some_faint_none_invisible():
    p = _bright(SynthParams(frames=1, height=384, width=384, pixel_size_nm=0.3,
                            imaging="realistic", seed=2))
    img, lab = next(iter(simulate(p)))
    parts, _ = simulate_tracks(p)
    con = _particle_contrast(img, lab, parts[parts.frame == 0], min_radius_nm=1.5)
    assert len(con) >= 60
    # diffraction contrast: a wide spread, many particles under half of the strong ones
    lo, hi = np.percentile(con, [10, 90])
    assert hi / lo > 1.8
    faint = (con < 0.5 * hi).mean()
    assert 0.25 <= faint <= 0.9, faint
    # faint, not invisible: absorption and phase keep >= 8 % mean contrast over the disc
    assert con.min() >= 0.08
    # the cartoon gives every particle the same contrast
    mt = dataclasses.replace(p, imaging="mass-thickness", texture=0.0)
    img_mt, _ = next(iter(simulate(mt)))
    con_mt = _particle_contrast(img_mt, lab, parts[parts.frame == 0], min_radius_nm=1.5)
    lo_mt, hi_mt = np.percentile(con_mt, [10, 90])
    assert hi_mt / lo_mt < 1.3


def test_realistic_contrast_changes_as_crystals_rotate():
    static = dict(frames=12, height=192, width=192, pixel_size_nm=0.3, imaging="realistic",
                  ripening_rate=0.0, migration_nm2_per_s=0.0, appear_rate=0.0,
                  drift_px_per_frame=(0.0, 0.0), seed=4)

    def contrast_series(rotation: float) -> pd.DataFrame:
        p = _bright(SynthParams(**static, rotation_deg2_per_s=rotation))
        parts, _ = simulate_tracks(p)
        return pd.DataFrame({f: _particle_contrast(img, lab, parts[parts.frame == f], 1.5)
                             for f, (img, lab) in enumerate(simulate(p))})

    still = contrast_series(0.0)
    spinning = contrast_series(20000.0)
    assert len(still) >= 15
    assert still.std(axis=1).max() < 0.005       # shot noise only
    change = (spinning.max(axis=1) - spinning.min(axis=1))
    assert (change > 0.05).mean() > 0.3          # particles fade and recover


def test_fresnel_fringe_follows_defocus():
    base = _bright(SynthParams(frames=1, height=256, width=256, imaging="realistic", seed=2))
    parts, _ = simulate_tracks(base)
    parts = parts[parts.frame == 0]

    def profile(**changes) -> np.ndarray:
        img, lab = next(iter(simulate(dataclasses.replace(base, **changes))))
        return _edge_profile(img, lab, parts)

    under = profile()                                   # -300 nm, Cs 1.2 mm
    over = profile(defocus_nm=300.0)
    focus = profile(defocus_nm=0.0, spherical_aberration_mm=0.0)
    assert under[5:7].max() > 0.06                      # bright ring just outside the edge
    assert over[5:8].min() < -0.06                      # dark ring at overfocus
    assert np.abs(focus[5:12]).max() < 0.02             # in focus, no aberration: no fringe
    assert focus[0:3].mean() < -0.05                    # the particle itself still absorbs


@pytest.mark.parametrize("dose", [20.0, 80.0])
def test_realistic_dose_sets_poisson_noise(dose):
    flat = SynthParams(frames=1, height=128, width=128, imaging="realistic", n_particles=0,
                       appear_rate=0.0, gradient=0.0, support_phase_rad=0.0, dose=dose)
    img, lab = next(iter(simulate(flat)))
    assert not lab.any()
    assert img.mean() == pytest.approx(dose, rel=0.02)
    assert img.var() == pytest.approx(dose, rel=0.1)


def test_realistic_default_dose_is_low():
    p = SynthParams(imaging="realistic")
    assert p.dose is None and p.dose_per_px == 40.0
    assert SynthParams().dose_per_px == 200.0
    flat = dataclasses.replace(p, frames=1, height=64, width=64, n_particles=0, appear_rate=0.0,
                               gradient=0.0)
    img, _ = next(iter(simulate(flat)))
    assert img.mean() == pytest.approx(40.0, rel=0.05)


def test_write_realistic_movie(tmp_path):
    p = dataclasses.replace(REAL, frames=3)
    summary = write_synthetic_movie(tmp_path / "movie", p, progress=False)
    assert summary["imaging"] == "realistic" and summary["dose_per_px"] == 40.0
    meta = json.loads((tmp_path / "movie" / "synth.json").read_text())
    assert SynthParams.from_dict(meta["params"]) == p
    img = tifffile.imread(tmp_path / "movie" / "frames" / k2_frame_name(2, p.fps))
    np.testing.assert_array_equal(img, list(simulate(p))[2][0])


def test_realistic_support_moves_with_the_stage():
    p = SynthParams(frames=3, height=96, width=96, imaging="realistic", n_particles=0,
                    appear_rate=0.0, gradient=0.0, dose=20000.0, support_phase_rad=0.3,
                    drift_px_per_frame=(1.5, -1.5))
    f0, f1, f2 = (img.astype(float) for img, _ in simulate(p))
    a, b = f0[8:-12, 12:-8], f2[11:-9, 9:-11]    # frame 2 = frame 0 moved by (+3, -3) px
    ky, kx = np.fft.fftfreq(96)[:, None], np.fft.fftfreq(96)[None, :]
    f0_moved = np.fft.ifft2(np.fft.fft2(f0) * np.exp(-2j * np.pi * 1.5 * (ky - kx))).real

    def corr(u: np.ndarray, v: np.ndarray) -> float:
        return float(np.corrcoef(u.ravel(), v.ravel())[0, 1])

    assert f0.std() / f0.mean() > 0.05                  # a visible texture
    assert corr(a, b) > 0.95                            # the same texture, moved (sub-px steps)
    assert corr(a, f2[8:-12, 12:-8]) < 0.5
    assert corr(f0_moved[12:-12, 12:-12], f1[12:-12, 12:-12]) > 0.98   # sub-pixel steps


def test_electron_optics_constants():
    from etemseg.synth import optics

    assert optics.wavelength_nm(300.0) == pytest.approx(1.9687e-3, rel=1e-3)
    assert optics.wavelength_nm(200.0) == pytest.approx(2.5079e-3, rel=1e-3)
    assert optics.interaction_constant(300.0) == pytest.approx(6.526e-3, rel=2e-3)
    xi = optics.extinction_distances_nm(300.0)
    assert xi[(1, 1, 1)] == pytest.approx(18.3 * 1.416, rel=0.01)
    g, xis = optics.au_reflections_per_nm(300.0)
    assert g.shape == (26, 3) and xis.shape == (26,)
    np.testing.assert_allclose(np.sort(np.unique(np.round(np.linalg.norm(g, axis=1), 3))),
                               [np.sqrt(3) / 0.40782, 2 / 0.40782, np.sqrt(8) / 0.40782],
                               rtol=1e-3)
    t = np.array([0.0, 5.0, xi[(1, 1, 1)] / 2])
    np.testing.assert_allclose(optics.two_beam_intensity(t, 0.0, xi[(1, 1, 1)]),
                               np.sin(np.pi * t / xi[(1, 1, 1)]) ** 2, atol=1e-12)
    rot = optics.random_rotations(np.random.default_rng(0), 50)
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape),
                               atol=1e-12)
    s = optics.excitation_errors(np.eye(3)[None], g, 0.0)   # beam along [001]
    np.testing.assert_allclose(s[0], -g[:, 2])


def test_carbon_black_support_thick_textured_with_vacuum():
    """Carbon black: truth unchanged, film-mode frames unchanged, carbon darker than vacuum by
    its mass thickness, textured where thick, featureless vacuum, moving with the stage."""
    from etemseg.synth.imaging import RealisticRenderer
    from etemseg.synth.physics import _orientation_stream, _streams

    base = SynthParams(frames=2, height=256, width=256, imaging="realistic", dose=20000.0,
                       n_particles=0, appear_rate=0.0, gradient=0.0, seed=5)
    cb = dataclasses.replace(base, support="carbon-black")
    film = [img for img, _ in simulate(base)]
    frames = list(simulate(cb))
    assert all(not lab.any() for _, lab in frames)
    assert not np.array_equal(film[0], frames[0][0])
    # the film mode draws nothing new: a carbon-black field leaves it byte-identical
    again = dataclasses.replace(base, carbon_radius_nm=40.0, carbon_texture_rad=1.0)
    for a, (b, _) in zip(film, simulate(again)):
        np.testing.assert_array_equal(a, b)
    r = RealisticRenderer(cb, _streams(cb.seed)[1], _orientation_stream(cb.seed))
    t = r.carbon_nm[r.pad:r.pad + 256, r.pad:r.pad + 256]    # frame 0's carbon, nm
    assert 0.4 < (t > 0).mean() < 0.98 and t.max() > 20.0
    img = frames[0][0].astype(float)
    vac = ndimage.binary_erosion(t == 0, iterations=12)
    thick = ndimage.binary_erosion(t > 25.0, iterations=12)
    assert vac.sum() > 300 and thick.sum() > 300
    # mass thickness: exp(-t / 200 nm); texture: relative r.m.s. well above the vacuum's
    expected = np.exp(-t[thick] / cb.carbon_mfp_nm).mean()
    assert abs(img[thick].mean() / img[vac].mean() - expected) < 0.05
    assert img[thick].std() / img[thick].mean() > 3 * img[vac].std() / img[vac].mean()
    # the same carbon at the other frame, moved by the drift (0.05, 0.03) px: near-identical
    assert np.corrcoef(img[thick], frames[1][0].astype(float)[thick])[0, 1] > 0.9
