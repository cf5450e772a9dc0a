"""Pseudo-labelling benchmark: reference (scikit-image) vs fast (numba) path, per core.

Simulated frames (etemseg.synth, default physics) at 1024x1024 and 1792x1920 are labelled with
both implementations and both presets in ONE process pinned to one CPU core, with every thread
pool limited to one thread (OMP/OpenBLAS/MKL/numba).  Reported per size and preset:

* frames/s of each method (``pseudolabel_reference`` / ``pseudolabel_fast`` called frame by
  frame, interleaved so that both see the same machine load; the fast path allocates fresh work
  arrays per call), the speed-up, the fast path's frames/s through ``pseudolabel_stack`` (work
  arrays reused across the chunk), and a per-stage split of the fast path;
* IoU of the fast mask against the reference mask (min and mean over the frames) and the pixel F1
  of both against the ground truth;
* peak memory per frame: the ``tracemalloc`` peak of one call, measured in a separate untimed
  pass (numpy buffers are traced; the few small row buffers numba allocates inside the kernels,
  < 1 MB, are not).  The fast path is measured with fresh work arrays (``pseudolabel_fast``).

Numba compile time is excluded: every kernel is compiled (or loaded from the cache) by a warm-up
call on a small frame before timing.  Prints a table and writes JSON.

    python benchmarks/pseudolabel.py                      # 3 frames per size, < 2 minutes
    python benchmarks/pseudolabel.py --frames 5 --sizes 1024x1024
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
             "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import json
import platform
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(bool)
    b = b.astype(bool)
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else float(np.count_nonzero(a & b) / union)


def f1(mask: np.ndarray, truth: np.ndarray) -> float:
    m = mask.astype(bool)
    denom = np.count_nonzero(m) + np.count_nonzero(truth)
    return 1.0 if denom == 0 else float(2 * np.count_nonzero(m & truth) / denom)


def peak_mb(fn, *args) -> float:
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn(*args)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def stage_split(img: np.ndarray, params, repeats: int = 2) -> dict[str, float]:
    """Milliseconds per stage of the fast path (work arrays reused), best of ``repeats``."""
    import etemseg.morphology as em
    from etemseg.stages import pseudolabel as pl

    _, ws = pl._fast_one(img, params, None)
    best: dict[str, float] = {}
    for _ in range(repeats):
        t: dict[str, float] = {}
        t0 = time.perf_counter()
        x = pl.prepare_frame(img, params.polarity, np.float32)
        t1 = time.perf_counter()
        t["normalise"] = t1 - t0
        pad = params.border_pad_px
        g_out = ws.gp[pad:-pad, pad:-pad] if pad else ws.g
        g = em.gaussian_into(x, em.gaussian_kernel1d(params.sigma), ws.tmp, g_out)
        t2 = time.perf_counter()
        t["gaussian"] = t2 - t1
        pl.smoothed_noise(g, params.sigma)
        gp = em.pad_frame(g, pad, out=ws.gp) if pad else g
        t3 = time.perf_counter()
        t["noise+pad"] = t3 - t2
        w2 = gp.shape[1] + 2
        _, step = em.flood_keys_from_float(gp, ws.key1, pl.QUANT_LEVELS, True)
        ws.flood(ws.key1, w2)
        t4 = time.perf_counter()
        t["flood_dilation"] = t4 - t3
        em.flood_keys_reflood(ws.key1, ws.key2, pl.QUANT_LEVELS - 1)
        ws.flood(ws.key2, w2)
        t5 = time.perf_counter()
        t["flood_erosion"] = t5 - t4
        lo, hi = pl._depth_sobel(ws.key1, ws.key2, w2, params.border_pad_px,
                                 pl.QUANT_LEVELS - 1, step, ws.dbuf, ws.tmp)
        em.rescale_inplace(ws.tmp, lo, hi)
        t6 = time.perf_counter()
        t["depth+sobel"] = t6 - t5
        o = em.opening_disk_fast(ws.tmp, params.opening_radius, out=x, tmp=ws.g)
        t7 = time.perf_counter()
        t["opening"] = t7 - t6
        o_lo, o_hi = em.image_minmax(o)
        th = em.otsu_threshold(o, o_lo, o_hi, 256)
        mask = em.threshold_into(o, th, np.empty(o.shape, np.uint8))
        t8 = time.perf_counter()
        t["threshold"] = t8 - t7
        if params.fill_holes:
            em.fill_holes_inplace(mask, ws.stack)
        if params.min_area_px > 1:
            em.remove_small_inplace(mask, params.min_area_px)
        t["postprocess"] = time.perf_counter() - t8
        for k, v in t.items():
            best[k] = min(best.get(k, np.inf), v * 1e3)
    return best


def bench_preset(frames: np.ndarray, truth: np.ndarray, name: str) -> dict:
    """One result row: reference vs fast on ``frames`` (T, H, W) with preset ``name``."""
    from etemseg.stages.pseudolabel import (
        PRESETS,
        pseudolabel_fast,
        pseudolabel_reference,
        pseudolabel_stack,
    )

    p = PRESETS[name].resolved(0.18)   # the simulated movies are at 0.18 nm/px
    # interleaved frame by frame, so that both methods see the same machine load
    ref = np.empty(frames.shape, np.uint8)
    fast = np.empty(frames.shape, np.uint8)
    t_ref = t_fast = 0.0
    for k in range(len(frames)):
        t = time.perf_counter()
        ref[k] = pseudolabel_reference(frames[k], p)
        t_ref += time.perf_counter() - t
        t = time.perf_counter()
        fast[k] = pseudolabel_fast(frames[k], p)
        t_fast += time.perf_counter() - t
    t = time.perf_counter()
    stacked = pseudolabel_stack(frames, p)
    t_stack = time.perf_counter() - t
    assert np.array_equal(stacked, fast)
    ious = [iou(a, b) for a, b in zip(fast, ref)]
    h, w = frames.shape[1:]
    return {
        "size": f"{h}x{w}",
        "preset": name,
        "frames": len(frames),
        "ref_fps": len(frames) / t_ref,
        "fast_fps": len(frames) / t_fast,
        "ref_ms_per_frame": 1e3 * t_ref / len(frames),
        "fast_ms_per_frame": 1e3 * t_fast / len(frames),
        "fast_stack_fps": len(frames) / t_stack,
        "stack_speedup": t_ref / t_stack,
        "speedup": t_ref / t_fast,
        "iou_min": min(ious),
        "iou_mean": float(np.mean(ious)),
        "f1_ref": float(np.mean([f1(m, g) for m, g in zip(ref, truth)])),
        "f1_fast": float(np.mean([f1(m, g) for m, g in zip(fast, truth)])),
        "ref_peak_mb": peak_mb(pseudolabel_reference, frames[0], p),
        "fast_peak_mb": peak_mb(pseudolabel_fast, frames[0], p),
        "fast_stage_ms": stage_split(frames[0], p),
    }


def print_table(rows: list[dict], pinned: int | None, warmup_s: float) -> None:
    """The result rows as a table and the per-stage split of the fast path."""
    hdr = (f"{'size':>10} {'preset':>8} {'n':>2} {'ref f/s':>8} {'fast f/s':>9} {'ref ms':>8} "
           f"{'fast ms':>8} {'speedup':>8} {'IoU min':>8} {'F1 ref':>7} {'F1 fast':>8} "
           f"{'ref MB':>7} {'fast MB':>8} {'stack f/s':>9} {'stack x':>8}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['size']:>10} {r['preset']:>8} {r['frames']:>2} {r['ref_fps']:>8.2f} "
              f"{r['fast_fps']:>9.2f} {r['ref_ms_per_frame']:>8.0f} {r['fast_ms_per_frame']:>8.1f} "
              f"{r['speedup']:>7.1f}x {r['iou_min']:>8.5f} {r['f1_ref']:>7.3f} "
              f"{r['f1_fast']:>8.3f} {r['ref_peak_mb']:>7.0f} {r['fast_peak_mb']:>8.0f} "
              f"{r['fast_stack_fps']:>9.2f} {r['stack_speedup']:>7.1f}x")
    print("\nfast path per stage (ms, frame 0, work arrays reused, best of 2):")
    for r in rows:
        st = r["fast_stage_ms"]
        print(f"  {r['size']:>10} {r['preset']:>8}: "
              + ", ".join(f"{k} {v:.1f}" for k, v in st.items())
              + f"  (sum {sum(st.values()):.1f})")
    print(f"\n1 thread per method, pinned to CPU {pinned}; numba warm-up/compile {warmup_s:.1f} s "
          "excluded; peak memory = tracemalloc peak of one call")


def warm_up(presets: list[str]) -> float:
    """Compile (or load from cache) every kernel, for every preset; returns the seconds."""
    from etemseg.stages.pseudolabel import (
        PRESETS,
        pseudolabel_fast,
        pseudolabel_reference,
        pseudolabel_stack,
    )
    from etemseg.synth import SynthParams, simulate

    t0 = time.perf_counter()
    warm = next(iter(simulate(SynthParams(frames=1, height=96, width=112, seed=9))))[0]
    for name in presets:
        pseudolabel_fast(warm, PRESETS[name].resolved(0.18))
        pseudolabel_stack(warm[None], PRESETS[name].resolved(0.18))
        pseudolabel_reference(warm, PRESETS[name].resolved(0.18))
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3, help="frames per size (default 3)")
    parser.add_argument("--sizes", default="1024x1024,1792x1920", help="HxW,HxW,...")
    parser.add_argument("--presets", default="paper,default")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to one CPU core")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "pseudolabel.json"))
    args = parser.parse_args()

    pinned = None
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        cpu = max(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        pinned = cpu

    import numba

    numba.set_num_threads(1)
    from etemseg.synth import SynthParams, simulate

    presets = [p for p in args.presets.split(",") if p]
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",") if s]
    # warm-up: compile (or load from cache) every kernel, both presets, outside the timing
    warmup_s = warm_up(presets)

    rows = []
    for h, w in sizes:
        sim = list(simulate(SynthParams(frames=args.frames, height=h, width=w, seed=1)))
        frames = np.stack([f[0] for f in sim])
        truth = np.stack([f[1] > 0 for f in sim])
        for name in presets:
            row = bench_preset(frames, truth, name)
            rows.append(row)
            print(f"  done {row['size']} {name}: {row['speedup']:.1f}x", file=sys.stderr)
    print_table(rows, pinned, warmup_s)

    doc = {
        "benchmark": "pseudolabel",
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "processor": platform.processor(), "cpu_count": os.cpu_count(),
                    "pinned_cpu": pinned, "threads": 1},
        "notes": ("frames/s per core (1 thread, pinned); numba compile time excluded by a warm-up; "
                  "peak memory = tracemalloc peak of one pseudolabel_* call (numpy buffers; "
                  "numba-internal row buffers not traced); IoU = fast vs reference mask; "
                  "F1 = pixel F1 vs simulator ground truth (labels > 0)."),
        "warmup_s": warmup_s,
        "loadavg": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists()
        else None,
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
