"""Training a segmentation CNN on pseudo-labels (paper: Adam, lr 1e-4, cross-entropy, 25 epochs).

Data: frames from one or more movie stores with their pseudo-label stores, split into training and
validation frames (random 70/30 as in the paper, or by time blocks, since consecutive frames are
near-duplicates and a random split flatters validation). Training uses random crops with the
paper's augmentation (translation with wrap-around, 90-degree rotations, flips, crop-and-zoom);
validation runs on full frames.

The loop is a :class:`Trainer`: :meth:`Trainer.fit` runs the epochs left, each one
:meth:`~Trainer.train_epoch` (:meth:`~Trainer.train_step` per batch, then
:meth:`~Trainer.validate`), then :meth:`~Trainer.save_checkpoint` and the hook
:meth:`~Trainer.on_epoch_end`; :meth:`~Trainer.on_train_end` at the end. A subclass overrides the
steps it needs (``etemseg train`` writes its model folder from the hooks, see
:mod:`etemseg.stages.train`).

Robustness: a checkpoint (weights, optimiser, per-epoch metrics, best weights, random states) is
written atomically after every epoch. A run with the same training config and data resumes from
it and gives the same weights and metrics as an uninterrupted run (the crops of every epoch come
from a generator seeded by ``(seed, epoch)``; the global random states are saved and restored). A
run after the last epoch trains nothing: the finished run, model file included (serialised
once), comes back from the checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from etemseg.errors import ConfigError, InputFileError, is_number
from etemseg.io.atomic import atomic_path
from etemseg.io.store import DEFAULT_WINDOW_MS, MovieStore, frames_in_window
from etemseg.nn.checkpoint import (MODEL_FORMAT, NORMALISATION, model_file_bytes, normalise_frames,
                                   one_line, versions)
from etemseg.nn.device import pick_device
from etemseg.nn.models import (WORK_PIXEL_NM, build_model, canonical_name, count_parameters,
                               parse_arch, size_multiple, with_work_factor, work_factor,
                               work_factor_of)

log = logging.getLogger(__name__)


#: Values of ``TrainConfig.loss``.
LOSSES = ("ce", "ce_dice", "bootstrap")
#: Values of ``TrainConfig.relabel``.
RELABEL_MODES = ("union", "model")
#: Values of ``TrainConfig.keep_best_by``.
KEEP_BEST_BY = ("auto", "f1", "loss")
#: ``keep_best_by="auto"`` ranks epochs by validation F1 only when the validation frames hold at
#: least this many labelled particles (8-connected label components): the F1 is a proportion
#: over the particles, so its standard error is about ``0.5 / sqrt(n)``; with fewer than 25 it
#: exceeds 0.1, more than the epochs of a training differ by, and the ranking is noise.
MIN_VAL_PARTICLES = 25
#: Label value left out of the loss (``TrainConfig.ignore_margin_px``).
IGNORE = 255
#: Weight of the given label in the ``bootstrap`` loss (Reed et al. 2015, hard bootstrapping).
BOOTSTRAP_BETA = 0.8


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


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
        Side of the square training crops in the network's working pixels: the crops cut from
        the frames are ``crop_px`` times the work factor (see ``work_pixel_nm``) px across, so
        the network trains on ``crop_px``-sized inputs whatever the factor. At factor 1 (by
        default every movie coarser than 0.09 nm/px) the movie's px.
    crop_nm : float or None
        Side of the training crops in nm; when set and every training movie has a pixel size it
        replaces ``crop_px`` (see :func:`crop_px_for`: the crops cover at least ``crop_nm`` in
        every movie, rounded up to the model's size multiple, at least 16 px, in working
        pixels); otherwise ``crop_px`` with a warning. None (default): ``crop_px``.
    work_pixel_nm : float
        Working pixel size of the network, nm/px: the network sees the frames binned ``f x f``
        (mean), ``f`` the largest integer with ``f x pixel size <= work_pixel_nm``
        (:func:`etemseg.nn.models.work_factor`, :func:`resolve_work_factor`), and its logits
        are upsampled back to the movie's pixels (:class:`etemseg.nn.models.WorkScale`). The
        model file records ``f`` (``work_scale``); ``etemseg infer`` runs the model at it.
        Default :data:`etemseg.nn.models.WORK_PIXEL_NM` (0.18): only movies of 0.09 nm/px and
        finer are binned. 0: never bin. An uncalibrated movie counts at the scale its
        pseudo-labels were made at (the label store's ``scale`` estimate), else is not binned.
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
    level_augment : float
        Not in the paper (0: off).  With ``augment``, add to each (normalised) crop a smooth
        random level field of peak amplitude ``U(0, level_augment)`` frame standard deviations
        (a 4 x 4 grid of normal values, bicubically interpolated over the crop, scaled to a peak
        of 1): the slow darkening of a thick, uneven support (carbon black) or of the
        illumination, so that the network takes particles for what is darker than their
        surroundings, not for what is dark.
    amp : bool
        Mixed precision on CUDA (ignored on the CPU).
    seed : int
        Seeds the split, the crops, augmentation and initial weights.
    device : str
        ``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda``.
    max_val_frames : int
        Cap on validation frames scored each epoch.
    keep_best : bool
        Save the weights of the epoch with the best validation score (else those of the last
        epoch).
    keep_best_by : str
        The score ``keep_best`` ranks epochs by: ``f1`` (default; validation F1 at p > 0.5,
        highest), ``loss`` (validation loss, lowest) or ``auto``: ``f1`` when the validation
        frames hold at least :data:`MIN_VAL_PARTICLES` labelled particles, else ``loss``
        (:func:`ranking_score`).  With few particles in the validation frames the F1 at p > 0.5
        is 0 for every epoch whose network is still cautious there, and an undertrained first
        epoch that marks everything dark (precision ~0.05) scores highest; the loss ranks such
        an epoch last.  ``auto`` is not the default: its one measured effect was a loss (real
        Pt_carbon2 image, 17 validation particles: detection F1 0.862 -> 0.791, the last epoch
        kept instead of epoch 12; docs/training.md).
    loss : str
        ``ce`` (cross-entropy, paper), ``ce_dice`` (cross-entropy plus the soft Dice loss of the
        particle class) or ``bootstrap`` (hard bootstrapping, Reed et al. 2015: the target is
        ``BOOTSTRAP_BETA`` the label and the rest the model's own prediction), see
        :func:`segmentation_loss`.
    ignore_margin_px : int
        Pixels at most this far (Euclidean, px) from a label boundary, on either side, are left
        out of the loss and the validation scores (:func:`uncertain_band`); 0: none.
    self_training_rounds : int
        Rounds of self-training after the first training: each relabels every frame with the
        best model so far (:func:`relabel`), then trains a fresh model for ``epochs`` epochs on
        the new labels. 0 (default): train once on the given labels.
    relabel : str
        New labels of a self-training round: ``union`` (the given labels or the model's mask)
        or ``model`` (the model's mask alone).
    window_ms : float
        :func:`load_training_data` reads temporal means of the frames over a centred window of
        this many ms (:meth:`etemseg.io.store.MovieStore.read_mean`, as the pseudo-labels');
        the model records the window of its data (``data.window_ms``) and ``etemseg infer``
        feeds it the same means. 0: single frames. The workflow sets it from the config's
        top-level ``window_ms``.
    """

    model: str = "unet4-norm"
    epochs: int = 25
    batch_size: int = 8
    lr: float = 1e-4
    crop_px: int = 256
    crop_nm: float | None = None
    samples_per_epoch: int = 256
    val_fraction: float = 0.3
    split: str = "random"
    block_frames: int = 16
    particle_weight: float | None = None
    augment: bool = True
    zoom: float = 1.25
    level_augment: float = 0.0
    amp: bool = True
    seed: int = 0
    device: str = "auto"
    max_val_frames: int = 64
    keep_best: bool = True
    keep_best_by: str = "f1"
    loss: str = "ce"
    ignore_margin_px: int = 0
    self_training_rounds: int = 0
    relabel: str = "union"
    window_ms: float = DEFAULT_WINDOW_MS
    work_pixel_nm: float = WORK_PIXEL_NM

    @property
    def total_epochs(self) -> int:
        """Epochs of the whole run: ``epochs`` per round, first training included."""
        return self.epochs * (self.self_training_rounds + 1)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""
        parse_arch(self.model)
        checks = {
            "epochs": self.epochs >= 1, "batch_size": self.batch_size >= 1, "lr": self.lr > 0,
            "crop_px": self.crop_px >= 16,
            "crop_nm": self.crop_nm is None or (is_number(self.crop_nm) and self.crop_nm > 0),
            "samples_per_epoch": self.samples_per_epoch >= 1,
            "val_fraction": 0 < self.val_fraction < 1,
            "split": self.split in ("random", "time_blocks"),
            "block_frames": self.block_frames >= 1,
            "particle_weight": self.particle_weight is None or self.particle_weight >= 0,
            "zoom": self.zoom >= 1, "device": self.device in ("auto", "cpu", "cuda"),
            "level_augment": is_number(self.level_augment) and 0 <= self.level_augment <= 100,
            "max_val_frames": self.max_val_frames >= 1,
            "loss": self.loss in LOSSES,
            "keep_best_by": self.keep_best_by in KEEP_BEST_BY,
            "ignore_margin_px": _is_int(self.ignore_margin_px) and self.ignore_margin_px >= 0,
            "self_training_rounds": (_is_int(self.self_training_rounds)
                                     and self.self_training_rounds >= 0),
            "relabel": self.relabel in RELABEL_MODES,
            "window_ms": is_number(self.window_ms) and self.window_ms >= 0,
            "work_pixel_nm": is_number(self.work_pixel_nm) and self.work_pixel_nm >= 0,
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
    #: pixel size (nm/px) of each training movie, None where uncalibrated (empty: unknown)
    pixel_sizes_nm: list = field(default_factory=list)
    #: temporal window of the images, ms (:attr:`TrainConfig.window_ms` when read by
    #: :func:`load_training_data`; 0: single frames)
    window_ms: float = 0.0
    #: pixel size (nm/px) each movie's physical lengths were resolved at: its calibration, or
    #: for an uncalibrated movie the scale its pseudo-labels estimated (``scale`` of the label
    #: store, :func:`etemseg.scales.scale_for_movie`), None where neither; the work factor
    #: (:func:`resolve_work_factor`) uses it. Empty: ``pixel_sizes_nm``.
    scale_pixel_sizes_nm: list = field(default_factory=list)


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
    images, labels, sources, pixel_sizes, scale_sizes = [], [], [], [], []
    shape = None
    for frames_path, labels_path in pairs:
        frames, pseudo = open_pair(frames_path, labels_path)
        if shape is not None and frames.frame_shape != shape:
            raise InputFileError(frames_path, f"frame shape {frames.frame_shape} differs from "
                                 f"the other training movies' {shape}; crop or resize first")
        shape = frames.frame_shape
        idx = select_frames(frames.n_frames, stride, max_frames)
        window = frames_in_window(cfg.window_ms, frames.fps)
        for b in range(0, len(idx), 64):  # float16 halves the memory of the training set
            images.append(normalise_frames(
                frames.take(idx[b:b + 64], window)).astype(np.float16))
        labels.append(pseudo.take(idx))
        if labels[-1].max(initial=0) > 1:
            raise InputFileError(labels_path, f"--pair PSEUDO: values up to {labels[-1].max()}; "
                                 "pseudo-labels are 0 (background) and 1 (particle)")
        sources += [f"{frames_path}:{i}" for i in idx]
        pixel_sizes.append(frames.pixel_size_nm)
        scale_sizes.append(frames.pixel_size_nm or
                           (pseudo.meta.get("scale") or {}).get("effective_pixel_size_nm"))
    images_a, labels_a = np.concatenate(images), np.concatenate(labels)
    train, val = split_frames(len(images_a), cfg)
    return TrainingData(images_a, labels_a, train, val, sources, pixel_sizes,
                        window_ms=float(cfg.window_ms), scale_pixel_sizes_nm=scale_sizes)


# --------------------------------------------------------------------------------------------
# crop size in nm
# --------------------------------------------------------------------------------------------

#: Smallest training crop, px (before rounding up to the model's size multiple).
MIN_CROP_PX = 16


def crop_px_for(crop_nm: float, pixel_sizes_nm: Sequence[float], multiple: int = 1) -> int:
    """The training crop side in px that covers ``crop_nm`` in every movie.

    Movies may differ in pixel size: the crop is sized for the finest one (the smallest pixel
    size, which needs the most pixels), so every crop spans at least ``crop_nm`` (more in the
    coarser movies). Rounded up to a multiple of ``multiple`` (the model's
    :func:`~etemseg.nn.models.size_multiple`) and at least :data:`MIN_CROP_PX` px.
    """
    n = crop_nm / min(pixel_sizes_nm)
    px = math.ceil(n / multiple - 1e-9) * multiple        # 1e-9: 64 nm / 0.5 nm is 128, not 129
    return max(px, math.ceil(MIN_CROP_PX / multiple) * multiple)


def resolve_work_factor(cfg: TrainConfig, data: TrainingData, *, verbose: bool = False) -> int:
    """The working factor of a model trained on ``data``: :func:`etemseg.nn.models.work_factor`
    of ``cfg.work_pixel_nm`` at the coarsest training movie's pixel size, so no movie is seen
    at a working pixel size coarser than ``work_pixel_nm``. An uncalibrated movie counts at the
    scale its pseudo-labels were made at (``data.scale_pixel_sizes_nm``). 1 when
    ``work_pixel_nm`` is 0 or some movie has no pixel size at all (no physical scale to bin
    to). ``verbose``: log the decision."""
    sizes = list(data.scale_pixel_sizes_nm or data.pixel_sizes_nm)
    if not cfg.work_pixel_nm:
        return 1
    if not sizes or not all(sizes):
        if verbose:
            log.info("train.work_pixel_nm = %g nm: training movies without a pixel size; the "
                     "network works at the movies' pixels (factor 1)", cfg.work_pixel_nm)
        return 1
    factors = [work_factor(ps, cfg.work_pixel_nm) for ps in sizes]
    factor = min(factors)
    if verbose:
        if max(factors) > factor:
            log.info("training movies' pixel sizes (%g-%g nm) ask for work factors %d-%d; "
                     "using %d (the coarsest movie's)", min(sizes), max(sizes), factor,
                     max(factors), factor)
        if factor > 1:
            log.info("train.work_pixel_nm = %g nm: the network sees the frames binned %dx%d "
                     "(%.4g nm/px)", cfg.work_pixel_nm, factor, factor, max(sizes) * factor)
    return factor


def resolve_crop(cfg: TrainConfig, data: TrainingData) -> TrainConfig:
    """``cfg`` with ``crop_px`` the crop side (in working pixels, see
    :attr:`TrainConfig.crop_px`) used on ``data``: :func:`crop_px_for` of ``cfg.crop_nm`` at
    the training movies' working pixel sizes (pixel size times :func:`resolve_work_factor`)
    when every movie has one; else (some movie uncalibrated, or pixel sizes unknown)
    ``cfg.crop_px``, with a warning. Resolving twice gives the same config."""
    if cfg.crop_nm is None:
        return cfg
    sizes = list(data.pixel_sizes_nm)
    missing = sum(not ps for ps in sizes)
    if not sizes or missing:
        which = (f"{missing} of {len(sizes)} training movies have" if sizes
                 else "the training data has")
        log.warning("train.crop_nm = %g nm: %s no pixel size; using train.crop_px = %d px "
                    "instead", cfg.crop_nm, which, cfg.crop_px)
        return cfg
    if max(sizes) > 1.01 * min(sizes):
        log.info("training movies' pixel sizes differ (%g-%g nm); crops of %g nm are sized for "
                 "the finest", min(sizes), max(sizes), cfg.crop_nm)
    f = resolve_work_factor(cfg, data)
    px = crop_px_for(cfg.crop_nm, [ps * f for ps in sizes], size_multiple(parse_arch(cfg.model)))
    log.info("train.crop_nm = %g nm -> crops of %d px%s", cfg.crop_nm, px * f,
             f" ({px} working px)" if f > 1 else "")
    return dataclasses.replace(cfg, crop_px=px)


def level_field(size: int, amplitude: float, gen: torch.Generator) -> torch.Tensor:
    """A smooth random level field (1, 1, size, size) float32 for :attr:`TrainConfig.level_augment`:
    a 4 x 4 grid of normal values interpolated bicubically over the crop, scaled to a peak of
    ``U(0, amplitude)`` (draws from ``gen``)."""
    grid = torch.randn((1, 1, 4, 4), generator=gen)
    field = F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=True)
    peak = float(field.abs().max())
    scale = torch.rand(1, generator=gen).item() * amplitude / max(peak, 1e-6)
    return (field * scale).to(torch.float32)


EDGE_REACH = 0.25  # crop origins reach this fraction of a crop side past each frame edge


def _crop_origin(n: int, side: int, gen: torch.Generator) -> int:
    """Origin of a crop of ``side`` px in a frame dimension of ``n`` px: drawn uniformly from
    ``[-reach, n - side + reach]`` (``reach = EDGE_REACH * side``) and clamped into the frame.

    A uniform origin in ``[0, n - side]`` puts a pixel within a crop side of the frame edge into
    fewer crops than an interior one (the outermost row into ``1 / (n - side + 1)`` of them), so
    the network would see too little of the frame edge and its illumination fall-off, and make
    fragments and false components there.  The clamped reach gives each edge
    ``reach / (n - side + 1 + 2 reach)`` of the crops in addition.
    """
    reach = int(side * EDGE_REACH)
    span = max(n - side, 0)
    o = int(torch.randint(span + 2 * reach + 1, (1,), generator=gen)) - reach
    return min(max(o, 0), span)


def sample_batch(data: TrainingData, cfg: TrainConfig, gen: torch.Generator, *,
                 tensors: tuple[torch.Tensor, torch.Tensor] | None = None, factor: int = 1
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of augmented random crops, (B, 1, c, c) float32 and (B, c, c) int64, with
    ``c = cfg.crop_px * factor`` (``factor``: the model's working factor, so that the network
    sees ``crop_px``-sized inputs).

    ``tensors``: ``(images, labels)`` of ``data`` as tensors on the training device (see
    :func:`device_tensors`); crops and augmentation then run there. The random draws come from
    ``gen`` on the CPU either way, so a seed gives the same batches on every device.
    """
    images, labels = tensors if tensors is not None else (torch.from_numpy(data.images),
                                                          torch.from_numpy(data.labels))
    c = cfg.crop_px * factor
    _, H, W = data.images.shape
    xs, ys = [], []
    for _ in range(cfg.batch_size):
        i = int(data.train[torch.randint(len(data.train), (1,), generator=gen)])
        side = c
        if cfg.augment and cfg.zoom > 1:
            s = math.exp((torch.rand(1, generator=gen).item() * 2 - 1) * math.log(cfg.zoom))
            side = int(round(c * s))
        side = max(8, min(side, H, W))
        y0, x0 = _crop_origin(H, side, gen), _crop_origin(W, side, gen)
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
            if cfg.level_augment > 0:
                x = x + level_field(c, cfg.level_augment, gen).to(x.device)
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


# --------------------------------------------------------------------------------------------
# noisy labels: uncertain band, robust losses, relabelling
# --------------------------------------------------------------------------------------------

def uncertain_band(labels: np.ndarray, margin_px: int) -> np.ndarray:
    """Pixels at most ``margin_px`` (Euclidean, px) from the boundary of the 0/1 ``labels``.

    Parameters
    ----------
    labels : numpy.ndarray
        (N, H, W) or (H, W) 0/1 labels.
    margin_px : int
        Band half-width, px; 0 gives an empty band.

    Returns
    -------
    numpy.ndarray
        bool, the shape of ``labels``: a particle pixel whose nearest background pixel lies
        within ``margin_px``, or a background pixel whose nearest particle pixel does. A frame
        without particles (or without background) has no boundary and no band.
    """
    from scipy import ndimage

    labels = np.asarray(labels)
    band = np.zeros(labels.shape, bool)
    if margin_px <= 0:
        return band
    for i, lab in enumerate(labels.reshape(-1, *labels.shape[-2:])):
        fg = lab > 0
        if fg.all() or not fg.any():
            continue
        inside = ndimage.distance_transform_edt(fg) <= margin_px
        outside = ndimage.distance_transform_edt(~fg) <= margin_px
        band.reshape(-1, *labels.shape[-2:])[i] = np.where(fg, inside, outside)
    return band


def loss_targets(labels: np.ndarray, cfg: TrainConfig) -> np.ndarray:
    """The labels the loss sees: ``labels`` (0/1 uint8) with the :func:`uncertain_band` of
    ``cfg.ignore_margin_px`` set to :data:`IGNORE` (a new array; ``labels`` when no band)."""
    if cfg.ignore_margin_px <= 0:
        return labels
    out = labels.copy()
    out[uncertain_band(labels, cfg.ignore_margin_px)] = IGNORE
    return out


def segmentation_loss(logits: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
                      weight: torch.Tensor | None = None) -> torch.Tensor:
    """The training loss of logits (B, 2, H, W) float32 against labels (B, H, W) int64.

    Pixels labelled :data:`IGNORE` count in no term. ``cfg.loss``: ``ce`` the (weighted)
    cross-entropy; ``bootstrap`` the cross-entropy against ``BOOTSTRAP_BETA`` of the label plus
    ``1 - BOOTSTRAP_BETA`` of the model's own (argmax, no gradient) prediction; ``ce_dice`` the
    cross-entropy plus ``1 - soft Dice`` of the particle class over the batch.
    """
    ce = F.cross_entropy(logits, y, weight=weight, ignore_index=IGNORE)
    if cfg.loss == "ce":
        return ce
    valid = y != IGNORE
    if cfg.loss == "bootstrap":
        own = logits.detach().argmax(1)
        own_ce = F.cross_entropy(logits, torch.where(valid, own, IGNORE), weight=weight,
                                 ignore_index=IGNORE)
        return BOOTSTRAP_BETA * ce + (1 - BOOTSTRAP_BETA) * own_ce
    p = torch.softmax(logits, 1)[:, 1] * valid
    t = (y == 1).float()
    dice = (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    return ce + (1 - dice)


def masks_from_probabilities(prob: np.ndarray, work_factor: int = 1,
                             hysteresis: float | None = None) -> np.ndarray:
    """Masks (N, H, W) uint8 of particle probabilities (N, H, W) as ``etemseg infer`` makes them
    with its default settings (:class:`~etemseg.nn.inference.InferConfig`): each frame's Otsu
    threshold of its uint8 probability levels (an empty mask where the frame has no
    particle/background structure), its components of at least ``min_area_px`` working pixels
    of a model of work factor ``work_factor`` (:meth:`InferConfig.min_area_px_at`), grown by
    the hysteresis (:attr:`InferConfig.hysteresis`; ``hysteresis``: another value)."""
    from etemseg.levels import EMPTY_LEVEL, level_histogram, otsu_split, quantise
    from etemseg.nn.inference import InferConfig, mask_into

    icfg = InferConfig()
    hysteresis = icfg.hysteresis if hysteresis is None else hysteresis
    min_area = icfg.min_area_px_at(None, work_factor)
    out = np.zeros(prob.shape, np.uint8)
    for i, qi in enumerate(quantise(prob)):
        level, separation = otsu_split(level_histogram(qi))
        if separation < icfg.min_separation:
            level = EMPTY_LEVEL
        mask_into(qi, level, min_area, out[i], hysteresis)
    return out


@torch.no_grad()
def predict_masks(model: torch.nn.Module, images: np.ndarray, device: torch.device, *,
                  batch: int = 4) -> np.ndarray:
    """Masks (N, H, W) uint8 of normalised ``images`` (N, H, W) by ``model``: the inference
    engine's probabilities (:func:`etemseg.nn.inference.probabilities`, whole frames, edges
    reflected; normalising normalised frames changes nothing), thresholded as ``etemseg infer``
    does by default (:func:`masks_from_probabilities`)."""
    from etemseg.nn.inference import InferConfig, probabilities

    was_training = model.training
    model.eval()
    cfg = InferConfig(batch_size=batch, max_tile_px=0, optimised=False)
    batches = (images[b:b + batch] for b in range(0, len(images), batch))
    prob = [p.cpu().numpy() for p in probabilities(model, batches, arch=model.cfg, cfg=cfg,
                                                   device=device)]
    prob = np.concatenate(prob) if prob else np.zeros(images.shape, np.float32)
    model.train(was_training)
    return masks_from_probabilities(prob, work_factor_of(model))


def relabel(model: torch.nn.Module, data: TrainingData, cfg: TrainConfig,
            device: torch.device) -> np.ndarray:
    """New 0/1 labels (N, H, W) uint8 of every frame of ``data`` for a self-training round.

    The model's masks (:func:`predict_masks`); with ``cfg.relabel == "union"`` or-ed with the
    given labels ``data.labels`` (pseudo-labels rarely mark background as particle, they miss
    faint particles).
    """
    masks = predict_masks(model, data.images, device)
    if cfg.relabel == "union":
        masks |= data.labels.astype(np.uint8)
    return masks


def validation_particles(data: TrainingData, cfg: TrainConfig) -> int:
    """Labelled particles (8-connected components of ``data.labels``) in the validation frames
    that :func:`validation_scores` scores (the first ``cfg.max_val_frames``)."""
    from scipy import ndimage as ndi

    eight = np.zeros((3, 3, 3), bool)
    eight[1] = True                         # 8-connected within a frame, not across frames
    labels = data.labels[data.val[:cfg.max_val_frames]] == 1
    return int(ndi.label(labels, structure=eight)[1]) if labels.size else 0


def ranking_score(data: TrainingData, cfg: TrainConfig) -> str:
    """The score ``keep_best`` ranks epochs by: ``cfg.keep_best_by``, where ``auto`` is ``f1``
    with at least :data:`MIN_VAL_PARTICLES` validation particles (:func:`validation_particles`)
    and ``loss`` with fewer (logged)."""
    if cfg.keep_best_by != "auto":
        return cfg.keep_best_by
    n = validation_particles(data, cfg)
    if n >= MIN_VAL_PARTICLES:
        return "f1"
    log.info("keep_best: %d labelled particle(s) in the validation frames (< %d): epochs are "
             "ranked by validation loss, not F1", n, MIN_VAL_PARTICLES)
    return "loss"


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
    """Loss and pixel precision/recall/F1 (particle probability > 0.5) on full validation frames.

    ``data.labels`` are the loss's labels (:func:`loss_targets`): pixels labelled :data:`IGNORE`
    count in neither the loss nor the scores."""
    model.eval()
    val = data.val[:cfg.max_val_frames]
    tp = fp = fn = 0
    loss = 0.0
    for i in val:
        x = torch.from_numpy(data.images[i].astype(np.float32))[None, None].to(device)
        y = torch.from_numpy(data.labels[i].astype(np.int64))[None].to(device)
        logits = model(x).float()
        loss += float(segmentation_loss(logits, y, cfg, weight))
        pred = logits.argmax(1)
        tp += int(((pred == 1) & (y == 1)).sum())
        fp += int(((pred == 1) & (y == 0)).sum())
        fn += int(((pred == 0) & (y == 1)).sum())
    model.train()
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    return {"val_loss": loss / max(len(val), 1), "val_f1": f1,
            "val_precision": tp / (tp + fp) if tp + fp else 1.0,
            "val_recall": tp / (tp + fn) if tp + fn else 1.0}


def save_checkpoint(ckpt: dict, path: str | Path) -> None:
    """Write a checkpoint (:meth:`TrainingRun.checkpoint`) to ``path`` atomically."""
    with atomic_path(Path(path)) as tmp:
        torch.save(ckpt, tmp)


# --------------------------------------------------------------------------------------------
# checkpoints and resuming
# --------------------------------------------------------------------------------------------

#: Checkpoint layout; part of the fingerprint, so a checkpoint of another layout is not resumed.
CHECKPOINT_FORMAT = "etemseg-checkpoint-2"


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
            "arch": parse_arch(cfg.model).to_dict(), "work_factor": resolve_work_factor(cfg, data),
            "n_frames": len(data.images),
            "frame_shape": list(data.images.shape[1:]),
            "label_fraction": float(data.labels.mean()), "split": digest.hexdigest()}


def pack_labels(labels: np.ndarray) -> dict:
    """0/1 labels (N, H, W) as a bit-packed tensor and their shape (for a checkpoint)."""
    return {"bits": torch.from_numpy(np.packbits(labels.astype(bool).ravel())),
            "shape": list(labels.shape)}


def unpack_labels(packed: dict) -> np.ndarray:
    """The uint8 labels of :func:`pack_labels`."""
    shape = tuple(int(n) for n in packed["shape"])
    bits = np.unpackbits(packed["bits"].numpy(), count=int(np.prod(shape)))
    return bits.reshape(shape).astype(np.uint8)


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
    #: self-training: rounds of relabelling done, the current round's labels (None: the given
    #: labels), and the particle fraction of each round's labels
    round: int = 0
    labels: np.ndarray | None = None
    label_fractions: list = field(default_factory=list)

    @classmethod
    def new(cls, data: TrainingData, cfg: TrainConfig, device: torch.device) -> TrainingRun:
        """A run at epoch 0: weights and every global random state initialised from ``cfg.seed``
        (torch, NumPy, Python), so a run, and each checkpoint it writes, is reproducible."""
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        model = with_work_factor(build_model(parse_arch(cfg.model)),
                                 resolve_work_factor(cfg, data)).to(device)
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
                "model_file": self.model_file, "round": self.round,
                "labels": None if self.labels is None else pack_labels(self.labels),
                "label_fractions": self.label_fractions}

    def restore(self, ckpt: dict) -> None:
        """Go on from ``ckpt`` (a :meth:`checkpoint` of a run with the same fingerprint)."""
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"], self.device)
        self.history, self.best = list(ckpt["history"]), dict(ckpt["best"])
        self.epochs_done = int(ckpt["epochs_done"])
        self.final, self.model_file = ckpt["final"], ckpt["model_file"]
        self.round = int(ckpt.get("round", 0))
        packed = ckpt.get("labels")
        self.labels = None if packed is None else unpack_labels(packed)
        self.label_fractions = list(ckpt.get("label_fractions", []))

    def record(self, row: dict, by: str = "f1") -> None:
        """Add an epoch's metrics; keep its weights when it is the best so far: the highest
        validation F1 (``by="f1"``) or the lowest validation loss (``by="loss"``)."""
        self.history.append(row)
        self.epochs_done = int(row["epoch"])
        if by == "loss":
            better = row["val_loss"] < self.best.get("loss", math.inf)
        else:
            better = row["val_f1"] > self.best["f1"]
        if better:
            self.best = {"f1": row["val_f1"], "loss": row["val_loss"], "epoch": self.epochs_done,
                         "state": {k: v.detach().cpu().clone()
                                   for k, v in self.model.state_dict().items()}}

    def finish(self, meta: dict) -> None:
        """Set the model file: ``meta`` and the best (``keep_best``) or the last weights."""
        state = (self.best["state"] if meta["train"]["keep_best"] else
                 {k: v.detach().cpu() for k, v in self.model.state_dict().items()})
        self.final = meta
        self.model_file = model_file_bytes(meta, state)


def open_run(data: TrainingData, cfg: TrainConfig, device: torch.device,
             ckpt_path: Path | None) -> TrainingRun:
    """A new run, or the run saved in ``ckpt_path`` when it has the same fingerprint.

    A missing (or None), unreadable or damaged checkpoint, or one of other settings or data, is
    ignored (training starts afresh and replaces it).
    """
    run = TrainingRun.new(data, cfg, device)
    if ckpt_path is None or not ckpt_path.exists():
        return run
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged checkpoint is not fatal
        log.warning("%s: unreadable checkpoint (%s); starting afresh", ckpt_path, one_line(exc))
        return run
    if not isinstance(ckpt, dict) or ckpt.get("fingerprint") != run.fingerprint:
        log.info("%s: checkpoint is from other settings or data; starting afresh", ckpt_path)
        return run
    try:
        run.restore(ckpt)
    except Exception as exc:  # noqa: BLE001 - half restored: start again from scratch
        log.warning("%s: damaged checkpoint (%s); starting afresh", ckpt_path, one_line(exc))
        return TrainingRun.new(data, cfg, device)
    log.info("resuming %s after epoch %d of %d", cfg.model, run.epochs_done, cfg.epochs)
    return run


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------

def model_meta(run: TrainingRun, data: TrainingData, cfg: TrainConfig, started: float, *,
               rank_by: str | None = None) -> dict:
    """The model file's metadata (everything but the weights) of a finished run; ``rank_by``
    is what ``keep_best`` ranked epochs by (default :func:`ranking_score`)."""
    arch = parse_arch(cfg.model)
    history = run.history
    factor = resolve_work_factor(cfg, data)
    return {
        "format": MODEL_FORMAT,
        "arch": arch.to_dict(),
        "name": canonical_name(arch),
        "parameters": count_parameters(run.model),
        "normalisation": dict(NORMALISATION),
        # the network's working factor (etemseg.nn.models.WorkScale): inference runs it there
        "work_scale": {"factor": factor, "work_pixel_nm": float(cfg.work_pixel_nm),
                       "working_pixel_sizes_nm": [
                           ps * factor if ps else None
                           for ps in (data.scale_pixel_sizes_nm or data.pixel_sizes_nm)],
                       "crop_px": cfg.crop_px * factor},
        "train": cfg.to_dict(),
        "data": {"n_frames": len(data.images), "n_train": len(data.train),
                 "n_val": len(data.val), "frame_shape": list(data.images.shape[1:]),
                 "pixel_sizes_nm": list(data.pixel_sizes_nm),
                 "window_ms": float(data.window_ms),
                 "label_fraction": float(data.labels.mean()),
                 # "store:frame" of every training / validation frame (evaluation uses val)
                 "train_sources": [data.sources[i] for i in data.train] if data.sources else [],
                 "val_sources": [data.sources[i] for i in data.val] if data.sources else []},
        "history": history,
        "saved_epoch": run.best["epoch"] if cfg.keep_best else cfg.total_epochs,
        "saved_by": (rank_by or ranking_score(data, cfg)) if cfg.keep_best else "last",
        "val_f1": run.best["f1"] if cfg.keep_best else history[-1]["val_f1"],
        "training_time_s": round(sum(h["epoch_s"] for h in history), 3),
        "wall_time_s_this_run": round(time.perf_counter() - started, 3),
        "device": str(run.device),
        "versions": versions(),
        **({"self_training": {"rounds": cfg.self_training_rounds, "relabel": cfg.relabel,
                              "label_fractions": list(run.label_fractions)}}
           if cfg.self_training_rounds else {}),
    }




class Trainer:
    """The training loop of one run, in steps a subclass can override or extend.

    :meth:`fit` runs the epochs not done yet: per epoch :meth:`train_epoch` (random batches
    through :meth:`train_step`, then :meth:`validate`), the metrics recorded in :attr:`run`, the
    model file set after the last epoch, then :meth:`save_checkpoint` and :meth:`on_epoch_end`;
    at the end :meth:`on_train_end`. Both hooks do nothing here.

    Parameters
    ----------
    data : TrainingData
        Normalised frames, labels and the split.
    cfg : TrainConfig
        Training settings (validated by the caller); ``crop_nm`` is resolved to ``crop_px`` on
        ``data`` (:func:`resolve_crop`) and :attr:`cfg` holds the result, which the checkpoint's
        fingerprint and the model file's ``train`` block record.
    checkpoint : path, optional
        Checkpoint file: a run of the same settings and data saved there is resumed (see
        :func:`open_run`), and every epoch is saved there. None: train in memory only.
    progress : bool
        A progress bar per epoch.

    Attributes
    ----------
    run : TrainingRun
        The run's state (new or resumed); after :meth:`fit`, ``run.final`` is the model file's
        metadata and ``run.model_file`` the model file.
    device : torch.device
        Where the model trains (``cfg.device``, see :func:`etemseg.nn.device.pick_device`).
    """

    def __init__(self, data: TrainingData, cfg: TrainConfig, *,
                 checkpoint: str | Path | None = None, progress: bool = False) -> None:
        self.data, self.progress = data, progress
        self.cfg = cfg = resolve_crop(cfg, data)
        #: the model's working factor (:func:`resolve_work_factor`)
        self.work_factor = resolve_work_factor(cfg, data, verbose=True)
        self.checkpoint_path = Path(checkpoint) if checkpoint is not None else None
        self.device = pick_device(cfg.device)
        self.run = open_run(data, cfg, self.device, self.checkpoint_path)
        #: what ``keep_best`` ranks epochs by (:func:`ranking_score`)
        self.rank_by = ranking_score(data, cfg)
        self.tensors: tuple[torch.Tensor, torch.Tensor] | None = None
        #: ``data`` with the labels the loss sees (this round's, uncertain band ignored)
        self.train_data = data
        self.started = time.perf_counter()

    def fit(self) -> TrainingRun:
        """Train the epochs left; return the finished run (nothing to train: as restored).

        With ``cfg.self_training_rounds``, every ``cfg.epochs`` epochs :meth:`start_round`
        relabels the frames and starts a fresh model on the new labels.
        """
        run, cfg = self.run, self.cfg
        self.started = time.perf_counter()
        total = cfg.total_epochs
        if run.epochs_done < total:
            if not run.label_fractions:
                run.label_fractions = [float(self.data.labels.mean())]
            self.use_labels(run.labels if run.labels is not None else self.data.labels)
        for epoch in range(run.epochs_done, total):
            if epoch // cfg.epochs > run.round:
                self.start_round(epoch // cfg.epochs)
            row = self.train_epoch(epoch)
            run.record(row, self.rank_by)
            if run.epochs_done == total:
                run.finish(self.model_meta())
            self.save_checkpoint()
            self.on_epoch_end(row)
        if run.model_file is None:   # not with a checkpoint of this layout; never write half
            run.finish(self.model_meta())
        self.on_train_end()
        return run

    def use_labels(self, labels: np.ndarray) -> None:
        """Train and validate on ``labels`` (0/1, the shape of ``data.labels``) from now on, the
        uncertain band of ``cfg.ignore_margin_px`` left out (:func:`loss_targets`)."""
        self.train_data = dataclasses.replace(self.data, labels=loss_targets(labels, self.cfg))
        self.tensors = device_tensors(self.train_data, self.device)

    def start_round(self, r: int) -> None:
        """Self-training round ``r`` (1-based): relabel every frame with the best weights of the
        last round (:func:`relabel`), then a fresh model (initial weights seeded by
        ``(cfg.seed, r)``), optimiser and best-epoch record."""
        run, cfg = self.run, self.cfg
        if cfg.keep_best and run.best["state"] is not None:
            run.model.load_state_dict(run.best["state"])
        labels = relabel(run.model, self.data, cfg, self.device)
        torch.manual_seed(cfg.seed * 1_000_003 + r)
        run.model.load_state_dict(build_model(parse_arch(cfg.model)).state_dict())
        run.opt = torch.optim.Adam(run.model.parameters(), lr=cfg.lr)
        run.best = {"f1": -1.0, "epoch": run.epochs_done, "state": None}
        run.round, run.labels = r, labels
        run.label_fractions.append(float(labels.mean()))
        changed = float((labels != self.data.labels).mean())
        log.info("self-training round %d: relabelled, particle fraction %.4f (given labels "
                 "%.4f), %.2f %% of pixels changed", r, run.label_fractions[-1],
                 run.label_fractions[0], 100 * changed)
        self.use_labels(labels)

    def train_epoch(self, epoch: int) -> dict:
        """Train one epoch (0-based ``epoch``); return its row of metrics (validation included).

        The crops come from a generator seeded by ``(cfg.seed, epoch)``, so an epoch's batches do
        not depend on what ran before it in this process.
        """
        cfg, device = self.cfg, self.device
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        steps = max(1, math.ceil(cfg.samples_per_epoch / cfg.batch_size))
        self.run.model.train()
        t0 = time.perf_counter()
        total = 0.0
        bar = tqdm(range(steps), desc=f"{cfg.model} epoch {epoch + 1}/{cfg.total_epochs}",
                   unit="batch", disable=not self.progress, leave=False)
        for _ in bar:
            step_loss = self.train_step(*sample_batch(self.train_data, cfg, gen,
                                                      tensors=self.tensors,
                                                      factor=self.work_factor))
            total += step_loss
            bar.set_postfix(loss=f"{step_loss:.4f}")
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch + 1,
               **({"round": epoch // cfg.epochs} if cfg.self_training_rounds else {}),
               "train_loss": total / steps, **self.validate(),
               "epoch_s": round(seconds, 3),
               "images_per_s": round(steps * cfg.batch_size / seconds, 3)}
        if device.type == "cuda":
            row["peak_gpu_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        log.info("epoch %d/%d: train loss %.4f, val loss %.4f, val F1 %.4f (%.1f s)", epoch + 1,
                 cfg.total_epochs, row["train_loss"], row["val_loss"], row["val_f1"], seconds)
        return row

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One optimiser step on a batch (crops ``x``, labels ``y``); return its loss."""
        run, device = self.run, self.device
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=run.amp_dtype, enabled=run.use_amp):
            loss = segmentation_loss(run.model(x).float(), y, self.cfg, run.weight)
        run.opt.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.opt)
        run.scaler.update()
        return loss.detach().item()   # one host sync per step

    def validate(self) -> dict:
        """Validation metrics of the current weights (:func:`validation_scores`)."""
        return validation_scores(self.run.model, self.train_data, self.cfg, self.device,
                                 self.run.weight)

    def model_meta(self) -> dict:
        """The model file's metadata of the finished run (:func:`model_meta`)."""
        return model_meta(self.run, self.data, self.cfg, self.started, rank_by=self.rank_by)

    def save_checkpoint(self) -> None:
        """Save the run to the checkpoint file (nothing when training in memory)."""
        if self.checkpoint_path is not None:
            save_checkpoint(self.run.checkpoint(), self.checkpoint_path)

    def on_epoch_end(self, row: dict) -> None:
        """Hook after each epoch's checkpoint, with the epoch's metrics ``row``; nothing here."""

    def on_train_end(self) -> None:
        """Hook after the last epoch (or a run that had nothing left to train); nothing here."""


def train(data: TrainingData, cfg: TrainConfig, *, checkpoint: str | Path | None = None,
          progress: bool = False) -> TrainingRun:
    """Train ``cfg.model`` on ``data`` with a plain :class:`Trainer`; return the finished run.

    ``checkpoint``: resume from and save every epoch to this file (see :class:`Trainer`). The
    run's ``final`` is the model file's metadata, ``model_file`` the model file (write it with
    :func:`etemseg.nn.checkpoint.save_model`). ``etemseg train`` (a model folder with metrics
    and a learning curve) is :func:`etemseg.stages.train.train`.
    """
    cfg.validate()
    return Trainer(data, cfg, checkpoint=checkpoint, progress=progress).fit()
