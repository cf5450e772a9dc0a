"""Inference: particle probability and masks for full frames, one time chunk per job.

Frames are normalised exactly as in training (the model file says how), run through the model
in batches, and the particle probability (softmax, class 1) is stored quantised to uint8
(``round(255 p)``): half the bytes of float16, compresses several times better since most pixels are
near 0 or 1, and a resolution of 1/255 is far finer than any threshold study needs (the paper
compares 0.4 and 0.7; the evaluation steps by 0.05).

Large frames are processed in tiles with overlap: tile origins sit on the model's pooling grid and
every tile carries the model's halo (its receptive-field radius) on each side; only the tile's
interior is kept. Each output pixel then sees exactly the input it sees in a whole-frame pass, so
tiled and whole-frame results agree to float rounding — a blend with a hard (0/1) window is
exact, where soft blending would only average two different errors.

The optimised path (default) folds BatchNorm into the convolutions, uses channels-last memory
layout and ``torch.inference_mode``; on CUDA it also runs in bf16/fp16 autocast.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from .errors import ConfigError, InputFileError
from .models import fuse_for_inference, halo, parse_arch, size_multiple
from .pseudolabel import remove_small_components
from .store import MovieStore, map_chunk
from .train import NORMALISATION, load_model, normalise_tensor

log = logging.getLogger(__name__)

THRESHOLD_MODES = ("fixed", "otsu_frame", "otsu_chunk")


@dataclass(frozen=True)
class InferConfig:
    """Inference settings.

    Attributes
    ----------
    threshold : str
        ``fixed`` (``fixed_threshold``), ``otsu_frame`` (Otsu of each frame's probabilities) or
        ``otsu_chunk`` (one Otsu threshold over the whole time chunk).
    fixed_threshold : float
        Probability threshold for ``fixed`` (the paper compares 0.4 and 0.7).
    min_area_px : int
        Remove 8-connected mask components smaller than this, px (false-positive clusters are
        much smaller than real particles).
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
    min_area_px: int = 20
    batch_size: int = 4
    max_tile_px: int = 2048
    optimised: bool = True
    gpu_precision: str = "float16"
    device: str = "auto"

    def validate(self) -> None:
        checks = {"threshold": self.threshold in THRESHOLD_MODES,
                  "fixed_threshold": 0 < self.fixed_threshold < 1,
                  "min_area_px": self.min_area_px >= 0, "batch_size": self.batch_size >= 1,
                  "max_tile_px": self.max_tile_px == 0 or self.max_tile_px >= 32,
                  "gpu_precision": self.gpu_precision in ("float16", "bfloat16", "float32"),
                  "device": self.device in ("auto", "cpu", "cuda")}
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"infer.{name}: invalid value {getattr(self, name)!r}")


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


def _forward(model, x: torch.Tensor, optimised: bool, amp_dtype: torch.dtype | None
             ) -> torch.Tensor:
    """Particle probability (B, H, W) float32 of normalised (B, H, W) input on the model's device."""
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
    """float32 of a device tensor; uint16 through int32 where a build lacks uint16 casts."""
    try:
        return t.to(torch.float32)
    except (RuntimeError, NotImplementedError):
        if t.dtype != torch.uint16:
            raise
        return t.view(torch.int16).to(torch.int32).bitwise_and_(0xFFFF).to(torch.float32)


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype)).dtype


def device_batches(frames: np.ndarray, batch: int, device: torch.device
                   ) -> Iterator[tuple[int, torch.Tensor]]:
    """``(b0, frames[b0:b0 + batch])`` as tensors on ``device``, in their stored dtype.

    On CUDA the frames pass through two page-locked staging buffers and are copied
    asynchronously: the host fills one buffer while the GPU still works on the other batch.
    """
    T = len(frames)
    if device.type != "cuda":
        for b0 in range(0, T, batch):
            yield b0, torch.from_numpy(np.ascontiguousarray(frames[b0:b0 + batch]))
        return
    dtype = np.dtype(frames.dtype)
    frame_bytes = int(np.prod(frames.shape[1:])) * dtype.itemsize
    staging = [torch.empty((min(batch, T), frame_bytes), dtype=torch.uint8, pin_memory=True)
               for _ in range(2)]
    uploaded: list = [None, None]
    for i, b0 in enumerate(range(0, T, batch)):
        slot, n = i % 2, min(batch, T - b0)
        if uploaded[slot] is not None:
            uploaded[slot].synchronize()         # its previous upload has left the buffer
        host = staging[slot][:n]
        host.numpy().view(dtype).reshape((n, *frames.shape[1:]))[...] = frames[b0:b0 + n]
        dev = host.to(device, non_blocking=True)
        uploaded[slot] = torch.cuda.Event()
        uploaded[slot].record()
        yield b0, dev.view(_torch_dtype(dtype)).reshape((n, *frames.shape[1:]))


def probabilities(model, frames: np.ndarray, *, arch, cfg: InferConfig, device
                  ) -> Iterator[tuple[int, torch.Tensor]]:
    """``(b0, p)`` per batch: particle probability (B, H, W) float32 on ``device`` of raw frames
    ``frames[b0:b0 + B]``.

    Raw frames travel to the device as they are stored (uint16 is half of float32) and are
    normalised there (:func:`etemseg.train.normalise_tensor`); tiles follow the model's pooling
    grid with its receptive-field halo, so tiled output equals whole-frame output.
    """
    device = torch.device(device)
    amp = amp_dtype_of(cfg, device)
    T, H, W = frames.shape
    tile = cfg.max_tile_px or max(H, W)
    m, margin = size_multiple(arch), halo(arch)
    ys, xs = tiles(H, tile, m, margin), tiles(W, tile, m, margin)
    for b0, raw in device_batches(frames, cfg.batch_size, device):
        x = normalise_tensor(_to_float(raw))
        if len(ys) == 1 and len(xs) == 1:
            yield b0, _forward(model, x, cfg.optimised, amp)
            continue
        out = torch.empty(x.shape, dtype=torch.float32, device=device)
        for y0, y1, ky0, ky1 in ys:
            for x0, x1, kx0, kx1 in xs:
                p = _forward(model, x[:, y0:y1, x0:x1], cfg.optimised, amp)
                out[:, ky0:ky1, kx0:kx1] = p[:, ky0 - y0:ky1 - y0, kx0 - x0:kx1 - x0]
        yield b0, out


def predict(model, frames: np.ndarray, *, arch, cfg: InferConfig, device) -> np.ndarray:
    """Particle probability (T, H, W) float32 of raw frames (T, H, W).

    ``model`` must come from :func:`prepare_model`. Non-finite frames are normalised to zeros
    (and the caller masks them out).
    """
    out = np.empty(frames.shape, np.float32)
    for b0, p in probabilities(model, frames, arch=arch, cfg=cfg, device=device):
        out[b0:b0 + len(p)] = p.cpu().numpy()
    return out


def histograms(q: torch.Tensor) -> torch.Tensor:
    """(B, 256) int64 histogram of each frame of a uint8 (B, H, W) tensor.

    ``histc`` with fixed bounds (unlike ``bincount``, it needs no host sync on CUDA); bin k holds
    level k exactly (bins centred on the integers).
    """
    if q[0].numel() > 2**24:   # float32 counts are exact up to 2**24 pixels
        return torch.stack([torch.bincount(f.ravel().to(torch.int64), minlength=256) for f in q])
    return torch.stack([torch.histc(f.to(torch.float32), bins=256, min=-0.5, max=255.5)
                        for f in q]).to(torch.int64)


def predict_levels(model, frames: np.ndarray, *, arch, cfg: InferConfig, device
                   ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`quantise` of :func:`predict` and the (T, 256) histogram of every frame.

    Quantised (and, on CUDA, histogrammed) on the device, so only uint8 comes back: a quarter of
    the float32 traffic. On CUDA the download of a batch overlaps the next batch's work (pinned
    buffers, one host wait per batch, one batch behind).
    """
    device = torch.device(device)
    out = np.empty(frames.shape, np.uint8)
    hist = np.empty((len(frames), 256), np.int64)
    pending: list[tuple[int, torch.Tensor, torch.Tensor, torch.cuda.Event]] = []

    def land(b0: int, q: torch.Tensor, h: torch.Tensor, done) -> None:
        done.synchronize()
        out[b0:b0 + len(q)] = q.numpy()
        hist[b0:b0 + len(q)] = h.numpy()

    for b0, p in probabilities(model, frames, arch=arch, cfg=cfg, device=device):
        q = torch.round(p * 255.0).clamp_(0, 255).to(torch.uint8)
        if device.type != "cuda":
            out[b0:b0 + len(q)] = q.numpy()
            for i, f in enumerate(out[b0:b0 + len(q)]):
                hist[b0 + i] = np.bincount(f.ravel(), minlength=256)
            continue
        host_q = torch.empty(q.shape, dtype=torch.uint8, pin_memory=True)
        host_h = torch.empty((len(q), 256), dtype=torch.int64, pin_memory=True)
        host_q.copy_(q, non_blocking=True)
        host_h.copy_(histograms(q), non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        pending.append((b0, host_q, host_h, done))
        if len(pending) > 1:
            land(*pending.pop(0))
    for item in pending:
        land(*item)
    return out, hist


def predict_quantised(model, frames: np.ndarray, *, arch, cfg: InferConfig, device
                      ) -> np.ndarray:
    """:func:`quantise` of :func:`predict`, computed on the device (see :func:`predict_levels`)."""
    return predict_levels(model, frames, arch=arch, cfg=cfg, device=device)[0]


def quantise(prob: np.ndarray) -> np.ndarray:
    """Probability [0, 1] -> uint8 0..255."""
    return np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8)


def dequantise(q: np.ndarray) -> np.ndarray:
    """uint8 0..255 -> probability float32."""
    return q.astype(np.float32) / 255.0


def otsu_level(hist: np.ndarray) -> int:
    """Otsu threshold of a 256-bin histogram of uint8 probabilities: mask is ``q > level``.

    The probabilities are stored as 256 levels, so Otsu on their histogram is exact (no binning).
    A histogram with fewer than two occupied levels gives 127 (p > 0.5).
    """
    hist = np.asarray(hist, dtype=np.float64)
    if np.count_nonzero(hist) < 2:
        return 127
    levels = np.arange(hist.size)
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * levels)
    mu0 = m0 / np.where(w0 > 0, w0, 1)
    mu1 = (m0[-1] - m0) / np.where(w1 > 0, w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    between[(w0 == 0) | (w1 == 0)] = -1
    return int(np.argmax(between))


def level_of(cfg: InferConfig) -> int:
    """Fixed threshold as a uint8 level: ``q > level`` is ``p > fixed_threshold`` (to 1/255)."""
    return int(np.floor(cfg.fixed_threshold * 255.0))


def mask_from_levels(q: np.ndarray, level: int, min_area_px: int) -> np.ndarray:
    """Binary mask (H, W) uint8 of ``q > level`` without 8-connected components (as measured)
    under ``min_area_px`` pixels."""
    return remove_small_components(q > level, min_area_px)


def infer_chunk(frames: MovieStore, prob_store: MovieStore, mask_store: MovieStore, k: int,
                model, meta: dict, cfg: InferConfig, device, *, progress: bool = False) -> dict:
    """Probabilities and masks of time chunk ``k``; returns the chunk's receipt.

    Streams one Zarr chunk of frames at a time. ``otsu_chunk`` accumulates the chunk's histogram
    while predicting, then thresholds the stored probabilities in a second pass.
    """
    arch = parse_arch(meta["name"])
    start = time.perf_counter()
    t0, t1 = frames.chunk_bounds(k)
    nonfinite, levels, coverage = [], {}, {}
    chunk_hist = np.zeros(256, np.int64)

    def write_masks(q, b0):
        masks = np.stack(list(pool.map(
            lambda i: mask_from_levels(q[i], levels[b0 + i], cfg.min_area_px), range(len(q)))))
        for i, m in enumerate(masks):
            coverage[b0 + i] = float(m.mean())
        mask_store.array[b0:b0 + len(q)] = masks

    def run(block, b0):
        bad = (~np.isfinite(block).all(axis=(1, 2)) if block.dtype.kind == "f"
               else np.zeros(len(block), bool))
        q, hists = predict_levels(model, block, arch=arch, cfg=cfg, device=device)
        q[bad] = 0
        nonfinite.extend((np.flatnonzero(bad) + b0).tolist())
        for i, hist in enumerate(hists):
            if not bad[i]:
                chunk_hist[:] += hist
            levels[b0 + i] = (level_of(cfg) if cfg.threshold == "fixed" else
                              255 if bad[i] else otsu_level(hist))
        if cfg.threshold != "otsu_chunk":
            write_masks(q, b0)
        return q

    # masks of a block's frames are filtered in threads (the filter releases the GIL)
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        map_chunk(frames, prob_store, k, run, progress=progress, desc=f"infer chunk {k}")
        if cfg.threshold == "otsu_chunk":
            level = otsu_level(chunk_hist)
            for i in levels:
                levels[i] = 255 if i in nonfinite else level
            for b0, q in prob_store.read_chunk(k):
                write_masks(q, b0)
    if nonfinite:
        log.warning("%s chunk %d: frames %s contain NaN/inf; their masks are empty",
                    frames.path, k, nonfinite)
    seconds = time.perf_counter() - start
    return {"stage": "infer", "chunk": k, "t0": t0, "t1": t1, "frames": t1 - t0,
            "model": meta["name"], "threshold_mode": cfg.threshold,
            "thresholds": [round(levels[i] / 255.0, 4) for i in sorted(levels)],
            "coverage": [round(coverage[i], 5) for i in sorted(coverage)],
            "nonfinite_frames": nonfinite, "elapsed_s": round(seconds, 3),
            "frames_per_s": round((t1 - t0) / seconds, 3), "device": str(device)}


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


def open_model(path, device: torch.device, optimised: bool):
    """Load a model file for inference: (prepared model, metadata)."""
    model, meta = load_model(path, device="cpu")
    if meta.get("normalisation", {}).get("method") != NORMALISATION["method"]:
        raise InputFileError(path, f"unknown input normalisation {meta.get('normalisation')}")
    return prepare_model(model, device, optimised), meta
