"""Overlap evidence between the particles of consecutive frames.

With label images, an edge joins label ``a`` of one frame and label ``b`` of the next when their
masks share pixels: a compiled one-pass contingency kernel counts them (:func:`overlap_pairs`,
:func:`overlap_table`, and :func:`label_edges`, which streams the label images of a whole movie).
Without label images, the equivalent-area discs stand in for the masks (:func:`disc_edges`).
The later frame is compared shifted by the rounded drift of :mod:`etemseg.tracking.drift`.

Edges are ``(row a, row b, shared area px)``: three arrays over detection rows of
:class:`~etemseg.tracking.detections.Detections`, over all frame pairs of the movie.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numba
import numpy as np
import pandas as pd

from etemseg.errors import EtemsegError
from etemseg.tracking.detections import Detections, check_frames
from etemseg.tracking.drift import rounded_shift, rounded_steps, shift_steps
from etemseg.tracking.neighbours import near_pairs

__all__ = ["Edges", "OverlapTable", "check_labels", "disc_edges", "label_edges",
           "measured_edges", "overlap_arrays", "overlap_pairs", "overlap_table", "table_edges"]

#: Type of the overlaps table of :func:`overlap_table` / :func:`~etemseg.tracking.link.link`: a
#: DataFrame with int64 columns ``frame_a``, ``frame_b``, ``a``, ``b``, ``n_px``.
OverlapTable = pd.DataFrame

#: Overlap edges over all frame pairs: (row a (E,) int64, row b (E,) int64, shared area (E,) px).
Edges = tuple[np.ndarray, np.ndarray, np.ndarray]

# --------------------------------------------------------------------------------------------
# label images
# --------------------------------------------------------------------------------------------

_SLOTS = 16  # distinct b labels one a label may overlap before the kernel gives up


_TILE = 8  # the kernel visits only the _TILE x _TILE tiles of ``la`` that hold a label


def _occupied_tiles(la: np.ndarray) -> np.ndarray:
    """``(ceil(H / _TILE), ceil(W / _TILE))`` bool: tiles of ``la`` with a nonzero pixel.

    Vectorised: the nonzero map is read 8 pixels to a 64-bit word and OR-reduced over the tile's
    rows (~0.04 ms for 512^2).  Tiles cut by the image border count as occupied.
    """
    h, w = la.shape
    th, tw = -(-h // _TILE), -(-w // _TILE)
    occ = np.ones((th, tw), bool)
    h8, w8 = h - h % _TILE, w - w % _TILE
    if h8 and w8:
        words = np.ascontiguousarray(la[:h8, :w8] != 0).view(np.uint64)  # _TILE bools per word
        occ[:h8 // _TILE, :w8 // _TILE] = np.bitwise_or.reduce(
            words.reshape(h8 // _TILE, _TILE, w8 // _TILE), axis=1) != 0
    return occ


@numba.njit(cache=True, nogil=True)
def _count_kernel(a, b, occ, y0a, x0a, y0b, x0b, hh, ww, capa, capb, tab_b, tab_n, fill
                  ):  # pragma: no cover - numba
    """Pair counts of labels a (<= capa) and b (<= capb) over a window of two C-contiguous
    images of equal shape, visiting the occupied tiles ``occ`` of ``a`` only; per a label up to
    ``tab_b.shape[1]`` b labels (False on overflow)."""
    slots = tab_b.shape[1]
    w = a.shape[1]
    af = a.ravel()
    bf = b.ravel()
    last_a = -1
    last_b = -1
    last_s = -1
    for ti in range(y0a // _TILE, (y0a + hh - 1) // _TILE + 1):
        i0 = max(ti * _TILE, y0a)
        i1 = min(ti * _TILE + _TILE, y0a + hh)
        for tj in range(x0a // _TILE, (x0a + ww - 1) // _TILE + 1):
            if not occ[ti, tj]:
                continue
            j0 = max(tj * _TILE, x0a)
            j1 = min(tj * _TILE + _TILE, x0a + ww)
            for i in range(i0, i1):
                pa = i * w
                pb = (i - y0a + y0b) * w - x0a + x0b
                for j in range(j0, j1):
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


def overlap_arrays(la: np.ndarray, lb: np.ndarray, shift: tuple[int, int],
                   capa: int | None = None, capb: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel counts of every pair of labels sharing pixels (:func:`overlap_pairs` without checks).

    Parameters
    ----------
    la, lb : (H, W) integer arrays, C-contiguous
        Label images (:func:`check_labels`).
    shift : (int, int)
        ``(dy, dx)``: pixel ``(i, j)`` of ``la`` is compared with pixel ``(i + dy, j + dx)`` of
        ``lb``.
    capa, capb : int, optional
        Labels above them are ignored (default: the image maxima).

    Returns
    -------
    a, b, n_px : (M,) int64
        Labels and shared pixels, sorted by (a, b).
    """
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
        ok = _count_kernel(la, lb, _occupied_tiles(la), y0a, x0a, y0a + dy, x0a + dx, hh, ww,
                           capa, capb, tab_b, tab_n, fill)
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


def check_labels(lab: Any, name: str) -> np.ndarray:
    """``lab`` as a C-contiguous 2-D integer label image (uint64 as int64); ``name`` names it in
    the error raised otherwise."""
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
    la = check_labels(labels_a, "labels_a")
    lb = check_labels(labels_b, "labels_b")
    if la.shape != lb.shape:
        raise EtemsegError(f"overlap_pairs: label images differ in shape, {la.shape} vs "
                           f"{lb.shape}")
    a, b, n = overlap_arrays(la, lb, shift)
    return pd.DataFrame({"a": a, "b": b, "n_px": n})


def overlap_table(label_source: Callable[[int], np.ndarray], frames: Iterable[int],
                  drift: pd.DataFrame | None = None) -> OverlapTable:
    """Overlaps of every pair of consecutive frames, for :func:`~etemseg.tracking.link.link`.

    Each label image is requested once.  Pass the same frames (``all_frames``) and the drift of
    :func:`~etemseg.tracking.drift.estimate_drift` that ``link`` will use, so that the shifts agree
    (:func:`~etemseg.tracking.link.link_movie` does all of this in one pass).

    Parameters
    ----------
    label_source : callable
        ``label_source(frame)`` returns that frame's label image.
    frames : array of int
        The movie's frames in order.
    drift : pandas.DataFrame, optional
        From ``estimate_drift``; the label image of the later frame is compared shifted by the
        rounded ``smooth_dy_px``, ``smooth_dx_px`` (by the rounded difference of the cumulative
        ``dy_px``, ``dx_px`` when those columns are absent).  None: no shift.

    Returns
    -------
    pandas.DataFrame
        ``frame_a``, ``frame_b``, ``a``, ``b``, ``n_px`` (int64).
    """
    seq = check_frames(frames)
    steps = shift_steps(seq, drift)
    parts = []
    prev = None
    for k, f in enumerate(seq):
        lab = check_labels(label_source(int(f)), f"label_source({int(f)})")
        if prev is not None:
            if lab.shape != prev.shape:
                raise EtemsegError(f"label_source({int(f)}): shape {lab.shape}, expected "
                                   f"{prev.shape}")
            a, b, n = overlap_arrays(prev, lab, rounded_shift(steps[k]))
            parts.append(pd.DataFrame({"frame_a": np.full(a.size, seq[k - 1]),
                                       "frame_b": np.full(a.size, f), "a": a, "b": b,
                                       "n_px": n}))
        prev = lab
    if not parts:
        return pd.DataFrame({c: np.zeros(0, np.int64)
                             for c in ("frame_a", "frame_b", "a", "b", "n_px")})
    return pd.concat(parts, ignore_index=True)


def label_edges(det: Detections, seq: np.ndarray, drift: pd.DataFrame,
                label_source: Callable[[int], np.ndarray], shape: tuple[int, int] | None,
                pairs: Iterable[int] | None = None
                ) -> tuple[Edges, tuple[int, int] | None]:
    """Mask-overlap edges of every pair of consecutive frames, streaming the label images.

    Each label image is requested once, in frame order, and kept only until the next one has been
    compared with it (compared shifted by :func:`~etemseg.tracking.drift.shift_steps`, rounded).
    Components without a detection row are ignored.

    Parameters
    ----------
    det : Detections
    seq : (n,) int64
        The movie's frames.
    drift : pandas.DataFrame
        Drift table of ``seq`` (:mod:`etemseg.tracking.drift`).
    label_source : callable
        ``label_source(frame)`` returns that frame's (H, W) integer label image.
    shape : (int, int) or None
        Expected ``(H, W)``; None: that of the first label image.
    pairs : iterable of int, optional
        Only the pairs ``(seq[k - 1], seq[k])`` of these ``k`` (increasing); default all.

    Returns
    -------
    edges : Edges
        Shared pixel counts as float.
    shape : (int, int) or None
        The frame shape (None for a movie without frames).
    """
    shifts = shift_steps(seq, drift)

    def labels(k: int) -> np.ndarray:
        nonlocal shape
        f = int(seq[k])
        lab = check_labels(label_source(f), f"label_source({f})")
        if shape is None:
            shape = lab.shape
        elif lab.shape != shape:
            raise EtemsegError(f"label_source({f}): shape {lab.shape}, expected {shape}")
        return lab

    ks = range(1, seq.size) if pairs is None else pairs
    if pairs is None and seq.size == 1:
        labels(0)  # the shape of a one-frame movie
    parts_a, parts_b, parts_n = [], [], []
    held_k, held = -1, None
    for k in ks:
        k = int(k)
        prev = held if held_k == k - 1 else labels(k - 1)
        held_k, held = k, labels(k)
        fa, fb = int(seq[k - 1]), int(seq[k])
        sa, sb = det.rows(fa), det.rows(fb)
        if sa.stop > sa.start and sb.stop > sb.start:
            a, b, nn = overlap_arrays(prev, held, rounded_shift(shifts[k]),
                                      int(det.label[sa.stop - 1]), int(det.label[sb.stop - 1]))
            ra, rb = det.rows_of_labels(fa, a), det.rows_of_labels(fb, b)
            ok = (ra >= 0) & (rb >= 0)
            parts_a.append(ra[ok])
            parts_b.append(rb[ok])
            parts_n.append(nn[ok].astype(float))
    return _joined(parts_a, parts_b, parts_n), shape


def _joined(parts_a: list, parts_b: list, parts_n: list) -> Edges:
    """Edges from lists of parts (empty edges for none)."""
    e = np.zeros(0, np.int64)
    return (np.concatenate(parts_a) if parts_a else e,
            np.concatenate(parts_b) if parts_b else e,
            np.concatenate(parts_n) if parts_n else np.zeros(0))


def measured_edges(det: Detections, seq: np.ndarray, drift: pd.DataFrame,
                   overlaps: OverlapTable, label_source: Callable[[int], np.ndarray] | None,
                   shape: tuple[int, int] | None) -> tuple[Edges, tuple[int, int] | None]:
    """Mask-overlap edges from the overlaps the measurement wrote, label images where needed.

    The measure stage records the pixels shared *at the same place* by the particles of
    consecutive frames (``etemseg measure --overlaps``).  That is the evidence of every frame
    pair whose drift step rounds to ``(0, 0)`` -- at 400 frames/s nearly all; the pairs that
    moved by a whole pixel or more are compared shifted from their label images
    (:func:`label_edges`).  The edges are those :func:`label_edges` gives for all pairs.

    Parameters
    ----------
    det, seq, drift, shape
        As :func:`label_edges`.
    overlaps : OverlapTable
        Zero-shift overlaps of consecutive frames of ``seq`` (``frame_a``, ``frame_b``, ``a``,
        ``b``, ``n_px``).
    label_source : callable or None
        Label images for the moved pairs; None is refused when there is one.

    Raises
    ------
    EtemsegError
        A pair moved by a whole pixel and there are no label images, or the table is invalid
        (:func:`table_edges`).
    """
    steps = shift_steps(seq, drift)
    moved = np.flatnonzero(np.any(rounded_steps(steps) != 0, axis=1))
    keep = ~np.isin(overlaps["frame_b"].to_numpy(np.int64), seq[moved])
    ra, rb, nn = table_edges(det, seq, overlaps[keep] if not keep.all() else overlaps)
    if moved.size == 0:
        return (ra, rb, nn), shape
    if label_source is None:
        raise EtemsegError(f"{moved.size} frame pairs drifted by a whole pixel or more (first: "
                           f"frames {int(seq[moved[0] - 1])}-{int(seq[moved[0]])}); their "
                           "overlaps need the label images")
    (la, lb, ln), shape = label_edges(det, seq, drift, label_source, shape, pairs=moved)
    ra, rb, nn = _joined([ra, la], [rb, lb], [nn, ln])
    order = np.lexsort((rb, ra))  # the order of label_edges: by frame pair, then rows
    return (ra[order], rb[order], nn[order]), shape


def table_edges(det: Detections, seq: np.ndarray, overlaps: OverlapTable) -> Edges:
    """Edges from an :func:`overlap_table` (rows whose labels have no detection are dropped).

    Raises
    ------
    EtemsegError
        A column is missing, or a row joins frames that are not consecutive frames of ``seq``.
    """
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
    ra = det.rows_of_keys(fa, overlaps["a"].to_numpy(np.int64))
    rb = det.rows_of_keys(fb, overlaps["b"].to_numpy(np.int64))
    ok = (ra >= 0) & (rb >= 0)
    return ra[ok], rb[ok], overlaps["n_px"].to_numpy(float)[ok]


# --------------------------------------------------------------------------------------------
# equivalent discs (no label images)
# --------------------------------------------------------------------------------------------


def disc_edges(det: Detections, kseq: np.ndarray, n: int, step: np.ndarray) -> Edges:
    """Edges of intersecting equivalent-area discs of consecutive frames.

    Parameters
    ----------
    det : Detections
    kseq : (N,) int64
        Layer of every row (:meth:`Detections.layers`).
    n : int
        Frames in the movie.
    step : (>= n, 2) float
        ``step[k]``: drift ``(dy, dx)`` px from frame ``k - 1`` to ``k``; the earlier frame's
        discs are moved by it.

    Returns
    -------
    Edges
        Intersection areas, px, in place of shared pixel counts.
    """
    e = np.zeros(0, np.int64)
    src = np.flatnonzero(kseq < n - 1)
    if src.size == 0 or n < 2:
        return e, e, np.zeros(0)
    r = det.radius
    s = step[kseq[src] + 1]
    ii, jj, dd = near_pairs(det.y[src] + s[:, 0], det.x[src] + s[:, 1], kseq[src] + 1,
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
