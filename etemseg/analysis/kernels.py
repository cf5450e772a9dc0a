"""Learned-kernel analysis and threshold-sweep statistics of model outputs (arrays in, arrays,
DataFrames and figures out; no stage imports).

* Fig. 6a, Supplementary Figs. 6-8 — the single learned kernel, its fit by a horizontal Gabor +
  vertical Gabor + Gaussian, the 32 shallow-wide filters and their mean
  (:func:`plot_single_kernel`, :func:`fit_gabor_gauss`, :func:`plot_kernel_fit`,
  :func:`plot_filters`);
* Fig. 7a — precision / recall / F1 against the probability threshold (mean and std over frames)
  and the per-frame Otsu thresholds (:func:`threshold_sweep`, :func:`otsu_thresholds`,
  :func:`reference_scores`; plotted by :func:`etemseg.analysis.comparison.plot_threshold_sweep`).

:func:`etemseg.stages.evaluate.evaluate_model` drives these for one movie x model.

Thresholds
----------
Probabilities are stored as uint8 levels ``q = round(255 p)`` (see :mod:`etemseg.levels`).  A pixel
is positive at threshold ``t`` when ``p > t``, i.e. ``q > floor(255 t)`` — the semantics of the
inference masks (``q > level``).  All counts at all thresholds come from one 256-bin histogram per
frame and class of the reference (cumulative sums), never from a pass over the pixels per
threshold.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import optimize

from etemseg.analysis.scoring import rates
from etemseg.levels import level_histogram, otsu_level, quantise, threshold_level
from etemseg.plotting import plt, save_figure

log = logging.getLogger(__name__)

__all__ = [
    "GABOR_PARAMS",
    "THRESHOLDS",
    "counts_at_levels",
    "fit_gabor_gauss",
    "gabor_gauss_model",
    "level_histograms",
    "otsu_thresholds",
    "plot_filters",
    "plot_kernel_fit",
    "plot_single_kernel",
    "reference_scores",
    "sweep_from_histograms",
    "threshold_sweep",
]

#: Default thresholds of the sweep: 0, 0.05, ..., 1.
THRESHOLDS = np.round(np.arange(0, 1.0001, 0.05), 2)

_SWEEP_COLUMNS = ["threshold", "precision_mean", "precision_std", "recall_mean", "recall_std",
                  "f1_mean", "f1_std"]


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------

def _as_levels(prob) -> np.ndarray:
    """uint8 probability levels (T, H, W); float probabilities in [0, 1] are quantised."""
    q = np.asarray(prob)
    if q.dtype != np.uint8:
        if q.dtype.kind != "f":
            raise TypeError(f"probabilities: expected uint8 levels or floats in [0, 1], "
                            f"got {q.dtype}")
        q = quantise(np.nan_to_num(q, nan=0.0))
    return q[None] if q.ndim == 2 else q


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with 1.0 where ``den == 0`` (the convention of :func:`scoring.rates`)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)


# --------------------------------------------------------------------------------------------
# threshold sweep and Otsu thresholds
# --------------------------------------------------------------------------------------------

def level_histograms(prob_uint8, reference) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame 256-bin histograms of the probability levels of reference-negative and -positive
    pixels.

    Parameters
    ----------
    prob_uint8 : (T, H, W) or (H, W) uint8
        Probability levels ``round(255 p)``; floats in [0, 1] are quantised first.
    reference : same shape, bool
        Reference mask (pseudo-labels or ground truth).

    Returns
    -------
    neg, pos : (T, 256) int64
        ``neg[i, l]`` / ``pos[i, l]``: pixels of frame ``i`` at level ``l`` outside / inside the
        reference.
    """
    q = _as_levels(prob_uint8)
    ref = np.asarray(reference, dtype=bool)
    ref = ref[None] if ref.ndim == 2 else ref
    if ref.shape != q.shape:
        raise ValueError(f"reference shape {ref.shape} differs from probabilities {q.shape}")
    out = np.empty((len(q), 2, 256), np.int64)
    for i in range(len(q)):
        code = q[i].ravel().astype(np.uint16)
        code |= ref[i].ravel().view(np.uint8).astype(np.uint16) << 8
        out[i] = np.bincount(code, minlength=512).reshape(2, 256)
    return out[:, 0], out[:, 1]


def counts_at_levels(neg: np.ndarray, pos: np.ndarray, levels) -> dict:
    """TP / FP / FN pixel counts of ``q > level`` from level histograms.

    Parameters
    ----------
    neg, pos : (T, 256)
        From :func:`level_histograms`.
    levels : int array, shape (L,) or (T, L)
        Levels -1..255.  A 1-D array of length L gives counts at these levels for every frame;
        a (T, 1) array gives one level per frame (e.g. its Otsu level).

    Returns
    -------
    dict
        ``tp``, ``fp``, ``fn`` arrays of shape (T, L).
    """
    neg = np.atleast_2d(np.asarray(neg, np.int64))
    pos = np.atleast_2d(np.asarray(pos, np.int64))
    zero = np.zeros((len(neg), 1), np.int64)
    cneg = np.concatenate([zero, np.cumsum(neg, axis=1)], axis=1)  # cneg[:, l+1] = #(q <= l)
    cpos = np.concatenate([zero, np.cumsum(pos, axis=1)], axis=1)
    lv = np.asarray(levels, np.int64)
    lv = lv.reshape(1, -1) if lv.ndim <= 1 else lv
    idx = np.broadcast_to(lv, (len(neg), lv.shape[1])) + 1
    fn = np.take_along_axis(cpos, idx, axis=1)
    below_neg = np.take_along_axis(cneg, idx, axis=1)
    tp = cpos[:, -1:] - fn
    fp = cneg[:, -1:] - below_neg
    return {"tp": tp, "fp": fp, "fn": fn}


def _rates_arrays(tp, fp, fn) -> dict:
    """Vectorised :func:`scoring.rates` (same conventions: 1.0 where nothing to find/miss)."""
    return {"precision": _safe_div(tp, tp + fp), "recall": _safe_div(tp, tp + fn),
            "f1": _safe_div(2 * tp, 2 * tp + fp + fn)}


def sweep_from_histograms(neg: np.ndarray, pos: np.ndarray,
                          thresholds=THRESHOLDS) -> pd.DataFrame:
    """Precision / recall / F1 (mean and std over frames) at each threshold from histograms."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    r = _rates_arrays(**counts_at_levels(neg, pos, threshold_level(thresholds)))
    df = pd.DataFrame({"threshold": thresholds})
    for key in ("precision", "recall", "f1"):
        df[f"{key}_mean"] = r[key].mean(axis=0)
        df[f"{key}_std"] = r[key].std(axis=0)
    return df[_SWEEP_COLUMNS]


def threshold_sweep(prob_uint8, reference, thresholds=THRESHOLDS) -> pd.DataFrame:
    """Pixel precision, recall and F1 against a reference at each probability threshold.

    Parameters
    ----------
    prob_uint8 : (T, H, W) uint8
        Probability levels ``round(255 p)`` (as in ``prob.zarr``).
    reference : (T, H, W) bool
        Reference mask per frame.
    thresholds : sequence of float
        Probability thresholds in [0, 1]; a pixel is positive when ``p > t``.

    Returns
    -------
    DataFrame
        Columns ``threshold, precision_mean, precision_std, recall_mean, recall_std, f1_mean,
        f1_std``; means and (population) standard deviations over frames.  Precision is 1 where
        nothing is predicted, recall 1 where the reference is empty (as :func:`scoring.rates`).

    Notes
    -----
    One histogram pass per frame; every threshold then costs O(256) per frame.
    """
    neg, pos = level_histograms(prob_uint8, reference)
    return sweep_from_histograms(neg, pos, thresholds)


def otsu_thresholds(prob_uint8) -> np.ndarray:
    """Per-frame Otsu threshold of the probabilities, in [0, 1] (``mask = p > threshold``).

    Parameters
    ----------
    prob_uint8 : (T, H, W) or (H, W) uint8
        Probability levels.

    Returns
    -------
    (T,) float64
        :func:`etemseg.levels.otsu_level` of each frame's 256-bin histogram, divided by 255.
    """
    q = _as_levels(prob_uint8)
    return np.array([otsu_level(level_histogram(f)) for f in q], dtype=np.float64) / 255.0


def reference_scores(neg: np.ndarray, pos: np.ndarray, otsu_lv: np.ndarray,
                     thresholds) -> tuple[pd.DataFrame, dict]:
    """The sweep of :func:`sweep_from_histograms` and the scores of the per-frame Otsu levels
    ``otsu_lv`` (means, stds, pooled counts), the best threshold and those at 0.5."""
    sweep = sweep_from_histograms(neg, pos, thresholds)
    c = counts_at_levels(neg, pos, otsu_lv.reshape(-1, 1))
    r = _rates_arrays(**c)
    pooled = rates(int(c["tp"].sum()), int(c["fp"].sum()), int(c["fn"].sum()))
    b = int(np.argmax(sweep["f1_mean"].to_numpy()))
    at_half = sweep.loc[np.isclose(sweep["threshold"], 0.5)]
    out = {
        "otsu": {**{f"{k}_mean": float(v.mean()) for k, v in r.items()},
                 **{f"{k}_std": float(v.std()) for k, v in r.items()},
                 "pooled": pooled},
        "best": {"threshold": float(sweep["threshold"].iloc[b]),
                 "f1_mean": float(sweep["f1_mean"].iloc[b]),
                 "f1_std": float(sweep["f1_std"].iloc[b])},
        "at_0.5": ({"f1_mean": float(at_half["f1_mean"].iloc[0]),
                    "precision_mean": float(at_half["precision_mean"].iloc[0]),
                    "recall_mean": float(at_half["recall_mean"].iloc[0])}
                   if len(at_half) else None),
    }
    return sweep, out


# --------------------------------------------------------------------------------------------
# kernel figures
# --------------------------------------------------------------------------------------------

def _kernel_image(ax, kernel: np.ndarray, vmax: float | None = None):
    kernel = np.asarray(kernel, dtype=np.float64)
    v = vmax if vmax else float(np.nanmax(np.abs(kernel))) or 1.0
    im = ax.imshow(kernel, cmap="RdBu_r", vmin=-v, vmax=v, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def plot_single_kernel(kernel: np.ndarray, path: str | Path, *, title: str = "") -> Path:
    """The single learned ``k x k`` filter as an image with a colour bar (Fig. 6a).

    Diverging colour map symmetric about 0 (red positive, blue negative).
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim != 2:
        raise ValueError(f"kernel: expected (k, k), got shape {kernel.shape}")
    fig, ax = plt.subplots(figsize=(4.2, 3.6), dpi=110)
    im = _kernel_image(ax, kernel)
    fig.colorbar(im, ax=ax, label="weight")
    ax.set_title(title or f"learned {kernel.shape[0]}x{kernel.shape[1]} filter", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _montage(filters: np.ndarray, ncols: int) -> np.ndarray:
    """Tile (n, k, k) filters into one image, one NaN pixel between tiles."""
    n, kh, kw = filters.shape
    nrows = math.ceil(n / ncols)
    out = np.full((nrows * (kh + 1) - 1, ncols * (kw + 1) - 1), np.nan)
    for i, f in enumerate(filters):
        r, c = divmod(i, ncols)
        out[r * (kh + 1):r * (kh + 1) + kh, c * (kw + 1):c * (kw + 1) + kw] = f
    return out


def plot_filters(filters: np.ndarray, path: str | Path, *, title: str = "",
                 ncols: int = 8) -> Path:
    """Grid of the shallow-wide CNN's filters plus their mean (Supplementary Figs. 7/8).

    Left: all filters tiled row by row (filter ``i`` at row ``i // ncols``, column
    ``i % ncols``, numbered), one symmetric colour scale and colour bar; right: the mean filter
    with its own colour bar.
    """
    filters = np.asarray(filters, dtype=np.float64)
    if filters.ndim != 3:
        raise ValueError(f"filters: expected (n, k, k), got shape {filters.shape}")
    n, kh, kw = filters.shape
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, (ax, ax_mean) = plt.subplots(
        1, 2, figsize=(1.1 * ncols + 4.6, max(3.4, 1.1 * nrows + 1.0)), dpi=110,
        gridspec_kw={"width_ratios": [ncols, 0.45 * max(nrows, 2)]})
    im = _kernel_image(ax, _montage(filters, ncols), float(np.nanmax(np.abs(filters))) or 1.0)
    ax.set_facecolor("white")
    for i in range(n):
        r, c = divmod(i, ncols)
        ax.text(c * (kw + 1) - 0.3, r * (kh + 1) - 0.3, str(i), fontsize=6, va="top",
                color="0.15")
    fig.colorbar(im, ax=ax, shrink=0.8, label="weight")
    ax.set_title(title or f"{n} learned {kh}x{kw} filters", fontsize=10)
    im_mean = _kernel_image(ax_mean, filters.mean(axis=0))
    fig.colorbar(im_mean, ax=ax_mean, shrink=0.8, label="weight")
    ax_mean.set_title("mean filter", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------------
# Gabor + Gabor + Gaussian fit of a kernel
# --------------------------------------------------------------------------------------------

#: Parameters of :func:`gabor_gauss_model` (frequencies in cycles/px, phases in radians,
#: centre offsets ``x0, y0`` in px from the kernel centre, x = column, y = row).
GABOR_PARAMS = ("x0", "y0", "a_h", "sigma_h", "freq_h", "phase_h", "a_v", "sigma_v", "freq_v",
                "phase_v", "a_g", "sigma_g", "offset")


def _grid(shape) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    y, x = np.mgrid[:h, :w].astype(np.float64)
    return y - (h - 1) / 2, x - (w - 1) / 2


def _components(shape, x0, y0, sigma_h, freq_h, sigma_v, freq_v, sigma_g):
    """Basis images: h-Gabor cos/sin, v-Gabor cos/sin, Gaussian, constant (6, H, W)."""
    y, x = _grid(shape)
    xs, ys = x - x0, y - y0
    r2 = xs ** 2 + ys ** 2
    eh = np.exp(-r2 / (2 * sigma_h ** 2))
    ev = np.exp(-r2 / (2 * sigma_v ** 2))
    th, tv = 2 * np.pi * freq_h * xs, 2 * np.pi * freq_v * ys
    return np.stack([eh * np.cos(th), eh * np.sin(th), ev * np.cos(tv), ev * np.sin(tv),
                     np.exp(-r2 / (2 * sigma_g ** 2)), np.ones(shape)])


def gabor_gauss_model(params: Mapping[str, float], shape) -> np.ndarray:
    """Horizontal Gabor + vertical Gabor + isotropic Gaussian + offset on a ``shape`` grid.

    ``a_h exp(-r^2 / 2 sigma_h^2) cos(2 pi freq_h (x - x0) + phase_h)``
    ``+ a_v exp(-r^2 / 2 sigma_v^2) cos(2 pi freq_v (y - y0) + phase_v)``
    ``+ a_g exp(-r^2 / 2 sigma_g^2) + offset``, with ``r^2 = (x - x0)^2 + (y - y0)^2`` and x, y
    (column, row) measured from the kernel centre.  "Horizontal" Gabor: the carrier oscillates
    along x; "vertical": along y.  Isotropic envelopes.

    Parameters
    ----------
    params : mapping
        Values for every name in :data:`GABOR_PARAMS`.
    shape : int or (H, W)
        Kernel shape.
    """
    shape = (shape, shape) if np.isscalar(shape) else tuple(shape)
    p = {k: float(params[k]) for k in GABOR_PARAMS}
    b = _components(shape, p["x0"], p["y0"], p["sigma_h"], p["freq_h"], p["sigma_v"],
                    p["freq_v"], p["sigma_g"])
    coef = [p["a_h"] * math.cos(p["phase_h"]), -p["a_h"] * math.sin(p["phase_h"]),
            p["a_v"] * math.cos(p["phase_v"]), -p["a_v"] * math.sin(p["phase_v"]),
            p["a_g"], p["offset"]]
    return np.tensordot(np.asarray(coef), b, axes=1)


def _wrap(phase: float) -> float:
    return float((phase + np.pi) % (2 * np.pi) - np.pi)


def fit_gabor_gauss(kernel: np.ndarray, *, n_starts: int | None = None) -> dict:
    """Least-squares fit of a horizontal Gabor + vertical Gabor + Gaussian (+ offset).

    Variable projection: the 7 non-linear parameters (centre, two Gabor envelope widths and
    frequencies, Gaussian width) are fitted by ``scipy.optimize.least_squares`` (bounded:
    widths 0.3..2k px, frequencies 0..0.5 cycles/px, centre within the kernel), and for each of
    them the 6 linear coefficients (cos and sin carrier amplitudes of each Gabor, which give its
    amplitude and phase; the Gaussian amplitude; the offset) are solved exactly by linear least
    squares.  Several starts over the two carrier frequencies; the best is kept.

    Parameters
    ----------
    kernel : (k, k)
        Learned filter.

    Returns
    -------
    dict
        ``params`` (every name of :data:`GABOR_PARAMS`; amplitudes >= 0 with the sign in the phase
        for the Gabors), ``model`` (k, k), ``residual`` = kernel - model, ``components``
        (``gabor_h``, ``gabor_v``, ``gaussian`` images, offset excluded), ``r2`` (1 - SS_res /
        SS_tot; NaN for a constant kernel not fitted exactly), ``rmse``, ``success``.

    Notes
    -----
    On pure noise the fit still returns (with a low ``r2``); it never raises for finite input.
    """
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim != 2 or min(k.shape) < 2:
        raise ValueError(f"kernel: expected (k, k) with k >= 2, got shape {k.shape}")
    if not np.isfinite(k).all():
        raise ValueError("kernel: contains NaN or inf")
    shape = k.shape
    size = max(shape)
    mean, scale = float(k.mean()), float(k.std()) or 1.0
    kn = ((k - mean) / scale).ravel()

    def project(theta):
        basis = _components(shape, *theta).reshape(6, -1).T
        coef, *_ = np.linalg.lstsq(basis, kn, rcond=1e-10)
        return coef, basis @ coef - kn

    def residual(theta):
        return project(theta)[1]

    cy, cx = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    lo = np.array([-cx, -cy, 0.3, 0.0, 0.3, 0.0, 0.3])
    hi = np.array([cx, cy, 2.0 * size, 0.5, 2.0 * size, 0.5, 2.0 * size])
    freqs = (0.06, 0.15, 0.3)
    starts = [(0.0, 0.0, size / 4, fh, size / 4, fv, size / 5) for fh in freqs for fv in freqs]
    if n_starts is not None:
        starts = starts[:max(1, n_starts)]
    best = None
    for s in starts:
        s = np.clip(np.asarray(s, dtype=np.float64), lo + 1e-9, hi - 1e-9)
        try:
            res = optimize.least_squares(residual, s, bounds=(lo, hi), x_scale="jac",
                                         max_nfev=200)
        except (ValueError, np.linalg.LinAlgError) as exc:  # pragma: no cover - defensive
            log.debug("Gabor fit start %s failed: %s", s, exc)
            continue
        if best is None or res.cost < best.cost:
            best = res
    theta = best.x if best is not None else np.clip(np.asarray(starts[0]), lo, hi)
    coef, _ = project(theta)
    coef = coef * scale
    coef[5] += mean
    return _gabor_fit_result(k, theta, coef, bool(best is not None and best.success))


def _gabor_fit_result(k: np.ndarray, theta: np.ndarray, coef: np.ndarray, success: bool) -> dict:
    """The result of :func:`fit_gabor_gauss` for kernel ``k`` from the fitted non-linear
    parameters ``theta`` and linear coefficients ``coef`` (of :func:`_components`)."""
    x0, y0, sh, fh, sv, fv, sg = (float(v) for v in theta)
    a_h, a_v = float(np.hypot(coef[0], coef[1])), float(np.hypot(coef[2], coef[3]))
    params = {"x0": x0, "y0": y0,
              "a_h": a_h, "sigma_h": sh, "freq_h": fh,
              "phase_h": _wrap(math.atan2(-coef[1], coef[0])) if a_h > 0 else 0.0,
              "a_v": a_v, "sigma_v": sv, "freq_v": fv,
              "phase_v": _wrap(math.atan2(-coef[3], coef[2])) if a_v > 0 else 0.0,
              "a_g": float(coef[4]), "sigma_g": sg, "offset": float(coef[5])}
    basis = _components(k.shape, *theta)
    comps = {"gabor_h": coef[0] * basis[0] + coef[1] * basis[1],
             "gabor_v": coef[2] * basis[2] + coef[3] * basis[3],
             "gaussian": coef[4] * basis[4]}
    model = comps["gabor_h"] + comps["gabor_v"] + comps["gaussian"] + coef[5]
    resid = k - model
    ss_res = float(np.sum(resid ** 2))
    ss_tot = float(np.sum((k - float(k.mean())) ** 2))
    if ss_tot > 0:
        r2 = 1.0 - ss_res / ss_tot
    else:
        r2 = 1.0 if ss_res <= 1e-24 else float("nan")
    return {"params": params, "model": model, "residual": resid, "components": comps,
            "r2": float(r2), "rmse": float(math.sqrt(ss_res / k.size)), "success": success}


def plot_kernel_fit(kernel: np.ndarray, fit: dict, path: str | Path, *, title: str = "") -> Path:
    """Kernel | fit | residual (top row) and the fit's three components (bottom row: horizontal
    Gabor, vertical Gabor, Gaussian), all on the kernel's colour scale with one colour bar;
    fitted parameters in the title (Supplementary Fig. 6)."""
    kernel = np.asarray(kernel, dtype=np.float64)
    p = fit["params"]
    comps = fit.get("components") or {}
    v = max([float(np.max(np.abs(a))) for a in (kernel, fit["model"], *comps.values())]) or 1.0
    fig, axes = plt.subplots(2, 3, figsize=(10, 7), dpi=110)
    panels = [(kernel, "kernel"), (fit["model"], f"fit (R$^2$ = {fit['r2']:.3f})"),
              (fit["residual"], "residual")]
    panels += [(comps.get("gabor_h", np.zeros_like(kernel)), "horizontal Gabor"),
               (comps.get("gabor_v", np.zeros_like(kernel)), "vertical Gabor"),
               (comps.get("gaussian", np.zeros_like(kernel)), "Gaussian")]
    for ax, (img, name) in zip(axes.ravel(), panels):
        im = _kernel_image(ax, img, v)
        ax.set_title(name, fontsize=10)
    text = (f"h-Gabor: a={p['a_h']:.3g}, $\\sigma$={p['sigma_h']:.2f} px, "
            f"f={p['freq_h']:.3f}/px, $\\phi$={p['phase_h']:.2f}   "
            f"v-Gabor: a={p['a_v']:.3g}, $\\sigma$={p['sigma_v']:.2f} px, "
            f"f={p['freq_v']:.3f}/px, $\\phi$={p['phase_v']:.2f}\n"
            f"Gaussian: a={p['a_g']:.3g}, $\\sigma$={p['sigma_g']:.2f} px   "
            f"offset={p['offset']:.3g}   centre=({p['x0']:.2f}, {p['y0']:.2f}) px")
    fig.suptitle(((title + "\n") if title else "") + text, fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    fig.colorbar(im, cax=fig.add_axes((0.91, 0.15, 0.02, 0.65)), label="weight (one scale)")
    return save_figure(fig, path)
