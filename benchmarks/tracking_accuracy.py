"""Tracking accuracy at scale: long simulated movies through a realistic detector, scored.

Movies: :func:`etemseg.synth.simulate` truth (drift, ripening to extinction, coalescence,
nucleation) and one of two mask sources (``--masks``):

* ``degraded``: the truth turned into the masks of a detector at its limit by
  ``tests/degrade.py`` (flicker of faint particles, boundary jitter, touching particles merged in
  pixels before they fuse; see its docstring);
* ``pseudo``: the movie rendered in the simulator's realistic imaging mode (diffraction contrast,
  Fresnel fringes, phase support, MTF, 40 counts/px) and segmented as the workflow's pseudolabel
  stage does -- every frame's centred temporal mean over ``window_ms`` (default 12.5 ms,
  :func:`etemseg.io.store.window_means`) labelled by the ``default`` preset at the pixel size
  (:func:`etemseg.stages.pseudolabel.pseudolabel_stack`): what the tracker sees at the
  workflow's start.
* ``cnn``: the same realistic movie segmented as the workflow's CNN does -- ``unet4-norm``
  trained with the demo's settings on the windowed pseudo-labels of 48 frames spread over the
  movie, then run on every windowed frame and thresholded as ``etemseg infer`` does
  (:func:`benchmarks.cnn_masks.cnn_stack`): the masks the tracker sees in production.

Masks are cached in ``benchmarks/out/cache`` (bit-packed, keyed by every parameter that changes
them).  They are measured by the pipeline's :func:`etemseg.analysis.measure.measure_stack`
(``min_area_px`` 20, the measure stage's default) and linked by the pipeline's
:func:`etemseg.tracking.link_movie` (mask overlap, label images recomputed from the masks as the
track stage does).

Scores (:func:`etemseg.analysis.scoring.score_tracks_against_truth`): coalescence and vanish
precision / recall (events matched in time within ``--tol-ms`` and 3 nm; only truth events of
particles the detector ever showed count: one never in the masks cannot be tracked), identity
switches per 100 truth trajectories, the LSW rate K and whether its 95 % interval covers the
truth's.  With ``--diagnose`` every identity switch, false and missed vanish and coalescence is
counted by its cause (:func:`diagnose`).  At the end a pooled table counts the events of every
movie (and, with ``--train-seeds 0,1,2``, of every training of the CNN: one training is one draw
of its masks) together, with 95 % Wilson intervals (``benchmarks/pooling.py``).  With
``--ctc``: the Cell Tracking Challenge metrics computed by ``traccuracy`` and the same
detections linked by ``laptrack`` (merging enabled) and ``trackpy``.

    python benchmarks/tracking_accuracy.py --frames 2000 --size 384 --seeds 1,2,3 \
        --masks degraded,pseudo --legacy --ctc --diagnose
    python benchmarks/tracking_accuracy.py --frames 400 --seeds 1 --legacy   # quick
    python benchmarks/tracking_accuracy.py --seeds 11,12 --set reid_ms=500   # a linker option
    python benchmarks/tracking_accuracy.py --masks cnn --seeds 1,2,3 --train-seeds 0,1,2 \
        --no-centroid --diagnose                  # 3 trainings of the CNN per movie, pooled
    python benchmarks/tracking_accuracy.py --masks cnn --seeds 11,12 --no-centroid \
        --set min_diameter_nm=0 --set trust_ms=0     # without the track-level trust

``legacy`` is the frame-pair linker alone (``gap_ms = persist_ms = confirm_ms = reid_ms = 0``,
memory 3 frames: the behaviour before the time windows); ``K_naive`` the per-frame mean of the
raw detections with an ordinary regression interval (the fit before tracked kinetics).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from etemseg.analysis.measure import measure_stack  # noqa: E402
from etemseg.analysis.scoring import score_tracks_against_truth  # noqa: E402
from etemseg.io.store import DEFAULT_WINDOW_MS, frames_in_window, window_means  # noqa: E402
from etemseg.nn.inference import InferConfig  # noqa: E402
from etemseg.nn.training import EDGE_REACH  # noqa: E402
from etemseg.stages.pseudolabel import PRESETS, pseudolabel_stack  # noqa: E402
from etemseg.synth import SynthParams, simulate, simulate_tracks  # noqa: E402
from benchmarks.accuracy import demo_train_settings  # noqa: E402
from benchmarks.cnn_masks import cnn_stack  # noqa: E402
from benchmarks.pooling import pooled, print_pooled  # noqa: E402
from etemseg.tracking import link_movie  # noqa: E402
from tests.degrade import Degrade, degraded_masks  # noqa: E402

#: The measure stage's default minimum component area (``config/config.yaml`` measure.min_area_px).
MEASURE_MIN_AREA_PX = 20


MASK_SOURCES = ("degraded", "pseudo", "cnn")
CACHE = Path(__file__).parent / "out" / "cache"


def degraded_stack(p: SynthParams, deg: Degrade) -> np.ndarray:
    """(T, H, W) bool masks: the simulator's truth through the detector model of
    ``tests/degrade.py``."""
    masks = np.zeros((p.frames, p.height, p.width), bool)
    for f, (m, _) in enumerate(degraded_masks(p, deg)):
        masks[f] = m
    return masks


def pseudo_stack(p: SynthParams, window_ms: float = DEFAULT_WINDOW_MS, block: int = 64
                 ) -> np.ndarray:
    """(T, H, W) bool masks as the workflow's pseudolabel stage makes them: the movie simulated
    in ``p``'s imaging mode, each frame's centred temporal mean over ``window_ms``
    (:func:`etemseg.io.store.window_means`, cut at the movie's ends) labelled by the ``default``
    preset resolved at the pixel size (fast path).  Streams: a block of frames plus the window's
    halo in memory."""
    w = frames_in_window(window_ms, p.fps)
    h = w // 2
    prm = PRESETS["default"].resolved(p.pixel_size_nm)
    masks = np.zeros((p.frames, p.height, p.width), bool)
    buf: list[np.ndarray] = []
    a = done = 0  # buf holds frames [a, a + len(buf)); masks [0, done) are made
    for f, (img, _) in enumerate(simulate(p)):
        buf.append(img)
        ready = p.frames if f == p.frames - 1 else f - h + 1
        if ready - done >= block or (f == p.frames - 1 and ready > done):
            means = window_means(np.stack(buf), a, done, ready, w)
            masks[done:ready] = pseudolabel_stack(means, prm) > 0
            done = ready
            keep = max(a, done - h)
            buf, a = buf[keep - a:], keep
    return masks


def cached_masks(source: str, p: SynthParams, deg: Degrade, window_ms: float,
                 train_seed: int = 0, threads: int = 2) -> np.ndarray:
    """The masks of ``source`` for ``p``, from ``benchmarks/out/cache`` when made before (bit
    packed ``.npy``; the key holds every parameter that changes them; ``train_seed`` and
    ``threads``: the CNN's training seed and torch threads)."""
    if source == "degraded":
        what = json.dumps(deg.__dict__, sort_keys=True)
    elif source == "cnn":
        what = json.dumps({"window_ms": window_ms, "preset": PRESETS["default"].to_dict(),
                           "arch": "unet4-norm", "train": demo_train_settings(),
                           "edge_reach": EDGE_REACH, "hysteresis": InferConfig().hysteresis,
                           "edges": "reflected",
                           **({"train_seed": train_seed} if train_seed else {}),
                           **({"threads": threads} if threads != 2 else {})},
                          sort_keys=True)
    else:
        what = json.dumps({"window_ms": window_ms, "preset": PRESETS["default"].to_dict()},
                          sort_keys=True)
    key = hashlib.sha1((json.dumps(p.to_dict(), sort_keys=True, default=str) + what)
                       .encode()).hexdigest()[:12]
    path = CACHE / f"{source}-s{p.seed}-f{p.frames}-{p.height}-{key}.npy"
    shape = (p.frames, p.height, p.width)
    if path.exists():
        return np.unpackbits(np.load(path), count=int(np.prod(shape))).reshape(shape).astype(bool)
    if source == "cnn":
        masks = cnn_stack(p, window_ms, train_seed=train_seed, threads=threads)
    else:
        masks = degraded_stack(p, deg) if source == "degraded" else pseudo_stack(p, window_ms)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, np.packbits(masks.ravel()))
    return masks


def make_movie(seed: int, frames: int, size: int, ripening: float, deg: Degrade,
               source: str = "degraded", window_ms: float = DEFAULT_WINDOW_MS,
               train_seed: int = 0, threads: int = 2) -> dict:
    """Simulate one movie, make its masks (``source``: ``degraded`` truth, or ``pseudo``-labels
    of the realistic imaging mode) and measure them; returns masks, detections, truth tables."""
    imaging = "mass-thickness" if source == "degraded" else "realistic"
    p = SynthParams(frames=frames, height=size, width=size, seed=seed, ripening_rate=ripening,
                    imaging=imaging)
    t0 = time.perf_counter()
    masks = cached_masks(source, p, Degrade(**{**deg.__dict__, "seed": seed}), window_ms,
                         train_seed, threads)
    times = np.arange(frames) / p.fps
    det = pd.concat([measure_stack(masks[s:s + 256], None, frame0=s, time_s=times[s:s + 256],
                                   pixel_size_nm=p.pixel_size_nm, movie="bench",
                                   min_area_px=MEASURE_MIN_AREA_PX, warn_uncalibrated=False)
                     for s in range(0, frames, 256)], ignore_index=True)
    tp, te = simulate_tracks(p)
    return {"params": p, "masks": masks, "det": det, "truth_particles": tp, "truth_events": te,
            "times": times, "sim_s": time.perf_counter() - t0, "source": source}


def labels_of(masks: np.ndarray):
    """``label_source`` of a bool mask movie (8-connected, raster order, as the track stage)."""
    def src(f: int) -> np.ndarray:
        return ndimage.label(masks[f], np.ones((3, 3), bool))[0]
    return src


def run_etemseg(case: dict, centroid: bool = False, **opts
                ) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """``link_movie`` on the case's detections (mask overlap, or centroids only); the time
    excludes making the label images (the track stage has them)."""
    p = case["params"]
    if "labels" not in case and not centroid:
        src = labels_of(case["masks"])
        case["labels"] = [src(f) for f in range(p.frames)]
    src = None if centroid else case["labels"].__getitem__
    t0 = time.perf_counter()
    traj, events, _ = link_movie(case["det"], src, pixel_size_nm=p.pixel_size_nm,
                                 frame_shape=case["masks"].shape[1:],
                                 all_frames=np.arange(p.frames), time_s=case["times"], **opts)
    return traj, events, time.perf_counter() - t0


def score(case: dict, traj: pd.DataFrame, events: pd.DataFrame, tol_ms: float) -> dict:
    s = score_tracks_against_truth(traj, events, case["truth_particles"], case["truth_events"],
                                   tol_s=tol_ms / 1000.0, frame_shape=case["masks"].shape[1:])
    tr, lsw = s["tracking"], s["lsw"]
    m, t = lsw["measured"], lsw["truth"]
    k_t = t["K_nm3_per_s"]
    trusted = _trusted_switches(case, traj, events, tol_ms)
    return {
        **trusted,
        "coal_P": tr["coalescence"]["precision"], "coal_R": tr["coalescence"]["recall"],
        "coal_n": f"{tr['coalescence']['measured']}/{tr['coalescence']['truth']}",
        **{f"{short}_{c}": tr[kind][c] for short, kind in (("coal", "coalescence"),
                                                           ("van", "vanish"))
           for c in ("matched", "measured", "truth")},
        "switches": tr["identity_switches"], "truth_trajectories": tr["truth_trajectories"],
        "van_P": tr["vanish"]["precision"], "van_R": tr["vanish"]["recall"],
        "van_n": f"{tr['vanish']['measured']}/{tr['vanish']['truth']}",
        "switches_per_100": 100 * tr["identity_switches"] / max(tr["truth_trajectories"], 1),
        "followed": tr["followed_fraction"],
        "K": m["K_nm3_per_s"], "K_lo": m["ci_low"], "K_hi": m["ci_high"], "K_truth": k_t,
        "K_err": m["K_nm3_per_s"] / k_t - 1 if k_t else float("nan"),
        "K_covered": bool(m["ci_low"] <= k_t <= m["ci_high"]),
        "K_naive": lsw["naive"]["K_nm3_per_s"],
        "K_naive_err": lsw["naive"]["K_nm3_per_s"] / k_t - 1 if k_t else float("nan"),
        "K_naive_covered": bool(lsw["naive"]["ci_low"] <= k_t <= lsw["naive"]["ci_high"]),
        "K_truth_in_frame": lsw["truth_in_frame"]["K_nm3_per_s"],
    }


def _trusted_switches(case: dict, traj: pd.DataFrame, events: pd.DataFrame, tol_ms: float
                      ) -> dict:
    """Identity switches per 100 truth trajectories and matched detections counting only the
    ``trusted`` trajectories (what a user who keeps those sees); empty without the column."""
    from etemseg.analysis.scoring import score_tracking

    if "trusted" not in traj:
        return {}
    tr = score_tracking(traj[traj["trusted"].astype(bool)], events, case["truth_particles"],
                        case["truth_events"], tol_s=tol_ms / 1000.0)
    return {"switches_per_100_trusted":
            100 * tr["identity_switches"] / max(tr["truth_trajectories"], 1),
            "matched_trusted": tr["matched_detections"] / max(tr["truth_detections"], 1)}


# --------------------------------------------------------------------------------------------
# Where the errors come from (--diagnose)


def _bucket_ms(dt_ms: float) -> str:
    """A signed time offset, ms, as a coarse bucket."""
    for lim in (25, 50, 100, 250):
        if abs(dt_ms) <= lim:
            return f"{'+' if dt_ms > 0 else '-'}<={lim}ms"
    return f"{'+' if dt_ms > 0 else '-'}>250ms"


class _Truth:
    """Lookups of the truth for the diagnosis: every particle's rows, fate and edge contact."""

    def __init__(self, case: dict):
        tp, te = case["truth_particles"], case["truth_events"]
        h, w = case["masks"].shape[1:]
        self.fps = case["params"].fps
        x, y, r = (tp[c].to_numpy(float) for c in ("x_px", "y_px", "radius_px"))
        cut = ~((x - r > 0.5) & (y - r > 0.5) & (x + r < w - 1.5) & (y + r < h - 1.5))
        inf = tp["in_frame"].to_numpy(bool)
        self.cut = {(f, q): c for f, q, c in zip(tp.frame.tolist(), tp.particle.tolist(),
                                                  (cut | ~inf).tolist())}
        self.alive = tp.groupby("particle")["frame"].agg(["min", "max"])
        inview = tp[inf].groupby("particle")["frame"].agg(["min", "max"])
        self.view = inview
        self.vanish = {int(e.parents[0]): int(e.frame)
                       for e in te[te.kind == "vanish"].itertuples()}
        self.merge = {}
        for e in te[te.kind == "coalescence"].itertuples():
            for q in e.parents:
                self.merge[int(q)] = (int(e.frame), [int(v) for v in e.parents], int(e.child))
        self.vol = dict(zip(zip(tp.frame.tolist(), tp.particle.tolist()),
                            tp.volume_nm3.tolist()))

    def is_cut(self, q: int, f0: int, f1: int) -> bool:
        return any(self.cut.get((f, q), True) for f in range(f0, f1 + 1))


class _Tracks:
    """Lookups of the measured result: truth matched to every track's rows, track ends."""

    def __init__(self, traj: pd.DataFrame, events: pd.DataFrame, matches: pd.DataFrame):
        self.m = matches.sort_values(["track", "frame"])
        self.by_track = {int(k): g for k, g in self.m.groupby("track")}
        self.span = traj.groupby("particle")["frame"].agg(["min", "max"])
        self.end, self.start = {}, {}
        for e in events.itertuples():
            for q in e.parents:
                self.end[int(q)] = (e.kind, int(e.frame))
            for q in e.children:
                self.start[int(q)] = (e.kind, int(e.frame))

    def truth_at(self, k: int, end: bool, n: int = 10) -> int | None:
        g = self.by_track.get(int(k))
        if g is None or not len(g):
            return None
        g = g.iloc[-n:] if end else g.iloc[:n]
        return int(g["truth"].mode().iloc[0])


def diagnose(case: dict, traj: pd.DataFrame, events: pd.DataFrame, tol_ms: float) -> dict:
    """Identity switches, false and missed vanishes and coalescences, counted by cause.

    The truth population and matching are :func:`score_tracking`'s (in view, observed events,
    events matched within ``tol_ms`` and 3 nm).  A track's truth particle is the one matched to
    most of its last (first) ten matched rows.  Causes, first that applies:

    * switch: ``edge`` (the particle is cut by the frame edge in the frames around it); a
      multi-particle event ending the old / starting the new track (``merge:<kind>``, with
      ``@fusion`` when the particle really fuses within 50 ms after); ``gap:<bucket>`` (the
      particle went unmatched that long between the two tracks); ``swap`` (the old track
      continues on something else, the new one existed before);
    * false vanish: the tracked particle's fate -- ``edge``, ``spurious`` (never matched),
      ``timing:<bucket>`` (its true vanish, that far off), ``merged:<bucket>`` (it really fused
      instead), ``lost:refound`` / ``lost:gone`` (alive, seen again under another id or not);
    * missed vanish: how its last track ended -- ``timing:<bucket>``, ``as:<kind>``,
      ``continued`` (the track went on with another particle), ``no-event``;
    * false coalescence: ``edge``, ``spurious-parent``, ``same-particle``, ``timing:<bucket>``
      (a true fusion of the parents that far off), ``vanish-beside`` (a parent really vanished),
      ``no-fusion`` (the parents stay apart in truth);
    * missed coalescence: ``edge``, ``timing:<bucket>`` (a measured one within 3 nm that far off),
      ``small-as-vanish`` / ``small-undetected`` / ``merged-body-continues`` with the smaller
      parent's volume fraction (``<3%``, ``<10%``, ``>=10%``).
    """
    from collections import Counter

    from etemseg.analysis.scoring import match_events, match_to_truth, observed_events

    tp, te = case["truth_particles"], case["truth_events"]
    fps = case["params"].fps
    tol = tol_ms / 1000.0
    tin = tp[tp["in_frame"].astype(bool)]
    tev = observed_events(te[te["in_frame"].astype(bool)],
                          match_to_truth(traj, tin))
    matches = match_to_truth(traj, tin).sort_values(["truth", "frame"])
    T, K = _Truth(case), _Tracks(traj, events, matches)
    out = {}

    # identity switches
    c = Counter()
    for q, g in matches.groupby("truth"):
        fr, tr = g["frame"].to_numpy(), g["track"].to_numpy()
        for i in np.flatnonzero(tr[1:] != tr[:-1]):
            f0, f1, a, b = int(fr[i]), int(fr[i + 1]), int(tr[i]), int(tr[i + 1])
            if T.is_cut(int(q), f0, f1):
                c["edge"] += 1
                continue
            ea = K.end.get(a) if K.span.loc[a, "max"] < f1 else None
            sb = K.start.get(b) if K.span.loc[b, "min"] > f0 else None
            kinds = {x[0] for x in (ea, sb) if x is not None} & {"coalescence", "split", "complex"}
            if kinds:
                fu = T.merge.get(int(q))
                tag = "@fusion" if fu and 0 <= fu[0] - f1 <= 0.05 * fps else ""
                c[f"merge:{'+'.join(sorted(kinds))}{tag}"] += 1
            elif f1 - f0 > 1:
                c[f"gap:{_bucket_ms(1000 * (f1 - f0) / fps)}"] += 1
            else:
                c["swap" if ea is None or sb is None else f"{ea[0]}->{sb[0]}"] += 1
    out["switches"] = dict(c.most_common())

    def split(kind):
        m = events[events["kind"] == kind].reset_index(drop=True)
        t = tev[tev["kind"] == kind].reset_index(drop=True)
        r = match_events(events, tev, kind=kind, tol_s=tol, return_pairs=True)
        mt = {j for _, j in r["pairs"]}
        tt = {i for i, _ in r["pairs"]}
        return (m[[j not in mt for j in range(len(m))]],
                t[[i not in tt for i in range(len(t))]])

    fv, mv = split("vanish")
    c = Counter()
    for e in fv.itertuples():
        a = int(e.parents[0])
        q = K.truth_at(a, end=True)
        fl = int(K.span.loc[a, "max"])
        if q is None:
            c["spurious"] += 1
        elif T.is_cut(q, max(fl - 2, 0), fl):
            c["edge"] += 1
        elif q in T.vanish:
            c[f"timing:{_bucket_ms(1000 * (e.time_s - T.vanish[q] / fps))}"] += 1
        elif q in T.merge and T.merge[q][0] >= fl:
            c[f"merged:{_bucket_ms(1000 * (e.time_s - T.merge[q][0] / fps))}"] += 1
        else:
            later = matches[(matches.truth == q) & (matches.frame > fl)]
            c["lost:refound" if len(later) else "lost:gone"] += 1
    out["false_vanish"] = dict(c.most_common())

    c = Counter()
    for e in mv.itertuples():
        q = int(e.parents[0])
        g = matches[matches.truth == q]
        if not len(g):
            c["never-matched"] += 1
            continue
        k, fl = int(g["track"].iloc[-1]), int(g["frame"].iloc[-1])
        end = K.end.get(k)
        if K.span.loc[k, "max"] > fl + 0.05 * fps:
            c["continued"] += 1
        elif end is None:
            c["no-event"] += 1
        elif end[0] == "vanish":
            ev = events[(events.kind == "vanish") & events.parents.apply(lambda p: k in p)]
            c[f"timing:{_bucket_ms(1000 * (float(ev.time_s.iloc[0]) - e.time_s))}"] += 1
        else:
            c[f"as:{end[0]}"] += 1
    out["missed_vanish"] = dict(c.most_common())

    fc, mc = split("coalescence")
    c = Counter()
    for e in fc.itertuples():
        qs = [K.truth_at(int(p), end=True) for p in e.parents]
        fe = int(e.frame)
        if any(q is not None and T.is_cut(q, max(fe - 3, 0), fe) for q in qs):
            c["edge"] += 1
        elif any(q is None for q in qs):
            c["spurious-parent"] += 1
        elif len(set(qs)) < len(qs):
            c["same-particle"] += 1
        elif any(q in T.merge for q in qs) and any(
                abs(T.merge[q][0] - fe) <= 0.25 * fps for q in qs if q in T.merge):
            dt = min((T.merge[q][0] - fe for q in qs if q in T.merge), key=abs)
            c[f"timing:{_bucket_ms(-1000 * dt / fps)}"] += 1
        elif any(q in T.vanish and abs(T.vanish[q] - fe) <= 0.25 * fps for q in qs):
            c["vanish-beside"] += 1
        else:
            c["no-fusion"] += 1
    out["false_coalescence"] = dict(c.most_common())

    c = Counter()
    mcoal = events[events.kind == "coalescence"]
    for e in mc.itertuples():
        f = int(e.frame)
        par = [int(q) for q in e.parents]
        if T.is_cut(int(e.child), f, min(f + 2, int(T.alive.loc[int(e.child), "max"]))) or any(
                T.is_cut(q, f - 1, f - 1) for q in par):
            c["edge"] += 1
            continue
        near = mcoal[np.hypot(mcoal.x_nm - e.x_nm, mcoal.y_nm - e.y_nm) <= 3.0]
        if len(near) and (np.abs(near.time_s - e.time_s) <= 0.25).any():
            dt = float((near.time_s - e.time_s).abs().min())
            sgn = float((near.time_s - e.time_s).iloc[int(np.argmin(
                (near.time_s - e.time_s).abs().to_numpy()))])
            c[f"timing:{_bucket_ms(1000 * (sgn if abs(sgn) == dt else dt))}"] += 1
            continue
        vols = sorted(T.vol.get((f - 1, q), 0.0) for q in par)
        frac = vols[0] / max(sum(vols), 1e-9)
        fb = "<3%" if frac < 0.03 else "<10%" if frac < 0.1 else ">=10%"
        small = min(par, key=lambda q: T.vol.get((f - 1, q), 0.0))
        g = matches[(matches.truth == small) & (matches.frame >= f - 0.05 * fps)]
        if not len(g):
            c[f"small-undetected{fb}"] += 1
            continue
        k = int(g["track"].iloc[-1])
        end = K.end.get(k)
        if end is not None and end[0] == "vanish":
            c[f"small-as-vanish{fb}"] += 1
        else:
            c[f"merged-body-continues{fb}"] += 1
    out["missed_coalescence"] = dict(c.most_common())
    return out


# --------------------------------------------------------------------------------------------
# Cell Tracking Challenge metrics (traccuracy) and the other linkers


def gt_graph(case: dict):
    """The truth as a traccuracy graph, *time reversed*: a coalescence (parents at ``f - 1``,
    child at ``f``) becomes a division of the child into its parents, which is how traccuracy's
    division metrics score merges.  Nodes: truth particles inside the field of view."""
    import networkx as nx

    tp = case["truth_particles"]
    tp = tp[tp["in_frame"].astype(bool)]
    last = int(case["params"].frames) - 1
    g = nx.DiGraph()
    key = {}
    for i, (f, q, y, x) in enumerate(zip(tp.frame.tolist(), tp.particle.tolist(),
                                         tp.y_px.tolist(), tp.x_px.tolist())):
        g.add_node(i, t=last - f, y=y, x=x)
        key[(f, q)] = i
    for (f, q), i in key.items():
        if (f - 1, q) in key:
            g.add_edge(i, key[(f - 1, q)])
    te = case["truth_events"]
    for ev in te[te.kind == "coalescence"].itertuples():
        c = key.get((int(ev.frame), int(ev.child)))
        for q in ev.parents:
            j = key.get((int(ev.frame) - 1, int(q)))
            if c is not None and j is not None:
                g.add_edge(c, j)
    return g


def pred_graph(frame: np.ndarray, y: np.ndarray, x: np.ndarray, track: np.ndarray,
               merges: list[tuple[int, int]], last: int):
    """A linker's result as a time-reversed traccuracy graph: rows of one track joined in frame
    order (gap edges skip frames), a merge ``(parent track, child track)`` an edge from the
    child's first row to the parent's last row.  Splits are not drawn (in reversed time they
    would be merges, which the Cell Tracking Challenge graphs cannot hold)."""
    import networkx as nx

    g = nx.DiGraph()
    for i in range(frame.size):
        g.add_node(i, t=last - int(frame[i]), y=float(y[i]), x=float(x[i]))
    order = np.lexsort((frame, track))
    same = track[order][1:] == track[order][:-1]
    g.add_edges_from(zip(order[1:][same].tolist(), order[:-1][same].tolist()))
    first = {int(t): int(order[k]) for k, t in reversed(list(enumerate(track[order])))}
    lastrow = {int(t): int(order[k]) for k, t in enumerate(track[order])}
    for par, ch in merges:
        if par in lastrow and ch in first and frame[first[ch]] > frame[lastrow[par]]:
            g.add_edge(first[ch], lastrow[par])
    return g


def ctc_scores(case: dict, g_pred, threshold_px: float = 5.0, buffer: int = 10) -> dict:
    """TRA, DET, LNK (Cell Tracking Challenge, traccuracy ``CTCMetrics``) and merge precision /
    recall (``DivisionMetrics`` of the time-reversed graphs, frame buffer ``buffer``), nodes
    matched by ``PointMatcher`` within ``threshold_px`` of the truth centre."""
    import warnings

    from traccuracy import TrackingGraph, run_metrics
    from traccuracy.matchers import PointMatcher
    from traccuracy.metrics import CTCMetrics, DivisionMetrics

    gt = TrackingGraph(gt_graph(case), location_keys=("y", "x"))
    pr = TrackingGraph(g_pred, location_keys=("y", "x"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            res, _ = run_metrics(gt, pr, PointMatcher(threshold=threshold_px),
                                 [CTCMetrics(), DivisionMetrics(max_frame_buffer=buffer)],
                                 relax_skips_pred=True)
        except Exception as exc:  # traccuracy 0.4.3 fails on some skip edges (NodeNotFound)
            nan = float("nan")
            return {"TRA": nan, "DET": nan, "LNK": nan, "merge_P_ctc": nan, "merge_R_ctc": nan,
                    "ctc_error": f"{type(exc).__name__}: {exc}"}
    ctc = res[0]["results"]
    div = res[1]["results"][f"Frame Buffer {buffer}"]
    return {"TRA": ctc["TRA"], "DET": ctc["DET"], "LNK": ctc["LNK"],
            "merge_P_ctc": div["Division Precision"], "merge_R_ctc": div["Division Recall"]}


def etemseg_graph(case: dict, traj: pd.DataFrame, events: pd.DataFrame):
    merges = [(int(q), int(e.child)) for e in events[events.kind == "coalescence"].itertuples()
              for q in e.parents]
    return pred_graph(traj.frame.to_numpy(), traj.y_px.to_numpy(), traj.x_px.to_numpy(),
                      traj.particle.to_numpy(), merges, case["params"].frames - 1)


def run_laptrack(case: dict, max_disp_px: float, gap_frames: int):
    """laptrack (LAP linking with gap closing and merging) on the same centroids (px)."""
    from laptrack import LapTrack

    det = case["det"]
    df = pd.DataFrame({"frame": det.frame.to_numpy(), "y": det.y_px.to_numpy(),
                       "x": det.x_px.to_numpy()})
    lt = LapTrack(cutoff=max_disp_px ** 2, gap_closing_cutoff=(3 * max_disp_px) ** 2,
                  gap_closing_max_frame_count=gap_frames, splitting_cutoff=False,
                  merging_cutoff=(4 * max_disp_px) ** 2)
    t0 = time.perf_counter()
    track_df, _, merge_df = lt.predict_dataframe(df, ["y", "x"], only_coordinate_cols=False)
    sec = time.perf_counter() - t0
    track_df = track_df.sort_index()
    merges = ([] if "parent_track_id" not in merge_df  # no merge: laptrack gives no columns
              else [(int(a), int(b))
                    for a, b in zip(merge_df.parent_track_id, merge_df.child_track_id)])
    return pred_graph(df.frame.to_numpy(), df.y.to_numpy(), df.x.to_numpy(),
                      track_df.track_id.to_numpy(), merges, case["params"].frames - 1), sec


def run_trackpy(case: dict, max_disp_px: float, gap_frames: int):
    """trackpy.link (no merges by design) on the same centroids (px), memory = the gap."""
    import trackpy

    trackpy.quiet()
    det = case["det"]
    df = pd.DataFrame({"frame": det.frame.to_numpy(), "y": det.y_px.to_numpy(),
                       "x": det.x_px.to_numpy()})
    t0 = time.perf_counter()
    out = trackpy.link(df, search_range=max_disp_px, memory=gap_frames).sort_index()
    sec = time.perf_counter() - t0
    return pred_graph(df.frame.to_numpy(), df.y.to_numpy(), df.x.to_numpy(),
                      out.particle.to_numpy(), [], case["params"].frames - 1), sec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--masks", default="degraded",
                    help="comma list of mask sources: degraded (truth through tests/degrade.py), "
                    "pseudo (realistic imaging, the pseudolabel stage's masks), "
                    "cnn (realistic imaging, unet4-norm trained on the movie's own pseudo-labels: "
                    "benchmarks/cnn_masks.py)")
    ap.add_argument("--window-ms", type=float, default=DEFAULT_WINDOW_MS,
                    help="pseudo masks: temporal window of the pseudolabel stage, ms")
    ap.add_argument("--ripening", type=float, default=20.0, help="synth ripening_rate, nm^3/s")
    ap.add_argument("--train-seeds", "--train-seed", default="0",
                    help="cnn masks: comma list of the CNN's training seeds; every movie is "
                         "segmented by one training per seed (one training is one draw of its "
                         "masks: the pooled table counts the events of all of them)")
    ap.add_argument("--train-threads", default="2",
                    help="cnn masks: comma list of torch thread counts to train and infer on "
                         "(2: the workflow's train.threads); another count is another training")
    ap.add_argument("--tol-ms", type=float, default=25.0)
    ap.add_argument("--legacy", action="store_true", help="also run memory=3 frames, no windows")
    ap.add_argument("--no-centroid", action="store_true", help="skip centroid-only linking")
    ap.add_argument("--diagnose", action="store_true",
                    help="classify identity switches and missed / false events by cause")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="linker parameter for the etemseg runs (e.g. gap_ms=50), repeatable")
    ap.add_argument("--flicker-ms", type=float, default=Degrade.flicker_ms,
                    help="detector model: correlation time of the visibility, ms")
    ap.add_argument("--det-radius-nm", type=float, default=Degrade.det_radius_nm,
                    help="detector model: detection-limit radius, nm")
    ap.add_argument("--ctc", action="store_true",
                    help="traccuracy CTC metrics; laptrack and trackpy on the same detections")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "tracking_accuracy.json"))
    a = ap.parse_args()
    sets = {k: float(v) for k, v in (kv.split("=", 1) for kv in a.set)}
    rows = []
    for source in a.masks.split(","):
        if source not in MASK_SOURCES:
            ap.error(f"--masks: {source!r} is not one of {', '.join(MASK_SOURCES)}")
        trainings = ([(int(t), int(n)) for t in a.train_seeds.split(",")
                      for n in a.train_threads.split(",")] if source == "cnn" else [(0, 2)])
        for seed, (train_seed, threads) in [(int(s), t) for s in a.seeds.split(",")
                                            for t in trainings]:
            case = make_movie(seed, a.frames, a.size, a.ripening,
                              Degrade(flicker_ms=a.flicker_ms, det_radius_nm=a.det_radius_nm),
                              source, a.window_ms, train_seed, threads)
            runs = {"etemseg": dict(sets)}
            if not a.no_centroid:
                runs["etemseg-centroid"] = {"centroid": True, **sets}
            if a.legacy:
                runs["legacy"] = {"gap_ms": 0.0, "persist_ms": 0.0, "confirm_ms": 0.0,
                                  "reid_ms": 0.0}
            for name, opts in runs.items():
                traj, events, sec = run_etemseg(case, **opts)
                row = {"masks": source, "seed": seed, "train_seed": train_seed,
                       "train_threads": threads,
                       "linker": name, "seconds": sec,
                       "detections": len(case["det"]), **score(case, traj, events, a.tol_ms)}
                loose = score(case, traj, events, 2 * a.tol_ms)
                row.update({f"{k}_2tol": loose[k] for k in ("coal_P", "coal_R", "van_P", "van_R")})
                if a.ctc:
                    row.update(ctc_scores(case, etemseg_graph(case, traj, events)))
                if a.diagnose and name != "legacy":
                    row["causes"] = diagnose(case, traj, events, a.tol_ms)
                rows.append(row)
                print(json.dumps(row, default=float), flush=True)
            if a.ctc:
                maxd = 1.0 / case["params"].pixel_size_nm  # max_disp_nm 1.0, as etemseg
                gap = int(round(50e-3 * case["params"].fps))  # gap_ms 50, as etemseg
                for name, fn in (("laptrack", run_laptrack), ("trackpy", run_trackpy)):
                    g, sec = fn(case, maxd, gap)
                    row = {"masks": source, "seed": seed, "train_seed": train_seed,
                       "train_threads": threads,
                           "linker": name, "seconds": sec,
                           "detections": len(case["det"]), **ctc_scores(case, g)}
                    rows.append(row)
                    print(json.dumps(row, default=float), flush=True)
            del case
    summary = pooled(rows)
    print_pooled(summary)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(a), "results": rows, "pooled": summary}, indent=1,
                              default=float))


if __name__ == "__main__":
    main()
