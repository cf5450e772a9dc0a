"""Inference: particle probability and masks for full frames, one time chunk per job.

The design, the evidence for its constants and its limits: ``docs/inference.md``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from etemseg.levels import EMPTY_LEVEL, otsu_split
from etemseg.nn.device import pick_device
from etemseg.nn.inference import (MIN_SEPARATION, InferConfig, mask_from_levels,  # noqa: F401
                                  mask_into, open_model, stream_levels)
from etemseg.protocol import ChunkStage, Receipt
from etemseg.nn.models import parse_arch, work_factor_of
from etemseg.io.store import (BlockWriter, MovieStore, frames_in_window, map_chunk,
                              read_chunk_ahead)

log = logging.getLogger(__name__)


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


#: ``(store, min_area_nm2)`` already warned about in this process (one warning per movie).
_UNCALIBRATED_WARNED: set[tuple[str, float]] = set()


def resolve_min_area(cfg: InferConfig, frames: MovieStore, work_factor: int = 1
                     ) -> InferConfig:
    """``cfg`` with ``min_area_px`` the minimum area applied to the movie ``frames`` by a model
    of work factor ``work_factor``.

    ``min_area_nm2`` (when set) wins on a calibrated store: ``round(min_area_nm2 / ps**2)`` px
    (:meth:`InferConfig.min_area_px_at`). A store without a pixel size keeps ``min_area_px``,
    with a warning once per store and process. Else ``min_area_px`` working pixels of the model
    (``min_area_px * work_factor**2`` px). Resolving twice gives the same config at work factor
    1; resolve the settings as given (every caller does).
    """
    ps = frames.pixel_size_nm
    if cfg.min_area_nm2 is not None and not ps:
        key = (str(frames.path), float(cfg.min_area_nm2))
        if key not in _UNCALIBRATED_WARNED:
            _UNCALIBRATED_WARNED.add(key)
            log.warning("%s: no pixel size, so infer.min_area_nm2 = %g nm² cannot be converted; "
                        "using infer.min_area_px = %d px instead", frames.path,
                        cfg.min_area_nm2, cfg.min_area_px)
    return dataclasses.replace(cfg, min_area_px=cfg.min_area_px_at(ps, work_factor))


class _ChunkMasks:
    """The threshold levels, masks and coverage of one time chunk's frames, block by block.

    Masks of a block's frames are filtered in ``pool`` (the filter releases the GIL) and written
    (encoded) by ``writer`` in the background while the next blocks are segmented; the writer
    bounds the blocks in flight, so memory stays bounded.
    """

    def __init__(self, store: MovieStore, cfg: InferConfig, pool: Executor,
                 writer: BlockWriter, float_frames: bool = True) -> None:
        self.store, self.cfg, self.pool, self.writer = store, cfg, pool, writer
        self.float_frames = float_frames          # frames may hold NaN/inf: check each block
        self.levels: dict[int, int] = {}          # frame -> threshold level
        self.coverage: dict[int, float] = {}      # frame -> mask fraction
        self.nonfinite: list[int] = []            # frames with NaN/inf pixels
        self.blank: list[int] = []                # featureless frames
        self.chunk_hist = np.zeros(256, np.int64)  # levels of the frames with structure
        self._bad: dict[int, np.ndarray] = {}

    def flag_nonfinite(self, blocks: Iterable[tuple[int, np.ndarray]]
                       ) -> Iterator[tuple[int, np.ndarray]]:
        """Pass ``(b0, frames)`` blocks on, noting which frames hold NaN/inf pixels."""
        for b0, block in blocks:
            self._bad[b0] = (~np.isfinite(block).all(axis=(1, 2)) if self.float_frames
                             else np.zeros(len(block), bool))
            yield b0, block

    def add_block(self, b0: int, q: np.ndarray, hists: np.ndarray) -> None:
        """Set the level of each frame of the block at ``b0`` from its histogram.

        Non-finite frames get level :data:`EMPTY_LEVEL` (and ``q`` 0); in the Otsu modes
        featureless frames too, and the others add their histograms to :attr:`chunk_hist`.
        """
        cfg = self.cfg
        bad = self._bad.pop(b0)
        q[bad] = 0
        self.nonfinite.extend((np.flatnonzero(bad) + b0).tolist())
        for i, hist in enumerate(hists):
            if cfg.threshold == "fixed":
                self.levels[b0 + i] = level_of(cfg)
            elif bad[i]:
                self.levels[b0 + i] = EMPTY_LEVEL
            else:
                level, separation = otsu_split(hist)
                if separation < cfg.min_separation:
                    self.blank.append(b0 + i)
                    level = EMPTY_LEVEL
                else:    # featureless frames would drag the chunk's threshold into noise
                    self.chunk_hist[:] += hist
                self.levels[b0 + i] = level

    def use_chunk_level(self) -> None:
        """``otsu_chunk``: one level for every frame that is neither non-finite nor featureless,
        the Otsu level of :attr:`chunk_hist`; all empty when that histogram is featureless."""
        level, separation = otsu_split(self.chunk_hist)
        skip = set(self.nonfinite) | set(self.blank)
        if separation < self.cfg.min_separation:     # the other frames together: featureless
            self.blank.extend(i for i in sorted(self.levels) if i not in skip)
            level = EMPTY_LEVEL
        for i in self.levels:
            self.levels[i] = EMPTY_LEVEL if i in skip else level

    def write(self, q: np.ndarray, b0: int) -> None:
        """Threshold the levels ``q`` of the block at ``b0`` and write its masks."""
        masks = np.zeros(q.shape, np.uint8)
        kept = self.pool.map(
            lambda i: mask_into(q[i], self.levels[b0 + i], self.cfg.min_area_px, masks[i],
                              self.cfg.hysteresis),
            range(len(q)))
        for i, n in enumerate(kept):
            self.coverage[b0 + i] = float(n) / masks[i].size
        self.writer.submit(b0, masks)


def _warn_empty(frames: MovieStore, k: int, chunk: _ChunkMasks, n_frames: int,
                cfg: InferConfig) -> None:
    """One warning per kind of frame whose mask was emptied (non-finite, featureless)."""
    if chunk.nonfinite:
        log.warning("%s chunk %d: frames %s contain NaN/inf; their masks are empty",
                    frames.path, k, chunk.nonfinite)
    if chunk.blank:
        log.warning("%s chunk %d: %d of %d frames are featureless (blank, constant or pure "
                    "noise: the two Otsu classes of %s particle probabilities are less than "
                    "%.2f apart): frames %s; their masks are empty", frames.path, k,
                    len(chunk.blank), n_frames, "each frame's (or the chunk's other frames')"
                    if cfg.threshold == "otsu_chunk" else "each frame's",
                    cfg.min_separation, _frame_ranges(chunk.blank))


def input_window(meta: dict, frames: MovieStore) -> int:
    """Frames averaged into each input frame: the temporal window of the model's training data
    (its ``data.window_ms``, :mod:`etemseg.nn.training`) at the frame rate of ``frames``; 1 for
    models trained on single frames."""
    return frames_in_window(float((meta.get("data") or {}).get("window_ms") or 0.0), frames.fps)


def infer_chunk(frames: MovieStore, prob_store: MovieStore, mask_store: MovieStore, k: int,
                model, meta: dict, cfg: InferConfig, device, *, progress: bool = False) -> dict:
    """Probabilities and masks of time chunk ``k``; returns the chunk's receipt.

    Streams one Zarr chunk of frames at a time through
    :func:`etemseg.nn.inference.stream_levels`, with the host work off the critical path: up to
    :data:`MAX_IO_BLOCKS` blocks of frames are decoded ahead and as many blocks of probabilities
    and of masks encoded behind, each in its own thread, and the masks of a block are filtered in
    ``torch.get_num_threads()`` threads. ``otsu_chunk`` accumulates the chunk's histogram
    while predicting, then thresholds the stored probabilities in a second pass.

    Frames with NaN/inf pixels and featureless frames (Otsu modes, see
    :attr:`InferConfig.min_separation`) get empty masks (threshold 1.0 in the receipt) and one
    warning per chunk each; the receipt counts the latter in ``blank_frames``.

    ``cfg.min_area_nm2`` is converted with the pixel size of ``frames``, ``min_area_px`` counted in
    the model's working pixels (:func:`resolve_min_area`); the receipt records the px value
    applied (``min_area_px``) and ``min_area_nm2``.

    A model trained on temporal means of the frames (its ``window_ms``) sees the same means here
    (:func:`input_window`; ``window_frames`` in the receipt). A model trained at a coarser working
    pixel size runs at the factor of its model file (``work_factor`` in the receipt); its masks
    have the frames' full resolution.
    """
    cfg = resolve_min_area(cfg, frames, work_factor_of(model))
    arch = parse_arch(meta["name"])
    window = input_window(meta, frames)
    start = time.perf_counter()
    t0, t1 = frames.chunk_bounds(k)
    threads = max(1, torch.get_num_threads())
    io = min(threads, MAX_IO_BLOCKS)
    with ThreadPoolExecutor(threads) as pool, \
            BlockWriter(mask_store.array, io, name="etemseg-masks") as writer:
        # only float frames can hold NaN/inf (temporal means of integer counts are finite)
        chunk = _ChunkMasks(mask_store, cfg, pool, writer,
                            float_frames=frames.array.dtype.kind == "f")

        def run(blocks):
            for b0, q, hists in stream_levels(model, chunk.flag_nonfinite(blocks), arch=arch,
                                              cfg=cfg, device=device):
                chunk.add_block(b0, q, hists)
                if cfg.threshold != "otsu_chunk":
                    chunk.write(q, b0)
                yield b0, q

        waits: dict = {}
        map_chunk(frames, prob_store, k, run, progress=progress, desc=f"infer chunk {k}",
                  stream=True, io_threads=io, window=window, waits=waits)
        if cfg.threshold == "otsu_chunk":
            chunk.use_chunk_level()
            for b0, q in read_chunk_ahead(prob_store, k, io, waits=waits):
                chunk.write(q, b0)
        writer.wait()
    _warn_empty(frames, k, chunk, t1 - t0, cfg)
    seconds = time.perf_counter() - start
    levels, coverage = chunk.levels, chunk.coverage
    return {"stage": "infer", "chunk": k, "t0": t0, "t1": t1, "frames": t1 - t0,
            "model": meta["name"], "threshold_mode": cfg.threshold,
            "min_area_px": cfg.min_area_px, "min_area_nm2": cfg.min_area_nm2,
            "thresholds": [round(levels[i] / 255.0, 4) for i in sorted(levels)],
            "coverage": [round(coverage[i], 5) for i in sorted(coverage)],
            "nonfinite_frames": chunk.nonfinite, "blank_frames": len(chunk.blank),
            "window_frames": window, "work_factor": work_factor_of(model),
            "elapsed_s": round(seconds, 3),
            # where the time went: waiting for frames (reads, decoding, temporal means) and for
            # the probability and mask writes (encoding); the rest is the network and thresholds
            "read_wait_s": round(waits["read_wait_s"], 3),
            "write_wait_s": round(waits["write_wait_s"] + writer.waited_s, 3),
            "frames_per_s": round((t1 - t0) / seconds, 3), "device": str(device)}


#: Most Zarr blocks decoded ahead, and written behind, per store (one thread each; at most
#: ``torch.get_num_threads()``). At 1792x1920 one block of 8 frames is 55 MB of uint16 frames;
#: one core decodes ~110 and encodes ~110 frames/s of probabilities (benchmarks/infer_host.py),
#: so 400 frames/s on a GPU node needs about 4 of each.
MAX_IO_BLOCKS = 8

#: Codec and level of the probability and mask stores, whatever the frames use: plain Zstandard
#: at level 1. On uint8 probabilities it encodes 3.5x faster than the frames' default (Blosc-Zstd
#: level 3 with bit-shuffle, which suits uint16 counts, not uint8 levels) into 20 % fewer bytes;
#: on masks 2.7x faster for 1.6x the bytes (~70 kB per 1792x1920 frame).
#: ``python benchmarks/infer_host.py`` measures both.
OUTPUT_CODEC = ("zstd", 1)


def create_outputs(frames: MovieStore, prob: Path, mask: Path, attrs: dict
                   ) -> tuple[MovieStore, MovieStore]:
    """Create the (empty) probability and mask stores of ``frames`` (shape, chunking, times and
    pixel size of the movie; :data:`OUTPUT_CODEC`); returns them opened for writing."""
    codec, clevel = OUTPUT_CODEC
    p = frames.like(prob, np.uint8, codec=codec, clevel=clevel, attrs={
        **attrs, "stage": "infer-probability", "values": "particle probability = value / 255"})
    m = frames.like(mask, np.uint8, codec=codec, clevel=clevel, label=True, attrs={
        **attrs, "stage": "infer-mask", "values": "1 = particle, 0 = background"})
    return p, m


class InferStage(ChunkStage):
    """``etemseg infer`` as a per-chunk stage (see :mod:`etemseg.protocol`): two outputs,
    ``OUT/prob.zarr`` (uint8, p = value / 255) and ``OUT/mask.zarr`` (0/1).

    The model file is checked (:func:`etemseg.nn.checkpoint.load_model`) when the stage is built,
    so a bad model is refused before any store is created; the network is opened only for the
    chunks.

    Both stores' ``infer`` attribute holds the settings as applied to this movie: ``min_area_px``
    is the px value used (``min_area_nm2`` converted with the frame store's pixel size, see
    :func:`resolve_min_area`), ``min_area_nm2`` the nm² value asked for (None: none).
    """

    name = "infer"

    def __init__(self, frames, model, out, *, cfg: InferConfig, expect: str | None = None,
                 progress: bool = False):
        from etemseg.nn.checkpoint import load_model, work_factor_of_meta

        self.frames, self.model_path, self.out = Path(frames), Path(model), Path(out)
        self.cfg, self.progress = cfg, progress
        self.device = pick_device(cfg.device)
        _, meta = load_model(self.model_path, expect=expect)   # refuse bad models first
        self.attrs = {"model": meta["name"], "model_file": str(self.model_path),
                      "work_factor": work_factor_of_meta(meta, self.model_path)}
        self.prob, self.mask = self.out / "prob.zarr", self.out / "mask.zarr"
        self._net = None

    def inputs(self) -> list[Path]:
        return [self.frames, self.model_path]

    def outputs(self) -> dict[Path, str]:
        return {self.prob: "infer-probability", self.mask: "infer-mask"}

    def create(self, paths) -> None:
        frames = MovieStore.open(self.frames)
        attrs = {**self.attrs, "infer": dataclasses.asdict(
            resolve_min_area(self.cfg, frames, self.attrs["work_factor"]))}
        create_outputs(frames, paths[self.prob], paths[self.mask], attrs)

    def n_chunks(self, paths) -> int:
        return MovieStore.open(self.frames).n_chunks

    def run_chunk(self, k: int, paths=None) -> Receipt:
        if self._net is None:
            self._net = open_model(self.model_path, self.device, self.cfg.optimised)
        model, meta = self._net
        paths = paths or {p: p for p in self.outputs()}
        result = infer_chunk(MovieStore.open(self.frames), MovieStore.open(paths[self.prob], "r+"),
                             MovieStore.open(paths[self.mask], "r+"), k, model, meta, self.cfg,
                             self.device, progress=self.progress)
        return Receipt.from_dict(result, store=str(self.out))
