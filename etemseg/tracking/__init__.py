"""Particle tracking: per-frame detections in, trajectories, events and a per-frame summary out.

DataFrames in, DataFrames out (in the spirit of trackpy), with the events a sintering movie needs:
coalescence, split, vanish / exit, appear / enter.  Layers, each importing only those above it
(and :mod:`etemseg.errors`, NumPy, pandas, SciPy, numba; never :mod:`etemseg.stages`):

* :mod:`~etemseg.tracking.detections` -- the detections table checked and held as arrays;
  frames and times of a movie;
* :mod:`~etemseg.tracking.params` -- :class:`LinkParams`;
* :mod:`~etemseg.tracking.neighbours` -- neighbour search over all frame pairs at once (numba);
* :mod:`~etemseg.tracking.drift` -- stage drift estimation (:func:`estimate_drift`);
* :mod:`~etemseg.tracking.overlap` -- mask-overlap kernels (numba) and equivalent-disc overlaps;
* :mod:`~etemseg.tracking.summary` -- the trajectories, events and frames tables;
* :mod:`~etemseg.tracking.temporal` -- events that hold over time (windows in ms: gap closing,
  transient merges, hysteresis, delayed absorption, extinction time, confidence);
* :mod:`~etemseg.tracking.link` -- the linker (:func:`link`, :func:`link_movie`).
"""

from etemseg.tracking.drift import estimate_drift
from etemseg.tracking.link import link, link_movie
from etemseg.tracking.overlap import OverlapTable, overlap_pairs, overlap_table
from etemseg.tracking.params import LinkParams
from etemseg.tracking.summary import EVENT_KINDS, EVENTS_SCHEMA, frames_table

__all__ = [
    "EVENTS_SCHEMA",
    "EVENT_KINDS",
    "LinkParams",
    "OverlapTable",
    "estimate_drift",
    "frames_table",
    "link",
    "link_movie",
    "overlap_pairs",
    "overlap_table",
]
