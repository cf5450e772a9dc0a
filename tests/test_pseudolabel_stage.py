"""The pseudo-labelling stage on stores: per-chunk equals whole-movie, CLI, scoring, QA picture."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import zarr

from etemseg.analysis.scoring import score_frames
from etemseg.io.store import MovieStore
from etemseg.protocol import run
from etemseg.stages.ingest import ingest
from etemseg.stages.pseudolabel import PRESETS, PseudolabelStage, pseudolabel_stack
from etemseg.synth import SynthParams, simulate, write_synthetic_movie

DEFAULT_018 = PRESETS["default"].resolved(0.18)  # the demo movie's pixel size


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
    # the default temporal window: 12.5 ms at 400 frames/s = the mean of 5 frames
    assert MovieStore.open(whole).meta["window_frames"] == 5
    means = frames.read_mean(0, frames.n_frames, 5)
    np.testing.assert_array_equal(a, pseudolabel_stack(means, DEFAULT_018))
    receipt = json.loads((tmp_path / "r2.json").read_text())
    assert receipt["frames"] == 2 and len(receipt["coverage"]) == 2
    assert receipt["params"] == DEFAULT_018.to_dict()
    for store in (whole, chunked):
        meta = MovieStore.open(store).meta
        assert meta["params"] == DEFAULT_018.to_dict()            # px, used by every chunk
        assert meta["params_nm"] == PRESETS["default"].to_dict()  # as given
        assert meta["scale"] == {"pixel_size_nm": 0.18, "source": "calibration",
                                 "effective_pixel_size_nm": 0.18}


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


def test_chunks_use_the_params_recorded_at_init(movie, tmp_path, caplog):
    frames = movie / "frames.zarr"
    out = tmp_path / "p.zarr"
    run(PseudolabelStage(frames, out, preset="default", params=PRESETS["default"]), init=True)
    other = PseudolabelStage(frames, out, preset="paper", params=PRESETS["paper"])
    with caplog.at_level(logging.WARNING, logger="etemseg.stages.pseudolabel"):
        receipts = [run(other, chunk=k) for k in range(MovieStore.open(frames).n_chunks)]
    assert all(r.stats["params"] == DEFAULT_018.to_dict() for r in receipts)
    assert any("recorded" in r.getMessage() for r in caplog.records)
    src = MovieStore.open(frames)
    np.testing.assert_array_equal(
        MovieStore.open(out).array[:], pseudolabel_stack(src.read_mean(0, src.n_frames, 5),
                                                         DEFAULT_018))


def _npy_movie(folder, params: SynthParams):
    """A simulated movie as .npy frames (no calibration, unlike the simulator's TIFFs)."""
    folder.mkdir()
    truth = []
    for i, (img, lab) in enumerate(simulate(params)):
        np.save(folder / f"frame_{i:03d}.npy", img)
        truth.append(lab)
    return truth


def test_uncalibrated_movie_is_resolved_at_an_estimated_scale(tmp_path, caplog):
    """0.36 nm/px, twice the demo magnification's pixel: estimate ~ calibration, F1 ~ equal."""
    truth = _npy_movie(tmp_path / "npy", SynthParams(frames=6, height=256, width=256,
                                                     pixel_size_nm=0.36, seed=4))
    uncal = ingest(tmp_path / "npy", tmp_path / "uncal.zarr", progress=False, chunk_frames=4)
    cal = ingest(tmp_path / "npy", tmp_path / "cal.zarr", progress=False, chunk_frames=4,
                 pixel_size_nm=0.36)
    assert uncal.pixel_size_nm is None and cal.pixel_size_nm == 0.36
    f1 = {}
    for name, src in (("uncal", uncal), ("cal", cal)):
        out = tmp_path / f"{name}-pseudo.zarr"
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="etemseg.scales"):
            run(PseudolabelStage(src.path, out, preset="default", params=PRESETS["default"]))
        warned = [r.getMessage() for r in caplog.records if r.name == "etemseg.scales"]
        meta = MovieStore.open(out).meta
        masks = MovieStore.open(out).array[:]
        f1[name] = score_frames(zip(masks, truth))["pixel"]["f1"]
        if name == "cal":
            assert not warned and meta["scale"]["source"] == "calibration"
            continue
        scale = meta["scale"]
        assert scale["source"] == "estimate" and scale["pixel_size_nm"] is None
        assert scale["frames_used"] == [0, 4]                # chunk 0 only
        assert abs(scale["effective_pixel_size_nm"] / 0.36 - 1) < 0.25
        assert any(f"{scale['estimated_diameter_px']:.1f} px" in m for m in warned)
        assert meta["params"] == PRESETS["default"].resolved(
            scale["effective_pixel_size_nm"]).to_dict()
        chunked = tmp_path / "uncal-chunked.zarr"        # per-chunk mode: the same masks
        stage = PseudolabelStage(src.path, chunked, preset="default", params=PRESETS["default"])
        run(stage, init=True)
        for k in (1, 0):
            run(stage, chunk=k)
        assert MovieStore.open(chunked).meta["params"] == meta["params"]
        np.testing.assert_array_equal(MovieStore.open(chunked).array[:], masks)
    assert f1["cal"] >= 0.85 and abs(f1["uncal"] - f1["cal"]) <= 0.03, f1


def test_init_estimates_the_scale_before_any_chunk_is_ingested(tmp_path):
    """In the workflow `pseudolabel_init` runs beside the ingest chunk jobs (they may be bundled
    in one SLURM group): the estimate reads the dump files the frame store records."""
    from etemseg.stages.ingest import IngestStage

    _npy_movie(tmp_path / "npy", SynthParams(frames=6, height=256, width=256,
                                             pixel_size_nm=0.36, seed=4))
    run(IngestStage(tmp_path / "npy", tmp_path / "f.zarr", chunk_frames=4), init=True)
    assert not list((tmp_path / "f.zarr" / "0").rglob("c/*"))         # no frame written yet
    whole = ingest(tmp_path / "npy", tmp_path / "whole.zarr", progress=False, chunk_frames=4)
    early, late = tmp_path / "early.zarr", tmp_path / "late.zarr"
    run(PseudolabelStage(tmp_path / "f.zarr", early, preset="default",
                         params=PRESETS["default"]), init=True)
    run(PseudolabelStage(whole.path, late, preset="default", params=PRESETS["default"]),
        init=True)
    assert MovieStore.open(early).meta["scale"]["source"] == "estimate"
    assert MovieStore.open(early).meta["params"] == MovieStore.open(late).meta["params"]


@pytest.mark.parametrize("case", ["inverted", "noise", "constant"])
def test_uncalibrated_movie_without_findable_particles_gets_empty_masks(case, tmp_path):
    """Issue 11, bad input: blank frames and particles of the wrong polarity on a movie without
    a pixel size: a warning and empty masks, never a crash."""
    from etemseg.io.store import create_store

    frames = np.stack([f for f, _ in simulate(SynthParams(frames=4, height=256, width=256,
                                                          seed=3))]).astype(np.int64)
    data = {"inverted": frames.max() + 50 - frames,
            "noise": np.random.default_rng(0).poisson(200, frames.shape),
            "constant": np.full(frames.shape, 100)}[case].astype(np.uint16)
    src = tmp_path / "frames.zarr"
    create_store(src, n_frames=4, frame_shape=(256, 256), dtype=np.uint16, chunk_frames=4,
                 fps=400.0, pixel_size_nm=None)
    MovieStore.open(src, "r+").array[:] = data
    r = run_cli("pseudolabel", src, tmp_path / "pseudo.zarr")
    assert r.returncode == 0, r.stderr
    assert "WARNING" in r.stderr
    if case == "inverted":
        assert "pseudolabel.polarity" in r.stderr
        assert MovieStore.open(tmp_path / "pseudo.zarr").meta["scale"]["polarity_mismatch"]
    assert not zarr.open_array(tmp_path / "pseudo.zarr" / "0")[:].any()


def test_window_zero_labels_single_frames(movie, tmp_path):
    frames = MovieStore.open(movie / "frames.zarr")
    out = tmp_path / "single.zarr"
    assert run_cli("pseudolabel", movie / "frames.zarr", out, "--window-ms", 0).returncode == 0
    assert MovieStore.open(out).meta["window_frames"] == 1
    np.testing.assert_array_equal(zarr.open_array(out / "0")[:],
                                  pseudolabel_stack(frames.array[:], DEFAULT_018))
