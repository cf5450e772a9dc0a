"""Tracking accuracy at scale: long simulated movies through a realistic detector, scored.

Movies: :func:`etemseg.synth.simulate` truth (drift, ripening to extinction, coalescence,
nucleation), turned into the masks of a detector at its limit by ``tests/degrade.py`` (flicker
of faint particles, boundary jitter, touching particles merged in pixels before they fuse; see its
docstring), measured by the pipeline's :func:`etemseg.analysis.measure.measure_stack` and linked
by the pipeline's :func:`etemseg.tracking.link_movie` (mask overlap, label images recomputed from
the masks as the track stage does).

Scores (:func:`etemseg.analysis.scoring.score_tracks_against_truth`): coalescence and vanish
precision / recall (events matched in time within ``--tol-ms`` and 3 nm; only truth events of
particles the detector ever showed count: one never in the masks cannot be tracked), identity
switches per 100 truth trajectories, the LSW rate K and whether its 95 % interval covers the
truth's.  With ``--ctc``: the Cell Tracking Challenge metrics computed by ``traccuracy`` and the
same detections linked by ``laptrack`` (merging enabled) and ``trackpy``.

    python benchmarks/tracking_accuracy.py --frames 2000 --size 384 --seeds 1,2,3 --legacy --ctc
    python benchmarks/tracking_accuracy.py --frames 400 --seeds 1 --legacy   # quick

``legacy`` is the frame-pair linker alone (``gap_ms = persist_ms = confirm_ms = 0``, memory 3
frames: the behaviour before the time windows); ``K_naive`` the per-frame mean of the raw
detections with an ordinary regression interval (the fit before tracked kinetics).
"""

from __future__ import annotations

import argparse
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
from etemseg.synth import SynthParams, simulate_tracks  # noqa: E402
from etemseg.tracking import link_movie  # noqa: E402
from tests.degrade import Degrade, degraded_masks  # noqa: E402


def make_movie(seed: int, frames: int, size: int, ripening: float, deg: Degrade) -> dict:
    """Simulate, degrade and measure one movie; returns masks, detections, truth tables."""
    p = SynthParams(frames=frames, height=size, width=size, seed=seed, ripening_rate=ripening)
    t0 = time.perf_counter()
    masks = np.zeros((frames, size, size), bool)
    for f, (m, _) in enumerate(degraded_masks(p, Degrade(**{**deg.__dict__, "seed": seed}))):
        masks[f] = m
    times = np.arange(frames) / p.fps
    det = pd.concat([measure_stack(masks[s:s + 256], None, frame0=s, time_s=times[s:s + 256],
                                   pixel_size_nm=p.pixel_size_nm, movie="bench",
                                   warn_uncalibrated=False)
                     for s in range(0, frames, 256)], ignore_index=True)
    tp, te = simulate_tracks(p)
    return {"params": p, "masks": masks, "det": det, "truth_particles": tp, "truth_events": te,
            "times": times, "sim_s": time.perf_counter() - t0}


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
    return {
        "coal_P": tr["coalescence"]["precision"], "coal_R": tr["coalescence"]["recall"],
        "coal_n": f"{tr['coalescence']['measured']}/{tr['coalescence']['truth']}",
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
        res, _ = run_metrics(gt, pr, PointMatcher(threshold=threshold_px),
                             [CTCMetrics(), DivisionMetrics(max_frame_buffer=buffer)],
                             relax_skips_pred=True)
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
    merges = [(int(a), int(b)) for a, b in zip(merge_df.parent_track_id, merge_df.child_track_id)]
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
    ap.add_argument("--ripening", type=float, default=20.0, help="synth ripening_rate, nm^3/s")
    ap.add_argument("--tol-ms", type=float, default=25.0)
    ap.add_argument("--legacy", action="store_true", help="also run memory=3 frames, no windows")
    ap.add_argument("--flicker-ms", type=float, default=Degrade.flicker_ms,
                    help="detector model: correlation time of the visibility, ms")
    ap.add_argument("--det-radius-nm", type=float, default=Degrade.det_radius_nm,
                    help="detector model: detection-limit radius, nm")
    ap.add_argument("--ctc", action="store_true",
                    help="traccuracy CTC metrics; laptrack and trackpy on the same detections")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "tracking_accuracy.json"))
    a = ap.parse_args()
    rows = []
    for seed in [int(s) for s in a.seeds.split(",")]:
        case = make_movie(seed, a.frames, a.size, a.ripening,
                          Degrade(flicker_ms=a.flicker_ms, det_radius_nm=a.det_radius_nm))
        runs = {"etemseg": {}, "etemseg-centroid": {"centroid": True}}
        if a.legacy:
            runs["legacy"] = {"gap_ms": 0.0, "persist_ms": 0.0, "confirm_ms": 0.0}
        for name, opts in runs.items():
            traj, events, sec = run_etemseg(case, **opts)
            row = {"seed": seed, "linker": name, "seconds": sec, "detections": len(case["det"]),
                   **score(case, traj, events, a.tol_ms)}
            loose = score(case, traj, events, 2 * a.tol_ms)
            row.update({f"{k}_2tol": loose[k] for k in ("coal_P", "coal_R", "van_P", "van_R")})
            if a.ctc:
                row.update(ctc_scores(case, etemseg_graph(case, traj, events)))
            rows.append(row)
            print(json.dumps(row, default=float), flush=True)
        if a.ctc:
            maxd = 1.0 / case["params"].pixel_size_nm  # max_disp_nm 1.0, as etemseg
            gap = int(round(50e-3 * case["params"].fps))  # gap_ms 50, as etemseg
            for name, fn in (("laptrack", run_laptrack), ("trackpy", run_trackpy)):
                g, sec = fn(case, maxd, gap)
                row = {"seed": seed, "linker": name, "seconds": sec,
                       "detections": len(case["det"]), **ctc_scores(case, g)}
                rows.append(row)
                print(json.dumps(row, default=float), flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(a), "results": rows}, indent=1, default=float))


if __name__ == "__main__":
    main()
