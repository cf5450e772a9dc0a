"""Evaluation of trained models: threshold sweeps, line profiles, learned kernels, comparisons.

The paper's evaluation figures, computed from the workflow's stores:

* Fig. 4 — Otsu-threshold contours of several models on one test frame
  (:func:`etemseg.analysis.comparison.plot_model_contours`);
* Fig. 5 — intensity line profiles across particles, raw frame vs each model's output
  (:func:`pick_particles`, :func:`line_profiles`, :func:`plot_line_profiles`);
* Fig. 6a, Supplementary Figs. 6-8 — the single learned kernel, its fit by a horizontal Gabor +
  vertical Gabor + Gaussian, the 32 shallow-wide filters and their mean
  (:func:`plot_single_kernel`, :func:`fit_gabor_gauss`, :func:`plot_kernel_fit`,
  :func:`plot_filters`);
* Fig. 7a — precision / recall / F1 against the probability threshold (mean and std over frames)
  and the distribution of per-frame Otsu thresholds (:func:`threshold_sweep`,
  :func:`otsu_thresholds`, :func:`etemseg.analysis.comparison.plot_threshold_sweep`).

:func:`evaluate_model` ties these together for one movie x model and writes its outputs
atomically; :func:`etemseg.analysis.comparison.compare_models` turns the per-model results into
the study table (``etemseg compare``).

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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage, optimize

from etemseg.plotting import save_figure
from etemseg.analysis.scoring import equivalent_diameter_px, pixel_counts, rates, score_frames
from etemseg.errors import InputFileError
from etemseg.io.atomic import atomic_path, write_json
from etemseg.io.store import MovieStore
from etemseg.levels import dequantise, level_histogram, otsu_level, quantise, threshold_level
from etemseg.nn.checkpoint import load_model
from etemseg.nn.training import select_frames
from etemseg.plotting import plt

log = logging.getLogger(__name__)

__all__ = [
    "GABOR_PARAMS",
    "THRESHOLDS",
    "counts_at_levels",
    "evaluate_model",
    "evaluation_frames",
    "fit_gabor_gauss",
    "gabor_gauss_model",
    "level_histograms",
    "line_profiles",
    "otsu_thresholds",
    "pick_particles",
    "plot_filters",
    "plot_kernel_fit",
    "plot_line_profiles",
    "plot_single_kernel",
    "sweep_from_histograms",
    "threshold_level",
    "threshold_sweep",
]

#: Default thresholds of the sweep: 0, 0.05, ..., 1.
THRESHOLDS = np.round(np.arange(0, 1.0001, 0.05), 2)

_SWEEP_COLUMNS = ["threshold", "precision_mean", "precision_std", "recall_mean", "recall_std",
                  "f1_mean", "f1_std"]
_PROFILE_COLUMNS = ["model", "particle", "centre_y", "centre_x", "position_px", "position_nm",
                    "raw", "value"]


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


def _write_csv(df: pd.DataFrame, path: Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return path


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with 1.0 where ``den == 0`` (the convention of :func:`scoring.rates`)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)


# --------------------------------------------------------------------------------------------
# 1. threshold sweep and Otsu thresholds
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


# --------------------------------------------------------------------------------------------
# 2. line profiles
# --------------------------------------------------------------------------------------------

def pick_particles(reference_mask: np.ndarray, n: int = 3, *, min_area_px: int = 12,
                   border_factor: float = 1.5) -> pd.DataFrame:
    """Choose well-separated interior particles of different sizes for line profiles.

    Candidates are 8-connected components of at least ``min_area_px`` pixels whose centre lies at
    least ``border_factor`` diameters from the frame edge and whose gap to the nearest other
    component (centre distance minus both equivalent radii) is at least their own diameter (if
    none is that isolated, half of it; then any gap).  Among candidates sorted by area, ``n``
    are taken at evenly spaced ranks from the largest to the smallest: for ``n=3`` the largest,
    the median and the smallest.

    Parameters
    ----------
    reference_mask : (H, W) bool
        Particle mask (ground truth or pseudo-labels).
    n : int
        Number of particles wanted (fewer are returned if there are fewer candidates).

    Returns
    -------
    DataFrame
        ``particle`` (0..), ``kind`` (largest / median / smallest for n=3, else rank), ``label``,
        ``y``, ``x`` (centroid, px), ``area_px``, ``diameter_px``, ``gap_px``; largest first.
    """
    from skimage.measure import label as cc_label
    from skimage.measure import regionprops

    cols = ["particle", "kind", "label", "y", "x", "area_px", "diameter_px", "gap_px"]
    mask = np.asarray(reference_mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"reference_mask: expected (H, W), got shape {mask.shape}")
    H, W = mask.shape
    props = regionprops(cc_label(mask, connectivity=2))
    if not props or n < 1:
        return pd.DataFrame(columns=cols)
    cy = np.array([p.centroid[0] for p in props])
    cx = np.array([p.centroid[1] for p in props])
    area = np.array([p.area for p in props], dtype=np.float64)
    diam = equivalent_diameter_px(area)
    if len(props) > 1:
        dist = np.hypot(cy[:, None] - cy[None], cx[:, None] - cx[None])
        gap = dist - diam[:, None] / 2 - diam[None] / 2
        np.fill_diagonal(gap, np.inf)
        gap = gap.min(axis=1)
    else:
        gap = np.full(1, np.inf)
    edge = np.minimum.reduce([cy, cx, H - 1 - cy, W - 1 - cx])
    ok = (area >= min_area_px) & (edge >= border_factor * diam)
    cand = np.zeros(len(props), bool)
    for need in (1.0, 0.5, -np.inf):
        cand = ok & (gap >= need * diam)
        if cand.any():
            break
    ids = np.flatnonzero(cand)
    if ids.size == 0:
        return pd.DataFrame(columns=cols)
    ids = ids[np.argsort(-area[ids], kind="stable")]   # largest first
    ranks = np.unique(np.round(np.linspace(0, len(ids) - 1, min(n, len(ids)))).astype(int))
    kinds = (["largest", "median", "smallest"] if len(ranks) == 3 else
             ["largest", "smallest"] if len(ranks) == 2 else ["largest"] if len(ranks) == 1
             else [f"rank{r}" for r in ranks])
    rows = []
    for j, (r, kind) in enumerate(zip(ranks, kinds)):
        i = ids[r]
        rows.append({"particle": j, "kind": kind, "label": int(props[i].label),
                     "y": float(cy[i]), "x": float(cx[i]), "area_px": int(area[i]),
                     "diameter_px": float(diam[i]), "gap_px": float(gap[i])})
    return pd.DataFrame(rows, columns=cols)


def line_profiles(frame: np.ndarray, probs: Mapping[str, np.ndarray],
                  centres: Iterable[Sequence[float]], half_length_px: float, angle: float = 0.0,
                  *, pixel_size_nm: float | None = None, step_px: float = 0.5) -> pd.DataFrame:
    """Intensity profiles through particle centres: raw frame and each model's output.

    Parameters
    ----------
    frame : (H, W)
        Raw frame.
    probs : dict name -> (H, W) float
        Each model's particle probability (or any map to profile).
    centres : sequence of (y, x)
        Profile centres, px (e.g. ``pick_particles(...)[["y", "x"]].to_numpy()``).
    half_length_px : float
        The profile runs from ``-half_length_px`` to ``+half_length_px`` around each centre.
    angle : float
        Direction in degrees, counter-clockwise from the +x axis in image display (0 =
        horizontal, 90 = vertical upwards).
    pixel_size_nm : float, optional
        Gives ``position_nm``; NaN without.
    step_px : float
        Sampling step along the line; values are bilinearly interpolated
        (``scipy.ndimage.map_coordinates``, order 1, nearest-edge mode).

    Returns
    -------
    DataFrame
        One row per model, particle and position: ``model, particle, centre_y, centre_x,
        position_px, position_nm, raw, value``.
    """
    frame = np.asarray(frame, dtype=np.float64)
    if frame.ndim != 2:
        raise ValueError(f"frame: expected (H, W), got shape {frame.shape}")
    for name, p in probs.items():
        if np.shape(p) != frame.shape:
            raise ValueError(f"probs[{name!r}]: shape {np.shape(p)} differs from the frame's "
                             f"{frame.shape}")
    if not half_length_px > 0 or not step_px > 0:
        raise ValueError("half_length_px and step_px must be positive")
    m = math.floor(half_length_px / step_px + 1e-9)
    s = np.arange(-m, m + 1) * step_px
    a = math.radians(angle)
    dy, dx = -math.sin(a), math.cos(a)
    nm = s * pixel_size_nm if pixel_size_nm else np.full(s.shape, np.nan)
    parts = []
    for j, (cy, cx) in enumerate(centres):
        coords = np.vstack([cy + s * dy, cx + s * dx])
        raw = ndimage.map_coordinates(frame, coords, order=1, mode="nearest")
        for name, p in probs.items():
            val = ndimage.map_coordinates(np.asarray(p, np.float64), coords, order=1,
                                          mode="nearest")
            parts.append(pd.DataFrame({"model": name, "particle": j, "centre_y": float(cy),
                                       "centre_x": float(cx), "position_px": s,
                                       "position_nm": nm, "raw": raw, "value": val}))
    if not parts:
        return pd.DataFrame(columns=_PROFILE_COLUMNS)
    return pd.concat(parts, ignore_index=True)[_PROFILE_COLUMNS]


def plot_line_profiles(profiles: pd.DataFrame, path: str | Path, *, title: str = "") -> Path:
    """One panel per particle: raw intensity (grey, left axis) and each model's output (right).

    ``profiles`` is a :func:`line_profiles` table, possibly concatenated over several models.
    """
    particles = sorted(profiles["particle"].unique()) if len(profiles) else []
    n = max(1, len(particles))
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.2), dpi=110, squeeze=False)
    if not particles:
        axes[0, 0].text(0.5, 0.5, "no isolated particle to profile", ha="center", va="center")
        axes[0, 0].set_axis_off()
    use_nm = len(profiles) > 0 and profiles["position_nm"].notna().all()
    xcol = "position_nm" if use_nm else "position_px"
    handles = []
    for ax, j in zip(axes[0], particles):
        d = profiles[profiles["particle"] == j]
        first = d[d["model"] == d["model"].iloc[0]]
        h_raw, = ax.plot(first[xcol], first["raw"], color="0.35", lw=1.5, label="raw frame")
        ax.set_xlabel("position (nm)" if use_nm else "position (px)")
        ax.set_ylabel("raw intensity")
        ax2 = ax.twinx()
        hs = [h_raw]
        for k, (name, dm) in enumerate(d.groupby("model", sort=False)):
            h, = ax2.plot(dm[xcol], dm["value"], color=f"C{k}", lw=1.2, label=str(name))
            hs.append(h)
        ax2.set_ylim(-0.03, 1.03)
        ax2.set_ylabel("model output (particle probability)")
        ax.set_title(f"particle {j} at (y={first['centre_y'].iloc[0]:.0f}, "
                     f"x={first['centre_x'].iloc[0]:.0f})", fontsize=9)
        handles = hs
    if handles:
        fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 7), fontsize=8,
                   frameon=False, bbox_to_anchor=(0.5, 1.0))
    fig.suptitle(title, fontsize=10, y=0.02, va="bottom")
    fig.tight_layout(rect=(0, 0.05, 1, 0.9))
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------------
# 3. kernel figures
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
# 4. Gabor + Gabor + Gaussian fit of a kernel
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


# --------------------------------------------------------------------------------------------
# 5. one movie x model
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


def _reference_scores(neg: np.ndarray, pos: np.ndarray, otsu_lv: np.ndarray,
                      thresholds) -> tuple[pd.DataFrame, dict]:
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
        :func:`level_histograms` of the probabilities against the pseudo-labels.
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
    sweep, vs_pseudo = _reference_scores(neg, pos, otsu_lv, thresholds)
    vs_pseudo["stored_mask"] = stored
    outputs = [_write_csv(sweep, out_dir / "threshold_sweep.csv")]
    otsu_df = pd.DataFrame({"frame": idx, "otsu_level": otsu_lv,
                            "otsu_threshold": otsu_lv / 255.0})
    outputs.append(_write_csv(otsu_df, out_dir / "otsu_thresholds.csv"))
    if truth_hist is None:
        return otsu_lv, vs_pseudo, None, outputs
    sweep_t, vs_truth = _reference_scores(*truth_hist, otsu_lv, thresholds)
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

    * ``threshold_sweep.csv`` — :func:`threshold_sweep` vs the pseudo-labels (and
      ``threshold_sweep_truth.csv`` vs ground truth);
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
