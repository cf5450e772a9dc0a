"""Figures for people: QA overlays with scale bars (matplotlib, Agg backend, PNG out)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from skimage.segmentation import find_boundaries  # noqa: E402

from etemseg.io.atomic import atomic_path  # noqa: E402


def _display_range(frame: np.ndarray) -> tuple[float, float]:
    finite = frame[np.isfinite(frame)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [0.5, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1)


def add_scale_bar(ax, width_px: int, pixel_size_nm: float | None) -> None:
    """Draw a scale bar of a round length in nm (about a fifth of the width) in the lower left."""
    if not pixel_size_nm:
        return
    target = width_px * pixel_size_nm / 5
    length_nm = max(v for v in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if v <= max(target, 1))
    length_px = length_nm / pixel_size_nm
    h = ax.get_ylim()[0]
    x0, y0 = 0.04 * width_px, h * 0.95
    ax.plot([x0, x0 + length_px], [y0, y0], color="white", lw=3, solid_capstyle="butt")
    ax.text(x0 + length_px / 2, y0 - 0.02 * h, f"{length_nm:g} nm", color="white",
            ha="center", va="bottom", fontsize=9)


def overlay_png(frame: np.ndarray, masks: dict[str, np.ndarray], path: str | Path, *,
                title: str = "", pixel_size_nm: float | None = None) -> Path:
    """Write a PNG of ``frame`` (grey) with the outline of each mask in its own colour.

    Parameters
    ----------
    frame : (H, W) array
        Raw frame, shown with a 0.5-99.5 percentile display range.
    masks : dict name -> (H, W) bool
        Outlines to draw; the legend shows the names.
    """
    colours = ["#ffd700", "#00e5ff", "#ff4081", "#76ff03", "#ff9100", "#b388ff"]
    h, w = frame.shape
    fig, ax = plt.subplots(figsize=(7, 7 * h / w + 0.4), dpi=110)
    lo, hi = _display_range(frame)
    ax.imshow(frame, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    handles = []
    for (name, mask), colour in zip(masks.items(), colours):
        edge = find_boundaries(np.asarray(mask, bool), mode="inner")
        rgba = np.zeros((h, w, 4))
        rgba[edge] = matplotlib.colors.to_rgba(colour)
        ax.imshow(rgba, interpolation="nearest")
        handles.append(matplotlib.lines.Line2D([], [], color=colour, label=name))
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.7)
    add_scale_bar(ax, w, pixel_size_nm)
    ax.set_title(title, fontsize=10)
    ax.set_axis_off()
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` as a PNG (atomically) and close it; return the path. Every
    figure etemseg writes goes through here."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
