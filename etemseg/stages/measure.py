"""The ``measure`` stage: particle table of one time chunk of a mask store.

:func:`measure_chunk` streams the chunk's mask and raw frame stores one Zarr block at a time
through :func:`etemseg.analysis.measure.measure_stack` (connected components -> one row per
particle per frame). The array-level measurement, the table schema (``COLUMNS``, ``SCHEMA``,
``UNITS``) and the Parquet helpers live in :mod:`etemseg.analysis.measure`; the CLI writes the
result with :func:`etemseg.analysis.measure.write_parquet`.

The minimum component area is physical when ``min_area_nm2`` is given: it is converted with the
movie's pixel size (:func:`resolve_min_area`) and wins over ``min_area_px``; an uncalibrated movie
falls back to ``min_area_px`` with a warning.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd

from etemseg.scales import area_px
from etemseg.analysis.measure import empty_table, measure_stack
from etemseg.errors import ConfigError, InputFileError, is_number
from etemseg.io.store import MovieStore

__all__ = ["measure_chunk", "open_stores", "resolve_min_area"]

log = logging.getLogger(__name__)

#: ``(movie, min_area_nm2)`` already warned about in this process (one warning per movie).
_UNCALIBRATED_WARNED: set[tuple[str, float]] = set()


def resolve_min_area(min_area_px: int, min_area_nm2: float | None,
                     pixel_size_nm: float | None, *, movie: str = "") -> int:
    """The minimum component area in px: ``round(min_area_nm2 / pixel_size_nm**2)`` when both
    are set, else ``min_area_px`` (with a warning, once per ``movie`` and process, when
    ``min_area_nm2`` is set but the movie has no pixel size).

    Raises :class:`ConfigError` naming ``measure.min_area_nm2`` when it is negative, NaN or
    infinite.
    """
    if min_area_nm2 is None:
        return int(min_area_px)
    if not (is_number(min_area_nm2) and min_area_nm2 >= 0):
        raise ConfigError(f"measure.min_area_nm2: must be a finite number >= 0 (nm²), got "
                          f"{min_area_nm2!r}")
    if not pixel_size_nm:
        key = (movie, float(min_area_nm2))
        if key not in _UNCALIBRATED_WARNED:
            _UNCALIBRATED_WARNED.add(key)
            log.warning("%s: no pixel size, so measure.min_area_nm2 = %g nm² cannot be converted; "
                        "using measure.min_area_px = %d px instead", movie, min_area_nm2,
                        min_area_px)
        return int(min_area_px)
    return area_px(min_area_nm2, pixel_size_nm)


def open_stores(mask_store: MovieStore | str | Path, frame_store: MovieStore | str | Path
                ) -> tuple[MovieStore, MovieStore, float | None]:
    """``(masks, frames, pixel size in nm)`` of a mask store and its frame store, checked.

    The pixel size is the frame store's, or the mask store's when the frames have none (None
    when neither has one). Raises :class:`InputFileError` as :func:`measure_chunk` does.
    """
    masks = mask_store if isinstance(mask_store, MovieStore) else MovieStore.open(mask_store)
    frames = frame_store if isinstance(frame_store, MovieStore) else MovieStore.open(frame_store)
    if masks.array.shape != frames.array.shape:
        raise InputFileError(masks.path, f"mask store shape {masks.array.shape} does not match "
                             f"the frame store {frames.path} shape {frames.array.shape}")
    if masks.array.dtype.kind not in "biu":
        raise InputFileError(masks.path, f"mask store has dtype {masks.array.dtype}; measuring "
                             f"needs a 0/1 integer mask store (threshold probabilities first)")
    ps_f, ps_m = frames.pixel_size_nm, masks.pixel_size_nm
    if ps_f is not None and ps_m is not None and not math.isclose(ps_f, ps_m, rel_tol=1e-6):
        raise InputFileError(masks.path, f"pixel size {ps_m} nm does not match the frame store "
                             f"{frames.path} ({ps_f} nm)")
    return masks, frames, ps_f if ps_f is not None else ps_m


def measure_chunk(mask_store: MovieStore | str | Path, frame_store: MovieStore | str | Path,
                  k: int, *, movie: str, min_area_px: int = 20,
                  min_area_nm2: float | None = None, connectivity: int = 2,
                  model: str = "", overlaps: bool = False
                  ) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Measure the particles of time chunk ``k``, streaming one Zarr chunk of frames at a time.

    Parameters
    ----------
    mask_store : MovieStore or path
        uint8 0/1 mask store (e.g. ``results/{movie}/{model}/mask.zarr``).
    frame_store : MovieStore or path
        The raw frame store (``results/{movie}/frames.zarr``), same shape as the masks.
    k : int
        Time chunk index.
    movie : str
        Movie name for the ``movie`` column.
    min_area_px, connectivity, model
        See :func:`etemseg.analysis.measure.measure_stack`.
    min_area_nm2 : float, optional
        Minimum component area in nm²; on a calibrated movie it replaces ``min_area_px``
        (:func:`resolve_min_area`).
    overlaps : bool
        Also return the chunk's frame-overlaps table: the pixels shared at the same place by the
        particles of every frame of the chunk and of the frame before it (the previous chunk's
        last frame is read for the first), from the labelling the measurement makes anyway
        (:func:`~etemseg.analysis.measure.measure_stack`).  The track stage links by them
        instead of labelling every mask again.

    Returns
    -------
    pandas.DataFrame
        Rows of every frame of the chunk (columns :data:`etemseg.analysis.measure.COLUMNS`);
        times in s from the frame store's ``time_s``, lengths in nm from its pixel size (or the
        mask store's when the frames have none; NaN with a logged warning when neither has one).
    pandas.DataFrame, only with ``overlaps``
        :data:`~etemseg.analysis.measure.OVERLAP_COLUMNS` of the pairs ``(f - 1, f)``, ``f`` in
        the chunk.

    Raises
    ------
    InputFileError
        A store is missing/invalid, the mask store is not an integer (0/1) store, or its shape or
        pixel size does not match the frame store (the message starts with the mask store path).
    ConfigError
        ``k`` out of range, or an invalid minimum area (:func:`resolve_min_area`).
    """
    masks, frames, ps = open_stores(mask_store, frame_store)
    min_area_px = resolve_min_area(min_area_px, min_area_nm2, ps, movie=movie or str(masks.path))
    if ps is None:
        log.warning("%s: no pixel size in %s or %s; nm columns are NaN", movie, frames.path,
                    masks.path)
    t0 = masks.chunk_bounds(k)[0]  # ConfigError when k is out of range
    time_s = frames.time_s()
    prev = masks.read(t0 - 1, t0)[0] if overlaps and t0 > 0 else None
    parts, pairs = [], []
    for b0, block in masks.read_chunk(k):
        b1 = b0 + len(block)
        got = measure_stack(block, frames.read(b0, b1), frame0=b0, time_s=time_s[b0:b1],
                            pixel_size_nm=ps, movie=movie, min_area_px=min_area_px,
                            connectivity=connectivity, model=model, warn_uncalibrated=False,
                            overlaps=overlaps, prev_mask=prev)
        if overlaps:
            got, ov = got
            pairs.append(ov)
            prev = block[-1]
        parts.append(got)
    parts = [p for p in parts if len(p)]
    table = (empty_table(movie, model) if not parts
             else pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0])
    if not overlaps:
        return table
    return table, pd.concat(pairs, ignore_index=True)  # a chunk has at least one block
