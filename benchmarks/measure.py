"""Particle-measurement benchmark: ``measure_stack`` vs per-frame skimage label + regionprops_table.

Simulated movies (etemseg.synth, default physics, seed 1) at 1024x1024 and 1792x1920; the masks
are the ground-truth labels > 0 and the intensity image the simulated frame.  Both methods measure
the same masks in ONE process pinned to one CPU core with every thread pool limited to one thread:

* ``measure_stack`` on the whole (T, H, W) block (labelling included), repeated, median time;
* the baseline, frame by frame: ``skimage.measure.label(mask, connectivity=2)`` +
  ``regionprops_table`` with the same property list (label, area, centroid,
  equivalent_diameter_area, axis_major_length, axis_minor_length, eccentricity, orientation,
  perimeter, intensity_mean, bbox for the border flag), turned into the same columns.

Reported per size: frames/s and particles/s of both, the speed-up, the tracemalloc peak of one
``measure_stack`` call (untimed pass), and the max abs difference per column between the two
tables (orientation also modulo pi, which is how the two agree for shapes whose second moments
are equal up to rounding).  Also the extra time of the frame overlaps recorded while measuring
(``overlaps=True``) against the track stage labelling every mask again to count them.  Prints a
table and writes JSON.

    python benchmarks/measure.py                      # 16 frames per size, ~1 minute
    python benchmarks/measure.py --frames 4 --sizes 1024x1024
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
             "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import json
import math
import platform
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROPS = ["label", "area", "centroid", "equivalent_diameter_area", "axis_major_length",
         "axis_minor_length", "eccentricity", "orientation", "perimeter", "intensity_mean",
         "bbox"]


def baseline(masks: np.ndarray, frames: np.ndarray, ps: float, time_s: np.ndarray):
    """Per-frame skimage label + regionprops_table -> the measure table's columns."""
    import pandas as pd
    from skimage.measure import label, regionprops_table

    parts = []
    h, w = masks.shape[1:]
    for t in range(len(masks)):
        lab = label(masks[t] > 0, connectivity=2)
        p = regionprops_table(lab, frames[t], properties=PROPS)
        parts.append(pd.DataFrame({
            "frame": np.full(len(p["label"]), t, np.int64),
            "time_s": np.full(len(p["label"]), time_s[t]),
            "label": p["label"].astype(np.int32),
            "x_nm": p["centroid-1"] * ps, "y_nm": p["centroid-0"] * ps,
            "x_px": p["centroid-1"], "y_px": p["centroid-0"],
            "area_nm2": p["area"] * ps * ps, "area_px": p["area"].astype(np.int64),
            "eq_diameter_nm": p["equivalent_diameter_area"] * ps,
            "major_axis_nm": p["axis_major_length"] * ps,
            "minor_axis_nm": p["axis_minor_length"] * ps,
            "eccentricity": p["eccentricity"], "orientation_rad": p["orientation"],
            "perimeter_nm": p["perimeter"] * ps, "mean_intensity": p["intensity_mean"],
            "touches_border": (p["bbox-0"] == 0) | (p["bbox-1"] == 0) | (p["bbox-2"] == h)
            | (p["bbox-3"] == w),
        }))
    return pd.concat(parts, ignore_index=True)


def max_diffs(df, ref) -> tuple[dict[str, float], int]:
    """Max |ours - regionprops| per column (orientation also modulo pi) and the number of
    orientations that differ by pi."""
    from etemseg.analysis.measure import COLUMNS

    assert len(df) == len(ref), (len(df), len(ref))
    diffs = {}
    for col in COLUMNS[2:]:  # movie, model: strings
        a = df[col].to_numpy().astype(np.float64)
        b = ref[col].to_numpy().astype(np.float64)
        diffs[col] = float(np.max(np.abs(a - b))) if len(a) else 0.0
    d = df["orientation_rad"].to_numpy() - ref["orientation_rad"].to_numpy()
    wrapped = (d + math.pi / 2) % math.pi - math.pi / 2
    diffs["orientation_rad_mod_pi"] = float(np.max(np.abs(wrapped))) if len(d) else 0.0
    return diffs, int(np.sum(np.abs(d) > 1e-6))


def relabel_overlaps(masks: np.ndarray) -> float:
    """Seconds the track stage spends without recorded overlaps: label every mask again
    (``ndimage.label``, 8-connected, as ``etemseg.stages.track.label_source``) and count the
    overlaps of every consecutive pair (:func:`etemseg.tracking.overlap.overlap_arrays`)."""
    from scipy import ndimage

    from etemseg.tracking.overlap import overlap_arrays

    lab = ndimage.label(masks[0] > 0, structure=np.ones((3, 3), bool))[0]
    overlap_arrays(lab, lab, (0, 0))  # warm-up: the compiled kernel's load
    prev = None
    t0 = time.perf_counter()
    for m in masks:
        lab = ndimage.label(m > 0, structure=np.ones((3, 3), bool))[0]
        if prev is not None:
            overlap_arrays(prev, lab, (0, 0))
        prev = lab
    return time.perf_counter() - t0


def bench_size(h: int, w: int, args: argparse.Namespace) -> dict:
    """One result row: measure_stack vs the per-frame baseline on a simulated (T, h, w) movie."""
    from etemseg.analysis.measure import measure_stack
    from etemseg.synth import SynthParams, simulate

    p = SynthParams(frames=args.frames, height=h, width=w, seed=1)
    images, labels = (np.stack(a) for a in zip(*simulate(p)))
    masks = (labels > 0).astype(np.uint8)
    del labels
    ps = p.pixel_size_nm
    time_s = np.arange(p.frames) / p.fps

    def ours():
        return measure_stack(masks, images, frame0=0, time_s=time_s, pixel_size_nm=ps,
                             movie="bench")

    ours()  # warm-up (imports, page faults)
    t_ours = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        df = ours()
        t_ours.append(time.perf_counter() - t0)
    t_ov = []
    for _ in range(args.repeat):  # the same with the frame overlaps (etemseg measure --overlaps)
        t0 = time.perf_counter()
        measure_stack(masks, images, frame0=0, time_s=time_s, pixel_size_nm=ps, movie="bench",
                      overlaps=True)
        t_ov.append(time.perf_counter() - t0)
    t_relabel = relabel_overlaps(masks)
    t_ref = []
    for _ in range(args.baseline_repeat):
        t0 = time.perf_counter()
        ref = baseline(masks, images, ps, time_s)
        t_ref.append(time.perf_counter() - t0)
    tracemalloc.start()
    ours()
    peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    diffs, n_orient_pi = max_diffs(df, ref)

    s_ours, s_ref = statistics.median(t_ours), statistics.median(t_ref)
    n = len(df)
    return {
        "size": f"{h}x{w}", "frames": p.frames, "particles": n,
        "coverage": float(masks.mean()),
        "ours_s": s_ours, "ours_s_all": t_ours, "regionprops_s": s_ref,
        "regionprops_s_all": t_ref,
        "ours_frames_per_s": p.frames / s_ours, "regionprops_frames_per_s": p.frames / s_ref,
        "ours_particles_per_s": n / s_ours, "regionprops_particles_per_s": n / s_ref,
        "speedup": s_ref / s_ours, "ours_peak_mb": peak_mb,
        "overlaps_ms_per_frame": (statistics.median(t_ov) - s_ours) / p.frames * 1e3,
        "relabel_overlaps_ms_per_frame": t_relabel / p.frames * 1e3,
        "ours_peak_mb_per_frame": peak_mb / p.frames,
        "max_abs_diff": diffs, "orientation_off_by_pi": n_orient_pi,
    }


def print_table(rows: list[dict]) -> None:
    """Speed table and the per-column differences to regionprops."""
    header = (f"{'size':>10} {'frames':>6} {'particles':>9} {'ours fr/s':>9} {'rp fr/s':>8} "
              f"{'ours part/s':>11} {'rp part/s':>9} {'speed-up':>8} {'peak MB':>8}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['size']:>10} {r['frames']:>6} {r['particles']:>9} "
              f"{r['ours_frames_per_s']:>9.1f} {r['regionprops_frames_per_s']:>8.2f} "
              f"{r['ours_particles_per_s']:>11.0f} {r['regionprops_particles_per_s']:>9.0f} "
              f"{r['speedup']:>8.1f} {r['ours_peak_mb']:>8.0f}")
    print()
    cols = list(rows[0]["max_abs_diff"]) if rows else []
    print(f"{'max |ours - regionprops|':<24} " + " ".join(f"{r['size']:>10}" for r in rows))
    for c in cols:
        print(f"{c:<24} " + " ".join(f"{r['max_abs_diff'][c]:>10.2g}" for r in rows))
    print(f"{'orientation off by pi':<24} "
          + " ".join(f"{r['orientation_off_by_pi']:>10}" for r in rows))
    print()
    print("frame overlaps for the track stage, ms per frame: recorded while measuring "
          "(measure_stack overlaps=True, extra) vs labelled again in the track stage")
    for r in rows:
        print(f"{r['size']:>10}  recorded +{r['overlaps_ms_per_frame']:.2f}  "
              f"labelled again {r['relabel_overlaps_ms_per_frame']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16, help="frames per size (default 16)")
    parser.add_argument("--sizes", default="1024x1024,1792x1920", help="HxW,HxW,...")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of measure_stack")
    parser.add_argument("--baseline-repeat", type=int, default=1, help="timed baseline runs")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to one CPU core")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "measure.json"))
    args = parser.parse_args()

    pinned = None
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        cpu = max(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        pinned = cpu

    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",") if s]
    rows = [bench_size(h, w, args) for h, w in sizes]
    print_table(rows)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": "measure",
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "processor": platform.processor(), "cpu_count": os.cpu_count(),
                    "pinned_cpu": pinned, "threads": 1},
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "notes": "masks = simulator ground-truth labels > 0 (8-connected components), intensity = "
                 "simulated uint16 frames; ours = etemseg.analysis.measure.measure_stack on the "
                 "whole block (labelling included, median of repeats); regionprops = per-frame "
                 "skimage label + regionprops_table with the same properties; peak = "
                 "tracemalloc peak of one measure_stack call.",
        "results": rows,
    }
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
