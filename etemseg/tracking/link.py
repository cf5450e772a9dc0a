"""The linker: particle tracking with coalescence, vanish, appear and split events.

The design, the evidence for its constants and its limits: ``docs/tracking.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from etemseg.errors import EtemsegError
from etemseg.tracking.detections import Detections, frame_sequence, frame_times
from etemseg.tracking.drift import drift_columns, drift_table
from etemseg.tracking.neighbours import mutual_nearest, near_pairs
from etemseg.tracking.overlap import (Edges, OverlapTable, disc_edges, label_edges,
                                      measured_edges, table_edges)
from etemseg.tracking.params import LinkParams
from etemseg.tracking.summary import (EVENTS_SCHEMA, events_table, frames_table,
                                      trajectories_table)
from etemseg.tracking.temporal import consolidate, windows_in_frames

__all__ = ["link", "link_movie"]

_STRONG_OVERLAP = 0.5  # edges kept when cutting an m:n component
_FALLBACK_VOLUME = 3.0  # volume factor allowed for the distance fallback
_MEMORY_VOLUME = 2.0  # volume factor allowed when bridging a missing frame

#: A multi-particle event: (parent rows, child rows), each (m,) int64 sorted.
Group = tuple[np.ndarray, np.ndarray]


# --------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------


def link(detections: pd.DataFrame, *, overlaps: OverlapTable | None = None,
         pixel_size_nm: float | None = None, max_disp_nm: float = LinkParams.max_disp_nm,
         min_overlap: float = LinkParams.min_overlap,
         min_absorbed_volume: float = LinkParams.min_absorbed_volume,
         memory: int = LinkParams.memory, gap_ms: float = LinkParams.gap_ms,
         persist_ms: float = LinkParams.persist_ms, confirm_ms: float = LinkParams.confirm_ms,
         reid_ms: float = LinkParams.reid_ms,
         min_diameter_nm: float = LinkParams.min_diameter_nm,
         trust_ms: float = LinkParams.trust_ms,
         frame_shape: tuple[int, int] | None = None, all_frames: Iterable[int] | None = None,
         drift: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Link per-frame detections into trajectories, with coalescence / vanish / appear events.

    Parameters
    ----------
    detections : pandas.DataFrame
        Per-frame detections (see the module docstring); the order of rows does not matter.
    overlaps : pandas.DataFrame, optional
        ``frame_a``, ``frame_b``, ``a``, ``b``, ``n_px``: mask overlaps of consecutive frames, as
        made by :func:`~etemseg.tracking.overlap_table` with the same frames and drift.  A frame
        pair without rows has no overlaps.  None: centroid-only linking (equivalent discs stand in
        for the masks).
    pixel_size_nm : float, optional
        Inferred from ``x_nm / x_px`` when both are present.
    max_disp_nm, min_overlap, min_absorbed_volume, memory, gap_ms, persist_ms, confirm_ms, \
            reid_ms, min_diameter_nm, trust_ms
        See :class:`~etemseg.tracking.LinkParams` (the windows in ms are converted to frames
        with the movie's frame period, from ``time_s`` of the detections; 400 frames/s when
        unknown).
    frame_shape : (int, int), optional
        ``(H, W)``; only used to decide ``touches_border`` when that column is missing.
    all_frames : array of int, optional
        Every frame of the movie in order; frames without detections take part as empty frames.
        Default: the frames present in ``detections``.
    drift : pandas.DataFrame, optional
        ``frame``, ``dy_px``, ``dx_px`` (cumulative); default
        :func:`~etemseg.tracking.estimate_drift`.

    Returns
    -------
    trajectories : pandas.DataFrame
        The detections sorted by (frame, label) with ``particle`` (int64 trajectory id >= 1) in
        front and ``x_sample_nm``, ``y_sample_nm`` (position minus cumulative drift) and
        ``trusted`` (bool: the trajectory looked like a particle and may report events; see
        ``min_diameter_nm``, ``confirm_ms``) appended.
    events : pandas.DataFrame
        ``kind`` (one of :data:`~etemseg.tracking.EVENT_KINDS`), ``frame`` (int64), ``time_s``,
        ``parents`` and ``children`` (lists of int64 ids; parents exist in the previous present
        frame, children in ``frame``), ``child`` (the only child, or -1), ``x_nm``, ``y_nm``,
        ``x_px``, ``y_px``, ``eq_diameter_nm``, ``volume_ratio``; sorted by frame, kind, smallest
        id.  Write with :data:`~etemseg.tracking.EVENTS_SCHEMA`.

    Raises
    ------
    EtemsegError
        Malformed detections (missing columns, a label twice in a frame, ...).
    ConfigError
        A bad parameter.
    """
    params = LinkParams(max_disp_nm=max_disp_nm, min_overlap=min_overlap,
                        min_absorbed_volume=min_absorbed_volume, memory=memory, gap_ms=gap_ms,
                        persist_ms=persist_ms, confirm_ms=confirm_ms, reid_ms=reid_ms,
                        min_diameter_nm=min_diameter_nm, trust_ms=trust_ms)
    det, seq, drift_df, times = _prepare(detections, pixel_size_nm, frame_shape, all_frames,
                                         params, drift, None, None)
    cum = drift_df[["dy_px", "dx_px"]].to_numpy(float)
    edges = None if overlaps is None else table_edges(det, seq, overlaps)
    ids, events, trusted = _link_all(det, seq, cum, times, params, edges)
    return trajectories_table(det, seq, cum, ids, trusted), events


def link_movie(detections: pd.DataFrame,
               label_source: Callable[[int], np.ndarray] | None, *,
               pixel_size_nm: float | None = None, frame_shape: tuple[int, int] | None = None,
               all_frames: Iterable[int] | None = None, time_s: Any = None,
               fps: float | None = None, max_disp_nm: float = LinkParams.max_disp_nm,
               min_overlap: float = LinkParams.min_overlap,
               min_absorbed_volume: float = LinkParams.min_absorbed_volume,
               memory: int = LinkParams.memory, gap_ms: float = LinkParams.gap_ms,
               persist_ms: float = LinkParams.persist_ms,
               confirm_ms: float = LinkParams.confirm_ms, reid_ms: float = LinkParams.reid_ms,
               min_diameter_nm: float = LinkParams.min_diameter_nm,
               trust_ms: float = LinkParams.trust_ms,
               overlaps: OverlapTable | None = None
               ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Link a whole movie, streaming frame pairs, and summarise every frame.

    The drift is estimated from the detections first (:func:`~etemseg.tracking.estimate_drift`);
    then the label images are requested in frame order, once each, and every one is kept only
    until the next has been compared with it (memory: two label images plus the overlap edges,
    whatever the movie length); then all frame pairs are linked at once.

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
    max_disp_nm, min_overlap, min_absorbed_volume, memory, gap_ms, persist_ms, confirm_ms, \
            reid_ms, min_diameter_nm, trust_ms
        See :class:`~etemseg.tracking.LinkParams`.
    overlaps : pandas.DataFrame, optional
        Mask overlaps *at the same place* of consecutive frames, as ``etemseg measure
        --overlaps`` records them (``frame_a``, ``frame_b``, ``a``, ``b``, ``n_px``): the
        evidence of every pair whose drift step rounds to zero pixels, so that only the pairs
        that moved need label images (:func:`~etemseg.tracking.overlap.measured_edges`; same
        result as from the label images).

    Returns
    -------
    trajectories, events : pandas.DataFrame
        As :func:`link`.
    frames : pandas.DataFrame
        :func:`~etemseg.tracking.frames_table` of the trajectories, with the drift and per-kind
        event counts.
    """
    if label_source is None and frame_shape is None:
        raise EtemsegError("link_movie: frame_shape is needed without label images")
    params = LinkParams(max_disp_nm=max_disp_nm, min_overlap=min_overlap,
                        min_absorbed_volume=min_absorbed_volume, memory=memory, gap_ms=gap_ms,
                        persist_ms=persist_ms, confirm_ms=confirm_ms, reid_ms=reid_ms,
                        min_diameter_nm=min_diameter_nm, trust_ms=trust_ms)
    det, seq, drift_df, times = _prepare(detections, pixel_size_nm, frame_shape, all_frames,
                                         params, None, time_s, fps)
    cum = drift_df[["dy_px", "dx_px"]].to_numpy(float)
    shape = tuple(int(v) for v in frame_shape) if frame_shape is not None else None
    edges = None
    if overlaps is not None:
        edges, shape = measured_edges(det, seq, drift_df, overlaps, label_source, shape)
    elif label_source is not None:
        edges, shape = label_edges(det, seq, drift_df, label_source, shape)
    ids, events, trusted = _link_all(det, seq, cum, times, params, edges)
    traj = trajectories_table(det, seq, cum, ids, trusted)
    if shape is None:  # label images requested but the movie has no frame
        raise EtemsegError("link_movie: frame_shape is needed for a movie without frames")
    frames = frames_table(traj, frame_shape=shape, pixel_size_nm=det.ps, all_frames=seq,
                          time_s=times, drift=drift_df, events=events)
    return traj, events, frames


def _prepare(detections: pd.DataFrame, pixel_size_nm: float | None,
             frame_shape: tuple[int, int] | None, all_frames: Iterable[int] | None,
             params: LinkParams, drift: pd.DataFrame | None, time_s: Any, fps: float | None
             ) -> tuple[Detections, np.ndarray, pd.DataFrame, np.ndarray]:
    """Checked detections, the movie's frames ``seq`` (n,), the drift table (estimated when
    ``drift`` is None, else its cumulative columns at ``seq``) and the time of every frame (n,)."""
    params.validate()
    det = Detections(detections, pixel_size_nm, frame_shape)
    seq = frame_sequence(det, all_frames)
    if drift is None:
        drift = drift_table(det, seq, params.max_disp_nm / det.ps, 3, 9)
    else:
        cum = drift_columns(seq, drift, ("dy_px", "dx_px"))
        drift = pd.DataFrame({"frame": seq, "dy_px": cum[:, 0], "dx_px": cum[:, 1]})
    known = det.time[det.start] if det.time is not None else None
    times = frame_times(seq, time_s, fps, det.frames, known)
    return det, seq, drift, times


# --------------------------------------------------------------------------------------------
# the linker (all frame pairs at once)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Moves:
    """Where every detection row is expected in the next frame (N rows, n frames).

    Attributes
    ----------
    kseq : (N,) int64
        Layer (index of the frame in the movie's frames) of every row.
    n : int
        Frames in the movie.
    step : (n + 1, 2) float
        ``step[k]``: drift ``(dy, dx)`` px from frame ``k - 1`` to ``k`` (rows 0 and n zero).
    ym, xm : (N,) float
        Drift-corrected position of every row in the next frame's image coordinates, px.
    maxd : float
        ``max_disp_nm`` in px.
    """

    kseq: np.ndarray
    n: int
    step: np.ndarray
    ym: np.ndarray
    xm: np.ndarray
    maxd: float


def _moves(det: Detections, seq: np.ndarray, cum: np.ndarray, p: LinkParams) -> _Moves:
    """The :class:`_Moves` of a movie with cumulative drift ``cum`` (n, 2) px."""
    n = seq.size
    kseq = det.layers(seq)
    step = np.zeros((n + 1, 2))
    if n > 1:
        step[1:n] = np.diff(cum, axis=0)
    nxt = step[np.minimum(kseq + 1, n)]
    return _Moves(kseq, n, step, det.y + nxt[:, 0], det.x + nxt[:, 1], p.max_disp_nm / det.ps)


def _link_all(det: Detections, seq: np.ndarray, cum: np.ndarray, times: np.ndarray,
              p: LinkParams, edges: Edges | None
              ) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
    """Link all frame pairs of a movie at once.

    Parameters
    ----------
    det : Detections
        N rows.
    seq : (n,) int64
        The movie's frames.
    cum : (n, 2) float
        Cumulative drift ``(dy, dx)`` of every frame, px.
    times : (n,) float
        Time of every frame, s.
    p : LinkParams
    edges : Edges or None
        Mask overlaps (row a, row b, shared px) over all consecutive pairs; None: disc overlaps.

    Returns
    -------
    ids : (N,) int64
        Trajectory id (>= 1) of every row.
    events : pandas.DataFrame
        The events table (:func:`~etemseg.tracking.summary.events_table`).
    trusted : (N,) bool
        The row's trajectory looked like a particle
        (:func:`~etemseg.tracking.temporal.consolidate`).
    """
    mv = _moves(det, seq, cum, p)
    ia, ib, frac = _gated_edges(det, mv, p, edges)
    ia, ib, frac = _nearest_fallback(det, mv, ia, ib, frac)
    ia, ib, frac = _absorbed_fallback(det, mv, p, ia, ib, frac)
    cont_a, cont_b, lost, born, groups = _classify(det, mv, ia, ib, frac)
    # memory: a lost particle found again at its drift-corrected place
    if p.memory > 0 and lost.size and born.size:
        ba, bb = _bridges(det, mv.kseq, cum, lost, born, p.memory, mv.maxd)
        if ba.size:
            cont_a = np.concatenate([cont_a, ba])
            cont_b = np.concatenate([cont_b, bb])
            lost = np.setdiff1d(lost, ba)
            born = np.setdiff1d(born, bb)
    ids = _trajectory_ids(len(det.frame), cont_a, cont_b)
    events = _events(det, mv, seq, times, ids, lost, born, groups)
    win = windows_in_frames(times, p.gap_ms, p.persist_ms, p.confirm_ms, p.reid_ms, p.trust_ms)
    return consolidate(det, mv.kseq, cum, ids, events, win, mv.maxd, times, p.min_diameter_nm)


def _gated_edges(det: Detections, mv: _Moves, p: LinkParams, edges: Edges | None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The evidence: overlap edges (masks, else equivalent discs) that count.

    An edge counts when the shared area is at least ``p.min_overlap`` of the smaller particle and
    the drift-corrected centroids are closer than the sum of the equivalent radii plus
    ``max_disp``.

    Returns
    -------
    ia, ib : (E,) int64
        Rows of the earlier and the later frame.
    frac : (E,) float
        Shared area as a fraction of the smaller particle.
    """
    if edges is None:
        ia, ib, w = disc_edges(det, mv.kseq, mv.n, mv.step)
    else:
        ia, ib, w = edges
    area, rad = det.area, det.radius
    frac = w / np.maximum(np.minimum(area[ia], area[ib]), 1.0)
    dist = np.hypot(det.y[ib] - mv.ym[ia], det.x[ib] - mv.xm[ia])
    keep = (frac >= p.min_overlap) & (dist < rad[ia] + rad[ib] + mv.maxd)
    return ia[keep], ib[keep], frac[keep]


def _nearest_fallback(det: Detections, mv: _Moves, ia: np.ndarray, ib: np.ndarray,
                      frac: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fallback 1: join particles of consecutive frames that both still lack an edge, are
    mutually nearest within ``max_disp`` (drift-corrected) and agree in volume within
    ``_FALLBACK_VOLUME`` (any volume at the border).  Returns the edges ``(ia, ib, frac)``
    with the new ones appended (``frac`` 1)."""
    N = len(det.frame)
    has_a = np.zeros(N, bool)
    has_a[ia] = True
    has_b = np.zeros(N, bool)
    has_b[ib] = True
    ua = np.flatnonzero(~has_a & (mv.kseq < mv.n - 1))
    ub = np.flatnonzero(~has_b & (mv.kseq > 0))
    if not (ua.size and ub.size):
        return ia, ib, frac
    i, j = mutual_nearest(mv.ym[ua], mv.xm[ua], mv.kseq[ua] + 1, det.y[ub], det.x[ub],
                          mv.kseq[ub], mv.maxd)
    fa, fb = ua[i], ub[j]
    vol, border = det.vol, det.border
    r = vol[fa] / np.maximum(vol[fb], 1e-12)
    good = ((r < _FALLBACK_VOLUME) & (r > 1 / _FALLBACK_VOLUME)) | border[fa] | border[fb]
    fa, fb = fa[good], fb[good]
    return (np.concatenate([ia, fa]), np.concatenate([ib, fb]),
            np.concatenate([frac, np.ones(fa.size)]))


def _absorbed_fallback(det: Detections, mv: _Moves, p: LinkParams, ia: np.ndarray,
                       ib: np.ndarray, frac: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fallback 2: an unmatched particle swallowed by a touching neighbour (volume balance).

    A particle of frame ``t`` still without an edge (and not at the border: a particle cut by the
    border has no known volume) becomes a co-parent of a touching particle of ``t+1`` when that
    one gained at least half its volume relative to its other parents and it holds at least
    ``p.min_absorbed_volume`` of the merged volume.  Returns the edges with the new ones
    appended (``frac`` 0).
    """
    has_a = np.zeros(len(det.frame), bool)
    has_a[ia] = True
    ua = np.flatnonzero(~has_a & (mv.kseq < mv.n - 1) & ~det.border)
    if ua.size == 0:
        return ia, ib, frac
    cj, cd, lo, hi = _touching(det, mv, ua)
    add_a, add_b = _absorb(det, mv, p, ua, ia, ib, (cj, cd, lo, hi))
    if add_a.size:
        ia = np.concatenate([ia, add_a])
        ib = np.concatenate([ib, add_b])
        frac = np.concatenate([frac, np.zeros(add_a.size)])
    return ia, ib, frac


def _touching(det: Detections, mv: _Moves, ua: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Candidate absorbers of the rows ``ua`` (U,): the particles of the next frame within the
    sum of the radii plus ``max_disp``, as rows ``cj`` (C,) at distances ``cd`` (C,) px, those of
    ``ua[q]`` being ``cj[lo[q]:hi[q]]`` (``lo``, ``hi`` (U,))."""
    rad, kseq = det.radius, mv.kseq
    rmax = float(rad.max())
    rows = np.flatnonzero(np.isin(kseq, kseq[ua] + 1))
    ci, cj, cd = near_pairs(mv.ym[ua], mv.xm[ua], kseq[ua] + 1, rad[ua] + rmax + mv.maxd,
                            det.y[rows], det.x[rows], kseq[rows])
    cj = rows[cj]
    o = np.argsort(ci, kind="stable")
    ci, cj, cd = ci[o], cj[o], cd[o]
    lo = np.searchsorted(ci, np.arange(ua.size), side="left")
    hi = np.searchsorted(ci, np.arange(ua.size), side="right")
    return cj, cd, lo, hi


def _absorb(det: Detections, mv: _Moves, p: LinkParams, ua: np.ndarray, ia: np.ndarray,
            ib: np.ndarray, cand: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Greedy volume balance of fallback 2, per frame pair biggest unmatched particle first.

    ``cand``: :func:`_touching` of ``ua``.  Returns the new edges (row a, row b), (A,) int64 each;
    each accepted absorption counts towards its absorber's parents for the next ones.
    """
    cj, cd, lo, hi = cand
    N = len(det.frame)
    vol, rad = det.vol, det.radius
    npred = np.bincount(ib, minlength=N)
    pvol = np.bincount(ib, weights=vol[ia], minlength=N)
    add_a: list[int] = []
    add_b: list[int] = []
    for q in np.lexsort((-vol[ua], mv.kseq[ua])):  # per pair, biggest first
        a = int(ua[q])
        if hi[q] == lo[q]:
            continue
        js, d = cj[lo[q]:hi[q]], cd[lo[q]:hi[q]]
        gain = vol[js] - pvol[js]
        ok = ((d < rad[a] + rad[js] + mv.maxd) & (npred[js] > 0)
              & (vol[a] >= p.min_absorbed_volume * vol[js]) & (gain >= 0.5 * vol[a]))
        if not ok.any():
            continue
        js, gain = js[ok], gain[ok]
        j = int(js[np.argmin(np.abs(gain - vol[a]))])
        add_a.append(a)
        add_b.append(j)
        npred[j] += 1
        pvol[j] += vol[a]
    return np.asarray(add_a, np.int64), np.asarray(add_b, np.int64)


def _classify(det: Detections, mv: _Moves, ia: np.ndarray, ib: np.ndarray, frac: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[Group]]:
    """Events from the connected components of the bipartite graphs of all pairs at once.

    Node ``r`` is row ``r`` as a parent (frame t side), node ``N + r`` row ``r`` as a child
    (frame t+1 side); the edges are ``(ia, ib)`` with strengths ``frac`` (E,).

    Returns
    -------
    cont_a, cont_b : (C,) int64
        Continuation links (1:1 components, and the 1:1 pieces of cut m:n components).
    lost : (L,) int64
        Rows without a child (vanish / exit), ascending.
    born : (B,) int64
        Rows without a parent (appear / enter), ascending.
    groups : list of Group
        The multi-particle components (coalescence, split, complex).
    """
    N = len(det.frame)
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
    cont_b = np.flatnonzero((nA[cb] == 1) & (nB[cb] == 1))
    cont_a = a_of[cb[cont_b]]
    lost = np.flatnonzero((nB[ca] == 0) & (mv.kseq < mv.n - 1))  # vanish / exit
    born = np.flatnonzero((nA[cb] == 0) & (mv.kseq > 0))  # appear / enter
    multi = np.flatnonzero((nA >= 1) & (nB >= 1) & ((nA >= 2) | (nB >= 2)))
    groups: list[Group] = []
    if multi.size:
        extra_a, extra_b, groups = _multi_groups(ca, cb, multi, ia, ib, frac)
        if extra_a.size:
            cont_a = np.concatenate([cont_a, extra_a])
            cont_b = np.concatenate([cont_b, extra_b])
    return cont_a, cont_b, lost, born, groups


def _multi_groups(ca: np.ndarray, cb: np.ndarray, multi: np.ndarray, ia: np.ndarray,
                  ib: np.ndarray, frac: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, list[Group]]:
    """The parent and child rows of every multi-particle component, m:n ones cut along their
    strong edges (:func:`_cut_component`).

    Parameters
    ----------
    ca, cb : (N,) int
        Component of every row as a parent and as a child.
    multi : (M,) int
        The components with two or more parents or children (and at least one of each).
    ia, ib, frac : (E,)
        The edges.

    Returns
    -------
    extra_a, extra_b : (X,) int64
        Continuation links from the 1:1 pieces of cut components.
    groups : list of Group
        The other pieces, in order of component.
    """
    ra_, rb_ = np.flatnonzero(np.isin(ca, multi)), np.flatnonzero(np.isin(cb, multi))
    oa, ob = np.argsort(ca[ra_], kind="stable"), np.argsort(cb[rb_], kind="stable")
    ra_, rb_ = ra_[oa], rb_[ob]
    ka = (np.searchsorted(ca[ra_], multi, side="left"),
          np.searchsorted(ca[ra_], multi, side="right"))
    kb = (np.searchsorted(cb[rb_], multi, side="left"),
          np.searchsorted(cb[rb_], multi, side="right"))
    esel = np.isin(ia, ra_)
    eia, eib, efr = ia[esel], ib[esel], frac[esel]
    extra_a, extra_b, groups = [], [], []
    for q in range(multi.size):
        an = ra_[ka[0][q]:ka[1][q]]
        bn = rb_[kb[0][q]:kb[1][q]]
        gs = [(an, bn)]
        if an.size >= 2 and bn.size >= 2:
            gs = _cut_component(an, bn, eia, eib, efr)
        for ga, gb in gs:
            if ga.size == 1 and gb.size == 1:
                extra_a.append(int(ga[0]))
                extra_b.append(int(gb[0]))
            else:
                groups.append((ga, gb))
    return np.asarray(extra_a, np.int64), np.asarray(extra_b, np.int64), groups


def _cut_component(a_nodes: np.ndarray, b_nodes: np.ndarray, ia: np.ndarray, ib: np.ndarray,
                   frac: np.ndarray) -> list[Group]:
    """Split an m:n component along its strong edges if no particle is left without one.

    Parameters
    ----------
    a_nodes, b_nodes : (m,), (k,) int64, sorted
        Parent and child rows of the component.
    ia, ib, frac : (E,)
        Edges (covering at least the component's) and their shared-area fractions; an edge is
        strong at ``frac >= _STRONG_OVERLAP``.

    Returns
    -------
    list of Group
        The connected pieces of the strong edges, or the whole component when they leave a
        particle without an edge or do not cut it.
    """
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


def _bridges(det: Detections, kseq: np.ndarray, cum: np.ndarray, lost: np.ndarray,
             born: np.ndarray, memory: int, maxd: float) -> tuple[np.ndarray, np.ndarray]:
    """Memory: lost particles found again a few frames later.

    Parameters
    ----------
    det : Detections
    kseq : (N,) int64
        Layer of every row.
    cum : (n, 2) float
        Cumulative drift of every frame, px.
    lost, born : (L,), (B,) int64
        Rows without a child / without a parent.
    memory : int
        Most present frames a particle may be missing.
    maxd : float
        Gate around the drift-corrected last position, px.

    Returns
    -------
    a, b : (P,) int64
        One-to-one (lost row, born row) pairs with at most ``memory`` present frames missing
        between them and volumes within ``_MEMORY_VOLUME``; nearest first.
    """
    y, x, vol = det.y, det.x, det.vol
    cand = []
    n = cum.shape[0]
    for gap in range(2, memory + 2):
        src = lost[kseq[lost] + gap < n]
        if src.size == 0:
            continue
        d = cum[kseq[src] + gap] - cum[kseq[src]]
        i, j, dist = near_pairs(y[src] + d[:, 0], x[src] + d[:, 1], kseq[src] + gap, maxd,
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


def _trajectory_ids(N: int, cont_a: np.ndarray, cont_b: np.ndarray) -> np.ndarray:
    """(N,) int64 trajectory ids: chains of continuation links ``cont_a -> cont_b``, numbered
    from 1 in order of their first row (rows are sorted by (frame, label))."""
    if not N:
        return np.zeros(0, np.int64)
    gc = coo_matrix((np.ones(cont_a.size), (cont_a, cont_b)), shape=(N, N))
    _, chain = connected_components(gc, directed=False)
    _, first = np.unique(chain, return_index=True)
    rank = np.empty(first.size, np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(1, first.size + 1)
    return rank[chain]


# --------------------------------------------------------------------------------------------
# events
# --------------------------------------------------------------------------------------------


def _events(det: Detections, mv: _Moves, seq: np.ndarray, times: np.ndarray, ids: np.ndarray,
            lost: np.ndarray, born: np.ndarray, groups: list[Group]) -> pd.DataFrame:
    """The events table: a vanish / exit per ``lost`` row (at its drift-moved last position), an
    appear / enter per ``born`` row, a coalescence / split / complex per group."""
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
    border = det.border
    for a in lost.tolist():
        add("exit" if border[a] else "vanish", mv.kseq[a] + 1, [int(ids[a])], [], mv.xm[a],
            mv.ym[a], det.diam_nm[a], nan)
    for b in born.tolist():
        add("enter" if border[b] else "appear", mv.kseq[b], [], [int(ids[b])], det.x[b], det.y[b],
            det.diam_nm[b], nan)
    for ga, gb in groups:
        add(*_group_event(det, mv, ids, ga, gb))
    return events_table(cols, det.ps)


def _group_event(det: Detections, mv: _Moves, ids: np.ndarray, ga: np.ndarray, gb: np.ndarray
                 ) -> tuple[Any, ...]:
    """``(kind, layer, parents, children, x px, y px, eq_diameter nm, volume ratio)`` of a
    multi-particle group: its position is the volume-weighted centroid of the children, its
    diameter that of the single child, else of the single parent, else of the children's volume."""
    vol, x, y = det.vol, det.x, det.y
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
    return (kind, mv.kseq[gb[0]], sorted(int(v) for v in ids[ga]),
            sorted(int(v) for v in ids[gb]), ex, ey, diam,
            wsum / vpar if vpar > 0 else float("nan"))
