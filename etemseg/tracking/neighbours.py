"""Neighbours of points across consecutive frames, for all frame pairs of a movie at once.

Points carry a *layer* (the index of their frame in the movie's frame sequence); a query point
moved into layer ``k + 1`` finds the points of frame ``k + 1`` near it.  A uniform grid (cell = the
largest search radius) with sorted cell keys answers all queries of the whole movie in one
compiled pass -- no per-frame Python loop, no KD-tree per frame.  Coordinates are pixels.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["mutual_nearest", "near_pairs"]


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


def near_pairs(ya: np.ndarray, xa: np.ndarray, ka: np.ndarray, reach: np.ndarray | float,
               yb: np.ndarray, xb: np.ndarray, kb: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs of a query point and a point of the same layer closer than the query's reach.

    Parameters
    ----------
    ya, xa : (Na,) float
        Query points, px.
    ka : (Na,) int
        Layer of each query point.
    reach : (Na,) float or float
        Search radius of each query point, px.
    yb, xb : (Nb,) float
        Points searched, px.
    kb : (Nb,) int
        Layer of each point searched.

    Returns
    -------
    i, j : (M,) int64
        Every pair with ``ka[i] == kb[j]`` and distance < ``reach[i]``, in no particular order.
    d : (M,) float
        Their distances, px.
    """
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
    """Nearest partner of every a (``best_j``, -1 for none) and of every b (``best_i``) among the
    pairs ``(i, j)`` at distance ``d``; the first pair wins a tie."""
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


def mutual_nearest(ya: np.ndarray, xa: np.ndarray, ka: np.ndarray, yb: np.ndarray,
                   xb: np.ndarray, kb: np.ndarray, gate: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Mutually nearest pairs of the same layer within ``gate`` px.

    Parameters as :func:`near_pairs` (``gate`` the one reach of every query point).

    Returns
    -------
    i, j : (M,) int64
        Indices into the a points (ascending) and the b points: each is the other's nearest
        neighbour of its layer within ``gate``.
    """
    i, j, d = near_pairs(ya, xa, ka, gate, yb, xb, kb)
    if i.size == 0:
        e = np.zeros(0, np.int64)
        return e, e
    best_j, best_i = _nearest_kernel(i, j, d, ya.size, yb.size)
    a = np.flatnonzero(best_j >= 0)
    b = best_j[a]
    m = best_i[b] == a
    return a[m].astype(np.int64), b[m].astype(np.int64)
