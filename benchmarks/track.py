"""Tracking benchmark: etemseg.tracking.link_movie (centroid-only and mask-overlap) vs trackpy.

The same detections -- measured (bincount centroids / areas) from the simulator's TRUTH label
images, relabelled to 1..n in raster order per frame as a labelling would -- are linked by

* ``link_movie(det, None, ...)``              centroid-only (equivalent discs stand in for masks)
* ``link_movie(det, label_source, ...)``      mask overlap between consecutive frames
* ``link_movie(det, label_source, overlaps=)`` the same from the zero-shift overlaps the measure
  stage records (``etemseg measure --overlaps``); label images only for pairs that drifted by a
  whole pixel
* ``trackpy.link(df, search_range, memory=0)`` on the same centroids (px)

and timed (best of ``--repeat``), then scored against the truth: coalescences found (trackpy has no
merge events by design: 0), broken tracks (a truth particle seen in consecutive frames under two
ids), false continuations (two different truth particles in consecutive frames under one id, e.g.
a parent continued into a merged child), and the error of the estimated drift.  If trackpy is not
installed, a plain scipy KD-tree nearest-neighbour linker is the baseline instead.  Prints a table
and writes JSON (default benchmarks/out/track.json).

    python benchmarks/track.py                         # 200 frames, 512^2 and 1024^2
    python benchmarks/track.py --frames 48 --sizes 256 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: The clock of the linker timings (``--clock``): CPU time of this process by default -- every
#: linker here runs on one thread, so it equals the wall time of an idle machine and does not
#: grow with other load on a shared one.
CLOCK = time.process_time

from etemseg.analysis.scoring import raster_relabel
from etemseg.synth import SynthParams, simulate, simulate_drift, simulate_tracks
from etemseg.tracking import link_movie, overlap_table

# --------------------------------------------------------------------------------------------
# data


def measure(lab: np.ndarray, frame: int, ps: float, fps: float) -> pd.DataFrame:
    w = lab.shape[1]
    n = int(lab.max())
    flat = lab.ravel().astype(np.int64)
    yy, xx = np.divmod(np.arange(flat.size), w)
    area = np.bincount(flat, minlength=n + 1)[1:].astype(float)
    x = np.bincount(flat, weights=xx, minlength=n + 1)[1:] / area
    y = np.bincount(flat, weights=yy, minlength=n + 1)[1:] / area
    edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    return pd.DataFrame({
        "frame": np.full(n, frame, np.int64), "time_s": frame / fps,
        "label": np.arange(1, n + 1, dtype=np.int64), "x_nm": x * ps, "y_nm": y * ps,
        "x_px": x, "y_px": y, "area_nm2": area * ps * ps, "area_px": area,
        "eq_diameter_nm": 2 * np.sqrt(area / np.pi) * ps,
        "touches_border": np.isin(np.arange(1, n + 1), edge)})


def make_case(size: int, frames: int, coverage: float, seed: int) -> dict:
    p = SynthParams(frames=frames, height=size, width=size, coverage=coverage, seed=seed)
    labs, maps, parts = [], [], []
    t0 = time.perf_counter()
    for f, (_, truth) in enumerate(simulate(p)):
        lab, ids = raster_relabel(truth)
        labs.append(lab)
        maps.append(ids)
        parts.append(measure(lab, f, p.pixel_size_nm, p.fps))
    det = pd.concat(parts, ignore_index=True)
    det["truth"] = np.concatenate([m[d.label.to_numpy() - 1] for m, d in zip(maps, parts)])
    _, events = simulate_tracks(p)
    return {"params": p, "labs": labs, "det": det, "truth_events": events,
            "truth_drift": simulate_drift(p), "sim_s": time.perf_counter() - t0}


# --------------------------------------------------------------------------------------------
# linkers


def kdtree_link(df: pd.DataFrame, search_range: float) -> np.ndarray:
    """Baseline: mutual nearest neighbour between consecutive frames within search_range."""
    ids = np.zeros(len(df), np.int64)
    nxt = 1
    frames = df.frame.to_numpy()
    starts = np.flatnonzero(np.r_[True, frames[1:] != frames[:-1]])
    stops = np.r_[starts[1:], len(df)]
    pos = df[["y", "x"]].to_numpy()
    prev = None
    for s, e in zip(starts, stops):
        cur = pos[s:e]
        out = np.zeros(e - s, np.int64)
        if prev is not None and len(prev[0]):
            tp = cKDTree(prev[0])
            tc = cKDTree(cur)
            _, j = tp.query(cur, distance_upper_bound=search_range)
            _, i = tc.query(prev[0], distance_upper_bound=search_range)
            ok = j < len(prev[0])
            mutual = np.zeros(e - s, bool)
            mutual[ok] = i[j[ok]] == np.flatnonzero(ok)
            out[mutual] = prev[1][j[mutual]]
        new = out == 0
        out[new] = np.arange(nxt, nxt + new.sum())
        nxt += int(new.sum())
        ids[s:e] = out
        prev = (cur, out)
    return ids


def run_trackpy(det: pd.DataFrame, search_range: float):
    import trackpy

    trackpy.quiet()
    df = pd.DataFrame({"frame": det.frame.to_numpy(), "x": det.x_px.to_numpy(),
                       "y": det.y_px.to_numpy()})
    t0 = CLOCK()
    out = trackpy.link(df, search_range=search_range, memory=0)
    dt = CLOCK() - t0
    return out.sort_index().particle.to_numpy().astype(np.int64), dt


# --------------------------------------------------------------------------------------------
# scoring


def score_ids(det: pd.DataFrame, ids: np.ndarray) -> dict:
    """Broken tracks and false continuations between consecutive frames, against truth ids."""
    d = pd.DataFrame({"frame": det.frame.to_numpy(), "truth": det.truth.to_numpy(), "id": ids})
    prev = d.assign(frame=d.frame + 1)
    same_truth = d.merge(prev, on=["frame", "truth"], suffixes=("", "_prev"))
    broken = int((same_truth.id != same_truth.id_prev).sum())
    same_id = d.merge(prev, on=["frame", "id"], suffixes=("", "_prev"))
    false_cont = int((same_id.truth != same_id.truth_prev).sum())
    return {"checked_links": len(same_truth), "broken_tracks": broken,
            "false_continuations": false_cont}


def truth_coalescences(case: dict, interior_only: bool) -> list[tuple[int, list[int], int]]:
    det = case["det"]
    seen = set(zip(det.frame.tolist(), det.truth.tolist()))
    edge = det[det.touches_border]
    border = set(zip(edge.frame.tolist(), edge.truth.tolist()))
    out = []
    for ev in case["truth_events"][case["truth_events"].kind == "coalescence"].itertuples():
        f = int(ev.frame)
        par = [int(q) for q in ev.parents if (f - 1, int(q)) in seen]
        if len(par) < 2 or (f, int(ev.child)) not in seen:
            continue
        touched = {(f - 1, q) for q in par} | {(f, int(ev.child))}
        if interior_only and touched & border:
            continue
        out.append((f, par, int(ev.child)))
    return out


def score_events(case: dict, traj: pd.DataFrame, events: pd.DataFrame) -> dict:
    det = case["det"]
    key = det.set_index(["frame", "label"]).truth
    tmap = dict(zip(zip(traj.frame.tolist(), traj.particle.tolist()),
                    key.loc[list(zip(traj.frame, traj.label))].tolist()))
    oc = events[events.kind == "coalescence"]
    lastf = traj.groupby("particle").frame.max()  # a parent's last row (a swallowed particle
    ours = set()                                   # may have been missing just before)
    for e in oc.itertuples():
        f = int(e.frame)
        ours.add((f, tuple(sorted(tmap[(int(lastf[int(q)]), int(q))] for q in e.parents)),
                  tmap[(f, int(e.child))]))
    res = {}
    for name, interior in (("interior", True), ("all", False)):
        truth = truth_coalescences(case, interior)
        found = sum((f, tuple(sorted(par)), ch) in ours for f, par, ch in truth)
        res[f"truth_coalescences_{name}"] = len(truth)
        res[f"found_{name}"] = int(found)
    # vanish / appear away from the border
    seen = set(zip(det.frame.tolist(), det.truth.tolist()))
    border = set(zip(det.frame[det.touches_border].tolist(),
                     det.truth[det.touches_border].tolist()))
    te = case["truth_events"]
    # a vanish's frame is its estimated extinction; compare where the particle was last seen
    ours_v = {(int(lastf[int(e.parents[0])]) + 1,
               tmap[(int(lastf[int(e.parents[0])]), int(e.parents[0]))])
              for e in events[events.kind == "vanish"].itertuples()}
    ours_a = {(int(e.frame), tmap[(int(e.frame), int(e.child))])
              for e in events[events.kind == "appear"].itertuples()}
    tv = [(int(e.frame), int(e.parents[0])) for e in te[te.kind == "vanish"].itertuples()
          if (int(e.frame) - 1, int(e.parents[0])) in seen
          and (int(e.frame) - 1, int(e.parents[0])) not in border]
    ta = [(int(e.frame), int(e.child)) for e in te[te.kind == "appear"].itertuples()
          if (int(e.frame), int(e.child)) in seen and (int(e.frame), int(e.child)) not in border]
    res["truth_vanish_interior"] = len(tv)
    res["found_vanish"] = int(sum(v in ours_v for v in tv))
    res["truth_appear_interior"] = len(ta)
    res["found_appear"] = int(sum(a in ours_a for a in ta))
    res["false_vanish"] = len(ours_v - set(tv))
    res["false_appear"] = len(ours_a - set(ta))
    truth_all = {(f, tuple(sorted(par)), ch) for f, par, ch in truth_coalescences(case, False)}
    res["coalescence_events"] = len(oc)
    res["false_coalescences"] = int(sum(e not in truth_all for e in ours))
    res["event_counts"] = {k: int(v) for k, v in events.kind.value_counts().items()}
    return res


# --------------------------------------------------------------------------------------------


def bench_case(case: dict, repeat: int, search_range_px: float) -> list[dict]:
    p = case["params"]
    det = case["det"].drop(columns="truth")
    labs = case["labs"]
    nframes = p.frames
    ndet = len(det)
    rows = []
    results = {}
    # what `etemseg measure --overlaps` records: the pixels shared at the same place
    recorded = overlap_table(lambda f: labs[f], range(nframes))
    for mode in ("centroid", "overlap", "recorded overlaps"):
        src = (lambda f: labs[f]) if mode != "centroid" else None
        ov = recorded if mode == "recorded overlaps" else None
        best = np.inf
        for rep in range(repeat + 1):  # the first run warms up (numba cache load), untimed
            t0 = CLOCK()
            traj, events, frames = link_movie(det, src, frame_shape=labs[0].shape,
                                              all_frames=np.arange(nframes), memory=0,
                                              overlaps=ov)
            if rep > 0 or repeat == 0:
                best = min(best, CLOCK() - t0)
        results[mode] = (traj, events, frames, best)

    # baseline
    try:
        best = np.inf
        for rep in range(repeat + 1):  # the first run warms up (numba JIT), untimed
            tp_ids, dt = run_trackpy(det, search_range_px)
            if rep > 0 or repeat == 0:
                best = min(best, dt)
        base_name = "trackpy.link"
    except ImportError:
        best = np.inf
        df = pd.DataFrame({"frame": det.frame, "x": det.x_px, "y": det.y_px})
        for _ in range(max(repeat, 1)):
            t0 = CLOCK()
            tp_ids = kdtree_link(df, search_range_px)
            best = min(best, CLOCK() - t0)
        base_name = "kdtree-nn (trackpy missing)"
    base_s = best

    truth_drift = case["truth_drift"]
    for mode, (traj, events, frames, sec) in results.items():
        ids = traj.sort_values(["frame", "label"]).particle.to_numpy()
        row = {"linker": f"etemseg link_movie ({mode})", "seconds": sec,
               "frames_per_s": nframes / sec, "detections_per_s": ndet / sec,
               "speedup_vs_baseline": base_s / sec}
        row.update(score_ids(case["det"], ids))
        row.update(score_events(case, traj, events))
        ex = np.abs(frames.drift_x_nm.to_numpy() / p.pixel_size_nm - truth_drift.dx_px.to_numpy())
        ey = np.abs(frames.drift_y_nm.to_numpy() / p.pixel_size_nm - truth_drift.dy_px.to_numpy())
        row["drift_max_err_px"] = float(max(ex.max(), ey.max()))
        row["drift_final_err_px"] = float(max(ex[-1], ey[-1]))
        rows.append(row)
    row = {"linker": base_name, "seconds": base_s, "frames_per_s": nframes / base_s,
           "detections_per_s": ndet / base_s, "speedup_vs_baseline": 1.0}
    row.update(score_ids(case["det"], tp_ids))
    tc_int = len(truth_coalescences(case, True))
    tc_all = len(truth_coalescences(case, False))
    row.update({"truth_coalescences_interior": tc_int, "found_interior": 0,
                "truth_coalescences_all": tc_all, "found_all": 0, "coalescence_events": 0,
                "false_coalescences": 0, "event_counts": {},
                "truth_vanish_interior": None, "found_vanish": 0, "truth_appear_interior": None,
                "found_appear": 0, "false_vanish": None, "false_appear": None,
                "drift_max_err_px": None, "drift_final_err_px": None})
    rows.append(row)
    for r in rows:
        r.update({"size": f"{p.height}x{p.width}", "frames": nframes, "detections": ndet,
                  "coverage": p.coverage, "search_range_px": search_range_px})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--sizes", default="512,1024")
    ap.add_argument("--coverage", default="0.15,0.3", help="one per size")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs (best kept) after a warm-up")
    ap.add_argument("--max-disp-nm", type=float, default=1.0,
                    help="trackpy search range (converted to px) = link_movie max_disp_nm")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="time the linkers by process CPU time (default; robust on a shared "
                         "machine) or wall time")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "track.json"))
    a = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if a.clock == "cpu" else time.perf_counter
    sizes = [int(v) for v in a.sizes.split(",")]
    covs = [float(v) for v in a.coverage.split(",")]
    if len(covs) == 1:
        covs = covs * len(sizes)
    all_rows = []
    sims = []
    for size, cov in zip(sizes, covs):
        case = make_case(size, a.frames, cov, a.seed)
        sims.append({"size": size, "coverage": cov, "simulate_and_measure_s": case["sim_s"]})
        sr = a.max_disp_nm / case["params"].pixel_size_nm
        all_rows.extend(bench_case(case, a.repeat, sr))

    cols = ["size", "detections", "linker", "seconds", "frames_per_s", "detections_per_s",
            "speedup_vs_baseline", "found_interior", "truth_coalescences_interior",
            "found_all", "truth_coalescences_all", "false_coalescences", "broken_tracks",
            "false_continuations", "drift_max_err_px"]
    hdr = ["size", "dets", "linker", "s", "frames/s", "dets/s", "speed-up", "coal int",
           "coal all", "false coal", "vanish", "appear", "broken", "false cont", "drift err px"]
    lines = [" | ".join(hdr), " | ".join("---" for _ in hdr)]
    for r in all_rows:
        lines.append(" | ".join([
            r["size"], str(r["detections"]), r["linker"], f"{r['seconds']:.3f}",
            f"{r['frames_per_s']:.0f}", f"{r['detections_per_s']:.0f}",
            f"{r['speedup_vs_baseline']:.1f}x",
            f"{r['found_interior']}/{r['truth_coalescences_interior']}",
            f"{r['found_all']}/{r['truth_coalescences_all']}",
            str(r["false_coalescences"]),
            "-" if r["truth_vanish_interior"] is None else
            f"{r['found_vanish']}/{r['truth_vanish_interior']} (+{r['false_vanish']})",
            "-" if r["truth_appear_interior"] is None else
            f"{r['found_appear']}/{r['truth_appear_interior']} (+{r['false_appear']})",
            str(r["broken_tracks"]),
            str(r["false_continuations"]),
            "-" if r["drift_max_err_px"] is None else f"{r['drift_max_err_px']:.2f}"]))
    print("\n".join(lines))
    doc = {"benchmark": "track",
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                       "platform": platform.platform()},
           "source": "etemseg.synth truth label images (raster-relabelled), bincount "
                     "measurement; trackpy on the same centroids (px)",
           "frames": a.frames, "seed": a.seed, "repeat": a.repeat, "clock": a.clock,
           "max_disp_nm": a.max_disp_nm, "simulation": sims,
           "columns": cols, "results": all_rows, "table": lines}
    try:
        import trackpy
        doc["trackpy_version"] = trackpy.__version__
    except ImportError:
        doc["trackpy_version"] = None
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
