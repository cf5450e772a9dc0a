"""Compiled temporal means of frames (numba, GIL released): the kernel under
:func:`etemseg.io.store.window_means`, in its own module so that readers of stores that never
average frames do not load numba."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _frame_of(p0, p1, p2, k):  # pragma: no cover - numba
    """Frame ``k`` of the concatenation of ``p0``, ``p1``, ``p2``."""
    if k < p0.shape[0]:
        return p0[k]
    k -= p0.shape[0]
    if k < p1.shape[0]:
        return p1[k]
    return p2[k - p1.shape[0]]


@numba.njit(cache=True, nogil=True)
def running_means(p0, p1, p2, a, t0, t1, window, out, csum):  # pragma: no cover - numba
    """:func:`etemseg.io.store.window_means` into ``out`` from the frames ``p0``, ``p1``,
    ``p2`` (consecutive, starting at frame ``a``), with ``csum`` (zeros) the running sum: one
    pass per frame, adding the frame that enters the window and subtracting the one that
    leaves."""
    h, b = window // 2, a + p0.shape[0] + p1.shape[0] + p2.shape[0]
    lo = hi = max(a, t0 - h)          # frames [lo, hi) are in csum
    ny, nx = csum.shape
    for t in range(t0, t1):
        want_lo, want_hi = max(a, t - h), min(b, t + h + 1)
        while hi < want_hi and lo < want_lo:      # one in, one out: the steady state
            f, g = _frame_of(p0, p1, p2, hi - a), _frame_of(p0, p1, p2, lo - a)
            for i in range(ny):
                for j in range(nx):
                    csum[i, j] = (csum[i, j] + np.float32(f[i, j])) - np.float32(g[i, j])
            hi += 1
            lo += 1
        while hi < want_hi:
            f = _frame_of(p0, p1, p2, hi - a)
            for i in range(ny):
                for j in range(nx):
                    csum[i, j] += np.float32(f[i, j])
            hi += 1
        while lo < want_lo:
            g = _frame_of(p0, p1, p2, lo - a)
            for i in range(ny):
                for j in range(nx):
                    csum[i, j] -= np.float32(g[i, j])
            lo += 1
        n, o = np.float32(hi - lo), out[t - t0]
        for i in range(ny):
            for j in range(nx):
                o[i, j] = csum[i, j] / n
    return out
