"""Evaluation: sweeps, Otsu thresholds, kernel fits, line profiles, figures, end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from skimage.measure import label as cc_label

from etemseg.analysis.comparison import (
    compare_models,
    plot_contours,
    plot_model_contours,
    plot_threshold_sweep,
)
from etemseg.analysis.kernels import (
    GABOR_PARAMS,
    THRESHOLDS,
    fit_gabor_gauss,
    gabor_gauss_model,
    otsu_thresholds,
    plot_filters,
    plot_kernel_fit,
    plot_single_kernel,
    threshold_sweep,
)
from etemseg.analysis.profiles import line_profiles, pick_particles, plot_line_profiles
from etemseg.analysis.scoring import pixel_counts, rates
from etemseg.io.store import MovieStore, create_store
from etemseg.levels import otsu_level, quantise
from etemseg.nn.checkpoint import load_model
from etemseg.nn.inference import InferConfig, prepare_model, stream_levels
from etemseg.nn.models import parse_arch
from etemseg.nn.training import TrainConfig, load_training_data
from etemseg.stages.evaluate import evaluate_model, evaluation_frames
from etemseg.stages.infer import mask_from_levels
from etemseg.stages.train import train

PNG = b"\x89PNG\r\n\x1a\n"


def disk(shape, cy, cx, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r * r


# --------------------------------------------------------------------------------------------
# threshold sweep and Otsu
# --------------------------------------------------------------------------------------------

def brute_force_sweep(q, ref, thresholds):
    rows = []
    for t in thresholds:
        per = []
        for qi, ri in zip(q, ref):
            pred = qi.astype(np.int64) * 100 > round(t * 100) * 255       # p > t, exactly
            per.append(rates(**pixel_counts(pred, ri)))
        row = {"threshold": t}
        for key in ("precision", "recall", "f1"):
            vals = np.array([p[key] for p in per])
            row[f"{key}_mean"], row[f"{key}_std"] = vals.mean(), vals.std()
        rows.append(row)
    return pd.DataFrame(rows)


def test_threshold_sweep_equals_brute_force():
    rng = np.random.default_rng(0)
    T, H, W = 5, 30, 41
    ref = rng.random((T, H, W)) < 0.2
    ref[3] = False                                   # a frame without particles
    p = np.clip(np.where(ref, 0.7, 0.3) + rng.normal(0, 0.25, ref.shape), 0, 1)
    q = quantise(p)
    q[0, :2] = 51                                    # exactly on the 0.2 threshold (51/255)
    q[1, :2] = 153                                   # exactly 0.6
    got = threshold_sweep(q, ref)
    assert list(got.columns) == ["threshold", "precision_mean", "precision_std", "recall_mean",
                                 "recall_std", "f1_mean", "f1_std"]
    np.testing.assert_array_equal(got["threshold"], THRESHOLDS)
    want = brute_force_sweep(q, ref, THRESHOLDS)
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-12, atol=1e-12)
    # at threshold 1 nothing is predicted: precision 1 by convention, recall 0 (1 if no truth)
    last = got.iloc[-1]
    assert last["precision_mean"] == 1.0 and 0 < last["recall_mean"] < 1
    # finer custom thresholds, and float input is quantised first
    fine = np.round(np.arange(0, 1.0001, 0.01), 2)
    pd.testing.assert_frame_equal(threshold_sweep(q.astype(np.float32) / 255, ref, fine),
                                  brute_force_sweep(q, ref, fine), check_exact=False, rtol=1e-12)
    with pytest.raises(ValueError, match="shape"):
        threshold_sweep(q, ref[:, :-1])


def test_otsu_thresholds_per_frame():
    rng = np.random.default_rng(1)
    frames = np.empty((3, 40, 50), np.uint8)
    for i, (lo, hi) in enumerate([(20, 230), (60, 150)]):
        frames[i] = np.where(rng.random((40, 50)) < 0.2, hi, lo) + rng.integers(-5, 6, (40, 50))
    frames[2] = 90                                  # constant frame: p > 0.5
    thr = otsu_thresholds(frames)
    assert thr.shape == (3,)
    for f, t in zip(frames, thr):
        assert t == otsu_level(np.bincount(f.ravel(), minlength=256)) / 255
    # the mask q > level separates the two modes (low mode 15..25 / 55..65)
    assert 25 / 255 <= thr[0] < 225 / 255 and 65 / 255 <= thr[1] < 145 / 255
    assert thr[0] != thr[1]
    assert thr[2] == 127 / 255
    assert otsu_thresholds(frames[0]).shape == (1,)


# --------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------

TRUE = {"x0": 0.3, "y0": -0.2, "a_h": 1.0, "sigma_h": 2.0, "freq_h": 0.18, "phase_h": 0.4,
        "a_v": 0.7, "sigma_v": 2.5, "freq_v": 0.12, "phase_v": -0.8, "a_g": -1.5,
        "sigma_g": 1.5, "offset": 0.1}


def test_gabor_gauss_fit_recovers_parameters():
    kernel = gabor_gauss_model(TRUE, 9)
    assert kernel.shape == (9, 9)
    noisy = kernel + np.random.default_rng(2).normal(0, 0.01 * kernel.std(), kernel.shape)
    fit = fit_gabor_gauss(noisy)
    assert fit["r2"] > 0.95 and fit["success"]
    p = fit["params"]
    assert set(p) == set(GABOR_PARAMS)
    for key in ("x0", "y0", "freq_h", "freq_v"):
        assert p[key] == pytest.approx(TRUE[key], abs=0.03), key
    for key in ("a_h", "a_v", "a_g", "sigma_h", "sigma_v", "sigma_g"):
        assert p[key] == pytest.approx(TRUE[key], rel=0.1), key
    for key in ("phase_h", "phase_v"):
        assert abs(np.angle(np.exp(1j * (p[key] - TRUE[key])))) < 0.1, key
    np.testing.assert_allclose(fit["model"] + fit["residual"], noisy, atol=1e-12)
    np.testing.assert_allclose(gabor_gauss_model(p, 9), fit["model"], atol=1e-9)
    comps = fit["components"]
    np.testing.assert_allclose(comps["gabor_h"] + comps["gabor_v"] + comps["gaussian"]
                               + p["offset"], fit["model"], atol=1e-9)


def test_gabor_gauss_fit_on_noise_and_degenerate_kernels():
    rng = np.random.default_rng(3)
    fit = fit_gabor_gauss(rng.normal(size=(9, 9)) * 1e-3, n_starts=3)
    assert fit["model"].shape == (9, 9) and np.isfinite(fit["r2"]) and fit["r2"] < 1
    assert all(np.isfinite(v) for v in fit["params"].values())
    assert fit_gabor_gauss(np.full((7, 7), 0.5), n_starts=1)["r2"] == 1.0  # constant: offset
    with pytest.raises(ValueError, match="NaN"):
        fit_gabor_gauss(np.full((9, 9), np.nan))


# --------------------------------------------------------------------------------------------
# line profiles
# --------------------------------------------------------------------------------------------

def test_line_profile_across_a_disk_has_the_disk_width():
    shape, r = (64, 80), 6.5                   # 13 px across on the axes
    d = disk(shape, 30, 41, r)
    frame = np.where(d, 100.0, 200.0)
    prob = d.astype(np.float32) * 0.9 + 0.05
    for angle in (0, 90, 45):
        df = line_profiles(frame, {"a": prob, "b": 1 - prob}, [(30, 41)], 15, angle,
                           pixel_size_nm=0.2, step_px=0.25)
        assert list(df["model"].unique()) == ["a", "b"] and len(df) == 2 * 121
        a = df[df["model"] == "a"]
        dip = a["position_px"][a["raw"] < 150]
        width = dip.max() - dip.min()
        assert abs(width - 2 * r) <= 1.0, (angle, width)
        high = a["position_px"][a["value"] > 0.5]
        assert abs((high.max() - high.min()) - 2 * r) <= 1.0
        np.testing.assert_allclose(a["position_nm"], a["position_px"] * 0.2)
        assert a["raw"].iloc[0] == 200 and a["raw"].iloc[len(a) // 2] == 100
    no_px = line_profiles(frame, {"a": prob}, [(30, 41)], 5)
    assert no_px["position_nm"].isna().all()
    assert line_profiles(frame, {"a": prob}, [], 5).empty


def test_pick_particles_isolated_interior_of_different_sizes():
    shape = (120, 160)
    m = np.zeros(shape, bool)
    for cy, cx, r in [(30, 30, 9), (30, 90, 6), (90, 40, 4), (90, 110, 7.5), (90, 75, 5),
                      (2, 140, 8),                      # touches the border
                      (60, 140, 5), (60, 151, 5)]:      # a close pair
        m |= disk(shape, cy, cx, r)
    picks = pick_particles(m, n=3)
    assert list(picks["kind"]) == ["largest", "median", "smallest"]
    assert picks["area_px"].is_monotonic_decreasing
    assert list(zip(picks["y"].round(), picks["x"].round())) == [(30, 30), (30, 90), (90, 40)]
    assert (picks["gap_px"] >= picks["diameter_px"]).all()
    assert len(pick_particles(m, n=10)) == 5
    assert pick_particles(np.zeros(shape, bool)).empty


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------

def test_plot_functions_write_pngs(tmp_path):
    rng = np.random.default_rng(4)
    kernel = gabor_gauss_model(TRUE, 9)
    paths = [plot_single_kernel(kernel, tmp_path / "k.png"),
             plot_filters(rng.normal(size=(32, 9, 9)), tmp_path / "f.png"),
             plot_kernel_fit(kernel, fit_gabor_gauss(kernel, n_starts=2), tmp_path / "fit.png")]
    frame = rng.poisson(200, (64, 80)).astype(np.uint16)
    masks = {f"m{i}": disk(frame.shape, 30, 40, 5 + i) for i in range(6)}
    paths.append(plot_contours(frame, masks, tmp_path / "c.png", pixel_size_nm=0.2,
                               crop=(10, 50, 20, 70)))
    paths.append(plot_contours(frame, masks, tmp_path / "c2.png", pixel_size_nm=None))
    with pytest.raises(ValueError, match="at most 6"):
        plot_contours(frame, {**masks, "x": masks["m0"]}, tmp_path / "c3.png", pixel_size_nm=1)
    ref = rng.random((3, 20, 20)) < 0.3
    q = quantise(np.clip(ref * 0.6 + rng.random(ref.shape) * 0.4, 0, 1))
    paths.append(plot_threshold_sweep({"a": threshold_sweep(q, ref),
                                       "b": threshold_sweep(255 - q, ref)},
                                      {"a": otsu_thresholds(q)}, tmp_path / "s.png"))
    prof = line_profiles(frame, {"a": masks["m0"] * 1.0, "b": masks["m3"] * 1.0},
                         [(30, 40), (20, 20)], 10, pixel_size_nm=0.2)
    paths.append(plot_line_profiles(prof, tmp_path / "p.png"))
    paths.append(plot_line_profiles(prof.iloc[:0], tmp_path / "p0.png"))
    for p in paths:
        assert p.read_bytes()[:8] == PNG, p
    assert not list(tmp_path.glob(".*tmp*"))


# --------------------------------------------------------------------------------------------
# end to end on tiny stores
# --------------------------------------------------------------------------------------------

# window_ms 0: the frames below are independent pictures, not a movie (and the probabilities are
# computed from single frames)
FAST = {"epochs": 3, "batch_size": 4, "lr": 3e-3, "crop_px": 32, "samples_per_epoch": 16,
        "device": "cpu", "seed": 1, "split": "random", "max_val_frames": 4, "window_ms": 0}


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    """results/{movie}/frames, pseudo, truth; models/{m}/model.pt; results/{movie}/{m}/prob, mask.

    Returns the root (cwd-independent: absolute paths in the model files).
    """
    root = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(5)
    T, H, W = 8, 64, 80
    truth = np.zeros((T, H, W), np.uint32)
    frames = np.empty((T, H, W), np.uint16)
    for t in range(T):
        lab = np.zeros((H, W), bool)
        for _ in range(4):
            lab |= disk((H, W), rng.uniform(10, H - 10), rng.uniform(10, W - 10),
                        rng.uniform(4, 7))
        truth[t] = cc_label(lab, connectivity=2)
        frames[t] = rng.poisson(np.where(lab, 120, 200))
    movie = root / "results" / "sim"
    common = {"n_frames": T, "frame_shape": (H, W), "chunk_frames": 4, "fps": 400.0,
              "pixel_size_nm": 0.2}
    create_store(movie / "frames.zarr", dtype=np.uint16, **common)
    MovieStore.open(movie / "frames.zarr", "r+").array[:] = frames
    pseudo = (truth > 0).astype(np.uint8)
    pseudo[:, :, :3] = 1 - pseudo[:, :, :3]          # imperfect pseudo-labels
    src = MovieStore.open(movie / "frames.zarr")
    src.like(movie / "pseudo.zarr", np.uint8).array[:] = pseudo
    tz = zarr.create_array(movie / "synth" / "truth" / "labels.zarr", shape=truth.shape,
                           chunks=(4, H, W), dtype=np.uint32)
    tz[:] = truth
    for name in ("shallow-wide", "single-filter"):
        cfg = TrainConfig(model=name, **FAST)
        data = load_training_data([(movie / "frames.zarr", movie / "pseudo.zarr")], cfg)
        train(data, cfg, root / "models" / name, progress=False)
        model, _ = load_model(root / "models" / name / "model.pt")
        model = prepare_model(model, torch.device("cpu"), True)
        (_, prob, _), = stream_levels(model, [(0, frames)], arch=parse_arch(name),
                                      cfg=InferConfig(), device="cpu")
        src.like(movie / name / "prob.zarr", np.uint8).array[:] = prob
        src.like(movie / name / "mask.zarr", np.uint8).array[:] = np.stack(
            [mask_from_levels(q, otsu_level(np.bincount(q.ravel(), minlength=256)), 10)
             for q in prob])
    return root


def test_evaluate_model_end_to_end(workflow):
    root = workflow
    movie = root / "results" / "sim"
    rows = []
    for name in ("shallow-wide", "single-filter"):
        out = root / "eval" / name
        res = evaluate_model(movie, name, root / "models" / name / "model.pt", out_dir=out)
        rows.append(res)
        _, meta = load_model(root / "models" / name / "model.pt")
        val = sorted(int(s.rsplit(":", 1)[1]) for s in meta["data"]["val_sources"])
        assert res["frame_selection"] == "validation" and res["frames"] == val
        sweep = pd.read_csv(out / "threshold_sweep.csv")
        assert len(sweep) == len(THRESHOLDS) and sweep["f1_mean"].between(0, 1).all()
        otsu = pd.read_csv(out / "otsu_thresholds.csv")
        assert list(otsu["frame"]) == val
        assert pd.read_csv(out / "threshold_sweep_truth.csv").shape == sweep.shape
        prof = pd.read_csv(out / "line_profiles.csv")
        assert set(prof["model"]) == {name} and prof["particle"].nunique() >= 1
        scores = json.loads((out / "scores.json").read_text())
        s = scores["summary"]
        assert s["f1_otsu"] > 0.5 and s["best_f1"] >= s["f1_otsu"] - 1e-9
        assert s["f1_truth"] > 0.5 and 0 <= s["detection_f1_truth"] <= 1
        assert 0 < s["best_threshold"] < 1 and s["parameters"] == meta["parameters"]
        assert scores["vs_truth"]["stored_mask"]["detection"]["truth"] > 0
        fit = json.loads((out / "kernel_fit.json").read_text())
        assert np.array(fit["kernel"]).shape == (9, 9) and np.isfinite(fit["r2"])
        pngs = ["line_profiles.png", "kernel_fit.png",
                "filters.png" if name == "shallow-wide" else "kernel.png"]
        for png in pngs:
            assert (out / png).read_bytes()[:8] == PNG, png
        assert set(scores["outputs"]) == {p.name for p in out.iterdir()}
    # explicit frames, frames capped, no truth
    res = evaluate_model(movie, "shallow-wide", root / "models/shallow-wide/model.pt",
                         out_dir=root / "eval2", val_frames=[1, 2, 6], max_frames=2,
                         truth_path=None)
    assert res["frames"] == [1, 6] and res["frame_selection"] == "given"
    table = compare_models(rows + [{"model": "x", "parameters": 3}])
    assert list(table["model"]) == ["shallow-wide", "single-filter", "x"]
    assert table.loc[0, "parameters"] > table.loc[1, "parameters"]
    assert np.isnan(table.loc[2, "f1_truth"]) and table["f1_otsu"].iloc[:2].gt(0.5).all()
    png = plot_model_contours(root / "results", "sim", ["shallow-wide", "single-filter"],
                              root / "contours.png", crop=(0, 40, 0, 60))
    assert png.read_bytes()[:8] == PNG


def test_evaluation_frame_choice():
    meta = {"data": {"sources": [f"results/m/frames.zarr:{i}" for i in range(6)]}}
    idx, how = evaluation_frames(meta, "/abs/results/m/frames.zarr", 10)
    assert how == "held_out" and idx.tolist() == [6, 7, 8, 9]
    idx, how = evaluation_frames(meta, "results/other/frames.zarr", 100, max_frames=5)
    assert how == "unseen_movie" and idx.tolist() == [0, 25, 50, 74, 99]
    idx, how = evaluation_frames(meta, "results/m/frames.zarr", 6)
    assert how == "all_training_frames" and len(idx) == 6
    with pytest.raises(ValueError, match="val_frames"):
        evaluation_frames(meta, "x", 5, val_frames=[7])
