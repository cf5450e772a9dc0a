"""Training: splits, augmentation, resume after a kill, model file round trip and refusals."""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from etemseg.cli import main
from etemseg.errors import ConfigError, InputFileError, OutputPathError
from etemseg.stages.ingest import ingest
from etemseg.nn.models import parse_arch
from etemseg.io.store import FAULT_ENV, MovieStore
from etemseg.nn.checkpoint import load_model, normalise_frames
from etemseg.nn.models import build_model
from etemseg.nn.training import (IGNORE, TrainConfig, Trainer, TrainingData, crop_px_for,
                                 loss_targets, predict_masks, resolve_crop, rng_state,
                                 sample_batch, segmentation_loss, set_rng_state, split_frames,
                                 uncertain_band)
from etemseg.stages.train import train


def disks_movie(n=8, h=64, w=80, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Raw uint16 frames of dark disks on a noisy background, and their exact 0/1 labels."""
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
    return np.stack(images), np.stack(labels)


def disks_data(n=8, h=64, w=80, seed=0) -> TrainingData:
    """:func:`disks_movie` as training data (normalised frames, default split)."""
    images, labels = disks_movie(n, h, w, seed)
    images = normalise_frames(images)
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


def test_level_augment_adds_a_smooth_bounded_field_and_is_off_by_default():
    from etemseg.nn.training import level_field

    data = disks_data()
    gen = torch.Generator().manual_seed(5)
    field = level_field(32, 1.5, gen)
    assert field.shape == (1, 1, 32, 32) and field.dtype == torch.float32
    assert 0 < float(field.abs().max()) <= 1.5 + 1e-6
    # smooth over a crop: neighbouring pixels differ by a small part of the peak
    assert float(field.diff(dim=-1).abs().max()) < 0.25 * float(field.abs().max())
    plain = TrainConfig(**{**FAST, "batch_size": 1})
    assert plain.level_augment == 0
    on = dataclasses.replace(plain, level_augment=1.5)
    x0, y0 = sample_batch(data, plain, torch.Generator().manual_seed(3))
    x1, y1 = sample_batch(data, on, torch.Generator().manual_seed(3))
    # the same crop and labels; the image differs by a smooth field of peak <= 1.5
    assert torch.equal(y0, y1)
    diff = x1 - x0
    assert 0 < float(diff.abs().max()) <= 1.5 + 1e-5
    assert float(diff.diff(dim=-1).abs().max()) < 0.25 * float(diff.abs().max())
    with pytest.raises(ConfigError, match="level_augment"):
        TrainConfig(level_augment=-1.0).validate()


def test_keep_best_by_loss_skips_a_degenerate_first_epoch():
    """Sparse particles in the validation frames: an undertrained epoch that marks everything
    (F1 0.09 at precision 0.05) outranks cautious later epochs (F1 0 at p > 0.5) by F1, not by
    the validation loss."""
    from etemseg.nn.training import TrainingRun

    data = disks_data()
    rows = [{"epoch": 1, "val_f1": 0.09, "val_loss": 0.70},
            {"epoch": 2, "val_f1": 0.0, "val_loss": 0.17},
            {"epoch": 3, "val_f1": 0.0, "val_loss": 0.12},
            {"epoch": 4, "val_f1": 0.0, "val_loss": 0.15}]
    kept = {}
    for by in ("f1", "loss"):
        run = TrainingRun.new(data, TrainConfig(**FAST), torch.device("cpu"))
        for row in rows:
            run.record(row, by)
        kept[by] = run.best["epoch"]
        assert run.best["state"] is not None
    assert kept == {"f1": 1, "loss": 3}
    assert TrainConfig().keep_best_by == "f1"
    with pytest.raises(ConfigError, match="keep_best_by"):
        TrainConfig(keep_best_by="val").validate()


def test_keep_best_auto_ranks_by_loss_when_validation_has_few_particles():
    """``auto``: F1 ranks epochs only with at least MIN_VAL_PARTICLES labelled particles in the
    validation frames (its standard error ~0.5 / sqrt(n) is then <= 0.1); a held-out part with
    a handful of particles (a quadrant of thick carbon) is ranked by the validation loss."""
    from etemseg.nn.training import (MIN_VAL_PARTICLES, ranking_score, validation_particles)

    few = disks_data()                                 # 3 validation frames x <= 4 disks
    n_few = validation_particles(few, TrainConfig())
    assert 0 < n_few < MIN_VAL_PARTICLES
    many = disks_data(n=40)                            # 12 validation frames
    assert validation_particles(many, TrainConfig()) >= MIN_VAL_PARTICLES
    auto = TrainConfig(keep_best_by="auto")
    assert ranking_score(few, auto) == "loss"
    assert ranking_score(many, auto) == "f1"
    assert ranking_score(few, TrainConfig()) == "f1"  # the default
    assert ranking_score(many, TrainConfig(keep_best_by="loss")) == "loss"
    run = Trainer(few, TrainConfig(**{**FAST, "keep_best_by": "auto"})).fit()
    assert run.final["saved_by"] == "loss"
    losses = [h["val_loss"] for h in run.history]
    assert run.final["saved_epoch"] == 1 + int(np.argmin(losses))


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


#: Metrics that are timings (differ from run to run).
TIMINGS = {"epoch_s", "images_per_s", "peak_gpu_mem_mb", "training_time_s",
           "wall_time_s_this_run"}
OUTPUTS = ("model.pt", "metrics.csv", "curve.png")


class Killed(Exception):
    """Stands for the SIGKILL of ``ETEMSEG_FAULT=train:0:E`` in in-process tests."""


def kill_after(monkeypatch, epoch: int) -> None:
    """Make training "die" right after the checkpoint of ``epoch`` (as the fault hook would)."""
    def hook(stage, k, done):
        if (stage, k, done) == ("train", 0, epoch):
            raise Killed(epoch)

    monkeypatch.setattr("etemseg.stages.train.fault_point", hook)


def untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in rows]


def read_metrics(folder: Path) -> list[dict]:
    with open(folder / "metrics.csv", newline="") as fh:
        return untimed(list(csv.DictReader(fh)))


def assert_same_model(a: Path, b: Path) -> None:
    """Same weights (exactly), metadata and metrics, timings aside."""
    ma, mb = (torch.load(f / "model.pt", weights_only=True) for f in (a, b))
    assert ma["state_dict"].keys() == mb["state_dict"].keys()
    for key, value in ma["state_dict"].items():
        assert torch.equal(value, mb["state_dict"][key]), key
    assert untimed(ma.pop("history")) == untimed(mb.pop("history"))
    for meta in (ma, mb):
        for key in TIMINGS | {"state_dict"}:
            meta.pop(key, None)
    assert ma == mb
    assert read_metrics(a) == read_metrics(b)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted training run of FAST: (data, its model folder)."""
    data = disks_data()
    folder = tmp_path_factory.mktemp("straight") / "model"
    train(data, TrainConfig(**FAST), folder, progress=False)
    return data, folder


@pytest.mark.parametrize("killed_after", [1, 3])
def test_resume_after_kill_gives_identical_weights_and_metrics(straight, tmp_path, monkeypatch,
                                                               killed_after):
    data, reference = straight
    cfg = TrainConfig(**FAST)
    kill_after(monkeypatch, killed_after)
    with pytest.raises(Killed):
        train(data, cfg, tmp_path, progress=False)
    assert not (tmp_path / "model.pt").exists()
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["epochs_done"] == killed_after
    monkeypatch.undo()
    meta = train(data, cfg, tmp_path, progress=False)
    assert_same_model(reference, tmp_path)
    assert [h["epoch"] for h in meta["history"]] == [1, 2, 3]


def test_finished_run_reruns_and_rewrites_every_output(straight, tmp_path, monkeypatch):
    data, reference = straight
    shutil.copytree(reference, tmp_path / "model")
    first = {name: (reference / name).read_bytes() for name in OUTPUTS}
    monkeypatch.setattr(Trainer, "train_epoch", lambda *a, **k: pytest.fail("trained"))
    for name in OUTPUTS:   # what Snakemake does before it reruns the job
        (tmp_path / "model" / name).unlink()
    meta = train(data, TrainConfig(**FAST), tmp_path / "model", progress=False)
    again = {name: (tmp_path / "model" / name).read_bytes() for name in OUTPUTS}
    assert again["model.pt"] == first["model.pt"]
    assert again["metrics.csv"] == first["metrics.csv"]
    assert again["curve.png"][:4] == b"\x89PNG"
    saved = torch.load(reference / "model.pt", weights_only=True)
    assert meta == {k: v for k, v in saved.items() if k != "state_dict"}
    # everything still present: a rerun succeeds as well and changes nothing that matters
    train(data, TrainConfig(**FAST), tmp_path / "model", progress=False)
    assert (tmp_path / "model" / "model.pt").read_bytes() == first["model.pt"]
    assert (tmp_path / "model" / "metrics.csv").read_bytes() == first["metrics.csv"]


def test_random_states_survive_a_checkpoint(tmp_path):
    torch.manual_seed(5)
    np.random.seed(6)
    random.seed(7)
    torch.save({"rng": rng_state(torch.device("cpu"))}, tmp_path / "c.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(10), np.random.rand(10), random.random()   # move every state on
    set_rng_state(torch.load(tmp_path / "c.pt", weights_only=True)["rng"], torch.device("cpu"))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2]


def test_changed_settings_do_not_resume_a_stale_checkpoint(tmp_path, monkeypatch):
    data = disks_data()
    kill_after(monkeypatch, 1)
    with pytest.raises(Killed):
        train(data, TrainConfig(**FAST), tmp_path, progress=False)
    monkeypatch.undo()
    meta = train(data, TrainConfig(**{**FAST, "lr": 1e-3, "epochs": 2}), tmp_path, progress=False)
    assert [h["epoch"] for h in meta["history"]] == [1, 2]


def test_damaged_checkpoint_starts_afresh(straight, tmp_path):
    data, reference = straight
    (tmp_path / "checkpoint.pt").write_bytes((reference / "checkpoint.pt").read_bytes()[:1000])
    train(data, TrainConfig(**FAST), tmp_path, progress=False)
    assert_same_model(reference, tmp_path)


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


# --------------------------------------------------------------------------------------------
# through the command line: real stores, a real kill, bad model files, refused pairs and folders
# --------------------------------------------------------------------------------------------

#: ``etemseg train`` options giving FAST.
TRAIN_OPTIONS = ["--model", "shallow-wide", "--epochs", "3", "--batch-size", "4", "--lr", "3e-3",
                 "--crop-px", "32", "--samples-per-epoch", "16", "--device", "cpu", "--seed", "1"]


def label_store(frames: MovieStore, path: Path, labels: np.ndarray, **attrs) -> Path:
    """A label store aligned with ``frames`` holding ``labels`` (stage ``pseudolabel`` unless
    ``attrs`` says otherwise)."""
    store = frames.like(path, labels.dtype, attrs={"stage": "pseudolabel", **attrs})
    store.array[:] = labels
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """Movie stores of :func:`disks_movie` (8 frames of 64x80) with pseudo-labels, and a few
    wrong partners: a smaller movie's labels, labels with a value 2, a probability store."""
    root = tmp_path_factory.mktemp("stores")
    paths = {}
    for name, shape in (("frames", (64, 80)), ("small", (48, 80))):
        images, labels = disks_movie(8, *shape)
        folder = root / f"dump-{name}"
        folder.mkdir()
        for i, frame in enumerate(images):
            np.save(folder / f"f_{i}.npy", frame)
        paths[name] = root / f"{name}.zarr"
        ingest(folder, paths[name], chunk_frames=4, progress=False)
        paths[f"{name}-pseudo"] = label_store(MovieStore.open(paths[name]),
                                              root / f"{name}-pseudo.zarr", labels)
    frames = MovieStore.open(paths["frames"])
    labels = MovieStore.open(paths["frames-pseudo"]).array[:]
    paths["twos"] = label_store(frames, root / "twos.zarr", labels * 2)
    paths["prob"] = label_store(frames, root / "prob.zarr", labels * 255,
                                stage="infer-probability")
    return paths


def cli_error(capsys, *argv) -> str:
    """Run ``etemseg ARGV`` in this process; it must fail with exit 2 and one line on stderr,
    which is returned."""
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_cli_killed_training_resumes_to_the_uninterrupted_result(stores, tmp_path):
    pair = ["--pair", stores["frames"], stores["frames-pseudo"]]
    killed = subprocess.run(
        [sys.executable, "-m", "etemseg.cli", "--quiet", "train", *map(str, pair), "--out",
         str(tmp_path / "killed"), "--threads", str(torch.get_num_threads()), *TRAIN_OPTIONS],
        env={**os.environ, FAULT_ENV: "train:0:1"}, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "killed").iterdir()) == ["checkpoint.pt",
                                                                     "metrics.csv"]
    for out in ("killed", "straight"):
        assert main(["--quiet", "train", *map(str, pair), "--out", str(tmp_path / out),
                     *TRAIN_OPTIONS]) == 0
    assert_same_model(tmp_path / "straight", tmp_path / "killed")


@pytest.fixture(scope="module")
def model_file(stores, tmp_path_factory) -> Path:
    """A real (tiny, one-epoch) model file."""
    folder = tmp_path_factory.mktemp("model")
    assert main(["--quiet", "train", "--pair", str(stores["frames"]),
                 str(stores["frames-pseudo"]), "--out", str(folder),
                 *TRAIN_OPTIONS, "--epochs", "1"]) == 0
    return folder / "model.pt"


def assert_refused_model(capsys, stores, tmp_path, bad: Path, problem: str = "") -> str:
    """``etemseg infer`` refuses the model file ``bad`` in one line naming it; writes nothing."""
    line = cli_error(capsys, "infer", stores["frames"], bad, tmp_path / "out", "--init")
    assert line.startswith(f"etemseg infer: error: {bad}: "), line
    assert problem in line, line
    assert not (tmp_path / "out").exists()
    return line


@pytest.mark.parametrize("twentieth", range(20))
def test_truncated_model_file_is_one_line_error(model_file, stores, tmp_path, capsys, twentieth):
    data = model_file.read_bytes()
    bad = tmp_path / "cut.pt"
    bad.write_bytes(data[:len(data) * twentieth // 20])
    assert_refused_model(capsys, stores, tmp_path, bad)


def _edited(model_file: Path, path: Path, edit) -> Path:
    blob = torch.load(model_file, weights_only=True)
    edit(blob)
    torch.save(blob, path)
    return path


def _poison(value: float):
    def edit(blob):
        key = next(iter(blob["state_dict"]))
        blob["state_dict"][key].view(-1)[0] = value
    return edit


BAD_MODELS = {
    "empty": (lambda p, m: p.write_bytes(b""), "empty model file"),
    "text": (lambda p, m: p.write_text("not a model\n"), "not a model file"),
    "png": (lambda p, m: p.write_bytes((m.parent / "curve.png").read_bytes()), "model file"),
    "npy": (lambda p, m: np.save(p.with_suffix(".npy"), np.zeros(3)) or
            p.with_suffix(".npy").rename(p), "model file"),
    "tensor": (lambda p, m: torch.save(torch.zeros(3), p), "not an etemseg model file"),
    "no format": (lambda p, m: _edited(m, p, lambda b: b.pop("format")), "no 'format"),
    **{f"no {key}": (lambda p, m, key=key: _edited(m, p, lambda b: b.pop(key)), f"no {key}")
       for key in ("state_dict", "arch", "normalisation", "name")},
    "bad arch": (lambda p, m: _edited(m, p, lambda b: b.update(arch={"colour": 1})),
                 "invalid architecture"),
    "other arch": (lambda p, m: _edited(m, p, lambda b: b.update(
        arch=parse_arch("unet3").to_dict(), name="unet3")), "do not fit"),
    "wrong name": (lambda p, m: _edited(m, p, lambda b: b.update(name="unet3")),
                   "does not match"),
    "missing weight": (lambda p, m: _edited(m, p, lambda b: b["state_dict"].popitem()),
                       "do not fit"),
    "wrong shape": (lambda p, m: _edited(m, p, lambda b: b["state_dict"].update(
        {k: torch.zeros(3) for k in list(b["state_dict"])[:1]})), "do not fit"),
    "not a mapping": (lambda p, m: _edited(m, p, lambda b: b.update(state_dict=[1, 2])),
                      "not a mapping"),
    "normalisation": (lambda p, m: _edited(m, p, lambda b: b.update(
        normalisation={"method": "minmax"})), "unknown input normalisation"),
    "nan": (lambda p, m: _edited(m, p, _poison(float("nan"))), "non-finite weights"),
    "inf": (lambda p, m: _edited(m, p, _poison(float("-inf"))), "non-finite weights"),
}


@pytest.mark.parametrize("case", BAD_MODELS)
def test_bad_model_file_is_one_line_error(model_file, stores, tmp_path, capsys, case):
    make, problem = BAD_MODELS[case]
    bad = tmp_path / "model.pt"
    make(bad, model_file)
    assert_refused_model(capsys, stores, tmp_path, bad, problem)
    with pytest.raises(InputFileError, match=problem):
        load_model(bad)


@pytest.mark.parametrize("frames, pseudo, problem", [
    ("frames", "frames", "both FRAMES and PSEUDO"),
    ("frames", "prob", "not a label store"),
    ("frames-pseudo", "frames", "--pair FRAMES"),
    ("frames", "small-pseudo", "differs from"),
    ("frames", "twos", "values up to 2"),
])
def test_train_refuses_wrong_pairs(stores, tmp_path, capsys, frames, pseudo, problem):
    line = cli_error(capsys, "--quiet", "train", "--pair", stores[frames], stores[pseudo],
                     "--out", tmp_path / "model", *TRAIN_OPTIONS)
    assert line.startswith("etemseg train: error: ") and problem in line, line
    assert str(stores[pseudo]) in line or str(stores[frames]) in line, line
    assert not (tmp_path / "model").exists()


def test_train_copy_of_frames_as_labels_is_refused(stores, tmp_path, capsys):
    shutil.copytree(stores["frames"], tmp_path / "copy.zarr")
    line = cli_error(capsys, "--quiet", "train", "--pair", stores["frames"],
                     tmp_path / "copy.zarr", "--out", tmp_path / "model", *TRAIN_OPTIONS)
    assert "copy.zarr: --pair PSEUDO: not a label store" in line, line


@pytest.mark.parametrize("where", ["input", "inside input", "unrelated folder", "file"])
def test_train_refuses_output_paths_that_are_not_model_folders(stores, tmp_path, capsys, where):
    shutil.copytree(stores["frames"], tmp_path / "frames.zarr")
    shutil.copytree(stores["frames-pseudo"], tmp_path / "pseudo.zarr")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("my notes\n")
    (tmp_path / "notes" / "model.pt").write_bytes(b"not mine")
    (tmp_path / "file.txt").write_text("a file\n")
    out = {"input": tmp_path / "frames.zarr", "inside input": tmp_path / "pseudo.zarr" / "m",
           "unrelated folder": tmp_path / "notes", "file": tmp_path / "file.txt"}[where]
    before = snapshot(tmp_path)
    line = cli_error(capsys, "--quiet", "train", "--pair", tmp_path / "frames.zarr",
                     tmp_path / "pseudo.zarr", "--out", out, *TRAIN_OPTIONS)
    assert line.startswith(f"etemseg train: error: {out}: "), line
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "pseudo.zarr" / "m").exists()


def test_train_function_refuses_a_folder_of_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("my notes\n")
    with pytest.raises(OutputPathError, match="model folder"):
        train(disks_data(), TrainConfig(**FAST), tmp_path, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_trainer_hooks_and_in_memory_training(straight):
    """A Trainer subclass sees every epoch through its hooks; training in memory (no
    checkpoint) gives the weights and metadata of the model folder's run."""
    import io

    data, reference = straight

    class Recording(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.seen, self.ended = [], 0

        def on_epoch_end(self, row):
            self.seen.append((row["epoch"], self.run.epochs_done))

        def on_train_end(self):
            self.ended += 1

    trainer = Recording(data, TrainConfig(**FAST))
    run = trainer.fit()
    assert trainer.seen == [(1, 1), (2, 2), (3, 3)] and trainer.ended == 1
    got = torch.load(io.BytesIO(run.model_file.numpy().tobytes()), weights_only=True)
    ref = torch.load(reference / "model.pt", weights_only=True)
    for key, value in ref["state_dict"].items():
        assert torch.equal(value, got["state_dict"][key]), key
    assert untimed(got.pop("history")) == untimed(ref.pop("history"))
    for meta in (got, ref):
        for key in TIMINGS | {"state_dict"}:
            meta.pop(key, None)
    assert got == ref and run.final["name"] == "shallow-wide"


# ------------------------------------------------------------------ crop size in nm

def test_crop_px_for_arithmetic_and_validation():
    assert crop_px_for(64, [0.5]) == 128
    assert crop_px_for(64, [0.5], 8) == 128
    assert crop_px_for(61, [0.5], 8) == 128                 # 122 px, rounded up to 8
    assert crop_px_for(10, [0.3]) == 34                     # 33.3 px, rounded up: covers 10 nm
    assert crop_px_for(3.0, [0.1]) == 30                    # 30.000000000000004 is 30
    assert crop_px_for(64, [1.0, 0.5, 0.505]) == 128        # sized for the finest movie
    assert crop_px_for(4, [1.0]) == 16 and crop_px_for(4, [1.0], 32) == 32   # at least 16 px
    TrainConfig(crop_nm=0.5).validate()
    for bad in (0, -1.0, float("nan"), float("inf"), "64"):
        with pytest.raises(ConfigError, match="train.crop_nm"):
            TrainConfig(crop_nm=bad).validate()


def calibrated(data: TrainingData, *pixel_sizes) -> TrainingData:
    return dataclasses.replace(data, pixel_sizes_nm=list(pixel_sizes))


def test_resolve_crop(caplog):
    data = disks_data()
    cfg = TrainConfig(model="unet4-norm", crop_nm=30.0)
    got = resolve_crop(cfg, calibrated(data, 0.5))          # 60 px -> a multiple of 8
    assert (got.crop_px, got.crop_nm) == (64, 30.0)
    assert resolve_crop(got, calibrated(data, 0.5)) == got
    assert resolve_crop(cfg, calibrated(data, 0.5, 0.25)).crop_px == 120
    assert resolve_crop(TrainConfig(crop_px=48), calibrated(data, 0.5)).crop_px == 48
    for sizes, words in (((0.5, None), "1 of 2 training movies"), ((), "training data has")):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert resolve_crop(cfg, calibrated(data, *sizes)) == cfg     # crop_px: 256
        (warning,) = [r.getMessage() for r in caplog.records]
        assert words in warning and "crop_px = 256 px" in warning


#: FAST with its crop as 16 nm (32 px at 0.5 nm/px; crop_px would be 256).
CROP_NM = {**FAST, "crop_px": 256, "crop_nm": 16.0}


@pytest.fixture(scope="module")
def straight_nm(tmp_path_factory):
    """An uninterrupted run of CROP_NM on a movie of 0.5 nm/px: (data, its model folder)."""
    data = calibrated(disks_data(), 0.5)
    folder = tmp_path_factory.mktemp("straight-nm") / "model"
    train(data, TrainConfig(**CROP_NM), folder, progress=False)
    return data, folder


def test_crop_nm_resolves_is_recorded_and_trains_as_its_px(straight, straight_nm):
    _, reference = straight
    _, folder = straight_nm
    meta = torch.load(folder / "model.pt", weights_only=True)
    assert (meta["train"]["crop_px"], meta["train"]["crop_nm"]) == (32, 16.0)
    assert meta["data"]["pixel_sizes_nm"] == [0.5]
    ckpt = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert (ckpt["fingerprint"]["train"]["crop_px"], ckpt["fingerprint"]["train"]["crop_nm"]) \
        == (32, 16.0)
    ref = torch.load(reference / "model.pt", weights_only=True)     # FAST: crop_px 32
    for key, value in ref["state_dict"].items():
        assert torch.equal(value, meta["state_dict"][key]), key
    assert untimed(meta["history"]) == untimed(ref["history"])


def test_resume_with_crop_nm(straight_nm, tmp_path, monkeypatch, caplog):
    data, reference = straight_nm
    cfg = TrainConfig(**CROP_NM)
    kill_after(monkeypatch, 1)
    with pytest.raises(Killed):
        train(data, cfg, tmp_path, progress=False)
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="etemseg.nn.training"):
        meta = train(data, cfg, tmp_path, progress=False)
    assert any("resuming" in r.getMessage() for r in caplog.records)
    assert [h["epoch"] for h in meta["history"]] == [1, 2, 3]
    assert_same_model(reference, tmp_path)
    # another pixel size resolves another crop: the checkpoint is not resumed
    caplog.clear()
    kill_after(monkeypatch, 1)
    with caplog.at_level(logging.INFO, logger="etemseg.nn.training"), pytest.raises(Killed):
        train(calibrated(data, 0.25), cfg, tmp_path, progress=False)
    assert any("starting afresh" in r.getMessage() for r in caplog.records)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["epochs_done"] == 1 and ckpt["fingerprint"]["train"]["crop_px"] == 64


def test_cli_crop_nm_with_the_movies_pixel_size(stores, tmp_path, caplog):
    images, labels = disks_movie(8, 64, 80)
    dump = tmp_path / "dump"
    dump.mkdir()
    for i, frame in enumerate(images):
        np.save(dump / f"f_{i}.npy", frame)
    frames = ingest(dump, tmp_path / "cal.zarr", chunk_frames=4, pixel_size_nm=0.5,
                    progress=False)
    pseudo = label_store(frames, tmp_path / "cal-pseudo.zarr", labels)
    options = [*TRAIN_OPTIONS, "--epochs", "1", "--crop-nm", "20"]
    assert main(["--quiet", "train", "--pair", str(frames.path), str(pseudo), "--out",
                 str(tmp_path / "m"), *options]) == 0
    meta = torch.load(tmp_path / "m/model.pt", weights_only=True)
    assert (meta["train"]["crop_px"], meta["train"]["crop_nm"]) == (40, 20.0)
    assert meta["data"]["pixel_sizes_nm"] == [0.5]
    caplog.clear()     # one uncalibrated movie: crop_px (32), with a warning
    assert main(["--quiet", "train", "--pair", str(frames.path), str(pseudo), "--pair",
                 str(stores["frames"]), str(stores["frames-pseudo"]), "--out",
                 str(tmp_path / "mixed"), *options]) == 0
    meta = torch.load(tmp_path / "mixed/model.pt", weights_only=True)
    assert (meta["train"]["crop_px"], meta["train"]["crop_nm"]) == (32, 20.0)
    assert meta["data"]["pixel_sizes_nm"] == [0.5, None]
    assert any("1 of 2 training movies" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ noisy labels

@pytest.mark.parametrize("field, bad", [
    ("loss", "focal"), ("loss", None), ("ignore_margin_px", -1), ("ignore_margin_px", 1.5),
    ("self_training_rounds", -1), ("self_training_rounds", 0.5), ("self_training_rounds", True),
    ("relabel", "intersection")])
def test_noisy_label_fields_are_validated(field, bad):
    with pytest.raises(ConfigError, match=f"train.{field}: invalid value"):
        TrainConfig(**{field: bad}).validate()
    TrainConfig(loss="ce_dice", ignore_margin_px=2, self_training_rounds=2,
                relabel="model").validate()
    assert TrainConfig(epochs=4, self_training_rounds=2).total_epochs == 12


def test_uncertain_band_is_the_ring_around_the_boundary():
    lab = np.zeros((9, 9), np.uint8)
    lab[3:6, 3:6] = 1                                  # a 3x3 particle
    band = uncertain_band(lab, 1)
    inside = np.zeros_like(band)
    inside[3:6, 3:6] = True
    inside[4, 4] = False                               # centre: 2 px from the background
    outside = np.zeros_like(band)
    outside[2, 3:6] = outside[6, 3:6] = outside[3:6, 2] = outside[3:6, 6] = True  # 4-neighbours
    assert np.array_equal(band, inside | outside)      # diagonal corners are sqrt(2) > 1 away
    assert uncertain_band(lab, 2)[4, 4] and not uncertain_band(lab, 2)[0, 0]
    assert not uncertain_band(lab, 0).any()
    assert not uncertain_band(np.zeros((2, 9, 9), np.uint8), 3).any()   # no boundary, no band
    stack = uncertain_band(np.stack([lab, np.zeros_like(lab)]), 1)
    assert np.array_equal(stack[0], band) and not stack[1].any()


@pytest.mark.parametrize("loss", ["ce", "ce_dice", "bootstrap"])
def test_band_pixels_are_left_out_of_the_loss(loss):
    lab = np.zeros((1, 16, 16), np.uint8)
    lab[0, 5:11, 5:11] = 1
    cfg = TrainConfig(loss=loss, ignore_margin_px=1)
    y = torch.from_numpy(loss_targets(lab, cfg).astype(np.int64))
    band = torch.from_numpy(uncertain_band(lab, 1))
    assert (y[band] == IGNORE).all() and (y[~band] == torch.from_numpy(lab)[~band]).all()
    logits = torch.randn(1, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    logits.requires_grad_(True)
    value = segmentation_loss(logits, y, cfg)
    value.backward()
    grad = logits.grad.abs().sum(1)[0]
    assert (grad[band[0]] == 0).all() and (grad[~band[0]] > 0).all()
    changed = logits.detach().clone()
    changed[:, :, band[0]] = 50.0 * torch.randn(2, int(band.sum()))   # anything in the band
    assert torch.isclose(segmentation_loss(changed, y, cfg), value.detach())
    # without the band, the same logits give another loss
    plain = segmentation_loss(logits.detach(), torch.from_numpy(lab.astype(np.int64)),
                              TrainConfig(loss=loss))
    assert not torch.isclose(plain, value.detach())


def missed_disks_data(seed=0) -> tuple[TrainingData, np.ndarray]:
    """Disks training data whose labels miss every particle of one frame in two (the
    pseudo-labels' typical error), and the exact labels."""
    data = disks_data(n=8, seed=seed)
    exact = data.labels.copy()
    noisy = exact.copy()
    noisy[::2] = 0
    return dataclasses.replace(data, labels=noisy), exact


def test_self_training_round_relabels_with_the_model(tmp_path):
    data, exact = missed_disks_data()
    seen = {}

    class Watching(Trainer):
        def start_round(self, r):
            seen["state"] = {k: v.clone() for k, v in self.run.best["state"].items()}
            seen["epochs_done"] = self.run.epochs_done
            super().start_round(r)

    cfg = TrainConfig(**{**FAST, "epochs": 4, "lr": 1e-2, "self_training_rounds": 1})
    run = Watching(data, cfg).fit()
    assert seen["epochs_done"] == 4 and [h["round"] for h in run.history] == [0] * 4 + [1] * 4
    model = build_model("shallow-wide")
    model.load_state_dict(seen["state"])
    expected = predict_masks(model, data.images, torch.device("cpu")) | data.labels
    assert np.array_equal(run.labels, expected)          # round 2's labels: the model's masks
    assert not np.array_equal(run.labels, data.labels)   # ... which differ from the given ones
    recovered = (run.labels[::2] == 1) & (exact[::2] == 1)
    assert recovered.sum() > 0.5 * exact[::2].sum()      # most missed particles come back
    assert run.final["self_training"]["label_fractions"][1] > data.labels.mean()
    assert run.final["saved_epoch"] > 4                  # the model file is the last round's


def test_self_training_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    data, _ = missed_disks_data()
    cfg = TrainConfig(**{**FAST, "epochs": 2, "self_training_rounds": 1, "loss": "ce_dice",
                         "ignore_margin_px": 1})
    train(data, cfg, tmp_path / "straight", progress=False)
    for killed_after in (2, 3):       # at the round boundary and inside the second round
        folder = tmp_path / f"killed{killed_after}"
        kill_after(monkeypatch, killed_after)
        with pytest.raises(Killed):
            train(data, cfg, folder, progress=False)
        monkeypatch.undo()
        train(data, cfg, folder, progress=False)
        assert_same_model(tmp_path / "straight", folder)


@pytest.mark.slow   # ~50 s of training on 2 cores
def test_model_trained_on_realistic_pseudo_labels_segments_the_truth():
    """End to end on a small realistic movie (256², dose 20): pseudo-labels -> a small UNet ->
    masks as ``etemseg infer`` makes them, scored against the simulator's truth. Measured with
    these settings on seeds 12 and 13: pixel F1 0.86 and 0.80 (pseudo-labels 0.90); the bound is
    the lower one minus 0.05. A training that learns nothing scores about 0."""
    from etemseg.analysis.scoring import score_frames
    from etemseg.stages.pseudolabel import PRESETS, pseudolabel_stack, resolve_for_movie
    from etemseg.synth import SynthParams, simulate

    p = SynthParams(frames=8, height=256, width=256, pixel_size_nm=0.18, imaging="realistic",
                    dose=20, seed=11)
    raw, truth = map(np.stack, zip(*simulate(p)))
    pseudo = (pseudolabel_stack(raw, resolve_for_movie(PRESETS["default"], 0.18, None)[0])
              > 0).astype(np.uint8)
    cfg = TrainConfig(model="unet3-norm", epochs=8, batch_size=8, lr=1e-2, crop_px=64,
                      samples_per_epoch=64, split="time_blocks", block_frames=4,
                      max_val_frames=2, device="cpu", seed=0)
    images = normalise_frames(raw)
    run = Trainer(TrainingData(images.astype(np.float16), pseudo, *split_frames(8, cfg)),
                  cfg).fit()
    model = build_model("unet3-norm")
    model.load_state_dict(run.best["state"])
    masks = predict_masks(model, images, torch.device("cpu"))
    scores = score_frames(zip(masks > 0, truth), pixel_size_nm=0.18)
    assert scores["pixel"]["f1"] >= 0.75, scores["pixel"]


def test_crop_origins_reach_the_frame_edges():
    """Crop origins are drawn a quarter crop past each frame edge and clamped, so the outermost
    rows are in a good share of the crops (a uniform origin puts row 0 in 1 crop of 129 for a
    384 px crop of a 512 px frame, as at work factor 3), and every crop lies inside the frame."""
    from etemseg.nn.training import EDGE_REACH, _crop_origin

    gen = torch.Generator().manual_seed(0)
    n, side = 512, 384
    o = np.array([_crop_origin(n, side, gen) for _ in range(4000)])
    assert o.min() == 0 and o.max() == n - side
    reach = int(side * EDGE_REACH)
    expect = (reach + 1) / (n - side + 1 + 2 * reach)          # 97 / 321 = 0.30 at each edge
    for edge in (0, n - side):
        assert abs(np.mean(o == edge) - expect) < 0.03
    inner = o[(o > 0) & (o < n - side)]                        # uniform in between
    assert abs(inner.mean() - (n - side) / 2) < 4
    # a frame no larger than the crop: origin 0 always
    assert {_crop_origin(100, 128, gen) for _ in range(20)} == {0}
    assert {_crop_origin(128, 128, gen) for _ in range(20)} == {0}
