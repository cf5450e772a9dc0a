"""Global stage drift of a movie, estimated from the detections alone, and its use.

Convention (shared with :mod:`etemseg.synth`): *image position = sample position + drift*; the
cumulative drift is zero at the first frame.  A drift table has one row per frame of the movie:
``frame``, ``dy_px``, ``dx_px`` (cumulative, px) and, from :func:`estimate_drift`, the per-pair
steps, their running median and the number of matches behind each step.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from etemseg.errors import ConfigError, EtemsegError
from etemseg.tracking.detections import Detections, frame_sequence, group_median
from etemseg.tracking.neighbours import mutual_nearest
from etemseg.tracking.params import LinkParams

__all__ = ["drift_columns", "drift_table", "estimate_drift", "pair_steps", "rounded_shift",
           "rounded_steps", "shift_steps"]

_DRIFT_COLUMNS = ("frame", "dy_px", "dx_px", "step_dy_px", "step_dx_px", "smooth_dy_px",
                  "smooth_dx_px", "n_matches")


def estimate_drift(detections: pd.DataFrame, *, pixel_size_nm: float | None = None,
                   max_disp_nm: float = 1.0, all_frames: Iterable[int] | None = None,
                   min_matches: int = 3, smooth: int = 9) -> pd.DataFrame:
    """Global stage drift of every frame, from the detections alone.

    For each pair of consecutive present frames the particles not touching the border are matched
    as mutual nearest neighbours within the larger of ``max_disp_nm`` and the median particle
    radius, keeping pairs whose areas agree within a factor 1.5.  The pair's displacement is the
    mean of the matched displacements that lie within three robust standard deviations (1.4826
    MAD, at least 0.25 px) of their median: robust to the odd wrong match, and over a stable set of
    particles the centroids' pixelisation errors cancel in the cumulative sum.  A pair with fewer
    than ``min_matches`` matches (e.g. next to an empty frame) takes the running median of its
    neighbours' steps, or repeats the previous one (constant drift velocity).  The drift per frame
    must stay below the median particle radius.

    Stage drift is smooth over many frames (2.5 ms each at 400 fps) while the Brownian scatter of a
    pair's estimate over a few tens of particles is ~0.1-0.2 px, so a centred running median over
    ``smooth`` pairs is also returned; the linkers round it to shift the label images (a single
    noisy step does not flip the shift by a pixel).

    The drift is the motion of the particle ensemble: a collective Brownian displacement of the
    matched particles cannot be told from stage drift, so the cumulative estimate wanders like
    ``sigma_step * sqrt(frames / n_particles)``.

    Parameters
    ----------
    detections : pandas.DataFrame
        Per-frame detections (see :class:`~etemseg.tracking.detections.Detections`).
    pixel_size_nm : float, optional
        Inferred from ``x_nm / x_px`` when both are present.
    max_disp_nm : float
        Largest plausible particle step between two frames after drift correction, nm.
    all_frames : array of int, optional
        Every frame of the movie; frames without detections then get rows too.
    min_matches : int
        Fewest matches that make a pair's estimate.
    smooth : int
        Window (pairs of frames) of the running median ``smooth_*`` over the steps.

    Returns
    -------
    pandas.DataFrame
        ``frame``, ``dy_px``, ``dx_px`` (cumulative drift, zero at the first frame; image position
        = sample position + drift), ``step_dy_px``, ``step_dx_px`` (displacement from the
        previous present frame), ``smooth_dy_px``, ``smooth_dx_px`` (running median of the steps:
        what label images are shifted by, rounded), ``n_matches`` (0 for the first frame).
    """
    det = Detections(detections, pixel_size_nm, None)
    LinkParams(max_disp_nm=max_disp_nm).validate()
    seq = frame_sequence(det, all_frames)
    if not isinstance(smooth, (int, np.integer)) or smooth < 1:
        raise ConfigError(f"track.smooth: must be an integer >= 1 (got {smooth!r})")
    if not isinstance(min_matches, (int, np.integer)) or min_matches < 1:
        raise ConfigError(f"track.min_matches: must be an integer >= 1 (got {min_matches!r})")
    return drift_table(det, seq, max_disp_nm / det.ps, int(min_matches), int(smooth))


def drift_table(det: Detections, seq: np.ndarray, max_disp_px: float, min_matches: int,
                smooth: int) -> pd.DataFrame:
    """The drift table of :func:`estimate_drift` for checked inputs.

    Parameters
    ----------
    det : Detections
    seq : (n,) int64
        The movie's frames.
    max_disp_px : float
        Matching gate, px (raised to the median particle radius).
    min_matches, smooth : int
        As :func:`estimate_drift`.
    """
    n = seq.size
    if n == 0:
        return pd.DataFrame({c: np.zeros(0, np.int64 if c in ("frame", "n_matches") else float)
                             for c in _DRIFT_COLUMNS})
    raw, nm = _matched_steps(det, seq, max_disp_px, min_matches)
    smooth_steps = _running_median(raw, smooth)
    steps = np.where(np.isfinite(raw), raw, smooth_steps)
    steps[0] = 0.0
    cum = np.cumsum(steps, axis=0)
    return pd.DataFrame({
        "frame": seq.astype(np.int64),
        "dy_px": cum[:, 0], "dx_px": cum[:, 1],
        "step_dy_px": steps[:, 0], "step_dx_px": steps[:, 1],
        "smooth_dy_px": smooth_steps[:, 0], "smooth_dx_px": smooth_steps[:, 1],
        "n_matches": nm,
    })


def _matched_steps(det: Detections, seq: np.ndarray, max_disp_px: float, min_matches: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Step of every frame pair from matched particles.

    Returns
    -------
    raw : (n, 2) float
        ``(dy, dx)`` px from frame ``k - 1`` to ``k``; NaN for ``k = 0`` and for pairs with fewer
        than ``min_matches`` matches.
    n_matches : (n,) int64
        Matches behind each step (0 for ``k = 0``).
    """
    n = seq.size
    kseq = det.layers(seq)
    rows = np.flatnonzero(~det.border)
    y, x, k, area = det.y[rows], det.x[rows], kseq[rows], det.area[rows]
    rmed = float(np.median(det.radius)) if det.radius.size else 0.0
    src = np.flatnonzero(k < n - 1)
    i, j = mutual_nearest(y[src], x[src], k[src] + 1, y, x, k, max(max_disp_px, rmed))
    i = src[i]
    r = area[i] / np.maximum(area[j], 1e-9)
    ok = (r > 2 / 3) & (r < 1.5)
    i, j = i[ok], j[ok]
    raw, nm = robust_steps(k[j], y[j] - y[i], x[j] - x[i], n, int(min_matches))
    raw[0] = np.nan
    nm[0] = 0
    return raw, nm


def _running_median(raw: np.ndarray, smooth: int) -> np.ndarray:
    """(n, 2) centred running median (window ``smooth``) of the finite steps of ``raw``, forward
    filled (constant drift velocity where nothing was measured nearby), zero at ``k = 0``."""
    n = raw.shape[0]
    half = max(int(smooth), 1) // 2
    smooth_steps = np.full((n, 2), np.nan)
    if n > 1:
        pad = np.full((n + 2 * half, 2), np.nan)
        pad[half:half + n] = raw
        win = np.lib.stride_tricks.sliding_window_view(pad, 2 * half + 1, axis=0)
        any_ = np.isfinite(win[:, 0, :]).any(axis=1)
        if any_.any():
            smooth_steps[any_] = np.nanmedian(win[any_], axis=-1)
    smooth_steps[0] = 0.0
    valid = np.isfinite(smooth_steps[:, 0])
    idx = np.where(valid, np.arange(n), 0)
    np.maximum.accumulate(idx, out=idx)
    smooth_steps = smooth_steps[idx]
    smooth_steps[0] = 0.0
    return smooth_steps


def robust_steps(g: np.ndarray, dy: np.ndarray, dx: np.ndarray, n: int, min_matches: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Robust mean displacement per group.

    Parameters
    ----------
    g : (M,) int
        Group (frame pair) of each displacement, 0..n-1.
    dy, dx : (M,) float
        Displacements, px.
    n : int
        Number of groups.
    min_matches : int
        Fewest displacements that make a group's estimate.

    Returns
    -------
    steps : (n, 2) float
        Per group, ``(dy, dx)``: mean of the displacements within 3 robust sigma (1.4826 MAD, at
        least 0.25 px) of the median on both axes; NaN for groups under ``min_matches``.
    counts : (n,) int64
        Displacements per group.
    """
    cnt = np.bincount(g, minlength=n).astype(np.int64)
    disp = np.column_stack([dy, dx])
    med = np.column_stack([group_median(g, dy, n), group_median(g, dx, n)])
    dev = np.abs(disp - med[g])
    mad = np.column_stack([group_median(g, dev[:, 0], n), group_median(g, dev[:, 1], n)])
    tol = np.maximum(3.0 * 1.4826 * mad, 0.25)
    inl = (dev <= tol[g]).all(axis=1)
    c = np.bincount(g[inl], minlength=n)
    out = med.copy()
    has = c > 0
    for ax in (0, 1):
        s_ = np.bincount(g[inl], weights=disp[inl, ax], minlength=n)
        out[has, ax] = s_[has] / c[has]
    out[cnt < min_matches] = np.nan
    return out, cnt


def drift_columns(seq: np.ndarray, drift: pd.DataFrame, cols: tuple[str, ...]) -> np.ndarray:
    """(len(seq), len(cols)) float: the values of ``cols`` of a drift table at every frame of
    ``seq`` (raises when a column or a frame's row is missing)."""
    for c in ("frame", *cols):
        if c not in drift.columns:
            raise EtemsegError(f"drift: missing column {c!r}")
    f = drift["frame"].to_numpy(np.int64)
    order = np.argsort(f, kind="stable")
    fs = f[order]
    pos = np.minimum(np.searchsorted(fs, seq), max(fs.size - 1, 0))
    have = fs[pos] == seq if fs.size else np.zeros(seq.size, bool)
    if not have.all():
        raise EtemsegError(f"drift: no row for frame {int(seq[~have][0])}")
    rows = order[pos]
    return np.column_stack([drift[c].to_numpy(float)[rows] for c in cols]) if cols else \
        np.zeros((seq.size, 0))


def pair_steps(seq: np.ndarray, drift: pd.DataFrame | None) -> np.ndarray:
    """(len(seq), 2): displacement ``(dy, dx)`` px from the previous frame, from a drift table's
    cumulative columns (zeros without a table; row 0 is zero)."""
    steps = np.zeros((seq.size, 2))
    if drift is None or seq.size == 0:
        return steps
    cum = drift_columns(seq, drift, ("dy_px", "dx_px"))
    steps[1:] = np.diff(cum, axis=0)
    return steps


def shift_steps(seq: np.ndarray, drift: pd.DataFrame | None) -> np.ndarray:
    """(len(seq), 2): per-pair displacement, px, to round for shifting label images -- the
    smoothed steps when the table has them, else :func:`pair_steps`."""
    if drift is not None and seq.size and {"smooth_dy_px", "smooth_dx_px"} <= set(drift.columns):
        steps = drift_columns(seq, drift, ("smooth_dy_px", "smooth_dx_px"))
        steps[0] = 0.0
        return steps
    return pair_steps(seq, drift)


def rounded_steps(steps: np.ndarray) -> np.ndarray:
    """``(dy, dx)`` steps, px (any leading shape), rounded to whole pixels (int64): the shifts
    label images are compared by."""
    return np.round(np.asarray(steps, float)).astype(np.int64)


def rounded_shift(step: np.ndarray) -> tuple[int, int]:
    """One ``(dy, dx)`` step, px, rounded to whole pixels (:func:`rounded_steps`)."""
    dy, dx = rounded_steps(step[:2])
    return int(dy), int(dx)
