"""The detections table as plain arrays, and the frames and times of a movie.

:class:`Detections` checks a per-frame detections table once and holds it sorted by
``(frame, label)`` as NumPy arrays (pixels, nm); every other module of :mod:`etemseg.tracking`
works on those arrays.  A detection *row* is an index into them (0..N-1).  A *layer* is the index
of a row's frame in the movie's frame sequence ``seq`` (frame numbers need not be contiguous).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from etemseg.errors import ConfigError, EtemsegError

__all__ = ["Detections", "check_frames", "frame_sequence", "frame_times", "group_median",
           "size_columns"]


#: Centroid distance from the chord over the square root of the area of a half disc,
#: ``(4 / (3 pi)) / sqrt(pi / 2)``: a disc cut by a line through its centre.
HALF_DISC_RATIO = 4 / (3 * math.pi) / math.sqrt(math.pi / 2)


def _cut_disc(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(area, ratio)`` of the part of a unit disc inside a straight frame edge, ``t`` (-1..1)
    the centre's signed distance inside the edge: ``area = pi - arccos(t) + t sqrt(1 - t^2)``
    and ``ratio`` its centroid's distance from the edge over ``sqrt(area)`` (0 for a sliver,
    :data:`HALF_DISC_RATIO` at ``t = 0``, ``1 / sqrt(pi)`` for the whole disc)."""
    t = np.clip(t, -1.0, 1.0)
    s = np.sqrt(np.maximum(1.0 - t * t, 0.0))
    area = np.pi - np.arccos(t) + t * s
    xbar = (2.0 / 3.0) * s ** 3 / np.maximum(area, 1e-12)  # centroid from the centre
    return area, (xbar + t) / np.sqrt(np.maximum(area, 1e-12))


class Detections:
    """Detections sorted by (frame, label) as plain arrays, with per-frame offsets.

    Parameters
    ----------
    df : pandas.DataFrame
        Per-frame detections: ``frame``, ``label`` (ints, labels >= 1), a centroid (``x_px``,
        ``y_px`` and/or ``x_nm``, ``y_nm``), a size (``area_px``, ``area_nm2`` or
        ``eq_diameter_nm``); optional ``time_s``, ``touches_border``.
    pixel_size_nm : float or None
        nm per pixel; inferred from ``x_nm / x_px`` when None and both are present.
    frame_shape : (int, int) or None
        ``(H, W)``; decides ``border`` when the table has no ``touches_border``.

    Attributes
    ----------
    df : pandas.DataFrame
        The table sorted by (frame, label), index 0..N-1.
    ps : float
        Pixel size, nm.
    frame, label : (N,) int64
    x, y : (N,) float
        Centroid, px (x = column axis).
    area, radius : (N,) float
        Area, px, and the radius of the disc of that area, px.
    diam_nm, vol : (N,) float
        Equivalent diameter, nm, and the volume proxy ``diam_nm ** 3``, nm^3.
    border : (N,) bool
        The particle touches the image border.
    shape : (int, int) or None
        ``(H, W)`` of the frames, when given.
    time : (N,) float or None
        ``time_s`` of each row, s.
    frames, start, stop : (F,) int64
        The present frames (sorted) and the row range ``[start, stop)`` of each.
    """

    def __init__(self, df: pd.DataFrame, pixel_size_nm: float | None,
                 frame_shape: tuple[int, int] | None):
        has_px = _check_table(df)
        self.ps = _pixel_size(df, pixel_size_nm)
        d = df.sort_values(["frame", "label"], kind="stable").reset_index(drop=True)
        frame = d["frame"].to_numpy(np.int64)
        label = d["label"].to_numpy(np.int64)
        _check_keys(frame, label)
        if has_px:
            x = d["x_px"].to_numpy(float)
            y = d["y_px"].to_numpy(float)
        else:
            x = d["x_nm"].to_numpy(float) / self.ps
            y = d["y_nm"].to_numpy(float) / self.ps
        area, diam_nm = size_columns(d, self.ps, "detections")
        for name, arr in (("centroid", x), ("centroid", y), ("area", area)):
            if len(arr) and not np.isfinite(arr).all():
                raise EtemsegError(f"detections: non-finite {name} values")
        radius = np.sqrt(np.maximum(area, 0.0) / math.pi)
        self.df = d
        self.frame, self.label = frame, label
        self.x, self.y, self.area, self.radius = x, y, area, radius
        self.diam_nm = diam_nm
        self.vol = diam_nm**3
        self.border = _border(d, x, y, radius, frame_shape)
        self.shape = None if frame_shape is None else (int(frame_shape[0]), int(frame_shape[1]))
        self.time = d["time_s"].to_numpy(float) if "time_s" in d.columns else None
        self.frames, self.start = np.unique(frame, return_index=True)
        self.stop = np.append(self.start[1:], len(d))

    def centre_in_view(self, rows: np.ndarray) -> np.ndarray:
        """(R,) bool: the particle of each row has its centre inside the frame.

        Off the border, always.  At the border, the visible part is taken for a disc cut by the
        nearest frame edge: the ratio of its centroid's distance from that edge to the square
        root of its area grows with the visible depth alone (0 for a sliver, ``1 / sqrt(pi)``
        for a whole disc) and is :data:`HALF_DISC_RATIO` when the edge runs through the centre.
        Without a frame shape, False at the border."""
        rows = np.asarray(rows, np.int64)
        out = ~self.border[rows]
        if self.shape is None:
            return out
        return out | (self._edge_ratio(rows) >= HALF_DISC_RATIO)

    def _edge_ratio(self, rows: np.ndarray) -> np.ndarray:
        """Distance of each row's centroid from the nearest frame edge over the square root of
        its area (needs ``shape``)."""
        h, w = self.shape
        y, x = self.y[rows], self.x[rows]
        c = np.minimum(np.minimum(y + 0.5, h - 0.5 - y), np.minimum(x + 0.5, w - 0.5 - x))
        return c / np.sqrt(np.maximum(self.area[rows], 1e-12))

    def whole_radius_nm(self, rows: np.ndarray) -> np.ndarray:
        """(R,) float: radius, nm, of the whole particle of each row: half its equivalent
        diameter off the border (or without a frame shape); at the border with its centre in
        view (:meth:`centre_in_view`), that scaled to the disc whose part inside the nearest
        frame edge has the row's area and centroid (:meth:`cut_disc_radius`).  A part whose
        centre is out of view is taken as seen: its shape hardly tells the disc behind it (a
        sliver of any disc), and such a particle is more likely leaving than ripening."""
        rows = np.asarray(rows, np.int64)
        out = self.diam_nm[rows] / 2
        if self.shape is None:
            return out
        at = np.flatnonzero(self.border[rows])
        ratio = self._edge_ratio(rows[at])
        at, ratio = at[ratio >= HALF_DISC_RATIO], ratio[ratio >= HALF_DISC_RATIO]  # centre in view
        out[at] *= self._disc_radius(rows[at], ratio) / np.maximum(self.radius[rows[at]], 1e-12)
        return out

    def cut_disc_radius(self, rows: np.ndarray) -> np.ndarray:
        """(R,) float: radius, px, of the disc cut by the nearest frame edge whose visible part
        has the area and centroid of each row (needs ``shape``).

        The visible part's centroid distance from the edge over the square root of its area
        fixes how deep the disc reaches into the frame (:func:`_cut_disc`, solved by bisection),
        and the area then its radius.  Never below the equivalent radius (the whole particle
        is at least what is seen)."""
        rows = np.asarray(rows, np.int64)
        return self._disc_radius(rows, self._edge_ratio(rows))

    def _disc_radius(self, rows: np.ndarray, ratio: np.ndarray) -> np.ndarray:
        """:meth:`cut_disc_radius` of ``rows`` whose :meth:`_edge_ratio` is ``ratio``."""
        ratio = np.minimum(ratio, 1.0 / math.sqrt(math.pi))
        lo, hi = np.full(rows.size, -1.0), np.ones(rows.size)
        for _ in range(40):  # the ratio rises with the depth t
            t = (lo + hi) / 2
            below = _cut_disc(t)[1] < ratio
            lo, hi = np.where(below, t, lo), np.where(below, hi, t)
        t = (lo + hi) / 2
        r = np.sqrt(np.maximum(self.area[rows], 0.0) / _cut_disc(t)[0])
        return np.maximum(r, self.radius[rows])

    def rows(self, f: int) -> slice:
        """Row range of frame ``f`` (empty when the frame has no detection)."""
        k = np.searchsorted(self.frames, f)
        if k < self.frames.size and self.frames[k] == f:
            return slice(int(self.start[k]), int(self.stop[k]))
        return slice(0, 0)

    def layers(self, seq: np.ndarray) -> np.ndarray:
        """(N,) int64: index in ``seq`` of every row's frame (``seq`` holds all of them)."""
        return np.searchsorted(seq, self.frame).astype(np.int64)

    def rows_of_labels(self, f: int, labels: np.ndarray) -> np.ndarray:
        """Row of each label of frame ``f`` (-1 where the label has no detection)."""
        s = self.rows(f)
        lab = self.label[s]
        if lab.size == 0 or labels.size == 0:
            return np.full(labels.size, -1, np.int64)
        pos = np.searchsorted(lab, labels)
        pos = np.minimum(pos, lab.size - 1)
        return np.where(lab[pos] == labels, s.start + pos, -1).astype(np.int64)

    def rows_of_keys(self, frames: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Row of each (frame, label) (-1 where absent); rows are sorted by (frame, label)."""
        if len(self.frame) == 0:
            return np.full(frames.size, -1, np.int64)
        top = int(max(self.label.max(), labels.max() if labels.size else 0)) + 1
        keys = self.frame * top + self.label
        q = frames * top + labels
        pos = np.minimum(np.searchsorted(keys, q), keys.size - 1)
        return np.where(keys[pos] == q, pos, -1).astype(np.int64)


def _check_table(df: Any) -> bool:
    """Raise on a malformed detections table; True when it has pixel centroids."""
    if not isinstance(df, pd.DataFrame):
        raise EtemsegError(f"detections: expected a pandas DataFrame, got {type(df).__name__}")
    for col in ("frame", "label"):
        if col not in df.columns:
            raise EtemsegError(f"detections: missing column {col!r}")
    has_px = "x_px" in df.columns and "y_px" in df.columns
    has_nm = "x_nm" in df.columns and "y_nm" in df.columns
    if not (has_px or has_nm):
        raise EtemsegError("detections: need centroid columns x_px, y_px or x_nm, y_nm")
    if len(df) and not (pd.api.types.is_integer_dtype(df["frame"])
                        and pd.api.types.is_integer_dtype(df["label"])):
        raise EtemsegError("detections: columns 'frame' and 'label' must be integers")
    return has_px


def _pixel_size(df: pd.DataFrame, pixel_size_nm: float | None) -> float:
    """The given pixel size (nm), else the median ``x_nm / x_px`` (1.0 for an empty table)."""
    ps = pixel_size_nm
    has_both = all(c in df.columns for c in ("x_px", "y_px", "x_nm", "y_nm"))
    if ps is None and has_both and len(df):
        xp = df["x_px"].to_numpy(float)
        ok = np.abs(xp) > 1
        if ok.any():
            ps = float(np.median(df["x_nm"].to_numpy(float)[ok] / xp[ok]))
    if ps is None:
        if len(df):
            raise EtemsegError("detections: pixel size unknown; pass pixel_size_nm")
        ps = 1.0
    if not (math.isfinite(ps) and ps > 0):
        raise ConfigError(f"track.pixel_size_nm: must be a finite number > 0 (got {ps!r})")
    return float(ps)


def _check_keys(frame: np.ndarray, label: np.ndarray) -> None:
    """Raise on a (frame, label) pair seen twice or a label < 1 (rows sorted by both)."""
    if len(frame) > 1:
        dup = (frame[1:] == frame[:-1]) & (label[1:] == label[:-1])
        if dup.any():
            k = int(np.flatnonzero(dup)[0])
            raise EtemsegError(
                f"detections: label {label[k]} appears twice in frame {frame[k]} "
                "(were chunk tables concatenated twice?)")
    if (label < 1).any():
        raise EtemsegError("detections: labels must be >= 1 (0 is background)")


def _border(d: pd.DataFrame, x: np.ndarray, y: np.ndarray, radius: np.ndarray,
            frame_shape: tuple[int, int] | None) -> np.ndarray:
    """``touches_border`` when given, else whether the equivalent disc (px) reaches the edge
    pixels of a ``frame_shape`` image, else all False."""
    if "touches_border" in d.columns:
        return d["touches_border"].to_numpy(bool)
    if frame_shape is not None:
        h, w = frame_shape
        return ((x - radius < 0.5) | (y - radius < 0.5)
                | (x + radius > w - 1.5) | (y + radius > h - 1.5))
    return np.zeros(len(d), bool)


def size_columns(df: pd.DataFrame, ps: float, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Area (px) and equivalent diameter (nm) of every row of a detections-like table.

    The area is ``area_px``, else ``area_nm2 / ps**2``, else that of the ``eq_diameter_nm`` disc;
    the diameter is ``eq_diameter_nm``, else that of the disc of the area.  ``ps``: nm per px;
    ``what`` names the table in the error raised when it has no size column.
    """
    if "area_px" in df.columns:
        area = df["area_px"].to_numpy(float)
    elif "area_nm2" in df.columns:
        area = df["area_nm2"].to_numpy(float) / ps**2
    elif "eq_diameter_nm" in df.columns:
        area = math.pi * (df["eq_diameter_nm"].to_numpy(float) / ps / 2) ** 2
    else:
        raise EtemsegError(f"{what}: need a size column: area_px, area_nm2 or eq_diameter_nm")
    if "eq_diameter_nm" in df.columns:
        diam = df["eq_diameter_nm"].to_numpy(float)
    else:
        diam = 2.0 * np.sqrt(area / math.pi) * ps
    return area, diam


def check_frames(all_frames: Iterable[int]) -> np.ndarray:
    """``all_frames`` as a strictly increasing 1-D int64 array (raises otherwise)."""
    seq = np.asarray(list(all_frames) if not isinstance(all_frames, np.ndarray) else all_frames)
    if seq.ndim != 1 or (seq.size and not np.issubdtype(seq.dtype, np.integer)):
        raise EtemsegError("all_frames: must be a 1-D sequence of integer frame numbers")
    seq = seq.astype(np.int64)
    if seq.size > 1 and not (np.diff(seq) > 0).all():
        raise EtemsegError("all_frames: frame numbers must be strictly increasing")
    return seq


def frame_sequence(det: Detections, all_frames: Iterable[int] | None) -> np.ndarray:
    """The movie's frames ``seq`` (int64): ``all_frames``, checked to hold every detection's
    frame, or the present frames when None."""
    if all_frames is None:
        return det.frames.copy()
    seq = check_frames(all_frames)
    extra = np.setdiff1d(det.frames, seq)
    if extra.size:
        raise EtemsegError(f"detections: frame {int(extra[0])} is not in all_frames")
    return seq


def frame_times(seq: np.ndarray, time_s: Any = None, fps: float | None = None,
                frames: np.ndarray | None = None, known: np.ndarray | None = None
                ) -> np.ndarray:
    """Time (s) of every frame of ``seq``.

    ``time_s`` (one per frame) when given, else ``seq / fps``, else the ``known`` times of
    ``frames`` (arrays of equal length, frames in ``seq``) with the other frames filled by a
    linear fit over frame numbers (NaN when fewer than two are known).
    """
    if time_s is not None:
        t = np.asarray(time_s, dtype=float)
        if t.shape != seq.shape:
            raise EtemsegError(f"time_s: expected {seq.size} values (one per frame), "
                               f"got {t.size}")
        return t
    if fps is not None:
        return seq / float(fps)
    t = np.full(seq.size, np.nan)
    if known is not None and frames.size:
        t[np.searchsorted(seq, frames)] = known
        ok = np.isfinite(t)
        if ok.sum() >= 2 and not ok.all():
            a, b = np.polyfit(seq[ok].astype(float), t[ok], 1)
            t[~ok] = a * seq[~ok] + b
    return t


def group_median(g: np.ndarray, v: np.ndarray, n: int) -> np.ndarray:
    """(n,) median of ``v`` per group ``g`` in 0..n-1 (NaN for empty groups)."""
    out = np.full(n, np.nan)
    if v.size == 0:
        return out
    order = np.lexsort((v, g))
    gs, vs = g[order], v[order]
    idx = np.arange(n)
    starts = np.searchsorted(gs, idx, side="left")
    stops = np.searchsorted(gs, idx, side="right")
    nz = stops > starts
    lo = starts + (stops - starts - 1) // 2
    hi = starts + (stops - starts) // 2
    out[nz] = 0.5 * (vs[lo[nz]] + vs[hi[nz]])
    return out
