"""Masks of a simulated movie as the workflow's CNN makes them, for the tracking benchmarks.

:func:`cnn_stack` runs the workflow's segmentation path on one :class:`etemseg.synth.SynthParams`
movie, in memory and on the CPU:

1. every frame's centred temporal mean over ``window_ms`` (:func:`etemseg.io.store.window_means`,
   cut at the movie's ends), as the pseudolabel, train and infer stages see the frames;
2. ``pseudo:default`` labels (the ``default`` preset resolved at the pixel size) of
   ``train_frames`` means spread evenly over the movie -- the frames a training job samples;
3. ``arch`` trained on them with the demo's training settings (``config/config.yaml``,
   :func:`benchmarks.accuracy.train_on_pseudo`, seed ``train_seed``, 0 by default, on
   ``threads`` torch threads: the float sums of another thread count take the training
   elsewhere, so seed and thread count together name one training);
4. the model run on every mean through the inference engine, thresholded as ``etemseg infer``
   does by default (Otsu per frame, 20 working px minimum area:
   :func:`etemseg.nn.training.masks_from_probabilities`), ``block`` frames at a time.

This is what issue 12 asks the tracker to be validated on: the CNN's own masks of a realistic
movie (faint particles flickering at the detection limit), not truth masks.

    python benchmarks/cnn_masks.py --frames 200 --size 256    # masks of one movie, scored
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from etemseg.io.store import DEFAULT_WINDOW_MS, frames_in_window, window_means  # noqa: E402
from etemseg.synth import SynthParams, simulate  # noqa: E402


def simulated_frames(p: SynthParams) -> tuple[np.ndarray, np.ndarray]:
    """``(frames, labels)`` of the whole movie: (T, H, W) uint16 counts and uint32 truth ids."""
    frames = np.empty((p.frames, p.height, p.width), np.uint16)
    labels = np.empty((p.frames, p.height, p.width), np.uint32)
    for f, (img, lab) in enumerate(simulate(p)):
        frames[f], labels[f] = img, lab
    return frames, labels


def cnn_stack(p: SynthParams, window_ms: float = DEFAULT_WINDOW_MS, *, arch: str = "unet4-norm",
              train_frames: int = 48, block: int = 64, frames: np.ndarray | None = None,
              train_seed: int = 0, threads: int = 2, log=print) -> np.ndarray:
    """(T, H, W) bool masks of the movie ``p`` (or of its ``frames``) by ``arch`` trained on the
    movie's own windowed pseudo-labels, on ``threads`` torch threads (2: the workflow's
    ``train.threads``); see the module docstring."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _cnn_stack(p, window_ms, arch, train_frames, block, frames, train_seed, log)
    finally:
        torch.set_num_threads(before)


def _cnn_stack(p: SynthParams, window_ms: float, arch: str, train_frames: int, block: int,
               frames: np.ndarray | None, train_seed: int, log) -> np.ndarray:
    """:func:`cnn_stack` on the torch threads set."""
    from benchmarks.accuracy import model_probabilities, train_on_pseudo
    from etemseg.nn.checkpoint import normalise_frames
    from etemseg.nn.models import parse_arch, work_factor_of
    from etemseg.nn.training import masks_from_probabilities
    from etemseg.stages.pseudolabel import PRESETS, pseudolabel_stack

    t0 = time.perf_counter()
    if frames is None:
        frames, _ = simulated_frames(p)
    w = frames_in_window(window_ms, p.fps)
    pick = np.unique(np.linspace(0, p.frames - 1, min(train_frames, p.frames)).round()
                     .astype(int))
    h = w // 2
    means_pick = np.stack([window_means(frames[max(0, t - h):t + h + 1], max(0, t - h), t, t + 1,
                                        w)[0] for t in pick])
    prm = PRESETS["default"].resolved(p.pixel_size_nm)
    pseudo = (pseudolabel_stack(means_pick, prm) > 0).astype(np.uint8)
    t1 = time.perf_counter()
    model = train_on_pseudo(normalise_frames(means_pick), pseudo, p.pixel_size_nm, arch,
                            {"seed": train_seed})
    t2 = time.perf_counter()
    masks = np.zeros(frames.shape, bool)
    a_arch, factor = parse_arch(arch), work_factor_of(model)
    for b0 in range(0, p.frames, block):
        b1 = min(p.frames, b0 + block)
        lo, hi = max(0, b0 - h), min(p.frames, b1 + h)
        means = window_means(frames[lo:hi], lo, b0, b1, w)
        masks[b0:b1] = masks_from_probabilities(model_probabilities(model, a_arch, means),
                                                factor) > 0
    log(f"cnn masks: {arch} trained on {len(pick)} windowed pseudo-labelled frames "
        f"(labels {t1 - t0:.0f} s, training {t2 - t1:.0f} s), {p.frames} frames inferred in "
        f"{time.perf_counter() - t2:.0f} s")
    return masks


def main(argv=None) -> int:
    from benchmarks.accuracy import score_case

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--imaging", default="realistic")
    ap.add_argument("--window-ms", type=float, default=DEFAULT_WINDOW_MS)
    ap.add_argument("--arch", default="unet4-norm")
    args = ap.parse_args(argv)
    p = SynthParams(frames=args.frames, height=args.size, width=args.size, seed=args.seed,
                    imaging=args.imaging)
    frames, labels = simulated_frames(p)
    masks = cnn_stack(p, args.window_ms, arch=args.arch, frames=frames)
    s = score_case(masks, labels, p.pixel_size_nm)
    print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in s.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
