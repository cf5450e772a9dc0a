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

Featureless frames. Otsu always splits a histogram somewhere, so without a check a blank frame
(beam off, constant, pure shot noise: per-frame standardisation turns the noise of an empty
frame into unit-variance texture) becomes particle wherever the model's response to the noise
is highest: up to 2 % of the frame for demo-trained CNNs, 23 % for the single filter, all of it
for a constant frame whose constant probability exceeds 0.5. As ``etemseg pseudolabel`` does
for frames without particles (its noise floor), inference returns an *empty* mask for such a
frame and logs one warning per chunk naming the frames: in the ``otsu_*`` modes a frame is
featureless when the two classes of its Otsu split have mean probabilities less than
``min_separation`` (default :data:`MIN_SEPARATION` = 0.4) apart, or when its probabilities take
fewer than two values. 0.4 lies above every blank frame measured (at most 0.38) and below the
sparse frames that still hold particles (0.47 and up, see below). ``otsu_chunk`` leaves the
featureless frames out of the chunk's histogram (half blank frames would otherwise drag the
chunk's threshold into their noise and empty or flood the frames with particles) and judges the
remaining frames' histogram the same way: if it is featureless, the whole chunk is empty.

Evidence (quantised probabilities of 512 x 512 frames, models trained with the demo settings on
the demo movie; ``separation`` = upper minus lower Otsu class mean): demo frames 0.72-0.73
(single-filter), 0.88-0.94 (shallow-wide, unet4, unet4-norm); pure Poisson noise (doses 5 to
2000, and Gaussian float noise, which standardisation makes identical) at most 0.17
(single-filter), 0.14 (shallow-wide), 0.03 (unet4), 0.26 (unet4-norm), rising to 0.38 for
unet4-norm on 64 x 64 noise frames (fewer pixels, more border); constant frames (all 0, all
1000) at most 0.07; untrained models of every family on noise at most 0.22 (single-filter).
Briefly trained test models: shallow-wide of ``tests/test_infer.py`` 0.82-0.86 on its frames,
at most 0.32 on noise; the workflow test's (2 epochs of 4 crops) 0.58-0.60 on its frames.
The price: frames whose histogram is noise-like although they hold a few faint particles are
emptied too, in both Otsu modes (e.g. 1-10 particles at contrast 0.2 and dose 20 per
512 x 512 frame: separation 0.03-0.44 with every model; the single filter on 1-10
demo-contrast particles, 0.47-0.49, is kept), and so is
every frame of an untrained model (separation < 0.25 whatever the frame); set
``min_separation=0`` to keep every Otsu mask.
Frames whose *background* has structure (strong illumination gradient or support texture, no
particles) are not featureless by this measure (separation up to 0.84) and still give masks.

The ``fixed`` mode applies no such check: the user chose the threshold, and every frame's mask
is ``p > fixed_threshold`` whatever the frame holds (a constant frame whose constant
probability exceeds the threshold is all particle).
"""

from __future__ import annotations

import collections
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch

from etemseg.errors import ConfigError, InputFileError
from etemseg.nn.models import fuse_for_inference, halo, parse_arch, size_multiple
from etemseg.stages.pseudolabel import remove_small_components
from etemseg.io.store import MovieStore, map_chunk
from etemseg.stages.train import NORMALISATION, load_model, normalise_tensor

log = logging.getLogger(__name__)

THRESHOLD_MODES = ("fixed", "otsu_frame", "otsu_chunk")
#: Default ``InferConfig.min_separation``: Otsu class means closer than this (probability) mean
#: the frame (chunk) has no particle/background structure; its mask is empty.
MIN_SEPARATION = 0.4
#: Threshold level of an empty mask (``q > 255`` is never true).
EMPTY_LEVEL = 255


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
    min_separation: float = MIN_SEPARATION
    min_area_px: int = 20
    batch_size: int = 4
    max_tile_px: int = 2048
    optimised: bool = True
    gpu_precision: str = "float16"
    device: str = "auto"

    def validate(self) -> None:
        checks = {"threshold": self.threshold in THRESHOLD_MODES,
                  "fixed_threshold": 0 < self.fixed_threshold < 1,
                  "min_separation": 0 <= self.min_separation < 1,
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
    normalised there (:func:`etemseg.stages.train.normalise_tensor`); tiles follow the model's pooling
    grid with its receptive-field halo, so tiled output equals whole-frame output.
    """
    device = torch.device(device)
    amp = amp_dtype_of(cfg, device)
    m, margin = size_multiple(arch), halo(arch)
    for raw in upload(batches, device):
        x = normalise_tensor(_to_float(raw))
        H, W = x.shape[1:]
        tile = cfg.max_tile_px or max(H, W)
        ys, xs = tiles(H, tile, m, margin), tiles(W, tile, m, margin)
        if len(ys) == 1 and len(xs) == 1:
            yield _forward(model, x, cfg.optimised, amp)
            continue
        out = torch.empty(x.shape, dtype=torch.float32, device=device)
        for y0, y1, ky0, ky1 in ys:
            for x0, x1, kx0, kx1 in xs:
                p = _forward(model, x[:, y0:y1, x0:x1], cfg.optimised, amp)
                out[:, ky0:ky1, kx0:kx1] = p[:, ky0 - y0:ky1 - y0, kx0 - x0:kx1 - x0]
        yield out


def _split(frames: np.ndarray, batch: int) -> Iterator[np.ndarray]:
    for b0 in range(0, len(frames), batch):
        yield frames[b0:b0 + batch]


def predict(model, frames: np.ndarray, *, arch, cfg: InferConfig, device) -> np.ndarray:
    """Particle probability (T, H, W) float32 of raw frames (T, H, W).

    ``model`` must come from :func:`prepare_model`. Non-finite frames are normalised to zeros
    (and the caller masks them out).
    """
    out = np.empty(frames.shape, np.float32)
    b0 = 0
    for p in probabilities(model, _split(frames, cfg.batch_size), arch=arch, cfg=cfg,
                           device=device):
        out[b0:b0 + len(p)] = p.cpu().numpy()
        b0 += len(p)
    return out


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
    probability (:func:`quantise` of :func:`predict`, uint8) and each frame's 256-bin histogram.

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


def predict_levels(model, frames: np.ndarray, *, arch, cfg: InferConfig, device
                   ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`quantise` of :func:`predict` and the (T, 256) histogram of every frame, computed on
    the device (see :func:`stream_levels`)."""
    (_, q, hist), = stream_levels(model, [(0, frames)], arch=arch, cfg=cfg, device=device)
    return q, hist


def quantise(prob: np.ndarray) -> np.ndarray:
    """Probability [0, 1] -> uint8 0..255."""
    return np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8)


def dequantise(q: np.ndarray) -> np.ndarray:
    """uint8 0..255 -> probability float32."""
    return q.astype(np.float32) / 255.0


def otsu_split(hist: np.ndarray) -> tuple[int, float]:
    """Otsu threshold of a 256-bin histogram of uint8 probabilities and how far apart its two
    classes lie: ``(level, separation)``, mask is ``q > level``.

    The probabilities are stored as 256 levels, so Otsu on their histogram is exact (no binning).
    ``separation`` is the mean probability of the upper class minus that of the lower one
    (0..1); a histogram with fewer than two occupied levels gives ``(127, 0.0)`` (p > 0.5).
    """
    hist = np.asarray(hist, dtype=np.float64)
    if np.count_nonzero(hist) < 2:
        return 127, 0.0
    levels = np.arange(hist.size)
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * levels)
    mu0 = m0 / np.where(w0 > 0, w0, 1)
    mu1 = (m0[-1] - m0) / np.where(w1 > 0, w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    between[(w0 == 0) | (w1 == 0)] = -1
    level = int(np.argmax(between))
    return level, float(mu1[level] - mu0[level]) / 255.0


def otsu_level(hist: np.ndarray) -> int:
    """Otsu threshold of a 256-bin histogram of uint8 probabilities: mask is ``q > level``.

    A histogram with fewer than two occupied levels gives 127 (p > 0.5). See :func:`otsu_split`.
    """
    return otsu_split(hist)[0]


def _frame_ranges(frames: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"`` (sorted frame indices, for log lines)."""
    runs: list[list[int]] = []
    for i in sorted(frames):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


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

    Frames with NaN/inf pixels and featureless frames (Otsu modes, see
    :attr:`InferConfig.min_separation`) get empty masks (threshold 1.0 in the receipt) and one
    warning per chunk each; the receipt counts the latter in ``blank_frames``.
    """
    arch = parse_arch(meta["name"])
    start = time.perf_counter()
    t0, t1 = frames.chunk_bounds(k)
    nonfinite, blank, levels, coverage = [], [], {}, {}
    chunk_hist = np.zeros(256, np.int64)

    def write_masks(q, b0):
        masks = np.stack(list(pool.map(
            lambda i: mask_from_levels(q[i], levels[b0 + i], cfg.min_area_px), range(len(q)))))
        for i, m in enumerate(masks):
            coverage[b0 + i] = float(m.mean())
        if mask_write[0] is not None:    # one block in flight: memory stays bounded
            mask_write[0].result()
        mask_write[0] = writer.submit(mask_store.array.__setitem__, slice(b0, b0 + len(q)), masks)

    def run(blocks):
        for b0, q, hists in stream_levels(model, _flag_nonfinite(blocks), arch=arch, cfg=cfg,
                                          device=device):
            bad = bad_frames.pop(b0)
            q[bad] = 0
            nonfinite.extend((np.flatnonzero(bad) + b0).tolist())
            for i, hist in enumerate(hists):
                if cfg.threshold == "fixed":
                    levels[b0 + i] = level_of(cfg)
                elif bad[i]:
                    levels[b0 + i] = EMPTY_LEVEL
                else:
                    level, separation = otsu_split(hist)
                    if separation < cfg.min_separation:
                        blank.append(b0 + i)
                        level = EMPTY_LEVEL
                    else:    # featureless frames would drag the chunk's threshold into noise
                        chunk_hist[:] += hist
                    levels[b0 + i] = level
            if cfg.threshold != "otsu_chunk":
                write_masks(q, b0)
            yield b0, q

    def _flag_nonfinite(blocks):
        for b0, block in blocks:
            bad_frames[b0] = (~np.isfinite(block).all(axis=(1, 2)) if block.dtype.kind == "f"
                              else np.zeros(len(block), bool))
            yield b0, block

    bad_frames: dict[int, np.ndarray] = {}
    mask_write: list = [None]
    # masks of a block's frames are filtered in threads (the filter releases the GIL) and
    # written (encoded) in the background while the next block is segmented
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool, \
            ThreadPoolExecutor(1, thread_name_prefix="etemseg-masks") as writer:
        map_chunk(frames, prob_store, k, run, progress=progress, desc=f"infer chunk {k}",
                  stream=True)
        if cfg.threshold == "otsu_chunk":
            level, separation = otsu_split(chunk_hist)
            skip = set(nonfinite) | set(blank)
            if separation < cfg.min_separation:     # the other frames together: featureless
                blank.extend(i for i in sorted(levels) if i not in skip)
                level = EMPTY_LEVEL
            for i in levels:
                levels[i] = EMPTY_LEVEL if i in skip else level
            for b0, q in prob_store.read_chunk(k):
                write_masks(q, b0)
        if mask_write[0] is not None:
            mask_write[0].result()
    if nonfinite:
        log.warning("%s chunk %d: frames %s contain NaN/inf; their masks are empty",
                    frames.path, k, nonfinite)
    if blank:
        log.warning("%s chunk %d: %d of %d frames are featureless (blank, constant or pure "
                    "noise: the two Otsu classes of %s particle probabilities are less than "
                    "%.2f apart): frames %s; their masks are empty", frames.path, k, len(blank),
                    t1 - t0, "each frame's (or the chunk's other frames')"
                    if cfg.threshold == "otsu_chunk" else "each frame's",
                    cfg.min_separation, _frame_ranges(blank))
    seconds = time.perf_counter() - start
    return {"stage": "infer", "chunk": k, "t0": t0, "t1": t1, "frames": t1 - t0,
            "model": meta["name"], "threshold_mode": cfg.threshold,
            "thresholds": [round(levels[i] / 255.0, 4) for i in sorted(levels)],
            "coverage": [round(coverage[i], 5) for i in sorted(coverage)],
            "nonfinite_frames": nonfinite, "blank_frames": len(blank),
            "elapsed_s": round(seconds, 3),
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
