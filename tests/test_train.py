"""Training: splits, augmentation, resume after a kill, model file round trip and refusals."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from etemseg.errors import ConfigError, InputFileError
from etemseg.train import (TrainConfig, TrainingData, load_model, normalise_frames,
                           sample_batch, split_frames, train)


def disks_data(n=8, h=64, w=80, seed=0) -> TrainingData:
    """Frames of dark disks on a noisy background with exact labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    images, labels = [], []
    for _ in range(n):
        lab = np.zeros((h, w), np.uint8)
        for _ in range(4):
            cy, cx, r = rng.uniform(8, h - 8), rng.uniform(8, w - 8), rng.uniform(4, 8)
            lab[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 1
        img = rng.poisson(np.where(lab, 120, 200)).astype(np.uint16)
        images.append(img)
        labels.append(lab)
    images = normalise_frames(np.stack(images))
    labels = np.stack(labels)
    cfg = TrainConfig()
    train_idx, val_idx = split_frames(n, cfg)
    return TrainingData(images, labels, train_idx, val_idx)


FAST = dict(model="shallow-wide", epochs=3, batch_size=4, lr=3e-3, crop_px=32,
            samples_per_epoch=16, device="cpu", seed=1)


def test_splits():
    tr, va = split_frames(100, TrainConfig())
    assert len(va) == 30 and len(set(tr) | set(va)) == 100 and not set(tr) & set(va)
    tr, va = split_frames(100, TrainConfig(split="time_blocks", block_frames=10))
    blocks_val = set(va // 10)
    assert not blocks_val & set(tr // 10)  # whole blocks held out
    assert len(va) == 30
    with pytest.raises(ConfigError, match="block_frames"):
        split_frames(8, TrainConfig(split="time_blocks", block_frames=16))


def test_batches_are_deterministic_and_labels_follow_images():
    data = disks_data()
    cfg = TrainConfig(**{**FAST, "batch_size": 6})
    x1, y1 = sample_batch(data, cfg, torch.Generator().manual_seed(3))
    x2, y2 = sample_batch(data, cfg, torch.Generator().manual_seed(3))
    assert x1.shape == (6, 1, 32, 32) and y1.shape == (6, 32, 32)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # particles are dark: after augmentation labelled pixels are still darker on average
    assert x1[:, 0][y1 == 1].mean() < x1[:, 0][y1 == 0].mean()


def test_loss_falls_and_model_file_round_trip(tmp_path):
    data = disks_data()
    meta = train(data, TrainConfig(**{**FAST, "epochs": 6}), tmp_path, progress=False)
    hist = meta["history"]
    assert hist[-1]["train_loss"] < 0.7 * hist[0]["train_loss"]
    assert hist[-1]["val_f1"] > 0.5
    blob = torch.load(tmp_path / "model.pt", weights_only=True)
    assert blob["name"] == "shallow-wide" and blob["normalisation"]["method"]
    assert blob["versions"]["torch"] == str(torch.__version__)
    model, meta2 = load_model(tmp_path / "model.pt", expect="shallow-wide")
    assert meta2["parameters"] == meta["parameters"]
    x = torch.from_numpy(data.images[:1])[:, None]
    assert model(x).shape == (1, 2, 64, 80)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert len(rows) == 6 and {"train_loss", "val_loss", "val_f1"} <= set(rows[0])
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_after_kill_gives_identical_weights(tmp_path):
    data = disks_data()
    cfg = TrainConfig(**FAST)
    train(data, cfg, tmp_path / "straight", progress=False)
    # "killed" after epoch 1: only the checkpoint is left, then rerun
    out = train(data, cfg, tmp_path / "resumed", progress=False, stop_after_epoch=1)
    assert out == {"stopped_after_epoch": 1}
    assert not (tmp_path / "resumed" / "model.pt").exists()
    train(data, cfg, tmp_path / "resumed", progress=False)
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_changed_settings_do_not_resume_a_stale_checkpoint(tmp_path):
    data = disks_data()
    train(data, TrainConfig(**FAST), tmp_path, progress=False, stop_after_epoch=1)
    meta = train(data, TrainConfig(**{**FAST, "lr": 1e-3, "epochs": 2}), tmp_path, progress=False)
    assert [h["epoch"] for h in meta["history"]] == [1, 2]


def test_refusals(tmp_path):
    data = disks_data()
    train(data, TrainConfig(**{**FAST, "epochs": 1}), tmp_path, progress=False)
    with pytest.raises(InputFileError, match="shallow-wide.*not unet4-norm"):
        load_model(tmp_path / "model.pt", expect="unet4-norm")
    with pytest.raises(InputFileError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes((tmp_path / "model.pt").read_bytes()[:300])
    with pytest.raises(InputFileError, match="trunc.pt"):
        load_model(truncated)
    with pytest.raises(ConfigError, match="train.lr"):
        TrainConfig(lr=-1).validate()
    with pytest.raises(ConfigError, match="train.colour"):
        TrainConfig.from_dict({"colour": 1})
