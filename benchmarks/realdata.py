"""Detection accuracy of the classical pseudo-labels on real micrographs (``../shared/realdata``).

    python benchmarks/realdata.py [--data ../shared/realdata/pt-carbon-hrtem]

For each image with hand-checked boxes (YOLO format, ``class cx cy w h`` normalised), the frame is
labelled as a user's uncalibrated movie would be, and as before lengths were physical:

* ``default, estimated scale``: ``PRESETS["default"]`` (lengths in nm) resolved at the scale that
  :mod:`etemseg.scales` estimates from the image (what ``etemseg pseudolabel`` does for a movie
  without calibration);
* ``thick-support, estimated scale``: ``PRESETS["thick-support"]`` (the default plus a local
  background of radius the upper-quartile particle diameter found, at least 5 nm, for thick
  supports such as carbon black) at the same scale;
* ``default at 0.18 nm/px``: the same preset at the demo's pixel size (= the former pixel values);
* ``paper``: the published recipe (pixel values).

Scoring as the data's README asks: a detected component (8-connected, after the recipe's own
minimum area) whose centroid lies inside a box is a hit; each box counts once. Precision = hit
components / components, recall = boxes with a hit / boxes. Measure only, never tune on these
images. Prints a table and writes ``benchmarks/out/realdata.json``; skips when the data is absent.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from etemseg.stages.pseudolabel import PRESETS, pseudolabel_fast, resolve_for_movie

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared" / "realdata" / "pt-carbon-hrtem"


def load(image: Path) -> tuple[np.ndarray, np.ndarray]:
    """Grey frame (H, W) float32 and boxes (N, 4) as (row0, row1, col0, col1) px."""
    from PIL import Image

    frame = np.asarray(Image.open(image).convert("L"), dtype=np.float32)
    h, w = frame.shape
    rows = np.loadtxt(image.with_suffix(".txt"), ndmin=2)
    cx, cy, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
    return frame, np.column_stack([cy - bh / 2, cy + bh / 2, cx - bw / 2, cx + bw / 2])


def detection_scores(mask: np.ndarray, boxes: np.ndarray) -> dict:
    """Precision/recall/F1 of mask components against boxes (centroid-in-box hits)."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    centroids = np.array(ndimage.center_of_mass(mask, labels, range(1, n + 1))).reshape(-1, 2)
    y, x = centroids[:, None, 0], centroids[:, None, 1]
    inside = ((y >= boxes[None, :, 0]) & (y <= boxes[None, :, 1])
              & (x >= boxes[None, :, 2]) & (x <= boxes[None, :, 3]))
    hits = int(inside.any(axis=1).sum())
    found = int(inside.any(axis=0).sum())
    p = hits / n if n else 0.0
    r = found / len(boxes)
    return {"components": int(n), "boxes": int(len(boxes)), "precision": round(p, 3),
            "recall": round(r, 3), "f1": round(2 * p * r / (p + r), 3) if p + r else 0.0}


def run(data: Path) -> list[dict]:
    rows = []
    for image in sorted(data.glob("*.jpg")):
        frame, boxes = load(image)
        box_px = float(np.median(np.sqrt((boxes[:, 1] - boxes[:, 0])
                                         * (boxes[:, 3] - boxes[:, 2]))))
        variants, info = {}, {}
        for preset in ("default", "thick-support"):
            variants[f"{preset}, estimated scale"], info = resolve_for_movie(
                PRESETS[preset], None, frame[None])
        variants.update({"default at 0.18 nm/px": PRESETS["default"].resolved(0.18),
                         "paper": PRESETS["paper"]})
        for name, params in variants.items():
            t0 = time.perf_counter()
            mask = pseudolabel_fast(frame, params)
            rows.append({"image": image.name, "variant": name, "median_box_px": round(box_px, 1),
                         "estimated_diameter_px": info.get("estimated_diameter_px"),
                         "sigma_px": params.sigma, "opening_radius_px": params.opening_radius,
                         "background_radius_px": params.background_radius_px,
                         "min_area_px": params.min_area_px, "seconds": round(
                             time.perf_counter() - t0, 2), **detection_scores(mask > 0, boxes)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=HERE / "out" / "realdata.json")
    args = parser.parse_args()
    if not any(args.data.glob("*.jpg")):
        print(f"skipped: no images in {args.data}")
        return
    rows = run(args.data)
    print(f"{'image':<16} {'variant':<30} {'box px':>6} {'est. d px':>9} {'sigma':>5} "
          f"{'open r':>6} {'comps':>5} {'P':>5} {'R':>5} {'F1':>5}")
    for r in rows:
        est = r["estimated_diameter_px"]
        print(f"{r['image']:<16} {r['variant']:<30} {r['median_box_px']:>6} "
              f"{(f'{est:.1f}' if est else '-'):>9} {r['sigma_px']:>5.2f} "
              f"{r['opening_radius_px']:>6} {r['components']:>5} {r['precision']:>5.2f} "
              f"{r['recall']:>5.2f} {r['f1']:>5.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
