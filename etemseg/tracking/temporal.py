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
2. **Gap closing.**  A vanish followed within ``gap`` frames by an appear at the drift-corrected
   place (gate ``max_disp * sqrt(gap frames)``, a diffusive spread) with a volume within a factor
   ``_GAP_VOLUME`` (medians of the last / first three detections; any volume when either touches
   the border) is a flicker: one trajectory, no
   event.  Nearest in (distance / gate + |log volume ratio|) first, one to one.
3. **Hysteresis in time.**  A trajectory that is born by an appear / enter is *confirmed* once it
   has lasted ``confirm`` frames; an unconfirmed one (flicker at the detection limit, a spurious
   component) reports neither its appear nor its vanish, and is no coalescence parent: a
   coalescence left with fewer than two confirmed parents continues its confirmed parent.
4. **Delayed absorption.**  A vanish beside a neighbour that gains at least half its volume (and
   three robust standard deviations of its own volume noise; lower quartiles before and after, so
   frames joined in pixels or flickering do not count) within ``gap`` frames is a coalescence;
   the neighbour's rows from the gain on become the child.
5. **Extinction time.**  A vanish of a shrinking particle is moved to its extrapolated extinction
   (LSW law integrated from the last ``gap`` frames' ``r^3`` slope, :func:`_extinction`).
6. **Confidence** of every event in [0, 1]: the fraction of its window the evidence held (how long
   the merged body persisted, how long the particle stayed gone before the movie ended, how long a
   new trajectory lasted), times a volume-balance term ``min(r, 1/r)`` for multi-particle events
   (``r`` the volume ratio).

The reasoning and the validation on realistic masks: ``docs/tracking.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from etemseg.tracking.detections import Detections
from etemseg.tracking.summary import EVENT_KINDS

__all__ = ["Windows", "consolidate", "windows_in_frames"]

_GAP_VOLUME = 4.0  # volume factor allowed across a gap (sizes at the detection limit are noisy;
#                   any at the border, where a particle is cut by the frame edge)
_ENDS = 3  # detections whose median volume stands for a segment's end / start
_CAMERA_FPS = 400.0  # frame rate assumed when the movie's times are unknown (the K2's)


@dataclass(frozen=True)
class Windows:
    """The time windows in frames (see the module docstring)."""

    gap: int
    persist: int
    confirm: int


def windows_in_frames(times: np.ndarray, gap_ms: float, persist_ms: float,
                      confirm_ms: float) -> Windows:
    """Windows of ``gap_ms``, ``persist_ms``, ``confirm_ms`` (ms) in frames of a movie whose
    frames are at ``times`` (s); the frame period is the median step (the K2's 400 frames/s when
    the times are unknown).  Every window is at least 1 frame except a 0 ms one."""
    dt = np.diff(np.asarray(times, float))
    dt = dt[np.isfinite(dt) & (dt > 0)]
    period_ms = float(np.median(dt)) * 1000.0 if dt.size else 1000.0 / _CAMERA_FPS

    def frames(ms: float) -> int:
        return 0 if ms <= 0 else max(1, int(round(ms / period_ms)))

    return Windows(frames(gap_ms), frames(persist_ms), frames(confirm_ms))


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


def _close_gaps(sg: _Segments, events: pd.DataFrame, win: Windows, maxd: float,
                dropped: np.ndarray) -> None:
    """Step 2: vanish / exit followed by appear / enter within ``win.gap`` frames, joined."""
    kinds = events["kind"].to_numpy(object)
    ends = [s for s in range(1, sg.first.size) if sg.count[s] and sg.end_ev[s] >= 0
            and kinds[sg.end_ev[s]] in ("vanish", "exit") and not dropped[sg.end_ev[s]]]
    starts = [s for s in range(1, sg.first.size) if sg.count[s] and sg.start_ev[s] >= 0
              and kinds[sg.start_ev[s]] in ("appear", "enter") and not dropped[sg.start_ev[s]]]
    if not ends or not starts:
        return
    ke = sg.kseq[sg.last[ends]]
    ks = sg.kseq[sg.first[starts]]
    la, fb = sg.last[ends], sg.first[starts]
    gap = ks[None, :] - ke[:, None]
    d = np.hypot(sg.ys[la][:, None] - sg.ys[fb][None, :], sg.xs[la][:, None] - sg.xs[fb][None, :])
    gate = maxd * np.sqrt(np.maximum(gap, 1))
    ok = (gap >= 1) & (gap <= win.gap + 1) & (d <= gate)
    ia, ib = np.nonzero(ok)
    cand = []
    for a, b in zip(ia.tolist(), ib.tolist()):
        va, vb = sg.end_volume(ends[a], False), sg.end_volume(starts[b], True)
        r = vb / max(va, 1e-9)
        at_border = sg.det.border[la[a]] or sg.det.border[fb[b]]
        if at_border or 1 / _GAP_VOLUME < r < _GAP_VOLUME:
            cand.append((d[a, b] / gate[a, b] + abs(np.log(r)), a, b))
    used_a: set[int] = set()
    used_b: set[int] = set()
    for _, a, b in sorted(cand):
        if a in used_a or b in used_b:
            continue
        used_a.add(a)
        used_b.add(b)
        sg.union(ends[a], starts[b])
        dropped[sg.end_ev[ends[a]]] = dropped[sg.start_ev[starts[b]]] = True


def _confirm(sg: _Segments, events: pd.DataFrame, win: Windows, n: int, dropped: np.ndarray,
             fragment: set[int]) -> np.ndarray:
    """Step 3: hysteresis.  Returns the (S + 1,) bool *unconfirmed* flag of every segment's group
    (born by an appear / enter, short and neither starting in the first nor ending in the last
    frame; or a fragment); their appear / vanish events are dropped, and multi-particle events
    lose them (unions in place)."""
    root, first, last = _group_spans(sg)
    k0 = np.where(last >= 0, sg.kseq[np.clip(first, 0, max(sg.kseq.size - 1, 0))], 0)
    k1 = np.where(last >= 0, sg.kseq[np.clip(last, 0, None)], 0)
    kinds = events["kind"].to_numpy(object)
    born = np.zeros(root.size, bool)  # the group's first segment starts by an appear / enter
    for s_ in np.flatnonzero(sg.first >= 0):
        if sg.first[s_] == first[root[s_]]:
            e = sg.start_ev[s_]
            born[root[s_]] = e >= 0 and kinds[e] in ("appear", "enter")
    short = (k1 - k0 + 1 < win.confirm) & (k0 > 0) & (k1 < n - 1) & (last >= 0) & born
    bad = short[root] | np.isin(np.arange(root.size), list(fragment))
    for e in range(len(events)):
        if dropped[e]:
            continue
        par, ch = sg.par[e], sg.ch[e]
        if kinds[e] in ("appear", "enter", "vanish", "exit"):
            dropped[e] = bool(bad[(par + ch)[0]])
        elif kinds[e] in ("coalescence", "split", "complex"):
            gp = [q for q in par if not bad[q]]
            gc = [q for q in ch if not bad[q]]
            if len(gp) == 1 and len(gc) == 1:
                sg.union(gp[0], gc[0])
                dropped[e] = True
            elif not gp or not gc:
                dropped[e] = True
    return bad


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
                events: pd.DataFrame, win: Windows, maxd: float, times: np.ndarray
                ) -> tuple[np.ndarray, pd.DataFrame]:
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

    Returns
    -------
    ids : (N,) int64
        Trajectory ids renumbered from 1 in order of their first row.
    events : pandas.DataFrame
        The events that hold, with the new ids and a ``confidence`` column.
    """
    n = times.size
    if not len(ids):
        return ids, events
    sg = _Segments(det, kseq, cum, ids, events)
    dropped = np.zeros(len(events), bool)
    fragment: set[int] = set()
    if win.persist > 0:
        _undo_transients(sg, events, win, dropped, fragment)
    if win.gap > 0:
        _close_gaps(sg, events, win, maxd, dropped)
    if win.confirm > 0:
        _confirm(sg, events, win, n, dropped, fragment)
    root, first, last = _group_spans(sg)
    live = last >= 0
    order = np.argsort(first[live], kind="stable")
    final = np.zeros(root.size, np.int64)
    final[np.flatnonzero(live)[order]] = np.arange(1, order.size + 1)
    new_ids = final[root[ids]]
    out = _rebuild(sg, events, dropped, root, first, last, final, win, n)
    if win.gap > 0:
        new_ids, out = _absorptions(det, kseq, cum, new_ids, out, win, maxd, times)
    return new_ids, _extinction(out, new_ids, det, kseq, times, win)


def _extinction(events: pd.DataFrame, ids: np.ndarray, det: Detections, kseq: np.ndarray,
                times: np.ndarray, win: Windows) -> pd.DataFrame:
    """Vanish time = extrapolated extinction of a shrinking particle.

    A ripening particle fades below the detection limit before it is gone.  ``r^3`` of the last
    ``2 * gap`` frames of the trajectory is fitted by a line in time, slope ``-c``; when it falls
    (by two standard errors) the LSW law ``d(r^3)/dt = 3 k (r / r_c - 1)`` (``r_c`` the mean
    radius of the frame's detections, ``k = c / (3 (1 - u_0))``, ``u_0 = r_end / r_c``) is
    integrated to extinction: ``t = r_c^3 (-u_0^2/2 - u_0 - ln(1 - u_0)) / k`` after the last
    detection (``~ r_end^3 / c`` for a small particle), at most ``4 * gap`` frames, never past
    the movie.  ``frame`` and ``time_s`` move alike."""
    sel = np.flatnonzero((events["kind"] == "vanish").to_numpy())
    if not sel.size or win.gap <= 0 or times.size < 2 or not np.isfinite(times).all():
        return events
    order = np.argsort(ids, kind="stable")
    lo = np.searchsorted(ids[order], np.arange(ids.max() + 2), side="left")
    r3 = (det.diam_nm / 2) ** 3
    n = times.size
    frame_of = events["frame"].to_numpy().copy()
    t_of = events["time_s"].to_numpy(float).copy()
    for e in sel.tolist():
        p = int(events["parents"].iat[e][0])
        rows = order[lo[p]:lo[p + 1]]
        k_last = int(kseq[rows[-1]])
        rows = rows[kseq[rows] > k_last - win.gap]
        if rows.size < 4:
            continue
        t = times[kseq[rows]]
        a, b = np.polyfit(t - t[-1], r3[rows], 1)
        res = r3[rows] - (a * (t - t[-1]) + b)
        se = np.sqrt(res.var() * rows.size / max(rows.size - 2, 1)
                     / max(((t - t.mean()) ** 2).sum(), 1e-30))
        if not a < -2 * se:
            continue
        same = kseq == k_last
        rc = float(np.mean(det.diam_nm[same & ~det.border]) / 2) if (same & ~det.border).any() \
            else float(np.cbrt(max(b, 1e-9)))
        u0 = min(float(np.cbrt(max(b, 0.0))) / max(rc, 1e-9), 0.9)
        k_lsw = -a / (3 * (1 - u0))
        t_ext = t[-1] + rc ** 3 * (-u0 * u0 / 2 - u0 - np.log1p(-u0)) / k_lsw
        k = int(np.clip(np.searchsorted(times, t_ext), k_last + 1,
                        min(k_last + 2 * win.gap, n - 1)))
        frame_of[e] += k - (k_last + 1)
        t_of[e] = times[k]
    out = events.copy()
    out["frame"] = frame_of
    out["time_s"] = t_of
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
    """Step 4: a vanish next to a neighbour that gains its volume within ``win.gap`` frames is a
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

