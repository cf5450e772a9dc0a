"""Events that hold over time: the frame-pair linker's segments and events, consolidated.

The pair linker (:mod:`etemseg.tracking.link`) trusts every frame's mask: a particle that drops
below the detection limit for a few frames ends (vanish) and starts again (appear); two particles
that touch in pixels before they fuse merge and split again (coalescence, split, coalescence...).
This module decides events over physical time windows (ms, converted with the frame period):

1. **Transient merges.**  A coalescence whose merged body splits again within ``persist`` frames
   is undone: parents and split children are paired (drift-corrected distance and volume), each
   pair becomes one trajectory, the merged body's rows go to the biggest parent.  Likewise a split
   whose pieces coalesce again within ``persist`` (a particle cut in two for a few frames): the
   parent continues into the re-merged body through its biggest piece; the other pieces are
   fragments without events.
0. **The movie's own physics**, measured on the pair linker's segments first: the ripening law
   ``d(r^3)/dt = 3 k (r / r_c - 1)`` (LSW; ``k`` a robust median over track pieces of
   ``2 gap`` frames with a 95 % interval from resampled tracks, :func:`_lsw`) and the
   sample-frame mobility (mean squared drift-corrected displacement against the lag,
   :func:`_spread`).
2. **Gap closing and re-identification.**  A vanish / exit followed by an appear / enter at the
   drift-corrected (sample-frame) place is one trajectory, no event: within ``gap`` frames with
   the lenient gate ``max_disp * sqrt(gap frames)``; within ``reid`` frames (and within ``gap``
   too) when the centroid of one lies inside the other's disc enlarged by the 99 % radius of the
   movie's own displacements over that gap (a particle cut by the frame edge or a partial mask
   still has its centroid inside the particle's disc).  Sizes must agree: volume within
   ``_GAP_VOLUME`` (medians of the last / first three detections), or equivalent radii within
   ``_SIZE_PX`` (one boundary pixel each), or the smaller disc inside the larger (a partial mask:
   two particles cannot overlap), or either touches the border; beyond ``gap`` the lost particle
   must not have ripened away by then under the law.  Shortest gaps first, then best matches
   (distance / gate + |log volume ratio|), one to one, never joining trajectories that overlap in
   time.
3. **Hysteresis in time.**  A trajectory that is born by an appear / enter is *confirmed* once it
   has lasted ``confirm`` frames; an unconfirmed one (flicker at the detection limit, a spurious
   component) reports neither its appear nor its vanish, and is no coalescence parent: a
   coalescence left with fewer than two confirmed parents continues its confirmed parent.
   **Trust** goes the same way: a trajectory none of whose detections off the frame border
   reaches ``min_diameter_nm`` never looked like a particle (a CNN false positive, a
   component at the mask's area floor) and is treated as unconfirmed, however long it lasts;
   one shorter than ``trust`` frames (however it began: a split piece, too) reports no appear /
   vanish.  The rows of untrusted trajectories are flagged (``trusted`` False).
   An unconfirmed piece (shorter than ``confirm``) inside a confirmed trajectory's gap and
   inside its disc is that trajectory (:func:`_fill_gaps`): a particle at the detection limit
   that shows a small piece of itself while the pair linker's memory bridges its absence.
4. **Ripened away at the border.**  An exit whose particle kept its centre in view (the cut
   disc's geometry, :meth:`Detections.centre_in_view`) and was shrinking is a vanish
   (:func:`_vanishes_at_border`).
4b. **Delayed absorption.**  A vanish (one at the border too) beside a neighbour that gains at
   least half its volume (and three robust standard deviations of its own volume noise; lower
   quartiles before and after, so frames joined in pixels or flickering do not count) within
   ``gap`` frames is a coalescence; the neighbour's rows from the gain on become the child.
5. **Extinction time.**  A vanish of a shrinking particle is moved to its extrapolated extinction
   (:func:`_extinction`; a particle cut by the frame edge sized by its whole disc,
   :meth:`Detections.whole_radius_nm`): the movie's LSW law integrated from each of its last
   detections,
   averaged with inverse-variance weights, when the law is determined (``k`` within a factor 2 at
   95 %, :attr:`_Lsw.known`); else the particle's own ``r^3`` slope.
6. **Confidence** of every event in [0, 1]: the fraction of its window the evidence held (how long
   the merged body persisted, how long the particle stayed gone before the movie ended, how long a
   new trajectory lasted), times a volume-balance term ``min(r, 1/r)`` for multi-particle events
   (``r`` the volume ratio).

The reasoning and the validation on realistic masks: ``docs/tracking.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
from scipy.ndimage import uniform_filter1d
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from etemseg.tracking.detections import Detections
from etemseg.tracking.summary import EVENT_KINDS

__all__ = ["Windows", "consolidate", "windows_in_frames"]

_GAP_VOLUME = 4.0  # volume factor allowed across a gap (sizes at the detection limit are noisy;
#                   any at the border, where a particle is cut by the frame edge)
_SIZE_PX = 2.0  # equivalent radii (px) that agree whatever the volume ratio: each mask's
#                 boundary may be off by a pixel (small particles at the detection limit)
_ENDS = 3  # detections whose median volume stands for a segment's end / start
_CAMERA_FPS = 400.0  # frame rate assumed when the movie's times are unknown (the K2's)
_LAW_FACTOR = 2.0  # the movie's law is used when its k is known within this factor (95 %)
_BOOTSTRAP = 200  # resamples of the tracks for the law's interval


@dataclass(frozen=True)
class Windows:
    """The time windows in frames (see the module docstring)."""

    gap: int
    persist: int
    confirm: int
    reid: int = 0
    trust: int = 0


def windows_in_frames(times: np.ndarray, gap_ms: float, persist_ms: float,
                      confirm_ms: float, reid_ms: float = 0.0, trust_ms: float = 0.0) -> Windows:
    """Windows of ``gap_ms``, ``persist_ms``, ``confirm_ms``, ``reid_ms``, ``trust_ms`` (ms) in
    frames of a movie whose frames are at ``times`` (s); the frame period is the median step (the
    K2's 400 frames/s when the times are unknown).  Every window is at least 1 frame except a 0
    ms one."""
    dt = np.diff(np.asarray(times, float))
    dt = dt[np.isfinite(dt) & (dt > 0)]
    period_ms = float(np.median(dt)) * 1000.0 if dt.size else 1000.0 / _CAMERA_FPS

    def frames(ms: float) -> int:
        return 0 if ms <= 0 else max(1, int(round(ms / period_ms)))

    return Windows(frames(gap_ms), frames(persist_ms), frames(confirm_ms), frames(reid_ms),
                   frames(trust_ms))


class _Segments:
    """The pair linker's trajectories (segments) with their first / last rows and events."""

    def __init__(self, det: Detections, kseq: np.ndarray, cum: np.ndarray, ids: np.ndarray,
                 events: pd.DataFrame):
        n_seg = int(ids.max()) if ids.size else 0
        rows = np.arange(ids.size)
        self.first = np.full(n_seg + 1, -1, np.int64)
        self.last = np.full(n_seg + 1, -1, np.int64)
        self.first[ids[::-1]] = rows[::-1]
        self.last[ids] = rows
        self.count = np.bincount(ids, minlength=n_seg + 1)
        self._order = np.argsort(ids, kind="stable")
        self._lo = np.searchsorted(ids[self._order], np.arange(n_seg + 1), side="left")
        self.kseq, self.ids, self.det = kseq, ids, det
        self.ys = det.y - cum[kseq, 0] if ids.size else det.y
        self.xs = det.x - cum[kseq, 1] if ids.size else det.x
        self.start_ev = np.full(n_seg + 1, -1, np.int64)
        self.end_ev = np.full(n_seg + 1, -1, np.int64)
        #: parents / children of every event as plain lists of int
        self.par = [[int(q) for q in p] for p in events["parents"]]
        self.ch = [[int(q) for q in c] for c in events["children"]]
        for e, (par, ch) in enumerate(zip(self.par, self.ch)):
            for q in ch:
                self.start_ev[int(q)] = e
            for q in par:
                self.end_ev[int(q)] = e
        self.parent = np.arange(n_seg + 1)

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = int(self.parent[s])
        return s

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def end_volume(self, s: int, at_start: bool) -> float:
        """Median volume of the first / last ``_ENDS`` rows of segment ``s``, nm^3."""
        r = self._order[self._lo[s]:self._lo[s] + self.count[s]]
        r = r[:_ENDS] if at_start else r[-_ENDS:]
        return float(np.median(self.det.vol[r]))

    def end_radius(self, s: int, at_start: bool) -> float:
        """Largest equivalent radius of the first / last ``_ENDS`` rows of segment ``s``, px (a
        partial mask is smaller than the particle, never bigger)."""
        r = self._order[self._lo[s]:self._lo[s] + self.count[s]]
        r = r[:_ENDS] if at_start else r[-_ENDS:]
        return float(np.max(self.det.radius[r]))

    def length(self, s: int) -> int:
        """Frames from the first to the last row of segment ``s``."""
        return int(self.kseq[self.last[s]] - self.kseq[self.first[s]] + 1)


def _pair(sg: _Segments, ends: list[int], starts: list[int]) -> list[tuple[int, int]]:
    """One-to-one pairs (ending segment, starting segment) by drift-corrected distance between
    the last and first rows and volume (Hungarian)."""
    if not ends or not starts:
        return []
    la, fb = sg.last[ends], sg.first[starts]
    d = np.hypot(sg.ys[la][:, None] - sg.ys[fb][None, :], sg.xs[la][:, None] - sg.xs[fb][None, :])
    va = np.array([sg.end_volume(s, False) for s in ends])
    vb = np.array([sg.end_volume(s, True) for s in starts])
    cost = d / np.maximum(np.sqrt(sg.det.area[la]).mean(), 1.0) \
        + np.abs(np.log(np.maximum(va[:, None], 1e-9) / np.maximum(vb[None, :], 1e-9)))
    i, j = linear_sum_assignment(cost)
    return [(ends[a], starts[b]) for a, b in zip(i, j)]


def _undo_transients(sg: _Segments, events: pd.DataFrame, win: Windows,
                     dropped: np.ndarray, fragment: set[int]) -> None:
    """Step 1: coalescence -> split and split -> coalescence within ``win.persist`` undone (in
    place: unions in ``sg``, events flagged in ``dropped``, fragment segments collected)."""
    kinds = events["kind"].to_numpy(object)
    for e in np.argsort(events["frame"].to_numpy(), kind="stable"):
        if dropped[e]:
            continue
        par, ch = sg.par[e], sg.ch[e]
        if kinds[e] == "coalescence":
            c = ch[0]
            s = int(sg.end_ev[c])
            if (s < 0 or dropped[s] or kinds[s] not in ("split", "complex")
                    or sg.length(c) > win.persist):
                continue
            kids = sg.ch[s]
            for a, b in _pair(sg, par, kids):
                sg.union(a, b)
            big = max(par, key=lambda q: sg.end_volume(q, False))
            sg.union(big, c)
            dropped[e] = dropped[s] = True
        elif kinds[e] == "split":
            ends = {int(sg.end_ev[q]) for q in ch}
            if len(ends) != 1:
                continue
            m = ends.pop()
            if (m < 0 or dropped[m] or kinds[m] != "coalescence"
                    or max(sg.length(q) for q in ch) > win.persist):
                continue
            big = max(ch, key=lambda q: sg.end_volume(q, True))
            sg.union(par[0], big)
            sg.union(par[0], sg.ch[m][0])
            fragment.update(q for q in ch if q != big)
            dropped[e] = dropped[m] = True


def _lsw_integral(u):
    """``F(u) = -u^2/2 - u - ln(1 - u)``, ``0 <= u < 1``: the LSW law
    ``d(r^3)/dt = 3 k (r / r_c - 1)`` integrated from ``u = r / r_c`` to extinction takes
    ``r_c^3 F(u) / k`` (``F`` rises from 0 at ``u = 0`` to infinity at 1)."""
    return -u * u / 2 - u - np.log1p(-u)


@dataclass(frozen=True)
class _Lsw:
    """The movie's ripening law, ``d(r^3)/dt = 3 k (r / r_c - 1)`` (LSW, diffusion limited):
    ``k`` nm^3/s (NaN when it cannot be measured), its 95 % interval ``[lo, hi]`` nm^3/s and the
    critical radius ``rc`` (n,) nm of every frame (the running mean radius of the detections off
    the border)."""

    k: float
    rc: np.ndarray
    lo: float = float("nan")
    hi: float = float("nan")

    @property
    def measured(self) -> bool:
        """``k`` was measured and is positive (the movie ripens)."""
        return bool(np.isfinite(self.k) and self.k > 0)

    @property
    def known(self) -> bool:
        """The law is *determined*: ``k > 0`` and its 95 % interval within a factor
        :data:`_LAW_FACTOR` of it (so is every time the law gives, ``t ~ 1 / k``).  A short
        movie, or one whose tracks hardly change size, measures ``k`` from a few pieces; a time
        extrapolated with it may be off by any factor, and the particles' own data decide."""
        return self.measured and bool(self.lo >= self.k / _LAW_FACTOR
                                      and self.hi <= self.k * _LAW_FACTOR)

    def extinction(self, r_nm: np.ndarray, t: np.ndarray, layer: np.ndarray) -> float:
        """Time, s, a particle seen with radii ``r_nm`` (nm) at times ``t`` (s) in frames
        ``layer`` is gone.

        Every detection gives its own extinction time ``t + remaining(r)``: the law integrated
        exactly from it, however much the particle shrinks in between.  For a common radius
        noise their variances go as ``(d remaining / dr)^2 ∝ (u^2 / (1 - u))^2`` (``u = r /
        r_c``): the smallest detections, nearest to the extinction, date it best.  The estimates
        are averaged with the inverse of that variance, ``u`` taken from the law's own radius at
        ``t`` for the median estimate (weights from the noisy radii themselves would favour the
        detections that happen to be too small, and date it early).  NaN when no detection is
        below the critical radius."""
        t = np.asarray(t, float)
        layer = np.asarray(layer)
        te = t + self.remaining(np.asarray(r_nm, float), layer)
        ok = np.isfinite(te)
        if not ok.any():
            return float("nan")
        t, te, rc = t[ok], te[ok], self.rc[layer[ok]]
        goal = self.k * np.maximum(float(np.median(te)) - t, 0.0) / rc ** 3  # F(u) to invert
        lo, hi = np.zeros(t.size), np.ones(t.size)
        for _ in range(40):  # bisection: _lsw_integral rises from 0 at u = 0 to inf at 1
            u = (lo + hi) / 2
            below = _lsw_integral(u) < goal
            lo, hi = np.where(below, u, lo), np.where(below, hi, u)
        u = np.clip((lo + hi) / 2, 0.05, 1.0)  # floor: a detection is never of a point
        w = ((1 - u) / u ** 2) ** 2
        return float(np.sum(w * te) / np.sum(w))

    def remaining(self, r_nm: np.ndarray, layer: np.ndarray) -> np.ndarray:
        """Time, s, a particle of radius ``r_nm`` in frame ``layer`` needs to ripen away:
        ``rc^3 (-u^2/2 - u - ln(1 - u)) / k``, ``u = r / rc``; inf when it grows (``u >= 1``) or
        ``k`` is not :attr:`measured`."""
        r = np.atleast_1d(np.asarray(r_nm, float))
        rc = self.rc[np.atleast_1d(layer)] if self.rc.size else np.full(r.size, np.nan)
        out = np.full(r.size, np.inf)
        if not self.measured:
            return out
        u = r / np.where(rc > 0, rc, np.nan)
        ok = np.isfinite(u) & (u < 1)
        u = np.clip(u[ok], 0.0, 1 - 1e-9)
        out[ok] = rc[ok] ** 3 * _lsw_integral(u) / self.k
        return out


def _lsw(det: Detections, kseq: np.ndarray, ids: np.ndarray, times: np.ndarray, w: int) -> _Lsw:
    """Measure the movie's :class:`_Lsw` law on its tracks.

    ``rc``: mean radius of the detections off the border, running mean over ``w`` frames.
    ``k``: every track (``ids``) is cut into pieces of ``w`` detections off the border; in each,
    the slope ``s`` of ``r^3`` against time (least squares) and
    ``x = 3 (mean r / rc - 1)``; ``k`` is the median of ``s / x`` weighted by its inverse
    variance, ``x^2 sum (t - mean t)^2 / (s2 + s2_0)`` (``s2`` the piece's residual variance,
    shrunk by the median one ``s2_0``: a piece whose pixel count did not change is not
    infinitely precise; the median is robust to pieces spoilt by a pixel merge or a partial
    mask).  NaN with fewer than 10 pieces.  Its 95 % interval: the 2.5 and 97.5 percentiles of
    the same weighted median over :data:`_BOOTSTRAP` resamples of the tracks (with replacement,
    seeded: reproducible; the pieces of one track share its errors, so tracks are resampled,
    not pieces)."""
    n = times.size
    r = det.diam_nm / 2
    off = ~det.border
    cnt = np.bincount(kseq[off], minlength=n).astype(float)
    tot = np.bincount(kseq[off], weights=r[off], minlength=n)
    c_s = uniform_filter1d(cnt, max(w, 1), mode="constant")
    rc = uniform_filter1d(tot, max(w, 1), mode="constant") / np.where(c_s > 0, c_s, np.nan)
    if np.isfinite(rc).any():
        good = np.isfinite(rc)
        rc = np.interp(np.arange(n), np.flatnonzero(good), rc[good])
    else:
        return _Lsw(float("nan"), rc)
    rows = np.flatnonzero(off)
    if rows.size < 4 or w < 4:
        return _Lsw(float("nan"), rc)
    rows = rows[np.lexsort((kseq[rows], ids[rows]))]
    seg = ids[rows]
    start = np.r_[0, np.flatnonzero(seg[1:] != seg[:-1]) + 1]
    pos = np.arange(rows.size) - np.repeat(start, np.diff(np.r_[start, rows.size]))
    pieces, piece = np.unique(np.column_stack([seg, pos // w]), axis=0, return_inverse=True)
    piece = piece.ravel()
    t = times[kseq[rows]]
    y = r[rows] ** 3
    u = r[rows] / rc[kseq[rows]]
    m = piece.max() + 1

    def tot_(v):
        return np.bincount(piece, weights=v, minlength=m)

    nn = tot_(np.ones(rows.size))
    t0 = tot_(t) / np.maximum(nn, 1)
    tc = t - t0[piece]
    sxx, sxy = tot_(tc * tc), tot_(tc * y)
    ym = tot_(y) / np.maximum(nn, 1)
    slope = sxy / np.where(sxx > 0, sxx, np.nan)
    res = y - ym[piece] - slope[piece] * tc
    s2 = tot_(res * res) / np.maximum(nn - 2, 1)
    x = 3 * (tot_(u) / np.maximum(nn, 1) - 1)
    ok = (nn >= max(4, w // 2)) & np.isfinite(slope) & np.isfinite(s2) & (np.abs(x) > 1e-3)
    if ok.sum() < 10:
        return _Lsw(float("nan"), rc)
    pos = s2[ok][s2[ok] > 0]
    s2 = s2[ok] + (float(np.median(pos)) if pos.size else 1.0)  # shrunk to the common noise
    kk, wt = slope[ok] / x[ok], x[ok] ** 2 * sxx[ok] / s2
    o = np.argsort(kk)
    kk, wt = kk[o], wt[o]
    _, track = np.unique(pieces[:, 0][ok][o], return_inverse=True)  # the track of every piece
    n_tr = int(track.max()) + 1
    draws = np.random.default_rng(0).multinomial(n_tr, np.full(n_tr, 1.0 / n_tr), _BOOTSTRAP)
    cw = np.cumsum(np.vstack([wt, draws[:, track.ravel()] * wt]), axis=1)
    med = kk[np.minimum((cw < 0.5 * cw[:, -1:]).sum(axis=1), kk.size - 1)]
    lo, hi = np.percentile(med[1:], [2.5, 97.5])
    return _Lsw(float(med[0]), rc, float(lo), float(hi))


def _spread(sg: _Segments, lags: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
            ) -> tuple[float, float]:
    """The movie's own sample-frame mobility: ``(a, b)`` px^2 of ``mu(L) = a + b L``, the mean
    squared drift-corrected displacement of a particle over ``L`` frames (``a``: centroid noise,
    ``b``: ``4 D`` per frame), from the pair linker's segments (rows off the border).

    At every lag the 90th percentile of the squared displacements is taken and converted to the
    mean of the exponential law that ``|d|^2`` of 2-D Gaussian steps follows (``q90 / ln 10``):
    a high quantile, so that the faster (smaller) particles set the gate, not the median one.
    ``mu`` is fitted by least squares with relative weights; ``(0, 0)`` when fewer than two lags
    have 20 displacements."""
    o = np.lexsort((sg.kseq, sg.ids))
    ids, k = sg.ids[o], sg.kseq[o]
    y, x, edge = sg.ys[o], sg.xs[o], sg.det.border[o]
    pts = []
    for lag in lags:
        if lag >= o.size:
            break
        same = (ids[lag:] == ids[:-lag]) & (k[lag:] - k[:-lag] == lag) & ~edge[lag:] & ~edge[:-lag]
        if same.sum() < 20:
            break
        d2 = (y[lag:] - y[:-lag])[same] ** 2 + (x[lag:] - x[:-lag])[same] ** 2
        pts.append((lag, float(np.quantile(d2, 0.9)) / np.log(10.0)))
    if len(pts) < 2:
        return 0.0, 0.0
    L, mu = np.array(pts).T
    b, a = np.polyfit(L, mu, 1, w=1.0 / np.maximum(mu, 1e-6))
    if b < 0:
        a, b = float(np.median(mu)), 0.0
    return max(float(a), 0.0), float(b)


def _close_gaps(sg: _Segments, events: pd.DataFrame, win: Windows, maxd: float,
                dropped: np.ndarray, law: _Lsw | None = None, times: np.ndarray | None = None
                ) -> None:
    """Step 2: vanish / exit followed by appear / enter within ``win.gap`` frames (lenient
    diffusive gate), or within ``win.reid`` frames (re-identification), joined
    (:func:`_gap_candidates`).  Shortest gaps first, then best matches, one to one, never joining
    trajectories that overlap in time (in place: unions in ``sg``, events flagged in
    ``dropped``)."""
    kinds = events["kind"].to_numpy(object)
    live = np.flatnonzero(sg.count > 0)
    live = live[live > 0]
    ends = np.array([s for s in live.tolist() if sg.end_ev[s] >= 0
                     and kinds[sg.end_ev[s]] in ("vanish", "exit")
                     and not dropped[sg.end_ev[s]]], np.int64)
    starts = np.array([s for s in live.tolist() if sg.start_ev[s] >= 0
                       and kinds[sg.start_ev[s]] in ("appear", "enter")
                       and not dropped[sg.start_ev[s]]], np.int64)
    if not ends.size or not starts.size:
        return
    ia, ib, gap, cost = _gap_candidates(sg, ends, starts, win, maxd, law, times)
    root, first, last = _group_spans(sg)
    k0 = {int(q): int(sg.kseq[first[q]]) for q in np.unique(root[live])}
    k1 = {int(q): int(sg.kseq[last[q]]) for q in np.unique(root[live])}
    used_a: set[int] = set()
    used_b: set[int] = set()
    for c in np.lexsort((cost, gap)).tolist():  # shortest gap first, then best match
        a, b = int(ia[c]), int(ib[c])
        if a in used_a or b in used_b:
            continue
        sa, sb = int(ends[a]), int(starts[b])
        qa, qb = sg.find(sa), sg.find(sb)
        if qa == qb or not k1[qa] < k0[qb]:
            continue
        used_a.add(a)
        used_b.add(b)
        sg.union(sa, sb)
        q = sg.find(sa)
        k0[q], k1[q] = min(k0[qa], k0[qb]), max(k1[qa], k1[qb])
        dropped[sg.end_ev[sa]] = dropped[sg.start_ev[sb]] = True


def _gap_candidates(sg: _Segments, ends: np.ndarray, starts: np.ndarray, win: Windows,
                    maxd: float, law: _Lsw | None, times: np.ndarray | None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Candidate joins of ending segments ``ends`` and starting segments ``starts``: ``(ia, ib,
    gap, cost)``, positions in ``ends`` / ``starts``, the gap in frames and the cost
    (distance / gate + |log volume ratio| / log ``_GAP_VOLUME``).

    Position (sample frame, last row of the end, first row of the start): within ``win.gap``
    frames the lenient gate ``maxd * sqrt(gap)``; within ``win.reid`` frames (and ``win.gap``
    too) the centroid of one inside the other's disc (largest radius of its three end rows: a
    partial mask is smaller than the particle) enlarged by the 99 % radius of the movie's own
    displacements over the gap (:func:`_spread`; a particle cut by the frame edge, or a partial
    mask, still has its centroid inside the particle's disc).  Size: volumes within
    ``_GAP_VOLUME``, or equivalent radii within ``_SIZE_PX`` (a mask's boundary is uncertain by a
    pixel on either side), or either touches the border, or the smaller disc lies inside the
    larger (a partial mask of the same particle: two particles cannot overlap).  Beyond
    ``win.gap``: the lost particle, a pixel bigger than measured, must not have ripened away by
    then under the movie's law ``law`` (a new nucleus where a particle vanished is new)."""
    window = max(win.gap, win.reid)
    la, fb = sg.last[ends], sg.first[starts]
    ke, ks = sg.kseq[la], sg.kseq[fb]
    va = np.array([sg.end_volume(s, False) for s in ends.tolist()])
    vb = np.array([sg.end_volume(s, True) for s in starts.tolist()])
    ra = np.array([sg.end_radius(s, False) for s in ends.tolist()])
    rb = np.array([sg.end_radius(s, True) for s in starts.tolist()])
    a0, b0 = _spread(sg) if win.reid > 0 else (0.0, 0.0)

    def diffusive(gap: np.ndarray) -> np.ndarray:
        return np.sqrt(np.log(100.0) * (a0 + b0 * gap))

    reach = ra + rb.max() + max(float(diffusive(np.array([window + 1.0]))[0]),
                                maxd * np.sqrt(win.gap + 1))
    tree = cKDTree(np.column_stack([sg.ys[fb], sg.xs[fb]]))
    hits = tree.query_ball_point(np.column_stack([sg.ys[la], sg.xs[la]]), reach)
    ia = np.repeat(np.arange(ends.size), [len(h) for h in hits])
    ib = np.fromiter((j for h in hits for j in h), np.int64, ia.size)
    gap = ks[ib] - ke[ia]
    keep = (gap >= 1) & (gap <= window + 1)
    ia, ib, gap = ia[keep], ib[keep], gap[keep]
    d = np.hypot(sg.ys[la[ia]] - sg.ys[fb[ib]], sg.xs[la[ia]] - sg.xs[fb[ib]])
    new = np.maximum(ra[ia], rb[ib]) + diffusive(gap) if win.reid > 0 else np.zeros(gap.size)
    short = gap <= win.gap + 1
    bound = np.where(short, np.maximum(maxd * np.sqrt(np.maximum(gap, 1)), new), new)
    r = vb[ib] / np.maximum(va[ia], 1e-9)
    inside = d <= np.abs(ra[ia] - rb[ib]) + diffusive(gap)  # the smaller disc in the larger
    size_ok = (sg.det.border[la[ia]] | sg.det.border[fb[ib]] | inside
               | ((r > 1 / _GAP_VOLUME) & (r < _GAP_VOLUME))
               | (np.abs(ra[ia] - rb[ib]) <= _SIZE_PX))
    alive = np.ones(gap.size, bool)
    if law is not None and times is not None and win.reid > 0:
        rest = law.remaining(np.cbrt(va) / 2 + sg.det.ps, ke)  # a pixel bigger than measured
        rest[sg.det.border[la]] = np.inf
        alive = times[ks[ib]] - times[ke[ia]] <= rest[ia]
    ok = (d <= bound) & size_ok & ((gap <= win.reid + 1) & alive | short)
    cost = d / np.maximum(bound, 1e-9) + np.abs(np.log(np.maximum(r, 1e-9))) / np.log(_GAP_VOLUME)
    return ia[ok], ib[ok], gap[ok], cost[ok]


def _never_sized(sg: _Segments, root: np.ndarray, min_diameter_nm: float) -> np.ndarray:
    """(S + 1,) bool by group root: the group has detections off the frame border and none of
    them reaches ``min_diameter_nm`` (equivalent diameter, nm); a group only seen touching the
    border has no usable size and is not flagged."""
    off = ~sg.det.border
    g = root[sg.ids[off]]
    dmax = np.zeros(root.size)
    np.maximum.at(dmax, g, sg.det.diam_nm[off])
    seen = np.zeros(root.size, bool)
    seen[g] = True
    return seen & (dmax < min_diameter_nm)


def _confirm(sg: _Segments, events: pd.DataFrame, win: Windows, n: int, dropped: np.ndarray,
             fragment: set[int], min_diameter_nm: float = 0.0) -> np.ndarray:
    """Step 3: hysteresis and trust.  Returns the (S + 1,) bool *untrusted* flag of every
    segment: its group is unconfirmed (born by an appear / enter, shorter than ``win.confirm``
    and neither starting in the first nor ending in the last frame), or a fragment, or never
    particle-sized (:func:`_never_sized`); their appear / vanish events are dropped, and
    multi-particle events lose them (unions in place).  A group shorter than ``win.trust``
    (neither starting in the first nor ending in the last frame: its life is unknown) loses its
    appear / vanish only."""
    root, first, last = _group_spans(sg)
    k0 = np.where(last >= 0, sg.kseq[np.clip(first, 0, max(sg.kseq.size - 1, 0))], 0)
    k1 = np.where(last >= 0, sg.kseq[np.clip(last, 0, None)], 0)
    inner = (k0 > 0) & (k1 < n - 1) & (last >= 0)  # neither cut by the movie's start nor end
    brief = (k1 - k0 + 1 < win.trust) & inner
    kinds = events["kind"].to_numpy(object)
    born = np.zeros(root.size, bool)  # the group's first segment starts by an appear / enter
    for s_ in np.flatnonzero(sg.first >= 0):
        if sg.first[s_] == first[root[s_]]:
            e = sg.start_ev[s_]
            born[root[s_]] = e >= 0 and kinds[e] in ("appear", "enter")
    short = (k1 - k0 + 1 < win.confirm) & inner & born
    bad = short[root] | np.isin(np.arange(root.size), list(fragment))
    if min_diameter_nm > 0:
        bad |= _never_sized(sg, root, min_diameter_nm)[root]
    for e in range(len(events)):
        if dropped[e]:
            continue
        par, ch = sg.par[e], sg.ch[e]
        if kinds[e] in ("appear", "enter", "vanish", "exit"):
            q = (par + ch)[0]
            dropped[e] = bool(bad[q] or brief[root[q]])
        elif kinds[e] in ("coalescence", "split", "complex"):
            gp = [q for q in par if not bad[q]]
            gc = [q for q in ch if not bad[q]]
            if len(gp) == 1 and len(gc) == 1:
                sg.union(gp[0], gc[0])
                dropped[e] = True
            elif not gp or not gc:
                dropped[e] = True
    return bad


def _fill_gaps(sg: _Segments, bad: np.ndarray, win: Windows, maxd: float) -> None:
    """Step 3b: an unconfirmed piece inside another trajectory's gap is that trajectory.

    A particle at the detection limit (or losing contrast, or cut by the frame edge) may leave
    the masks for a few frames and show a small piece of itself in one of them; the pair
    linker's memory bridges the gap, and the piece is a short trajectory of its own, without
    events (unconfirmed), that takes the particle's identity for a frame.  Such a piece (a group
    shorter than ``confirm`` frames) joins a confirmed trajectory (unions in ``sg``) that has no
    detection in the piece's frames but one within ``gap`` frames before and after it, when the
    piece's centroid lies inside that trajectory's disc at its nearest detection (its
    equivalent radius plus the diffusive step ``maxd sqrt(dt)``, sample frame; a piece of a
    particle lies inside it, another particle cannot).  The nearest such trajectory; none when
    none fits."""
    root, first, last = _group_spans(sg)
    live = np.flatnonzero((last >= 0) & bad)
    if not live.size or sg.ids.size == 0:
        return
    k0 = sg.kseq[np.clip(first, 0, sg.kseq.size - 1)]
    k1 = sg.kseq[np.clip(last, 0, None)]
    short = live[(k1[live] - k0[live] + 1) <= max(win.confirm, 1)]
    if not short.size:
        return
    row_root = root[sg.ids]          # the group of every row (a piece that joins takes its host's)
    host_ok = ~bad[row_root]
    rows_of = pd.Series(np.arange(row_root.size)).groupby(row_root).indices
    occupied = set(zip(row_root.tolist(), sg.kseq.tolist()))   # (group, frame) with a detection
    tree = cKDTree(np.column_stack([sg.ys, sg.xs]))
    reach = float(sg.det.radius.max()) + maxd * np.sqrt(win.gap + 1)
    for g in short.tolist():
        rows = rows_of[g]
        frames = set(sg.kseq[rows].tolist())
        a, b = int(k0[g]), int(k1[g])
        yc, xc = float(sg.ys[rows].mean()), float(sg.xs[rows].mean())
        near = np.asarray(tree.query_ball_point([yc, xc], reach), np.int64)
        near = near[host_ok[near] & (sg.kseq[near] >= a - win.gap) & (sg.kseq[near] <= b + win.gap)]
        best = None
        for h in np.unique(row_root[near]).tolist():
            hr = near[row_root[near] == h]
            kh = sg.kseq[hr]
            if any((h, f) in occupied for f in frames) or not ((kh < a).any() and (kh > b).any()):
                continue                 # the host is seen in the piece's frames, or not around it
            j = hr[np.argmin(np.minimum(np.abs(kh - a), np.abs(kh - b)))]
            dt = min(abs(int(sg.kseq[j]) - a), abs(int(sg.kseq[j]) - b))
            d = float(np.hypot(sg.ys[j] - yc, sg.xs[j] - xc))
            if d <= sg.det.radius[j] + maxd * np.sqrt(dt) and (best is None or d < best[0]):
                best = (d, h)
        if best is not None:
            h = best[1]
            sg.union(g, h)
            row_root[rows] = h
            occupied.update((h, f) for f in frames)


def _group_spans(sg: _Segments) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Root of every segment, and the first / last row of every root's group."""
    root = np.array([sg.find(s) for s in range(sg.first.size)])
    first = np.full(root.size, np.iinfo(np.int64).max)
    last = np.full(root.size, -1)
    live = sg.count > 0
    np.minimum.at(first, root[live], sg.first[live])
    np.maximum.at(last, root[live], sg.last[live])
    return root, first, last


def consolidate(det: Detections, kseq: np.ndarray, cum: np.ndarray, ids: np.ndarray,
                events: pd.DataFrame, win: Windows, maxd: float, times: np.ndarray,
                min_diameter_nm: float = 0.0) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
    """Consolidate the pair linker's trajectories and events over time (module docstring).

    Parameters
    ----------
    det : Detections
        N rows.
    kseq : (N,) int64
        Layer (frame index in the movie) of every row.
    cum : (n, 2) float
        Cumulative drift of every frame, px.
    ids : (N,) int64
        The pair linker's trajectory ids (1..S).
    events : pandas.DataFrame
        The pair linker's events (ids of ``ids``).
    win : Windows
        The windows, frames.
    maxd : float
        Largest drift-corrected step between consecutive frames, px.
    times : (n,) float
        Time of every frame of the movie, s.
    min_diameter_nm : float
        Equivalent diameter, nm, a trajectory must reach off the border to be trusted (step 3).

    Returns
    -------
    ids : (N,) int64
        Trajectory ids renumbered from 1 in order of their first row.
    events : pandas.DataFrame
        The events that hold, with the new ids and a ``confidence`` column.
    trusted : (N,) bool
        The row's trajectory holds a segment that is neither unconfirmed, nor a fragment, nor
        never particle-sized (step 3; all True when step 3 is off).
    """
    n = times.size
    if not len(ids):
        return ids, events, np.ones(0, bool)
    sg = _Segments(det, kseq, cum, ids, events)
    law = _lsw(det, kseq, ids, times, 2 * win.gap) if win.gap > 0 else None
    dropped = np.zeros(len(events), bool)
    fragment: set[int] = set()
    if win.persist > 0:
        _undo_transients(sg, events, win, dropped, fragment)
    if win.gap > 0:
        _close_gaps(sg, events, win, maxd, dropped, law, times)
    bad = np.zeros(sg.first.size, bool)
    if win.confirm > 0 or win.trust > 0 or min_diameter_nm > 0:
        bad = _confirm(sg, events, win, n, dropped, fragment, min_diameter_nm)
        if win.gap > 0:
            _fill_gaps(sg, bad, win, maxd)
    root, first, last = _group_spans(sg)
    good = np.zeros(root.size, bool)
    good[root[~bad]] = True
    trusted = good[root[ids]]
    live = last >= 0
    order = np.argsort(first[live], kind="stable")
    final = np.zeros(root.size, np.int64)
    final[np.flatnonzero(live)[order]] = np.arange(1, order.size + 1)
    new_ids = final[root[ids]]
    out = _rebuild(sg, events, dropped, root, first, last, final, win, n)
    if win.gap > 0:
        out = _vanishes_at_border(out, _track_rows(new_ids), det, kseq, times, win)
        new_ids, out = _absorptions(det, kseq, cum, new_ids, out, win, maxd, times)
        out = _extinction(out, _track_rows(new_ids), det, kseq, times, win, law)
    return new_ids, out, trusted


def _track_rows(ids: np.ndarray) -> Callable[[int], np.ndarray]:
    """``rows(p)``: the rows of trajectory ``p`` of ``ids`` (N,), in row (= time) order."""
    order = np.argsort(ids, kind="stable")
    lo = np.searchsorted(ids[order], np.arange(ids.max() + 2), side="left")
    return lambda p: order[lo[p]:lo[p + 1]]


def _extinction(events: pd.DataFrame, rows_of: Callable[[int], np.ndarray], det: Detections,
                kseq: np.ndarray, times: np.ndarray, win: Windows, law: _Lsw | None = None
                ) -> pd.DataFrame:
    """Vanish time = extrapolated extinction of a shrinking particle.

    A ripening particle fades below the detection limit before it is gone.  With the movie's
    ripening law ``law`` (:func:`_lsw`, ``d(r^3)/dt = 3 k (r / r_c - 1)``) when it is determined
    (:attr:`_Lsw.known`): every detection of the last ``gap`` frames gives the time the law,
    integrated from its radius, takes the particle to zero,
    ``t = r_c^3 (-u^2/2 - u - ln(1 - u)) / k`` (``u = r / r_c``; none above the critical radius),
    and the estimates are averaged with inverse-variance weights (:meth:`_Lsw.extinction`).
    Without a determined law (too few tracks, too short a movie to measure ``k``): ``r^3`` of the
    last ``gap`` frames is fitted by a line in time, slope ``-c``; when it falls by two standard
    errors, ``k = c / (3 (1 - u_0))`` from it, ``r_end`` the fit at the last detection.  At most
    ``2 gap`` frames after the last detection, never past the movie.  ``frame`` and ``time_s``
    move alike.  A particle cut by the frame edge is sized by its whole disc
    (:meth:`Detections.whole_radius_nm`), not by the part the edge leaves."""
    sel = np.flatnonzero((events["kind"] == "vanish").to_numpy())
    if not sel.size or win.gap <= 0 or times.size < 2 or not np.isfinite(times).all():
        return events
    n = times.size
    reach = 2 * win.gap
    known = law is not None and law.known
    frame_of = events["frame"].to_numpy().copy()
    t_of = events["time_s"].to_numpy(float).copy()
    for e in sel.tolist():
        rows = rows_of(int(events["parents"].iat[e][0]))
        k_last = int(kseq[rows[-1]])
        rows = rows[kseq[rows] > k_last - win.gap]
        t = times[kseq[rows]]
        r_nm = det.whole_radius_nm(rows)  # a particle cut by the frame edge: its whole disc
        if known:
            t_ext = law.extinction(r_nm, t, kseq[rows])
            if not np.isfinite(t_ext):
                continue
        else:
            fit = _shrinking(t, r_nm ** 3)
            if fit is None:
                continue
            a, b = fit
            last = det.rows(int(det.frame[rows[-1]]))  # the rows of the last frame
            off = det.diam_nm[last][~det.border[last]]
            rc = float(np.mean(off) / 2) if off.size else float(np.cbrt(max(b, 1e-9)))
            u0 = min(float(np.cbrt(max(b, 0.0))) / max(rc, 1e-9), 0.9)
            k_lsw = -a / (3 * (1 - u0))
            t_ext = t[-1] + rc ** 3 * _lsw_integral(u0) / k_lsw
        k = int(np.clip(np.searchsorted(times, t_ext), k_last + 1,
                        min(k_last + reach, n - 1)))
        frame_of[e] += k - (k_last + 1)
        t_of[e] = times[k]
    out = events.copy()
    out["frame"] = frame_of
    out["time_s"] = t_of
    return _sorted(out)


def _shrinking(t: np.ndarray, r3: np.ndarray) -> tuple[float, float] | None:
    """``(slope, value at the last time)`` of a line fitted to ``r3`` (nm^3) against ``t`` (s)
    when it falls by more than two standard errors (at least 4 points), else None."""
    if t.size < 4:
        return None
    a, b = np.polyfit(t - t[-1], r3, 1)
    res = r3 - (a * (t - t[-1]) + b)
    se = np.sqrt(res.var() * t.size / max(t.size - 2, 1)
                 / max(((t - t.mean()) ** 2).sum(), 1e-30))
    return (float(a), float(b)) if a < -2 * se else None


def _vanishes_at_border(events: pd.DataFrame, rows_of: Callable[[int], np.ndarray],
                        det: Detections, kseq: np.ndarray, times: np.ndarray, win: Windows
                        ) -> pd.DataFrame:
    """An exit whose particle ripened away at the frame border is a vanish.

    The pair linker calls every end at the border an exit.  It is a vanish when the particle's
    centre was in view at the end (:meth:`Detections.centre_in_view` for most of its last
    :data:`_ENDS` detections: the edge cut less than half of it) and it was shrinking (its
    ``eq_diameter^3`` over the last ``gap`` frames falls by two standard errors,
    :func:`_shrinking`): a particle carried out by the drift loses its centre first."""
    sel = np.flatnonzero((events["kind"] == "exit").to_numpy())
    if not sel.size:
        return events
    kinds = events["kind"].to_numpy(object).copy()
    for e in sel.tolist():
        rows = rows_of(int(events["parents"].iat[e][0]))
        if 2 * det.centre_in_view(rows[-_ENDS:]).sum() <= min(rows.size, _ENDS):
            continue
        rows = rows[kseq[rows] > kseq[rows[-1]] - win.gap]
        if _shrinking(times[kseq[rows]], det.vol[rows] / 8) is not None:
            kinds[e] = "vanish"
    out = events.copy()
    out["kind"] = kinds
    return _sorted(out)


def _rebuild(sg: _Segments, events: pd.DataFrame, dropped: np.ndarray, root: np.ndarray,
             first: np.ndarray, last: np.ndarray, final: np.ndarray, win: Windows, n: int
             ) -> pd.DataFrame:
    """The events that hold, with final ids and a confidence (see the module docstring)."""
    kk = sg.kseq
    span = np.where(last >= 0, kk[np.clip(last, 0, None)] - kk[np.clip(first, 0, kk.size - 1)] + 1,
                    0)

    def frac(v: float, w: int) -> float:
        return 1.0 if w <= 0 else float(min(1.0, max(v, 0.0) / w))

    keep, rows = [], []
    kinds = events["kind"].to_numpy(object)
    ratio = events["volume_ratio"].to_numpy(float)
    for e in range(len(events)):
        if dropped[e]:
            continue
        par, ch = sg.par[e], sg.ch[e]
        fp = sorted({int(final[root[q]]) for q in par})
        fc = sorted({int(final[root[q]]) for q in ch})
        kind = kinds[e]
        if set(fp) & set(fc):
            continue
        if kind in ("vanish", "exit"):
            if sg.last[par[0]] != last[root[par[0]]]:
                continue
            conf = (frac(n - 1 - kk[sg.last[par[0]]], win.gap)
                    * frac(span[root[par[0]]], win.confirm))
        elif kind in ("appear", "enter"):
            if sg.first[ch[0]] != first[root[ch[0]]]:
                continue
            conf = frac(span[root[ch[0]]], win.persist)
        else:
            if len(fp) < 2 and len(fc) < 2:
                continue
            kind = "coalescence" if len(fc) == 1 else "split" if len(fp) == 1 else "complex"
            persist = min(span[root[q]] for q in ch)
            r = float(ratio[e])
            vt = min(r, 1 / r) if np.isfinite(r) and r > 0 else 0.5
            conf = frac(persist, win.persist) * vt
        keep.append(e)
        rows.append((kind, fp, fc, conf))
    out = events.iloc[keep].copy()
    out["kind"] = [r[0] for r in rows]
    out["parents"] = pd.Series([r[1] for r in rows], index=out.index, dtype=object)
    out["children"] = pd.Series([r[2] for r in rows], index=out.index, dtype=object)
    out["child"] = np.array([r[2][0] if len(r[2]) == 1 else -1 for r in rows], np.int64)
    out["confidence"] = np.array([r[3] for r in rows], float)
    return _sorted(out)


def _sorted(ev: pd.DataFrame) -> pd.DataFrame:
    """Events sorted as :func:`~etemseg.tracking.summary.events_table` sorts them."""
    if not len(ev):
        return ev.reset_index(drop=True)
    rank = {k: i for i, k in enumerate(EVENT_KINDS)}
    first = [min(list(p) + list(c)) for p, c in zip(ev["parents"], ev["children"])]
    order = np.lexsort((np.asarray(first), np.asarray([rank[k] for k in ev["kind"]]),
                        ev["frame"].to_numpy()))
    return ev.iloc[order].reset_index(drop=True)


def _absorber(det: Detections, kseq: np.ndarray, ys: np.ndarray, xs: np.ndarray,
              ids: np.ndarray, a_rows: np.ndarray, win: Windows, maxd: float
              ) -> tuple[int, int, float] | None:
    """The neighbour that swallowed a vanished particle, if any: ``(id, first row of the merged
    body, parents' volume)``.  ``a_rows``: the vanished particle's rows (sorted)."""
    ra = int(a_rows[-1])
    ka = int(kseq[ra])
    va = float(np.median(det.vol[a_rows[-_ENDS:]]))
    lo, hi = np.searchsorted(kseq, [ka - win.gap, ka + win.gap + 1])
    near = np.arange(lo, hi)
    near = near[ids[near] != ids[ra]]
    reach = det.radius[ra] + det.radius[near] + maxd * np.sqrt(win.gap)
    near = near[np.hypot(ys[near] - ys[ra], xs[near] - xs[ra]) <= reach]
    best = None
    for b in np.unique(ids[near]).tolist():
        rb = near[ids[near] == b]
        before, after = rb[kseq[rb] <= ka], rb[kseq[rb] > ka]
        if before.size == 0 or after.size < 2:
            continue
        vb = float(np.percentile(det.vol[before], 25))  # frames joined in pixels excluded
        gain = float(np.percentile(det.vol[after], 25)) - vb  # a gain that persists
        noise = 1.4826 * float(np.median(np.abs(det.vol[before] - np.median(det.vol[before]))))
        if gain < max(0.5 * va, 3 * noise) or va < 0.03 * (vb + va):
            continue
        hit = after[det.vol[after] >= vb + 0.5 * va]
        score = abs(np.log(max(gain, 1e-9) / va))
        if best is None or score < best[0]:
            best = (score, b, int(hit[0] if hit.size else after[0]), vb + va)
    return None if best is None else best[1:]


def _absorptions(det: Detections, kseq: np.ndarray, cum: np.ndarray, ids: np.ndarray,
                 events: pd.DataFrame, win: Windows, maxd: float, times: np.ndarray
                 ) -> tuple[np.ndarray, pd.DataFrame]:
    """Step 4b: a vanish next to a neighbour that gains its volume within ``win.gap`` frames is a
    coalescence (the smaller parent dropped below the detection limit just before it merged):
    the neighbour's rows from the gain on become a new trajectory, the child."""
    van = np.flatnonzero((events["kind"] == "vanish").to_numpy())
    if not van.size:
        return ids, events
    ids = ids.copy()
    ys, xs = det.y - cum[kseq, 0], det.x - cum[kseq, 1]
    ev = events.copy()
    parents = [list(p) for p in ev["parents"]]
    children = [list(c) for c in ev["children"]]
    frames = ev["frame"].to_numpy().copy()
    for e in van.tolist():
        a = int(parents[e][0])
        hit = _absorber(det, kseq, ys, xs, ids, np.flatnonzero(ids == a), win, maxd)
        if hit is None:
            continue
        b, j, vpar = hit
        new = int(ids.max()) + 1
        moved = (ids == b) & (kseq >= kseq[j])
        ids[moved] = new
        for lists, later in ((parents, frames > det.frame[j]), (children, frames >= det.frame[j])):
            for q in np.flatnonzero(later).tolist():
                if b in lists[q]:
                    lists[q][lists[q].index(b)] = new
        span = int(kseq[np.flatnonzero(moved)[-1]] - kseq[j] + 1)
        r = float(det.vol[j]) / max(vpar, 1e-9)
        ev.iloc[e, ev.columns.get_loc("kind")] = "coalescence"
        for col, v in (("frame", int(det.frame[j])), ("time_s", float(times[kseq[j]])),
                       ("child", new), ("x_px", float(det.x[j])), ("y_px", float(det.y[j])),
                       ("x_nm", float(det.x[j] * det.ps)), ("y_nm", float(det.y[j] * det.ps)),
                       ("eq_diameter_nm", float(det.diam_nm[j])), ("volume_ratio", r),
                       ("confidence", min(1.0, span / max(win.persist, 1)) * min(r, 1 / r))):
            ev.iloc[e, ev.columns.get_loc(col)] = v
        parents[e], children[e] = sorted([a, b]), [new]
        frames[e] = det.frame[j]
    ev["parents"] = pd.Series(parents, index=ev.index, dtype=object)
    ev["children"] = pd.Series(children, index=ev.index, dtype=object)
    return _renumber(ids, ev)


def _renumber(ids: np.ndarray, events: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """Ids renumbered from 1 in order of their first row, events mapped alike and re-sorted."""
    _, first = np.unique(ids, return_index=True)
    old = ids[np.sort(first)]
    lut = np.zeros(int(ids.max()) + 1, np.int64)
    lut[old] = np.arange(1, old.size + 1)
    ev = events.copy()
    ev["parents"] = pd.Series([sorted(int(lut[q]) for q in p) for p in ev["parents"]],
                              index=ev.index, dtype=object)
    ev["children"] = pd.Series([sorted(int(lut[q]) for q in c) for c in ev["children"]],
                               index=ev.index, dtype=object)
    ev["child"] = np.array([c[0] if len(c) == 1 else -1 for c in ev["children"]], np.int64)
    return lut[ids], _sorted(ev)

