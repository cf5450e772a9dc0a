"""A real (non-simulated) movie through the workflow: paths with spaces and unicode, and a source
tracked by its frame files, not by its folder's mtime."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile
import zarr

from .conftest import k2_name, write_k2_dump
from .test_workflow import snakemake, workdir_with

pytestmark = pytest.mark.slow   # whole-workflow runs: `pytest -m "not slow"` skips them


def planned(wd) -> str:
    r = snakemake(wd, "-n", "--quiet", "rules")
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout + r.stderr


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A K2 dump in a folder with spaces and unicode, run once by a workdir with spaces too."""
    root = tmp_path_factory.mktemp("sources")
    rng = np.random.default_rng(0)
    frames = rng.poisson(1000, size=(6, 40, 48)).astype(np.uint16)
    frames[:, 12:22, 14:24] //= 3
    dump = write_k2_dump(root / "raw frames ✓ Ünïcode", frames, range(6))
    wd = workdir_with(root / "work dir é", {
        "movies": {"run7": {"source": str(dump), "chunk_frames": 3, "pixel_size_nm": 0.2}},
        "pseudolabel": {"qa_frames": 1}})
    r = snakemake(wd)
    assert r.returncode == 0, r.stderr[-3000:]
    return wd, dump, frames


def test_quoted_paths_run_and_ingest_every_frame(finished):
    wd, dump, frames = finished
    stored = zarr.open_array(wd / "results/run7/frames.zarr/0")[:]
    np.testing.assert_array_equal(stored, frames)
    assert "Nothing to be done" in planned(wd)


def test_unrelated_files_in_the_source_rerun_nothing(finished):
    wd, dump, _ = finished
    (dump / "notes.txt").write_text("beam current 2 nA")
    (dump / "Thumbs.db").write_bytes(b"\0" * 64)
    (dump / ".DS_Store").write_bytes(b"\0")
    os.utime(dump)                       # the folder's mtime moves, as on a real file system
    try:
        assert "Nothing to be done" in planned(wd)
    finally:
        for name in ("notes.txt", "Thumbs.db", ".DS_Store"):
            (dump / name).unlink()


def test_changed_or_added_frames_rerun_the_movie(finished, tmp_path):
    import shutil

    wd, dump, frames = finished
    copy = shutil.copytree(wd, tmp_path / "wd", copy_function=shutil.copy2, symlinks=True)
    first = dump / k2_name(0)
    saved, stat = first.read_bytes(), first.stat()
    try:
        tifffile.imwrite(first, frames[0] // 2)      # a frame rewritten (new size/mtime)
        plan = planned(copy)
        assert "ingest_init" in plan and "pseudolabel_chunk" in plan
    finally:
        first.write_bytes(saved)
        os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    shutil.rmtree(copy)
    copy = shutil.copytree(wd, tmp_path / "wd2", copy_function=shutil.copy2, symlinks=True)
    added = dump / k2_name(6)
    tifffile.imwrite(added, frames[0])
    try:
        plan = planned(copy)
        assert "ingest_init" in plan and "ingest_chunk" in plan
    finally:
        added.unlink()
