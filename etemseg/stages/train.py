"""Stage ``etemseg train``: train a segmentation CNN into a model folder.

The training itself (data, split, augmentation, the loop, checkpoints, resuming) is
:mod:`etemseg.nn.training`; this stage drives it for one model folder (``--out``):
``checkpoint.pt`` after every epoch, ``metrics.csv`` rewritten after every epoch, and at the end
``model.pt`` (format: :mod:`etemseg.nn.checkpoint`), ``metrics.csv`` and ``curve.png``, each
written atomically.

A rerun with the same training config and data resumes from the checkpoint and gives the same
weights and metrics as an uninterrupted run. A rerun after the last epoch trains nothing and
rewrites every output from the checkpoint, so ``model.pt`` and ``metrics.csv`` come out byte for
byte as the first time. The test hook ``ETEMSEG_FAULT=train:0:E`` (see
:func:`etemseg.io.store.fault_point`) kills the process right after the checkpoint of epoch ``E``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import torch

from etemseg.io.atomic import atomic_path, guard_output, holds_only
from etemseg.io.store import fault_point
from etemseg.nn.checkpoint import save_model
from etemseg.nn.training import TrainConfig, Trainer, TrainingData, TrainingRun

#: The files of a model folder (``etemseg train --out``); a folder holding anything else is
#: refused (see :func:`guard_model_folder`).
MODEL_FOLDER_FILES = ("model.pt", "metrics.csv", "curve.png", "checkpoint.pt")


def guard_model_folder(out_dir: str | Path, inputs: Sequence[str | Path] = ()) -> Path:
    """The output-path policy for a model folder; call it before writing anything there.

    Refuses (:class:`~etemseg.errors.OutputPathError`) a folder that is, contains or lies inside
    one of ``inputs`` (the training stores) and an existing folder or file that is not a model
    folder (anything but :data:`MODEL_FOLDER_FILES` and hidden temporary files in it).
    """
    return guard_output(out_dir, inputs=list(inputs), own=holds_only(*MODEL_FOLDER_FILES),
                        what="model folder")


def _write_metrics_csv(history: list[dict], path: Path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    """Training/validation loss and validation F1 per epoch as a PNG."""
    from etemseg.plotting import plt, save_figure

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=110)
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("cross-entropy loss")
    ax1.legend()
    ax2.plot(epochs, [h["val_f1"] for h in history], "s-", color="C2")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation pixel F1 (vs pseudo-labels)")
    ax2.set_ylim(0, 1)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def write_outputs(run: TrainingRun, out_dir: Path) -> None:
    """Write ``metrics.csv``, ``curve.png`` and ``model.pt`` (each atomically) of a finished run.

    Everything comes from the finished run's state, so a rerun from a complete checkpoint
    writes the same files again (``model.pt`` and ``metrics.csv`` byte for byte).
    """
    meta = run.final
    _write_metrics_csv(meta["history"], out_dir / "metrics.csv")
    plot_curves(meta["history"], out_dir / "curve.png",
                f"{meta['name']} ({torch.device(meta['device']).type})")
    save_model(run.model_file, out_dir / "model.pt")


class ModelFolderTrainer(Trainer):
    """The :class:`~etemseg.nn.training.Trainer` of ``etemseg train``: checkpoint in the model
    folder, ``metrics.csv`` and the fault hook after every epoch, every output at the end."""

    def __init__(self, data: TrainingData, cfg: TrainConfig, out_dir: Path, *,
                 progress: bool = True) -> None:
        super().__init__(data, cfg, checkpoint=out_dir / "checkpoint.pt", progress=progress)
        self.out_dir = out_dir

    def on_epoch_end(self, row: dict) -> None:
        _write_metrics_csv(self.run.history, self.out_dir / "metrics.csv")
        fault_point("train", 0, self.run.epochs_done)   # test hook: ETEMSEG_FAULT=train:0:EPOCH

    def on_train_end(self) -> None:
        write_outputs(self.run, self.out_dir)


def train(data: TrainingData, cfg: TrainConfig, out_dir: str | Path, *,
          progress: bool = True) -> dict:
    """Train ``cfg.model`` on ``data``; write ``model.pt``, ``metrics.csv``, ``curve.png``.

    Resumes from ``out_dir/checkpoint.pt`` when it was written with the same training config and
    data (see :func:`etemseg.nn.training.open_run`); otherwise starts afresh. When the checkpoint
    already covers every epoch nothing is trained and the outputs are rewritten from it.
    ``out_dir`` must be new or a model folder (:func:`guard_model_folder`).

    Returns the model file's metadata (everything but the weights); after a rerun from a complete
    checkpoint, that of the run that finished it.
    """
    cfg.validate()
    out_dir = guard_model_folder(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return ModelFolderTrainer(data, cfg, out_dir, progress=progress).fit().final
