"""Frame dump -> Zarr movie store, in two steps so a long movie ingests in parallel.

1. :func:`init_store` scans the dump (names only, plus the first file's header) and creates the
   empty store with all metadata: shape, frame times and gaps, pixel size, source file of every
   frame.
2. :func:`ingest_chunk` fills time chunk ``k`` from the source files recorded in the store,
   streaming one Zarr chunk at a time, and returns a receipt (the chunk's stats) that the workflow
   tracks.

:func:`ingest` does both for a whole movie with a progress bar.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from etemseg.errors import ConfigError, EtemsegError, InputFileError, is_int, is_number
from etemseg.io.framedump import FrameSource, read_frame, scan_dump
from etemseg.protocol import ChunkStage, Receipt, run
from etemseg.scales import check_pixel_size
from etemseg.io.store import store_dtype, to_store_dtype  # noqa: F401  (their home is io)
from etemseg.io.store import (DEFAULT_CLEVEL, DEFAULT_CODEC, MovieStore, compressors_for,
                              create_store, display_path, fault_point)

log = logging.getLogger(__name__)





def check_options(*, fps: float = 400.0, pixel_size_nm: float | None = None,
                  chunk_frames: int = 400, zarr_chunk_frames: int | None = None,
                  codec: str = DEFAULT_CODEC, clevel: int = DEFAULT_CLEVEL) -> None:
    """Refuse bad ingest options before anything is read or written.

    Raises :class:`ConfigError` naming the option (the config key; the command-line option is
    the same with dashes): ``fps`` and ``pixel_size_nm`` must be finite and > 0 (``inf`` and
    ``nan`` included), ``chunk_frames`` an integer >= 1, ``zarr_chunk_frames`` an integer >= 1
    dividing it, ``codec``/``clevel`` a known codec and its level range.
    """
    if not (is_number(fps) and fps > 0):
        raise ConfigError(f"fps: must be a finite number > 0 (frames/s), got {fps!r}")
    if pixel_size_nm is not None:
        check_pixel_size(pixel_size_nm, "pixel_size_nm")
    if not (is_int(chunk_frames) and chunk_frames >= 1):
        raise ConfigError(f"chunk_frames: must be an integer >= 1, got {chunk_frames!r}")
    if zarr_chunk_frames is not None:
        if not (is_int(zarr_chunk_frames) and zarr_chunk_frames >= 1):
            raise ConfigError(f"zarr_chunk_frames: must be an integer >= 1, got "
                              f"{zarr_chunk_frames!r}")
        if chunk_frames % zarr_chunk_frames:
            raise ConfigError(f"zarr_chunk_frames: {zarr_chunk_frames} must divide chunk_frames "
                              f"({chunk_frames}) so that jobs never share a Zarr chunk")
    compressors_for(codec, clevel)  # ConfigError for an unknown codec or a level out of range


def init_store(src: str | Path, out: str | Path, *, fps: float = 400.0,
               pixel_size_nm: float | None = None, chunk_frames: int = 400,
               zarr_chunk_frames: int | None = None, codec: str = DEFAULT_CODEC,
               clevel: int = DEFAULT_CLEVEL) -> MovieStore:
    """Scan frame dump ``src`` and create the empty movie store ``out``.

    Parameters
    ----------
    src : path
        Folder of frames (.dm4/.dm3/.tif/.tiff/.npy; K2 names give times and gaps).
    out : path
        Store to create (``*.zarr``); replaced atomically if it exists.
    fps : float
        Camera frame rate, frames/s (K2-IS: 400).
    pixel_size_nm : float, optional
        Override of the pixel size, nm/px; default: the first file's calibration.
    chunk_frames : int
        Frames per time chunk (one job each); default one second at 400 fps.
    """
    check_options(fps=fps, pixel_size_nm=pixel_size_nm, chunk_frames=chunk_frames,
                  zarr_chunk_frames=zarr_chunk_frames, codec=codec, clevel=clevel)
    index = scan_dump(src, fps=fps)
    if pixel_size_nm is not None:
        calibrated = index.pixel_size_nm
        if calibrated is not None and not np.isclose(calibrated, pixel_size_nm, rtol=0.01):
            log.warning("pixel size override %.4g nm replaces the file calibration %.4g nm",
                        pixel_size_nm, calibrated)
    else:
        pixel_size_nm = index.pixel_size_nm
        if pixel_size_nm is not None:
            try:
                check_pixel_size(pixel_size_nm, "pixel size")
            except ConfigError as exc:
                raise InputFileError(index.sources[0].path, f"calibration: {exc}; give the "
                                     "right one with --pixel-size-nm (config: "
                                     "movies.NAME.pixel_size_nm)") from None
        if pixel_size_nm is None:
            log.warning("%s: no pixel size calibration in %s and no override; sizes stay in px",
                        index.root, index.sources[0].path.name)
    root = index.root.resolve()
    create_store(
        out, n_frames=len(index.sources), frame_shape=index.shape,
        dtype=store_dtype(index.dtype), chunk_frames=chunk_frames, fps=fps,
        pixel_size_nm=pixel_size_nm, time_s=index.time_s, frame_index=index.frame_index,
        sources=[str(s.path.resolve().relative_to(root)) for s in index.sources],
        source_pages=[s.page for s in index.sources], codec=codec, clevel=clevel,
        zarr_chunk_frames=zarr_chunk_frames,
        attrs={"stage": "ingest", "source": str(root), "source_dtype": str(index.dtype),
               "naming": index.naming,
               "gaps": [[int(a), int(n)] for a, n in index.gaps],
               "n_missing_frames": int(sum(n for _, n in index.gaps))})
    return MovieStore.open(out, mode="r+")


def ingest_chunk(out: str | Path | MovieStore, k: int, *, progress: bool = False) -> dict:
    """Fill time chunk ``k`` of an initialised store from its recorded source files.

    Streams one Zarr chunk at a time (memory bounded by one Zarr chunk). Returns the receipt: frame
    range, source files, intensity stats (in counts) and the elapsed time.
    """
    store = out if isinstance(out, MovieStore) else MovieStore.open(out, mode="r+")
    root = Path(store.meta["source"])
    t0, t1 = store.chunk_bounds(k)
    sources = store.group["sources"][t0:t1]
    pages = store.group["source_pages"][t0:t1]
    index = store.frame_index()[t0:t1]
    dtype = store.array.dtype
    shape = store.frame_shape
    start = time.perf_counter()
    lo, hi, total, nonfinite = np.inf, -np.inf, 0.0, 0
    bar = tqdm(total=t1 - t0, desc=f"ingest chunk {k}", unit="frame", disable=not progress)
    for n_block, (b0, b1) in enumerate(store.blocks(k), start=1):
        block = np.empty((b1 - b0,) + shape, dtype=dtype)
        for i in range(b0, b1):
            j = i - t0
            src = FrameSource(path=root / str(sources[j]), page=int(pages[j]), index=int(index[j]))
            block[i - b0] = to_store_dtype(read_frame(src, expect_shape=shape), dtype, src.path)
            bar.update(1)
        finite = np.isfinite(block) if dtype.kind == "f" else None
        if finite is not None:
            nonfinite += int(block.size - finite.sum())
            vals = block[finite]
        else:
            vals = block
        if vals.size:
            lo, hi = min(lo, float(vals.min())), max(hi, float(vals.max()))
            total += float(vals.sum(dtype=np.float64))
        store.array[b0:b1] = block
        fault_point("ingest", k, n_block)
    bar.close()
    if nonfinite:
        log.warning("chunk %d of %s: %d non-finite pixels (NaN/inf) in the source", k,
                    display_path(store.path), nonfinite)
    n_px = (t1 - t0) * shape[0] * shape[1] - nonfinite
    return {
        "stage": "ingest", "store": str(display_path(store.path)), "chunk": k, "t0": t0, "t1": t1,
        "frames": t1 - t0, "first_source": str(sources[0]), "last_source": str(sources[-1]),
        "min_counts": lo, "max_counts": hi, "mean_counts": total / max(n_px, 1),
        "nonfinite_pixels": nonfinite, "elapsed_s": round(time.perf_counter() - start, 3),
    }


def ingest(src: str | Path, out: str | Path, *, progress: bool = True, **options) -> MovieStore:
    """Ingest a whole frame dump into ``out`` (init + every chunk; :func:`etemseg.protocol.run`).

    The store is assembled under a temporary name and renamed onto ``out`` only when complete, so a
    failure (corrupt frame, wrong shape) leaves an existing ``out`` untouched; ``out`` may only
    replace a previous frame store, never the dump or anything else.
    """
    run(IngestStage(src, out, progress=progress, **options))
    return MovieStore.open(out)


class IngestStage(ChunkStage):
    """``etemseg ingest`` as a per-chunk stage (see :mod:`etemseg.protocol`).

    Parameters
    ----------
    src : path
        Frame dump folder.
    out : path
        The frame store (``results/{movie}/frames.zarr``).
    progress : bool
        Progress bars.
    **options
        Store options of :func:`init_store` (fps, pixel_size_nm, chunk_frames, ...).
    """

    name = "ingest"

    def __init__(self, src: str | Path, out: str | Path, *, progress: bool = False, **options):
        self.src, self.out, self.progress, self.options = Path(src), Path(out), progress, options

    def inputs(self) -> list[Path]:
        return [self.src]

    def outputs(self) -> dict[Path, str]:
        return {self.out: "ingest"}

    def create(self, paths: dict[Path, Path]) -> None:
        store = init_store(self.src, paths[self.out], **self.options)
        log.info("created %s: %d frames %s in %d chunks, pixel size %s nm", self.out,
                 store.n_frames, store.frame_shape, store.n_chunks, store.pixel_size_nm)

    def n_chunks(self, paths: dict[Path, Path]) -> int:
        return MovieStore.open(paths[self.out]).n_chunks

    def run_chunk(self, k: int, paths: dict[Path, Path] | None = None) -> Receipt:
        store = MovieStore.open((paths or {}).get(self.out, self.out), mode="r+")
        if paths is None:        # an existing store: it must be a frame store of this dump
            if store.meta.get("stage", "ingest") != "ingest" or "source" not in store.meta:
                raise EtemsegError(f"{self.out}: not a frame store written by `etemseg ingest "
                                   f"--init` (stage {store.meta.get('stage')!r})")
            recorded = Path(store.meta["source"])
            if self.src.resolve() != recorded:
                raise EtemsegError(f"{self.out}: store was initialised from {recorded}, "
                                   f"not {self.src}")
        return Receipt.from_dict(ingest_chunk(store, k, progress=self.progress))
