"""Training a segmentation CNN on pseudo-labels (the paper: Adam, lr 1e-4, cross-entropy, 25 epochs).

Data: frames from one or more movie stores with their pseudo-label stores, split into training and
validation frames (random 70/30 as in the paper, or by time blocks, since consecutive frames are
near-duplicates and a random split flatters validation). Training uses random crops with the
paper's augmentation (translation with wrap-around, 90-degree rotations, flips, crop-and-zoom);
validation runs on full frames.

Robustness: a checkpoint is written atomically after every epoch; a rerun with the same training
config resumes from it and gives the same weights as an uninterrupted run (every epoch draws its
random numbers from generators seeded by ``(seed, epoch)``).

The model file (``model.pt``) holds plain tensors and JSON-like metadata only, so it loads with
``torch.load(path, weights_only=True)``: state dict, architecture, input normalisation, training
config, per-epoch metrics and package versions.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import __version__
from .atomic import atomic_path
from .errors import ConfigError, InputFileError
from .models import ArchConfig, build_model, canonical_name, count_parameters, parse_arch
from .store import MovieStore

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


def load_training_data(pairs: Sequence[tuple[str | Path, str | Path]], cfg: TrainConfig, *,
                       stride: int = 1, max_frames: int | None = None) -> TrainingData:
    """Read selected frames and pseudo-labels of each (frames.zarr, pseudo.zarr) pair."""
    images, labels, sources = [], [], []
    shape = None
    for frames_path, labels_path in pairs:
        frames, pseudo = MovieStore.open(frames_path), MovieStore.open(labels_path)
        if pseudo.array.shape != frames.array.shape:
            raise InputFileError(labels_path, f"shape {pseudo.array.shape} differs from "
                                 f"{frames_path} {frames.array.shape}")
        if shape is not None and frames.frame_shape != shape:
            raise InputFileError(frames_path, f"frame shape {frames.frame_shape} differs from "
                                 f"the other training movies' {shape}; crop or resize first")
        shape = frames.frame_shape
        idx = select_frames(frames.n_frames, stride, max_frames)
        for b in range(0, len(idx), 64):  # float16 halves the memory of the training set
            images.append(normalise_frames(
                frames.array.get_orthogonal_selection((idx[b:b + 64],))).astype(np.float16))
        labels.append(pseudo.array.get_orthogonal_selection((idx,)).astype(np.uint8))
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
    from .plotting import plt

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


def train(data: TrainingData, cfg: TrainConfig, out_dir: str | Path, *, progress: bool = True,
          stop_after_epoch: int | None = None) -> dict:
    """Train ``cfg.model`` on ``data``; write ``model.pt``, ``metrics.csv``, ``curve.png``.

    Resumes from ``out_dir/checkpoint.pt`` when it was written with the same training config and
    data; otherwise starts afresh. ``stop_after_epoch`` ends early after that epoch (for tests of
    resuming) without writing ``model.pt``.

    Returns the model file's metadata (everything but the weights).
    """
    cfg.validate()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arch = parse_arch(cfg.model)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = build_model(arch).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    weight = class_weights(data, cfg)
    weight = weight.to(device) if weight is not None else None
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    fingerprint = {"train": cfg.to_dict(), "arch": arch.to_dict(), "n_frames": len(data.images),
                   "frame_shape": list(data.images.shape[1:]),
                   "label_fraction": float(data.labels.mean())}
    history: list[dict] = []
    best: dict = {"f1": -1.0, "epoch": 0, "state": None}
    start_epoch = 0
    ckpt_path = out_dir / "checkpoint.pt"
    if ckpt_path.exists():
        try:
            ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        except Exception as exc:  # a damaged checkpoint is not fatal: start afresh
            log.warning("%s: unreadable checkpoint (%s); starting afresh", ckpt_path, exc)
            ckpt = None
        if ckpt and ckpt.get("fingerprint") == fingerprint:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            if "scaler" in ckpt:
                scaler.load_state_dict(ckpt["scaler"])
            history = list(ckpt["history"])
            best = dict(ckpt["best"])
            start_epoch = int(ckpt["epoch"]) + 1
            log.info("resuming %s from epoch %d", cfg.model, start_epoch + 1)
        elif ckpt:
            log.info("%s: checkpoint is from other settings or data; starting afresh", ckpt_path)
    steps = max(1, math.ceil(cfg.samples_per_epoch / cfg.batch_size))
    tensors = device_tensors(data, device)
    model.train()
    started = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        t0 = time.perf_counter()
        total = 0.0
        bar = tqdm(range(steps), desc=f"{cfg.model} epoch {epoch + 1}/{cfg.epochs}",
                   unit="batch", disable=not progress, leave=False)
        for _ in bar:
            x, y = sample_batch(data, cfg, gen, tensors=tensors)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
                loss = F.cross_entropy(model(x).float(), y, weight=weight)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            step_loss = loss.detach().item()   # one host sync per step
            total += step_loss
            bar.set_postfix(loss=f"{step_loss:.4f}")
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "train_loss": total / steps,
               **validation_scores(model, data, cfg, device, weight), "epoch_s": round(seconds, 3),
               "images_per_s": round(steps * cfg.batch_size / seconds, 3)}
        if device.type == "cuda":
            row["peak_gpu_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        history.append(row)
        if row["val_f1"] > best["f1"]:
            best = {"f1": row["val_f1"], "epoch": epoch + 1,
                    "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
        log.info("epoch %d/%d: train loss %.4f, val loss %.4f, val F1 %.4f (%.1f s)", epoch + 1,
                 cfg.epochs, row["train_loss"], row["val_loss"], row["val_f1"], seconds)
        _save({"fingerprint": fingerprint, "model": model.state_dict(),
               "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
               "history": history, "best": best, "epoch": epoch}, ckpt_path)
        _write_metrics_csv(history, out_dir / "metrics.csv")
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            return {"stopped_after_epoch": epoch + 1}
    plot_curves(history, out_dir / "curve.png", f"{canonical_name(arch)} ({device.type})")
    meta = {
        "format": "etemseg-model-1",
        "arch": arch.to_dict(),
        "name": canonical_name(arch),
        "parameters": count_parameters(model),
        "normalisation": dict(NORMALISATION),
        "train": cfg.to_dict(),
        "data": {"n_frames": len(data.images), "n_train": len(data.train),
                 "n_val": len(data.val), "frame_shape": list(data.images.shape[1:]),
                 "label_fraction": float(data.labels.mean()),
                 # "store:frame" of every training / validation frame (evaluation uses val)
                 "train_sources": [data.sources[i] for i in data.train] if data.sources else [],
                 "val_sources": [data.sources[i] for i in data.val] if data.sources else []},
        "history": history,
        "saved_epoch": best["epoch"] if cfg.keep_best else cfg.epochs,
        "val_f1": best["f1"] if cfg.keep_best else history[-1]["val_f1"],
        "training_time_s": round(sum(h["epoch_s"] for h in history), 3),
        "wall_time_s_this_run": round(time.perf_counter() - started, 3),
        "device": str(device),
        "versions": versions(),
    }
    state = (best["state"] if cfg.keep_best else
             {k: v.detach().cpu() for k, v in model.state_dict().items()})
    _save({**meta, "state_dict": state}, out_dir / "model.pt")
    return meta


def load_model(path: str | Path, *, expect: str | ArchConfig | None = None,
               device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Load a model file written by :func:`train` (``weights_only=True``) in eval mode.

    Parameters
    ----------
    expect : str or ArchConfig, optional
        Refuse (InputFileError) a file of another architecture.

    Returns
    -------
    model, meta
        The model on ``device`` and the file's metadata (without the weights).
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError(path, "model file does not exist; train it first")
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise InputFileError(path, f"cannot be read as a model file ({exc.__class__.__name__}: "
                             f"{str(exc).splitlines()[0][:200]})") from exc
    if not isinstance(blob, dict) or blob.get("format") != "etemseg-model-1":
        raise InputFileError(path, "not an etemseg model file (no 'format: etemseg-model-1')")
    arch = ArchConfig.from_dict(blob["arch"])
    if expect is not None:
        want = parse_arch(expect) if isinstance(expect, str) else expect
        if want != arch:
            raise InputFileError(path, f"holds architecture {canonical_name(arch)}, "
                                 f"not {canonical_name(want)}")
    model = build_model(arch)
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as exc:
        raise InputFileError(path, f"weights do not fit architecture {canonical_name(arch)}: "
                             f"{str(exc).splitlines()[0]}") from exc
    meta = {k: v for k, v in blob.items() if k != "state_dict"}
    return model.to(device).eval(), meta
