"""The pseudo-labelling stage on stores: per-chunk equals whole-movie, CLI, scoring, QA picture."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import zarr

from etemseg.stages.pseudolabel import PRESETS, pseudolabel_stack
from etemseg.io.store import MovieStore
from etemseg.synth import SynthParams, write_synthetic_movie


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "etemseg.cli", "--quiet", *map(str, args)],
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def movie(tmp_path_factory):
    root = tmp_path_factory.mktemp("movie")
    write_synthetic_movie(root / "synth", SynthParams(frames=10, height=96, width=128, seed=5),
                          progress=False)
    assert run_cli("ingest", root / "synth/frames", root / "frames.zarr",
                   "--chunk-frames", 4).returncode == 0
    return root


def test_per_chunk_equals_whole_and_direct(movie, tmp_path):
    frames = MovieStore.open(movie / "frames.zarr")
    whole, chunked = tmp_path / "whole.zarr", tmp_path / "chunked.zarr"
    assert run_cli("pseudolabel", movie / "frames.zarr", whole).returncode == 0
    assert run_cli("pseudolabel", movie / "frames.zarr", chunked, "--init").returncode == 0
    for k in (2, 0, 1):
        r = run_cli("pseudolabel", movie / "frames.zarr", chunked, "--chunk", k, "--threads", 2,
                    "--receipt", tmp_path / f"r{k}.json")
        assert r.returncode == 0, r.stderr
    a, b = zarr.open_array(whole / "0")[:], zarr.open_array(chunked / "0")[:]
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, pseudolabel_stack(frames.array[:], PRESETS["default"]))
    receipt = json.loads((tmp_path / "r2.json").read_text())
    assert receipt["frames"] == 2 and len(receipt["coverage"]) == 2
    assert MovieStore.open(whole).meta["params"] == PRESETS["default"].to_dict()


def test_preset_and_override_recorded(movie, tmp_path):
    out = tmp_path / "paper.zarr"
    r = run_cli("pseudolabel", movie / "frames.zarr", out, "--preset", "paper", "--sigma", 1.5)
    assert r.returncode == 0, r.stderr
    meta = MovieStore.open(out).meta
    assert meta["preset"] == "paper" and meta["params"]["sigma"] == 1.5
    bad = run_cli("pseudolabel", movie / "frames.zarr", out, "--preset", "nope")
    assert bad.returncode == 2 and "preset" in bad.stderr
    assert MovieStore.open(out).meta["params"]["sigma"] == 1.5  # untouched


def test_score_and_overlay(movie, tmp_path):
    pseudo = tmp_path / "p.zarr"
    assert run_cli("pseudolabel", movie / "frames.zarr", pseudo).returncode == 0
    r = run_cli("score", pseudo, movie / "synth/truth/labels.zarr", "--out", tmp_path / "s.json")
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["frames"] == 10 and 0.8 < s["pixel"]["f1"] <= 1
    assert "median_nm" in s["diameter_error"]
    png = tmp_path / "qa.png"
    r = run_cli("overlay", movie / "frames.zarr", png, "--frame", 3, "--mask", f"pseudo={pseudo}",
                "--truth", movie / "synth/truth/labels.zarr")
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = run_cli("overlay", movie / "frames.zarr", png, "--frame", 99)
    assert bad.returncode == 2 and "--frame" in bad.stderr
