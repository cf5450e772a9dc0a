"""Realistic masks from the simulator's truth: what a detector makes of a movie at its limit.

Until the simulator's realistic imaging mode lands, tracking is validated on *degraded truth*:
the truth label images of :func:`etemseg.synth.simulate` turned into the masks a segmentation at
the detection limit gives.  Three degradations, all seeded (``numpy.random.default_rng(seed)``)
and time-correlated where the physics is:

* **Visibility** (flicker at the detection limit).  Every truth particle ``i`` has a score
  ``s_i(t) = (r_i(t) - det_radius_nm) / det_width_nm + z_i(t)``, ``r`` its equivalent radius in
  the truth image, ``z_i`` an Ornstein-Uhlenbeck process (standard deviation ``flicker_sd``,
  correlation time ``flicker_ms``: slowly varying local contrast, defocus, support thickness).
  The particle is in the mask while ``s_i > 0``: big particles always, particles near
  ``det_radius_nm`` in and out for stretches of frames, ripening particles fade out before they
  vanish.
* **Boundary jitter**: each visible particle, independently per frame, is eroded by one pixel
  (probability ``jitter``), dilated by one pixel into the background (probability ``jitter``) or
  left alone.
* **Touching merges**: two visible particles whose surfaces are closer than ``bridge_gap_px``
  are joined in pixels (a 2-px-wide bridge between their centres) in a frame with probability
  ``bridge_prob`` -- the mask shows one body before the real merge, flickering.

Components under ``min_area_px`` are dropped (as the measurement stage does).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from etemseg.synth import SynthParams, simulate

__all__ = ["Degrade", "degraded_masks"]


@dataclass(frozen=True)
class Degrade:
    """Parameters of the detector model (see the module docstring); lengths in nm or px."""

    det_radius_nm: float = 1.1
    det_width_nm: float = 0.25
    flicker_sd: float = 1.0
    flicker_ms: float = 15.0
    jitter: float = 0.25
    bridge_gap_px: float = 1.5
    bridge_prob: float = 0.5
    min_area_px: int = 20
    seed: int = 0


def _jitter(lab: np.ndarray, state: np.ndarray) -> np.ndarray:
    """Mask of ``lab`` with particle ``i`` eroded (state -1), kept (0) or dilated (+1) by 1 px."""
    fp = np.ones((3, 3), bool)
    lo = ndimage.minimum_filter(lab, footprint=fp, mode="nearest")
    hi = ndimage.maximum_filter(lab, footprint=fp, mode="nearest")
    st_lab = state[lab]
    keep = (lab > 0) & ((st_lab >= 0) | ((lo == lab) & (hi == lab)))
    grow = (lab == 0) & (hi > 0) & (state[hi] > 0)
    return keep | grow


def _bridges(mask: np.ndarray, cy: np.ndarray, cx: np.ndarray, r: np.ndarray, gap: float,
             prob: float, rng: np.random.Generator) -> None:
    """Paint 2-px-wide bridges (in place) between close particle pairs, each with ``prob``."""
    if cy.size < 2:
        return
    tree = cKDTree(np.column_stack([cy, cx]))
    pairs = tree.query_pairs(2 * float(r.max()) + gap, output_type="ndarray")
    h, w = mask.shape
    for i, j in pairs:
        d = np.hypot(cy[i] - cy[j], cx[i] - cx[j])
        if d - r[i] - r[j] >= gap or rng.random() >= prob:
            continue
        s = np.linspace(0, 1, int(2 * d) + 2)
        yy = cy[i] + s * (cy[j] - cy[i])
        xx = cx[i] + s * (cx[j] - cx[i])
        for oy, ox in ((0, 0), (0.5, 0), (0, 0.5), (0.5, 0.5)):
            iy = np.clip(np.round(yy + oy - 0.25).astype(int), 0, h - 1)
            ix = np.clip(np.round(xx + ox - 0.25).astype(int), 0, w - 1)
            mask[iy, ix] = True


def degraded_masks(params: SynthParams, deg: Degrade = Degrade()
                   ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Simulate ``params`` and yield ``(mask, truth_labels)`` per frame.

    Parameters
    ----------
    params : SynthParams
        The movie (its images are not used, only the truth labels).
    deg : Degrade
        The detector model.

    Yields
    ------
    mask : (H, W) bool
        The degraded mask (components under ``deg.min_area_px`` removed).
    truth_labels : (H, W) uint32
        The simulator's truth particle ids of that frame.
    """
    rng = np.random.default_rng(deg.seed)
    a = float(np.exp(-1000.0 / (params.fps * deg.flicker_ms)))
    z: dict[int, float] = {}
    ps = params.pixel_size_nm
    for _, truth in simulate(params):
        lab = truth.astype(np.int64)
        n = int(lab.max()) + 1
        area = np.bincount(lab.ravel(), minlength=n).astype(float)
        ids = np.flatnonzero(area[1:] > 0) + 1
        zz = np.array([a * z[i] + np.sqrt(1 - a * a) * deg.flicker_sd * rng.standard_normal()
                       if i in z else deg.flicker_sd * rng.standard_normal()
                       for i in ids.tolist()])
        z = dict(zip(ids.tolist(), zz.tolist()))
        r_px = np.sqrt(area[ids] / np.pi)
        visible = (r_px * ps - deg.det_radius_nm) / deg.det_width_nm + zz > 0
        state = np.zeros(n, np.int64)
        u = rng.random(ids.size)
        state[ids] = np.where(u < deg.jitter, -1, np.where(u < 2 * deg.jitter, 1, 0))
        shown = np.zeros(n, np.int64)
        shown[ids[visible]] = ids[visible]
        vis_lab = shown[lab]
        mask = _jitter(vis_lab, state)
        yy, xx = np.indices(lab.shape)
        flat = lab.ravel()
        cy = np.bincount(flat, weights=yy.ravel(), minlength=n)[ids] / area[ids]
        cx = np.bincount(flat, weights=xx.ravel(), minlength=n)[ids] / area[ids]
        _bridges(mask, cy[visible], cx[visible], r_px[visible], deg.bridge_gap_px,
                 deg.bridge_prob, rng)
        comp, m = ndimage.label(mask, np.ones((3, 3), bool))
        small = np.bincount(comp.ravel(), minlength=m + 1) < deg.min_area_px
        small[0] = True
        mask &= ~small[comp]
        yield mask, truth
