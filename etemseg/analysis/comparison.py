"""The model study: the comparison table and figures across evaluated models (``etemseg compare``).

:func:`compare_models` merges the per-model results of ``etemseg evaluate``
(:func:`etemseg.stages.evaluate.evaluate_model`, its ``scores.json``) into one table;
:func:`plot_model_contours` (Fig. 4: several models' Otsu contours on one frame, from the stored
probabilities) and :func:`plot_threshold_sweep` (Fig. 7a: precision / recall / F1 against the
threshold, from the stored sweep tables) draw the study's figures.

Tables, stores and plots only: neither torch nor numba is imported, so ``etemseg compare``
starts fast.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from etemseg.io.store import MovieStore
from etemseg.levels import level_histogram, otsu_level
from etemseg.plotting import overlay_png, plt, save_figure

__all__ = ["COMPARISON_COLUMNS", "compare_models", "plot_contours", "plot_model_contours",
           "plot_threshold_sweep"]


def _crop_slices(crop, shape) -> tuple[slice, slice]:
    """``crop`` as (y0, y1, x0, x1) or (slice, slice) -> two slices clipped to ``shape``."""
    if crop is None:
        return slice(0, shape[0]), slice(0, shape[1])
    if len(crop) == 2 and all(isinstance(c, slice) for c in crop):
        ys, xs = crop
    elif len(crop) == 4:
        y0, y1, x0, x1 = (int(c) for c in crop)
        ys, xs = slice(y0, y1), slice(x0, x1)
    else:
        raise ValueError(f"crop: expected (y0, y1, x0, x1) or (slice, slice), got {crop!r}")
    ys = slice(*ys.indices(shape[0])[:2])
    xs = slice(*xs.indices(shape[1])[:2])
    if ys.stop <= ys.start or xs.stop <= xs.start:
        raise ValueError(f"crop: {crop!r} is empty for a {shape} frame")
    return ys, xs


def plot_contours(frame: np.ndarray, masks: Mapping[str, np.ndarray], path: str | Path, *,
                  pixel_size_nm: float | None, crop=None, title: str = "") -> Path:
    """Outlines of several models' masks on one frame, with legend and scale bar (Fig. 4).

    Parameters
    ----------
    frame : (H, W)
        Raw frame.
    masks : dict name -> (H, W) bool
        At most 6 masks (one colour each), e.g. the Otsu-threshold masks of six models.
    crop : (y0, y1, x0, x1) or (slice, slice), optional
        Show only this region (outlines are computed inside the crop).
    """
    if len(masks) > 6:
        raise ValueError(f"plot_contours: at most 6 masks have distinct colours, got "
                         f"{len(masks)}")
    frame = np.asarray(frame)
    ys, xs = _crop_slices(crop, frame.shape)
    for name, m in masks.items():
        if np.shape(m) != frame.shape:
            raise ValueError(f"masks[{name!r}]: shape {np.shape(m)} differs from the frame's "
                             f"{frame.shape}")
    cropped = {name: np.asarray(m, bool)[ys, xs] for name, m in masks.items()}
    if crop is not None and not title:
        title = f"crop y {ys.start}:{ys.stop}, x {xs.start}:{xs.stop}"
    return overlay_png(frame[ys, xs], cropped, path, title=title, pixel_size_nm=pixel_size_nm)


def plot_model_contours(results_dir: str | Path, movie: str, models: Sequence[str],
                        path: str | Path, *, frame_index: int | None = None, crop=None,
                        labels: Mapping[str, str] | None = None, source: str = "otsu") -> Path:
    """Fig. 4 for the study: several models' contours on one frame of ``results/{movie}``.

    Parameters
    ----------
    results_dir : path
        The workflow's ``results`` folder.
    movie : str
        Movie name (``results/{movie}/frames.zarr``, ``results/{movie}/{model}/prob.zarr``).
    models : sequence of str
        Up to 6 model names (sub-folders of the movie).
    frame_index : int, optional
        Frame to show (default: the middle frame).
    labels : dict model -> display name, optional
        Legend names (e.g. the paper's "TwoConv_Norm").
    source : str
        ``otsu`` (Otsu threshold of the frame's probabilities, no size filter — the paper's
        figure) or ``mask`` (the stored ``mask.zarr``).
    """
    if source not in ("otsu", "mask"):
        raise ValueError(f"source: expected 'otsu' or 'mask', got {source!r}")
    movie_dir = Path(results_dir) / movie
    frames = MovieStore.open(movie_dir / "frames.zarr")
    t = frames.n_frames // 2 if frame_index is None else int(frame_index)
    if not 0 <= t < frames.n_frames:
        raise ValueError(f"frame_index: {t} is out of range 0..{frames.n_frames - 1}")
    masks = {}
    for name in models:
        if source == "otsu":
            q = MovieStore.open(movie_dir / name / "prob.zarr").take([t])[0]
            masks[(labels or {}).get(name, name)] = q > otsu_level(level_histogram(q))
        else:
            masks[(labels or {}).get(name, name)] = (
                MovieStore.open(movie_dir / name / "mask.zarr").take([t])[0] > 0)
    return plot_contours(frames.take([t])[0], masks, path, pixel_size_nm=frames.pixel_size_nm,
                         crop=crop, title=f"{movie} frame {t} ({source} masks)")


def plot_threshold_sweep(sweeps: Mapping[str, pd.DataFrame], otsu: Mapping[str, np.ndarray],
                         path: str | Path, *, title: str = "") -> Path:
    """Precision, recall and F1 vs threshold (mean +- std bands), one colour per model, and a
    histogram of the per-frame Otsu thresholds (Fig. 7a).

    Parameters
    ----------
    sweeps : dict name -> DataFrame
        :func:`etemseg.analysis.kernels.threshold_sweep` tables.
    otsu : dict name -> (T,) array
        Per-frame Otsu thresholds (:func:`etemseg.analysis.kernels.otsu_thresholds`); models may
        be missing.
    """
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8), dpi=110)
    for k, (name, df) in enumerate(sweeps.items()):
        colour = f"C{k % 10}"
        for ax, key in zip(axes[:3], ("precision", "recall", "f1")):
            m, s = df[f"{key}_mean"].to_numpy(), df[f"{key}_std"].to_numpy()
            ax.plot(df["threshold"], m, color=colour, lw=1.5, label=str(name))
            ax.fill_between(df["threshold"], m - s, m + s, color=colour, alpha=0.2, lw=0)
    for ax, key in zip(axes[:3], ("precision", "recall", "F1")):
        ax.set_xlabel("probability threshold")
        ax.set_ylabel(key)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    bins = np.linspace(0, 1, 52)
    names = list(sweeps) + [n for n in otsu if n not in sweeps]
    for k, name in enumerate(names):
        vals = np.asarray(otsu.get(name, []), dtype=np.float64)
        if vals.size:
            axes[3].hist(vals, bins=bins, color=f"C{k % 10}", alpha=0.55, label=str(name))
    axes[3].set_xlabel("Otsu threshold per frame")
    axes[3].set_ylabel("frames")
    axes[3].set_xlim(0, 1)
    if sweeps:
        axes[2].legend(fontsize=8, loc="lower center")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


COMPARISON_COLUMNS = ["model", "canonical", "movie", "parameters", "training_time_s", "n_frames",
                      "frame_selection", "f1_otsu", "f1_otsu_std", "best_f1", "best_threshold",
                      "otsu_threshold_mean", "otsu_threshold_std", "f1_mask_pseudo",
                      "f1_otsu_truth", "best_f1_truth",
                      "f1_truth", "detection_f1_truth", "kernel_fit_r2"]


def compare_models(rows: Iterable[Mapping]) -> pd.DataFrame:
    """Study table, one row per evaluated model (and movie).

    Parameters
    ----------
    rows : iterable of dict
        :func:`etemseg.stages.evaluate.evaluate_model` results (their ``summary`` is used) or
        flat summary dicts.

    Returns
    -------
    DataFrame
        Columns :data:`COMPARISON_COLUMNS` (``f1_otsu``: mean per-frame F1 vs pseudo-labels at
        each frame's Otsu threshold; ``best_f1`` / ``best_threshold``: the sweep's best mean F1;
        ``f1_truth`` / ``detection_f1_truth``: pixel and particle-detection F1 of the stored masks
        vs ground truth, NaN without truth); extra keys are appended; input order is kept.
    """
    flat = [dict(r.get("summary", r)) for r in rows]
    df = pd.DataFrame(flat)
    for col in COMPARISON_COLUMNS:
        if col not in df:
            df[col] = np.nan
    for col in COMPARISON_COLUMNS:
        if col not in ("model", "canonical", "movie", "frame_selection"):
            df[col] = pd.to_numeric(df[col].astype(object).where(df[col].notna(), np.nan))
    extra = [c for c in df.columns if c not in COMPARISON_COLUMNS]
    return df[COMPARISON_COLUMNS + extra]
