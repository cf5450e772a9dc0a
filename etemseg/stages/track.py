"""The track stage: the reduce job of one movie x model.

Reads every chunk's detections table and, for overlap linking, the frame overlaps the measure
stage recorded with them (the mask store's label images are recomputed only for frame pairs that
drifted by a whole pixel, or for every frame when the overlaps are missing), links them with
:mod:`etemseg.tracking` and returns the trajectories, events and frames tables with ``movie`` and
``model`` columns in front (``etemseg track`` writes them).  The tracking itself -- drift,
overlaps, linking, summary -- lives in :mod:`etemseg.tracking`.
"""

from __future__ import annotations

from collections.abc import Callable
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from etemseg.analysis.measure import (particles_digest, read_overlaps, read_parquet_metadata,
                                      read_particle_table)
from etemseg.errors import InputFileError
from etemseg.io.store import MovieStore
from etemseg.layout import OVERLAPS_CHUNK, PARTICLES_CHUNK
from etemseg.tracking import link_movie

__all__ = ["track_movie"]

log = logging.getLogger(__name__)


def track_movie(frames_path, masks_path, particles_dir, *, movie: str = "", model: str = "",
                overlap: bool = True, **link_options) -> tuple[pd.DataFrame, pd.DataFrame,
                                                              pd.DataFrame]:
    """The reduce job of one movie × model: read every chunk table, link, summarise frames.

    Parameters
    ----------
    frames_path, masks_path : path
        Frame and mask stores of the movie (times, pixel size; label images for overlap linking).
    particles_dir : path
        Folder of ``chunk-{k}.parquet`` detection tables, one per time chunk of the masks.
    movie, model : str
        Written into the ``movie`` and ``model`` columns put in front of every table.
    overlap : bool
        Link by mask overlap (the recorded frame overlaps, label images where they do not
        serve); False: centroids only.
    **link_options
        ``max_disp_nm``, ``min_overlap``, ``min_absorbed_volume``, ``memory``, ``gap_ms``,
        ``persist_ms``, ``confirm_ms``, ``reid_ms`` of :func:`~etemseg.tracking.link_movie` (the
        windows in ms are converted with the store's frame times).

    Returns
    -------
    trajectories, events, frames : pandas.DataFrame
        As :func:`~etemseg.tracking.link_movie`, every frame of the store summarised.

    Raises
    ------
    InputFileError
        A chunk table is missing (never a silent gap in the frames table).
    """
    frames, masks = MovieStore.open(frames_path), MovieStore.open(masks_path)
    tables = read_chunk_tables(masks, particles_dir)
    nonempty = [t for t in tables if len(t)]
    detections = pd.concat(nonempty, ignore_index=True) if nonempty else tables[0]
    traj, events, frames_t = link_movie(
        detections, label_source(masks) if overlap else None,
        overlaps=read_chunk_overlaps(masks, particles_dir, tables) if overlap else None,
        pixel_size_nm=frames.pixel_size_nm, frame_shape=frames.frame_shape,
        all_frames=np.arange(frames.n_frames), time_s=frames.time_s(), **link_options)
    for table in (traj, events, frames_t):
        for name, value in (("model", model), ("movie", movie)):
            if name in table:
                table.pop(name)
            table.insert(0, name, pd.Series([value] * len(table), index=table.index, dtype=str))
    return traj, events, frames_t


def read_chunk_tables(masks: MovieStore, particles_dir) -> list[pd.DataFrame]:
    """The detections of every time chunk of ``masks`` (``particles_dir/chunk-{k}.parquet``),
    each checked to stay inside its chunk's frames, in chunk order.

    Raises
    ------
    InputFileError
        A chunk table is missing, or unreadable (:func:`read_particle_table`).
    """
    particles_dir = Path(particles_dir)
    tables = []
    for k in range(masks.n_chunks):
        path = particles_dir / PARTICLES_CHUNK.format(k=k)
        if not path.exists():
            raise InputFileError(path, f"detections of chunk {k} are missing; measure it first")
        tables.append(read_particle_table(path, frames=masks.chunk_bounds(k)))
    return tables


def read_chunk_overlaps(masks: MovieStore, particles_dir, tables: list[pd.DataFrame]
                        ) -> pd.DataFrame | None:
    """The frame overlaps the measure stage recorded with ``tables`` (``overlaps-{k}.parquet``,
    pairs into the frames of chunk ``k``), concatenated; None -- the masks are labelled again --
    when a chunk has none or its file was not measured with that chunk's detections (its
    ``particles_digest``), with a log line saying which.

    Raises
    ------
    InputFileError
        An overlaps file is unreadable or invalid (:func:`read_overlaps`).
    """
    parts = []
    for k, table in enumerate(tables):
        path = Path(particles_dir) / OVERLAPS_CHUNK.format(k=k)
        if not path.is_file():
            log.info("%s is missing: labelling the masks for mask-overlap linking", path)
            return None
        if read_parquet_metadata(path).get("particles_digest") != particles_digest(table):
            log.warning("%s was not measured with %s: labelling the masks for mask-overlap "
                        "linking", path, PARTICLES_CHUNK.format(k=k))
            return None
        parts.append(read_overlaps(path, frames=masks.chunk_bounds(k)))
    return pd.concat(parts, ignore_index=True)


def label_source(masks: MovieStore) -> Callable[[int], np.ndarray]:
    """``label_source(frame)``: the (H, W) label image of a frame of the mask store (8-connected
    components of ``mask > 0``, numbered in raster order as the measurement stage does).

    The store is read one Zarr chunk of frames at a time, the last chunk kept, so frames requested
    in order are read once each.
    """
    block: dict = {}
    step = int(masks.array.chunks[0])

    def labels_of(frame: int) -> np.ndarray:
        if not (block and block["t0"] <= frame < block["t1"]):
            b0 = frame - frame % step
            data = masks.read(b0, b0 + step)
            block.update(t0=b0, t1=b0 + len(data), data=data)
        labels, _ = ndimage.label(block["data"][frame - block["t0"]] > 0,
                                  structure=np.ones((3, 3), bool))
        return labels

    return labels_of
