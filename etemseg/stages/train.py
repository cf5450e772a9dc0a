"""Training a segmentation CNN on pseudo-labels (the paper: Adam, lr 1e-4, cross-entropy, 25 epochs).

Data: frames from one or more movie stores with their pseudo-label stores, split into training and
validation frames (random 70/30 as in the paper, or by time blocks, since consecutive frames are
near-duplicates and a random split flatters validation). Training uses random crops with the
paper's augmentation (translation with wrap-around, 90-degree rotations, flips, crop-and-zoom);
validation runs on full frames.

Robustness: a checkpoint (weights, optimiser, per-epoch metrics, best weights, random states) is
written atomically after every epoch. A rerun with the same training config and data resumes from
it and gives the same weights and metrics as an uninterrupted run (the crops of every epoch come
from a generator seeded by ``(seed, epoch)``; the global random states are saved and restored). A
rerun after the last epoch trains nothing and rewrites every output from the checkpoint, so
``model.pt`` and ``metrics.csv`` come out byte for byte as the first time. The test hook
``ETEMSEG_FAULT=train:0:E`` (see :func:`etemseg.io.store.fault_point`) kills the process right after
the checkpoint of epoch ``E``.

The model file (``model.pt``) holds plain tensors and JSON-like metadata only, so it loads with
``torch.load(path, weights_only=True)``: state dict, architecture, input normalisation, training
config, per-epoch metrics and package versions.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import logging
import math
import pickle
import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from etemseg import __version__
from etemseg.io.atomic import atomic_path, guard_output, holds_only
from etemseg.errors import ConfigError, InputFileError
from etemseg.nn.models import ArchConfig, build_model, canonical_name, count_parameters, parse_arch
from etemseg.io.store import MovieStore, fault_point

log = logging.getLogger(__name__)

#: How frames are scaled before they enter a model (stored in every model file; inference uses it).
NORMALISATION = {"method": "per_frame_standardise",
                 "description": "(x - mean) / std per frame over finite pixels; non-finite -> 0"}


def _all_finite(x: torch.Tensor) -> bool:
    if not x.is_floating_point():
        return True
    if x.device.type == "cpu":   # numpy's check is several times faster on the CPU
        return bool(np.isfinite(x.numpy()).all())
    return bool(torch.isfinite(x).all())


def normalise_tensor(x: torch.Tensor) -> torch.Tensor:
    """Per-frame standardisation of a (T, H, W) tensor, on whatever device it lives.

    Returns float32 ``(x - mean) / std`` with mean and std of each frame's finite pixels, std 0
    taken as 1, non-finite pixels (and all-non-finite frames) 0. The one implementation of
    :data:`NORMALISATION`: training (via :func:`normalise_frames`) and inference (on the GPU,
    from the raw frames) both call it.
    """
    if x.ndim == 2:
        x = x[None]
    if _all_finite(x):   # integer frames always: one var_mean pass, one fused scale
        x = x.to(torch.float32)
        var, mean = torch.var_mean(x, dim=(1, 2), correction=0)
        std = torch.sqrt(var)
        scale = torch.where(std > 0, 1.0 / std, 1.0)
        return torch.sub(x, mean[:, None, None]).mul_(scale[:, None, None])
    x = x.to(torch.float32)
    finite = torch.isfinite(x)
    n = finite.sum(dim=(1, 2), dtype=torch.float64)
    xz = torch.where(finite, x, 0.0)
    mean = xz.sum(dim=(1, 2), dtype=torch.float64) / n.clamp(min=1)
    d = torch.where(finite, x - mean.to(torch.float32)[:, None, None], 0.0)
    std = torch.sqrt(torch.square(d).sum(dim=(1, 2), dtype=torch.float64) / n.clamp(min=1))
    std = torch.where(std > 0, std, 1.0).to(torch.float32)
    return torch.where(finite, d / std[:, None, None], 0.0)


def normalise_frames(frames: np.ndarray) -> np.ndarray:
    """Per-frame standardisation of (T, H, W) frames to float32 (non-finite pixels become 0).

    Per-frame scaling removes dose and gain differences between movies and frames. Frame by
    frame through :func:`normalise_tensor`, so temporary memory stays a few frames.
    """
    x = np.asarray(frames)
    if x.ndim == 2:
        x = x[None]
    out = np.empty(x.shape, np.float32)
    for i, frame in enumerate(x):
        out[i] = normalise_tensor(torch.from_numpy(np.ascontiguousarray(frame))).numpy()[0]
    return out


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (defaults: the paper's where it states them).

    Attributes
    ----------
    model : str
        Architecture name (see ``etemseg models``).
    epochs : int
        Passes over ``samples_per_epoch`` random crops (paper: 25).
    batch_size : int
        Crops per optimiser step.
    lr : float
        Adam learning rate (paper: 1e-4).
    crop_px : int
        Side of the square training crops, px.
    samples_per_epoch : int
        Random crops drawn per epoch.
    val_fraction : float
        Fraction of frames held out for validation (paper: 0.3).
    split : str
        ``random`` (paper) or ``time_blocks`` (whole blocks of consecutive frames held out).
    block_frames : int
        Block length for ``time_blocks``.
    particle_weight : float or None
        Cross-entropy weight of the particle class relative to background; None = unweighted
        (paper), ``0`` = balanced from the pixel frequencies.
    augment : bool
        Paper's augmentation: translations with wrap-around, rotations, flips, crop-and-zoom.
    zoom : float
        Crop-and-zoom range: crops of ``crop_px * s`` resized to ``crop_px``, s in [1/zoom, zoom].
    amp : bool
        Mixed precision on CUDA (ignored on the CPU).
    seed : int
        Seeds the split, the crops, augmentation and initial weights.
    device : str
        ``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda``.
    max_val_frames : int
        Cap on validation frames scored each epoch.
    keep_best : bool
        Save the weights of the epoch with the best validation F1 (else those of the last epoch).
    """

    model: str = "unet4-norm"
    epochs: int = 25
    batch_size: int = 8
    lr: float = 1e-4
    crop_px: int = 256
    samples_per_epoch: int = 256
    val_fraction: float = 0.3
    split: str = "random"
    block_frames: int = 16
    particle_weight: float | None = None
    augment: bool = True
    zoom: float = 1.25
    amp: bool = True
    seed: int = 0
    device: str = "auto"
    max_val_frames: int = 64
    keep_best: bool = True

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""
        parse_arch(self.model)
        checks = {
            "epochs": self.epochs >= 1, "batch_size": self.batch_size >= 1, "lr": self.lr > 0,
            "crop_px": self.crop_px >= 16, "samples_per_epoch": self.samples_per_epoch >= 1,
            "val_fraction": 0 < self.val_fraction < 1,
            "split": self.split in ("random", "time_blocks"),
            "block_frames": self.block_frames >= 1,
            "particle_weight": self.particle_weight is None or self.particle_weight >= 0,
            "zoom": self.zoom >= 1, "device": self.device in ("auto", "cpu", "cuda"),
            "max_val_frames": self.max_val_frames >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"train.{name}: invalid value {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"train.{unknown[0]}: unknown training option")
        cfg = cls(**data)
        cfg.validate()
        return cfg


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------

@dataclass
class TrainingData:
    """Frames (normalised float32) and 0/1 labels, with the train/validation split."""

    images: np.ndarray            # (N, H, W) normalised, float16 in memory (float32 per crop)
    labels: np.ndarray            # (N, H, W) uint8
    train: np.ndarray             # indices into images
    val: np.ndarray
    sources: list[str] = field(default_factory=list)


def select_frames(n_frames: int, stride: int = 1, max_frames: int | None = None) -> np.ndarray:
    """Every ``stride``-th frame, then at most ``max_frames`` evenly spread over the movie."""
    idx = np.arange(0, n_frames, max(1, stride))
    if max_frames and len(idx) > max_frames:
        idx = idx[np.linspace(0, len(idx) - 1, max_frames).round().astype(int)]
    return idx


def split_frames(n: int, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation indices: random (paper) or whole blocks of consecutive frames."""
    rng = np.random.default_rng([cfg.seed, 7919])
    if n < 2:
        raise ConfigError(f"train: need at least 2 frames to split train/validation, got {n}")
    if cfg.split == "random":
        perm = rng.permutation(n)
        n_val = min(n - 1, max(1, round(n * cfg.val_fraction)))
        return np.sort(perm[n_val:]), np.sort(perm[:n_val])
    blocks = np.arange(n) // cfg.block_frames
    ids = np.unique(blocks)
    if len(ids) < 2:
        raise ConfigError(f"train.block_frames: {cfg.block_frames} leaves one block of {n} "
                          "frames; nothing to hold out")
    n_val = min(len(ids) - 1, max(1, round(len(ids) * cfg.val_fraction)))
    val_blocks = rng.choice(ids, size=n_val, replace=False)
    is_val = np.isin(blocks, val_blocks)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


#: ``stage`` attributes of the stores training accepts as labels (pseudo-labels, or the masks of
#: another model).
LABEL_STAGES = ("pseudolabel", "infer-mask")


def open_pair(frames_path: str | Path, labels_path: str | Path) -> tuple[MovieStore, MovieStore]:
    """Open one training pair (``--pair FRAMES PSEUDO``), refusing pairs that cannot be right.

    Raises :class:`InputFileError` naming the store when both paths are the same store, the frames
    store is a derived (label, probability) store, the labels store is not a label store (its
    ``stage`` is not one of :data:`LABEL_STAGES`, or its values are not uint8) or the two differ
    in shape.
    """
    if Path(frames_path).resolve() == Path(labels_path).resolve():
        raise InputFileError(labels_path, "given as both FRAMES and PSEUDO of --pair; the second "
                             "store must be the movie's pseudo-label store")
    frames, pseudo = MovieStore.open(frames_path), MovieStore.open(labels_path)
    frames_stage = frames.meta.get("stage", "ingest")
    if frames_stage != "ingest":
        raise InputFileError(frames_path, f"--pair FRAMES: a {frames_stage!r} store, not a movie "
                             "store written by `etemseg ingest`")
    labels_stage = pseudo.meta.get("stage", "ingest" if "source" in pseudo.meta else None)
    if labels_stage not in LABEL_STAGES + (None,) or pseudo.array.dtype != np.uint8:
        raise InputFileError(labels_path, f"--pair PSEUDO: not a label store (stage "
                             f"{labels_stage!r}, dtype {pseudo.array.dtype}); give the store "
                             "written by `etemseg pseudolabel`")
    if pseudo.array.shape != frames.array.shape:
        raise InputFileError(labels_path, f"--pair PSEUDO: shape {pseudo.array.shape} differs "
                             f"from {frames_path} {frames.array.shape}")
    return frames, pseudo


def load_training_data(pairs: Sequence[tuple[str | Path, str | Path]], cfg: TrainConfig, *,
                       stride: int = 1, max_frames: int | None = None) -> TrainingData:
    """Read selected frames and pseudo-labels of each (frames.zarr, pseudo.zarr) pair.

    Each pair is checked by :func:`open_pair`; labels other than 0 and 1 are refused as well.
    """
    images, labels, sources = [], [], []
    shape = None
    for frames_path, labels_path in pairs:
        frames, pseudo = open_pair(frames_path, labels_path)
        if shape is not None and frames.frame_shape != shape:
            raise InputFileError(frames_path, f"frame shape {frames.frame_shape} differs from "
                                 f"the other training movies' {shape}; crop or resize first")
        shape = frames.frame_shape
        idx = select_frames(frames.n_frames, stride, max_frames)
        for b in range(0, len(idx), 64):  # float16 halves the memory of the training set
            images.append(normalise_frames(
                frames.take(idx[b:b + 64])).astype(np.float16))
        labels.append(pseudo.take(idx))
        if labels[-1].max(initial=0) > 1:
            raise InputFileError(labels_path, f"--pair PSEUDO: values up to {labels[-1].max()}; "
                                 "pseudo-labels are 0 (background) and 1 (particle)")
        sources += [f"{frames_path}:{i}" for i in idx]
    images_a, labels_a = np.concatenate(images), np.concatenate(labels)
    train, val = split_frames(len(images_a), cfg)
    return TrainingData(images_a, labels_a, train, val, sources)


def sample_batch(data: TrainingData, cfg: TrainConfig, gen: torch.Generator, *,
                 tensors: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of augmented random crops, (B, 1, c, c) float32 and (B, c, c) int64.

    ``tensors``: ``(images, labels)`` of ``data`` as tensors on the training device (see
    :func:`device_tensors`); crops and augmentation then run there. The random draws come from
    ``gen`` on the CPU either way, so a seed gives the same batches on every device.
    """
    images, labels = tensors if tensors is not None else (torch.from_numpy(data.images),
                                                          torch.from_numpy(data.labels))
    c = cfg.crop_px
    _, H, W = data.images.shape
    xs, ys = [], []
    for _ in range(cfg.batch_size):
        i = int(data.train[torch.randint(len(data.train), (1,), generator=gen)])
        side = c
        if cfg.augment and cfg.zoom > 1:
            s = math.exp((torch.rand(1, generator=gen).item() * 2 - 1) * math.log(cfg.zoom))
            side = int(round(c * s))
        side = max(8, min(side, H, W))
        y0 = int(torch.randint(H - side + 1, (1,), generator=gen))
        x0 = int(torch.randint(W - side + 1, (1,), generator=gen))
        x = images[i, y0:y0 + side, x0:x0 + side].to(torch.float32)[None, None]
        y = labels[i, y0:y0 + side, x0:x0 + side].clone()[None, None]
        if side != c:
            x = F.interpolate(x, size=(c, c), mode="bilinear", align_corners=False)
            y = F.interpolate(y.float(), size=(c, c), mode="nearest").to(torch.uint8)
        if x.shape[-1] != c or x.shape[-2] != c:   # frame smaller than the crop: pad
            ph, pw = c - x.shape[-2], c - x.shape[-1]
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(x.shape[-2:]) > max(ph, pw)
                      else "replicate")
            y = F.pad(y, (0, pw, 0, ph))
        if cfg.augment:
            shift = torch.randint(c, (2,), generator=gen).tolist()
            x, y = torch.roll(x, shift, (-2, -1)), torch.roll(y, shift, (-2, -1))
            k = int(torch.randint(4, (1,), generator=gen))
            x, y = torch.rot90(x, k, (-2, -1)), torch.rot90(y, k, (-2, -1))
            if torch.rand(1, generator=gen).item() < 0.5:
                x, y = x.flip(-1), y.flip(-1)
        xs.append(x[0])
        ys.append(y[0, 0])
    return torch.stack(xs), torch.stack(ys).long()


# --------------------------------------------------------------------------------------------
# training loop
# --------------------------------------------------------------------------------------------

def device_tensors(data: TrainingData, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The training set as tensors on ``device`` (a view on the CPU; one upload to a GPU, so
    cropping and augmentation run there instead of on the host). Falls back to host tensors
    when the GPU has no room for it."""
    images, labels = torch.from_numpy(data.images), torch.from_numpy(data.labels)
    if device.type == "cpu":
        return images, labels
    try:
        return images.to(device), labels.to(device)
    except torch.OutOfMemoryError:
        log.warning("training set (%.1f GB) does not fit on %s; cropping on the host",
                    (data.images.nbytes + data.labels.nbytes) / 1e9, device)
        torch.cuda.empty_cache()
        return images, labels


def pick_device(name: str = "auto") -> torch.device:
    """CUDA when present (or asked), else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but no CUDA device is available")
    return torch.device(name)


def class_weights(data: TrainingData, cfg: TrainConfig) -> torch.Tensor | None:
    """Cross-entropy class weights: None (paper), or [1, w] with w given or balanced (w=0)."""
    if cfg.particle_weight is None:
        return None
    w = cfg.particle_weight
    if w == 0:
        frac = float(data.labels[data.train].mean())
        w = (1 - frac) / max(frac, 1e-6)
    return torch.tensor([1.0, w], dtype=torch.float32)


@torch.no_grad()
def validation_scores(model, data: TrainingData, cfg: TrainConfig, device, weight) -> dict:
    """Loss and pixel precision/recall/F1 (particle probability > 0.5) on full validation frames."""
    model.eval()
    val = data.val[:cfg.max_val_frames]
    tp = fp = fn = 0
    loss = 0.0
    for i in val:
        x = torch.from_numpy(data.images[i].astype(np.float32))[None, None].to(device)
        y = torch.from_numpy(data.labels[i].astype(np.int64))[None].to(device)
        logits = model(x).float()
        loss += float(F.cross_entropy(logits, y, weight=weight))
        pred = logits.argmax(1)
        tp += int(((pred == 1) & (y == 1)).sum())
        fp += int(((pred == 1) & (y == 0)).sum())
        fn += int(((pred == 0) & (y == 1)).sum())
    model.train()
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    return {"val_loss": loss / max(len(val), 1), "val_f1": f1,
            "val_precision": tp / (tp + fp) if tp + fp else 1.0,
            "val_recall": tp / (tp + fn) if tp + fn else 1.0}


def versions() -> dict:
    import numpy
    import skimage
    import zarr

    return {"etemseg": __version__, "torch": str(torch.__version__), "numpy": numpy.__version__,
            "zarr": zarr.__version__, "scikit-image": skimage.__version__,
            "python": platform.python_version()}


def _save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _write_metrics_csv(history: list[dict], path: Path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    """Training/validation loss and validation F1 per epoch as a PNG."""
    from etemseg.plotting import plt

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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# checkpoints and resuming
# --------------------------------------------------------------------------------------------

#: The files of a model folder (``etemseg train --out``); a folder holding anything else is
#: refused (see :func:`guard_model_folder`).
MODEL_FOLDER_FILES = ("model.pt", "metrics.csv", "curve.png", "checkpoint.pt")
#: Checkpoint layout; part of the fingerprint, so a checkpoint of another layout is not resumed.
CHECKPOINT_FORMAT = "etemseg-checkpoint-2"
#: Model file layout (``format`` entry) and the entries :func:`load_model` requires.
MODEL_FORMAT = "etemseg-model-1"
MODEL_KEYS = ("name", "arch", "normalisation", "state_dict")


def guard_model_folder(out_dir: str | Path, inputs: Sequence[str | Path] = ()) -> Path:
    """The output-path policy for a model folder; call it before writing anything there.

    Refuses (:class:`~etemseg.errors.OutputPathError`) a folder that is, contains or lies inside
    one of ``inputs`` (the training stores) and an existing folder or file that is not a model
    folder (anything but :data:`MODEL_FOLDER_FILES` and hidden temporary files in it).
    """
    return guard_output(out_dir, inputs=list(inputs), own=holds_only(*MODEL_FOLDER_FILES),
                        what="model folder")


def rng_state(device: torch.device) -> dict:
    """The global random states (torch CPU and CUDA, NumPy, Python) as tensors and plain data, so
    that a checkpoint holding them loads with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                      float(cached)],
            "python": random.getstate()}


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore the global random states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def fingerprint(data: TrainingData, cfg: TrainConfig) -> dict:
    """What a checkpoint must have been trained on to be resumed: settings, architecture and data
    (size, label fraction, and a digest of the split and the frames' sources)."""
    digest = hashlib.sha256(np.asarray(data.train, np.int64).tobytes())
    digest.update(np.asarray(data.val, np.int64).tobytes())
    digest.update("\n".join(data.sources).encode())
    return {"format": CHECKPOINT_FORMAT, "train": cfg.to_dict(),
            "arch": parse_arch(cfg.model).to_dict(), "n_frames": len(data.images),
            "frame_shape": list(data.images.shape[1:]),
            "label_fraction": float(data.labels.mean()), "split": digest.hexdigest()}


@dataclass
class TrainingRun:
    """The state of one training run: what a checkpoint holds and a resumed run restores.

    When the last epoch is done, :meth:`finish` sets ``final``, the model file's metadata, and
    ``model_file``, the model file itself (serialised once: ``torch.save`` is not byte for byte
    repeatable); every output can then be rewritten from a checkpoint without training.
    """

    model: torch.nn.Module
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    fingerprint: dict
    weight: torch.Tensor | None = None
    use_amp: bool = False
    amp_dtype: torch.dtype = torch.float16
    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"f1": -1.0, "epoch": 0, "state": None})
    epochs_done: int = 0
    final: dict | None = None
    model_file: torch.Tensor | None = None

    @classmethod
    def new(cls, data: TrainingData, cfg: TrainConfig, device: torch.device) -> TrainingRun:
        """A run at epoch 0: weights and every global random state initialised from ``cfg.seed``
        (torch, NumPy, Python), so a run, and each checkpoint it writes, is reproducible."""
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        model = build_model(parse_arch(cfg.model)).to(device)
        weight = class_weights(data, cfg)
        use_amp = cfg.amp and device.type == "cuda"
        amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
        return cls(model, torch.optim.Adam(model.parameters(), lr=cfg.lr), scaler, device,
                   fingerprint(data, cfg), weight.to(device) if weight is not None else None,
                   use_amp, amp_dtype)

    def checkpoint(self) -> dict:
        """Everything needed to go on (or to rewrite the outputs) as tensors and plain data."""
        return {"fingerprint": self.fingerprint, "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(), "scaler": self.scaler.state_dict(),
                "history": self.history, "best": self.best, "epochs_done": self.epochs_done,
                "rng": rng_state(self.device), "final": self.final,
                "model_file": self.model_file}

    def restore(self, ckpt: dict) -> None:
        """Go on from ``ckpt`` (a :meth:`checkpoint` of a run with the same fingerprint)."""
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"], self.device)
        self.history, self.best = list(ckpt["history"]), dict(ckpt["best"])
        self.epochs_done = int(ckpt["epochs_done"])
        self.final, self.model_file = ckpt["final"], ckpt["model_file"]

    def record(self, row: dict) -> None:
        """Add an epoch's metrics; keep its weights when its validation F1 is the best so far."""
        self.history.append(row)
        self.epochs_done = int(row["epoch"])
        if row["val_f1"] > self.best["f1"]:
            self.best = {"f1": row["val_f1"], "epoch": self.epochs_done,
                         "state": {k: v.detach().cpu().clone()
                                   for k, v in self.model.state_dict().items()}}

    def finish(self, meta: dict) -> None:
        """Set the model file: ``meta`` and the best (``keep_best``) or the last weights."""
        state = (self.best["state"] if meta["train"]["keep_best"] else
                 {k: v.detach().cpu() for k, v in self.model.state_dict().items()})
        buffer = io.BytesIO()
        torch.save({**meta, "state_dict": state}, buffer)
        self.final = meta
        self.model_file = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def open_run(data: TrainingData, cfg: TrainConfig, device: torch.device,
             ckpt_path: Path) -> TrainingRun:
    """A new run, or the run saved in ``ckpt_path`` when it has the same fingerprint.

    A missing, unreadable or damaged checkpoint, or one of other settings or data, is ignored
    (training starts afresh and replaces it).
    """
    run = TrainingRun.new(data, cfg, device)
    if not ckpt_path.exists():
        return run
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged checkpoint is not fatal
        log.warning("%s: unreadable checkpoint (%s); starting afresh", ckpt_path, _one_line(exc))
        return run
    if not isinstance(ckpt, dict) or ckpt.get("fingerprint") != run.fingerprint:
        log.info("%s: checkpoint is from other settings or data; starting afresh", ckpt_path)
        return run
    try:
        run.restore(ckpt)
    except Exception as exc:  # noqa: BLE001 - half restored: start again from scratch
        log.warning("%s: damaged checkpoint (%s); starting afresh", ckpt_path, _one_line(exc))
        return TrainingRun.new(data, cfg, device)
    log.info("resuming %s after epoch %d of %d", cfg.model, run.epochs_done, cfg.epochs)
    return run


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------

def train_epoch(run: TrainingRun, data: TrainingData, cfg: TrainConfig, epoch: int,
                tensors: tuple[torch.Tensor, torch.Tensor], *, progress: bool = False) -> dict:
    """Train one epoch (0-based ``epoch``); return its row of metrics (validation included).

    The crops come from a generator seeded by ``(cfg.seed, epoch)``, so an epoch's batches do
    not depend on what ran before it in this process.
    """
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    steps = max(1, math.ceil(cfg.samples_per_epoch / cfg.batch_size))
    model, opt, scaler, device = run.model, run.opt, run.scaler, run.device
    model.train()
    t0 = time.perf_counter()
    total = 0.0
    bar = tqdm(range(steps), desc=f"{cfg.model} epoch {epoch + 1}/{cfg.epochs}",
               unit="batch", disable=not progress, leave=False)
    for _ in bar:
        x, y = sample_batch(data, cfg, gen, tensors=tensors)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=run.amp_dtype, enabled=run.use_amp):
            loss = F.cross_entropy(model(x).float(), y, weight=run.weight)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        step_loss = loss.detach().item()   # one host sync per step
        total += step_loss
        bar.set_postfix(loss=f"{step_loss:.4f}")
    seconds = time.perf_counter() - t0
    row = {"epoch": epoch + 1, "train_loss": total / steps,
           **validation_scores(model, data, cfg, device, run.weight),
           "epoch_s": round(seconds, 3), "images_per_s": round(steps * cfg.batch_size / seconds, 3)}
    if device.type == "cuda":
        row["peak_gpu_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    log.info("epoch %d/%d: train loss %.4f, val loss %.4f, val F1 %.4f (%.1f s)", epoch + 1,
             cfg.epochs, row["train_loss"], row["val_loss"], row["val_f1"], seconds)
    return row


def model_meta(run: TrainingRun, data: TrainingData, cfg: TrainConfig, started: float) -> dict:
    """The model file's metadata (everything but the weights) of a finished run."""
    arch = parse_arch(cfg.model)
    history = run.history
    return {
        "format": MODEL_FORMAT,
        "arch": arch.to_dict(),
        "name": canonical_name(arch),
        "parameters": count_parameters(run.model),
        "normalisation": dict(NORMALISATION),
        "train": cfg.to_dict(),
        "data": {"n_frames": len(data.images), "n_train": len(data.train),
                 "n_val": len(data.val), "frame_shape": list(data.images.shape[1:]),
                 "label_fraction": float(data.labels.mean()),
                 # "store:frame" of every training / validation frame (evaluation uses val)
                 "train_sources": [data.sources[i] for i in data.train] if data.sources else [],
                 "val_sources": [data.sources[i] for i in data.val] if data.sources else []},
        "history": history,
        "saved_epoch": run.best["epoch"] if cfg.keep_best else cfg.epochs,
        "val_f1": run.best["f1"] if cfg.keep_best else history[-1]["val_f1"],
        "training_time_s": round(sum(h["epoch_s"] for h in history), 3),
        "wall_time_s_this_run": round(time.perf_counter() - started, 3),
        "device": str(run.device),
        "versions": versions(),
    }


def write_outputs(run: TrainingRun, out_dir: Path) -> None:
    """Write ``metrics.csv``, ``curve.png`` and ``model.pt`` (each atomically) of a finished run.

    Everything comes from the finished run's state, so a rerun from a complete checkpoint
    writes the same files again (``model.pt`` and ``metrics.csv`` byte for byte).
    """
    meta = run.final
    _write_metrics_csv(meta["history"], out_dir / "metrics.csv")
    plot_curves(meta["history"], out_dir / "curve.png",
                f"{meta['name']} ({torch.device(meta['device']).type})")
    with atomic_path(out_dir / "model.pt") as tmp:
        tmp.write_bytes(run.model_file.numpy().tobytes())


def train(data: TrainingData, cfg: TrainConfig, out_dir: str | Path, *,
          progress: bool = True) -> dict:
    """Train ``cfg.model`` on ``data``; write ``model.pt``, ``metrics.csv``, ``curve.png``.

    Resumes from ``out_dir/checkpoint.pt`` when it was written with the same training config and
    data (see :func:`open_run`); otherwise starts afresh. When the checkpoint already covers every
    epoch nothing is trained and the outputs are rewritten from it. ``out_dir`` must be new or a
    model folder (:func:`guard_model_folder`).

    Returns the model file's metadata (everything but the weights); after a rerun from a complete
    checkpoint, that of the run that finished it.
    """
    cfg.validate()
    out_dir = guard_model_folder(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    ckpt_path = out_dir / "checkpoint.pt"
    run = open_run(data, cfg, device, ckpt_path)
    started = time.perf_counter()
    tensors = device_tensors(data, device) if run.epochs_done < cfg.epochs else None
    for epoch in range(run.epochs_done, cfg.epochs):
        run.record(train_epoch(run, data, cfg, epoch, tensors, progress=progress))
        if run.epochs_done == cfg.epochs:
            run.finish(model_meta(run, data, cfg, started))
        _save(run.checkpoint(), ckpt_path)
        _write_metrics_csv(run.history, out_dir / "metrics.csv")
        fault_point("train", 0, run.epochs_done)   # test hook: ETEMSEG_FAULT=train:0:EPOCH
    if run.model_file is None:   # not with a checkpoint of this layout; never write half
        run.finish(model_meta(run, data, cfg, started))
    write_outputs(run, out_dir)
    return run.final


# --------------------------------------------------------------------------------------------
# model files
# --------------------------------------------------------------------------------------------

def _one_line(exc: BaseException) -> str:
    """``Class: first sentence of the message`` (at most 200 characters), for one-line errors."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return exc.__class__.__name__
    return f"{exc.__class__.__name__}: {lines[0].split('. ')[0][:200]}"


def _misfit(expected: dict, state: dict) -> str | None:
    """How a state dict differs from a model's (missing, unexpected, wrongly shaped entries)."""
    def some(keys: list[str]) -> str:
        return keys[0] + (f" and {len(keys) - 1} more" if len(keys) > 1 else "")

    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shaped = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"no {some(missing)}")
    if unexpected:
        problems.append(f"unexpected {some(unexpected)}")
    if shaped:
        key = shaped[0]
        problems.append(f"{key} has shape {tuple(state[key].shape)}, not "
                        f"{tuple(expected[key].shape)}")
    return "; ".join(problems) or None


def _read_model_blob(path: Path) -> dict:
    """The dict in a model file, with every entry of :data:`MODEL_KEYS`; else InputFileError."""
    if not path.exists():
        raise InputFileError(path, "model file does not exist; train it first")
    if not path.is_file():
        raise InputFileError(path, "is not a file; give the model.pt written by `etemseg train`")
    if path.stat().st_size == 0:
        raise InputFileError(path, "empty model file (0 bytes); retrain or copy it again")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputFileError(path, "not a model file (not a PyTorch file of plain tensors and "
                                   "data)") from exc
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds on damaged files
        raise InputFileError(path, f"cannot be read as a model file; truncated or damaged? "
                                   f"({_one_line(exc)})") from exc
    if not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT:
        raise InputFileError(path, f"not an etemseg model file (no 'format: {MODEL_FORMAT}')")
    missing = [key for key in MODEL_KEYS if key not in blob]
    if missing:
        raise InputFileError(path, f"incomplete model file: no {', '.join(missing)}")
    return blob


def _model_arch(path: Path, blob: dict) -> ArchConfig:
    """The architecture of a model file, consistent with its name; else InputFileError."""
    try:
        arch = ArchConfig.from_dict(blob["arch"])
        named = parse_arch(blob["name"]) if isinstance(blob["name"], str) else None
    except (ConfigError, TypeError, ValueError) as exc:
        raise InputFileError(path, f"invalid architecture in the model file ({exc})") from exc
    if named != arch:
        raise InputFileError(path, f"name {blob['name']!r} does not match its architecture "
                                   f"{canonical_name(arch)}")
    norm = blob["normalisation"]
    if not isinstance(norm, dict) or norm.get("method") != NORMALISATION["method"]:
        raise InputFileError(path, f"unknown input normalisation {norm!r:.200}")
    return arch


def _load_weights(path: Path, model: torch.nn.Module, state, arch: ArchConfig) -> None:
    """Load ``state`` into ``model``, refusing misfit and non-finite weights (InputFileError)."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise InputFileError(path, "state_dict is not a mapping of names to tensors")
    misfit = _misfit(model.state_dict(), state)
    if misfit:
        raise InputFileError(path, f"weights do not fit architecture {canonical_name(arch)}: "
                                   f"{misfit}")
    try:
        model.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - RuntimeError mostly; any misfit is the file's
        raise InputFileError(path, f"weights do not fit architecture {canonical_name(arch)} "
                                   f"({_one_line(exc)})") from exc
    bad = [k for k, v in state.items() if not _all_finite(v.detach())]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise InputFileError(path, f"non-finite weights (NaN or inf) in {bad[0]}{more}; the "
                                   "training diverged, retrain (e.g. with a lower --lr)")


def load_model(path: str | Path, *, expect: str | ArchConfig | None = None,
               device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Load a model file written by :func:`train` (``weights_only=True``) in eval mode.

    Parameters
    ----------
    path : path
        The model file (``model.pt``).
    expect : str or ArchConfig, optional
        Refuse a file of another architecture.
    device : str or torch.device
        Where the model goes.

    Returns
    -------
    model, meta
        The model on ``device`` and the file's metadata (without the weights).

    Raises
    ------
    InputFileError
        Naming the file, when it is missing, empty, truncated, not a model file, lacks an entry,
        holds an invalid or unexpected architecture, weights that do not fit it or non-finite
        weights.
    """
    path = Path(path)
    blob = _read_model_blob(path)
    arch = _model_arch(path, blob)
    if expect is not None:
        want = parse_arch(expect) if isinstance(expect, str) else expect
        if want != arch:
            raise InputFileError(path, f"holds architecture {canonical_name(arch)}, "
                                 f"not {canonical_name(want)}")
    try:
        model = build_model(arch)
    except Exception as exc:  # noqa: BLE001 - values from_dict accepted but the model cannot use
        raise InputFileError(path, f"invalid architecture {canonical_name(arch)} "
                                   f"({_one_line(exc)})") from exc
    _load_weights(path, model, blob["state_dict"], arch)
    meta = {k: v for k, v in blob.items() if k != "state_dict"}
    return model.to(device).eval(), meta
