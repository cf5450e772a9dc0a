"""Inference: tiling equivalence, optimised vs eager, thresholds, bad models and frames."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import zarr

from etemseg.infer import (InferConfig, mask_from_levels, otsu_level, predict, prepare_model,
                           quantise, tiles)
from etemseg.ingest import ingest
from etemseg.models import build_model, halo, parse_arch, size_multiple
from etemseg.scoring import rates, pixel_counts
from etemseg.train import TrainConfig, train

from .test_train import disks_data


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "etemseg.cli", "--quiet", *map(str, args)],
                          capture_output=True, text=True)


def random_model(name, seed=0):
    torch.manual_seed(seed)
    model = build_model(name)
    # give BatchNorm non-trivial statistics so folding is really exercised
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, 1, 64, 64))
    return model.eval()


@pytest.mark.parametrize("name", ["unet4-norm", "unet3", "hourglass", "shallow-wide",
                                  "single-filter", "unet4-twoconv-norm-blur1"])
def test_tiled_equals_whole_frame(name):
    arch = parse_arch(name)
    frames = np.random.default_rng(0).poisson(200, (2, 150, 203)).astype(np.uint16)
    model = prepare_model(random_model(name), torch.device("cpu"), optimised=False)
    whole = predict(model, frames, arch=arch, cfg=InferConfig(max_tile_px=0), device="cpu")
    tiled = predict(model, frames, arch=arch, cfg=InferConfig(max_tile_px=96), device="cpu")
    assert len(tiles(203, 96, size_multiple(arch), halo(arch))) > 1 or halo(arch) > 40
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_optimised_path_gives_identical_masks():
    arch = parse_arch("unet4-norm")
    frames = np.random.default_rng(1).poisson(200, (2, 128, 160)).astype(np.uint16)
    model = random_model("unet4-norm")
    eager = predict(prepare_model(model, torch.device("cpu"), False), frames, arch=arch,
                    cfg=InferConfig(optimised=False), device=torch.device("cpu"))
    fast = predict(prepare_model(model, torch.device("cpu"), True), frames, arch=arch,
                   cfg=InferConfig(optimised=True), device=torch.device("cpu"))
    np.testing.assert_allclose(fast, eager, atol=1e-4)
    qa, qb = quantise(eager), quantise(fast)
    for level in (50, 127, 200):
        c = pixel_counts(qa > level, qb > level)
        assert rates(**c)["iou"] >= 0.999


def test_otsu_level_and_fixed_threshold_semantics():
    hist = np.zeros(256, np.int64)
    hist[10], hist[240] = 900, 100
    assert 10 <= otsu_level(hist) < 240
    assert otsu_level(np.bincount(np.full(50, 7), minlength=256)) == 127  # constant -> p > 0.5
    q = np.array([[127, 128, 255, 0]], np.uint8)
    assert mask_from_levels(q, 127, 0).tolist() == [[0, 1, 1, 0]]


def test_min_area_filter_removes_small_clusters():
    q = np.zeros((40, 40), np.uint8)
    q[2:4, 2:4] = 255         # 4 px cluster
    q[10:20, 10:20] = 255     # 100 px particle
    m = mask_from_levels(q, 127, 20)
    assert m.sum() == 100


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    data = disks_data(n=6, h=64, w=80)
    cfg = TrainConfig(model="shallow-wide", epochs=4, batch_size=4, lr=3e-3, crop_px=32,
                      samples_per_epoch=32, device="cpu")
    train(data, cfg, root / "model", progress=False)
    raw = (data.images * 30 + 200).clip(0, 65535).astype(np.uint16)
    folder = root / "dump"
    folder.mkdir()
    for i, frame in enumerate(raw):
        np.save(folder / f"f_{i}.npy", frame)
    ingest(folder, root / "frames.zarr", chunk_frames=4, progress=False)
    return root, data


@pytest.mark.parametrize("mode", ["fixed", "otsu_frame", "otsu_chunk"])
def test_cli_per_chunk_threshold_modes(trained, mode):
    root, data = trained
    out = root / f"out-{mode}"
    common = ["--threshold", mode, "--min-area-px", 5, "--expect", "shallow-wide"]
    assert run_cli("infer", root / "frames.zarr", root / "model/model.pt", out, "--init",
                   *common).returncode == 0
    for k in (1, 0):
        r = run_cli("infer", root / "frames.zarr", root / "model/model.pt", out, "--chunk", k,
                    *common)
        assert r.returncode == 0, r.stderr
    masks = zarr.open_array(out / "mask.zarr/0")[:]
    prob = zarr.open_array(out / "prob.zarr/0")[:]
    assert masks.shape == (6, 64, 80) and prob.dtype == np.uint8
    f1 = rates(**pixel_counts(masks > 0, data.labels > 0))["f1"]
    assert f1 > 0.6


def test_bad_models_leave_no_output(trained, tmp_path):
    root, _ = trained
    out = tmp_path / "out"
    r = run_cli("infer", root / "frames.zarr", tmp_path / "missing.pt", out, "--init")
    assert r.returncode == 2 and "missing.pt" in r.stderr and not out.exists()
    bad = tmp_path / "trunc.pt"
    bad.write_bytes((root / "model/model.pt").read_bytes()[:500])
    r = run_cli("infer", root / "frames.zarr", bad, out)
    assert r.returncode == 2 and "trunc.pt" in r.stderr and not out.exists()
    r = run_cli("infer", root / "frames.zarr", root / "model/model.pt", out, "--expect",
                "unet4-norm")
    assert r.returncode == 2 and "not unet4-norm" in r.stderr and not out.exists()


def test_tiny_and_nan_frames(trained, tmp_path):
    root, _ = trained
    folder = tmp_path / "tiny"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        frame = rng.normal(200, 10, (5, 7)).astype(np.float32)  # smaller than the model's field
        if i == 1:
            frame[2, 3] = np.nan
        np.save(folder / f"f_{i}.npy", frame)
    ingest(folder, tmp_path / "tiny.zarr", chunk_frames=3, progress=False)
    r = run_cli("infer", tmp_path / "tiny.zarr", root / "model/model.pt", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    masks = zarr.open_array(tmp_path / "o/mask.zarr/0")[:]
    assert masks.shape == (3, 5, 7) and masks[1].sum() == 0
    assert "NaN" in r.stderr


def test_min_area_filter_is_8_connected_like_the_measurements():
    q = np.zeros((30, 30), np.uint8)
    for i in range(12):          # a diagonal line of 12 px: one 8-connected component
        q[5 + i, 5 + i] = 255
    q[25, 25] = 255              # an isolated pixel
    m = mask_from_levels(q, 127, 10)
    assert m.sum() == 12 and m[25, 25] == 0
    assert mask_from_levels(q, 127, 13).sum() == 0


def test_predict_levels_equals_quantised_predict_and_bincount():
    from etemseg.infer import predict_levels, quantise
    from etemseg.models import build_model

    arch = parse_arch("unet3-norm")
    torch.manual_seed(0)
    model = prepare_model(build_model(arch), torch.device("cpu"), True)
    frames = np.random.default_rng(0).poisson(200, (5, 40, 48)).astype(np.uint16)
    cfg = InferConfig(batch_size=2)
    q, hist = predict_levels(model, frames, arch=arch, cfg=cfg, device="cpu")
    assert q.dtype == np.uint8 and hist.shape == (5, 256)
    np.testing.assert_array_equal(q, quantise(predict(model, frames, arch=arch, cfg=cfg,
                                                      device="cpu")))
    for f, h in zip(q, hist):
        np.testing.assert_array_equal(h, np.bincount(f.ravel(), minlength=256))


def test_uint16_frames_keep_their_full_range_on_the_way_to_float():
    from etemseg.infer import _to_float

    raw = np.array([[0, 1, 32767, 32768, 40000, 65535]], np.uint16)
    np.testing.assert_array_equal(_to_float(torch.from_numpy(raw)).numpy(),
                                  raw.astype(np.float32))
