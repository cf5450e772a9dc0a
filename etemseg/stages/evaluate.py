"""Evaluation of trained models: the driver that reads a movie x model's stores and writes the
threshold sweeps, line profiles, learned-kernel fits and their figures.

The analysis itself lives in :mod:`etemseg.analysis.kernels` (threshold sweeps, Otsu thresholds,
the Gabor + Gabor + Gaussian kernel fit and kernel figures) and :mod:`etemseg.analysis.profiles`
(line profiles across particles); Fig. 4's contours are
:func:`etemseg.analysis.comparison.plot_model_contours`.

:func:`evaluate_model` ties these together for one movie x model and writes its outputs
atomically; :func:`etemseg.analysis.comparison.compare_models` turns the per-model results into
the study table (``etemseg compare``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from etemseg.analysis.kernels import (
    THRESHOLDS,
    fit_gabor_gauss,
    level_histograms,
    plot_filters,
    plot_kernel_fit,
    plot_single_kernel,
    reference_scores,
)
from etemseg.analysis.profiles import line_profiles, pick_particles, plot_line_profiles
from etemseg.analysis.scoring import pixel_counts, rates, score_frames
from etemseg.errors import InputFileError
from etemseg.io.atomic import atomic_path, write_json
from etemseg.io.store import MovieStore
from etemseg.levels import dequantise, otsu_level
from etemseg.nn.checkpoint import load_model
from etemseg.nn.training import select_frames

log = logging.getLogger(__name__)

__all__ = ["evaluate_model", "evaluation_frames"]


def _write_csv(df: pd.DataFrame, path: Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return path


# --------------------------------------------------------------------------------------------
# one movie x model
# --------------------------------------------------------------------------------------------

def _same_store(a: str | Path, b: str | Path) -> bool:
    """Whether two store paths name the same store (resolved, else the last two components)."""
    pa, pb = Path(a), Path(b)
    try:
        if pa.resolve() == pb.resolve():
            return True
    except OSError:  # pragma: no cover
        pass
    return pa.parts[-2:] == pb.parts[-2:]


def _indices_for(sources: Iterable[str], frames_path: Path) -> set[int]:
    out = set()
    for s in sources or []:
        store, _, idx = str(s).rpartition(":")
        if store and idx.isdigit() and _same_store(store, frames_path):
            out.add(int(idx))
    return out


def evaluation_frames(meta: dict, frames_path: str | Path, n_frames: int, *,
                      val_frames: Sequence[int] | None = None,
                      max_frames: int | None = 32) -> tuple[np.ndarray, str]:
    """Frames of a movie on which to evaluate a model, and how they were chosen.

    In order of preference: ``val_frames`` if given; the model's validation frames of this movie
    (``meta["data"]["val_sources"]``, "frames_path:index" strings); frames of this movie not used
    for training (``train_sources``, or ``sources`` of older model files, which list every
    training-set frame without the split); all frames (a movie the model never saw, or one it
    saw entirely).  At most ``max_frames`` of them, evenly spread.

    Returns
    -------
    indices : (N,) int64, sorted
    selection : str
        ``given``, ``validation``, ``held_out``, ``unseen_movie`` or ``all_training_frames``.
    """
    frames_path = Path(frames_path)
    data = (meta or {}).get("data", {}) or {}
    if val_frames is not None:
        idx = np.unique(np.asarray(list(val_frames), dtype=np.int64))
        if idx.size == 0 or idx.min() < 0 or idx.max() >= n_frames:
            raise ValueError(f"val_frames: need indices in 0..{n_frames - 1}, got {val_frames!r}")
        how = "given"
    else:
        val = _indices_for(data.get("val_sources", []), frames_path)
        used = (_indices_for(data.get("train_sources", []), frames_path) | val
                | _indices_for(data.get("sources", []), frames_path))
        used = {i for i in used if 0 <= i < n_frames}
        val = {i for i in val if 0 <= i < n_frames}
        if val:
            idx, how = np.array(sorted(val), np.int64), "validation"
        elif not used:
            idx, how = np.arange(n_frames, dtype=np.int64), "unseen_movie"
        elif len(used) < n_frames:
            idx = np.array(sorted(set(range(n_frames)) - used), np.int64)
            how = "held_out"
        else:
            idx, how = np.arange(n_frames, dtype=np.int64), "all_training_frames"
            log.warning("%s: every frame of this movie was used for training and the model "
                        "file does not say which were validation frames; scores are on "
                        "training frames", frames_path)
    if max_frames and len(idx) > max_frames:
        idx = idx[select_frames(len(idx), 1, max_frames)]
    return idx, how


def _read(store: MovieStore, idx: np.ndarray) -> np.ndarray:
    return store.take(idx)


def _open_truth(path: Path, shape) -> object:
    import zarr

    try:
        truth = zarr.open_array(path, mode="r")
    except Exception as exc:  # zarr raises several types for a missing or broken array
        raise InputFileError(path, f"cannot open truth labels ({exc})") from exc
    if tuple(truth.shape) != tuple(shape):
        raise InputFileError(path, f"truth shape {truth.shape} differs from the movie's {shape}")
    return truth


@dataclass
class _Stores:
    """The stores one evaluation reads; ``truth`` is a Zarr array or None."""

    frames: MovieStore
    prob: MovieStore
    mask: MovieStore
    pseudo: MovieStore
    truth: object | None
    truth_path: str | Path | None

    def blocks(self, idx: np.ndarray) -> Iterator[np.ndarray]:
        """``idx`` in runs of one mask-store chunk (a few frames in memory at a time)."""
        step = max(1, int(self.mask.array.chunks[0]))
        for b in range(0, len(idx), step):
            yield idx[b:b + step]


def _open_stores(movie_dir: Path, model_name: str, truth_path: str | Path | None) -> _Stores:
    """Frames, probabilities, masks, pseudo-labels (and truth) of a movie x model, of one shape.

    ``truth_path`` None: ``{movie_dir}/synth/truth/labels.zarr`` when it exists.
    """
    frames = MovieStore.open(movie_dir / "frames.zarr")
    prob = MovieStore.open(movie_dir / model_name / "prob.zarr")
    mask = MovieStore.open(movie_dir / model_name / "mask.zarr")
    pseudo = MovieStore.open(movie_dir / "pseudo.zarr")
    shape = frames.array.shape
    for st in (prob, mask, pseudo):
        if st.array.shape != shape:
            raise InputFileError(st.path, f"shape {st.array.shape} differs from "
                                 f"{frames.path} {shape}")
    if truth_path is None:
        default = movie_dir / "synth" / "truth" / "labels.zarr"
        truth_path = default if default.exists() else None
    truth = _open_truth(Path(truth_path), shape) if truth_path is not None else None
    return _Stores(frames, prob, mask, pseudo, truth, truth_path)


def _level_pass(stores: _Stores, idx: np.ndarray
                ) -> tuple[tuple[np.ndarray, np.ndarray], tuple | None, dict]:
    """One pass over the evaluation frames, a few at a time.

    Returns
    -------
    pseudo_hist : (neg, pos)
        :func:`etemseg.analysis.kernels.level_histograms` of the probabilities against the
        pseudo-labels.
    truth_hist : (neg, pos) or None
        The same against the truth (None without truth).
    stored_mask : dict
        Pixel counts and rates of the stored masks vs the pseudo-labels (pooled and per-frame F1).
    """
    hist_p, hist_t = [], []
    counts = {"tp": 0, "fp": 0, "fn": 0}
    mask_f1 = []
    for sel in stores.blocks(idx):
        q = _read(stores.prob, sel)
        ref = _read(stores.pseudo, sel) > 0
        hist_p.append(level_histograms(q, ref))
        if stores.truth is not None:
            hist_t.append(level_histograms(q, stores.truth.get_orthogonal_selection((sel,)) > 0))
        for m, r in zip(_read(stores.mask, sel) > 0, ref):
            c = pixel_counts(m, r)
            mask_f1.append(rates(**c)["f1"])
            for key in counts:
                counts[key] += c[key]

    def joined(hists):
        return np.concatenate([h[0] for h in hists]), np.concatenate([h[1] for h in hists])

    stored = {**counts, **rates(**counts), "f1_frame_mean": float(np.mean(mask_f1)),
              "f1_frame_std": float(np.std(mask_f1))}
    return joined(hist_p), (joined(hist_t) if stores.truth is not None else None), stored


def _threshold_outputs(stores: _Stores, idx: np.ndarray, thresholds, out_dir: Path
                       ) -> tuple[np.ndarray, dict, dict | None, list[Path]]:
    """Threshold sweeps and Otsu scores vs pseudo-labels (and truth); write their tables.

    Returns the per-frame Otsu levels, the scores vs pseudo-labels and vs truth (None without
    truth) and the files written (``threshold_sweep.csv``, ``otsu_thresholds.csv``,
    ``threshold_sweep_truth.csv``).
    """
    (neg, pos), truth_hist, stored = _level_pass(stores, idx)
    otsu_lv = np.array([otsu_level(h) for h in neg + pos], np.int64)
    sweep, vs_pseudo = reference_scores(neg, pos, otsu_lv, thresholds)
    vs_pseudo["stored_mask"] = stored
    outputs = [_write_csv(sweep, out_dir / "threshold_sweep.csv")]
    otsu_df = pd.DataFrame({"frame": idx, "otsu_level": otsu_lv,
                            "otsu_threshold": otsu_lv / 255.0})
    outputs.append(_write_csv(otsu_df, out_dir / "otsu_thresholds.csv"))
    if truth_hist is None:
        return otsu_lv, vs_pseudo, None, outputs
    sweep_t, vs_truth = reference_scores(*truth_hist, otsu_lv, thresholds)
    outputs.append(_write_csv(sweep_t, out_dir / "threshold_sweep_truth.csv"))
    pairs = (pair for sel in stores.blocks(idx)
             for pair in zip(_read(stores.mask, sel) > 0,
                             stores.truth.get_orthogonal_selection((sel,))))
    vs_truth["stored_mask"] = score_frames(pairs, pixel_size_nm=stores.frames.pixel_size_nm)
    return otsu_lv, vs_pseudo, vs_truth, outputs


def _profile_outputs(stores: _Stores, idx: np.ndarray, movie: str, model_name: str,
                     n_particles: int, out_dir: Path) -> tuple[dict, list[Path]]:
    """Line profiles through particles of the middle evaluation frame (picked on the truth mask
    if present, else the pseudo-labels); write ``line_profiles.csv`` and ``.png``.

    Returns the ``line_profiles`` entry of ``scores.json`` and the files written.
    """
    t = int(idx[len(idx) // 2])
    raw = stores.frames.take([t])[0].astype(np.float64)
    ref_frame = ((np.asarray(stores.truth[t]) > 0) if stores.truth is not None
                 else (stores.pseudo.take([t])[0] > 0))
    picks = pick_particles(ref_frame, n=n_particles)
    half = max(8.0, float(picks["diameter_px"].max())) if len(picks) else 8.0
    profiles = line_profiles(raw, {model_name: dequantise(stores.prob.take([t])[0])},
                             picks[["y", "x"]].to_numpy(), half,
                             pixel_size_nm=stores.frames.pixel_size_nm)
    outputs = [_write_csv(profiles, out_dir / "line_profiles.csv"),
               plot_line_profiles(profiles, out_dir / "line_profiles.png",
                                  title=f"{movie} frame {t}: {model_name}")]
    return {"frame": t, "half_length_px": half,
            "particles": picks.to_dict(orient="records")}, outputs


def _kernel_outputs(model, family: str, model_name: str, out_dir: Path
                    ) -> tuple[dict | None, list[Path]]:
    """Single-filter / shallow-wide models: the learned kernel (or filters) figure and the
    Gabor + Gabor + Gaussian fit of the kernel (of the mean filter for shallow-wide).

    Returns the fit (with the kernel and fitted model as lists; None for other families) and the
    files written (``kernel.png`` or ``filters.png``, ``kernel_fit.png``, ``kernel_fit.json``).
    """
    if family not in ("single_filter", "shallow_wide"):
        return None, []
    if family == "single_filter":
        kern = model.kernel.numpy()
        kern = kern[0] if kern.ndim == 3 else kern
        outputs = [plot_single_kernel(kern, out_dir / "kernel.png",
                                      title=f"{model_name}: learned filter")]
        what = "single filter"
    else:
        filt = model.filters.numpy()
        outputs = [plot_filters(filt, out_dir / "filters.png",
                                title=f"{model_name}: first-layer filters")]
        kern, what = filt.mean(axis=0), f"mean of the {len(filt)} filters"
    fit = fit_gabor_gauss(kern)
    outputs.append(plot_kernel_fit(kern, fit, out_dir / "kernel_fit.png",
                                   title=f"{model_name}: {what}"))
    kernel_fit = {"fitted": what, "r2": fit["r2"], "rmse": fit["rmse"],
                  "success": fit["success"], "params": fit["params"],
                  "kernel": kern.tolist(), "model": fit["model"].tolist()}
    outputs.append(write_json(kernel_fit, out_dir / "kernel_fit.json"))
    return kernel_fit, outputs


def _summary(result: dict) -> dict:
    """The flat row of an :func:`evaluate_model` result (for the comparison table)."""
    vs_pseudo, vs_truth, kernel_fit = result["vs_pseudo"], result["vs_truth"], result["kernel_fit"]
    return {
        "model": result["model"], "canonical": result["canonical"], "movie": result["movie"],
        "parameters": result["parameters"], "training_time_s": result["training_time_s"],
        "n_frames": len(result["frames"]), "frame_selection": result["frame_selection"],
        "f1_otsu": vs_pseudo["otsu"]["f1_mean"], "f1_otsu_std": vs_pseudo["otsu"]["f1_std"],
        "best_f1": vs_pseudo["best"]["f1_mean"], "best_threshold": vs_pseudo["best"]["threshold"],
        "otsu_threshold_mean": result["otsu_threshold"]["mean"],
        "otsu_threshold_std": result["otsu_threshold"]["std"],
        "f1_mask_pseudo": vs_pseudo["stored_mask"]["f1"],
        "f1_otsu_truth": vs_truth["otsu"]["f1_mean"] if vs_truth else None,
        "best_f1_truth": vs_truth["best"]["f1_mean"] if vs_truth else None,
        "f1_truth": vs_truth["stored_mask"]["pixel"]["f1"] if vs_truth else None,
        "detection_f1_truth": vs_truth["stored_mask"]["detection"]["f1"] if vs_truth else None,
        "kernel_fit_r2": kernel_fit["r2"] if kernel_fit else None,
    }


def evaluate_model(movie_dir: str | Path, model_name: str, model_path: str | Path, *,
                   out_dir: str | Path, val_frames: Sequence[int] | None = None,
                   truth_path: str | Path | None = None, max_frames: int = 32,
                   thresholds=THRESHOLDS, n_particles: int = 3) -> dict:
    """Evaluate one model on one movie and write its figures and tables.

    Reads ``{movie_dir}/frames.zarr``, ``pseudo.zarr``, ``{model_name}/prob.zarr`` and
    ``{model_name}/mask.zarr`` (and ground truth when present) for the evaluation frames (see
    :func:`evaluation_frames`), and writes, atomically, to ``out_dir``:

    * ``threshold_sweep.csv`` — :func:`etemseg.analysis.kernels.threshold_sweep` vs the
      pseudo-labels (and ``threshold_sweep_truth.csv`` vs ground truth);
    * ``otsu_thresholds.csv`` — ``frame, otsu_level, otsu_threshold`` per evaluation frame;
    * ``line_profiles.csv`` + ``line_profiles.png`` — profiles through particles picked on the
      middle evaluation frame (truth mask if present, else pseudo-labels);
    * for single-filter / shallow-wide models: ``kernel.png`` or ``filters.png``, and
      ``kernel_fit.png`` + ``kernel_fit.json`` (Gabor + Gabor + Gaussian fit of the kernel, of
      the mean filter for shallow-wide);
    * ``scores.json`` — everything returned.

    Parameters
    ----------
    movie_dir : path
        ``results/{movie}``.
    model_name : str
        The model's folder name under ``movie_dir`` (and the label in tables).
    model_path : path
        ``models/{model}/model.pt`` (architecture, training time, training/validation frames).
    out_dir : path
        Output folder (created).
    val_frames : sequence of int, optional
        Evaluate on these frames instead of the automatic choice.
    truth_path : path, optional
        Truth label array (uint32 ids, same shape as the movie); default
        ``{movie_dir}/synth/truth/labels.zarr`` when it exists.
    max_frames : int
        At most this many evaluation frames, evenly spread.

    Returns
    -------
    dict
        The content of ``scores.json``; ``summary`` is the flat row for
        :func:`etemseg.analysis.comparison.compare_models`.
    """
    movie_dir, out_dir = Path(movie_dir), Path(out_dir)
    stores = _open_stores(movie_dir, model_name, truth_path)
    model, meta = load_model(model_path)
    idx, how = evaluation_frames(meta, stores.frames.path, stores.frames.n_frames,
                                 val_frames=val_frames, max_frames=max_frames)
    otsu_lv, vs_pseudo, vs_truth, outputs = _threshold_outputs(stores, idx, thresholds, out_dir)
    profiles, written = _profile_outputs(stores, idx, movie_dir.name, model_name, n_particles,
                                         out_dir)
    outputs += written
    kernel_fit, written = _kernel_outputs(model, meta["arch"]["family"], model_name, out_dir)
    outputs += written
    otsu_thr = otsu_lv / 255.0
    result = {
        "movie": movie_dir.name, "model": model_name, "model_path": str(model_path),
        "canonical": meta.get("name"), "family": meta["arch"]["family"],
        "parameters": meta.get("parameters"), "training_time_s": meta.get("training_time_s"),
        "pixel_size_nm": stores.frames.pixel_size_nm, "frames": idx.tolist(),
        "frame_selection": how,
        "truth": str(stores.truth_path) if stores.truth is not None else None,
        "otsu_threshold": {"mean": float(otsu_thr.mean()), "std": float(otsu_thr.std()),
                           "min": float(otsu_thr.min()), "max": float(otsu_thr.max())},
        "vs_pseudo": vs_pseudo, "vs_truth": vs_truth, "line_profiles": profiles,
        "kernel_fit": ({k: v for k, v in kernel_fit.items() if k not in ("kernel", "model")}
                       if kernel_fit else None),
    }
    result["summary"] = _summary(result)
    result["outputs"] = sorted(p.name for p in outputs) + ["scores.json"]
    write_json(result, out_dir / "scores.json")
    return result
