"""Tests for etemseg.io.dm4: the DM4 writer against rosettasciio, and the fast dump reader.

Every frame the fast reader returns is compared with rosettasciio's reading of the same file; a
file whose layout differs from the dump's (other size, dtype, shape, truncated) must be read by
the general reader or refused with its name, never read through another file's layout.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import tifffile
from rsciio.digitalmicrograph import file_reader

from etemseg.errors import InputFileError
from etemseg.io import framedump
from etemseg.io.dm4 import DMFrameReader, parse_layout, write_dm4
from etemseg.io.framedump import (
    FrameSource,
    read_dm_metadata,
    read_frame,
    read_pixel_size_nm,
    scan_dump,
)
from etemseg.synth import k2_frame_name

DM = Path(__file__).parent / "data" / "dm"
T0 = datetime(2026, 3, 14, 9, 26, 53, tzinfo=timezone.utc)


def dm4_name(index: int, fps: int = 400) -> str:
    return str(Path(k2_frame_name(index, fps)).with_suffix(".dm4"))


def frame(seed: int, shape=(64, 80), dtype=np.uint16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4000, size=shape).astype(dtype)


def rsciio(path: Path) -> dict:
    datasets = file_reader(str(path))
    assert len(datasets) == 1, "the thumbnail must not show as a second image"
    return datasets[0]


def write_dump(folder: Path, n: int, shape=(64, 80), start: int = 0, fps: int = 400) -> list:
    """K2-named DM4 frames with per-file time stamps, titles and thumbnails (free values)."""
    folder.mkdir(parents=True, exist_ok=True)
    frames = []
    for i in range(start, start + n):
        f = frame(i, shape)
        write_dm4(folder / dm4_name(i, fps), f, 0.18, title=f"frame {i:06d}", exposure_s=1 / fps,
                  acquired=T0 + timedelta(seconds=i / fps))
        frames.append(f)
    return frames


def general(path: Path):
    return framedump._read_dm_general(Path(path))


def assert_refused(excinfo, name: str, *fragments: str) -> None:
    msg = str(excinfo.value)
    assert name in msg, msg
    for frag in fragments:
        assert frag in msg, msg


# ------------------------------------------------------------------ writer vs rosettasciio ---


@pytest.mark.parametrize("shape", [(64, 80), (1792, 1920)], ids=["small", "k2-full"])
def test_round_trip_pixels_and_calibration(tmp_path, shape):
    img = frame(1, shape)
    p = write_dm4(tmp_path / dm4_name(7), img, 0.18, title="frame 7")
    ds = rsciio(p)
    assert ds["data"].dtype == np.uint16 and ds["data"].shape == shape
    np.testing.assert_array_equal(ds["data"], img)
    axes = {a["name"]: a for a in ds["axes"]}
    for name in ("x", "y"):
        assert axes[name]["scale"] == 0.18 and axes[name]["units"] == "nm"
        assert axes[name]["offset"] == 0 and not axes[name]["navigate"]
    assert axes["y"]["size"] == shape[0] and axes["x"]["size"] == shape[1]
    assert ds["metadata"]["General"]["title"] == "frame 7"
    assert read_pixel_size_nm(p) == 0.18
    reader = DMFrameReader(general)
    np.testing.assert_array_equal(reader.read(p), img)
    np.testing.assert_array_equal(reader.read(p), img)
    assert reader.stats == {"fast": 1, "general": 0, "parsed": 1}


def test_round_trip_metadata(tmp_path):
    p = write_dm4(tmp_path / "f.dm4", frame(2), 0.36, exposure_s=0.0025, acquired=T0,
                  tags={"Simulation": {"Seed": 3, "Dose (e/A2)": 12.5, "Truth": True}})
    md = read_dm_metadata(p)
    assert md["shape"] == (64, 80) and md["dtype"] == "uint16"
    assert md["pixel_size_nm"] == 0.36 and md["units"] == "nm"
    assert md["exposure_s"] == 0.0025
    assert md["acquisition_time_utc"] == T0.isoformat()
    assert md["acquisition_date"] == "03/14/2026"
    tags = rsciio(p)["original_metadata"]["ImageList"]["TagGroup0"]["ImageTags"]
    assert tags["Simulation"] == {"Dose (e/A2)": 12.5, "Seed": 3, "Truth": 1}


def test_uncalibrated(tmp_path):
    p = write_dm4(tmp_path / "f.dm4", frame(3), None)
    axes = rsciio(p)["axes"]
    assert [(a["scale"], a["units"]) for a in axes] == [(1.0, ""), (1.0, "")]
    assert read_pixel_size_nm(p) is None


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.uint32,
                                   np.float32, np.float64, ">u2"])
def test_round_trip_dtypes(tmp_path, dtype):
    img = frame(4, (5, 7)).astype(dtype)
    p = write_dm4(tmp_path / "f.dm4", img, 1.5)
    ds = rsciio(p)
    assert ds["data"].dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(ds["data"], img)
    np.testing.assert_array_equal(DMFrameReader(general).read(p), img)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 3, 4), np.uint16), "2-D"), (np.zeros((0, 4), np.uint16), "2-D"),
    (np.zeros((3, 4), bool), "dtype"), (np.zeros((3, 4), np.complex64), "dtype"),
    (np.zeros((3, 4), np.int64), "dtype")])
def test_writer_refuses_bad_frames(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        write_dm4(tmp_path / "f.dm4", bad, 0.2)
    assert not list(tmp_path.iterdir()), "nothing is left behind"


@pytest.mark.parametrize("px", [0.0, -1.0, float("nan"), float("inf")])
def test_writer_refuses_bad_pixel_size(tmp_path, px):
    with pytest.raises(ValueError, match="pixel_size_nm"):
        write_dm4(tmp_path / "f.dm4", frame(0), px)


def test_refused_write_keeps_the_old_file(tmp_path):
    p = write_dm4(tmp_path / "f.dm4", frame(0), 0.2)
    before = p.read_bytes()
    with pytest.raises(TypeError):
        write_dm4(p, frame(1), 0.2, tags={"bad": object()})
    assert p.read_bytes() == before and [q.name for q in tmp_path.iterdir()] == ["f.dm4"]


# ------------------------------------------------------------------------ the fast reader ---


@pytest.mark.parametrize("verify", [False, True])
def test_fast_reader_equals_rosettasciio_on_every_file(tmp_path, verify):
    frames = write_dump(tmp_path / "dump", 12)
    reader = DMFrameReader(general, verify=verify)
    for i, want in enumerate(frames):
        p = tmp_path / "dump" / dm4_name(i)
        got = reader.read(p)
        assert got.dtype == np.uint16 and got.flags.c_contiguous and got.flags.writeable
        np.testing.assert_array_equal(got, rsciio(p)["data"])
        np.testing.assert_array_equal(got, want)
    # time stamps, titles and thumbnails differ per file: one layout serves them all
    assert reader.stats == {"fast": 11, "general": int(verify), "parsed": 1}
    (layout,) = reader.layouts
    assert (layout.shape, layout.dtype, layout.axes, layout.fast) == (
        (64, 80), np.dtype("<u2"), ((0.18, "nm"), (0.18, "nm")), True)


def layout_break(tmp_path: Path, kind: str) -> tuple[Path, np.ndarray]:
    """A file in the middle of a dump whose layout differs from the others'."""
    p = tmp_path / "dump" / dm4_name(5)
    if kind == "int16-same-size":
        img = (frame(50) - 2000).astype(np.int16)  # same file size, DataType 1 instead of 10
    elif kind == "transposed-same-size":
        img = frame(51, (80, 64))  # same file size, other Dimensions
    elif kind == "other-shape":
        img = frame(52, (64, 96))
    elif kind == "float32":
        img = frame(53).astype(np.float32)
    else:
        raise AssertionError(kind)
    write_dm4(p, img, 0.18, title="frame 000005", exposure_s=1 / 400, acquired=T0)
    return p, img


@pytest.mark.parametrize("verify", [False, True])
@pytest.mark.parametrize("kind", ["int16-same-size", "transposed-same-size", "other-shape",
                                  "float32"])
def test_other_layout_in_a_dump_is_never_misread(tmp_path, kind, verify):
    write_dump(tmp_path / "dump", 8)
    size = (tmp_path / "dump" / dm4_name(0)).stat().st_size
    p, img = layout_break(tmp_path, kind)
    assert (p.stat().st_size == size) == kind.endswith("same-size")
    reader = DMFrameReader(general, verify=verify)
    for i in range(8):
        q = tmp_path / "dump" / dm4_name(i)
        got = reader.read(q)
        want = rsciio(q)["data"]
        assert got.dtype == want.dtype and got.shape == want.shape, q.name
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(reader.read(p), img)
    assert reader.stats["parsed"] == 2 and len(reader.layouts) == 2


def test_other_shape_in_a_dump_is_refused_with_its_name(tmp_path):
    write_dump(tmp_path / "dump", 8)
    p, _ = layout_break(tmp_path, "transposed-same-size")
    idx = scan_dump(tmp_path / "dump")
    with pytest.raises(InputFileError) as ei:
        for s in idx.sources:
            read_frame(s, expect_shape=idx.shape)
    assert_refused(ei, p.name, "frame shape (80, 64) differs from the movie's (64, 80)")


@pytest.mark.parametrize("frac", [0.02, 0.5, 0.99, 0.9999])
def test_truncated_file_in_a_dump_is_refused_with_its_name(tmp_path, frac):
    write_dump(tmp_path / "dump", 6, shape=(128, 160))
    p = tmp_path / "dump" / dm4_name(3)
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * frac)])
    reader = DMFrameReader(general)
    reader.read(tmp_path / "dump" / dm4_name(0))
    with pytest.raises(InputFileError) as ei:
        reader.read(p)
    assert_refused(ei, p.name, "cannot be read")
    if frac > 0.1:  # past the header: the tag tree is parsed and the cut is found
        assert_refused(ei, p.name, "truncated")
    idx = scan_dump(tmp_path / "dump")
    with pytest.raises(InputFileError) as ei:
        for s in idx.sources:
            read_frame(s, expect_shape=idx.shape)
    assert_refused(ei, p.name, "cannot be read")


def test_changed_tag_byte_is_not_read_through_the_layout(tmp_path):
    """Flip every byte of the header and the pixel tags in turn: each damaged file is either
    read exactly as rosettasciio reads it, or refused; never read through the kept layout."""
    write_dump(tmp_path / "dump", 2)
    good, victim = (tmp_path / "dump" / dm4_name(i) for i in range(2))
    layout = parse_layout(good)
    raw = bytearray(victim.read_bytes())
    pinned = [i for i in range(layout.offset) if layout.mask[i]]
    reader = DMFrameReader(general)
    reader.read(good)
    rng = np.random.default_rng(0)
    for at in sorted(set(rng.choice(pinned, 60, replace=False)) | set(range(16))):
        damaged = bytearray(raw)
        damaged[at] ^= 0xFF
        victim.write_bytes(bytes(damaged))
        try:
            want = rsciio(victim)["data"]
        except Exception:
            want = None
        fast_before = reader.stats["fast"]
        try:
            got = reader.read(victim)
        except InputFileError:
            continue
        assert reader.stats["fast"] == fast_before, f"byte {at} was read through the layout"
        assert want is not None and got.dtype == want.dtype, at
        np.testing.assert_array_equal(got, want)


def test_layout_kept_slow_when_the_general_reader_disagrees(tmp_path, caplog):
    write_dump(tmp_path / "dump", 3)

    def other(path):
        arr, offset = general(path)
        return arr, offset + 2  # a reader that places the pixels elsewhere

    reader = DMFrameReader(other, verify=True)
    for i in range(3):
        reader.read(tmp_path / "dump" / dm4_name(i))
    assert reader.stats == {"fast": 0, "general": 3, "parsed": 1}
    assert not reader.layouts[0].fast
    assert "disagrees with the general reader" in caplog.text


def test_general_reader_errors_pass_through(tmp_path):
    reader = DMFrameReader(general)
    for fixture, what in ((DM / "dm4_3D_test-10.dm4", "3-D data"),
                          (DM / "dm4_2D_test-23.dm4", "RGB"),
                          (DM / "dm3_2D_test-3.dm3", "complex")):
        p = shutil.copy(fixture, tmp_path / fixture.name)
        with pytest.raises(InputFileError) as ei:
            reader.read(p)
        assert_refused(ei, fixture.name, what)
    assert reader.stats["fast"] == 0


@pytest.mark.parametrize("fixture", ["test_STEM_image.dm3", "test-MonarcCL_mono-image.dm4",
                                     "dm4_2D_test-10.dm4"])
@pytest.mark.parametrize("verify", [False, True])
def test_real_gms_files(tmp_path, fixture, verify):
    """Files written by Digital Micrograph itself (DM3 and DM4): same pixels, fast path."""
    paths = [Path(shutil.copy(DM / fixture, tmp_path / f"{i}_{fixture}")) for i in range(3)]
    reader = DMFrameReader(general, verify=verify)
    for p in paths:
        got = reader.read(p)
        want = rsciio(p)["data"]
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    assert reader.stats == {"fast": 2, "general": int(verify), "parsed": 1}
    assert parse_layout(paths[0]).axes == tuple(
        (a["scale"], a["units"]) for a in rsciio(paths[0])["axes"][::-1])


def test_spectrum_image_tags_go_to_the_general_reader(tmp_path):
    """A 2-D image tagged as a spectrum image (a line scan) is refused, as rosettasciio says."""
    p = write_dm4(tmp_path / "linescan.dm4", frame(0), 0.2,
                  tags={"Meta Data": {"Format": "Spectrum image", "Signal": "CL"}})
    assert [a["navigate"] for a in rsciio(p)["axes"]] == [True, False]
    with pytest.raises(ValueError, match="spectrum"):
        parse_layout(p)
    with pytest.raises(InputFileError) as ei:
        read_frame(p)
    assert_refused(ei, p.name, "spectrum image or line scan")


def test_big_endian_file_goes_to_the_general_reader(tmp_path):
    """A DM file whose byte-order flag says big-endian is left to rosettasciio."""
    p = write_dm4(tmp_path / "f.dm4", frame(0), 0.2)
    raw = bytearray(p.read_bytes())
    assert raw[12:16] == b"\x00\x00\x00\x01"
    raw[12:16] = b"\x00\x00\x00\x00"
    q = tmp_path / "be.dm4"
    q.write_bytes(bytes(raw))
    try:
        want = rsciio(q)["data"]
    except Exception:
        want = None
    reader = DMFrameReader(general)
    for _ in range(2):
        if want is None:
            with pytest.raises(InputFileError):
                reader.read(q)
        else:
            np.testing.assert_array_equal(reader.read(q), want)
    assert reader.stats["fast"] == 0


# ------------------------------------------------------------------------------- ingest ---


def test_ingest_dm4_dump_equals_tiff_dump(tmp_path):
    from etemseg.stages.ingest import ingest

    indices = list(range(390, 401)) + list(range(402, 410))  # frame 401 missing
    frames = [frame(i, (24, 40)) for i in indices]
    (tmp_path / "dm4").mkdir()
    (tmp_path / "tif").mkdir()
    for f, i in zip(frames, indices):
        write_dm4(tmp_path / "dm4" / dm4_name(i), f, 0.18, acquired=T0 + timedelta(seconds=i / 400))
        tifffile.imwrite(tmp_path / "tif" / k2_frame_name(i, 400), f)
    a = ingest(tmp_path / "dm4", tmp_path / "a.zarr", chunk_frames=8, progress=False)
    b = ingest(tmp_path / "tif", tmp_path / "b.zarr", chunk_frames=8, pixel_size_nm=0.18,
               progress=False)
    np.testing.assert_array_equal(a.array[:], np.stack(frames))
    np.testing.assert_array_equal(a.array[:], b.array[:])
    np.testing.assert_array_equal(a.frame_index(), b.frame_index())
    np.testing.assert_array_equal(a.time_s(), b.time_s())
    assert a.meta["pixel_size_nm"] == 0.18 and a.meta["gaps"] == [[401, 1]]
    assert [str(s) for s in a.group["sources"][:2]] == [dm4_name(390), dm4_name(391)]


def test_scan_dm4_dump(tmp_path):
    write_dump(tmp_path / "dump", 5, start=398)
    idx = scan_dump(tmp_path / "dump")
    assert idx.naming == "k2" and idx.shape == (64, 80) and idx.dtype == np.uint16
    assert idx.pixel_size_nm == 0.18
    assert [s.index for s in idx.sources] == list(range(398, 403))
    np.testing.assert_array_equal(read_frame(FrameSource(idx.sources[2].path, 0, 400)),
                                  frame(400))


def test_fast_reader_from_many_threads(tmp_path):
    """One reader shared by threads (as stages read frames): every frame right, one layout."""
    from concurrent.futures import ThreadPoolExecutor

    frames = write_dump(tmp_path / "dump", 16)
    reader = DMFrameReader(general)
    paths = [tmp_path / "dump" / dm4_name(i) for i in range(16)] * 3
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(reader.read, paths))
    for i, g in enumerate(got):
        np.testing.assert_array_equal(g, frames[i % 16])
    assert reader.stats["fast"] + reader.stats["parsed"] == 48 and reader.stats["general"] == 0


def test_synth_writes_a_k2_dm4_dump_that_rosettasciio_reads_back(tmp_path):
    """`etemseg synth --format dm4`: K2 names (frame number within the second), uint16 pixels
    and the nm calibration, identical through rosettasciio and the TIFF dump of the same movie."""
    from etemseg.cli import main
    from etemseg.synth import SynthParams, write_synthetic_movie

    assert main(["--quiet", "synth", str(tmp_path / "dm4"), "--format", "dm4", "--frames", "5",
                 "--height", "64", "--width", "80", "--fps", "4", "--seed", "3"]) == 0
    write_synthetic_movie(tmp_path / "tif", SynthParams(frames=5, height=64, width=80, fps=4,
                                                        seed=3), progress=False)
    dm4 = sorted((tmp_path / "dm4/frames").iterdir())
    tif = sorted((tmp_path / "tif/frames").iterdir())
    assert [p.name for p in dm4] == [p.with_suffix(".dm4").name for p in tif]
    assert dm4[4].name == "Capture1_Hour_00_Minute_00_Second_01_Frame_0000.dm4"
    for d, t in zip(dm4, tif):
        ds = rsciio(d)
        assert ds["data"].dtype == np.uint16
        np.testing.assert_array_equal(ds["data"], tifffile.imread(t))
        assert [(a["scale"], a["units"]) for a in ds["axes"]] == [(pytest.approx(0.18), "nm")] * 2


@pytest.mark.parametrize("pixel_size_nm", [0.00018, 180.0])
def test_implausible_file_calibration_is_refused_naming_the_file(tmp_path, pixel_size_nm, capsys):
    """A dump calibrated in another unit (um, pm) is refused at ingest, naming the first file and
    the override; with a plausible override it ingests."""
    from etemseg.cli import main

    dump = tmp_path / "dump"
    dump.mkdir()
    for i in range(2):
        write_dm4(dump / k2_frame_name(i, 400.0, suffix=".dm4"),
                  np.full((16, 20), 100 + i, np.uint16), pixel_size_nm)
    assert main(["--quiet", "ingest", str(dump), str(tmp_path / "f.zarr")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Frame_0000.dm4" in err[0] and "plausible" in err[0]
    assert "--pixel-size-nm" in err[0] and not (tmp_path / "f.zarr").exists()
    assert main(["--quiet", "ingest", str(dump), str(tmp_path / "f.zarr"),
                 "--pixel-size-nm", "0.18"]) == 0
