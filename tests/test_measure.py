"""Particle measurement: agreement with skimage regionprops, ground truth, Parquet, stores."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from skimage.measure import label as sk_label
from skimage.measure import regionprops_table

from etemseg.errors import ConfigError, InputFileError
from etemseg.analysis.measure import (
    COLUMNS,
    SCHEMA,
    UNITS,
    empty_table,
    measure_frame,
    measure_stack,
    particles_digest,
    read_overlaps,
    read_parquet_metadata,
    read_parquet_units,
    write_overlaps,
    write_parquet,
)
from etemseg.stages.measure import measure_chunk, resolve_min_area
from etemseg.io.store import MovieStore, create_store

PS = 0.18
PROPS = ["label", "area", "centroid", "equivalent_diameter_area", "axis_major_length",
         "axis_minor_length", "eccentricity", "orientation", "perimeter", "intensity_mean",
         "bbox"]


def random_masks(t: int = 4, h: int = 70, w: int = 96, seed: int = 0) -> np.ndarray:
    """Unions of disks (some cut by the edges), single pixels and lines; non-square frames."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    masks = np.zeros((t, h, w), np.uint8)
    for f in range(t):
        m = masks[f]
        for _ in range(14):
            cy, cx = rng.uniform(-3, h + 3), rng.uniform(-3, w + 3)
            for _ in range(rng.integers(1, 4)):  # irregular blobs: unions of nearby disks
                r = rng.uniform(0.8, 7)
                oy, ox = rng.normal(0, 3, 2)
                m[(yy - cy - oy) ** 2 + (xx - cx - ox) ** 2 < r * r] = 1
        m[rng.integers(0, h, 6), rng.integers(0, w, 6)] = 1          # single pixels
        m[0, :5] = 1                                                # on the edge
        m[h - 1, w - 1] = 1                                         # corner pixel
        r0 = rng.integers(2, h - 12)
        m[r0, w // 3:w // 3 + 10] = 1                               # horizontal line
        for i in range(8):                                          # diagonal line
            m[r0 + 2 + i, w // 2 + i] = 1
    masks[-1, 10:20, 10:20] = 1                                     # a square (a == c exactly)
    return masks


def random_frames(shape, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 60000, size=shape).astype(np.uint16)


def wrap_angle(d: np.ndarray) -> np.ndarray:
    """Difference of axis angles modulo pi, in [-pi/2, pi/2)."""
    return (d + math.pi / 2) % math.pi - math.pi / 2


def assert_matches_regionprops(df: pd.DataFrame, masks, frames, frame0: int, connectivity: int):
    for t in range(len(masks)):
        lab = sk_label(masks[t] > 0, connectivity=connectivity)
        px = regionprops_table(lab, frames[t], properties=PROPS)
        nm = regionprops_table(lab, frames[t], properties=PROPS, spacing=(PS, PS))
        d = df[df["frame"] == frame0 + t]
        assert len(d) == len(px["label"]) > 0
        np.testing.assert_array_equal(d["label"], px["label"])
        np.testing.assert_array_equal(d["area_px"], px["area"])

        def close(col, ref, atol=1e-9, d=d):
            np.testing.assert_allclose(d[col].to_numpy(), ref, rtol=1e-6, atol=atol, err_msg=col)

        close("y_px", px["centroid-0"])
        close("x_px", px["centroid-1"])
        close("y_nm", nm["centroid-0"])
        close("x_nm", nm["centroid-1"])
        close("area_nm2", nm["area"])
        close("eq_diameter_nm", nm["equivalent_diameter_area"])
        close("major_axis_nm", nm["axis_major_length"])
        # exactly degenerate shapes (lines) have lambda2 = 0; eigvalsh may give ~1e-16
        close("minor_axis_nm", nm["axis_minor_length"], atol=1e-6)
        close("eccentricity", px["eccentricity"], atol=1e-6)
        close("perimeter_nm", nm["perimeter"])
        close("mean_intensity", px["intensity_mean"])
        h, w = masks.shape[1:]
        touches = ((px["bbox-0"] == 0) | (px["bbox-1"] == 0) | (px["bbox-2"] == h)
                   | (px["bbox-3"] == w))
        np.testing.assert_array_equal(d["touches_border"], touches)
        # orientation: skimage's value is ill-conditioned for (near-)circular shapes
        major, minor = px["axis_major_length"], px["axis_minor_length"]
        elongated = (major - minor) > 1e-3 * major
        diff = wrap_angle(d["orientation_rad"].to_numpy() - px["orientation"])
        assert np.abs(diff[elongated]).max() < 1e-6
        assert elongated.sum() >= 5
        assert np.all(np.abs(d["orientation_rad"]) <= math.pi / 2 + 1e-12)


@pytest.mark.parametrize("connectivity", [2, 1])
def test_stack_matches_regionprops(connectivity):
    masks = random_masks()
    frames = random_frames(masks.shape)
    times = np.array([0.0, 0.0025, 0.01, 0.0125])
    df = measure_stack(masks, frames, frame0=40, time_s=times, pixel_size_nm=PS, movie="m1",
                       connectivity=connectivity)
    assert tuple(df.columns) == COLUMNS
    assert (df["movie"] == "m1").all()
    np.testing.assert_array_equal(df["time_s"], times[df["frame"] - 40])
    assert_matches_regionprops(df, masks, frames, 40, connectivity)
    assert df["touches_border"].any() and not df["touches_border"].all()
    assert (df["area_px"] == 1).any()


def test_orientation_ties_like_skimage():
    """Equal second moments (a == c) are decided exactly: +-pi/4 by the sign of the xy moment."""
    m = np.zeros((30, 40), np.uint8)
    m[2:8, 2:8] = 1                                   # square: b == 0 -> -pi/4
    for i in range(6):
        m[12 + i, 2 + i] = 1                          # diagonal down-right
        m[12 + i, 20 - i] = 1                         # anti-diagonal
    m[2, 30] = 1                                      # single pixel
    yy, xx = np.mgrid[:30, :40]
    m[(yy - 22) ** 2 + (xx - 32) ** 2 < 26] = 1       # disk: l1 == l2 exactly
    df = measure_frame(m, None, pixel_size_nm=1.0)
    lab = sk_label(m, connectivity=2)
    ref = regionprops_table(lab, properties=["orientation", "eccentricity"])
    np.testing.assert_allclose(df["orientation_rad"], ref["orientation"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(df["eccentricity"], ref["eccentricity"], rtol=0, atol=1e-12)
    assert sorted(np.round(df["orientation_rad"] / (math.pi / 4))) == [-1, -1, -1, -1, 1]
    symmetric = df["area_px"].isin([36, 81, 1])       # square, disk, pixel
    assert symmetric.sum() == 3 and (df.loc[symmetric, "eccentricity"] == 0).all()
    assert (df.loc[symmetric, "major_axis_nm"] == df.loc[symmetric, "minor_axis_nm"]).all()


def test_component_numbering_does_not_rely_on_csgraph_order(monkeypatch):
    """Component ids follow raster order even if connected_components numbers them otherwise."""
    from etemseg.analysis import measure

    masks = random_masks(t=2, seed=11)
    frames = random_frames(masks.shape)
    args = {"frame0": 0, "time_s": [0.0, 1.0], "pixel_size_nm": PS, "movie": "m"}
    expected = measure_stack(masks, frames, **args)
    real = measure.connected_components

    def reversed_ids(graph, directed):
        n, comp = real(graph, directed=directed)
        return n, (n - 1 - comp).astype(comp.dtype)

    monkeypatch.setattr(measure, "connected_components", reversed_ids)
    pd.testing.assert_frame_equal(measure_stack(masks, frames, **args), expected)


def test_huge_component_float_moments():
    """Moments too large for exact int64 products fall back to float64 and still agree."""
    m = np.ones((3, 700_000), np.uint8)
    m[0, :1000] = 0
    m[2, 600_000:] = 0
    df = measure_frame(m, None, pixel_size_nm=1.0)
    ref = regionprops_table(m.astype(np.int32), properties=["axis_major_length",
                            "axis_minor_length", "orientation", "centroid", "perimeter"])
    assert len(df) == 1
    for col, key in [("major_axis_nm", "axis_major_length"), ("minor_axis_nm", "axis_minor_length"),
                     ("orientation_rad", "orientation"), ("x_px", "centroid-1"),
                     ("y_px", "centroid-0"), ("perimeter_nm", "perimeter")]:
        np.testing.assert_allclose(df[col], ref[key], rtol=1e-6, err_msg=col)


def test_frame_equals_stack_rows_and_labels():
    masks = random_masks(t=2, seed=3)
    frames = random_frames(masks.shape, seed=4)
    stack = measure_stack(masks, frames, frame0=0, time_s=[0.0, 1.0], pixel_size_nm=PS,
                          movie="m")
    one = measure_frame(masks[1], frames[1], pixel_size_nm=PS, frame_index=1, time_s=1.0,
                        movie="m")
    pd.testing.assert_frame_equal(one, stack[stack["frame"] == 1].reset_index(drop=True))
    lab = sk_label(masks[1] > 0, connectivity=2)
    assert one["label"].tolist() == list(range(1, lab.max() + 1))


def test_min_area_filter_keeps_labels():
    masks = random_masks(t=1, seed=5)
    full = measure_frame(masks[0], None, pixel_size_nm=PS)
    big = measure_frame(masks[0], None, pixel_size_nm=PS, min_area_px=10)
    expected = full[full["area_px"] >= 10].reset_index(drop=True)
    pd.testing.assert_frame_equal(big, expected)
    assert len(big) < len(full)
    assert full["mean_intensity"].isna().all()  # no frame given


def test_empty_single_frame_and_all_foreground():
    empty = measure_stack(np.zeros((3, 20, 30), np.uint8), np.ones((3, 20, 30), np.uint16),
                          frame0=0, time_s=np.zeros(3), pixel_size_nm=PS, movie="m")
    assert len(empty) == 0 and tuple(empty.columns) == COLUMNS
    pd.testing.assert_series_equal(empty.dtypes, empty_table().dtypes)
    # one frame, one particle covering the whole frame
    full = measure_frame(np.ones((9, 13), bool), np.full((9, 13), 7, np.uint16),
                         pixel_size_nm=1.0)
    assert len(full) == 1
    row = full.iloc[0]
    assert row["area_px"] == 117 and row["touches_border"] and row["mean_intensity"] == 7
    assert (row["x_px"], row["y_px"]) == (6.0, 4.0)
    assert row["orientation_rad"] == pytest.approx(math.pi / 2)  # major axis along x


def test_no_pixel_size_gives_nan_nm_columns(caplog):
    masks = random_masks(t=1, seed=6)
    with caplog.at_level(logging.WARNING, logger="etemseg.analysis.measure"):
        df = measure_frame(masks[0], None, pixel_size_nm=None)
    assert "pixel size" in caplog.text
    for col in ("x_nm", "y_nm", "area_nm2", "eq_diameter_nm", "major_axis_nm", "minor_axis_nm",
                "perimeter_nm"):
        assert df[col].isna().all(), col
    assert df["x_px"].notna().all() and df["eccentricity"].notna().all()


def test_bad_arguments():
    m = np.zeros((2, 5, 5), np.uint8)
    with pytest.raises(ConfigError, match="pixel_size_nm"):
        measure_stack(m, None, frame0=0, time_s=[0, 1], pixel_size_nm=-1.0, movie="m")
    with pytest.raises(ConfigError, match="connectivity"):
        measure_stack(m, None, frame0=0, time_s=[0, 1], pixel_size_nm=1.0, movie="m",
                      connectivity=3)
    with pytest.raises(ValueError, match="frames shape"):
        measure_stack(m, np.zeros((2, 5, 6)), frame0=0, time_s=[0, 1], pixel_size_nm=1.0,
                      movie="m")
    with pytest.raises(ValueError, match="time_s"):
        measure_stack(m, None, frame0=0, time_s=[0], pixel_size_nm=1.0, movie="m")


def test_simulated_movie_against_truth():
    from etemseg.synth import SynthParams, simulate, simulate_tracks

    p = SynthParams(frames=4, height=128, width=160)
    images, labels = (np.stack(a) for a in zip(*simulate(p)))
    truth, _ = simulate_tracks(p)
    ps = p.pixel_size_nm
    df = measure_stack(labels > 0, images, frame0=0, time_s=np.arange(4) / p.fps,
                       pixel_size_nm=ps, movie="synth")
    checked = 0
    for f in range(p.frames):
        comp = sk_label(labels[f] > 0, connectivity=2)
        fg = comp > 0
        pairs = np.unique(np.stack([comp[fg], labels[f][fg]], axis=1), axis=0)
        cu, cc = np.unique(pairs[:, 0], return_counts=True)
        tu, tc = np.unique(pairs[:, 1], return_counts=True)
        one_to_one = pairs[np.isin(pairs[:, 0], cu[cc == 1]) & np.isin(pairs[:, 1], tu[tc == 1])]
        rows = df[df["frame"] == f].set_index("label")
        tr = truth[truth["frame"] == f].set_index("particle")
        for c, pid in one_to_one:
            row, trow = rows.loc[c], tr.loc[pid]
            if row["touches_border"] or trow["radius_px"] <= 3:
                continue
            assert abs(row["eq_diameter_nm"] - 2 * trow["radius_nm"]) < 0.3 * ps
            assert abs(row["x_nm"] - trow["x_nm"]) < 0.3 * ps
            assert abs(row["y_nm"] - trow["y_nm"]) < 0.3 * ps
            assert row["mean_intensity"] < np.median(images[f])  # particles are dark
            checked += 1
    assert checked >= 10


def test_parquet_schema_units_and_round_trip(tmp_path):
    masks = random_masks(t=2, seed=7)
    df = measure_stack(masks, random_frames(masks.shape), frame0=0, time_s=[0.0, 0.5],
                       pixel_size_nm=PS, movie="m")
    full = write_parquet(df, tmp_path / "full.parquet",
                         metadata={"pixel_size_nm": PS, "model": "unet", "chunk": 0})
    empty = write_parquet(empty_table("m"), tmp_path / "empty.parquet",
                          metadata={"pixel_size_nm": PS, "model": "unet"})
    s_full, s_empty = pq.read_schema(full), pq.read_schema(empty)
    assert s_full.equals(s_empty)
    assert s_full.remove_metadata().equals(SCHEMA.remove_metadata())
    assert pq.ParquetFile(empty).metadata.num_rows == 0
    assert pq.ParquetFile(full).metadata.row_group(0).column(0).compression == "ZSTD"
    units = read_parquet_units(empty)
    assert units == UNITS
    assert units["x_nm"] == "nm" and units["area_nm2"] == "nm^2" and units["time_s"] == "s"
    assert "frame" not in units and "eccentricity" not in units
    meta = read_parquet_metadata(full)
    assert meta["pixel_size_nm"] == PS and meta["movie"] == "m" and meta["model"] == "unet"
    assert meta["chunk"] == 0 and "etemseg_version" in meta
    back = pd.read_parquet(full)
    pd.testing.assert_frame_equal(back, df)
    back_empty = pd.read_parquet(empty)
    assert len(back_empty) == 0
    pd.testing.assert_series_equal(back_empty.dtypes, df.dtypes)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left nothing behind
    with pytest.raises(InputFileError):
        read_parquet_units(tmp_path / "missing.parquet")


def make_stores(tmp_path, frames: np.ndarray, masks: np.ndarray, *, chunk_frames: int,
                zarr_chunk_frames: int, pixel_size_nm: float | None = PS):
    t = len(frames)
    fstore = tmp_path / "frames.zarr"
    create_store(fstore, n_frames=t, frame_shape=frames.shape[1:], dtype=np.uint16,
                 chunk_frames=chunk_frames, fps=400.0, pixel_size_nm=pixel_size_nm,
                 zarr_chunk_frames=zarr_chunk_frames)
    fs = MovieStore.open(fstore, mode="r+")
    fs.array[...] = frames
    ms = fs.like(tmp_path / "unet" / "mask.zarr", np.uint8)
    ms.array[...] = masks
    return MovieStore.open(fstore), MovieStore.open(ms.path)


def test_measure_chunk_on_stores(tmp_path):
    masks = random_masks(t=6, h=40, w=56, seed=8)
    masks[4:] = 0  # chunk 1 holds frames 4, 5: no particles
    frames = random_frames(masks.shape, seed=9)
    fs, ms = make_stores(tmp_path, frames, masks, chunk_frames=4, zarr_chunk_frames=2)
    times = fs.time_s()
    whole = measure_stack(masks[:4], frames[:4], frame0=0, time_s=times[:4], pixel_size_nm=PS,
                          movie="mv")
    got = measure_chunk(ms, fs, 0, movie="mv", min_area_px=0)
    pd.testing.assert_frame_equal(got, whole)
    assert got["frame"].tolist() == sorted(got["frame"])  # blocks in order
    # paths work too; the empty chunk still gives the schema and a valid file
    none = measure_chunk(ms.path, fs.path, 1, movie="mv", min_area_px=0)
    assert len(none) == 0 and tuple(none.columns) == COLUMNS
    out = write_parquet(none, tmp_path / "particles" / "chunk_0001.parquet",
                        metadata={"pixel_size_nm": fs.pixel_size_nm, "movie": "mv"})
    assert pq.read_schema(out).remove_metadata().equals(SCHEMA.remove_metadata())
    with pytest.raises(ConfigError):
        measure_chunk(ms, fs, 2, movie="mv")


def test_measure_chunk_shape_mismatch_names_store(tmp_path):
    frames = random_frames((4, 20, 24))
    fs, _ = make_stores(tmp_path, frames, np.zeros(frames.shape, np.uint8), chunk_frames=4,
                        zarr_chunk_frames=4)
    bad = tmp_path / "bad" / "mask.zarr"
    create_store(bad, n_frames=4, frame_shape=(20, 25), dtype=np.uint8, chunk_frames=4, fps=400.0,
                 pixel_size_nm=PS)
    with pytest.raises(InputFileError, match="mask.zarr") as info:
        measure_chunk(bad, fs, 0, movie="mv")
    assert info.value.path == bad
    probs = fs.like(tmp_path / "probs.zarr", np.float32)
    with pytest.raises(InputFileError, match="probs.zarr.*dtype float32"):
        measure_chunk(probs, fs, 0, movie="mv")
    with pytest.raises(InputFileError, match="no zarr.json"):
        measure_chunk(tmp_path / "nowhere.zarr", fs, 0, movie="mv")


# ------------------------------------------------------------------ minimum area in nm²

def test_resolve_min_area_arithmetic_and_validation(caplog):
    assert resolve_min_area(20, None, PS) == 20
    assert resolve_min_area(20, 10 * PS**2, PS) == 10          # nm² wins when calibrated
    assert resolve_min_area(20, 1.0, 0.3) == 11                # round(11.1)
    assert resolve_min_area(20, 0.0, PS) == 0
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert resolve_min_area(20, 1.0, None, movie="uncal-a") == 20
        assert resolve_min_area(20, 1.0, None, movie="uncal-a") == 20
    assert sum("no pixel size" in r.getMessage() for r in caplog.records) == 1
    for bad in (-1.0, float("nan"), float("inf"), "1"):
        with pytest.raises(ConfigError, match="measure.min_area_nm2"):
            resolve_min_area(20, bad, PS)


def test_measure_with_min_area_nm2(tmp_path, caplog):
    from etemseg.cli import main

    masks = random_masks(t=6, h=40, w=56, seed=8)
    frames = random_frames(masks.shape, seed=9)
    fs, ms = make_stores(tmp_path, frames, masks, chunk_frames=4, zarr_chunk_frames=2)
    px, a = 10, 10 * PS**2
    every = measure_chunk(ms, fs, 0, movie="mv", min_area_px=0)
    assert (every["area_px"] < px).any() and (every["area_px"] >= px).any()
    got = measure_chunk(ms, fs, 0, movie="mv", min_area_nm2=a)    # min_area_px: default 20
    pd.testing.assert_frame_equal(got, measure_chunk(ms, fs, 0, movie="mv", min_area_px=px))
    pd.testing.assert_frame_equal(got, every[every["area_px"] >= px].reset_index(drop=True))
    # the command: nm² converted once, the px value applied and the nm² value in the metadata
    out = tmp_path / "particles.parquet"
    assert main(["--quiet", "measure", str(fs.path), str(ms.path), str(out), "--movie", "mv",
                 "--min-area-nm2", repr(a)]) == 0
    meta = read_parquet_metadata(out)
    assert meta["min_area_px"] == px and meta["min_area_nm2"] == pytest.approx(a)
    table = pd.read_parquet(out)
    assert table["area_px"].min() >= px
    pd.testing.assert_frame_equal(table[table["frame"] < 4].reset_index(drop=True), got,
                                  check_dtype=False)
    # an uncalibrated movie: min_area_px, with one warning for the whole command
    un = tmp_path / "uncalibrated"
    un.mkdir()
    fs, ms = make_stores(un, frames, masks, chunk_frames=4, zarr_chunk_frames=2,
                         pixel_size_nm=None)
    caplog.clear()
    out = un / "particles.parquet"
    assert main(["--quiet", "measure", str(fs.path), str(ms.path), str(out), "--movie", "mv-un",
                 "--min-area-px", "5", "--min-area-nm2", "100"]) == 0
    meta = read_parquet_metadata(out)
    assert meta["min_area_px"] == 5 and meta["min_area_nm2"] == 100.0
    assert pd.read_parquet(out)["area_px"].min() >= 5
    assert sum("min_area_nm2 = " in r.getMessage() for r in caplog.records) == 1
    assert main(["--quiet", "measure", str(fs.path), str(ms.path), str(un / "bad.parquet"),
                 "--min-area-nm2", "-1"]) == 2


# ------------------------------------------------------------------------------------------
# frame overlaps (the evidence of mask-overlap linking, recorded by the measure stage)


def moving_masks(t: int = 7, h: int = 60, w: int = 75, seed: int = 1) -> np.ndarray:
    """Blobs that change and move a little from frame to frame (smoothed 3-D noise)."""
    from scipy import ndimage

    sm = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal((t, h, w)),
                                 (1, 2, 2))
    return (sm > 0.15 * sm.std()).astype(np.uint8)


def reference_overlaps(masks: np.ndarray, frame0: int, connectivity: int, min_area: int
                       ) -> pd.DataFrame:
    """Pairs of skimage labels of consecutive frames sharing pixels, counted pixel by pixel."""
    labs = [sk_label(m > 0, connectivity=connectivity) for m in masks]
    rows = []
    for f in range(len(masks) - 1):
        a, b = labs[f].ravel(), labs[f + 1].ravel()
        size_a, size_b = np.bincount(a), np.bincount(b)
        both = (a > 0) & (b > 0)
        for (la, lb), n in pd.Series(list(zip(a[both], b[both]))).value_counts().items():
            if size_a[la] >= min_area and size_b[lb] >= min_area:
                rows.append((frame0 + f, frame0 + f + 1, la, lb, n))
    return (pd.DataFrame(rows, columns=["frame_a", "frame_b", "a", "b", "n_px"])
            .sort_values(["frame_a", "a", "b"]).reset_index(drop=True).astype(np.int64))


@pytest.mark.parametrize("connectivity", [1, 2])
@pytest.mark.parametrize("min_area", [0, 5])
def test_measure_stack_overlaps_match_label_images(connectivity, min_area):
    masks = moving_masks()
    args = dict(time_s=np.arange(6.0), pixel_size_nm=PS, movie="m", connectivity=connectivity,
                min_area_px=min_area)
    table, ov = measure_stack(masks[1:], None, frame0=11, overlaps=True, prev_mask=masks[0],
                              **args)
    ref = reference_overlaps(masks, 10, connectivity, min_area)
    assert len(ref) > 50
    pd.testing.assert_frame_equal(ov, ref)
    # the labels are the particle table's
    keys = set(zip(table["frame"], table["label"]))
    assert set(zip(ov["frame_b"], ov["b"])) <= keys
    first = ov["frame_a"] == 10  # the previous frame's particles are not in this table
    assert set(zip(ov["frame_a"][~first], ov["a"][~first])) <= keys
    # the same particle table as without overlaps; no prev_mask: the first pair is left out
    pd.testing.assert_frame_equal(table, measure_stack(masks[1:], None, frame0=11, **args))
    _, ov1 = measure_stack(masks[1:], None, frame0=11, overlaps=True, **args)
    pd.testing.assert_frame_equal(ov1, ref[ref["frame_a"] > 10].reset_index(drop=True))
    # blank blocks and blank previous frames give empty tables with the columns
    blank = np.zeros_like(masks[1:])
    for m, prev in ((blank, masks[0]), (masks[1:2], blank[0])):
        _, e = measure_stack(m, None, frame0=0, time_s=np.arange(len(m), dtype=float),
                             pixel_size_nm=PS, movie="m", overlaps=True, prev_mask=prev)
        assert len(e) == 0 and list(e.columns) == ["frame_a", "frame_b", "a", "b", "n_px"]
    with pytest.raises(ValueError, match="prev_mask"):
        measure_stack(masks[1:], None, frame0=11, overlaps=True, prev_mask=masks[0, :5], **args)


def test_measure_chunk_overlaps_cross_blocks_and_chunks(tmp_path):
    masks = moving_masks(t=10, h=40, w=56, seed=4)
    masks[6] = 0  # a blank frame inside chunk 1
    frames = random_frames(masks.shape, seed=9)
    fs, ms = make_stores(tmp_path, frames, masks, chunk_frames=4, zarr_chunk_frames=2)
    ref = reference_overlaps(masks, 0, 2, 3)
    got = [measure_chunk(ms, fs, k, movie="mv", min_area_px=3, overlaps=True) for k in range(3)]
    for k, (table, ov) in enumerate(got):
        pd.testing.assert_frame_equal(table, measure_chunk(ms, fs, k, movie="mv", min_area_px=3))
        t0, t1 = ms.chunk_bounds(k)
        want = ref[(ref["frame_b"] >= t0) & (ref["frame_b"] < t1)].reset_index(drop=True)
        pd.testing.assert_frame_equal(ov, want)
    # written with the digest of its particle table, read back checked
    path = write_overlaps(got[1][1], tmp_path / "overlaps-1.parquet",
                          metadata={"particles_digest": particles_digest(got[1][0])})
    pd.testing.assert_frame_equal(read_overlaps(path, frames=(4, 8)), got[1][1])
    assert read_parquet_metadata(path)["particles_digest"] == particles_digest(got[1][0])
    assert particles_digest(got[1][0]) != particles_digest(got[0][0])
    assert read_parquet_units(path) == {"n_px": "px"}
    with pytest.raises(InputFileError, match="outside its time chunk"):
        read_overlaps(path, frames=(0, 4))
    bad = got[1][1].copy()
    bad.loc[0, "frame_b"] += 1
    with pytest.raises(InputFileError, match="not consecutive"):
        read_overlaps(write_overlaps(bad, tmp_path / "bad.parquet"))
    with pytest.raises(InputFileError, match="not a frame-overlaps table.*no column 'frame_a'"):
        read_overlaps(write_parquet(got[1][0], tmp_path / "particles.parquet"))
