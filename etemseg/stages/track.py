"""Particle tracking with coalescence, vanish, appear and split events.

DataFrames in, DataFrames out, in the spirit of trackpy, but with the events a sintering movie
needs: particles ripen away (*vanish*), fuse (*coalescence*), nucleate (*appear*), drift in and
out of the field of view (*enter* / *exit*), and the segmentation occasionally cuts one particle
in two (*split*).

Input
-----
The per-frame detections of the measurement stage: one row per connected component with at least
``frame`` (int), ``label`` (component id in that frame's label image, 1..n), the centroid
(``x_px``, ``y_px`` and/or ``x_nm``, ``y_nm``; x = column axis, origin at the centre of pixel
(0, 0)) and a size (``area_px``, ``area_nm2`` or ``eq_diameter_nm``).  Optional: ``time_s`` and
``touches_border`` (bool).  Every other column is carried through to the trajectories.

Linking
-------
The movie is linked pair by pair over consecutive *present* frames (frame numbers need not be
contiguous; pass ``all_frames`` so that frames with no detection at all take part as empty frames).
For a pair ``t -> t+1``:

1. **Drift.**  :func:`estimate_drift` gives the global displacement of the field between the two
   frames (robust mean displacement of confidently matched, mutually nearest particles).
   Particle positions of frame ``t`` are moved by it; the label image of ``t+1`` is compared
   shifted by the rounded, temporally smoothed displacement (so a drift below half a pixel per
   frame shifts nothing).
2. **Evidence.**  With label images (:func:`link_movie` with a ``label_source``, or :func:`link`
   with an ``overlaps`` table) an edge joins label ``i`` at ``t`` and ``j`` at ``t+1`` when their
   masks share pixels; without, when the equivalent-area discs (drift-corrected) intersect, the
   intersection area playing the part of the pixel count.  An edge counts when the shared area is
   at least ``min_overlap`` of the *smaller* of the two particles and the drift-corrected centroids
   are closer than the sum of the equivalent radii plus ``max_disp_nm``.
3. **Fallbacks.**  A particle of ``t`` and one of ``t+1`` that still have no edge are joined when
   they are mutually nearest within ``max_disp_nm`` (drift-corrected) and their volumes agree
   within a factor 3 (a small particle that jumped off its old footprint).  A particle of ``t``
   still without an edge is counted as a *co-parent* of a particle of ``t+1`` that touches it
   (centre distance below the sum of the equivalent radii plus ``max_disp_nm``) when that particle
   gained at least half the missing particle's volume relative to its other parents, and the
   missing particle holds at least ``min_absorbed_volume`` of the merged volume (volumes are
   ``eq_diameter**3``; a small particle swallowed by a big one barely overlaps the merged shape).
4. **Events**, from the connected components of the bipartite graph (``m`` particles at ``t``,
   ``n`` at ``t+1``):

   ==========  ===========  ======================================================
   m : n       kind         trajectory ids
   ==========  ===========  ======================================================
   1 : 1       --           the particle at ``t+1`` continues the trajectory
   >=2 : 1     coalescence  parents end; the merged particle is a NEW trajectory
   1 : >=2     split        the parent ends; every child is a new trajectory
                            (usually a segmentation artefact: a neck that thinned
                            below one pixel, or touching particles flickering
                            between one and two components)
   >=2 : >=2   complex      as split (all children new); only after trying to cut
                            the component into simpler ones along its strong edges
                            (shared area >= 0.5 of the smaller particle)
   1 : 0       vanish       the trajectory ends; ``exit`` instead when the particle
                            touched the image border in ``t`` (drifted out of view)
   0 : 1       appear       a new trajectory; ``enter`` instead when the particle
                            touches the border in ``t+1`` (drifted into view)
   ==========  ===========  ======================================================

   Particles of the first frame start trajectories without an event.  Coalescence is not judged
   by area alone, but every multi-parent event records ``volume_ratio`` (children / parents,
   ``eq_diameter**3``; ~1 for a real fusion, projected areas are not conserved) so doubtful ones can
   be filtered, and every event records the ``eq_diameter_nm`` of the particle concerned (small for
   a ripened-away particle, large for a segmentation drop-out).
5. **Memory** (flicker tolerance, default 0 = off): a particle that vanished may be found again up
   to ``memory`` present frames later, at its drift-corrected place (within ``max_disp_nm``) with a
   volume within a factor 2; it then keeps its id, has no row in the frames it was missing, and
   neither the vanish nor the appear event is reported.

New trajectory ids are given in order of frame, then label, so the result depends only on the
detections (and label images), never on how the movie was cut into chunks.

Implementation
--------------
Label images are streamed (each requested once, two held at a time); their overlaps are counted
by a compiled one-pass contingency kernel.  Everything else runs on all frame pairs at once: a
point of the ``k``-th frame moved into layer ``k + 1`` finds its neighbours in the next frame
through one sorted-grid sweep over the whole movie, and the bipartite graphs of all pairs are one
sparse graph (parent side and child side of every detection are separate nodes) whose connected
components are the events.  No Python loop runs per frame or per particle, except over the few
multi-particle events and unmatched particles.

Conventions (shared with :mod:`etemseg.synth`)
---------------------------------------------
* Drift: *image position = sample position + drift*; cumulative drift is zero at the first frame.
* Event ``frame`` is the first frame in which the child exists / the lost particle is gone;
  ``parents`` exist in the previous present frame, ``children`` in ``frame``.  The event position
  is the child's centroid (volume-weighted over several children), or for vanish / exit the last
  position moved by the drift into ``frame``'s image coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import pandas as pd
import pyarrow as pa
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from etemseg.errors import ConfigError, EtemsegError, is_int, is_number

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

#: Type of the overlaps table of :func:`overlap_table` / :func:`link`: a DataFrame with int64
#: columns ``frame_a``, ``frame_b``, ``a``, ``b``, ``n_px``.
OverlapTable = pd.DataFrame

#: Every event kind :func:`link` can report.
EVENT_KINDS = ("coalescence", "vanish", "exit", "appear", "enter", "split", "complex")

#: Arrow schema of the events table (``pa.Table.from_pandas(events, schema=EVENTS_SCHEMA,
#: preserve_index=False)`` keeps ``parents`` / ``children`` as ``list<int64>`` even when empty).
EVENTS_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        ("frame", pa.int64()),
        ("time_s", pa.float64()),
        ("parents", pa.list_(pa.int64())),
        ("children", pa.list_(pa.int64())),
        ("child", pa.int64()),
        ("x_nm", pa.float64()),
        ("y_nm", pa.float64()),
        ("x_px", pa.float64()),
        ("y_px", pa.float64()),
        ("eq_diameter_nm", pa.float64()),
        ("volume_ratio", pa.float64()),
    ]
)

_STRONG_OVERLAP = 0.5  # edges kept when cutting an m:n component
_FALLBACK_VOLUME = 3.0  # volume factor allowed for the distance fallback
_MEMORY_VOLUME = 2.0  # volume factor allowed when bridging a missing frame


# --------------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkParams:
    """Linking parameters (see the module docstring for how each is used).

    Attributes
    ----------
    max_disp_nm : float
        Largest drift-corrected displacement of a particle between two present frames, nm, used by
        the centroid fallbacks (Brownian steps at 400 fps are ~0.1 nm).  Default 1.0.
    min_overlap : float
        Shared area, as a fraction of the smaller particle, that makes an overlap edge (0..1].
        Default 0.2.
    min_absorbed_volume : float
        Smallest volume fraction of the merged particle that a weakly overlapping particle must
        hold to be counted as a coalescence parent instead of a vanish.  Default 0.03 (about a
        third of the merged diameter; smaller ones drown in the noise of the merged volume).
    memory : int
        Present frames a particle may be missing and keep its id (0 = no bridging).  Default 0.
    """

    max_disp_nm: float = 1.0
    min_overlap: float = 0.2
    min_absorbed_volume: float = 0.03
    memory: int = 0

    def validate(self) -> None:
        """Raise :class:`~etemseg.errors.ConfigError` naming the first bad field."""

        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"track.{name}: {why} (got {getattr(self, name)!r})")

        if not is_number(self.max_disp_nm) or self.max_disp_nm <= 0:
            raise bad("max_disp_nm", "must be a finite number > 0")
        if not is_number(self.min_overlap) or not 0 < self.min_overlap <= 1:
            raise bad("min_overlap", "must be in (0, 1]")
        if not is_number(self.min_absorbed_volume) or not 0 <= self.min_absorbed_volume <= 1:
            raise bad("min_absorbed_volume", "must be in [0, 1]")
        if not is_int(self.memory) or self.memory < 0:
            raise bad("memory", "must be an integer >= 0")


# --------------------------------------------------------------------------------------------
# detections
# --------------------------------------------------------------------------------------------


class _Det:
    """Detections sorted by (frame, label) as plain arrays, with per-frame offsets."""

    def __init__(self, df: pd.DataFrame, pixel_size_nm: float | None,
                 frame_shape: tuple[int, int] | None):
        if not isinstance(df, pd.DataFrame):
            raise EtemsegError(f"detections: expected a pandas DataFrame, got {type(df).__name__}")
        for col in ("frame", "label"):
            if col not in df.columns:
                raise EtemsegError(f"detections: missing column {col!r}")
        has_px = "x_px" in df.columns and "y_px" in df.columns
        has_nm = "x_nm" in df.columns and "y_nm" in df.columns
        if not (has_px or has_nm):
            raise EtemsegError("detections: need centroid columns x_px, y_px or x_nm, y_nm")
        if len(df) and not (pd.api.types.is_integer_dtype(df["frame"])
                            and pd.api.types.is_integer_dtype(df["label"])):
            raise EtemsegError("detections: columns 'frame' and 'label' must be integers")
        ps = pixel_size_nm
        if ps is None and has_px and has_nm and len(df):
            xp = df["x_px"].to_numpy(float)
            ok = np.abs(xp) > 1
            if ok.any():
                ps = float(np.median(df["x_nm"].to_numpy(float)[ok] / xp[ok]))
        if ps is None:
            if len(df):
                raise EtemsegError("detections: pixel size unknown; pass pixel_size_nm")
            ps = 1.0
        if not (math.isfinite(ps) and ps > 0):
            raise ConfigError(f"track.pixel_size_nm: must be a finite number > 0 (got {ps!r})")
        self.ps = float(ps)
        d = df.sort_values(["frame", "label"], kind="stable").reset_index(drop=True)
        frame = d["frame"].to_numpy(np.int64)
        label = d["label"].to_numpy(np.int64)
        if len(d) > 1:
            dup = (frame[1:] == frame[:-1]) & (label[1:] == label[:-1])
            if dup.any():
                k = int(np.flatnonzero(dup)[0])
                raise EtemsegError(
                    f"detections: label {label[k]} appears twice in frame {frame[k]} "
                    "(were chunk tables concatenated twice?)")
        if (label < 1).any():
            raise EtemsegError("detections: labels must be >= 1 (0 is background)")
        if has_px:
            x = d["x_px"].to_numpy(float)
            y = d["y_px"].to_numpy(float)
        else:
            x = d["x_nm"].to_numpy(float) / self.ps
            y = d["y_nm"].to_numpy(float) / self.ps
        if "area_px" in d.columns:
            area = d["area_px"].to_numpy(float)
        elif "area_nm2" in d.columns:
            area = d["area_nm2"].to_numpy(float) / self.ps**2
        elif "eq_diameter_nm" in d.columns:
            area = math.pi * (d["eq_diameter_nm"].to_numpy(float) / self.ps / 2) ** 2
        else:
            raise EtemsegError("detections: need a size column: area_px, area_nm2 or "
                               "eq_diameter_nm")
        if "eq_diameter_nm" in d.columns:
            diam_nm = d["eq_diameter_nm"].to_numpy(float)
        else:
            diam_nm = 2.0 * np.sqrt(area / math.pi) * self.ps
        for name, arr in (("centroid", x), ("centroid", y), ("area", area)):
            if len(arr) and not np.isfinite(arr).all():
                raise EtemsegError(f"detections: non-finite {name} values")
        radius = np.sqrt(np.maximum(area, 0.0) / math.pi)
        if "touches_border" in d.columns:
            border = d["touches_border"].to_numpy(bool)
        elif frame_shape is not None:
            h, w = frame_shape
            border = ((x - radius < 0.5) | (y - radius < 0.5)
                      | (x + radius > w - 1.5) | (y + radius > h - 1.5))
        else:
            border = np.zeros(len(d), bool)
        self.df = d
        self.frame, self.label = frame, label
        self.x, self.y, self.area, self.radius = x, y, area, radius
        self.diam_nm = diam_nm
        self.vol = diam_nm**3
        self.border = border
        self.time = d["time_s"].to_numpy(float) if "time_s" in d.columns else None
        self.frames, self.start = np.unique(frame, return_index=True)
        self.stop = np.append(self.start[1:], len(d))

    def rows(self, f: int) -> slice:
        k = np.searchsorted(self.frames, f)
        if k < self.frames.size and self.frames[k] == f:
            return slice(int(self.start[k]), int(self.stop[k]))
        return slice(0, 0)


def _all_frames(all_frames: Iterable[int]) -> np.ndarray:
    seq = np.asarray(list(all_frames) if not isinstance(all_frames, np.ndarray) else all_frames)
    if seq.ndim != 1 or (seq.size and not np.issubdtype(seq.dtype, np.integer)):
        raise EtemsegError("all_frames: must be a 1-D sequence of integer frame numbers")
    seq = seq.astype(np.int64)
    if seq.size > 1 and not (np.diff(seq) > 0).all():
        raise EtemsegError("all_frames: frame numbers must be strictly increasing")
    return seq


def _sequence(det: _Det, all_frames: Iterable[int] | None) -> np.ndarray:
    if all_frames is None:
        return det.frames.copy()
    seq = _all_frames(all_frames)
    extra = np.setdiff1d(det.frames, seq)
    if extra.size:
        raise EtemsegError(f"detections: frame {int(extra[0])} is not in all_frames")
    return seq


def _frame_times(det: _Det, seq: np.ndarray, time_s: Any = None, fps: float | None = None
                 ) -> np.ndarray:
    """Time of every frame of ``seq``: given, from fps, from the detections, else a linear fit."""
    if time_s is not None:
        t = np.asarray(time_s, dtype=float)
        if t.shape != seq.shape:
            raise EtemsegError(f"time_s: expected {seq.size} values (one per frame), "
                               f"got {t.size}")
        return t
    if fps is not None:
        return seq / float(fps)
    t = np.full(seq.size, np.nan)
    if det.time is not None and det.frames.size:
        k = np.searchsorted(seq, det.frames)
        t[k] = det.time[det.start]
        known = np.isfinite(t)
        if known.sum() >= 2 and not known.all():
            a, b = np.polyfit(seq[known].astype(float), t[known], 1)
            t[~known] = a * seq[~known] + b
    return t


# --------------------------------------------------------------------------------------------
# neighbour search (all frame pairs at once)
# --------------------------------------------------------------------------------------------
#
# Points carry a layer (the index of their frame in the movie's frame sequence); a query point
# moved into layer k + 1 finds the points of frame k + 1 near it.  A uniform grid (cell = the
# largest search radius) with sorted cell keys answers all queries of the whole movie in one
# compiled pass -- no per-frame Python loop, no KD-tree per frame.


@numba.njit(cache=True, nogil=True)
def _near_pairs_kernel(ya, xa, reach, keys_a, order_a, yb, xb, sk, order_b, ncx, out_i, out_j,
                       out_d):  # pragma: no cover - numba
    """Queries in key order: the candidate cells (three consecutive keys in each of the cell rows
    above, at and below) only move forward, so three pointer pairs sweep ``sk`` once -- a merge,
    no search.  Writes up to ``out_i.size`` pairs (squared distances); returns how many exist."""
    na = ya.size
    nb = yb.size
    cap = out_i.size
    lo0 = 0
    hi0 = 0
    lo1 = 0
    hi1 = 0
    lo2 = 0
    hi2 = 0
    idx = 0
    for t in range(na):
        i = order_a[t]
        r2 = reach[i] * reach[i]
        for row in range(3):
            base = keys_a[t] + (row - 1) * ncx
            if row == 0:
                lo, hi = lo0, hi0
            elif row == 1:
                lo, hi = lo1, hi1
            else:
                lo, hi = lo2, hi2
            while lo < nb and sk[lo] < base - 1:
                lo += 1
            hi = max(hi, lo)
            while hi < nb and sk[hi] <= base + 1:
                hi += 1
            for q in range(lo, hi):
                j = order_b[q]
                ddy = yb[j] - ya[i]
                ddx = xb[j] - xa[i]
                d2 = ddy * ddy + ddx * ddx
                if d2 < r2:
                    if idx < cap:
                        out_i[idx] = i
                        out_j[idx] = j
                        out_d[idx] = d2
                    idx += 1
            if row == 0:
                lo0, hi0 = lo, hi
            elif row == 1:
                lo1, hi1 = lo, hi
            else:
                lo2, hi2 = lo, hi
    return idx


def _near_pairs(ya: np.ndarray, xa: np.ndarray, ka: np.ndarray, reach: np.ndarray | float,
                yb: np.ndarray, xb: np.ndarray, kb: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (i, j, distance) with ``ka[i] == kb[j]`` and distance < ``reach[i]`` (px)."""
    reach = np.ascontiguousarray(np.broadcast_to(np.asarray(reach, dtype=np.float64), ya.shape))
    e = np.zeros(0, np.int64)
    if ya.size == 0 or yb.size == 0 or float(reach.max()) <= 0:
        return e, e, np.zeros(0)
    cell = float(reach.max())
    ymin = min(float(ya.min()), float(yb.min()))
    xmin = min(float(xa.min()), float(xb.min()))
    ncy = int((max(float(ya.max()), float(yb.max())) - ymin) / cell) + 3
    ncx = int((max(float(xa.max()), float(xb.max())) - xmin) / cell) + 3

    def keys(y, x, k):
        cy = ((y - ymin) / cell).astype(np.int64) + 1
        cx = ((x - xmin) / cell).astype(np.int64) + 1
        return (k.astype(np.int64) * ncy + cy) * ncx + cx

    ka_, kb_ = keys(ya, xa, ka), keys(yb, xb, kb)
    order_a = np.argsort(ka_, kind="stable")
    order_b = np.argsort(kb_, kind="stable")
    f64 = np.float64
    args = (np.ascontiguousarray(ya, dtype=f64), np.ascontiguousarray(xa, dtype=f64), reach,
            ka_[order_a], order_a, np.ascontiguousarray(yb, dtype=f64),
            np.ascontiguousarray(xb, dtype=f64), kb_[order_b], order_b, ncx)
    cap = 4 * ya.size + 64
    while True:
        out_i = np.empty(cap, np.int64)
        out_j = np.empty(cap, np.int64)
        out_d = np.empty(cap, np.float64)
        m = _near_pairs_kernel(*args, out_i, out_j, out_d)
        if m <= cap:
            return out_i[:m], out_j[:m], np.sqrt(out_d[:m])
        cap = m  # too many pairs for the first guess: run again with room for all


@numba.njit(cache=True, nogil=True)
def _nearest_kernel(i, j, d, na, nb):  # pragma: no cover - numba
    best_j = np.full(na, -1, np.int64)
    best_i = np.full(nb, -1, np.int64)
    dj = np.full(na, np.inf)
    di = np.full(nb, np.inf)
    for q in range(i.size):
        if d[q] < dj[i[q]]:
            dj[i[q]] = d[q]
            best_j[i[q]] = j[q]
        if d[q] < di[j[q]]:
            di[j[q]] = d[q]
            best_i[j[q]] = i[q]
    return best_j, best_i


def _mutual_nearest(ya: np.ndarray, xa: np.ndarray, ka: np.ndarray, yb: np.ndarray,
                    xb: np.ndarray, kb: np.ndarray, gate: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Mutually nearest pairs (i, j) of the same layer within ``gate``."""
    i, j, d = _near_pairs(ya, xa, ka, gate, yb, xb, kb)
    if i.size == 0:
        e = np.zeros(0, np.int64)
        return e, e
    best_j, best_i = _nearest_kernel(i, j, d, ya.size, yb.size)
    a = np.flatnonzero(best_j >= 0)
    b = best_j[a]
    m = best_i[b] == a
    return a[m].astype(np.int64), b[m].astype(np.int64)


def _robust_steps(g: np.ndarray, dy: np.ndarray, dx: np.ndarray, n: int, min_matches: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per group ``g`` (0..n-1): mean of the displacements within 3 robust sigma (1.4826 MAD, at
    least 0.25 px) of the median on both axes; NaN for groups under ``min_matches``."""
    cnt = np.bincount(g, minlength=n).astype(np.int64)
    disp = np.column_stack([dy, dx])
    med = np.column_stack([_group_median(g, dy, n), _group_median(g, dx, n)])
    dev = np.abs(disp - med[g])
    mad = np.column_stack([_group_median(g, dev[:, 0], n), _group_median(g, dev[:, 1], n)])
    tol = np.maximum(3.0 * 1.4826 * mad, 0.25)
    inl = (dev <= tol[g]).all(axis=1)
    c = np.bincount(g[inl], minlength=n)
    out = med.copy()
    has = c > 0
    for ax in (0, 1):
        s_ = np.bincount(g[inl], weights=disp[inl, ax], minlength=n)
        out[has, ax] = s_[has] / c[has]
    out[cnt < min_matches] = np.nan
    return out, cnt


def _group_median(g: np.ndarray, v: np.ndarray, n: int) -> np.ndarray:
    """Median of ``v`` per group ``g`` in 0..n-1 (NaN for empty groups)."""
    out = np.full(n, np.nan)
    if v.size == 0:
        return out
    order = np.lexsort((v, g))
    gs, vs = g[order], v[order]
    idx = np.arange(n)
    starts = np.searchsorted(gs, idx, side="left")
    stops = np.searchsorted(gs, idx, side="right")
    nz = stops > starts
    lo = starts + (stops - starts - 1) // 2
    hi = starts + (stops - starts) // 2
    out[nz] = 0.5 * (vs[lo[nz]] + vs[hi[nz]])
    return out


def _kseq(det: _Det, seq: np.ndarray) -> np.ndarray:
    return np.searchsorted(seq, det.frame).astype(np.int64)


# --------------------------------------------------------------------------------------------
# drift
# --------------------------------------------------------------------------------------------


def _drift(det: _Det, seq: np.ndarray, max_disp_px: float, min_matches: int,
           smooth: int) -> pd.DataFrame:
    n = seq.size
    if n == 0:
        return pd.DataFrame({c: np.zeros(0, np.int64 if c in ("frame", "n_matches") else float)
                             for c in ("frame", "dy_px", "dx_px", "step_dy_px", "step_dx_px",
                                       "smooth_dy_px", "smooth_dx_px", "n_matches")})
    kseq = _kseq(det, seq)
    rows = np.flatnonzero(~det.border)
    y, x, k, area = det.y[rows], det.x[rows], kseq[rows], det.area[rows]
    rmed = float(np.median(det.radius)) if det.radius.size else 0.0
    src = np.flatnonzero(k < n - 1)
    i, j = _mutual_nearest(y[src], x[src], k[src] + 1, y, x, k, max(max_disp_px, rmed))
    i = src[i]
    r = area[i] / np.maximum(area[j], 1e-9)
    ok = (r > 2 / 3) & (r < 1.5)
    i, j = i[ok], j[ok]
    g = k[j]
    raw, nm = _robust_steps(g, y[j] - y[i], x[j] - x[i], n, int(min_matches))
    raw[0] = np.nan
    nm[0] = 0
    # running median of the steps (window ``smooth``), then forward fill, then zeros
    half = max(int(smooth), 1) // 2
    smooth_steps = np.full((n, 2), np.nan)
    if n > 1:
        pad = np.full((n + 2 * half, 2), np.nan)
        pad[half:half + n] = raw
        win = np.lib.stride_tricks.sliding_window_view(pad, 2 * half + 1, axis=0)
        any_ = np.isfinite(win[:, 0, :]).any(axis=1)
        if any_.any():
            smooth_steps[any_] = np.nanmedian(win[any_], axis=-1)
    smooth_steps[0] = 0.0
    # forward fill (constant drift velocity where nothing was measured nearby)
    valid = np.isfinite(smooth_steps[:, 0])
    idx = np.where(valid, np.arange(n), 0)
    np.maximum.accumulate(idx, out=idx)
    smooth_steps = smooth_steps[idx]
    smooth_steps[0] = 0.0
    steps = np.where(np.isfinite(raw), raw, smooth_steps)
    steps[0] = 0.0
    cum = np.cumsum(steps, axis=0)
    return pd.DataFrame({
        "frame": seq.astype(np.int64),
        "dy_px": cum[:, 0], "dx_px": cum[:, 1],
        "step_dy_px": steps[:, 0], "step_dx_px": steps[:, 1],
        "smooth_dy_px": smooth_steps[:, 0], "smooth_dx_px": smooth_steps[:, 1],
        "n_matches": nm,
    })


def estimate_drift(detections: pd.DataFrame, *, pixel_size_nm: float | None = None,
                   max_disp_nm: float = 1.0, all_frames: Iterable[int] | None = None,
                   min_matches: int = 3, smooth: int = 9) -> pd.DataFrame:
    """Global stage drift of every frame, from the detections alone.

    For each pair of consecutive present frames the particles not touching the border are matched
    as mutual nearest neighbours within the larger of ``max_disp_nm`` and the median particle
    radius, keeping pairs whose areas agree within a factor 1.5.  The pair's displacement is the
    mean of the matched displacements that lie within three robust standard deviations (1.4826
    MAD, at least 0.25 px) of their median: robust to the odd wrong match, and over a stable set of
    particles the centroids' pixelisation errors cancel in the cumulative sum.  A pair with fewer
    than ``min_matches`` matches (e.g. next to an empty frame) takes the running median of its
    neighbours' steps, or repeats the previous one (constant drift velocity).  The drift per frame
    must stay below the median particle radius.

    Stage drift is smooth over many frames (2.5 ms each at 400 fps) while the Brownian scatter of a
    pair's estimate over a few tens of particles is ~0.1-0.2 px, so a centred running median over
    ``smooth`` pairs is also returned; the linkers round it to shift the label images (a single
    noisy step does not flip the shift by a pixel).

    The drift is the motion of the particle ensemble: a collective Brownian displacement of the
    matched particles cannot be told from stage drift, so the cumulative estimate wanders like
    ``sigma_step * sqrt(frames / n_particles)``.

    Parameters
    ----------
    detections : pandas.DataFrame
        Per-frame detections (see the module docstring).
    pixel_size_nm : float, optional
        Inferred from ``x_nm / x_px`` when both are present.
    max_disp_nm : float
        Largest plausible particle step between two frames after drift correction, nm.
    all_frames : array of int, optional
        Every frame of the movie; frames without detections then get rows too.
    min_matches : int
        Fewest matches that make a pair's estimate.
    smooth : int
        Window (pairs of frames) of the running median ``smooth_*`` over the steps.

    Returns
    -------
    pandas.DataFrame
        ``frame``, ``dy_px``, ``dx_px`` (cumulative drift, zero at the first frame; image position
        = sample position + drift), ``step_dy_px``, ``step_dx_px`` (displacement from the
        previous present frame), ``smooth_dy_px``, ``smooth_dx_px`` (running median of the steps:
        what label images are shifted by, rounded), ``n_matches`` (0 for the first frame).
    """
    det = _Det(detections, pixel_size_nm, None)
    LinkParams(max_disp_nm=max_disp_nm).validate()
    seq = _sequence(det, all_frames)
    if not isinstance(smooth, (int, np.integer)) or smooth < 1:
        raise ConfigError(f"track.smooth: must be an integer >= 1 (got {smooth!r})")
    if not isinstance(min_matches, (int, np.integer)) or min_matches < 1:
        raise ConfigError(f"track.min_matches: must be an integer >= 1 (got {min_matches!r})")
    return _drift(det, seq, max_disp_nm / det.ps, int(min_matches), int(smooth))


# --------------------------------------------------------------------------------------------
# overlaps
# --------------------------------------------------------------------------------------------

_SLOTS = 16  # distinct b labels one a label may overlap before the kernel gives up


@numba.njit(cache=True, nogil=True)
def _count_kernel(a, b, y0a, x0a, y0b, x0b, hh, ww, capa, capb, tab_b, tab_n, fill
                  ):  # pragma: no cover - numba
    """Pair counts of labels a (<= capa) and b (<= capb) over a window of two C-contiguous
    images of equal shape; per a label up to ``tab_b.shape[1]`` b labels (False on overflow)."""
    slots = tab_b.shape[1]
    w = a.shape[1]
    af = a.ravel()
    bf = b.ravel()
    last_a = -1
    last_b = -1
    last_s = -1
    for i in range(hh):
        pa = (y0a + i) * w + x0a
        pb = (y0b + i) * w + x0b
        for j in range(ww):
            la = af[pa + j]
            if la == 0:
                continue
            lb = bf[pb + j]
            if lb == 0 or la < 0 or lb < 0 or la > capa or lb > capb:
                continue
            if la == last_a and lb == last_b:
                tab_n[la, last_s] += 1
                continue
            s = -1
            for q in range(fill[la]):
                if tab_b[la, q] == lb:
                    s = q
                    break
            if s < 0:
                if fill[la] == slots:
                    return False
                s = fill[la]
                tab_b[la, s] = lb
                tab_n[la, s] = 0
                fill[la] += 1
            tab_n[la, s] += 1
            last_a = la
            last_b = lb
            last_s = s
    return True


def _overlap_arrays(la: np.ndarray, lb: np.ndarray, shift: tuple[int, int],
                    capa: int | None = None, capb: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, n_px) of every pair of labels sharing pixels, sorted by (a, b); pixel (i, j) of
    ``la`` is compared with pixel (i + dy, j + dx) of ``lb``.  Labels above ``capa`` / ``capb``
    (default: the image maxima) are ignored."""
    h, w = la.shape
    dy, dx = int(shift[0]), int(shift[1])
    y0a, y1a = max(0, -dy), min(h, h - dy)
    x0a, x1a = max(0, -dx), min(w, w - dx)
    hh, ww = y1a - y0a, x1a - x0a
    e = np.zeros(0, np.int64)
    if hh <= 0 or ww <= 0:
        return e, e, e
    if capa is None:
        capa = int(la.max()) if la.size else 0
    if capb is None:
        capb = int(lb.max()) if lb.size else 0
    if capa <= 0 or capb <= 0:
        return e, e, e
    ok = False
    if capa < 4 * hh * ww + 1024:  # the per-label table stays small (ids ~ a labelling's)
        tab_b = np.empty((capa + 1, _SLOTS), np.int64)
        tab_n = np.empty((capa + 1, _SLOTS), np.int64)
        fill = np.zeros(capa + 1, np.int64)
        ok = _count_kernel(la, lb, y0a, x0a, y0a + dy, x0a + dx, hh, ww, capa, capb, tab_b,
                           tab_n, fill)
    if ok:
        used = np.arange(_SLOTS)[None, :] < fill[:, None]
        a_ = np.broadcast_to(np.arange(capa + 1)[:, None], used.shape)[used]
        b_ = tab_b[used]
        n_ = tab_n[used]
        order = np.lexsort((b_, a_))
        return a_[order].astype(np.int64), b_[order], n_[order]
    # huge ids, or a label overlapping very many others: contingency table by sorting
    a = la[y0a:y1a, x0a:x1a]
    b = lb[y0a + dy:y1a + dy, x0a + dx:x1a + dx]
    both = (a > 0) & (b > 0) & (a <= capa) & (b <= capb)
    av = a[both].astype(np.int64)
    bv = b[both].astype(np.int64)
    if (capa + 1) * (capb + 1) < 2**62:
        u, n = np.unique(av * (capb + 1) + bv, return_counts=True)
        return u // (capb + 1), u % (capb + 1), n.astype(np.int64)
    u, n = np.unique(np.column_stack([av, bv]), axis=0, return_counts=True)
    return u[:, 0].copy(), u[:, 1].copy(), n.astype(np.int64)


def _check_labels(lab: Any, name: str) -> np.ndarray:
    lab = np.asarray(lab)
    if lab.ndim != 2:
        raise EtemsegError(f"{name}: label image must be 2-D, got shape {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        raise EtemsegError(f"{name}: label image must be integer, got {lab.dtype}")
    if lab.dtype == np.uint64:
        lab = lab.astype(np.int64)  # uint64 does not mix with signed ints in the kernel
    return np.ascontiguousarray(lab)


def overlap_pairs(labels_a: np.ndarray, labels_b: np.ndarray,
                  shift: tuple[int, int] = (0, 0)) -> pd.DataFrame:
    """Pixel counts of the intersections of every label of one image with every label of another.

    A contingency table computed in one pass over the pixels (a compiled loop that keeps, per
    label of ``labels_a``, the few labels of ``labels_b`` it meets; sorting the combined ids when
    one label meets very many).

    Parameters
    ----------
    labels_a, labels_b : (H, W) integer arrays
        Label images (0 = background) of two frames.
    shift : (int, int)
        ``(dy, dx)``: pixel ``(i, j)`` of ``labels_a`` is compared with pixel ``(i + dy, j + dx)``
        of ``labels_b`` -- the (rounded) displacement of the content from a to b, e.g. the drift
        between the two frames.  Pixels shifted out of the frame are not compared.

    Returns
    -------
    pandas.DataFrame
        ``a``, ``b`` (labels), ``n_px`` (shared pixels > 0), int64, sorted by (a, b).
    """
    la = _check_labels(labels_a, "labels_a")
    lb = _check_labels(labels_b, "labels_b")
    if la.shape != lb.shape:
        raise EtemsegError(f"overlap_pairs: label images differ in shape, {la.shape} vs "
                           f"{lb.shape}")
    a, b, n = _overlap_arrays(la, lb, shift)
    return pd.DataFrame({"a": a, "b": b, "n_px": n})


def _shift_of(step: np.ndarray) -> tuple[int, int]:
    return int(np.round(step[0])), int(np.round(step[1]))


def _drift_columns(seq: np.ndarray, drift: pd.DataFrame, cols: tuple[str, ...]) -> np.ndarray:
    """Values of ``cols`` of the drift table at every frame of ``seq`` (len(seq), len(cols))."""
    for c in ("frame", *cols):
        if c not in drift.columns:
            raise EtemsegError(f"drift: missing column {c!r}")
    f = drift["frame"].to_numpy(np.int64)
    order = np.argsort(f, kind="stable")
    fs = f[order]
    pos = np.minimum(np.searchsorted(fs, seq), max(fs.size - 1, 0))
    have = fs[pos] == seq if fs.size else np.zeros(seq.size, bool)
    if not have.all():
        raise EtemsegError(f"drift: no row for frame {int(seq[~have][0])}")
    rows = order[pos]
    return np.column_stack([drift[c].to_numpy(float)[rows] for c in cols]) if cols else \
        np.zeros((seq.size, 0))


def _steps_for(seq: np.ndarray, drift: pd.DataFrame | None) -> np.ndarray:
    """Per-pair displacement (dy, dx) from a drift table's cumulative columns."""
    steps = np.zeros((seq.size, 2))
    if drift is None or seq.size == 0:
        return steps
    cum = _drift_columns(seq, drift, ("dy_px", "dx_px"))
    steps[1:] = np.diff(cum, axis=0)
    return steps


def _shift_steps(seq: np.ndarray, drift: pd.DataFrame | None) -> np.ndarray:
    """Per-pair displacement to round for shifting label images."""
    if drift is not None and seq.size and {"smooth_dy_px", "smooth_dx_px"} <= set(drift.columns):
        steps = _drift_columns(seq, drift, ("smooth_dy_px", "smooth_dx_px"))
        steps[0] = 0.0
        return steps
    return _steps_for(seq, drift)


def overlap_table(label_source: Callable[[int], np.ndarray], frames: Iterable[int],
                  drift: pd.DataFrame | None = None) -> OverlapTable:
    """Overlaps of every pair of consecutive frames, for :func:`link` (``overlaps=``).

    Each label image is requested once.  Pass the same frames (``all_frames``) and the drift of
    :func:`estimate_drift` that :func:`link` will use, so that the shifts agree (:func:`link_movie`
    does all of this in one pass).

    Parameters
    ----------
    label_source : callable
        ``label_source(frame)`` returns that frame's label image.
    frames : array of int
        The movie's frames in order.
    drift : pandas.DataFrame, optional
        From :func:`estimate_drift`; the label image of the later frame is compared shifted by the
        rounded ``smooth_dy_px``, ``smooth_dx_px`` (by the rounded difference of the cumulative
        ``dy_px``, ``dx_px`` when those columns are absent).  None: no shift.

    Returns
    -------
    pandas.DataFrame
        ``frame_a``, ``frame_b``, ``a``, ``b``, ``n_px`` (int64).
    """
    seq = _all_frames(frames)
    steps = _shift_steps(seq, drift)
    parts = []
    prev = None
    for k, f in enumerate(seq):
        lab = _check_labels(label_source(int(f)), f"label_source({int(f)})")
        if prev is not None:
            if lab.shape != prev.shape:
                raise EtemsegError(f"label_source({int(f)}): shape {lab.shape}, expected "
                                   f"{prev.shape}")
            a, b, n = _overlap_arrays(prev, lab, _shift_of(steps[k]))
            parts.append(pd.DataFrame({"frame_a": np.full(a.size, seq[k - 1]),
                                       "frame_b": np.full(a.size, f), "a": a, "b": b,
                                       "n_px": n}))
        prev = lab
    if not parts:
        return pd.DataFrame({c: np.zeros(0, np.int64)
                             for c in ("frame_a", "frame_b", "a", "b", "n_px")})
    return pd.concat(parts, ignore_index=True)


def _disc_edges(det: _Det, kseq: np.ndarray, n: int, step: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row a, row b, area px) of intersecting equivalent discs of consecutive frames, the
    earlier frame moved by the drift."""
    e = np.zeros(0, np.int64)
    src = np.flatnonzero(kseq < n - 1)
    if src.size == 0 or n < 2:
        return e, e, np.zeros(0)
    r = det.radius
    s = step[kseq[src] + 1]
    ii, jj, dd = _near_pairs(det.y[src] + s[:, 0], det.x[src] + s[:, 1], kseq[src] + 1,
                             r[src] + float(r.max()), det.y, det.x, kseq)
    ii = src[ii]
    r1, r2 = r[ii], r[jj]
    hit = dd < r1 + r2
    ii, jj, dd, r1, r2 = ii[hit], jj[hit], dd[hit], r1[hit], r2[hit]
    area = np.empty(dd.size)
    inside = dd <= np.abs(r1 - r2)
    area[inside] = math.pi * np.minimum(r1, r2)[inside] ** 2
    p = ~inside
    if p.any():
        q, a1, a2 = dd[p], r1[p], r2[p]
        c1 = np.clip((q * q + a1 * a1 - a2 * a2) / (2 * q * a1), -1, 1)
        c2 = np.clip((q * q + a2 * a2 - a1 * a1) / (2 * q * a2), -1, 1)
        kk = (-q + a1 + a2) * (q + a1 - a2) * (q - a1 + a2) * (q + a1 + a2)
        area[p] = (a1 * a1 * np.arccos(c1) + a2 * a2 * np.arccos(c2)
                   - 0.5 * np.sqrt(np.maximum(kk, 0.0)))
    return ii.astype(np.int64), jj, area


def _rows_of_labels(det: _Det, f: int, labels: np.ndarray) -> np.ndarray:
    """Global row of each label of frame ``f`` (-1 where the label has no detection)."""
    s = det.rows(f)
    lab = det.label[s]
    if lab.size == 0 or labels.size == 0:
        return np.full(labels.size, -1, np.int64)
    pos = np.searchsorted(lab, labels)
    pos = np.minimum(pos, lab.size - 1)
    return np.where(lab[pos] == labels, s.start + pos, -1).astype(np.int64)


# --------------------------------------------------------------------------------------------
# the linker (all frame pairs at once)
# --------------------------------------------------------------------------------------------


def _link_all(det: _Det, seq: np.ndarray, cum: np.ndarray, times: np.ndarray,
              p: LinkParams, edges: tuple[np.ndarray, np.ndarray, np.ndarray] | None
              ) -> tuple[np.ndarray, pd.DataFrame]:
    """Trajectory id per detection row and the events table.

    ``edges``: (row a, row b, shared px) over all consecutive pairs; None: disc overlaps."""
    N = len(det.frame)
    n = seq.size
    kseq = _kseq(det, seq)
    step = np.zeros((n + 1, 2))
    if n > 1:
        step[1:n] = np.diff(cum, axis=0)
    maxd = p.max_disp_nm / det.ps
    y, x, area, rad, vol, border = det.y, det.x, det.area, det.radius, det.vol, det.border
    # drift-corrected positions of each row in the next frame's image coordinates
    nxt = step[np.minimum(kseq + 1, n)]
    ym, xm = y + nxt[:, 0], x + nxt[:, 1]

    if edges is None:
        ia, ib, w = _disc_edges(det, kseq, n, step)
    else:
        ia, ib, w = edges
    frac = w / np.maximum(np.minimum(area[ia], area[ib]), 1.0)
    # gate: drift-corrected centroids within the sum of the equivalent radii plus max_disp
    dist = np.hypot(y[ib] - ym[ia], x[ib] - xm[ia])
    keep = (frac >= p.min_overlap) & (dist < rad[ia] + rad[ib] + maxd)
    ia, ib, frac = ia[keep], ib[keep], frac[keep]

    # fallback 1: mutually nearest, both still unmatched, within max_disp, similar volume
    has_a = np.zeros(N, bool)
    has_a[ia] = True
    has_b = np.zeros(N, bool)
    has_b[ib] = True
    ua = np.flatnonzero(~has_a & (kseq < n - 1))
    ub = np.flatnonzero(~has_b & (kseq > 0))
    if ua.size and ub.size:
        i, j = _mutual_nearest(ym[ua], xm[ua], kseq[ua] + 1, y[ub], x[ub], kseq[ub], maxd)
        fa, fb = ua[i], ub[j]
        r = vol[fa] / np.maximum(vol[fb], 1e-12)
        good = ((r < _FALLBACK_VOLUME) & (r > 1 / _FALLBACK_VOLUME)) | border[fa] | border[fb]
        fa, fb = fa[good], fb[good]
        ia = np.concatenate([ia, fa])
        ib = np.concatenate([ib, fb])
        frac = np.concatenate([frac, np.ones(fa.size)])
        has_a[fa] = True
        has_b[fb] = True

    # fallback 2: an unmatched particle swallowed by a touching neighbour (volume balance);
    # a particle cut by the border has no known volume
    ua = np.flatnonzero(~has_a & (kseq < n - 1) & ~border)
    if ua.size:
        npred = np.bincount(ib, minlength=N)
        pvol = np.bincount(ib, weights=vol[ia], minlength=N)
        rmax = float(rad.max())
        rows = np.flatnonzero(np.isin(kseq, kseq[ua] + 1))
        ci, cj, cd = _near_pairs(ym[ua], xm[ua], kseq[ua] + 1, rad[ua] + rmax + maxd, y[rows],
                                 x[rows], kseq[rows])
        cj = rows[cj]
        o = np.argsort(ci, kind="stable")
        ci, cj, cd = ci[o], cj[o], cd[o]
        lo = np.searchsorted(ci, np.arange(ua.size), side="left")
        hi = np.searchsorted(ci, np.arange(ua.size), side="right")
        add_a: list[int] = []
        add_b: list[int] = []
        for q in np.lexsort((-vol[ua], kseq[ua])):  # per pair, biggest first
            a = int(ua[q])
            if hi[q] == lo[q]:
                continue
            js, d = cj[lo[q]:hi[q]], cd[lo[q]:hi[q]]
            gain = vol[js] - pvol[js]
            ok = ((d < rad[a] + rad[js] + maxd) & (npred[js] > 0)
                  & (vol[a] >= p.min_absorbed_volume * vol[js]) & (gain >= 0.5 * vol[a]))
            if not ok.any():
                continue
            js, gain = js[ok], gain[ok]
            j = int(js[np.argmin(np.abs(gain - vol[a]))])
            add_a.append(a)
            add_b.append(j)
            npred[j] += 1
            pvol[j] += vol[a]
        if add_a:
            ia = np.concatenate([ia, np.asarray(add_a, np.int64)])
            ib = np.concatenate([ib, np.asarray(add_b, np.int64)])
            frac = np.concatenate([frac, np.zeros(len(add_a))])

    # components of the bipartite graphs of all pairs at once: node r = row r as parent
    # (frame t side), node N + r = row r as child (frame t+1 side)
    if N:
        g = coo_matrix((np.ones(ia.size), (ia, N + ib)), shape=(2 * N, 2 * N))
        ncomp, comp = connected_components(g, directed=False)
    else:
        ncomp, comp = 0, np.zeros(0, np.int64)
    ca, cb = comp[:N], comp[N:]
    nA = np.bincount(ca, minlength=ncomp)
    nB = np.bincount(cb, minlength=ncomp)
    a_of = np.full(ncomp, -1, np.int64)
    a_of[ca] = np.arange(N)
    # continuation links (a -> b)
    one = (nA[cb] == 1) & (nB[cb] == 1)
    cont_b = np.flatnonzero(one)
    cont_a = a_of[cb[cont_b]]
    lost = np.flatnonzero((nB[ca] == 0) & (kseq < n - 1))  # vanish / exit
    born = np.flatnonzero((nA[cb] == 0) & (kseq > 0))  # appear / enter
    multi = np.flatnonzero((nA >= 1) & (nB >= 1) & ((nA >= 2) | (nB >= 2)))
    groups: list[tuple[np.ndarray, np.ndarray]] = []
    if multi.size:
        mask_a = np.isin(ca, multi)
        mask_b = np.isin(cb, multi)
        ra_, rb_ = np.flatnonzero(mask_a), np.flatnonzero(mask_b)
        oa, ob = np.argsort(ca[ra_], kind="stable"), np.argsort(cb[rb_], kind="stable")
        ra_, rb_ = ra_[oa], rb_[ob]
        ka = np.searchsorted(ca[ra_], multi, side="left"), np.searchsorted(ca[ra_], multi,
                                                                           side="right")
        kb = np.searchsorted(cb[rb_], multi, side="left"), np.searchsorted(cb[rb_], multi,
                                                                           side="right")
        esel = np.isin(ia, ra_)
        eia, eib, efr = ia[esel], ib[esel], frac[esel]
        extra_a, extra_b = [], []
        for q in range(multi.size):
            an = ra_[ka[0][q]:ka[1][q]]
            bn = rb_[kb[0][q]:kb[1][q]]
            gs = [(an, bn)]
            if an.size >= 2 and bn.size >= 2:
                gs = _cut(an, bn, eia, eib, efr)
            for ga, gb in gs:
                if ga.size == 1 and gb.size == 1:
                    extra_a.append(int(ga[0]))
                    extra_b.append(int(gb[0]))
                else:
                    groups.append((ga, gb))
        if extra_a:
            cont_a = np.concatenate([cont_a, np.asarray(extra_a, np.int64)])
            cont_b = np.concatenate([cont_b, np.asarray(extra_b, np.int64)])

    # memory: a lost particle found again at its drift-corrected place
    if p.memory > 0 and lost.size and born.size:
        ba, bb = _bridges(det, kseq, cum, lost, born, p.memory, maxd)
        if ba.size:
            cont_a = np.concatenate([cont_a, ba])
            cont_b = np.concatenate([cont_b, bb])
            lost = np.setdiff1d(lost, ba)
            born = np.setdiff1d(born, bb)

    # trajectory ids: chains of continuation links, numbered by first (frame, label)
    if N:
        gc = coo_matrix((np.ones(cont_a.size), (cont_a, cont_b)), shape=(N, N))
        _, chain = connected_components(gc, directed=False)
        _, first = np.unique(chain, return_index=True)
        rank = np.empty(first.size, np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(1, first.size + 1)
        ids = rank[chain]
    else:
        ids = np.zeros(0, np.int64)

    # events
    cols: dict[str, list[Any]] = {c: [] for c in EVENTS_SCHEMA.names}

    def add(kind, frame_k, parents, children, ex, ey, diam, ratio):
        cols["kind"].append(kind)
        cols["frame"].append(int(seq[frame_k]))
        cols["time_s"].append(float(times[frame_k]))
        cols["parents"].append(parents)
        cols["children"].append(children)
        cols["child"].append(children[0] if len(children) == 1 else -1)
        cols["x_px"].append(float(ex))
        cols["y_px"].append(float(ey))
        cols["eq_diameter_nm"].append(float(diam))
        cols["volume_ratio"].append(float(ratio))

    nan = float("nan")
    for a in lost.tolist():
        add("exit" if border[a] else "vanish", kseq[a] + 1, [int(ids[a])], [], xm[a], ym[a],
            det.diam_nm[a], nan)
    for b in born.tolist():
        add("enter" if border[b] else "appear", kseq[b], [], [int(ids[b])], x[b], y[b],
            det.diam_nm[b], nan)
    for ga, gb in groups:
        kind = "coalescence" if gb.size == 1 else "split" if ga.size == 1 else "complex"
        wsum = float(vol[gb].sum())
        if wsum > 0:
            ex = float((x[gb] * vol[gb]).sum() / wsum)
            ey = float((y[gb] * vol[gb]).sum() / wsum)
        else:
            ex, ey = float(x[gb].mean()), float(y[gb].mean())
        if gb.size == 1:
            diam = det.diam_nm[gb[0]]
        elif ga.size == 1:
            diam = det.diam_nm[ga[0]]
        else:
            diam = float(np.cbrt(wsum))
        vpar = float(vol[ga].sum())
        add(kind, kseq[gb[0]], sorted(int(v) for v in ids[ga]),
            sorted(int(v) for v in ids[gb]), ex, ey, diam, wsum / vpar if vpar > 0 else nan)
    return ids, _events_df(cols, det.ps)


def _cut(a_nodes: np.ndarray, b_nodes: np.ndarray, ia: np.ndarray, ib: np.ndarray,
         frac: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split an m:n component along its strong edges if no particle is left without one."""
    sel = np.isin(ia, a_nodes) & (frac >= _STRONG_OVERLAP)
    sa_, sb_ = ia[sel], ib[sel]
    if not (np.isin(a_nodes, sa_).all() and np.isin(b_nodes, sb_).all()):
        return [(a_nodes, b_nodes)]
    li = np.searchsorted(a_nodes, sa_)
    lj = np.searchsorted(b_nodes, sb_) + a_nodes.size
    m = a_nodes.size + b_nodes.size
    g = coo_matrix((np.ones(li.size), (li, lj)), shape=(m, m))
    nc, lab = connected_components(g, directed=False)
    if nc == 1:
        return [(a_nodes, b_nodes)]
    return [(a_nodes[lab[:a_nodes.size] == c], b_nodes[lab[a_nodes.size:] == c])
            for c in range(nc)]


def _bridges(det: _Det, kseq: np.ndarray, cum: np.ndarray, lost: np.ndarray, born: np.ndarray,
             memory: int, maxd: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one (lost row, born row) pairs: at most ``memory`` present frames missing, within
    ``maxd`` px of the drift-corrected last position, volume within a factor 2; nearest first."""
    y, x, vol = det.y, det.x, det.vol
    cand = []
    n = cum.shape[0]
    for gap in range(2, memory + 2):
        src = lost[kseq[lost] + gap < n]
        if src.size == 0:
            continue
        d = cum[kseq[src] + gap] - cum[kseq[src]]
        i, j, dist = _near_pairs(y[src] + d[:, 0], x[src] + d[:, 1], kseq[src] + gap, maxd,
                                 y[born], x[born], kseq[born])
        a, b = src[i], born[j]
        r = vol[b] / np.maximum(vol[a], 1e-12)
        ok = (r < _MEMORY_VOLUME) & (r > 1 / _MEMORY_VOLUME)
        cand.append(np.column_stack([dist[ok], a[ok], b[ok]]))
    if not cand:
        e = np.zeros(0, np.int64)
        return e, e
    c = np.concatenate(cand)
    c = c[np.lexsort((c[:, 2], c[:, 1], c[:, 0]))]
    used_a: set[int] = set()
    used_b: set[int] = set()
    out_a, out_b = [], []
    for _, a, b in c.tolist():
        a, b = int(a), int(b)
        if a in used_a or b in used_b:
            continue
        used_a.add(a)
        used_b.add(b)
        out_a.append(a)
        out_b.append(b)
    return np.asarray(out_a, np.int64), np.asarray(out_b, np.int64)


def _events_df(cols: dict[str, list[Any]], ps: float) -> pd.DataFrame:
    n = len(cols["kind"])
    df = pd.DataFrame({
        "kind": pd.Series(cols["kind"], dtype=object),
        "frame": np.asarray(cols["frame"], np.int64),
        "time_s": np.asarray(cols["time_s"], float),
        "parents": pd.Series(cols["parents"], dtype=object),
        "children": pd.Series(cols["children"], dtype=object),
        "child": np.asarray(cols["child"], np.int64),
        "x_nm": np.asarray(cols["x_px"], float) * ps,
        "y_nm": np.asarray(cols["y_px"], float) * ps,
        "x_px": np.asarray(cols["x_px"], float),
        "y_px": np.asarray(cols["y_px"], float),
        "eq_diameter_nm": np.asarray(cols["eq_diameter_nm"], float),
        "volume_ratio": np.asarray(cols["volume_ratio"], float),
    })
    if n:
        rank = {k: i for i, k in enumerate(EVENT_KINDS)}
        first = [min(p_ + c_) for p_, c_ in zip(cols["parents"], cols["children"])]
        order = np.lexsort((np.asarray(first), np.asarray([rank[k] for k in cols["kind"]]),
                            df["frame"].to_numpy()))
        df = df.iloc[order].reset_index(drop=True)
    return df


def _trajectories(det: _Det, seq: np.ndarray, cum: np.ndarray, ids: np.ndarray) -> pd.DataFrame:
    out = det.df.drop(columns=[c for c in ("particle", "x_sample_nm", "y_sample_nm")
                               if c in det.df.columns])
    out.insert(0, "particle", ids.astype(np.int64))
    c = cum[_kseq(det, seq)] if len(det.frame) else np.zeros((0, 2))
    out["x_sample_nm"] = (det.x - c[:, 1]) * det.ps
    out["y_sample_nm"] = (det.y - c[:, 0]) * det.ps
    return out


def _setup(detections: pd.DataFrame, pixel_size_nm: float | None,
           frame_shape: tuple[int, int] | None, all_frames: Iterable[int] | None,
           params: LinkParams, drift: pd.DataFrame | None, time_s: Any, fps: float | None
           ) -> tuple[_Det, np.ndarray, pd.DataFrame, np.ndarray]:
    params.validate()
    det = _Det(detections, pixel_size_nm, frame_shape)
    seq = _sequence(det, all_frames)
    if drift is None:
        drift = _drift(det, seq, params.max_disp_nm / det.ps, 3, 9)
    else:
        cum = _drift_columns(seq, drift, ("dy_px", "dx_px"))
        drift = pd.DataFrame({"frame": seq, "dy_px": cum[:, 0], "dx_px": cum[:, 1]})
    times = _frame_times(det, seq, time_s, fps)
    return det, seq, drift, times


def link(detections: pd.DataFrame, *, overlaps: OverlapTable | None = None,
         pixel_size_nm: float | None = None, max_disp_nm: float = 1.0,
         min_overlap: float = 0.2, min_absorbed_volume: float = 0.03, memory: int = 0,
         frame_shape: tuple[int, int] | None = None, all_frames: Iterable[int] | None = None,
         drift: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Link per-frame detections into trajectories, with coalescence / vanish / appear events.

    Parameters
    ----------
    detections : pandas.DataFrame
        Per-frame detections (see the module docstring); the order of rows does not matter.
    overlaps : pandas.DataFrame, optional
        ``frame_a``, ``frame_b``, ``a``, ``b``, ``n_px``: mask overlaps of consecutive frames, as
        made by :func:`overlap_table` with the same frames and drift.  A frame pair without rows
        has no overlaps.  None: centroid-only linking (equivalent discs stand in for the masks).
    pixel_size_nm : float, optional
        Inferred from ``x_nm / x_px`` when both are present.
    max_disp_nm, min_overlap, min_absorbed_volume, memory
        See :class:`LinkParams`.
    frame_shape : (int, int), optional
        ``(H, W)``; only used to decide ``touches_border`` when that column is missing.
    all_frames : array of int, optional
        Every frame of the movie in order; frames without detections take part as empty frames.
        Default: the frames present in ``detections``.
    drift : pandas.DataFrame, optional
        ``frame``, ``dy_px``, ``dx_px`` (cumulative); default :func:`estimate_drift`.

    Returns
    -------
    trajectories : pandas.DataFrame
        The detections sorted by (frame, label) with ``particle`` (int64 trajectory id >= 1) in
        front and ``x_sample_nm``, ``y_sample_nm`` (position minus cumulative drift) appended.
    events : pandas.DataFrame
        ``kind`` (one of :data:`EVENT_KINDS`), ``frame`` (int64), ``time_s``, ``parents`` and
        ``children`` (lists of int64 ids; parents exist in the previous present frame, children
        in ``frame``), ``child`` (the only child, or -1), ``x_nm``, ``y_nm``, ``x_px``, ``y_px``,
        ``eq_diameter_nm``, ``volume_ratio``; sorted by frame, kind, smallest id.  Write with
        :data:`EVENTS_SCHEMA`.

    Raises
    ------
    EtemsegError
        Malformed detections (missing columns, a label twice in a frame, ...).
    ConfigError
        A bad parameter.
    """
    params = LinkParams(max_disp_nm=max_disp_nm, min_overlap=min_overlap,
                        min_absorbed_volume=min_absorbed_volume, memory=memory)
    det, seq, drift_df, times = _setup(detections, pixel_size_nm, frame_shape, all_frames,
                                       params, drift, None, None)
    cum = drift_df[["dy_px", "dx_px"]].to_numpy(float)
    edges = None
    if overlaps is not None:
        for c in ("frame_a", "frame_b", "a", "b", "n_px"):
            if c not in overlaps.columns:
                raise EtemsegError(f"overlaps: missing column {c!r}")
        fa = overlaps["frame_a"].to_numpy(np.int64)
        fb = overlaps["frame_b"].to_numpy(np.int64)
        ka, kb = np.searchsorted(seq, fa), np.searchsorted(seq, fb)
        top = max(seq.size - 1, 0)
        bad = (kb != ka + 1) | (kb > top)
        if seq.size:
            bad |= (seq[np.minimum(ka, top)] != fa) | (seq[np.minimum(kb, top)] != fb)
        if bad.any():
            q = int(np.flatnonzero(bad)[0])
            raise EtemsegError(f"overlaps: frames ({fa[q]}, {fb[q]}) are not consecutive "
                               "frames of the movie")
        ra = _rows_of_keys(det, fa, overlaps["a"].to_numpy(np.int64))
        rb = _rows_of_keys(det, fb, overlaps["b"].to_numpy(np.int64))
        ok = (ra >= 0) & (rb >= 0)
        edges = (ra[ok], rb[ok], overlaps["n_px"].to_numpy(float)[ok])
    ids, events = _link_all(det, seq, cum, times, params, edges)
    return _trajectories(det, seq, cum, ids), events


def _rows_of_keys(det: _Det, frames: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Global row of each (frame, label) (-1 where absent); rows are sorted by (frame, label)."""
    if len(det.frame) == 0:
        return np.full(frames.size, -1, np.int64)
    top = int(max(det.label.max(), labels.max() if labels.size else 0)) + 1
    keys = det.frame * top + det.label
    q = frames * top + labels
    pos = np.minimum(np.searchsorted(keys, q), keys.size - 1)
    return np.where(keys[pos] == q, pos, -1).astype(np.int64)


def link_movie(detections: pd.DataFrame,
               label_source: Callable[[int], np.ndarray] | None, *,
               pixel_size_nm: float | None = None, frame_shape: tuple[int, int] | None = None,
               all_frames: Iterable[int] | None = None, time_s: Any = None,
               fps: float | None = None, max_disp_nm: float = 1.0, min_overlap: float = 0.2,
               min_absorbed_volume: float = 0.03, memory: int = 0
               ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Link a whole movie, streaming frame pairs, and summarise every frame.

    The drift is estimated from the detections first (:func:`estimate_drift`); then the label
    images are requested in frame order, once each, and every one is kept only until the next has
    been compared with it (memory: two label images plus the overlap edges, whatever the movie
    length); then all frame pairs are linked at once.

    Parameters
    ----------
    detections : pandas.DataFrame
        Detections of the whole movie, e.g. the concatenated chunk tables (order irrelevant).
    label_source : callable or None
        ``label_source(frame)`` returns that frame's label image, whose ids are the detections'
        ``label`` (components without a detection row are ignored).  None: centroid-only linking.
    pixel_size_nm : float, optional
        Inferred from ``x_nm / x_px`` when both are present.
    frame_shape : (int, int), optional
        ``(H, W)``; taken from the first label image when None (required without label images).
    all_frames : array of int, optional
        Every frame of the movie (e.g. ``arange(store.n_frames)``); frames without detections take
        part as empty frames and get a frames-table row.  Default: the frames of ``detections``.
    time_s : array, optional
        Time of each frame of ``all_frames``; else ``frame / fps``; else from the detections
        (linear fit over frames without detections).
    fps : float, optional
    max_disp_nm, min_overlap, min_absorbed_volume, memory
        See :class:`LinkParams`.

    Returns
    -------
    trajectories, events : pandas.DataFrame
        As :func:`link`.
    frames : pandas.DataFrame
        :func:`frames_table` of the trajectories, with the drift and per-kind event counts.
    """
    if label_source is None and frame_shape is None:
        raise EtemsegError("link_movie: frame_shape is needed without label images")
    params = LinkParams(max_disp_nm=max_disp_nm, min_overlap=min_overlap,
                        min_absorbed_volume=min_absorbed_volume, memory=memory)
    det, seq, drift_df, times = _setup(detections, pixel_size_nm, frame_shape, all_frames,
                                       params, None, time_s, fps)
    cum = drift_df[["dy_px", "dx_px"]].to_numpy(float)
    shape = tuple(int(v) for v in frame_shape) if frame_shape is not None else None
    edges = None
    if label_source is not None:
        shifts = _shift_steps(seq, drift_df)
        parts_a, parts_b, parts_n = [], [], []
        prev = None
        for k in range(seq.size):
            f = int(seq[k])
            lab = _check_labels(label_source(f), f"label_source({f})")
            if shape is None:
                shape = lab.shape
            elif lab.shape != shape:
                raise EtemsegError(f"label_source({f}): shape {lab.shape}, expected {shape}")
            if prev is not None:
                fa = int(seq[k - 1])
                sa, sb = det.rows(fa), det.rows(f)
                if sa.stop > sa.start and sb.stop > sb.start:
                    a, b, nn = _overlap_arrays(prev, lab, _shift_of(shifts[k]),
                                               int(det.label[sa.stop - 1]),
                                               int(det.label[sb.stop - 1]))
                    ra, rb = _rows_of_labels(det, fa, a), _rows_of_labels(det, f, b)
                    ok = (ra >= 0) & (rb >= 0)
                    parts_a.append(ra[ok])
                    parts_b.append(rb[ok])
                    parts_n.append(nn[ok].astype(float))
            prev = lab
        e = np.zeros(0, np.int64)
        edges = (np.concatenate(parts_a) if parts_a else e,
                 np.concatenate(parts_b) if parts_b else e,
                 np.concatenate(parts_n) if parts_n else np.zeros(0))
    ids, events = _link_all(det, seq, cum, times, params, edges)
    traj = _trajectories(det, seq, cum, ids)
    if shape is None:  # label images requested but the movie has no frame
        raise EtemsegError("link_movie: frame_shape is needed for a movie without frames")
    frames = frames_table(traj, frame_shape=shape, pixel_size_nm=det.ps, all_frames=seq,
                          time_s=times, drift=drift_df, events=events)
    return traj, events, frames


# --------------------------------------------------------------------------------------------
# per-frame summary
# --------------------------------------------------------------------------------------------


def frames_table(trajectories: pd.DataFrame, *, frame_shape: tuple[int, int],
                 pixel_size_nm: float, all_frames: Iterable[int], time_s: Any = None,
                 fps: float | None = None, drift: pd.DataFrame | None = None,
                 events: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per frame of the movie: particle count, coverage, sizes, density, drift, events.

    Every frame of ``all_frames`` gets a row, also frames without particles (``count`` 0,
    ``coverage`` 0, size statistics NaN) -- never a silent gap.

    Parameters
    ----------
    trajectories : pandas.DataFrame
        Detections or trajectories: ``frame`` and a size (``area_px``, ``area_nm2`` or
        ``eq_diameter_nm``); ``eq_diameter_nm`` is derived from the area when missing.
    frame_shape : (int, int)
        ``(H, W)`` in pixels.
    pixel_size_nm : float
    all_frames : array of int
        Every frame of the movie.
    time_s : array, optional
        Time of each frame of ``all_frames``; else ``frame / fps``; else from the table's
        ``time_s`` (linear fit over frames without particles), else NaN.
    fps : float, optional
    drift : pandas.DataFrame, optional
        ``frame``, ``dy_px``, ``dx_px`` (:func:`estimate_drift`); NaN drift columns when None.
    events : pandas.DataFrame, optional
        Adds ``n_<kind>`` counts for every kind of :data:`EVENT_KINDS`.

    Returns
    -------
    pandas.DataFrame
        ``frame``, ``time_s``, ``count``, ``coverage`` (particle area / frame area),
        ``mean_eq_diameter_nm``, ``median_eq_diameter_nm``, ``std_eq_diameter_nm`` (ddof 1),
        ``number_density_per_um2``, ``drift_x_nm``, ``drift_y_nm`` [, ``n_<kind>``...].
    """
    if not (isinstance(pixel_size_nm, (int, float, np.integer, np.floating))
            and math.isfinite(float(pixel_size_nm)) and pixel_size_nm > 0):
        raise ConfigError(f"track.pixel_size_nm: must be a finite number > 0 "
                          f"(got {pixel_size_nm!r})")
    h, w = (int(v) for v in frame_shape)
    if h <= 0 or w <= 0:
        raise EtemsegError(f"frames_table: bad frame_shape {frame_shape!r}")
    ps = float(pixel_size_nm)
    seq = _all_frames(all_frames)
    if "frame" not in trajectories.columns:
        raise EtemsegError("trajectories: missing column 'frame'")
    fr = trajectories["frame"].to_numpy(np.int64)
    extra = np.setdiff1d(fr, seq)
    if extra.size:
        raise EtemsegError(f"trajectories: frame {int(extra[0])} is not in all_frames")
    if "area_px" in trajectories.columns:
        area_px = trajectories["area_px"].to_numpy(float)
    elif "area_nm2" in trajectories.columns:
        area_px = trajectories["area_nm2"].to_numpy(float) / ps**2
    elif "eq_diameter_nm" in trajectories.columns:
        area_px = math.pi * (trajectories["eq_diameter_nm"].to_numpy(float) / ps / 2) ** 2
    else:
        raise EtemsegError("trajectories: need a size column: area_px, area_nm2 or "
                           "eq_diameter_nm")
    if "eq_diameter_nm" in trajectories.columns:
        diam = trajectories["eq_diameter_nm"].to_numpy(float)
    else:
        diam = 2 * np.sqrt(area_px / math.pi) * ps
    k = np.searchsorted(seq, fr)
    n = seq.size
    count = np.bincount(k, minlength=n)
    area = np.bincount(k, weights=area_px, minlength=n)
    s1 = np.bincount(k, weights=diam, minlength=n)
    s2 = np.bincount(k, weights=diam * diam, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, s1 / np.maximum(count, 1), np.nan)
        var = np.where(count > 1, (s2 - count * mean * mean) / np.maximum(count - 1, 1), np.nan)
    std = np.sqrt(np.maximum(var, 0.0))
    std[count < 2] = np.nan
    median = np.full(n, np.nan)
    if fr.size:
        order = np.lexsort((diam, k))
        ks, ds = k[order], diam[order]
        starts = np.searchsorted(ks, np.arange(n), side="left")
        stops = np.searchsorted(ks, np.arange(n), side="right")
        nz = stops > starts
        lo = starts + (stops - starts - 1) // 2
        hi = starts + (stops - starts) // 2
        median[nz] = 0.5 * (ds[lo[nz]] + ds[hi[nz]])
    # times
    if time_s is not None:
        t = np.asarray(time_s, dtype=float)
        if t.shape != seq.shape:
            raise EtemsegError(f"time_s: expected {seq.size} values (one per frame), "
                               f"got {t.size}")
    elif fps is not None:
        t = seq / float(fps)
    else:
        t = np.full(n, np.nan)
        if "time_s" in trajectories.columns and fr.size:
            tt = trajectories["time_s"].to_numpy(float)
            t[k] = tt
            known = np.isfinite(t)
            if known.sum() >= 2 and not known.all():
                a, b = np.polyfit(seq[known].astype(float), t[known], 1)
                t[~known] = a * seq[~known] + b
    field_um2 = h * w * ps * ps * 1e-6
    cols: dict[str, np.ndarray] = {
        "frame": seq,
        "time_s": t,
        "count": count.astype(np.int64),
        "coverage": area / (h * w),
        "mean_eq_diameter_nm": mean,
        "median_eq_diameter_nm": median,
        "std_eq_diameter_nm": std,
        "number_density_per_um2": count / field_um2,
    }
    if drift is not None and n:
        cum = _drift_columns(seq, drift, ("dy_px", "dx_px"))
        cols["drift_x_nm"] = cum[:, 1] * ps
        cols["drift_y_nm"] = cum[:, 0] * ps
    else:
        cols["drift_x_nm"] = np.full(n, np.nan)
        cols["drift_y_nm"] = np.full(n, np.nan)
    if events is not None:
        ef = events["frame"].to_numpy(np.int64) if len(events) else np.zeros(0, np.int64)
        ek = events["kind"].to_numpy(object) if len(events) else np.zeros(0, object)
        inside = np.isin(ef, seq)
        kk = np.searchsorted(seq, ef[inside])
        ek = ek[inside]
        for kind in EVENT_KINDS:
            cols[f"n_{kind}"] = np.bincount(kk[ek == kind], minlength=n).astype(np.int64)
    return pd.DataFrame(cols)


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
    overlap : bool
        Link by mask overlap (label images recomputed per frame); False: centroids only.

    Raises
    ------
    InputFileError
        A chunk table is missing (never a silent gap in the frames table).
    """
    from pathlib import Path

    from scipy import ndimage

    from etemseg.errors import InputFileError
    from etemseg.stages.measure import read_particle_table
    from etemseg.io.store import MovieStore

    frames, masks = MovieStore.open(frames_path), MovieStore.open(masks_path)
    particles_dir = Path(particles_dir)
    tables = []
    for k in range(masks.n_chunks):
        path = particles_dir / f"chunk-{k}.parquet"
        if not path.exists():
            raise InputFileError(path, f"detections of chunk {k} are missing; measure it first")
        tables.append(read_particle_table(path, frames=masks.chunk_bounds(k)))
    nonempty = [t for t in tables if len(t)]
    detections = pd.concat(nonempty, ignore_index=True) if nonempty else tables[0]
    block: dict = {}

    def label_source(frame: int) -> np.ndarray:
        if not (block and block["t0"] <= frame < block["t1"]):
            b0 = frame - frame % int(masks.array.chunks[0])
            data = masks.read(b0, b0 + int(masks.array.chunks[0]))
            block.update(t0=b0, t1=b0 + len(data), data=data)
        labels, _ = ndimage.label(block["data"][frame - block["t0"]] > 0,
                                  structure=np.ones((3, 3), bool))
        return labels

    traj, events, frames_t = link_movie(
        detections, label_source if overlap else None, pixel_size_nm=frames.pixel_size_nm,
        frame_shape=frames.frame_shape, all_frames=np.arange(frames.n_frames),
        time_s=frames.time_s(), **link_options)
    for table in (traj, events, frames_t):
        for name, value in (("model", model), ("movie", movie)):
            if name in table:
                table.pop(name)
            table.insert(0, name, pd.Series([value] * len(table), index=table.index, dtype=str))
    return traj, events, frames_t


def tables_empty(particles_dir) -> pd.DataFrame:
    """Schema-true empty detections (read from the first chunk file)."""
    from pathlib import Path

    first = sorted(Path(particles_dir).glob("chunk-*.parquet"))[0]
    return pd.read_parquet(first)
