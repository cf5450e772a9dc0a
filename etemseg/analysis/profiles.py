"""Intensity line profiles across particles: raw frame vs each model's output (Fig. 5).

:func:`pick_particles` chooses well-separated interior particles of different sizes,
:func:`line_profiles` samples the frame and each model's output along lines through them and
:func:`plot_line_profiles` draws them.  Arrays in, DataFrames and figures out; no stage imports.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from etemseg.analysis.scoring import equivalent_diameter_px
from etemseg.plotting import plt, save_figure

__all__ = ["line_profiles", "pick_particles", "plot_line_profiles"]

_PROFILE_COLUMNS = ["model", "particle", "centre_y", "centre_x", "position_px", "position_nm",
                    "raw", "value"]


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
