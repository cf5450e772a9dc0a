"""Frame dump -> Zarr store: per-chunk and whole ingest, metadata, bad input."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import zarr

from etemseg.errors import EtemsegError
from etemseg.io.atomic import write_json
from etemseg.stages.ingest import ingest, ingest_chunk, init_store
from etemseg.io.store import MovieStore, auto_zarr_chunk_frames, chunk_bounds, n_chunks

from .conftest import k2_name, write_k2_dump


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "etemseg.cli", "--quiet", *map(str, args)],
                          capture_output=True, text=True)


def test_per_chunk_ingest_equals_source(k2_dump, small_movie, tmp_path):
    dump, indices = k2_dump
    store = init_store(dump, tmp_path / "frames.zarr", chunk_frames=16, zarr_chunk_frames=8,
                       pixel_size_nm=0.18)
    assert store.n_chunks == 3
    order = list(range(store.n_chunks))
    random.Random(0).shuffle(order)  # chunks are independent: any order, any machine
    for k in order:
        receipt = ingest_chunk(tmp_path / "frames.zarr", k)
        write_json(receipt, tmp_path / f"chunk-{k}.json")
        assert receipt["frames"] == chunk_bounds(k, 40, 16)[1] - chunk_bounds(k, 40, 16)[0]
    back = MovieStore.open(tmp_path / "frames.zarr")
    np.testing.assert_array_equal(back.array[:], small_movie)
    assert back.array.dtype == np.uint16
    assert json.loads((tmp_path / "chunk-2.json").read_text())["t1"] == 40


def test_metadata_times_gaps_and_ome(k2_dump, tmp_path):
    dump, indices = k2_dump
    store = ingest(dump, tmp_path / "m.zarr", chunk_frames=16, pixel_size_nm=0.25, progress=False)
    np.testing.assert_array_equal(store.frame_index(), indices)
    t = store.time_s()
    # frame 401 is missing: the frame after it keeps its true time, nothing is shifted
    assert t[11] == pytest.approx((402 - 390) / 400)
    assert np.diff(t)[10] == pytest.approx(2 / 400)
    assert store.meta["gaps"] == [[401, 1]]
    assert store.meta["pixel_size_nm"] == 0.25
    assert store.group["sources"][0] == k2_name(390)
    ome = zarr.open_group(tmp_path / "m.zarr").attrs["ome"]
    ms = ome["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["t", "y", "x"]
    assert ms["axes"][1]["unit"] == "nanometer"
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1 / 400, 0.25, 0.25]
    # opens with plain zarr as an array (what napari / notebooks do)
    assert zarr.open_array(tmp_path / "m.zarr" / "0").shape == (40, 24, 40)


def test_zarr_chunks_never_straddle_time_chunks():
    for chunk_frames in (1, 7, 16, 400):
        for shape in ((512, 512), (1792, 1920)):
            z = auto_zarr_chunk_frames(chunk_frames, shape, 2)
            assert chunk_frames % z == 0
            assert z * shape[0] * shape[1] * 2 <= 64 * 2**20 or z == 1
    assert auto_zarr_chunk_frames(400, (1792, 1920), 2) == 8
    assert n_chunks(240_000, 400) == 600


def test_float_source_kept_as_float32(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    data = np.random.default_rng(0).random((5, 8, 9)).astype(np.float64)
    for i, frame in enumerate(data):
        np.save(folder / f"frame_{i}.npy", frame)
    store = ingest(folder, tmp_path / "f.zarr", chunk_frames=2, progress=False)
    assert store.array.dtype == np.float32
    np.testing.assert_allclose(store.array[:], data.astype(np.float32))
    assert store.pixel_size_nm is None


def test_cli_whole_and_per_chunk(k2_dump, small_movie, tmp_path):
    dump, _ = k2_dump
    out = tmp_path / "cli.zarr"
    assert run_cli("ingest", dump, out, "--chunk-frames", 16, "--init").returncode == 0
    for k in range(3):
        r = run_cli("ingest", dump, out, "--chunk", k, "--receipt", tmp_path / f"r{k}.json")
        assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(zarr.open_array(out / "0")[:], small_movie)
    info = json.loads(run_cli("info", out).stdout)
    assert info["n_chunks"] == 3 and info["shape"] == [40, 24, 40]
    help_text = run_cli("ingest", "--help").stdout
    assert "--chunk-frames" in help_text and "--pixel-size-nm" in help_text


# --- bad input: clear error naming the file, non-zero exit, existing output intact ----------------

@pytest.fixture
def existing_output(k2_dump, tmp_path):
    out = tmp_path / "out.zarr"
    ingest(k2_dump[0], out, chunk_frames=16, progress=False)
    return out, MovieStore.open(out).array[:]


def assert_intact(out, before):
    np.testing.assert_array_equal(MovieStore.open(out).array[:], before)


def test_empty_folder(tmp_path, existing_output):
    out, before = existing_output
    (tmp_path / "empty").mkdir()
    r = run_cli("ingest", tmp_path / "empty", out)
    assert r.returncode == 2 and "empty" in r.stderr
    assert_intact(out, before)


def test_corrupt_frame_mid_movie(k2_dump, tmp_path, existing_output):
    dump, indices = k2_dump
    out, before = existing_output
    bad = dump / k2_name(indices[20])
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    r = run_cli("ingest", dump, out, "--chunk-frames", 16)
    assert r.returncode == 2 and bad.name in r.stderr
    assert_intact(out, before)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no debris left


def test_mixed_shapes(k2_dump, tmp_path, existing_output):
    dump, indices = k2_dump
    out, before = existing_output
    odd = dump / k2_name(indices[30])
    tifffile.imwrite(odd, np.zeros((24, 41), np.uint16))
    r = run_cli("ingest", dump, out, "--chunk-frames", 16)
    assert r.returncode == 2 and odd.name in r.stderr and "shape" in r.stderr
    assert_intact(out, before)


@pytest.mark.parametrize("dtype", [np.complex64, np.bool_])
def test_unsupported_dtype(tmp_path, dtype, existing_output):
    out, before = existing_output
    folder = tmp_path / "bad"
    folder.mkdir()
    for i in range(3):
        np.save(folder / f"f{i}.npy", np.ones((8, 8), dtype=dtype))
    r = run_cli("ingest", folder, out)
    assert r.returncode == 2 and "f0.npy" in r.stderr
    assert_intact(out, before)


def test_values_outside_uint16_refused(tmp_path):
    folder = tmp_path / "neg"
    folder.mkdir()
    for i in range(2):
        np.save(folder / f"f{i}.npy", np.full((8, 8), -5 if i else 5, dtype=np.int32))
    with pytest.raises(EtemsegError, match="f1.npy.*uint16"):
        ingest(folder, tmp_path / "neg.zarr", progress=False)
    assert not (tmp_path / "neg.zarr").exists()


def test_chunk_out_of_range_and_wrong_source(k2_dump, tmp_path):
    dump, _ = k2_dump
    out = tmp_path / "x.zarr"
    init_store(dump, out, chunk_frames=16)
    r = run_cli("ingest", dump, out, "--chunk", 3)
    assert r.returncode == 2 and "chunk" in r.stderr
    other = write_k2_dump(tmp_path / "other", np.zeros((2, 24, 40), np.uint16), [0, 1])
    r = run_cli("ingest", other, out, "--chunk", 0)
    assert r.returncode == 2 and "initialised from" in r.stderr
