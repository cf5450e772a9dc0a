"""The tables of a linked movie: trajectories, events and the per-frame summary.

* trajectories: the detections sorted by (frame, label), ``particle`` id in front and the
  drift-corrected sample-frame position appended (:func:`trajectories_table`);
* events: one row per coalescence, vanish, exit, appear, enter, split or complex event
  (:func:`events_table`; Arrow schema :data:`EVENTS_SCHEMA`);
* frames: one row per frame of the movie -- count, coverage, sizes, density, drift and event
  counts (:func:`frames_table`), also for frames without particles.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from etemseg.errors import ConfigError, EtemsegError
from etemseg.tracking.detections import (Detections, check_frames, frame_times, group_median,
                                         size_columns)
from etemseg.tracking.drift import drift_columns

__all__ = ["EVENTS_SCHEMA", "EVENT_KINDS", "events_table", "frames_table", "trajectories_table"]

#: Every event kind the linker can report.
EVENT_KINDS = ("coalescence", "vanish", "exit", "appear", "enter", "split", "complex")

#: Arrow schema of the events table (``pa.Table.from_pandas(events, schema=EVENTS_SCHEMA,
#: preserve_index=False)`` keeps ``parents`` / ``children`` as ``list<int64>`` even when empty).
EVENTS_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        ("frame", pa.int64()),
        ("time_s", pa.float64()),
        ("parents", pa.list_(pa.int64())),
        ("children", pa.list_(pa.int64())),
        ("child", pa.int64()),
        ("x_nm", pa.float64()),
        ("y_nm", pa.float64()),
        ("x_px", pa.float64()),
        ("y_px", pa.float64()),
        ("eq_diameter_nm", pa.float64()),
        ("volume_ratio", pa.float64()),
        ("confidence", pa.float64()),
    ]
)


def trajectories_table(det: Detections, seq: np.ndarray, cum: np.ndarray, ids: np.ndarray,
                       trusted: np.ndarray | None = None) -> pd.DataFrame:
    """The detections with their trajectory ids and sample-frame positions.

    Parameters
    ----------
    det : Detections
    seq : (n,) int64
        The movie's frames.
    cum : (n, 2) float
        Cumulative drift ``(dy, dx)`` px of every frame.
    ids : (N,) int
        Trajectory id of every detection row.
    trusted : (N,) bool, optional
        The row's trajectory looked like a particle (default: all).

    Returns
    -------
    pandas.DataFrame
        ``det.df`` (sorted by (frame, label)) with ``particle`` (int64) in front and
        ``x_sample_nm``, ``y_sample_nm`` (position minus cumulative drift, nm) and ``trusted``
        (bool, the same for every row of a trajectory; see
        :attr:`~etemseg.tracking.LinkParams.min_diameter_nm`) appended; columns of those names
        already in the detections are replaced.
    """
    out = det.df.drop(columns=[c for c in ("particle", "x_sample_nm", "y_sample_nm", "trusted")
                               if c in det.df.columns])
    out.insert(0, "particle", ids.astype(np.int64))
    c = cum[det.layers(seq)] if len(det.frame) else np.zeros((0, 2))
    out["x_sample_nm"] = (det.x - c[:, 1]) * det.ps
    out["y_sample_nm"] = (det.y - c[:, 0]) * det.ps
    out["trusted"] = np.ones(len(det.frame), bool) if trusted is None else trusted.astype(bool)
    return out


def events_table(cols: dict[str, list[Any]], ps: float) -> pd.DataFrame:
    """The events table from column lists, sorted by frame, kind (order of :data:`EVENT_KINDS`)
    and smallest id involved.

    Parameters
    ----------
    cols : dict of lists
        One list per column of :data:`EVENTS_SCHEMA` except ``x_nm``, ``y_nm`` (positions are
        ``x_px``, ``y_px``; ``parents``, ``children`` lists of ids).
    ps : float
        Pixel size, nm (gives ``x_nm``, ``y_nm``).
    """
    n = len(cols["kind"])
    df = pd.DataFrame({
        "kind": pd.Series(cols["kind"], dtype=object),
        "frame": np.asarray(cols["frame"], np.int64),
        "time_s": np.asarray(cols["time_s"], float),
        "parents": pd.Series(cols["parents"], dtype=object),
        "children": pd.Series(cols["children"], dtype=object),
        "child": np.asarray(cols["child"], np.int64),
        "x_nm": np.asarray(cols["x_px"], float) * ps,
        "y_nm": np.asarray(cols["y_px"], float) * ps,
        "x_px": np.asarray(cols["x_px"], float),
        "y_px": np.asarray(cols["y_px"], float),
        "eq_diameter_nm": np.asarray(cols["eq_diameter_nm"], float),
        "volume_ratio": np.asarray(cols["volume_ratio"], float),
        "confidence": (np.asarray(cols["confidence"], float)
                       if len(cols.get("confidence", ())) == n else np.ones(n)),
    })
    if n:
        rank = {k: i for i, k in enumerate(EVENT_KINDS)}
        first = [min(p_ + c_) for p_, c_ in zip(cols["parents"], cols["children"])]
        order = np.lexsort((np.asarray(first), np.asarray([rank[k] for k in cols["kind"]]),
                            df["frame"].to_numpy()))
        df = df.iloc[order].reset_index(drop=True)
    return df


def frames_table(trajectories: pd.DataFrame, *, frame_shape: tuple[int, int],
                 pixel_size_nm: float, all_frames: Iterable[int], time_s: Any = None,
                 fps: float | None = None, drift: pd.DataFrame | None = None,
                 events: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per frame of the movie: particle count, coverage, sizes, density, drift, events.

    Every frame of ``all_frames`` gets a row, also frames without particles (``count`` 0,
    ``coverage`` 0, size statistics NaN) -- never a silent gap.

    Parameters
    ----------
    trajectories : pandas.DataFrame
        Detections or trajectories: ``frame`` and a size (``area_px``, ``area_nm2`` or
        ``eq_diameter_nm``); ``eq_diameter_nm`` is derived from the area when missing.
    frame_shape : (int, int)
        ``(H, W)`` in pixels.
    pixel_size_nm : float
    all_frames : array of int
        Every frame of the movie.
    time_s : array, optional
        Time of each frame of ``all_frames``; else ``frame / fps``; else from the table's
        ``time_s`` (linear fit over frames without particles), else NaN.
    fps : float, optional
    drift : pandas.DataFrame, optional
        ``frame``, ``dy_px``, ``dx_px`` (:func:`~etemseg.tracking.drift.estimate_drift`); NaN
        drift columns when None.
    events : pandas.DataFrame, optional
        Adds ``n_<kind>`` counts for every kind of :data:`EVENT_KINDS`.

    Returns
    -------
    pandas.DataFrame
        ``frame``, ``time_s``, ``count``, ``coverage`` (particle area / frame area),
        ``mean_eq_diameter_nm``, ``median_eq_diameter_nm``, ``std_eq_diameter_nm`` (ddof 1),
        ``number_density_per_um2``, ``drift_x_nm``, ``drift_y_nm`` [, ``n_<kind>``...].
    """
    if not (isinstance(pixel_size_nm, (int, float, np.integer, np.floating))
            and math.isfinite(float(pixel_size_nm)) and pixel_size_nm > 0):
        raise ConfigError(f"track.pixel_size_nm: must be a finite number > 0 "
                          f"(got {pixel_size_nm!r})")
    h, w = (int(v) for v in frame_shape)
    if h <= 0 or w <= 0:
        raise EtemsegError(f"frames_table: bad frame_shape {frame_shape!r}")
    ps = float(pixel_size_nm)
    seq = check_frames(all_frames)
    if "frame" not in trajectories.columns:
        raise EtemsegError("trajectories: missing column 'frame'")
    fr = trajectories["frame"].to_numpy(np.int64)
    extra = np.setdiff1d(fr, seq)
    if extra.size:
        raise EtemsegError(f"trajectories: frame {int(extra[0])} is not in all_frames")
    area_px, diam = size_columns(trajectories, ps, "trajectories")
    k = np.searchsorted(seq, fr)
    known = (trajectories["time_s"].to_numpy(float) if "time_s" in trajectories.columns
             else None)
    n = seq.size
    cols: dict[str, np.ndarray] = {
        "frame": seq,
        "time_s": frame_times(seq, time_s, fps, fr, known),
        **_size_columns(k, n, area_px, diam, h * w),
        "number_density_per_um2": np.bincount(k, minlength=n) / (h * w * ps * ps * 1e-6),
    }
    if drift is not None and n:
        cum = drift_columns(seq, drift, ("dy_px", "dx_px"))
        cols["drift_x_nm"] = cum[:, 1] * ps
        cols["drift_y_nm"] = cum[:, 0] * ps
    else:
        cols["drift_x_nm"] = np.full(n, np.nan)
        cols["drift_y_nm"] = np.full(n, np.nan)
    if events is not None:
        cols.update(_event_counts(seq, events))
    return pd.DataFrame(cols)


def _size_columns(k: np.ndarray, n: int, area_px: np.ndarray, diam: np.ndarray,
                  field_px: int) -> dict[str, np.ndarray]:
    """Count, coverage and diameter statistics per frame.

    Parameters
    ----------
    k : (N,) int
        Frame (index 0..n-1) of every particle.
    n : int
        Frames.
    area_px, diam : (N,) float
        Area, px, and equivalent diameter, nm, of every particle.
    field_px : int
        Pixels per frame.

    Returns
    -------
    dict of (n,) arrays
        ``count`` (int64), ``coverage``, ``mean_eq_diameter_nm``, ``median_eq_diameter_nm``,
        ``std_eq_diameter_nm`` (ddof 1; NaN under two particles).
    """
    count = np.bincount(k, minlength=n)
    area = np.bincount(k, weights=area_px, minlength=n)
    s1 = np.bincount(k, weights=diam, minlength=n)
    s2 = np.bincount(k, weights=diam * diam, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, s1 / np.maximum(count, 1), np.nan)
        var = np.where(count > 1, (s2 - count * mean * mean) / np.maximum(count - 1, 1), np.nan)
    std = np.sqrt(np.maximum(var, 0.0))
    std[count < 2] = np.nan
    return {"count": count.astype(np.int64), "coverage": area / field_px,
            "mean_eq_diameter_nm": mean, "median_eq_diameter_nm": group_median(k, diam, n),
            "std_eq_diameter_nm": std}


def _event_counts(seq: np.ndarray, events: pd.DataFrame) -> dict[str, np.ndarray]:
    """``n_<kind>``: (len(seq),) int64 events of each kind of :data:`EVENT_KINDS` per frame
    (events of frames outside ``seq`` are ignored)."""
    n = seq.size
    ef = events["frame"].to_numpy(np.int64) if len(events) else np.zeros(0, np.int64)
    ek = events["kind"].to_numpy(object) if len(events) else np.zeros(0, object)
    inside = np.isin(ef, seq)
    kk = np.searchsorted(seq, ef[inside])
    ek = ek[inside]
    return {f"n_{kind}": np.bincount(kk[ek == kind], minlength=n).astype(np.int64)
            for kind in EVENT_KINDS}
