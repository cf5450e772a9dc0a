"""Temporal window benchmark: pseudo-label accuracy against the simulator's truth when each frame
is replaced by the centred mean of ``n`` frames (issue 11, "use time").

At 400 frames/s neighbouring frames show almost the same particles, so a mean over a few frames
raises the dose without blurring them. For each pixel size and dose, realistic simulated movies
(``etemseg.synth``, ``imaging="realistic"``, 512x512, several seeds) are pseudo-labelled with
the default preset from windows of 1, 3, 5, 9 frames (``MovieStore.read_mean``'s arithmetic: the
mean of the frames centred on each one), and scored against the exact truth labels
(``etemseg.analysis.scoring.score_frames``: pixel F1, detection F1 at IoU 0.5). Frames near the
ends of each movie are left out so that every window is whole.

    python benchmarks/temporal.py                      # 3 pixel sizes x 2 doses x 2 seeds, ~5 min
    python benchmarks/temporal.py --pixel-sizes 0.36 --doses 20 --seeds 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from etemseg.analysis.scoring import score_frames  # noqa: E402
from etemseg.stages.pseudolabel import PRESETS, pseudolabel_stack  # noqa: E402
from etemseg.synth import SynthParams, simulate  # noqa: E402


def centred_means(frames: np.ndarray, window: int, keep: range) -> np.ndarray:
    h = window // 2
    return np.stack([frames[i - h:i + h + 1].astype(np.float64).mean(0) for i in keep])


def run_case(pixel_size_nm: float, dose: float, seed: int, windows: list[int], size: int,
             imaging: str) -> list[dict]:
    h = max(windows) // 2
    n_scored = 5
    params = SynthParams(frames=n_scored + 2 * h, height=size, width=size, seed=seed, dose=dose,
                         imaging=imaging, pixel_size_nm=pixel_size_nm)
    frames, labels = (np.stack(a) for a in zip(*simulate(params)))
    keep = range(h, h + n_scored)
    preset = PRESETS["default"].resolved(pixel_size_nm)
    rows = []
    for n in windows:
        masks = pseudolabel_stack(centred_means(frames.astype(np.float32), n, keep), preset)
        s = score_frames(zip(masks, labels[h:h + n_scored]))
        rows.append({"imaging": imaging, "pixel_size_nm": pixel_size_nm, "dose": dose,
                     "seed": seed, "window_frames": n, "window_ms_at_400fps": n * 2.5,
                     "pixel_f1": round(s["pixel"]["f1"], 4),
                     "detection_f1": round(s["detection"]["f1"], 4),
                     "detection_recall": round(s["detection"]["recall"], 4)})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pixel-sizes", type=float, nargs="+", default=[0.06, 0.18, 0.36])
    p.add_argument("--doses", type=float, nargs="+", default=[20.0, 40.0])
    p.add_argument("--seeds", type=int, nargs="+", default=[11, 12])
    p.add_argument("--windows", type=int, nargs="+", default=[1, 3, 5, 9])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--imaging", default="realistic", choices=("realistic", "mass-thickness"))
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks/out/temporal.json")
    args = p.parse_args(argv)
    if any(n < 1 or n % 2 == 0 for n in args.windows):
        p.error("--windows: odd numbers of frames >= 1")
    rows = []
    for ps in args.pixel_sizes:
        for dose in args.doses:
            for seed in args.seeds:
                rows.extend(run_case(ps, dose, seed, args.windows, args.size, args.imaging))
    print(f"\npseudo-labels (preset default) vs truth, {args.imaging} imaging, "
          f"mean over seeds {args.seeds}")
    print(f"{'nm/px':>6s} {'dose':>5s} {'window':>7s} {'ms@400':>7s} {'pixel F1':>9s} "
          f"{'det F1':>7s} {'det rec':>8s}")
    summary = []
    for ps in args.pixel_sizes:
        for dose in args.doses:
            for n in args.windows:
                sel = [r for r in rows if (r["pixel_size_nm"], r["dose"], r["window_frames"])
                       == (ps, dose, n)]
                m = {k: float(np.mean([r[k] for r in sel]))
                     for k in ("pixel_f1", "detection_f1", "detection_recall")}
                summary.append({"pixel_size_nm": ps, "dose": dose, "window_frames": n, **m})
                print(f"{ps:6.2f} {dose:5.0f} {n:7d} {n * 2.5:7.1f} {m['pixel_f1']:9.3f} "
                      f"{m['detection_f1']:7.3f} {m['detection_recall']:8.3f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"args": {k: (str(v) if isinstance(v, Path) else v)
                                              for k, v in vars(args).items()},
                                     "cpus": os.cpu_count(), "rows": rows,
                                     "summary": summary}, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
