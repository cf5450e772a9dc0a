"""Generic image kernels: Gaussian, detrended padding, priority-flood reconstruction, disk
opening, thresholds and binary clean-up (numba, float32/uint8, single thread, GIL released).

The low layer under the classical pseudo-label recipe (:mod:`etemseg.stages.pseudolabel`) and the
inference mask filter (:mod:`etemseg.stages.infer`), as ``skimage.morphology.grayreconstruct``
sits beside ``gray``: every caller imports downwards, this module imports no stage.  Each
function equals a scikit-image / scipy counterpart (to float32 rounding where stated) and is
tested against it:

* :func:`gaussian_kernel1d`, :func:`gaussian_fast` -- ``scipy.ndimage.gaussian_filter``
  (``mode='nearest'``, truncate 4), as ``skimage.filters.gaussian``;
* :func:`pad_frame` -- mirror padding about the frame edge after removing a fitted quadratic
  illumination trend;
* :func:`flood_reconstruct` -- ``skimage.morphology.reconstruction`` from a border seed, as an
  O(n) priority flood with a bucket queue on integer keys (8-connectivity);
* :func:`disk_halfwidths`, :func:`opening_disk_fast` -- grey opening by
  ``skimage.morphology.disk``, decomposed exactly into 1-D running minima/maxima;
* :func:`remove_small_components` -- remove 8-connected components under a minimum area (the
  connectivity of :mod:`etemseg.analysis.measure`, so every kept component is one particle).

The numba kernels that the fast recipe calls on its reused work arrays are public as well
(:func:`gaussian_into`, :func:`flood_keys_from_float`, :func:`flood_keys_reflood`,
:func:`priority_flood`, :func:`rescale_inplace`, :func:`image_minmax`, :func:`otsu_threshold`,
:func:`li_threshold`, :func:`threshold_into`, :func:`fill_holes_inplace`,
:func:`remove_small_inplace`, :func:`above_level_filtered`, :func:`component_runs`); they write
into caller-provided arrays and check nothing.

Flood keys: an ``(H, W)`` image is flooded as a flat ``((H + 2) * (W + 2),)`` int32 key array with
a 1-px ring of visited pixels; a key is a grey level in ``[0, levels)``, bit 30 marks a visited
pixel and :data:`FLOOD_KEY_MASK` recovers the level.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from etemseg.errors import ConfigError, EtemsegError

__all__ = [
    "FLOOD_KEY_MASK",
    "FLOOD_MAX_LEVELS",
    "disk_halfwidths",
    "fill_holes_inplace",
    "flood_keys_from_float",
    "flood_keys_reflood",
    "flood_reconstruct",
    "gaussian_fast",
    "gaussian_into",
    "gaussian_kernel1d",
    "histogram_above",
    "image_minmax",
    "li_threshold",
    "opening_disk_fast",
    "otsu_threshold",
    "otsu_threshold_below",
    "pad_frame",
    "priority_flood",
    "remove_small_components",
    "remove_small_inplace",
    "rescale_inplace",
    "threshold_into",
]

#: Most grey levels a priority flood takes (keys are 16-bit levels).
FLOOD_MAX_LEVELS = 65536
_VIS = 1 << 30  # "visited" bit of a flood key
_RING = _VIS | (1 << 29)  # key of the 1-px ring around the image: visited, never a level
#: ``key & FLOOD_KEY_MASK`` is the grey level of a (visited) flood key.
FLOOD_KEY_MASK = (1 << 29) - 1


# --------------------------------------------------------------------------------------------
# Gaussian filter (scipy.ndimage kernel, 'nearest' borders)
# --------------------------------------------------------------------------------------------


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The normalised 1-D kernel of ``scipy.ndimage.gaussian_filter``.

    Parameters
    ----------
    sigma : float
        Standard deviation in px (> 0).
    truncate : float
        Radius ``int(truncate * sigma + 0.5)`` px, as scipy.

    Returns
    -------
    numpy.ndarray
        ``(2 * radius + 1,)`` float32 weights (computed in float64, sum 1).
    """
    radius = int(truncate * float(sigma) + 0.5)
    xs = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (float(sigma) ** 2) * xs * xs)
    phi /= phi.sum()
    return phi.astype(np.float32)


@numba.njit(cache=True, nogil=True)
def gaussian_into(x, w, tmp, out):  # pragma: no cover - numba
    """Separable symmetric convolution with 'nearest' borders (float32) into ``out``.

    ``x``, ``tmp`` (work) and ``out``: ``(H, W)`` float32, C-contiguous rows; ``w``: odd-length
    float32 weights (:func:`gaussian_kernel1d`).  Returns ``out``.  Vertical pass row by row
    into ``tmp``, horizontal pass on a padded row buffer into ``out``; the inner loops run over
    contiguous 1-D slices so that LLVM vectorises them.
    """
    h, wd = x.shape
    rad = (w.shape[0] - 1) // 2
    w0 = w[rad]
    for i in range(h):
        row = tmp[i]
        c = x[i]
        for j in range(wd):
            row[j] = w0 * c[j]
        for k in range(1, rad + 1):
            a = x[max(i - k, 0)]
            b = x[min(i + k, h - 1)]
            wk = w[rad + k]
            for j in range(wd):
                row[j] += wk * (a[j] + b[j])
    buf = np.empty(wd + 2 * rad, np.float32)
    acc = np.empty(wd, np.float32)
    for i in range(h):
        src = tmp[i]
        for j in range(rad):
            buf[j] = src[0]
            buf[wd + rad + j] = src[wd - 1]
        for j in range(wd):
            buf[rad + j] = src[j]
        mid = buf[rad: rad + wd]
        for j in range(wd):
            acc[j] = w0 * mid[j]
        for k in range(1, rad + 1):
            wk = w[rad + k]
            lo = buf[rad - k: rad - k + wd]
            hi = buf[rad + k: rad + k + wd]
            for j in range(wd):
                acc[j] += wk * (lo[j] + hi[j])
        dst = out[i]
        for j in range(wd):
            dst[j] = acc[j]
    return out


def gaussian_fast(x: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Gaussian filter equal (to float32 rounding) to ``skimage.filters.gaussian(x, sigma)``.

    Parameters
    ----------
    x : numpy.ndarray
        ``(H, W)`` image; converted to C-contiguous float32.
    sigma, truncate : float
        As in ``scipy.ndimage.gaussian_filter``; borders ``mode='nearest'``.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` float32.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    return gaussian_into(x, gaussian_kernel1d(sigma, truncate), np.empty_like(x), np.empty_like(x))


# --------------------------------------------------------------------------------------------
# detrended mirror padding
# --------------------------------------------------------------------------------------------


def _trend_coefficients(g: np.ndarray) -> tuple[np.ndarray, float, float, float, float,
                                                 float, float]:
    """Robust quadratic trend of ``g`` for :func:`pad_frame`.

    Least squares on a regular grid of ~8k pixels in unit-scaled coordinates, refitted twice
    without the dark outliers (residual below ``-1.5`` robust sigmas: the particles, which would
    otherwise pull the surface down towards the edges they touch).

    Returns
    -------
    coef : (6,) float64
        ``B = c0 + c1 u + c2 v + c3 u^2 + c4 u v + c5 v^2`` with ``u = (y - yc) / sy``,
        ``v = (x - xc) / sx``.
    yc, xc, sy, sx : float
    lo, hi : float
        Range of ``B`` over the sampled frame pixels (the pad's trend is clamped to it).
    """
    h, w = g.shape
    yc, xc = (h - 1) / 2.0, (w - 1) / 2.0
    sy, sx = max(yc, 1.0), max(xc, 1.0)  # unit-scale coordinates: well-conditioned fit
    step = max(1, int(math.sqrt(h * w / 8192.0)))  # ~8k samples whatever the frame size
    sub = g[::step, ::step].astype(np.float64).ravel()
    yy, xx = np.meshgrid((np.arange(0, h, step) - yc) / sy, (np.arange(0, w, step) - xc) / sx,
                         indexing="ij")
    yy = yy.ravel()
    xx = xx.ravel()
    design = np.stack([np.ones_like(yy), yy, xx, yy * yy, yy * xx, xx * xx], axis=1)
    keep = np.ones(sub.shape, bool)
    coef = np.array([float(np.mean(sub)), 0.0, 0.0, 0.0, 0.0, 0.0])
    for _ in range(3):
        if np.count_nonzero(keep) < 12:
            break
        c = np.linalg.lstsq(design[keep], sub[keep], rcond=None)[0]
        if not np.all(np.isfinite(c)):  # pragma: no cover - degenerate input
            break
        coef = c
        res = sub - design @ coef
        sigma = 1.4826 * float(np.median(np.abs(res - np.median(res))))
        if sigma <= 0:
            break
        keep = res > -1.5 * sigma
    fit = design @ coef
    return coef, yc, xc, sy, sx, float(fit.min()), float(fit.max())


@numba.njit(cache=True, nogil=True, inline="always")
def _mirror(i, n):  # pragma: no cover - numba
    while i < 0 or i >= n:
        i = -i - 1 if i < 0 else 2 * n - 1 - i
    return i


@numba.njit(cache=True, nogil=True, inline="always")
def _quad(c, u, v):  # pragma: no cover - numba
    return c[0] + c[1] * u + c[2] * v + c[3] * u * u + c[4] * u * v + c[5] * v * v


@numba.njit(cache=True, nogil=True)
def _pad_ring(gp, pad, coef, yc, xc, sy, sx, lo, hi):  # pragma: no cover - numba
    """Fill the ``pad``-wide ring of ``gp`` ((H+2p, W+2p)) whose centre already holds the frame:
    ``gp[pad + y, pad + x] = g[ys, xs] - B(ys, xs) + clip(B(y, x), lo, hi)`` with ``(ys, xs)``
    the mirror position (numpy 'symmetric') and ``B`` the quadratic trend."""
    hp, wp = gp.shape
    h = hp - 2 * pad
    w = wp - 2 * pad
    for i in range(hp):
        y = i - pad
        ys = _mirror(y, h)
        ud = (y - yc) / sy
        us = (ys - yc) / sy
        inside = 0 <= y < h
        j = 0
        while j < wp:
            if inside and j == pad:
                j = pad + w
                continue
            x = j - pad
            xs = _mirror(x, w)
            vd = (x - xc) / sx
            vs = (xs - xc) / sx
            td = min(max(_quad(coef, ud, vd), lo), hi)
            gp[i, j] = gp[pad + ys, pad + xs] - _quad(coef, us, vs) + td
            j += 1
    return gp


def pad_frame(g: np.ndarray, pad: int, out: np.ndarray | None = None) -> np.ndarray:
    """Detrended mirror padding of a (smoothed) frame, e.g. before border-seeded reconstructions.

    A quadratic surface ``B(y, x)`` is fitted to ``g`` (robustly, without the dark particles, see
    :func:`_trend_coefficients`); the pad is the mirror image (numpy ``mode="symmetric"``, about
    the frame edge, repeated if ``pad`` exceeds the frame) of ``g - B`` plus ``B`` extended into
    the pad, clamped to the range ``B`` takes inside the frame (no runaway extrapolation).
    Particles cut by the frame edge are mirrored into closed basins, while a smooth illumination
    gradient continues through the edge instead of being folded into a valley (plain mirroring
    makes the darker side of a gradient a spurious basin along the edge).

    Parameters
    ----------
    g : numpy.ndarray
        ``(H, W)`` float32 or float64 image.  May be the centre view ``out[pad:-pad, pad:-pad]``
        of ``out`` itself (then only the ring is written).
    pad : int
        Pad width in px (>= 0).
    out : numpy.ndarray, optional
        ``(H + 2 pad, W + 2 pad)`` C-contiguous array of ``g``'s dtype to write into.

    Returns
    -------
    numpy.ndarray
        ``(H + 2 pad, W + 2 pad)``, same dtype as ``g``; the centre is ``g`` exactly (``g``
        itself when ``pad == 0``).
    """
    if pad <= 0:
        return g
    coef, yc, xc, sy, sx, lo, hi = _trend_coefficients(g)
    h, w = g.shape
    if out is None:
        out = np.empty((h + 2 * pad, w + 2 * pad), dtype=g.dtype)
    centre = out[pad:pad + h, pad:pad + w]
    if not np.shares_memory(centre, g):
        centre[...] = g
    return _pad_ring(out, int(pad), coef, yc, xc, sy, sx, lo, hi)


# --------------------------------------------------------------------------------------------
# reconstruction from the border by priority flood
# --------------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def flood_keys_from_float(g, key, levels, invert):  # pragma: no cover - numba
    """Quantise ``g`` ((H, W) float32) linearly onto ``0 .. levels-1`` into the flood keys.

    ``key`` is the flat ((H+2)*(W+2),) int32 key array with a 1-px ring marked visited;
    ``invert`` stores ``levels-1-q`` (reconstruction by dilation).  Returns ``(lo, step)``: grey
    value of level 0 and level spacing.
    """
    h, w = g.shape
    w2 = w + 2
    lo = g[0, 0]
    hi = g[0, 0]
    for i in range(h):
        row = g[i]
        for j in range(w):
            v = row[j]
            lo = min(lo, v)
            hi = max(hi, v)
    span = np.float64(hi) - np.float64(lo)
    top = levels - 1
    scale = np.float32(top / span) if span > 0 else np.float32(0.0)
    lo32 = np.float32(lo)
    half = np.float32(0.5)
    vis = np.int32(_RING)
    for j in range(w2):
        key[j] = vis
        key[(h + 1) * w2 + j] = vis
    for i in range(h):
        row = g[i]
        base = (i + 1) * w2
        key[base] = vis
        key[base + w2 - 1] = vis
        dst = key[base + 1: base + 1 + w]
        if invert:
            for j in range(w):
                dst[j] = top - np.int32((row[j] - lo32) * scale + half)
        else:
            for j in range(w):
                dst[j] = np.int32((row[j] - lo32) * scale + half)
    return np.float64(lo), (span / top if span > 0 else 0.0)


@numba.njit(cache=True, nogil=True)
def _keys_from_int(q, key, top, invert):  # pragma: no cover - numba
    """Integer image ``q`` (H, W) into flood keys (see :func:`flood_keys_from_float`)."""
    h, w = q.shape
    w2 = w + 2
    vis = np.int32(_RING)
    for j in range(w2):
        key[j] = vis
        key[(h + 1) * w2 + j] = vis
    for i in range(h):
        base = (i + 1) * w2
        key[base] = vis
        key[base + w2 - 1] = vis
        for j in range(w):
            v = np.int32(q[i, j])
            key[base + 1 + j] = top - v if invert else v
    return key


@numba.njit(cache=True, nogil=True)
def flood_keys_reflood(key1, key2, top):  # pragma: no cover - numba
    """Keys of the second flood from the result of the first: ``key2 = top - (key1 & mask)``
    (the dilation result ``r`` as erosion keys); ring pixels stay visited."""
    n = key1.shape[0]
    ring = np.int32(_RING)
    m = np.int32(FLOOD_KEY_MASK)
    for p in range(n):
        k = key1[p]
        key2[p] = ring if k == ring else top - (k & m)
    return key2


@numba.njit(cache=True, nogil=True)
def priority_flood(key, w2, nlev, seg, stack, rptr, wptr):  # pragma: no cover - numba
    """Priority flood from the frame border on integer keys (bucket queue, 8-connectivity).

    Computes in place the reconstruction by erosion of the key image from its border seed
    ("fill every basin not connected to the border up to its spill level"): each pixel's key
    becomes ``min over border paths of max(key along the path)``, with the visited bit set.
    O(n + nlev), every pixel is queued once.

    The queue is a bucket queue without linked lists (they make every pop a dependent cache
    miss): a pixel found *above* the current level is final at its own key and is appended to
    the contiguous segment of that level (segments laid out by a histogram of the keys, so they
    never overflow); a pixel at or below the current level is filled to the current level and
    goes on a LIFO stack that is drained before the level advances.

    Parameters
    ----------
    key : (N,) int32, N = (H+2)*(W+2)
        Keys of the image padded by a 1-px ring of ``_RING`` values (never queued).
    w2 : int
        Padded row length ``W + 2``.
    nlev : int
        Number of levels (keys are in ``[0, nlev)``).
    seg, stack : (N,) int32
        Work arrays.
    rptr, wptr : (nlev,) int32
        Work arrays (read and write position of every level's segment).
    """
    n = key.shape[0]
    h2 = n // w2
    vis = np.int32(_VIS)
    for k in range(nlev):
        rptr[k] = 0
    for p in range(n):
        k = key[p]
        if k < vis:
            rptr[k] += 1
    acc = 0
    for k in range(nlev):
        c = rptr[k]
        rptr[k] = acc
        wptr[k] = acc
        acc += c
    for i in range(1, h2 - 1):
        step = 1 if (i == 1 or i == h2 - 2) else max(w2 - 3, 1)
        j = 1
        while j <= w2 - 2:
            p = i * w2 + j
            kk = key[p]
            if kk < vis:
                key[p] = kk | vis
                seg[wptr[kk]] = p
                wptr[kk] += 1
            j += step
    o0 = -w2 - 1
    o1 = -w2
    o2 = -w2 + 1
    o3 = -1
    o4 = 1
    o5 = w2 - 1
    o6 = w2
    o7 = w2 + 1
    top = 0
    lev = 0
    while True:
        if top > 0:
            top -= 1
            p = stack[top]
        else:
            while lev < nlev and rptr[lev] == wptr[lev]:
                lev += 1
            if lev == nlev:
                break
            p = seg[rptr[lev]]
            rptr[lev] += 1
        for t in range(8):
            if t == 0:
                q = p + o0
            elif t == 1:
                q = p + o1
            elif t == 2:
                q = p + o2
            elif t == 3:
                q = p + o3
            elif t == 4:
                q = p + o4
            elif t == 5:
                q = p + o5
            elif t == 6:
                q = p + o6
            else:
                q = p + o7
            kq = key[q]
            if kq < vis:
                if kq <= lev:
                    key[q] = lev | vis
                    stack[top] = q
                    top += 1
                else:
                    key[q] = kq | vis
                    seg[wptr[kq]] = q
                    wptr[kq] += 1
    return key


def flood_reconstruct(q: np.ndarray, method: str, levels: int = FLOOD_MAX_LEVELS) -> np.ndarray:
    """Reconstruction of an integer image from its border, by priority flood (O(n)).

    Equals ``skimage.morphology.reconstruction(seed, q, method=method)`` with ``seed`` = ``q``
    with the interior set to ``q.min()`` (dilation) or ``q.max()`` (erosion), 8-connectivity
    (skimage's default 3x3 footprint).

    Parameters
    ----------
    q : numpy.ndarray
        ``(H, W)`` integer image with values in ``[0, levels)``.
    method : {"dilation", "erosion"}
        ``"dilation"`` removes bright domes not connected to the border, ``"erosion"`` fills dark
        basins not connected to the border.
    levels : int
        Number of grey levels (<= 2**16).

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` uint16.
    """
    if method not in ("dilation", "erosion"):
        raise ConfigError(f"method: must be 'dilation' or 'erosion' (got {method!r})")
    q = np.asarray(q)
    if q.ndim != 2 or q.size == 0 or q.dtype.kind not in "iub":
        raise EtemsegError(f"flood_reconstruct: expected a non-empty 2-D integer image, got "
                           f"{q.dtype} {q.shape}")
    if not 1 <= levels <= FLOOD_MAX_LEVELS or q.min() < 0 or q.max() >= levels:
        raise EtemsegError("flood_reconstruct: values must lie in [0, levels), levels <= 65536")
    h, w = q.shape
    n = (h + 2) * (w + 2)
    key = np.empty(n, np.int32)
    top = levels - 1
    invert = method == "dilation"
    _keys_from_int(q, key, top, invert)
    priority_flood(key, w + 2, levels, np.empty(n, np.int32), np.empty(n, np.int32),
                   np.empty(levels, np.int32), np.empty(levels, np.int32))
    out = (key.reshape(h + 2, w + 2)[1:-1, 1:-1] & FLOOD_KEY_MASK).astype(np.int32)
    if invert:
        out = top - out
    return out.astype(np.uint16)


# --------------------------------------------------------------------------------------------
# grey opening by a disk
# --------------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _erode_disk(x, sign, rowk, hw, out):  # pragma: no cover - numba
    """Grey erosion of ``sign * x`` by a disk, written as ``sign * result`` into ``out``.

    The disk is given by its rows: row ``dy`` (``-R..R``) is the chord of half-width
    ``hw[rowk[dy + R]]``.  Each input row's running minima over every distinct chord width come
    from a sparse table of power-of-two minima (block length capped at 8, longer chords use more
    blocks); the output row is the minimum of the ``2R + 1`` chord rows (a ring buffer).  Pixels
    outside the frame are ignored.  Inner loops run over contiguous 1-D slices (vectorised).
    """
    h, w = x.shape
    R = (rowk.shape[0] - 1) // 2
    nw = hw.shape[0]
    pad = 0
    for k in range(nw):
        pad = max(pad, hw[k])
    n = w + 2 * pad
    m0 = np.empty(n, np.float32)
    m1 = np.empty(n, np.float32)
    m2 = np.empty(n, np.float32)
    m3 = np.empty(n, np.float32)
    nlev = 1
    blk = 1
    while blk * 2 <= 2 * pad + 1 and nlev < 4:
        blk *= 2
        nlev += 1
    nring = 2 * R + 1
    ring = np.empty((nring, nw, w), np.float32)
    acc = np.empty(w, np.float32)
    inf = np.float32(np.inf)
    done = 0
    for y in range(h):
        need = min(y + R, h - 1)
        while done <= need:
            src = x[done]
            for j in range(pad):
                m0[j] = inf
                m0[pad + w + j] = inf
            for j in range(w):
                m0[pad + j] = sign * src[j]
            if nlev > 1:
                a = m0[0:n - 1]
                b = m0[1:n]
                for j in range(n - 1):
                    m1[j] = min(a[j], b[j])
                m1[n - 1] = m0[n - 1]
            if nlev > 2:
                a = m1[0:n - 2]
                b = m1[2:n]
                for j in range(n - 2):
                    m2[j] = min(a[j], b[j])
                m2[n - 2] = m1[n - 2]
                m2[n - 1] = m1[n - 1]
            if nlev > 3:
                a = m2[0:n - 4]
                b = m2[4:n]
                for j in range(n - 4):
                    m3[j] = min(a[j], b[j])
                for j in range(n - 4, n):
                    m3[j] = m2[j]
            slot = ring[done % nring]
            for k in range(nw):
                r = hw[k]
                length = 2 * r + 1
                L = 0
                bl = 1
                while bl * 2 <= length and L < nlev - 1:
                    bl *= 2
                    L += 1
                if L == 0:
                    m = m0
                elif L == 1:
                    m = m1
                elif L == 2:
                    m = m2
                else:
                    m = m3
                o = slot[k]
                first = pad - r
                last = pad + r - bl + 1
                a = m[first:first + w]
                b = m[last:last + w]
                for j in range(w):
                    o[j] = min(a[j], b[j])
                s0 = first + bl
                while s0 < last:
                    c = m[s0:s0 + w]
                    for j in range(w):
                        o[j] = min(o[j], c[j])
                    s0 += bl
            done += 1
        started = False
        for dy in range(-R, R + 1):
            yy = y + dy
            if yy < 0 or yy >= h:
                continue
            src = ring[yy % nring, rowk[dy + R]]
            if not started:
                for j in range(w):
                    acc[j] = src[j]
                started = True
            else:
                for j in range(w):
                    acc[j] = min(acc[j], src[j])
        o = out[y]
        for j in range(w):
            o[j] = sign * acc[j]
    return out


def disk_halfwidths(radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Row decomposition of ``skimage.morphology.disk(radius)``.

    Returns
    -------
    hw : numpy.ndarray
        ``(K,)`` int64 distinct chord half-widths.
    rowk : numpy.ndarray
        ``(2 * radius + 1,)`` int64; row ``dy + radius`` of the disk is the chord
        ``[-hw[rowk[dy + radius]], +hw[...]]``.
    """
    from skimage.morphology import disk

    fp = disk(int(radius)).astype(bool)
    half = []
    c = fp.shape[1] // 2
    for row in fp:
        nz = np.flatnonzero(row)
        hw_row = c - int(nz[0])
        if not (len(nz) == 2 * hw_row + 1 and nz[-1] == c + hw_row):  # pragma: no cover
            raise AssertionError("disk rows are not centred chords")
        half.append(hw_row)
    hw = np.array(sorted(set(half)), dtype=np.int64)
    rowk = np.array([int(np.searchsorted(hw, v)) for v in half], dtype=np.int64)
    return hw, rowk


def opening_disk_fast(
    x: np.ndarray, radius: int, out: np.ndarray | None = None, tmp: np.ndarray | None = None
) -> np.ndarray:
    """Grey opening by ``skimage.morphology.disk(radius)``, exactly equal to skimage's.

    The disk is the union of its rows (chords); erosion by a union is the minimum of the
    erosions, and a chord erosion is a 1-D running minimum.  Dilation likewise with the maximum
    (as ``-erosion(-x)``; the disk is symmetric).  Outside-frame pixels are ignored, which for a
    disk equals skimage's default ``mode='reflect'``: a reflected neighbour is always inside the
    disk as well, so it never changes the min/max.

    Parameters
    ----------
    x : numpy.ndarray
        ``(H, W)`` image, converted to C-contiguous float32 (exact for float32 input).
    radius : int
        Disk radius >= 0.
    out, tmp : numpy.ndarray, optional
        ``(H, W)`` float32 result and work buffers.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` float32.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if out is None:
        out = np.empty_like(x)
    if radius <= 0:
        np.copyto(out, x)
        return out
    hw, rowk = disk_halfwidths(radius)
    if tmp is None:
        tmp = np.empty_like(x)
    _erode_disk(x, np.float32(1.0), rowk, hw, tmp)
    _erode_disk(tmp, np.float32(-1.0), rowk, hw, out)
    return out


# --------------------------------------------------------------------------------------------
# pixel-wise kernels: range, rescale, thresholds
# --------------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def rescale_inplace(s, lo, hi):  # pragma: no cover - numba
    """In place ``s = (s - lo) / (hi - lo)`` of an ``(H, W)`` float32 array, zeros if
    ``hi <= lo``; returns ``s``."""
    h, w = s.shape
    if hi > lo:
        inv = np.float32(1.0 / (np.float64(hi) - np.float64(lo)))
        lo32 = np.float32(lo)
        for i in range(h):
            row = s[i]
            for j in range(w):
                row[j] = (row[j] - lo32) * inv
    else:
        s[:] = 0
    return s


@numba.njit(cache=True, nogil=True)
def image_minmax(a):  # pragma: no cover - numba
    """``(min, max)`` of an ``(H, W)`` array, in its dtype (one pass, no NaN handling)."""
    h, w = a.shape
    lo = a[0, 0]
    hi = a[0, 0]
    for i in range(h):
        row = a[i]
        for j in range(w):
            lo = min(lo, row[j])
            hi = max(hi, row[j])
    return lo, hi


@numba.njit(cache=True, nogil=True)
def otsu_threshold(a, lo, hi, nbins):  # pragma: no cover - numba
    """``skimage.filters.threshold_otsu`` of an ``(H, W)`` float image (float64 result):
    ``nbins`` bins over ``[lo, hi]`` (the image range, :func:`image_minmax`), threshold = centre
    of the bin maximising the between-class variance (the first such bin)."""
    return _otsu_below(a, lo, hi, np.inf, nbins)


@numba.njit(cache=True, nogil=True)
def histogram_above(a, lo, hi, nbins):  # pragma: no cover - numba
    """Counts of the pixels ``lo < v <= hi`` of an ``(H, W)`` float image in ``nbins`` equal
    bins over ``(lo, hi]`` (float64 counts)."""
    h, w = a.shape
    counts = np.zeros(nbins, np.float64)
    lo64 = np.float64(lo)
    hi64 = np.float64(hi)
    if not hi64 > lo64:
        return counts
    scale = nbins / (hi64 - lo64)
    for i in range(h):
        row = a[i]
        for j in range(w):
            v = np.float64(row[j])
            if v > lo64 and v <= hi64:
                b = min(np.int64((v - lo64) * scale), nbins - 1)
                counts[b] += 1.0
    return counts


@numba.njit(cache=True, nogil=True)
def otsu_threshold_below(a, lo, cut, nbins):  # pragma: no cover - numba
    """``skimage.filters.threshold_otsu(a[a <= cut])`` of an ``(H, W)`` float image whose
    minimum is ``lo``: ``nbins`` bins over ``[lo, max(a[a <= cut])]``; ``cut`` when those
    pixels are all equal (no second level)."""
    h, w = a.shape
    cut64 = np.float64(cut)
    hi = np.float64(lo)
    for i in range(h):
        for j in range(w):
            v = np.float64(a[i, j])
            if v <= cut64 and v > hi:
                hi = v
    if not hi > np.float64(lo):
        return cut64
    return _otsu_below(a, lo, hi, cut64, nbins)


@numba.njit(cache=True, nogil=True)
def _otsu_below(a, lo, hi, cut, nbins):  # pragma: no cover - numba
    """Otsu threshold of the pixels ``<= cut`` of ``a``, ``nbins`` bins over ``[lo, hi]``."""
    h, w = a.shape
    counts = np.zeros(nbins, np.float64)
    lo64 = np.float64(lo)
    span = np.float64(hi) - lo64
    scale = nbins / span
    for i in range(h):
        row = a[i]
        for j in range(w):
            v = np.float64(row[j])
            if v > cut:
                continue
            b = np.int64((v - lo64) * scale)
            b = min(max(b, 0), nbins - 1)
            counts[b] += 1.0
    width = span / nbins
    best = -1.0
    idx = 0
    wa = 0.0
    ma = 0.0
    total_w = 0.0
    total_m = 0.0
    for k in range(nbins):
        total_w += counts[k]
        total_m += counts[k] * (lo64 + (k + 0.5) * width)
    for k in range(nbins - 1):
        ck = lo64 + (k + 0.5) * width
        wa += counts[k]
        ma += counts[k] * ck
        wb = total_w - wa
        if wa <= 0 or wb <= 0:
            continue
        d = ma / wa - (total_m - ma) / wb
        v = wa * wb * d * d
        if v > best:
            best = v
            idx = k
    return lo64 + (idx + 0.5) * width


@numba.njit(cache=True, nogil=True)
def li_threshold(a, lo, tol):  # pragma: no cover - numba
    """``skimage.filters.threshold_li`` of an ``(H, W)`` float image with minimum ``lo``
    (mean initial guess, same iteration, tolerance ``tol``); float64 result."""
    h, w = a.shape
    lo64 = np.float64(lo)
    tot = 0.0
    for i in range(h):
        for j in range(w):
            tot += np.float64(a[i, j]) - lo64
    t_next = tot / (h * w)
    t_curr = -2.0 * tol
    it = 0
    while abs(t_next - t_curr) > tol and it < 1000:
        it += 1
        t_curr = t_next
        sf = 0.0
        nf = 0
        sb = 0.0
        nb = 0
        for i in range(h):
            for j in range(w):
                v = np.float64(a[i, j]) - lo64
                if v > t_curr:
                    sf += v
                    nf += 1
                else:
                    sb += v
                    nb += 1
        if nf == 0 or nb == 0:
            break
        mf = sf / nf
        mb = sb / nb
        if mb == 0.0:
            break
        t_next = (mb - mf) / (np.log(mb) - np.log(mf))
    return t_next + lo64


@numba.njit(cache=True, nogil=True)
def threshold_into(a, t, out):  # pragma: no cover - numba
    """``out = a > t`` as uint8 0/1 (``(H, W)``; ``t`` compared in float64, like numpy)."""
    h, w = a.shape
    for i in range(h):
        row = a[i]
        o = out[i]
        for j in range(w):
            o[j] = np.uint8(np.float64(row[j]) > t)
    return out


# --------------------------------------------------------------------------------------------
# binary clean-up: holes, small components
# --------------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def fill_holes_inplace(mask, stack):  # pragma: no cover - numba
    """Fill holes of a uint8 0/1 mask in place: every 0-pixel not 4-connected to the border.

    Background reachable from the border is marked 2 by a forward and a backward raster pass,
    then completed by a depth-first search from every marked pixel with an unmarked background
    neighbour (concave pockets); unmarked background becomes 1.  ``stack``: (H*W,) int32 work.
    Equals ``scipy.ndimage.binary_fill_holes`` (default 4-connected structure).  Returns ``mask``.
    """
    h, w = mask.shape
    for i in range(h):
        for j in range(w):
            if mask[i, j] == 0 and (
                i == 0 or j == 0 or i == h - 1 or j == w - 1 or mask[i - 1, j] == 2
                or mask[i, j - 1] == 2
            ):
                mask[i, j] = 2
    for i in range(h - 2, 0, -1):
        for j in range(w - 2, 0, -1):
            if mask[i, j] == 0 and (mask[i + 1, j] == 2 or mask[i, j + 1] == 2):
                mask[i, j] = 2
    top = 0
    for i in range(1, h - 1):
        for j in range(1, w - 1):
            if mask[i, j] == 2 and (
                mask[i - 1, j] == 0 or mask[i + 1, j] == 0 or mask[i, j - 1] == 0
                or mask[i, j + 1] == 0
            ):
                stack[top] = i * w + j
                top += 1
    while top > 0:
        top -= 1
        p = stack[top]
        i = p // w
        j = p - i * w
        if i > 0 and mask[i - 1, j] == 0:
            mask[i - 1, j] = 2
            stack[top] = p - w
            top += 1
        if i < h - 1 and mask[i + 1, j] == 0:
            mask[i + 1, j] = 2
            stack[top] = p + w
            top += 1
        if j > 0 and mask[i, j - 1] == 0:
            mask[i, j - 1] = 2
            stack[top] = p - 1
            top += 1
        if j < w - 1 and mask[i, j + 1] == 0:
            mask[i, j + 1] = 2
            stack[top] = p + 1
            top += 1
    for i in range(h):
        row = mask[i]
        for j in range(w):
            row[j] = np.uint8(row[j] != 2)
    return mask


@numba.njit(cache=True, nogil=True)
def _find_root(parent, r):  # pragma: no cover - numba
    """Union-find root of run ``r``, halving the path on the way."""
    while parent[r] != r:
        parent[r] = parent[parent[r]]
        r = parent[r]
    return r


@numba.njit(cache=True, nogil=True)
def component_roots(img, level):  # pragma: no cover - numba
    """The 8-connected components of ``img > level`` as horizontal runs, with their roots.

    One raster scan finds the runs of foreground pixels of each row and joins (union-find) every
    run to the runs of the row above that touch it, diagonals included; no per-pixel search, so
    the cost is one read of the image plus a little per run.  Returns ``(row, start, stop, root,
    area)``: run ``r`` covers ``img[row[r], start[r]:stop[r]]``, ``root[r]`` is the first run of
    its component (runs of one component share it) and the component has ``area[r]`` pixels.
    """
    h, w = img.shape
    cap = h * ((w + 1) // 2) + 1               # most runs an image can hold (pages untouched)
    row = np.empty(cap, np.int32)
    start = np.empty(cap, np.int32)
    stop = np.empty(cap, np.int32)
    parent = np.empty(cap, np.int32)
    n = 0
    above0 = above1 = 0                        # runs of the row above: [above0, above1)
    for i in range(h):
        line = img[i]
        first = n
        p = above0
        j = 0
        while j < w:
            if line[j] <= level:
                j += 1
                continue
            s = j
            while j < w and line[j] > level:
                j += 1
            row[n], start[n], stop[n], parent[n] = i, s, j, n
            while p < above1 and stop[p] < s:  # ends left of column s - 1: no contact
                p += 1
            k = p
            while k < above1 and start[k] <= j:   # overlaps columns [s - 1, j] (8-connected)
                a = _find_root(parent, k)
                b = _find_root(parent, n)
                if a < b:
                    parent[b] = a
                elif b < a:
                    parent[a] = b
                k += 1
            n += 1
        above0, above1 = first, n
    # a parent always precedes its child, so in run order each run's parent is already a root
    total = np.zeros(n, np.int64)
    for r in range(n):
        total[_find_root(parent, r)] += stop[r] - start[r]
    area = np.empty(n, np.int64)
    for r in range(n):
        area[r] = total[parent[r]]
    return row[:n], start[:n], stop[:n], parent[:n], area


@numba.njit(cache=True, nogil=True)
def component_runs(img, level):  # pragma: no cover - numba
    """:func:`component_roots` without the roots: ``(row, start, stop, area)``."""
    row, start, stop, _, area = component_roots(img, level)
    return row, start, stop, area


@numba.njit(cache=True, nogil=True)
def _containing(row, start, stop, srow, sstart):  # pragma: no cover - numba
    """For each run ``(srow, sstart)`` of a mask inside the mask of the runs ``(row, start,
    stop)``, the index of the run holding it (both lists in raster order, one merge walk)."""
    out = np.empty(len(srow), np.int64)
    p = 0
    for r in range(len(srow)):
        while row[p] != srow[r] or stop[p] <= sstart[r]:
            p += 1
        out[r] = p
    return out


@numba.njit(cache=True, nogil=True)
def _write_runs(out, row, start, stop, keep):  # pragma: no cover - numba
    """Set the runs ``r`` with ``keep[r]`` to 1 in ``out``; returns the pixels set."""
    kept = 0
    for r in range(len(row)):
        if keep[r]:
            line = out[row[r]]
            for j in range(start[r], stop[r]):
                line[j] = 1
            kept += stop[r] - start[r]
    return kept


@numba.njit(cache=True, nogil=True)
def above_level_filtered(img, level, min_area, out, low=-1, mid=-1):  # pragma: no cover - numba
    """Write ``img > level`` without its 8-connected components of fewer than ``min_area``
    pixels into ``out`` (uint8, same shape, all zero on entry) as 0/1; returns the number of
    pixels set.  Threshold and filter in one pass over ``img`` (:func:`component_roots`).

    ``low < level``: hysteresis, three levels ``low <= mid <= level`` (``mid`` -1: ``low``).
    The *particles* are the components of ``img > level`` of at least ``min_area`` pixels
    (the area filter is on them); pieces of one particle join over pixels above ``mid``
    (a particle is a component of ``img > mid`` holding a particle component).  A component of
    ``img > low`` holding one particle is written whole (the particle grown over the lenient
    pixels around it); one holding several is written as those particles, grown to ``mid``
    only (growing them further would bridge neighbours into one); one holding none is not
    written."""
    if low < 0 or low >= level:
        low = level
    if mid < low or mid > level:
        mid = low
    row, start, stop, root, area = component_roots(img, low)
    if low == level:
        return _write_runs(out, row, start, stop, area >= min_area)
    srow, sstart, _, _, sarea = component_roots(img, level)
    if mid == low:
        mrow, mstart, mstop, mroot = row, start, stop, root
        in_low = np.arange(len(row))
    else:
        mrow, mstart, mstop, mroot, _ = component_roots(img, mid)
        in_low = _containing(row, start, stop, mrow, mstart)
    in_mid = _containing(mrow, mstart, mstop, srow, sstart)
    particle = np.zeros(len(mrow), np.bool_)         # per mid root: holds a particle
    for r in range(len(srow)):
        if sarea[r] >= min_area:
            particle[mroot[in_mid[r]]] = True
    seed = np.full(len(row), -1, np.int64)           # per low root: its particle, -2 several
    for r in range(len(mrow)):
        m = mroot[r]
        if particle[m]:
            q = root[in_low[r]]
            if seed[q] == -1:
                seed[q] = m
            elif seed[q] != m:
                seed[q] = -2
    kept = _write_runs(out, row, start, stop, seed[root] >= 0)
    several = np.empty(len(mrow), np.bool_)
    for r in range(len(mrow)):
        several[r] = particle[mroot[r]] and seed[root[in_low[r]]] == -2
    return kept + _write_runs(out, mrow, mstart, mstop, several)


@numba.njit(cache=True, nogil=True)
def remove_small_inplace(mask, min_area):  # pragma: no cover - numba
    """Remove the 8-connected components of a uint8 0/1 ``mask`` with fewer than ``min_area``
    pixels, in place (:func:`component_runs`).  Returns ``mask``."""
    row, start, stop, area = component_runs(mask, 0)
    for r in range(len(row)):
        if area[r] < min_area:
            line = mask[row[r]]
            for j in range(start[r], stop[r]):
                line[j] = 0
    return mask


def remove_small_components(mask: np.ndarray, min_area_px: int) -> np.ndarray:
    """``mask`` without its 8-connected components of fewer than ``min_area_px`` pixels.

    Releases the GIL (numba), so frames can be filtered in threads; the same 8-connectivity as
    the measurements (:mod:`etemseg.analysis.measure`), so every kept component is one measured
    particle.

    Parameters
    ----------
    mask : numpy.ndarray
        ``(H, W)`` mask, bool or integer (nonzero = foreground); left unchanged.
    min_area_px : int
        Minimum component size in px (0 or 1: keep all).

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` uint8 0/1 mask, a new array.
    """
    mask = np.asarray(mask)
    fg = mask if mask.dtype == np.bool_ else mask != 0
    out = np.zeros(fg.shape, np.uint8)
    above_level_filtered(fg.view(np.uint8), 0, max(1, int(min_area_px)), out)
    return out
