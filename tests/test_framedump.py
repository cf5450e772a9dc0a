"""Tests for etemseg.io.framedump: K2 names, dump scanning, frame reading, calibration, refusals.

The DM3/DM4 fixtures in tests/data/dm/ are real files written by Gatan Digital Micrograph
(see tests/data/dm/README.md); TIFF and .npy frames are generated here.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from etemseg.errors import ConfigError, InputFileError
from etemseg.io import framedump
from etemseg.io.framedump import (
    SUPPORTED_SUFFIXES,
    DumpIndex,
    FrameSource,
    K2Name,
    count_frames,
    find_gaps,
    natural_key,
    parse_k2_name,
    read_dm_metadata,
    read_frame,
    read_pixel_size_nm,
    scan_dump,
    unit_to_nm,
)

DM = Path(__file__).parent / "data" / "dm"
# Real Digital Micrograph files (hyperspy 1.7.6 test data); values read with rosettasciio and
# checked by hand: STEM image 0.24853801727294922 nm/px; CL image 18.325349807739258 µm/px.
STEM_DM3 = DM / "test_STEM_image.dm3"  # 68x68 uint32, 'nm'
CL_DM4 = DM / "test-MonarcCL_mono-image.dm4"  # 2x2 uint16, 'µm'
PLAIN_DM4 = DM / "dm4_2D_test-10.dm4"  # 2x2 uint16 [[1, 2], [3, 4]], uncalibrated
STACK_DM4 = DM / "dm4_3D_test-10.dm4"  # 2x2x2 uint16 stack
RGBA_DM4 = DM / "dm4_2D_test-23.dm4"  # 2x2 RGBA
COMPLEX_DM3 = DM / "dm3_2D_test-3.dm3"  # 2x2 complex64

K2_EXAMPLE = "Capture1_Hour_00_Minute_05_Second_20_Frame_0007.dm4"


def k2name(h: int, m: int, s: int, f: int, ext: str = ".tif", capture: str = "Capture1") -> str:
    return f"{capture}_Hour_{h:02d}_Minute_{m:02d}_Second_{s:02d}_Frame_{f:04d}{ext}"


def frame(seed: int, shape=(6, 5), dtype=np.uint16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4000, size=shape).astype(dtype)


def assert_refused(excinfo, name: str, *fragments: str) -> None:
    msg = str(excinfo.value)
    assert name in msg, msg
    for frag in fragments:
        assert frag in msg, msg


# ------------------------------------------------------------------------------- K2 names ---


def test_parse_k2_name_example():
    k = parse_k2_name(K2_EXAMPLE)
    assert k == K2Name("Capture1", 0, 5, 20, 7)
    assert k.absolute_frame(400) == (5 * 60 + 20) * 400 + 7


@pytest.mark.parametrize(
    "name, expected",
    [
        ("Capture12_Hour_1_Minute_2_Second_3_Frame_4.dm3", K2Name("Capture12", 1, 2, 3, 4)),
        ("run_b_Hour_00_Minute_00_Second_59_Frame_00399.tif", K2Name("run_b", 0, 0, 59, 399)),
        ("capture1_hour_00_minute_00_second_01_frame_0000.DM4", K2Name("capture1", 0, 0, 1, 0)),
        ("Hour_00_Minute_00_Second_00_Frame_0001.npy", K2Name("", 0, 0, 0, 1)),
        ("/some/dir/" + K2_EXAMPLE, K2Name("Capture1", 0, 5, 20, 7)),
        ("Capture1_Hour_00_Minute_05_Second_20_Frame_0007", K2Name("Capture1", 0, 5, 20, 7)),
    ],
)
def test_parse_k2_name_variants(name, expected):
    assert parse_k2_name(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "frame_0001.tif",
        "Capture1.dm4",
        "Capture1_Hour_00_Minute_05_Frame_0007.dm4",
        "Capture1_Hour_xx_Minute_05_Second_20_Frame_0007.dm4",
        "notes.txt",
        "",
    ],
)
def test_parse_k2_name_rejects_other_names(name):
    assert parse_k2_name(name) is None


def test_absolute_frame_rules():
    assert K2Name("c", 1, 0, 0, 0).absolute_frame(400) == 3600 * 400
    assert K2Name("c", 0, 0, 1, 0).absolute_frame(400.0) == 400
    with pytest.raises(ValueError):
        K2Name("c", 0, 0, 0, 400).absolute_frame(400)
    with pytest.raises(ValueError):
        K2Name("c", 0, 0, 0, 1).absolute_frame(399.5)


def test_helpers():
    names = ["frame_10.tif", "frame_2.tif", "Frame_1.tif"]
    assert sorted(names, key=natural_key) == ["Frame_1.tif", "frame_2.tif", "frame_10.tif"]
    assert find_gaps(np.array([3, 4, 7, 8, 10])) == [(5, 2), (9, 1)]
    assert find_gaps(np.array([5])) == []
    assert unit_to_nm("nm") == 1.0
    for micro in ("µm", "\u03bcm", "um", "micron", "\\u00B5m"):
        assert unit_to_nm(micro) == 1000.0, micro
    for ang in ("Å", "\u212b", "A", "Angstrom"):
        assert unit_to_nm(ang) == pytest.approx(0.1), ang
    assert unit_to_nm("pm") == pytest.approx(1e-3)
    assert unit_to_nm("m") == 1e9
    for bad in ("1/nm", "eV", "pixel", "", None, "furlong"):
        assert unit_to_nm(bad) is None, bad
    assert SUPPORTED_SUFFIXES == (".dm4", ".dm3", ".tif", ".tiff", ".npy")


# ------------------------------------------------------------------------------- scanning ---


def test_scan_k2_gap_across_second_boundary(tmp_path, caplog):
    present = [(0, 397), (0, 398), (0, 399), (1, 1), (1, 2)]  # (1, 0) is missing
    data = {}
    for i, (s, f) in enumerate(present):
        data[(s, f)] = frame(i)
        tifffile.imwrite(tmp_path / k2name(0, 3, s, f), data[(s, f)])
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / ".hidden.tif").write_bytes(b"not a tiff")

    with caplog.at_level(logging.WARNING, logger="etemseg.io.framedump"):
        idx = scan_dump(tmp_path, fps=400)
    assert isinstance(idx, DumpIndex)
    assert idx.naming == "k2"
    base = 3 * 60 * 400
    assert idx.frame_index.dtype == np.int64
    assert idx.frame_index.tolist() == [base + 397, base + 398, base + 399, base + 401, base + 402]
    assert idx.gaps == [(base + 400, 1)]
    assert idx.n_missing == 1
    assert idx.time_s.dtype == np.float64
    np.testing.assert_allclose(idx.time_s, np.array([0, 1, 2, 4, 5]) / 400.0)
    assert np.diff(idx.time_s)[2] == pytest.approx(2 / 400)  # the jump shows the gap
    assert [s.path.name for s in idx.sources] == [k2name(0, 3, s, f) for s, f in present]
    assert all(s.page == 0 for s in idx.sources)
    assert idx.shape == (6, 5) and idx.dtype == np.uint16
    assert idx.pixel_size_nm is None
    assert idx.fps == 400.0 and idx.root == tmp_path
    assert "1 frame(s) missing in 1 gap(s)" in caplog.text and str(base + 400) in caplog.text
    np.testing.assert_array_equal(read_frame(idx.sources[3]), data[(1, 1)])
    assert count_frames(tmp_path, fps=400) == 5


def test_scan_numbered_natural_order(tmp_path):
    for n in (10, 2, 1, 11):
        np.save(tmp_path / f"frame_{n}.npy", np.full((3, 4), n, dtype=np.float32))
    idx = scan_dump(tmp_path, fps=40)
    assert idx.naming == "numbered"
    assert [s.path.name for s in idx.sources] == [
        "frame_1.npy",
        "frame_2.npy",
        "frame_10.npy",
        "frame_11.npy",
    ]
    assert idx.frame_index.tolist() == [1, 2, 10, 11]
    assert idx.gaps == [(3, 7)]
    np.testing.assert_allclose(idx.time_s, [0, 1 / 40, 9 / 40, 10 / 40])
    assert idx.dtype == np.float32 and idx.shape == (3, 4)
    assert read_frame(idx.sources[2])[0, 0] == 10


def test_scan_sequential_names(tmp_path):
    for name in ("b.tif", "a.tif", "c_final.tif"):
        tifffile.imwrite(tmp_path / name, frame(ord(name[0])))
    idx = scan_dump(tmp_path)
    assert idx.naming == "sequential"
    assert [s.path.name for s in idx.sources] == ["a.tif", "b.tif", "c_final.tif"]
    assert idx.frame_index.tolist() == [0, 1, 2] and idx.gaps == []


def test_scan_multipage_tiff_stacks_expand_in_order(tmp_path):
    a = np.stack([frame(i) for i in range(3)])
    b = np.stack([frame(10 + i) for i in range(2)])
    tifffile.imwrite(tmp_path / "stack_2.tif", a, photometric="minisblack")
    tifffile.imwrite(tmp_path / "stack_10.tiff", b, imagej=True)
    idx = scan_dump(tmp_path, fps=100)
    assert idx.naming == "sequential"
    assert [(s.path.name, s.page) for s in idx.sources] == [
        ("stack_2.tif", 0),
        ("stack_2.tif", 1),
        ("stack_2.tif", 2),
        ("stack_10.tiff", 0),
        ("stack_10.tiff", 1),
    ]
    assert idx.frame_index.tolist() == [0, 1, 2, 3, 4]
    got = np.stack([read_frame(s, expect_shape=idx.shape) for s in idx.sources])
    np.testing.assert_array_equal(got, np.concatenate([a, b]))
    assert count_frames(tmp_path, fps=100) == 5


def test_scan_npy_stack(tmp_path):
    stack = np.stack([frame(i, dtype=np.int16) for i in range(4)])
    np.save(tmp_path / "movie.npy", stack)
    idx = scan_dump(tmp_path, fps=400)
    assert [s.page for s in idx.sources] == [0, 1, 2, 3]
    assert idx.dtype == np.int16 and idx.shape == (6, 5)
    for s in idx.sources:
        np.testing.assert_array_equal(read_frame(s), stack[s.page])


def test_scan_dm_dump_with_real_files(tmp_path):
    shutil.copy(STEM_DM3, tmp_path / "img_0.dm3")
    shutil.copy(STEM_DM3, tmp_path / "img_1.dm3")
    idx = scan_dump(tmp_path, fps=10)
    assert idx.naming == "numbered" and len(idx) == 2
    assert idx.shape == (68, 68) and idx.dtype == np.uint32
    assert idx.pixel_size_nm == pytest.approx(0.24853801727294922)


# ------------------------------------------------------------------------- round trips ------


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.uint16, np.int16, np.int32, np.uint32, np.float32, np.float64]
)
def test_roundtrip_tif_npy_dtypes(tmp_path, dtype):
    a = frame(1, dtype=dtype)
    tifffile.imwrite(tmp_path / "f.tif", a)
    np.save(tmp_path / "f.npy", a)
    for p in (tmp_path / "f.tif", tmp_path / "f.npy"):
        got = read_frame(p, expect_shape=(6, 5))
        assert got.dtype == a.dtype
        np.testing.assert_array_equal(got, a)


def test_roundtrip_multipage_tif_pages(tmp_path):
    stack = np.stack([frame(i) for i in range(3)])
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    for p in range(3):
        np.testing.assert_array_equal(read_frame(FrameSource(tmp_path / "s.tif", p, p)), stack[p])
    with pytest.raises(InputFileError) as ei:
        read_frame(FrameSource(tmp_path / "s.tif", 3, 3))
    assert_refused(ei, "s.tif", "no frame 3")


def test_big_endian_tif_returned_native(tmp_path):
    a = frame(2)
    tifffile.imwrite(tmp_path / "be.tif", a, byteorder=">")
    got = read_frame(tmp_path / "be.tif")
    assert got.dtype == np.dtype(np.uint16) and got.dtype.isnative
    np.testing.assert_array_equal(got, a)


def test_read_real_dm3():
    a = read_frame(STEM_DM3)
    assert a.shape == (68, 68) and a.dtype == np.uint32
    assert a.ravel()[:4].tolist() == [33121, 33489, 33638, 32719]
    assert int(a.sum()) == 150998555


def test_read_real_dm4():
    a = read_frame(CL_DM4)
    assert a.dtype == np.uint16 and a.tolist() == [[10, 9], [10, 10]]
    b = read_frame(PLAIN_DM4, expect_shape=(2, 2))
    assert b.dtype == np.uint16 and b.tolist() == [[1, 2], [3, 4]]


# ---------------------------------------------------------------------------- pixel size ---


def test_pixel_size_real_dm3_nm():
    assert read_pixel_size_nm(STEM_DM3) == pytest.approx(0.24853801727294922)


def test_pixel_size_real_dm4_um_converted():
    assert read_pixel_size_nm(CL_DM4) == pytest.approx(18.325349807739258 * 1000)


def test_pixel_size_uncalibrated_dm4_is_none():
    assert read_pixel_size_nm(PLAIN_DM4) is None


def test_read_dm_metadata_real_files():
    md = read_dm_metadata(STEM_DM3)
    assert md["shape"] == (68, 68) and md["dtype"] == "uint32"
    assert md["units"] == "nm" and md["pixel_size_nm"] == pytest.approx(0.248538017)
    assert md["acquisition_date"] == "8/8/2016"
    assert md["acquisition_time_utc"].startswith("2016-08-08T15:26:37")
    md4 = read_dm_metadata(CL_DM4)
    assert md4["shape"] == (2, 2) and md4["dtype"] == "uint16"
    assert md4["units"] == "µm" and md4["pixel_size_nm"] == pytest.approx(18325.3498)


def test_pixel_size_tif_imagej_um(tmp_path):
    p = tmp_path / "cal.tif"
    tifffile.imwrite(
        p, frame(0), imagej=True, resolution=(1 / 0.25, 1 / 0.25), metadata={"unit": "um"}
    )
    assert read_pixel_size_nm(p) == pytest.approx(250.0)
    idx = scan_dump(tmp_path)
    assert idx.pixel_size_nm == pytest.approx(250.0)


def test_pixel_size_tif_json_and_uncalibrated(tmp_path):
    tifffile.imwrite(tmp_path / "j.tif", frame(0), metadata={"pixel_size_nm": 0.42})
    assert read_pixel_size_nm(tmp_path / "j.tif") == pytest.approx(0.42)
    tifffile.imwrite(tmp_path / "plain.tif", frame(0))
    assert read_pixel_size_nm(tmp_path / "plain.tif") is None
    tifffile.imwrite(tmp_path / "px.tif", frame(0), imagej=True, metadata={"unit": "pixel"})
    assert read_pixel_size_nm(tmp_path / "px.tif") is None
    np.save(tmp_path / "f.npy", frame(0))
    assert read_pixel_size_nm(tmp_path / "f.npy") is None


def test_pixel_size_anisotropic_uses_x_and_warns(tmp_path, caplog):
    p = tmp_path / "aniso.tif"
    tifffile.imwrite(
        p, frame(0), imagej=True, resolution=(1 / 0.5, 1 / 0.6), metadata={"unit": "nm"}
    )
    with caplog.at_level(logging.WARNING, logger="etemseg.io.framedump"):
        assert read_pixel_size_nm(p) == pytest.approx(0.5)
    assert "differ" in caplog.text


# ------------------------------------------------------------------------------- refusals ---


def test_refuse_missing_folder(tmp_path):
    with pytest.raises(InputFileError) as ei:
        scan_dump(tmp_path / "nope")
    assert_refused(ei, "nope", "does not exist")


def test_refuse_not_a_folder(tmp_path):
    (tmp_path / "file.tif").write_bytes(b"x")
    with pytest.raises(InputFileError) as ei:
        scan_dump(tmp_path / "file.tif")
    assert_refused(ei, "file.tif", "not a folder")


def test_refuse_empty_folder(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    (d / "readme.txt").write_text("x")
    with pytest.raises(InputFileError) as ei:
        scan_dump(d)
    assert_refused(ei, "empty", "no frame files", ".dm4", ".tif", ".npy", "readme.txt")
    with pytest.raises(InputFileError):
        count_frames(d)


@pytest.mark.parametrize("name", ["bad.tif", "bad.dm4", "bad.dm3", "bad.npy"])
def test_refuse_random_bytes(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(InputFileError) as ei:
        read_frame(p)
    assert_refused(ei, name, "cannot be read")


def _truncate_copy(src: Path, dst: Path, frac: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * frac)])
    return dst


def test_refuse_truncated_tif(tmp_path):
    tifffile.imwrite(tmp_path / "ok.tif", frame(0, shape=(64, 80)))
    p = _truncate_copy(tmp_path / "ok.tif", tmp_path / "cut.tif")
    with pytest.raises(InputFileError) as ei:
        read_frame(p)
    assert_refused(ei, "cut.tif", "cannot be read")


def test_refuse_truncated_tif_stack(tmp_path):
    d = tmp_path / "dump"
    d.mkdir()
    tifffile.imwrite(
        tmp_path / "ok.tif",
        np.stack([frame(i, shape=(64, 80)) for i in range(5)]),
        photometric="minisblack",
    )
    _truncate_copy(tmp_path / "ok.tif", d / "cut.tif")
    with pytest.raises(InputFileError) as ei:
        scan_dump(d)
    assert_refused(ei, "cut.tif", "truncated")
    tifffile.imwrite(
        tmp_path / "ij.tif", np.stack([frame(i, shape=(64, 80)) for i in range(5)]), imagej=True
    )
    _truncate_copy(tmp_path / "ij.tif", tmp_path / "ijcut.tif")
    with pytest.raises(InputFileError) as ei:
        read_frame(FrameSource(tmp_path / "ijcut.tif", 4, 4))
    assert_refused(ei, "ijcut.tif")


def test_refuse_truncated_npy(tmp_path):
    np.save(tmp_path / "ok.npy", frame(0, shape=(64, 80)))
    p = _truncate_copy(tmp_path / "ok.npy", tmp_path / "cut.npy")
    with pytest.raises(InputFileError) as ei:
        read_frame(p)
    assert_refused(ei, "cut.npy", "truncated")
    d = tmp_path / "dump"
    d.mkdir()
    shutil.copy(p, d / "cut.npy")
    with pytest.raises(InputFileError) as ei:
        scan_dump(d)
    assert_refused(ei, "cut.npy", "truncated")


@pytest.mark.parametrize("fixture", [STEM_DM3, CL_DM4])
@pytest.mark.parametrize("frac", [0.5, 0.9])
def test_refuse_truncated_dm(tmp_path, fixture, frac):
    p = _truncate_copy(fixture, tmp_path / ("cut" + fixture.suffix), frac)
    with pytest.raises(InputFileError) as ei:
        read_frame(p)
    assert_refused(ei, p.name, "cannot be read")


def test_refuse_rgb_tif(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (6, 5, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    with pytest.raises(InputFileError) as ei:
        read_frame(tmp_path / "rgb.tif")
    assert_refused(ei, "rgb.tif", "RGB")


def test_refuse_real_dm_rgba_complex_stack():
    with pytest.raises(InputFileError) as ei:
        read_frame(RGBA_DM4)
    assert_refused(ei, RGBA_DM4.name, "RGB")
    with pytest.raises(InputFileError) as ei:
        read_frame(COMPLEX_DM3)
    assert_refused(ei, COMPLEX_DM3.name, "complex data is not supported")
    with pytest.raises(InputFileError) as ei:
        read_frame(STACK_DM4)
    assert_refused(ei, STACK_DM4.name, "3-D data", "not a single 2-D image")


def test_refuse_complex_bool_string_npy(tmp_path):
    np.save(tmp_path / "c.npy", frame(0).astype(np.complex64))
    np.save(tmp_path / "b.npy", frame(0) > 100)
    np.save(tmp_path / "s.npy", np.array([["a", "b"], ["c", "d"]]))
    np.save(tmp_path / "o.npy", np.array([[1, None]], dtype=object), allow_pickle=True)
    cases = {
        "c.npy": "complex data is not supported",
        "b.npy": "unsupported dtype",
        "s.npy": "unsupported dtype",
        "o.npy": "unsupported dtype",
    }
    for name, text in cases.items():
        with pytest.raises(InputFileError) as ei:
            read_frame(tmp_path / name)
        assert_refused(ei, name, text)


def test_refuse_wrong_dimensionality_npy(tmp_path):
    np.save(tmp_path / "line.npy", np.arange(10, dtype=np.uint16))
    np.save(tmp_path / "four.npy", np.zeros((2, 2, 3, 3), np.uint16))
    np.save(tmp_path / "rgb.npy", np.zeros((32, 32, 3), np.uint8))
    for name, text in {"line.npy": "1-D", "four.npy": "4-D", "rgb.npy": "RGB"}.items():
        with pytest.raises(InputFileError) as ei:
            read_frame(tmp_path / name)
        assert_refused(ei, name, text)


def test_refuse_mixed_shapes(tmp_path):
    tifffile.imwrite(tmp_path / "f_0.tif", frame(0, shape=(6, 5)))
    tifffile.imwrite(tmp_path / "f_1.tif", frame(1, shape=(5, 6)))
    idx = scan_dump(tmp_path)
    read_frame(idx.sources[0], expect_shape=idx.shape)
    with pytest.raises(InputFileError) as ei:
        read_frame(idx.sources[1], expect_shape=idx.shape)
    assert_refused(ei, "f_1.tif", "frame shape (5, 6) differs from the movie's (6, 5)")
    with pytest.raises(InputFileError) as ei:
        read_frame(STEM_DM3, expect_shape=(2, 2))
    assert_refused(ei, STEM_DM3.name, "frame shape (68, 68) differs")


def test_refuse_k2_frame_not_below_fps(tmp_path):
    tifffile.imwrite(tmp_path / k2name(0, 0, 0, 399), frame(0))
    tifffile.imwrite(tmp_path / k2name(0, 0, 0, 400), frame(1))
    with pytest.raises(InputFileError) as ei:
        scan_dump(tmp_path, fps=400)
    assert_refused(ei, k2name(0, 0, 0, 400), "not below the frame rate")
    with pytest.raises(ConfigError):
        scan_dump(tmp_path, fps=399.5)
    with pytest.raises(ConfigError):
        scan_dump(tmp_path, fps=0)


def test_refuse_duplicate_indices(tmp_path):
    np.save(tmp_path / "frame_1.npy", frame(0))
    np.save(tmp_path / "frame_01.npy", frame(1))
    np.save(tmp_path / "frame_2.npy", frame(2))
    with pytest.raises(InputFileError) as ei:
        scan_dump(tmp_path)
    assert_refused(ei, "frame_1.npy", "frame_01.npy", "frame index 1")


def test_refuse_duplicate_k2_via_suffix_case(tmp_path):
    tifffile.imwrite(tmp_path / k2name(0, 0, 0, 1, ".tif"), frame(0))
    tifffile.imwrite(tmp_path / k2name(0, 0, 0, 1, ".tiff"), frame(1))
    with pytest.raises(InputFileError) as ei:
        scan_dump(tmp_path)
    assert_refused(ei, k2name(0, 0, 0, 1, ".tif"), k2name(0, 0, 0, 1, ".tiff"))


def test_refuse_mixed_suffixes(tmp_path):
    tifffile.imwrite(tmp_path / "a_1.tif", frame(0))
    np.save(tmp_path / "a_2.npy", frame(1))
    with pytest.raises(InputFileError) as ei:
        scan_dump(tmp_path)
    assert_refused(ei, "a_1.tif", "a_2.npy", "mixes frame file types")


def test_refuse_mixed_captures_and_k2_with_others(tmp_path):
    d1 = tmp_path / "two"
    d1.mkdir()
    tifffile.imwrite(d1 / k2name(0, 0, 0, 1, capture="Capture1"), frame(0))
    tifffile.imwrite(d1 / k2name(0, 0, 0, 2, capture="Capture2"), frame(0))
    with pytest.raises(InputFileError) as ei:
        scan_dump(d1)
    assert_refused(ei, "two", "more than one capture")
    d2 = tmp_path / "extra"
    d2.mkdir()
    tifffile.imwrite(d2 / k2name(0, 0, 0, 1), frame(0))
    tifffile.imwrite(d2 / "sum.tif", frame(0))
    with pytest.raises(InputFileError) as ei:
        scan_dump(d2)
    assert_refused(ei, "sum.tif", "K2-named")


def test_refuse_missing_file_and_unsupported_suffix(tmp_path):
    with pytest.raises(InputFileError) as ei:
        read_frame(tmp_path / "gone.tif")
    assert_refused(ei, "gone.tif", "does not exist")
    (tmp_path / "x.png").write_bytes(b"x")
    with pytest.raises(InputFileError) as ei:
        read_frame(tmp_path / "x.png")
    assert_refused(ei, "x.png", "unsupported file type")


def test_first_frame_refusal_surfaces_in_scan(tmp_path):
    shutil.copy(COMPLEX_DM3, tmp_path / "frame_0.dm3")
    with pytest.raises(InputFileError) as ei:
        scan_dump(tmp_path)
    assert_refused(ei, "frame_0.dm3", "complex")


def test_k2_scan_does_not_open_other_frames(tmp_path):
    """Only the first frame is read: a damaged later K2 frame is found when it is read."""
    tifffile.imwrite(tmp_path / k2name(0, 0, 0, 0), frame(0))
    (tmp_path / k2name(0, 0, 0, 1)).write_bytes(b"garbage")
    idx = scan_dump(tmp_path)
    assert len(idx) == 2 and count_frames(tmp_path) == 2
    with pytest.raises(InputFileError) as ei:
        read_frame(idx.sources[1])
    assert_refused(ei, k2name(0, 0, 0, 1), "cannot be read")


def test_scan_many_k2_names_is_cheap(tmp_path):
    """2,000 K2 names: the index is built from names (files are empty except the first)."""
    tifffile.imwrite(tmp_path / k2name(0, 0, 0, 0), frame(0))
    for i in range(1, 2000):
        (tmp_path / k2name(0, 0, i // 400, i % 400)).touch()
    idx = scan_dump(tmp_path)
    assert len(idx) == 2000 and idx.gaps == []
    assert idx.time_s[-1] == pytest.approx(1999 / 400)
    assert os.path.getsize(idx.sources[-1].path) == 0


def test_imagej_contiguous_stack_with_one_ifd(tmp_path):
    """ImageJ writes stacks over 4 GB with one IFD and contiguous data; emulate that layout."""
    import struct

    stack = np.stack([frame(i, shape=(8, 7)) for i in range(4)])
    p = tmp_path / "big_ij.tif"
    tifffile.imwrite(p, stack, imagej=True)
    raw = bytearray(p.read_bytes())
    with tifffile.TiffFile(p) as tf:
        ifd = tf.pages[0].offset
    ntags = struct.unpack("<H", raw[ifd : ifd + 2])[0]
    nxt = ifd + 2 + 12 * ntags
    raw[nxt : nxt + 4] = b"\0\0\0\0"  # cut the IFD chain after the first page
    p.write_bytes(bytes(raw))
    with tifffile.TiffFile(p) as tf:
        assert len(tf.pages) == 1
        data_end = tf.series[0].dataoffset + stack.nbytes
    idx = scan_dump(tmp_path)
    assert len(idx) == 4
    for s in idx.sources:
        np.testing.assert_array_equal(read_frame(s), stack[s.page])
    # the same layout, truncated, is refused rather than read short
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "big_ij.tif").write_bytes(bytes(raw[: data_end - stack[0].nbytes // 2]))
    with pytest.raises(InputFileError) as ei:
        scan_dump(cut)
    assert_refused(ei, "big_ij.tif", "truncated")


def test_refuse_dm_spectrum_image_axes(monkeypatch, tmp_path):
    """A 2-D DM dataset whose axes say 'line scan of spectra' is not an image.

    No small real line-scan file is shipped (the smallest one is ~400 kB), so the reader's
    answer for such a file is substituted here; the shape and axes mimic hyperspy's
    test-MonoCL_spectrum-SI.dm4 as rosettasciio reads it.
    """
    import rsciio.digitalmicrograph as dmmod

    fake = [
        {
            "data": np.zeros((67, 1336), np.float32),
            "axes": [
                {"name": "x", "size": 67, "scale": 0.0206, "units": "µm", "navigate": True},
                {
                    "name": "Wavelength",
                    "size": 1336,
                    "scale": 0.0934,
                    "units": "nm",
                    "navigate": False,
                },
            ],
            "metadata": {},
            "original_metadata": {},
        }
    ]
    monkeypatch.setattr(dmmod, "file_reader", lambda *a, **k: fake)
    # the fast DM reader would read PLAIN_DM4's real tags (a plain image) itself, as it reads the
    # tags that make a line scan ('Meta Data/Format', 'spim') and leaves such files to
    # rosettasciio; send the read to rosettasciio so that the substituted answer is what counts
    monkeypatch.setattr(framedump._DM_READER, "read",
                        lambda path: framedump._read_dm_general(path)[0])
    p = tmp_path / "linescan.dm4"
    shutil.copy(PLAIN_DM4, p)
    with pytest.raises(InputFileError) as ei:
        read_frame(p)
    assert_refused(ei, "linescan.dm4", "spectrum image", "Wavelength")


def test_count_frames_writes_the_manifest_from_one_listing(tmp_path, monkeypatch):
    """Planning lists a dump folder once: count and manifest come from the same listing, and
    the manifest equals the one written on its own (and is rewritten only when frames change)."""
    dump = tmp_path / "dump"
    dump.mkdir()
    for f in range(5):
        tifffile.imwrite(dump / k2name(0, 1, 2, f), frame(f))
    (dump / "notes.txt").write_text("not a frame")
    listings = []
    real_scandir = os.scandir
    monkeypatch.setattr(framedump.os, "scandir", lambda p: listings.append(p) or real_scandir(p))
    manifest = tmp_path / "a.json"
    assert framedump.count_frames(dump, manifest=manifest) == 5
    assert len(listings) == 1
    alone = tmp_path / "b.json"
    assert framedump.write_source_manifest(dump, alone)
    assert manifest.read_text() == alone.read_text()
    assert [f[0] for f in framedump.source_manifest(dump)["files"]] == sorted(
        os.listdir(dump))[:-1]
    before = manifest.stat().st_mtime_ns
    framedump.count_frames(dump, manifest=manifest)
    assert manifest.stat().st_mtime_ns == before          # same frames: not rewritten
    tifffile.imwrite(dump / k2name(0, 1, 2, 5), frame(5))
    assert framedump.count_frames(dump, manifest=manifest) == 6
    assert len(framedump.source_manifest(dump)["files"]) == 6
