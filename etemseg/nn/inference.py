"""The inference engine: particle probabilities of raw frames, streamed through a model.

Frames are normalised exactly as in training (:func:`etemseg.nn.checkpoint.normalise_tensor`,
on the device, from the raw frames), run through the model in batches, and the particle
probability (softmax, class 1) comes back quantised to uint8 levels (``round(255 p)``, see
:mod:`etemseg.levels`) with each frame's 256-bin histogram (:func:`stream_levels`).

Large frames are processed in tiles with overlap: tile origins sit on the model's pooling grid and
every tile carries the model's halo (its receptive-field radius) on each side; only the tile's
interior is kept. Each output pixel then sees exactly the input it sees in a whole-frame pass, so
tiled and whole-frame results agree to float rounding — a blend with a hard (0/1) window is
exact, where soft blending would only average two different errors. A model that works at a
coarser pixel size (:class:`etemseg.nn.models.WorkScale`, factor ``f`` from its model file) bins
each tile ``f x f`` and upsamples its output: its pooling grid and halo are ``f`` times larger
(:func:`etemseg.nn.models.tiling`), so tiles still start on the whole frame's grid and agree
with it. Its network then computes ``f**2`` times fewer pixels: binning makes inference of
fine-pixel movies faster too.

The optimised path (default) folds BatchNorm into the convolutions, uses channels-last memory
layout and ``torch.inference_mode``; on CUDA it also runs in bf16/fp16 autocast.

Thresholding the levels into masks (:func:`mask_into`, with the settings in :class:`InferConfig`)
is applied per frame by the ``etemseg infer`` stage (:mod:`etemseg.stages.infer`).
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from etemseg.errors import ConfigError, is_number
from etemseg.levels import hysteresis_levels
from etemseg.morphology import above_level_filtered
from etemseg.nn.checkpoint import load_model, normalise_tensor
from etemseg.nn.models import fuse_for_inference, tiling, work_factor_of
from etemseg.scales import area_px

__all__ = ["HYSTERESIS", "MIN_SEPARATION", "THRESHOLD_MODES", "InferConfig", "amp_dtype_of",
           "histograms", "mask_from_levels", "mask_into", "open_model", "prepare_model",
           "probabilities", "retain_heap", "stream_levels", "tiles", "upload"]

#: Values of ``InferConfig.threshold``.
THRESHOLD_MODES = ("fixed", "otsu_frame", "otsu_chunk")
#: Default ``InferConfig.min_separation``: Otsu class means closer than this (probability) mean
#: the frame (chunk) has no particle/background structure; its mask is empty.
MIN_SEPARATION = 0.4
#: Default ``InferConfig.hysteresis``: the lenient level is half the threshold, pieces join
#: over three quarters of it.
HYSTERESIS = 0.5


@dataclass(frozen=True)
class InferConfig:
    """Inference settings.

    Attributes
    ----------
    threshold : str
        ``fixed`` (``fixed_threshold``), ``otsu_frame`` (Otsu of each frame's probabilities) or
        ``otsu_chunk`` (one Otsu threshold over the whole time chunk). The Otsu modes empty
        featureless frames (see ``min_separation``); ``fixed`` thresholds every frame as it is.
    fixed_threshold : float
        Probability threshold for ``fixed`` (the paper compares 0.4 and 0.7).
    min_separation : float
        Otsu modes: a frame whose two Otsu classes have mean probabilities less than this
        apart has no particle/background structure (blank, constant, pure noise) and gets an
        empty mask, with a warning; ``otsu_chunk`` leaves such frames out of the chunk's
        threshold and empties the chunk when its other frames together fail the same test.
        0 keeps every Otsu mask. Not used by ``fixed``.
    min_area_px : int
        Remove 8-connected mask components smaller than this, px (false-positive clusters are
        much smaller than real particles). Counted in the model's working pixels: a model that
        sees the frames binned ``f x f`` (its work factor, :class:`etemseg.nn.models.WorkScale`)
        resolves nothing finer than its working pixel, so its masks lose components under
        ``min_area_px * f**2`` px of the movie (:meth:`min_area_px_at`).
    hysteresis : float
        Spatial hysteresis, in (0, 1] (1 = off: ``q > level`` only). The particles are the
        components above the frame's threshold of at least the minimum area; each is grown
        over the 8-connected pixels above the lenient level, ``hysteresis`` times the
        threshold, and pieces of one particle join where the probability between them stays
        above the middle level, ``(1 + hysteresis) / 2`` times the threshold
        (:func:`etemseg.levels.hysteresis_levels`). A lenient component holding two particles
        keeps them apart (each grown to the middle level only), so neighbours are never bridged.
        A faint particle whose core passes the threshold is then drawn whole, not as the piece
        above it (the pieces made a shrinking particle vanish early and broke tracks); what
        never passes the threshold, or only as a speck under the minimum area, stays out. See
        ``docs/inference.md``.
    min_area_nm2 : float or None
        The same minimum area in nm²; when set and the frame store has a pixel size it replaces
        ``min_area_px`` (``round(min_area_nm2 / pixel_size_nm**2)`` px, see
        :meth:`min_area_px_at`); a store without one falls back to ``min_area_px`` with a
        warning. None (default): ``min_area_px``.
    batch_size : int
        Frames (or tiles) per forward pass.
    max_tile_px : int
        Largest tile side; frames larger than this in either axis are tiled (0 = never tile).
    optimised : bool
        Fold BatchNorm, channels-last, inference mode (and autocast on CUDA).
    gpu_precision : str
        Autocast dtype of the optimised path on CUDA: ``float16``, ``bfloat16`` or ``float32``
        (no autocast). The CPU always computes in float32.
    device : str
        ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    """

    threshold: str = "otsu_frame"
    fixed_threshold: float = 0.5
    min_separation: float = MIN_SEPARATION
    min_area_px: int = 20
    hysteresis: float = HYSTERESIS
    min_area_nm2: float | None = None
    batch_size: int = 4
    max_tile_px: int = 2048
    optimised: bool = True
    gpu_precision: str = "float16"
    device: str = "auto"

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""
        checks = {"threshold": self.threshold in THRESHOLD_MODES,
                  "fixed_threshold": 0 < self.fixed_threshold < 1,
                  "min_separation": 0 <= self.min_separation < 1,
                  "min_area_px": self.min_area_px >= 0,
                  "hysteresis": is_number(self.hysteresis) and 0 < self.hysteresis <= 1,
                  "min_area_nm2": self.min_area_nm2 is None or (
                      is_number(self.min_area_nm2) and self.min_area_nm2 >= 0),
                  "batch_size": self.batch_size >= 1,
                  "max_tile_px": self.max_tile_px == 0 or self.max_tile_px >= 32,
                  "gpu_precision": self.gpu_precision in ("float16", "bfloat16", "float32"),
                  "device": self.device in ("auto", "cpu", "cuda")}
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"infer.{name}: invalid value {getattr(self, name)!r}")

    def min_area_px_at(self, pixel_size_nm: float | None, work_factor: int = 1) -> int:
        """The minimum component area in px at ``pixel_size_nm`` (nm/px) for a model of work
        factor ``work_factor``: ``min_area_nm2`` converted (``round(a / ps**2)``) when both are
        set, else ``min_area_px`` working pixels (``min_area_px * work_factor**2`` px)."""
        if self.min_area_nm2 is None or not pixel_size_nm:
            return self.min_area_px * work_factor ** 2
        return area_px(self.min_area_nm2, pixel_size_nm)


def mask_from_levels(q: np.ndarray, level: int, min_area_px: int, hysteresis: float = 1.0
                     ) -> np.ndarray:
    """Binary mask (H, W) uint8 of ``q > level`` without 8-connected components (as measured)
    under ``min_area_px`` pixels; with ``hysteresis`` < 1 the kept components are grown over
    the lenient pixels around them (:attr:`InferConfig.hysteresis`)."""
    out = np.zeros(q.shape, np.uint8)
    mask_into(q, level, min_area_px, out, hysteresis)
    return out


def mask_into(q: np.ndarray, level: int, min_area_px: int, out: np.ndarray,
              hysteresis: float = 1.0) -> int:
    """:func:`mask_from_levels` written into ``out`` (zeros, uint8); returns its pixel count.
    The one place a threshold level becomes a mask (``etemseg infer`` and
    :func:`etemseg.nn.training.masks_from_probabilities`)."""
    return int(above_level_filtered(q, level, max(1, int(min_area_px)), out,
                                    *hysteresis_levels(level, hysteresis)))


def prepare_model(model: torch.nn.Module, device: torch.device, optimised: bool
                  ) -> torch.nn.Module:
    """Eval-mode model on ``device``; optimised: BatchNorm folded, channels-last (and cuDNN's
    autotuner on CUDA: a chunk's frames all have one shape)."""
    model = model.eval().to(device)
    if optimised and device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if optimised:
        model = fuse_for_inference(model).to(device).to(memory_format=torch.channels_last)
    return model


def tiles(length: int, tile: int, multiple: int, margin: int) -> list[tuple[int, int, int, int]]:
    """Split ``[0, length)`` into kept ranges with their padded input ranges.

    Returns ``(in0, in1, keep0, keep1)`` per tile: run the model on ``[in0, in1)`` and keep output
    ``[keep0, keep1)``. Kept ranges start on multiples of ``multiple`` and inputs extend ``margin``
    (rounded up to ``multiple``) beyond them, clipped to the frame.
    """
    margin = math.ceil(margin / multiple) * multiple
    step = max(multiple, (tile - 2 * margin) // multiple * multiple)
    if length <= tile:
        return [(0, length, 0, length)]
    out = []
    for k0 in range(0, length, step):
        k1 = min(length, k0 + step)
        out.append((max(0, k0 - margin), min(length, k1 + margin), k0, k1))
    return out


def edge_padding(shape: tuple[int, int], multiple: int, margin: int) -> int:
    """Pixels of reflected image added on every side of a frame before the model sees it.

    The model's halo ``margin`` rounded up to ``multiple`` (the pooling grid stays the frame's),
    less where the frame is too small to reflect that far. Without it the convolutions pad the
    frame edge with zeros, i.e. the frame's mean after normalisation: beside a corner that the
    illumination fall-off darkens, that step reads as a particle's edge, and the network draws
    particles in the corners (the tracking benchmark's realistic movies: long-lived false
    trajectories that made false coalescences and identity switches).
    """
    p = math.ceil(margin / multiple) * multiple
    return max(0, min(p, (min(shape) - 1) // multiple * multiple))


def reflect_pad(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, H + 2p, W + 2p) of a (B, H, W) tensor, reflected at the edges (``p`` from
    :func:`edge_padding`)."""
    if p <= 0:
        return x
    return torch.nn.functional.pad(x[:, None], (p, p, p, p), mode="reflect")[:, 0]


def _forward(model, x: torch.Tensor, optimised: bool, amp_dtype: torch.dtype | None
             ) -> torch.Tensor:
    """Particle probability (B, H, W) float32 of normalised (B, H, W) input, on its device."""
    t = x[:, None]
    if optimised:
        t = t.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(t.device.type, dtype=amp_dtype or torch.float16,
                                                enabled=amp_dtype is not None):
        logits = model(t).float()
        # two classes: softmax(.)[1] == sigmoid(l1 - l0), one pass instead of three
        return (torch.sigmoid(logits[:, 1] - logits[:, 0]) if logits.shape[1] == 2
                else torch.softmax(logits, dim=1)[:, 1])


def amp_dtype_of(cfg: InferConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype of the optimised path on CUDA (None: float32)."""
    if not cfg.optimised or device.type != "cuda" or cfg.gpu_precision == "float32":
        return None
    return {"float16": torch.float16, "bfloat16": torch.bfloat16}[cfg.gpu_precision]


def _to_float(t: torch.Tensor) -> torch.Tensor:
    """float32 of a frame tensor. uint16 (K2 counts) goes through its int16 bits widened to
    int32, because torch supports only a few operations on uint16, and not on every device."""
    if t.dtype == torch.uint16:
        return t.view(torch.int16).to(torch.int32).bitwise_and_(0xFFFF).to(torch.float32)
    return t.to(torch.float32)


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype)).dtype


def upload(batches: Iterable[np.ndarray], device: torch.device) -> Iterator[torch.Tensor]:
    """Each host array of ``batches`` as a tensor on ``device``, in its stored dtype.

    On CUDA the arrays pass through two page-locked staging buffers and are copied
    asynchronously: the host fills one buffer while the GPU still works on the other batch.
    """
    if device.type != "cuda":
        for a in batches:
            yield torch.from_numpy(np.ascontiguousarray(a))
        return
    staging: list = [None, None]
    uploaded: list = [None, None]
    for i, a in enumerate(batches):
        slot = i % 2
        if uploaded[slot] is not None:
            uploaded[slot].synchronize()         # its previous upload has left the buffer
        if staging[slot] is None or staging[slot].numel() < a.nbytes:
            staging[slot] = torch.empty(a.nbytes, dtype=torch.uint8, pin_memory=True)
        host = staging[slot][:a.nbytes]
        host.numpy().view(a.dtype).reshape(a.shape)[...] = a
        dev = host.to(device, non_blocking=True)
        uploaded[slot] = torch.cuda.Event()
        uploaded[slot].record()
        yield dev.view(_torch_dtype(a.dtype)).reshape(a.shape)


def probabilities(model, batches: Iterable[np.ndarray], *, arch, cfg: InferConfig, device
                  ) -> Iterator[torch.Tensor]:
    """Particle probability (B, H, W) float32 on ``device`` of each batch of raw (B, H, W)
    frames, in order.

    Raw frames travel to the device as they are stored (uint16 is half of float32) and are
    normalised there (:func:`etemseg.nn.checkpoint.normalise_tensor`); tiles follow the model's
    pooling grid with its receptive-field halo, both scaled by the model's working factor
    (:func:`etemseg.nn.models.tiling`), so tiled output equals whole-frame output. The output
    has the frames' full resolution whatever the factor.
    """
    device = torch.device(device)
    amp = amp_dtype_of(cfg, device)
    m, margin = tiling(arch, work_factor_of(model))
    for raw in upload(batches, device):
        x = normalise_tensor(_to_float(raw))
        H, W = x.shape[1:]
        pad = edge_padding((H, W), m, margin)
        x = reflect_pad(x, pad)
        tile = cfg.max_tile_px or max(x.shape[1:])
        ys, xs = tiles(x.shape[1], tile, m, margin), tiles(x.shape[2], tile, m, margin)
        if len(ys) == 1 and len(xs) == 1:
            yield _forward(model, x, cfg.optimised, amp)[:, pad:pad + H, pad:pad + W]
            continue
        out = torch.empty(x.shape, dtype=torch.float32, device=device)
        for y0, y1, ky0, ky1 in ys:
            for x0, x1, kx0, kx1 in xs:
                p = _forward(model, x[:, y0:y1, x0:x1], cfg.optimised, amp)
                out[:, ky0:ky1, kx0:kx1] = p[:, ky0 - y0:ky1 - y0, kx0 - x0:kx1 - x0]
        yield out[:, pad:pad + H, pad:pad + W]


def histograms(q: torch.Tensor) -> torch.Tensor:
    """(B, 256) int64 histogram of each frame of a uint8 (B, H, W) tensor.

    ``histc`` with fixed bounds (unlike ``bincount``, it needs no host sync on CUDA); bin k holds
    level k exactly (bins centred on the integers).
    """
    if q.device.type == "cpu":
        return torch.stack([torch.bincount(f.ravel(), minlength=256) for f in q])
    if q[0].numel() > 2**24:   # float32 counts are exact up to 2**24 pixels
        return torch.stack([torch.bincount(f.ravel().to(torch.int64), minlength=256) for f in q])
    return torch.stack([torch.histc(f.to(torch.float32), bins=256, min=-0.5, max=255.5)
                        for f in q]).to(torch.int64)


def stream_levels(model, blocks: Iterable[tuple[int, np.ndarray]], *, arch, cfg: InferConfig,
                  device) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(b0, q, hist)`` for each ``(b0, frames)`` block, in order: the quantised particle
    probability (:func:`etemseg.levels.quantise` of :func:`probabilities`, uint8) and each
    frame's 256-bin histogram.

    Quantised and histogrammed on the device, so only uint8 comes back (a quarter of the float32
    traffic). One pipeline spans all blocks: on CUDA the upload of the next batch and the
    download of the last one overlap the GPU's work on this one (pinned buffers; the host waits
    for a batch only when the next is queued).
    """
    device = torch.device(device)
    order: collections.deque = collections.deque()     # blocks not yet yielded, in order
    owners: collections.deque = collections.deque()    # (block, first frame) of each batch

    def batches():
        for b0, frames in blocks:
            block = {"b0": b0, "q": np.empty(frames.shape, np.uint8),
                     "hist": np.empty((len(frames), 256), np.int64),
                     "left": math.ceil(len(frames) / cfg.batch_size)}
            order.append(block)
            if not block["left"]:
                continue
            for i0 in range(0, len(frames), cfg.batch_size):
                owners.append((block, i0))
                yield frames[i0:i0 + cfg.batch_size]

    def land(block, i0, q, hist, done) -> None:
        if done is not None:
            done.synchronize()
        block["q"][i0:i0 + len(q)] = q.numpy()
        block["hist"][i0:i0 + len(q)] = hist.numpy()
        block["left"] -= 1

    def finished():
        while order and order[0]["left"] == 0:
            block = order.popleft()
            yield block["b0"], block["q"], block["hist"]

    pending: collections.deque = collections.deque()
    for p in probabilities(model, batches(), arch=arch, cfg=cfg, device=device):
        block, i0 = owners.popleft()
        q = torch.round(p * 255.0).clamp_(0, 255).to(torch.uint8)
        if device.type != "cuda":
            land(block, i0, q, histograms(q), None)
        else:
            host_q = torch.empty(q.shape, dtype=torch.uint8, pin_memory=True)
            host_h = torch.empty((len(q), 256), dtype=torch.int64, pin_memory=True)
            host_q.copy_(q, non_blocking=True)
            host_h.copy_(histograms(q), non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            pending.append((block, i0, host_q, host_h, done))
            if len(pending) > 1:
                land(*pending.popleft())
        yield from finished()
    while pending:
        land(*pending.popleft())
    yield from finished()


def retain_heap() -> bool:
    """Keep freed memory in the process (glibc): large activations are then not page-faulted
    back in on every forward pass, which cut CPU inference time 1.4-1.7x in benchmarks/inference.
    The process keeps its peak memory. Returns False where mallopt is unavailable."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        # M_MMAP_THRESHOLD = -3, M_TRIM_THRESHOLD = -1
        return bool(libc.mallopt(-3, 1 << 30) and libc.mallopt(-1, 1 << 31))
    except (OSError, AttributeError):
        return False


def open_model(path: str | Path, device: torch.device, optimised: bool
               ) -> tuple[torch.nn.Module, dict]:
    """Load a model file for inference: (prepared model, metadata).

    :func:`etemseg.nn.checkpoint.load_model` refuses a file that is not a valid model file (its
    input normalisation included); :func:`prepare_model` then readies it for ``device``.
    """
    model, meta = load_model(path, device="cpu")
    return prepare_model(model, device, optimised), meta
