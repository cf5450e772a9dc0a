"""Segmentation accuracy against the simulator's exact truth, per pixel size, dose and imaging.

    python benchmarks/accuracy.py             # pseudo-labels + 2 of the demo's models, real data
    python benchmarks/accuracy.py --quick     # realistic at dose 20, pseudo-labels + unet4-norm
    python benchmarks/accuracy.py --imaging realistic --pixel-sizes 0.18 --doses 40 \
        --segmenters "pseudo:default;model:unet4-norm:self_training_rounds=1" --no-timing
    python benchmarks/accuracy.py --imaging realistic --pixel-sizes 0.18 --doses 40 \
        --set defocus_nm=-100 --no-timing --out /tmp/acc-df100.json   # one physical knob

For each case (imaging mode x pixel size x dose) ``--movies`` small movies are simulated
(:func:`etemseg.synth.simulate`, default physics otherwise; the same seeds, so the same particles,
at every dose and imaging mode) and every
*segmenter* labels its frames; masks are scored with :func:`etemseg.analysis.scoring.score_frames`
against the truth labels: pixel precision/recall/F1 (micro-averaged over the frames), detection
precision/recall/F1 (one-to-one matches at IoU >= 0.5) and the median equivalent-diameter error of
the matched particles (px), pooled over the movies of a case.  Realistic movies are run at every
dose; mass-thickness movies (the easy cartoon, for reference) at their default dose only.

Segmenters (``--segmenters``, ';'-separated):

* ``pseudo:<preset>``: the classical pseudo-labels, the preset resolved at the movie's calibrated
  pixel size, as ``etemseg pseudolabel`` does (fast path);
* ``model:ARCH[:FIELD=VALUE,...]``: the CNN ``ARCH`` trained, as the paper does, on the case's
  own ``pseudo:default`` labels (all frames of the case: with the default 3 movies x 8 frames
  and ``block_frames: 8`` one movie is the validation block) with the demo's CPU training
  settings (``train.settings`` of ``config/config.yaml``; device CPU, seed 0) plus the
  :class:`~etemseg.nn.training.TrainConfig` fields given, then run on every frame through the
  inference engine and thresholded as ``etemseg infer`` does by default (per-frame Otsu,
  components < 20 working px removed; a model works at the pixel size ``train.work_pixel_nm``
  gives it, e.g. 3x3 bins at 0.06 nm/px, see docs/training.md).

Real micrographs (``--realdata``, default ``../shared/realdata/pt-carbon-hrtem``; skipped when
absent): each image is pseudo-labelled as an uncalibrated movie (``default`` at the estimated
scale), each of ``--real-models`` is trained on that image's own pseudo-labels (its four quadrants
as frames, one held out; the image is normalised as a whole before it is cut, as the inference
engine normalises the whole frame) and run on the whole image; detection precision/recall/F1
against the hand-checked boxes as ``benchmarks/realdata.py`` scores them (plus, as a diagnostic,
the model at p > 0.5 and the Otsu separation of its probabilities), and a picture of the contours
per image (``--figures``). Measure only: the simulator, the segmenters and the training settings
are not tuned on these numbers (settings were chosen on ``--seed 200``, reported on the default
seed 100; see ``docs/training.md``). Prints tables and writes ``benchmarks/out/accuracy.json``; the
simulation time per frame of each case is recorded as well (physics + rendering, one thread), and
the demo's ``synth`` job (48 frames 512x512 written as TIFFs + truth) is timed in both modes.
Threads: one (numba, torch).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
             "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

Segmenter = Callable[[np.ndarray, float], np.ndarray]


def pseudo_segmenter(preset: str, **fields) -> Segmenter:
    """The pseudo-labeller with ``preset`` (and ``fields`` of ``PseudoLabelParams`` on top)
    resolved at the movie's pixel size (fast path); a local background that scales with the
    particles takes their diameter from the first ``SCALE_FRAMES`` frames, as the stage does
    from a movie's first chunk."""

    def segment(frames: np.ndarray, pixel_size_nm: float) -> np.ndarray:
        from etemseg.stages.pseudolabel import (
            SCALE_FRAMES,
            params_from_preset,
            pseudolabel_stack,
            resolve_for_movie,
        )

        params, _ = resolve_for_movie(params_from_preset(preset, fields), pixel_size_nm,
                                      frames[:SCALE_FRAMES])
        return pseudolabel_stack(frames, params) > 0

    return segment


def demo_train_settings() -> dict:
    """The demo's CPU training settings (``train.settings`` of ``config/config.yaml``)."""
    import yaml

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    return dict(cfg["train"]["settings"])


def train_on_pseudo(images: np.ndarray, pseudo: np.ndarray, pixel_size_nm: float | None,
                    arch: str, settings: dict):
    """Train ``arch`` on normalised ``images`` (N, H, W) and their pseudo-labels with the demo's
    settings plus ``settings`` (CPU, in memory); return the best (kept) model in eval mode."""
    import io

    import torch

    from etemseg.nn.checkpoint import work_factor_of_meta
    from etemseg.nn.models import build_model, with_work_factor
    from etemseg.nn.training import TrainConfig, Trainer, TrainingData, split_frames

    cfg = TrainConfig.from_dict({**demo_train_settings(), "device": "cpu", "model": arch,
                                 **settings})
    data = TrainingData(images.astype(np.float16), pseudo.astype(np.uint8),
                        *split_frames(len(images), cfg), pixel_sizes_nm=[pixel_size_nm])
    run = Trainer(data, cfg).fit()
    blob = torch.load(io.BytesIO(run.model_file.numpy().tobytes()), weights_only=True)
    # as etemseg.nn.checkpoint.load_model: the network at the working factor of its model file
    model = with_work_factor(build_model(arch), work_factor_of_meta(blob))
    model.load_state_dict(blob["state_dict"])
    return model.eval()


def model_probabilities(model, arch, frames: np.ndarray, max_tile_px: int = 0) -> np.ndarray:
    """Particle probabilities (T, H, W) of raw ``frames`` through the inference engine (tiles
    of at most ``max_tile_px``, 0 = whole frames)."""
    import torch

    from etemseg.nn.inference import InferConfig, prepare_model, probabilities

    cfg = InferConfig(device="cpu", max_tile_px=max_tile_px)
    device = torch.device("cpu")
    fast = prepare_model(model, device, cfg.optimised)
    batches = (frames[b:b + cfg.batch_size] for b in range(0, len(frames), cfg.batch_size))
    return np.concatenate([p.numpy() for p in probabilities(fast, batches, arch=arch, cfg=cfg,
                                                            device=device)])


def model_masks(model, arch, frames: np.ndarray, hysteresis: float | None = None,
                prob: np.ndarray | None = None) -> np.ndarray:
    """Masks of raw ``frames`` (T, H, W), thresholded as ``etemseg infer`` does by default
    (the minimum area in the model's working pixels; ``hysteresis`` instead of the default;
    ``prob``: the model's probabilities of ``frames`` when already computed)."""
    from etemseg.nn.models import work_factor_of
    from etemseg.nn.training import masks_from_probabilities

    if prob is None:
        prob = model_probabilities(model, arch, frames)
    return masks_from_probabilities(prob, work_factor_of(model), hysteresis)


#: pseudo-labels of the last case (frames id, pixel size) -> labels: models train on them
_PSEUDO_CACHE: dict = {}


def cached_pseudo(frames: np.ndarray, pixel_size_nm: float, preset: str = "default"
                  ) -> np.ndarray:
    """``pseudo:PRESET`` labels of ``frames`` (computed once per case)."""
    key = (id(frames), frames.shape, pixel_size_nm, preset)
    if key not in _PSEUDO_CACHE or _PSEUDO_CACHE[key][0] is not frames:
        if any(k[:3] != key[:3] for k in _PSEUDO_CACHE):
            _PSEUDO_CACHE.clear()  # (the frames are kept: a later case's array cannot reuse id)
        _PSEUDO_CACHE[key] = (frames,
                              pseudo_segmenter(preset)(frames, pixel_size_nm).astype(np.uint8))
    return _PSEUDO_CACHE[key][1]


#: models trained on the last case, by (architecture, settings), with their probabilities of
#: the case's frames: segmenters that differ only in ``infer_*`` settings share one training
_MODEL_CACHE: dict = {}


def model_segmenter(arch: str, **settings) -> Segmenter:
    """``arch`` trained on the case's own pseudo-labels (``labels``, below; the demo's training
    settings with ``settings`` on top, seed 0), then run on the frames as ``etemseg infer``.

    ``infer_min_area_nm2`` in ``settings`` is not a training field: the masks' minimum component
    area in nm² (``infer.settings.min_area_nm2``) instead of the default 20 px; nor is
    ``infer_hysteresis`` (``infer.settings.hysteresis`` instead of the default) or ``labels``:
    the pseudo-label preset trained on (default ``default``)."""
    min_area_nm2 = settings.pop("infer_min_area_nm2", None)
    hysteresis = settings.pop("infer_hysteresis", None)
    preset = settings.pop("labels", "default")

    def segment(frames: np.ndarray, pixel_size_nm: float) -> np.ndarray:
        from etemseg.morphology import remove_small_components
        from etemseg.nn.checkpoint import normalise_frames
        from etemseg.nn.models import parse_arch
        from etemseg.scales import area_px

        key = (id(frames), frames.shape, pixel_size_nm, arch, preset,
               json.dumps(settings, sort_keys=True))
        if key not in _MODEL_CACHE or _MODEL_CACHE[key][0] is not frames:
            if any(k[:3] != key[:3] or v[0] is not frames for k, v in _MODEL_CACHE.items()):
                _MODEL_CACHE.clear()      # another case: free the models
            model = train_on_pseudo(normalise_frames(frames),
                                    cached_pseudo(frames, pixel_size_nm, preset),
                                    pixel_size_nm, arch, settings)
            _MODEL_CACHE[key] = (frames, model,
                                 model_probabilities(model, parse_arch(arch), frames))
        _, model, prob = _MODEL_CACHE[key]
        masks = model_masks(model, parse_arch(arch), frames, hysteresis, prob) > 0
        if min_area_nm2 is not None:
            masks = np.stack([remove_small_components(m, area_px(min_area_nm2, pixel_size_nm))
                              for m in masks]) > 0
        return masks

    return segment


def segmenter(name: str) -> Segmenter:
    """The segmenter called ``name``: a key of :data:`SEGMENTERS`, or
    ``model:ARCH[:FIELD=VALUE,...]`` (TrainConfig fields on top of the demo's settings, values
    parsed as JSON), e.g. ``model:unet4-norm:self_training_rounds=1``, or
    ``pseudo:PRESET:FIELD=VALUE,...`` (PseudoLabelParams fields on top of the preset), e.g.
    ``pseudo:default:faint_noise_k=0``."""
    if name in SEGMENTERS:
        return SEGMENTERS[name]
    kind, _, rest = name.partition(":")
    if kind not in ("model", "pseudo") or not rest:
        raise SystemExit(f"--segmenters: unknown {name!r}; one of {', '.join(SEGMENTERS)}, "
                         "model:ARCH[:FIELD=VALUE,...] or pseudo:PRESET:FIELD=VALUE,...")
    what, _, fields = rest.partition(":")
    settings = overrides([f for f in fields.split(",") if f])
    if kind == "pseudo":
        return pseudo_segmenter(what, **settings)
    return model_segmenter(what, **settings)


#: the segmenters of a plain run: the pseudo-labels, the demo's best and its simplest model
#: (``model:unet4`` and ``model:shallow-wide`` on demand: each model adds ~40 s per case)
DEFAULT_SEGMENTERS = "pseudo:default;model:unet4-norm;model:single-filter"

#: name -> segmenter (``segmenter`` also builds ``model:ARCH:FIELD=VALUE,...`` on demand).
SEGMENTERS: dict[str, Segmenter] = {
    "pseudo:default": pseudo_segmenter("default"),
    "pseudo:paper": pseudo_segmenter("paper"),
    "pseudo:thick-support": pseudo_segmenter("thick-support"),
    "model:unet4-norm": model_segmenter("unet4-norm"),
    "model:unet4": model_segmenter("unet4"),
    "model:shallow-wide": model_segmenter("shallow-wide"),
    "model:single-filter": model_segmenter("single-filter"),
}


def simulate_case(imaging: str, pixel_size_nm: float, dose: float | None, frames: int,
                  size: int, seeds: list[int], overrides: dict | None = None
                  ) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Frames (T, H, W) uint16 and truth labels of one movie per seed, stacked along T.

    ``overrides`` are further :class:`~etemseg.synth.SynthParams` fields (``--set``).

    Returns
    -------
    frames, labels : numpy.ndarray
    seconds_per_frame : float
        Simulation time (physics + rendering) per frame.
    dose_per_px : float
        The dose used.
    """
    from etemseg.synth import SynthParams, simulate

    imgs, labs, dose_used, t0 = [], [], 0.0, time.perf_counter()
    for seed in seeds:
        p = SynthParams.from_dict({
            "frames": frames, "height": size, "width": size, "pixel_size_nm": pixel_size_nm,
            "imaging": imaging, "dose": dose, "seed": seed, **(overrides or {})})
        for img, lab in simulate(p):
            imgs.append(img)
            labs.append(lab)
        dose_used = p.dose_per_px
    per_frame = (time.perf_counter() - t0) / len(imgs)
    return np.stack(imgs), np.stack(labs), per_frame, dose_used


def temporal_window(window_ms: float, overrides: dict | None = None) -> int:
    """Frames in the workflow's temporal window (``window_ms``) at the simulator's frame rate."""
    from etemseg.io.store import frames_in_window
    from etemseg.synth import SynthParams

    return frames_in_window(window_ms, SynthParams.from_dict(overrides or {}).fps)


def windowed(frames: np.ndarray, movies: int, window: int) -> np.ndarray:
    """Each frame the mean of the ``window`` frames of its own movie centred on it (cut at the
    movie's ends), as the workflow's pseudo-labels, training and inference see it
    (:func:`etemseg.io.store.window_means`); ``frames`` unchanged when ``window`` is 1."""
    from etemseg.io.store import window_means

    if window <= 1:
        return frames
    return np.concatenate([window_means(m, 0, 0, len(m), window)
                           for m in np.split(frames, movies)])


def score_case(masks: np.ndarray, labels: np.ndarray, pixel_size_nm: float) -> dict:
    """The numbers of one row: pixel and detection P/R/F1, median diameter error."""
    from etemseg.analysis.scoring import score_frames

    s = score_frames(zip(masks, labels), pixel_size_nm=pixel_size_nm)
    pix, det, dia = s["pixel"], s["detection"], s["diameter_error"]
    return {"pixel_precision": pix["precision"], "pixel_recall": pix["recall"],
            "pixel_f1": pix["f1"], "detection_precision": det["precision"],
            "detection_recall": det["recall"], "detection_f1": det["f1"],
            "truth_particles": det["truth"], "predicted_particles": det["predicted"],
            "median_diameter_error_px": dia.get("median_px")}


def overrides(pairs: list[str]) -> dict:
    """``["defocus_nm=-100", ...]`` -> ``{"defocus_nm": -100.0}`` (values parsed as JSON)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set: expected KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def cases(args: argparse.Namespace) -> list[tuple[str, float, float | None]]:
    """(imaging, pixel size, dose) of every case; mass-thickness at its default dose only."""
    out = []
    for imaging in args.imaging.split(","):
        for ps in (float(v) for v in args.pixel_sizes.split(",")):
            doses = [float(v) for v in args.doses.split(",")] if imaging == "realistic" else [None]
            out.extend((imaging, ps, d) for d in doses)
    return out


def run(args: argparse.Namespace) -> list[dict]:
    names = [n for n in args.segmenters.split(";") if n]
    segmenters = {n: segmenter(n) for n in names}
    rows = []
    for imaging, ps, dose in cases(args):
        # the same physics (seeds) at every dose and imaging mode of a pixel size
        seeds = [args.seed + m for m in range(args.movies)]
        frames, labels, sim_s, dose_used = simulate_case(imaging, ps, dose, args.frames,
                                                         args.size, seeds, overrides(args.set))
        window = temporal_window(args.window_ms, overrides(args.set))
        frames = windowed(frames, args.movies, window)
        for name in names:
            t0 = time.perf_counter()
            masks = segmenters[name](frames, ps)
            seg_s = (time.perf_counter() - t0) / len(frames)
            rows.append({"imaging": imaging, "pixel_size_nm": ps, "dose_per_px": dose_used,
                         "segmenter": name, "frames": len(frames), "size": args.size,
                         "window_ms": args.window_ms, "window_frames": window,
                         "seeds": seeds, "set": overrides(args.set),
                         "simulate_s_per_frame": round(sim_s, 4),
                         "segment_s_per_frame": round(seg_s, 4),
                         **score_case(masks, labels, ps)})
            r = rows[-1]
            print(f"  done {imaging} {ps} nm/px dose {dose_used:g} {name}: pixel F1 "
                  f"{r['pixel_f1']:.3f}, detection F1 {r['detection_f1']:.3f} "
                  f"({seg_s * len(frames):.0f} s)", file=sys.stderr)
    return rows


REALDATA = ROOT.parent / "shared" / "realdata" / "pt-carbon-hrtem"


def real_image_tiles(frame: np.ndarray, tiles: int = 2) -> np.ndarray:
    """The (H, W) image cut into ``tiles x tiles`` equal frames (N, h, w): the training frames
    of a single micrograph (the split needs at least two frames)."""
    h, w = (n // tiles for n in frame.shape)
    return np.stack([frame[i * h:(i + 1) * h, j * w:(j + 1) * w]
                     for i in range(tiles) for j in range(tiles)])


def run_realdata(data: Path, archs: list[str], figures: Path | None,
                 preset: str = "default") -> list[dict]:
    """Detection P/R/F1 against the boxes of every real micrograph in ``data``: the
    pseudo-labels (``preset`` at the scale :mod:`etemseg.scales` estimates, as
    ``etemseg pseudolabel`` labels an uncalibrated movie) and each model in ``archs`` trained
    on the image's own pseudo-labels (its four quadrants as frames, one held out; the demo's
    settings) and run on the whole image as ``etemseg infer``. Measured, never tuned on."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from realdata import detection_scores, load

    from etemseg.levels import level_histogram, otsu_split, quantise
    from etemseg.morphology import remove_small_components
    from etemseg.nn.checkpoint import normalise_frames
    from etemseg.nn.models import parse_arch, work_factor_of
    from etemseg.nn.training import masks_from_probabilities
    from etemseg.stages.pseudolabel import PRESETS, pseudolabel_fast, resolve_for_movie

    rows = []
    for image in sorted(data.glob("*.jpg")):
        frame, boxes = load(image)
        raw = np.rint(frame).astype(np.uint16)
        params, info = resolve_for_movie(PRESETS[preset], None, raw[None])
        ps = info["effective_pixel_size_nm"] or 0.18
        pseudo = (pseudolabel_fast(raw, params) > 0).astype(np.uint8)
        masks, notes = {f"pseudo:{preset}": pseudo}, {}
        for arch in archs:
            t0 = time.perf_counter()
            # the image normalised as a whole (as the inference engine normalises the frame it
            # runs on), then cut: quadrants normalised on their own would show the network a
            # thick, dark patch of support as ordinary grey and make it "dark" at inference
            tiles = real_image_tiles(normalise_frames(raw[None])[0])
            model = train_on_pseudo(tiles, real_image_tiles(pseudo), ps, arch,
                                    {"block_frames": 1})
            prob = model_probabilities(model, parse_arch(arch), raw[None], max_tile_px=512)
            masks[f"model:{arch}"] = masks_from_probabilities(prob, work_factor_of(model))[0]
            level, separation = otsu_split(level_histogram(quantise(prob[0])))
            notes[f"model:{arch}"] = {"otsu_probability": round((level + 0.5) / 255, 3),
                                      "otsu_separation": round(separation, 3)}
            # diagnostics, not the workflow's default: the same probabilities without hysteresis
            # and at p > 0.5
            masks[f"model:{arch} no hysteresis"] = masks_from_probabilities(
                prob, work_factor_of(model), 1.0)[0]
            masks[f"model:{arch} p>0.5"] = remove_small_components(prob[0] > 0.5, 20)
            print(f"  done {image.name} {arch} ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr)
        for name, mask in masks.items():
            rows.append({"image": image.name, "segmenter": name,
                         "estimated_pixel_size_nm": round(ps, 4),
                         **detection_scores(mask > 0, boxes), **notes.get(name, {})})
        if figures is not None:
            real_figure(raw, boxes, {k: v for k, v in masks.items() if " " not in k},
                        figures / f"realdata-{image.stem}.png")
    return rows


def real_figure(raw: np.ndarray, boxes: np.ndarray, masks: dict, path: Path) -> None:
    """The image with the hand-checked boxes (pink) and each segmenter's contours (PNG)."""
    import matplotlib
    from skimage.segmentation import find_boundaries

    from etemseg.plotting import plt, save_figure

    colours = ["#ffd700", "#00e5ff", "#76ff03", "#ff9100"]
    h, w = raw.shape
    fig, ax = plt.subplots(figsize=(10, 10.4), dpi=200)
    lo, hi = np.percentile(raw, [0.5, 99.5])
    ax.imshow(raw, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    for r0, r1, c0, c1 in boxes:
        ax.add_patch(matplotlib.patches.Rectangle((c0, r0), c1 - c0, r1 - r0, fill=False,
                                                  lw=0.4, ec="#ff4081"))
    handles = [matplotlib.lines.Line2D([], [], color="#ff4081", label="boxes (truth)")]
    for (name, mask), colour in zip(masks.items(), colours):
        rgba = np.zeros((h, w, 4))
        rgba[find_boundaries(mask > 0, mode="inner")] = matplotlib.colors.to_rgba(colour)
        ax.imshow(rgba, interpolation="nearest")
        handles.append(matplotlib.lines.Line2D([], [], color=colour, label=name))
    ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.7)
    ax.set_title(path.stem, fontsize=10)
    ax.set_axis_off()
    fig.tight_layout()
    save_figure(fig, path)


def demo_timing(frames: int = 48, size: int = 512) -> list[dict]:
    """Seconds of the demo's ``synth`` job per imaging mode (``write_synthetic_movie``, TIFFs +
    truth), and of the physics alone (``simulate_tracks``), for ``frames`` frames of size^2."""
    import tempfile

    from etemseg.synth import SynthParams, simulate_tracks, write_synthetic_movie

    out = []
    for imaging in ("mass-thickness", "realistic"):
        p = SynthParams(frames=frames, height=size, width=size, imaging=imaging, seed=0)
        t0 = time.perf_counter()
        simulate_tracks(p)
        physics_s = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            write_synthetic_movie(Path(tmp) / "movie", p, progress=False)
            total_s = time.perf_counter() - t0
        out.append({"imaging": imaging, "frames": frames, "size": size,
                    "write_synthetic_movie_s": round(total_s, 2), "physics_s": round(physics_s, 2),
                    "render_s_per_frame": round((total_s - physics_s) / frames, 4)})
    return out


def print_table(rows: list[dict]) -> None:
    print(f"{'imaging':<15} {'nm/px':>5} {'dose':>5} {'segmenter':<24} {'pix P':>5} "
          f"{'pix R':>5} {'pix F1':>6} {'det P':>5} {'det R':>5} {'det F1':>6} "
          f"{'d err px':>8} {'sim s/f':>7}")
    for r in rows:
        err = r["median_diameter_error_px"]
        print(f"{r['imaging']:<15} {r['pixel_size_nm']:>5.2f} {r['dose_per_px']:>5.0f} "
              f"{r['segmenter']:<24} {r['pixel_precision']:>5.2f} {r['pixel_recall']:>5.2f} "
              f"{r['pixel_f1']:>6.3f} {r['detection_precision']:>5.2f} "
              f"{r['detection_recall']:>5.2f} {r['detection_f1']:>6.3f} "
              f"{(f'{err:+.2f}' if err is not None else '-'):>8} "
              f"{r['simulate_s_per_frame']:>7.3f}")


def print_real_table(rows: list[dict]) -> None:
    print(f"{'real image':<16} {'segmenter':<28} {'est nm/px':>9} {'comps':>5} {'boxes':>5} "
          f"{'det P':>5} {'det R':>5} {'det F1':>6} {'otsu sep':>8}")
    for r in rows:
        sep = r.get("otsu_separation")
        print(f"{r['image']:<16} {r['segmenter']:<28} {r['estimated_pixel_size_nm']:>9.3f} "
              f"{r['components']:>5} {r['boxes']:>5} {r['precision']:>5.2f} {r['recall']:>5.2f} "
              f"{r['f1']:>6.3f} {(f'{sep:.2f}' if sep is not None else '-'):>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8, help="frames per movie (default 8)")
    parser.add_argument("--movies", type=int, default=3,
                        help="movies (seeds) per case, scores pooled (default 3)")
    parser.add_argument("--size", type=int, default=512, help="frame side, px (default 512)")
    parser.add_argument("--pixel-sizes", default="0.06,0.18,0.36", help="nm/px, comma-separated")
    parser.add_argument("--doses", default="20,40",
                        help="realistic-mode counts per background pixel per frame")
    parser.add_argument("--imaging", default="realistic,mass-thickness")
    parser.add_argument("--segmenters", default=DEFAULT_SEGMENTERS,
                        help="';'-separated: keys of SEGMENTERS or model:ARCH[:FIELD=VALUE,...] "
                             f"(default {DEFAULT_SEGMENTERS!r})")
    parser.add_argument("--realdata", type=Path, default=REALDATA,
                        help="folder of real micrographs with boxes (skipped when absent)")
    parser.add_argument("--real-models", default="unet4-norm,single-filter",
                        help="architectures trained on each real image's own pseudo-labels "
                             "('' for none)")
    parser.add_argument("--real-labels", default="default",
                        help="pseudo-label preset of the real images (and of their models)")
    parser.add_argument("--figures", type=Path, default=ROOT / "benchmarks" / "out",
                        help="folder of the real images' contour pictures")
    parser.add_argument("--quick", action="store_true",
                        help="fewer cases: realistic at dose 20 only, unet4-norm as the model")
    parser.add_argument("--seed", type=int, default=100, help="seed of the first movie")
    parser.add_argument("--window-ms", type=float, default=None,
                        help="temporal window of the input, ms (default: the workflow's, "
                             "etemseg.io.store.DEFAULT_WINDOW_MS; 0 = single frames)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="further SynthParams field for every movie, e.g. defocus_nm=-100")
    parser.add_argument("--no-timing", action="store_true",
                        help="skip timing the demo's synth job (48 frames 512x512) per mode")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "accuracy.json")
    args = parser.parse_args()
    if args.window_ms is None:
        from etemseg.io.store import DEFAULT_WINDOW_MS
        args.window_ms = DEFAULT_WINDOW_MS
    if args.quick:
        args.imaging, args.doses = "realistic", "20"
        if args.segmenters == DEFAULT_SEGMENTERS:
            args.segmenters = "pseudo:default;model:unet4-norm"
        args.real_models = "unet4-norm"

    import numba
    import torch

    numba.set_num_threads(1)
    torch.set_num_threads(1)
    rows = run(args)
    print_table(rows)
    real = []
    if any(args.realdata.glob("*.jpg")):
        real = run_realdata(args.realdata, [a for a in args.real_models.split(",") if a],
                            args.figures, args.real_labels)
        print_real_table(real)
    else:
        print(f"real data skipped: no images in {args.realdata}")
    timing = [] if args.no_timing else demo_timing()
    for t in timing:
        print(f"demo synth job, {t['imaging']:<15} {t['frames']} frames {t['size']}^2: "
              f"{t['write_synthetic_movie_s']:.1f} s (physics {t['physics_s']:.1f} s; rendering "
              f"+ writing {t['render_s_per_frame'] * 1e3:.0f} ms/frame)")
    doc = {"benchmark": "accuracy",
           "command": "python benchmarks/accuracy.py " + " ".join(sys.argv[1:]),
           "machine": {"platform": platform.platform(), "python": platform.python_version(),
                       "cpu_count": os.cpu_count(), "threads": 1},
           "notes": ("scores vs the simulator's exact truth labels (etemseg.analysis.scoring."
                     "score_frames, IoU >= 0.5 matches); pseudo:<preset> resolved at the "
                     "calibrated pixel size; simulate_s_per_frame = physics + rendering; "
                     "measured, not tuned"),
           "train_settings": demo_train_settings(),
           "results": rows, "realdata": real, "demo_synth_timing": timing}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
