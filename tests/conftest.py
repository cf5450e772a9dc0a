"""Shared fixtures: tiny generated frame dumps (no downloads, nothing shipped but the DM files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile


def k2_name(absolute_frame: int, fps: int = 400, suffix: str = ".tif") -> str:
    second, frame = divmod(absolute_frame, fps)
    minute, second = divmod(second, 60)
    hour, minute = divmod(minute, 60)
    return (f"Capture1_Hour_{hour:02d}_Minute_{minute:02d}_Second_{second:02d}"
            f"_Frame_{frame:04d}{suffix}")


def write_k2_dump(folder: Path, frames: np.ndarray, indices, fps: int = 400) -> Path:
    """Write ``frames[i]`` as the K2-named single-page TIFF of absolute frame ``indices[i]``."""
    folder.mkdir(parents=True, exist_ok=True)
    for frame, idx in zip(frames, indices):
        tifffile.imwrite(folder / k2_name(int(idx), fps), frame)
    return folder


@pytest.fixture
def small_movie() -> np.ndarray:
    """40 frames of 24x40 uint16 with a moving dark blob (non-square to catch x/y swaps)."""
    rng = np.random.default_rng(1)
    t, h, w = 40, 24, 40
    yy, xx = np.mgrid[:h, :w]
    frames = np.empty((t, h, w), np.uint16)
    for i in range(t):
        blob = ((yy - 12) ** 2 + (xx - 5 - i * 0.5) ** 2) < 16
        frames[i] = rng.poisson(np.where(blob, 300, 1000)).astype(np.uint16)
    return frames


@pytest.fixture
def k2_dump(tmp_path, small_movie):
    """K2 dump of ``small_movie`` with absolute frames 390..430 except 401 (a gap across 1 s)."""
    indices = [i for i in range(390, 431) if i != 401]
    return write_k2_dump(tmp_path / "dump", small_movie, indices), indices


@pytest.fixture(scope="session")
def tiny_workflow(tmp_path_factory) -> Path:
    """The tiny workflow (``TINY`` of tests/test_workflow.py) run once locally; its work directory.
    Shared by the tests that look at a finished run (outputs, notebook, report)."""
    from .test_workflow import TINY, snakemake, workdir_with

    wd = workdir_with(tmp_path_factory.mktemp("tiny-workflow"), TINY)
    r = snakemake(wd)
    assert r.returncode == 0, r.stderr[-3000:]
    return wd
