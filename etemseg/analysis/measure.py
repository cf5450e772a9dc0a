"""Particle measurement: connected components of a mask -> one table row per particle per frame.

Array level (no stores, no stages): :func:`measure_stack` / :func:`measure_frame` turn masks and
raw frames into the particle table, and :func:`write_parquet` / :func:`read_particle_table` are
the table's file format; the per-chunk driver over Zarr stores is
:func:`etemseg.stages.measure.measure_chunk`.

Every mask frame is split into connected components (8-connected by default); each component is a
particle and gets a row with its position, size, shape, perimeter and mean raw intensity. The
properties are those of :func:`skimage.measure.regionprops` (same definitions, same conventions,
equal to ~1e-12), but computed for a whole block of frames at once from per-label sums:

* the block is run-length encoded (horizontal runs of foreground pixels, found with one
  vectorised comparison of the flattened, zero-padded stack); runs of adjacent rows that touch
  (overlap for 4-, overlap or diagonal contact for 8-connectivity) are linked with two
  ``searchsorted`` range queries and the components are the connected components of that run
  graph (``scipy.sparse.csgraph``). Zero padding rows separate the frames, so components never
  connect across time, and they are numbered in raster order like ``skimage.measure.label``;
* the raw moments ``n, sum x, sum y, sum x^2, sum y^2, sum xy`` of a run are closed-form
  integer sums and the run intensity a ``np.add.reduceat`` of the frame; ``np.bincount`` on the
  component ids sums them per particle (all exact integer arithmetic);
* second central moments -> inertia tensor -> axis lengths, eccentricity and orientation in
  closed form (no Python loop over particles);
* skimage's perimeter estimator (4-connected boundary pixels, weights looked up from the codes of
  a 3x3 convolution of the boundary image) evaluated on the boundary pixels only and summed per
  label with ``np.bincount``.

Coordinates follow the package convention: ``x`` is the column axis, ``y`` the row axis, the
origin is the centre of pixel (0, 0), ``x_nm = x_px * pixel_size_nm``.

The particle table (:data:`COLUMNS`, fixed dtypes in :data:`SCHEMA`) is written per time chunk
with :func:`write_parquet` (zstd, units in the Parquet field metadata, provenance in the schema
metadata); a chunk without particles still writes a valid file with the same schema.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from etemseg import __version__
from etemseg.errors import ConfigError, InputFileError
from etemseg.io.parquet import write_table

__all__ = [
    "COLUMNS",
    "OVERLAP_COLUMNS",
    "UNITS",
    "SCHEMA",
    "empty_table",
    "measure_frame",
    "measure_stack",
    "write_parquet",
    "read_parquet_units",
    "read_particle_table",
    "particles_digest",
    "read_overlaps",
    "write_overlaps",
    "read_parquet_metadata",
]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------

#: Output columns in order: (name, pyarrow type, unit or None, description).
_SPEC: tuple[tuple[str, pa.DataType, str | None, str], ...] = (
    ("movie", pa.string(), None, "movie name"),
    ("model", pa.string(), None, "model whose masks were measured (or 'pseudo', 'truth')"),
    ("frame", pa.int64(), None, "frame index in the movie store"),
    ("time_s", pa.float64(), "s", "time of the frame since the first stored frame"),
    ("label", pa.int32(), None, "connected-component id within the frame (1..n, raster order)"),
    ("x_nm", pa.float64(), "nm", "centroid, column axis, origin at the centre of pixel (0, 0)"),
    ("y_nm", pa.float64(), "nm", "centroid, row axis, origin at the centre of pixel (0, 0)"),
    ("x_px", pa.float64(), "px", "centroid, column axis"),
    ("y_px", pa.float64(), "px", "centroid, row axis"),
    ("area_nm2", pa.float64(), "nm^2", "projected area (pixel count times pixel area)"),
    ("area_px", pa.int64(), "px", "pixel count"),
    ("eq_diameter_nm", pa.float64(), "nm", "diameter of the circle of the same area"),
    ("major_axis_nm", pa.float64(), "nm", "major axis of the ellipse with the same second moments"),
    ("minor_axis_nm", pa.float64(), "nm", "minor axis of the ellipse with the same second moments"),
    ("eccentricity", pa.float64(), None, "eccentricity of that ellipse (0 = circle)"),
    ("orientation_rad", pa.float64(), "rad",
     "angle between the row axis and the major axis, counter-clockwise, in [-pi/2, pi/2]"),
    ("perimeter_nm", pa.float64(), "nm", "skimage perimeter (4-connected boundary estimator)"),
    ("mean_intensity", pa.float64(), "counts", "mean raw frame value over the particle pixels"),
    ("touches_border", pa.bool_(), None, "the particle has a pixel on the frame edge"),
)

#: Ordered output columns (units are part of the names; see :data:`UNITS`).
COLUMNS: tuple[str, ...] = tuple(name for name, *_ in _SPEC)

#: Unit of every column that has one (also stored as Parquet field metadata ``{"unit": ...}``).
UNITS: dict[str, str] = {name: unit for name, _, unit, _ in _SPEC if unit is not None}

#: The Parquet/Arrow schema of a particle table (field metadata: ``unit``, ``description``).
SCHEMA: pa.Schema = pa.schema([
    pa.field(name, typ, nullable=True,
             metadata={**({"unit": unit} if unit else {}), "description": desc})
    for name, typ, unit, desc in _SPEC
])

_NP_DTYPES: dict[str, np.dtype] = {
    "frame": np.dtype(np.int64), "label": np.dtype(np.int32), "area_px": np.dtype(np.int64),
    "touches_border": np.dtype(bool),
}

# skimage.measure.perimeter: weight of a boundary pixel from its code
# 1 (itself) + 2 * (4-neighbours on the boundary) + 10 * (diagonal neighbours on the boundary)
_PERIMETER_WEIGHTS = np.zeros(50, dtype=np.float64)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1.0
_PERIMETER_WEIGHTS[[21, 33]] = math.sqrt(2.0)
_PERIMETER_WEIGHTS[[13, 23]] = (1.0 + math.sqrt(2.0)) / 2.0


def _table(columns: dict[str, np.ndarray], movie: str, model: str = "") -> pd.DataFrame:
    """DataFrame in :data:`COLUMNS` order with the fixed dtypes (str movie and model columns)."""
    n = len(columns["frame"])
    data = {"movie": pd.Series(np.full(n, movie, dtype=object), dtype=str),
            "model": pd.Series(np.full(n, model, dtype=object), dtype=str)}
    for name in COLUMNS[2:]:
        data[name] = np.asarray(columns[name], dtype=_NP_DTYPES.get(name, np.float64))
    return pd.DataFrame(data)


def empty_table(movie: str = "", model: str = "") -> pd.DataFrame:
    """A particle table with no rows, the columns of :data:`COLUMNS` and their dtypes."""
    return _table({name: np.zeros(0) for name in COLUMNS[2:]}, movie, model)


# --------------------------------------------------------------------------------------------
# measurement
# --------------------------------------------------------------------------------------------


def _check_pixel_size(pixel_size_nm: float | None, *, warn: bool) -> float:
    """Validated pixel size in nm, or NaN (with a logged warning) when it is None."""
    if pixel_size_nm is None:
        if warn:
            log.warning("no pixel size: nm columns (x_nm, y_nm, area_nm2, eq_diameter_nm, axes, "
                        "perimeter_nm) are NaN; the px columns are still valid")
        return math.nan
    try:
        ps = float(pixel_size_nm)
    except (TypeError, ValueError):
        raise ConfigError(f"pixel_size_nm: must be a number > 0 or None, "
                          f"got {pixel_size_nm!r}") from None
    if not (ps > 0 and math.isfinite(ps)):
        raise ConfigError(f"pixel_size_nm: must be a number > 0 or None, got {pixel_size_nm!r}")
    return ps


def _check_connectivity(connectivity: int) -> int:
    if connectivity not in (1, 2):
        raise ConfigError(f"connectivity: must be 1 (4-connected) or 2 (8-connected), "
                          f"got {connectivity!r}")
    return int(connectivity)


def _runs(fgf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Foreground runs of the flattened padded stack: ``[starts, ends)`` (int64, raster order).

    The padding column makes every row start and end with background, so a run never crosses
    a row and the changes alternate start, end, start, ...
    """
    change = np.flatnonzero(fgf[1:] != fgf[:-1]) + 1
    return change[0::2], change[1::2]


def _range_pairs(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every ``(i, j)`` with ``lo[i] <= j < hi[i]``: (P,) int64 each, ordered by ``i`` then
    ``j`` (the result of one ``searchsorted`` range query per run)."""
    cnt = np.maximum(hi - lo, 0)
    i = np.repeat(np.arange(lo.size), cnt)
    j = np.repeat(lo - np.cumsum(cnt) + cnt, cnt) + np.arange(int(cnt.sum()))
    return i, j


def _link_runs(starts: np.ndarray, ends: np.ndarray, row: int, connectivity: int
               ) -> tuple[int, np.ndarray]:
    """Connected components of the runs: ``(n, comp)``, ``comp`` (n_runs,) ids 0..n-1.

    Runs ``j`` (row above) and ``i`` touch when their column ranges overlap (4-connected) or are at
    most one pixel apart (8-connected); shifting the runs of every row one row down (``+ row``
    in flat padded coordinates) makes that a range query on the sorted run bounds. Component ids
    follow the raster order of their first pixel, as :func:`skimage.measure.label` numbers them.
    """
    n_runs = starts.size
    side_lo, side_hi = ("left", "right") if connectivity == 2 else ("right", "left")
    lo = np.searchsorted(ends + row, starts, side=side_lo)   # first j reaching run i
    hi = np.searchsorted(starts + row, ends, side=side_hi)   # first j beyond run i
    i, j = _range_pairs(lo, hi)
    graph = coo_matrix((np.ones(i.size, dtype=np.int8), (i, j)), shape=(n_runs, n_runs)).tocsr()
    n, comp = connected_components(graph, directed=False)
    comp = comp.astype(np.int64, copy=False)
    running = np.maximum.accumulate(comp)
    if comp[0] != 0 or np.any(np.diff(running) > 1):  # not numbered in first-run order: renumber
        _, first = np.unique(comp, return_index=True)
        rank = np.empty(n, dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(n)
        comp = rank[comp]
    return int(n), comp


def _check_block(masks: np.ndarray, frames: np.ndarray | None, time_s: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """``masks`` (T, H, W), ``frames`` (same shape or None) and ``time_s`` ((T,) float64) as
    arrays; ValueError naming the first that does not fit."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (T, H, W), got shape {masks.shape}")
    if frames is not None:
        frames = np.asarray(frames)
        if frames.shape != masks.shape:
            raise ValueError(f"frames shape {frames.shape} does not match masks shape "
                             f"{masks.shape}")
    time_s = np.asarray(time_s, dtype=np.float64).reshape(-1)
    if time_s.shape != (masks.shape[0],):
        raise ValueError(f"time_s must have one value per frame ({masks.shape[0]}), "
                         f"got {time_s.shape}")
    return masks, frames, time_s


@dataclass
class _Labelled:
    """Run-length labelling of a (T, H, W) block (flat indices into the padded stack)."""

    fg: np.ndarray       # (T, H + 2, W + 2) bool foreground, zero-padded
    starts: np.ndarray   # (R,) int64 first pixel of every run, raster order
    ends: np.ndarray     # (R,) int64 one past the last pixel of every run
    comp: np.ndarray     # (R,) int64 component id of every run, 0..n-1 in raster order
    n: int               # number of components in the block


def _label_runs(masks: np.ndarray, connectivity: int) -> _Labelled | None:
    """Connected components of every frame of ``masks`` (T, H, W), None without foreground."""
    T, H, W = masks.shape
    # padded foreground: every neighbour of a pixel exists and the padding is background
    fg = np.zeros((T, H + 2, W + 2), dtype=bool)
    np.not_equal(masks, 0, out=fg[:, 1:-1, 1:-1])
    # labelling per frame: the padding rows separate frames
    starts, ends = _runs(fg.reshape(-1))
    if starts.size == 0:
        return None
    n_lab, comp = _link_runs(starts, ends, W + 2, connectivity)
    return _Labelled(fg, starts, ends, comp, n_lab)


def _component_sums(lab: _Labelled, frames: np.ndarray | None) -> dict[str, np.ndarray]:
    """Raw moments per run in closed form, summed per component with ``np.bincount``.

    Returns (m,) arrays, m = ``lab.n``: ``count`` (int64 px), ``s_x``, ``s_y``, ``s_xx``,
    ``s_yy``, ``s_xy`` (float64 sums of pixel coordinates, exact integers), ``s_i`` (float64
    sum of frame values, None without frames) and ``touches`` (bool).
    """
    T, Hp, Wp = lab.fg.shape
    H, W = Hp - 2, Wp - 2
    comp, m = lab.comp, lab.n
    run_t, rem = np.divmod(lab.starts, Hp * Wp)
    run_y, run_x = np.divmod(rem, Wp)
    run_y -= 1                      # unpadded row
    run_x -= 1                      # unpadded first column
    length = lab.ends - lab.starts
    # sums of integers stay exact in float64 (per-frame sums are far below 2**53)
    sums = {"count": np.bincount(comp, length, minlength=m).astype(np.int64)}
    sx_run = length * run_x + length * (length - 1) // 2
    sxx_run = (length * run_x * run_x + run_x * length * (length - 1)
               + (length - 1) * length * (2 * length - 1) // 6)
    sums["s_x"] = np.bincount(comp, sx_run, minlength=m)
    sums["s_y"] = np.bincount(comp, length * run_y, minlength=m)
    sums["s_xx"] = np.bincount(comp, sxx_run, minlength=m)
    sums["s_yy"] = np.bincount(comp, length * run_y * run_y, minlength=m)
    sums["s_xy"] = np.bincount(comp, run_y * sx_run, minlength=m)
    if frames is not None:
        # gather the particle pixels run by run and sum each run (reduceat on the gathered
        # values: memory ~ particle pixels, not the whole block cast to float64)
        flat = np.ascontiguousarray(frames).reshape(-1)
        offset = np.cumsum(length) - length          # first position of each run in the gather
        pix = np.arange(int(offset[-1] + length[-1]), dtype=np.int64)
        pix += np.repeat((run_t * H + run_y) * W + run_x - offset, length)
        sums["s_i"] = np.bincount(comp, np.add.reduceat(flat[pix], offset, dtype=np.float64),
                                  minlength=m)
        del pix, offset
    else:
        sums["s_i"] = None
    edge_run = (run_x == 0) | (run_x + length == W) | (run_y == 0) | (run_y == H - 1)
    sums["touches"] = np.bincount(comp[edge_run], minlength=m) > 0
    return sums


def _frame_ids(lab: _Labelled) -> tuple[np.ndarray, np.ndarray]:
    """``(frame_of, local)``, (m,) int64: every component's frame within the block and its id in
    that frame (1..n, raster order: the id ``skimage.measure.label`` gives it)."""
    # components are numbered in raster order: the first run of each gives its frame
    first_run = np.flatnonzero(np.diff(np.maximum.accumulate(lab.comp), prepend=-1))
    frame_of = lab.starts[first_run] // lab.fg[0].size
    local = np.arange(lab.n) - np.searchsorted(frame_of, frame_of, side="left") + 1
    return frame_of, local


# --------------------------------------------------------------------------------------------
# overlaps of consecutive frames
# --------------------------------------------------------------------------------------------

#: Columns of a frame-overlaps table (``measure_stack(..., overlaps=True)``), all int64.
OVERLAP_COLUMNS: tuple[str, ...] = ("frame_a", "frame_b", "a", "b", "n_px")


def _shared_runs(sa: np.ndarray, ea: np.ndarray, sb: np.ndarray, eb: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs ``[sa, ea)`` against runs ``[sb, eb)`` (flat indices, each sorted and disjoint):
    ``(i, j, n)`` for every pair sharing ``n > 0`` pixels."""
    i, j = _range_pairs(np.searchsorted(eb, sa, side="right"),   # first b ending after a starts
                        np.searchsorted(sb, ea, side="left"))    # first b starting after a ends
    return i, j, np.minimum(ea[i], eb[j]) - np.maximum(sa[i], sb[j])


def _sum_pairs(ca: np.ndarray, cb: np.ndarray, n: np.ndarray, m_b: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` summed per component pair ``(ca, cb)``, ``cb < m_b``: the pairs, sorted, and sums."""
    key, inv = np.unique(ca * m_b + cb, return_inverse=True)
    return key // m_b, key % m_b, np.bincount(inv.reshape(-1), n, minlength=key.size
                                              ).astype(np.int64)


def _overlap_table(lab: _Labelled | None, prev: _Labelled | None, frame0: int,
                   min_area_px: int) -> pd.DataFrame:
    """Pixels shared at the same place by the components (of >= ``min_area_px``) of
    consecutive frames of a labelled block, and of ``prev`` (the frame before) and its first."""
    cols: list[list[np.ndarray]] = [[], [], [], []]  # frame_a, a, b, n_px
    if lab is not None:
        size = lab.fg[0].size
        frame_of, local = _frame_ids(lab)
        big = np.bincount(lab.comp, lab.ends - lab.starts, minlength=lab.n) >= min_area_px
        pairs = []
        if prev is not None:  # runs of frame -1 against those of frame 0 (a prefix of the runs)
            first = np.searchsorted(lab.starts, size)
            i, j, n = _shared_runs(prev.starts, prev.ends, lab.starts[:first], lab.ends[:first])
            p_big = np.bincount(prev.comp, prev.ends - prev.starts, minlength=prev.n)
            pairs.append((prev.comp[i], lab.comp[j], n, np.full(prev.n, -1),
                          _frame_ids(prev)[1], p_big >= min_area_px))
        # every run moved one frame on meets the runs of the next frame at the same pixels
        i, j, n = _shared_runs(lab.starts + size, lab.ends + size, lab.starts, lab.ends)
        pairs.append((lab.comp[i], lab.comp[j], n, frame_of, local, big))
        for ca, cb, n, fa_of, la_of, a_big in pairs:
            ca, cb, n = _sum_pairs(ca, cb, n, lab.n)
            ok = a_big[ca] & big[cb]
            ca, cb = ca[ok], cb[ok]
            for col, v in zip(cols, (fa_of[ca], la_of[ca], local[cb], n[ok])):
                col.append(v)
    fa, a, b, n = (np.concatenate(c).astype(np.int64) if c else np.zeros(0, np.int64)
                   for c in cols)
    return pd.DataFrame({"frame_a": fa + frame0, "frame_b": fa + frame0 + 1, "a": a, "b": b,
                         "n_px": n})


def _perimeters(lab: _Labelled, connectivity: int) -> np.ndarray:
    """skimage's perimeter (4-connected boundary pixels) of every component: (m,) float64 px."""
    fg, starts, comp = lab.fg, lab.starts, lab.comp
    Wp = fg.shape[2]
    inner = fg[:, 1:-1, 1:-1]
    interior = fg[:, :-2, 1:-1] & fg[:, 2:, 1:-1]
    interior &= fg[:, 1:-1, :-2]
    interior &= fg[:, 1:-1, 2:]
    border = np.zeros_like(fg)
    np.greater(inner, interior, out=border[:, 1:-1, 1:-1])  # inner & ~interior
    del interior
    bf = border.reshape(-1)
    bidx = np.flatnonzero(bf)
    blab = comp[np.searchsorted(starts, bidx, side="right") - 1]
    code = np.ones(bidx.size, dtype=np.uint8)
    for off in (-1, 1, -Wp, Wp):  # 4-neighbours on the boundary are the same component
        code += bf[bidx + off].view(np.uint8) * np.uint8(2)
    for off in (-Wp - 1, -Wp + 1, Wp - 1, Wp + 1):
        nb = bf[bidx + off]
        if connectivity == 1:  # a diagonal neighbour may belong to another component
            hit = np.flatnonzero(nb)
            other = comp[np.searchsorted(starts, bidx[hit] + off, side="right") - 1]
            nb[hit] = other == blab[hit]
        code += nb.view(np.uint8) * np.uint8(10)
    return np.bincount(blab, _PERIMETER_WEIGHTS[code], minlength=lab.n)


def _ellipse(n: np.ndarray, sx: np.ndarray, sy: np.ndarray, sxx: np.ndarray, syy: np.ndarray,
             sxy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ellipse of the same second moments from the raw sums (all (m,)): ``(major, minor)`` axis
    lengths in px, ``eccentricity`` and ``orientation`` (rad), as skimage.regionprops."""
    nf = n.astype(np.float64)
    # n^2 * second central moments / n: N_xx = n * sum(x^2) - sum(x)^2, exact in int64 where it
    # fits (so that ties such as N_xx == N_yy are decided exactly), float64 otherwise
    lim = 2.0 ** 62
    big = (nf * np.maximum(sxx, syy) >= lim) | (np.maximum(np.abs(sx), np.abs(sy)) ** 2 >= lim)
    with np.errstate(over="ignore"):
        ni = n.astype(np.int64)
        sxi, syi = sx.astype(np.int64), sy.astype(np.int64)
        nxx_i = ni * sxx.astype(np.int64) - sxi * sxi
        nyy_i = ni * syy.astype(np.int64) - syi * syi
        nxy_i = ni * sxy.astype(np.int64) - sxi * syi
        dxy_i = nxx_i - nyy_i
    nxx = np.where(big, nf * sxx - sx * sx, nxx_i)
    nyy = np.where(big, nf * syy - sy * sy, nyy_i)
    nxy = np.where(big, nf * sxy - sx * sy, nxy_i)
    dxy = np.where(big, nxx - nyy, dxy_i)
    n2 = nf * nf
    # eigenvalues of the inertia tensor [[a, b], [b, c]], a = mu_xx/n, c = mu_yy/n, b = -mu_xy/n:
    # n^2 lambda = half +- rad; the small one as det / (half + rad) (no cancellation for
    # elongated particles), the determinant exact in int64 where it fits
    half = 0.5 * (nxx + nyy)
    rad = np.hypot(0.5 * dxy, nxy)
    big_det = big | (np.abs(nxx * nyy) >= lim) | (nxy * nxy >= lim)
    det = np.where(big_det, nxx * nyy - nxy * nxy, nxx_i * nyy_i - nxy_i * nxy_i)
    l1 = (half + rad) / n2
    with np.errstate(invalid="ignore", divide="ignore"):
        l2 = np.where(l1 > 0, np.maximum(det, 0.0) / (half + rad), 0.0) / n2
        # sqrt(1 - l2/l1) = sqrt((l1 - l2)/l1), without cancellation for near-circles
        ecc = np.where(l1 > 0, np.sqrt(np.minimum(2.0 * rad / (half + rad), 1.0)), 0.0)
    # skimage: a == c -> +-pi/4 by the sign of b; else 0.5 * atan2(-2b, c - a)
    orient = np.where(dxy == 0, np.where(nxy > 0, math.pi / 4, -math.pi / 4),
                      0.5 * np.arctan2(2.0 * nxy, -dxy))
    return 4.0 * np.sqrt(l1), 4.0 * np.sqrt(l2), ecc, orient


def _measure(lab: _Labelled | None, frames: np.ndarray | None, *, frame0: int,
             time_s: np.ndarray, ps: float, movie: str, min_area_px: int, connectivity: int,
             model: str = "") -> pd.DataFrame:
    """The particle table of a labelled block (:func:`measure_stack`, arguments checked)."""
    if lab is None:
        return empty_table(movie, model)
    sums = _component_sums(lab, frames)
    perim = _perimeters(lab, connectivity)
    frame_of, local = _frame_ids(lab)  # block-global component ids -> frame, id in the frame
    local = local.astype(np.int32)
    m = lab.n

    # ---- per-component properties ------------------------------------------------------------
    keep = np.arange(m)
    n = sums["count"]
    sel = n >= max(int(min_area_px), 0)
    keep, frame_of, local, n = keep[sel], frame_of[sel], local[sel], n[sel]
    nf = n.astype(np.float64)
    sx, sy = sums["s_x"][keep], sums["s_y"][keep]
    major, minor, ecc, orient = _ellipse(n, sx, sy, sums["s_xx"][keep], sums["s_yy"][keep],
                                         sums["s_xy"][keep])
    x_px = sx / nf
    y_px = sy / nf
    eqd = np.sqrt(4.0 * nf / math.pi)
    s_i = sums["s_i"]
    cols = {
        "frame": frame_of + int(frame0),
        "time_s": time_s[frame_of],
        "label": local,
        "x_nm": x_px * ps,
        "y_nm": y_px * ps,
        "x_px": x_px,
        "y_px": y_px,
        "area_nm2": nf * (ps * ps),
        "area_px": n,
        "eq_diameter_nm": eqd * ps,
        "major_axis_nm": major * ps,
        "minor_axis_nm": minor * ps,
        "eccentricity": ecc,
        "orientation_rad": orient,
        "perimeter_nm": perim[keep] * ps,
        "mean_intensity": s_i[keep] / nf if s_i is not None else np.full(keep.size, np.nan),
        "touches_border": sums["touches"][keep],
    }
    return _table(cols, movie, model)


def measure_stack(masks: np.ndarray, frames: np.ndarray | None, *, frame0: int,
                  time_s: np.ndarray, pixel_size_nm: float | None, movie: str,
                  min_area_px: int = 0, connectivity: int = 2, model: str = "",
                  warn_uncalibrated: bool = True, overlaps: bool = False,
                  prev_mask: np.ndarray | None = None
                  ) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Measure every particle of a block of frames, vectorised over the whole block.

    Parameters
    ----------
    masks : (T, H, W) array, any integer/bool dtype
        Particle masks; nonzero = particle. Components are found per frame (never across time).
    frames : (T, H, W) array or None
        Raw frames (uint16 counts) aligned with ``masks``; ``mean_intensity`` is their mean over
        each particle. None: ``mean_intensity`` is NaN.
    frame0 : int
        Store index of ``masks[0]``; the ``frame`` column is ``frame0 + t``.
    time_s : (T,) float array
        Time of each frame of the block, s.
    pixel_size_nm : float or None
        Pixel size, nm/px. None (uncalibrated movie): every ``*_nm`` column is NaN and a warning
        is logged; the ``*_px`` columns and the dimensionless ones stay valid.
    movie, model : str
        Written in the ``movie`` and ``model`` columns.
    min_area_px : int
        Drop components with fewer pixels (0 or 1: keep all). The ``label`` of the survivors is
        still their id in the full frame labelling, so it may have gaps.
    connectivity : {1, 2}
        1: 4-connected components, 2: 8-connected (default, as :func:`skimage.measure.label`).
    warn_uncalibrated : bool
        Log the warning for ``pixel_size_nm=None`` (False: the caller warns once per movie).
    overlaps : bool
        Also return the frame-overlaps table of the block (below).
    prev_mask : (H, W) array, optional
        The mask of frame ``frame0 - 1``, for the overlaps of its particles with ``masks[0]``'s.

    Returns
    -------
    pandas.DataFrame
        One row per particle, ordered by (frame, label), columns :data:`COLUMNS` with fixed dtypes
        (movie str, frame int64, label int32, area_px int64, touches_border bool, the rest
        float64). ``label`` equals the id :func:`skimage.measure.label` (same connectivity)
        gives the component in its frame. Properties match ``skimage.measure.regionprops``:
        ``area``, ``centroid``, ``equivalent_diameter_area``, ``axis_major_length``,
        ``axis_minor_length`` (``4 sqrt(lambda)`` of the inertia tensor eigenvalues),
        ``eccentricity``, ``orientation`` (rad, angle between the row axis and the major axis,
        ``+-pi/4`` when the two second moments are equal), ``perimeter`` (4-connected boundary
        estimator) and ``intensity_mean``; lengths are scaled by ``pixel_size_nm``.
        No rows (but all columns and dtypes) when there is no particle.
    overlaps : pandas.DataFrame, only with ``overlaps=True``
        :data:`OVERLAP_COLUMNS` (int64): particles ``a`` of ``frame_a`` and ``b`` of ``frame_b =
        frame_a + 1`` (``label`` ids, both >= ``min_area_px``) share ``n_px`` pixels at the same
        place; sorted by (frame_a, a, b).  From the run-length labelling (every run against the
        runs of the next frame), so the tracker need not label the masks again.

    Notes
    -----
    The moments are exact integers, so ties are decided exactly: a shape with equal second
    moments gets ``+-pi/4`` as skimage's rule says, and one with zero xy moment and its major
    axis along x gets ``+pi/2``. skimage's floating-point moments can break such ties either
    way (it may report ``-pi/2``, the same axis, or any angle for a near-circle), so compare
    orientations modulo pi and only for elongated particles. The small eigenvalue and the
    eccentricity are computed without cancellation (``det / lambda1``, ``(l1 - l2) / l1``), so a
    perfectly symmetric particle has eccentricity exactly 0.

    Raises
    ------
    ValueError
        Shapes of ``masks``, ``frames`` and ``time_s`` do not agree.
    ConfigError
        Invalid ``pixel_size_nm`` or ``connectivity``.
    """
    masks, frames, time_s = _check_block(masks, frames, time_s)
    connectivity = _check_connectivity(connectivity)
    lab = None if 0 in masks.shape else _label_runs(masks, connectivity)
    table = _measure(lab, frames, frame0=frame0, time_s=time_s, movie=str(movie), model=model,
                     ps=_check_pixel_size(pixel_size_nm, warn=warn_uncalibrated),
                     min_area_px=min_area_px, connectivity=connectivity)
    return (table, _overlap_table(lab, _label_prev(prev_mask, masks.shape[1:], connectivity),
                                  int(frame0), max(int(min_area_px), 0))) if overlaps else table


def _label_prev(prev_mask: np.ndarray | None, shape: tuple[int, ...], connectivity: int
                ) -> _Labelled | None:
    """The labelling of the frame before a block (None without one), checked to be (H, W)."""
    if prev_mask is None or 0 in shape:
        return None
    prev_mask = np.asarray(prev_mask)
    if prev_mask.shape != shape:
        raise ValueError(f"prev_mask shape {prev_mask.shape} does not match the frames {shape}")
    return _label_runs(prev_mask[None], connectivity)


def measure_frame(mask: np.ndarray, frame: np.ndarray | None, *, pixel_size_nm: float | None,
                  min_area_px: int = 0, connectivity: int = 2, frame_index: int = 0,
                  time_s: float = math.nan, movie: str = "") -> pd.DataFrame:
    """Measure the particles of one frame (see :func:`measure_stack` for the columns).

    Parameters
    ----------
    mask : (H, W) array
        Particle mask, nonzero = particle.
    frame : (H, W) array or None
        Raw frame (counts) for ``mean_intensity``.
    pixel_size_nm : float or None
        Pixel size, nm/px (None: nm columns NaN, warning logged).
    min_area_px : int
        Drop components with fewer pixels.
    connectivity : {1, 2}
        4- or 8-connected components.
    frame_index, time_s, movie : int, float, str
        Values of the ``frame``, ``time_s`` (s) and ``movie`` columns.

    Returns
    -------
    pandas.DataFrame
        One row per particle, columns :data:`COLUMNS`.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    if frame is not None:
        frame = np.asarray(frame)
        if frame.shape != mask.shape:
            raise ValueError(f"frame shape {frame.shape} does not match mask shape {mask.shape}")
        frame = frame[None]
    return measure_stack(mask[None], frame, frame0=frame_index, time_s=np.array([time_s]),
                         pixel_size_nm=pixel_size_nm, movie=movie, min_area_px=min_area_px,
                         connectivity=connectivity)


# --------------------------------------------------------------------------------------------
# the particle table as a Parquet file
# --------------------------------------------------------------------------------------------


def write_parquet(df: pd.DataFrame, path: str | Path, *, metadata: dict | None = None) -> Path:
    """Write a particle table atomically as zstd Parquet with units and provenance.

    Parameters
    ----------
    df : pandas.DataFrame
        Particle table with (at least) the columns :data:`COLUMNS`; may have no rows. Extra columns
        are appended after them with inferred types.
    path : path
        Output ``.parquet`` file; written to a temporary sibling and renamed into place.
    metadata : dict, optional
        Provenance stored as JSON in the schema metadata key ``etemseg`` (e.g. ``pixel_size_nm``,
        ``movie``, ``model``, ``chunk``); ``pixel_size_nm``, ``movie`` and ``model`` are always
        present (None when unknown; ``movie`` defaults to the table's single movie name), plus
        ``etemseg_version`` and ``units``.

    Returns
    -------
    Path
        ``path``.

    Notes
    -----
    The column types are those of :data:`SCHEMA` whatever the DataFrame dtypes, so an empty table
    has the same schema as a full one. Each column with a unit carries field metadata
    ``{"unit": ...}`` (see :func:`read_parquet_units`).
    """
    path = Path(path)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"particle table lacks columns {missing}")
    fields = list(SCHEMA)
    arrays = []
    for f in SCHEMA:
        arrays.append(pa.Array.from_pandas(df[f.name], type=f.type))
    for name in df.columns:
        if name not in COLUMNS:
            arr = pa.Array.from_pandas(df[name])
            arrays.append(arr)
            fields.append(pa.field(str(name), arr.type))
    movies = df["movie"].unique() if len(df) else []
    meta = {"pixel_size_nm": None, "movie": str(movies[0]) if len(movies) == 1 else None,
            "model": None}
    meta.update(metadata or {})
    meta["etemseg_version"] = __version__
    meta["units"] = dict(UNITS)
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    return write_table(table, path, metadata=meta)    # the one Parquet writer (io.parquet)


def read_particle_table(path: str | Path, *, frames: tuple[int, int] | None = None
                        ) -> pd.DataFrame:
    """Read and check a particle table written by :func:`write_parquet` (``etemseg measure``).

    Parameters
    ----------
    path : path
        A ``chunk-{k}.parquet`` (or any particle table).
    frames : (int, int), optional
        Frame range ``[t0, t1)`` the table must stay inside (its time chunk).

    Raises
    ------
    InputFileError
        Naming ``path``: it is missing, not a Parquet file, damaged (a page checksum or
        decoding error), lacks a column of :data:`COLUMNS` or has one of another type, holds
        labels < 1 or frames outside ``frames``.
    """
    path = Path(path)
    df = _read_checked(path, SCHEMA, "particle table")
    if len(df):
        if (df["label"] < 1).any():
            raise InputFileError(path, "holds labels < 1 (0 is background); damaged table?")
        _check_in_chunk(path, df["frame"], frames, "holds frames")
    return df


def _check_in_chunk(path: Path, frame: pd.Series, frames: tuple[int, int] | None,
                    says: str) -> None:
    """:class:`InputFileError` naming ``path`` when a ``frame`` lies outside ``[t0, t1)``
    (``frames``; nothing to check when None): "``says`` lo..hi, outside its time chunk"."""
    lo, hi = int(frame.min()), int(frame.max())
    if frames is not None and not (frames[0] <= lo and hi < frames[1]):
        raise InputFileError(path, f"{says} {lo}..{hi}, outside its time chunk "
                                   f"({frames[0]}..{frames[1] - 1})")


def _read_checked(path: Path, schema: pa.Schema, what: str) -> pd.DataFrame:
    """The Parquet file ``path`` as a DataFrame, checked to hold every column of ``schema`` with
    its type (``what`` names the table in the :class:`InputFileError` raised otherwise)."""
    if not path.is_file():
        raise InputFileError(path, "does not exist" if not path.exists() else "is not a file")
    found = _read_schema(path)
    for field in schema:
        if field.name not in found.names:
            raise InputFileError(path, f"not a {what} from `etemseg measure` (no column "
                                       f"{field.name!r})")
        typ = found.field(field.name).type
        if not (typ == field.type or (pa.types.is_string(field.type)
                                      and (pa.types.is_large_string(typ)
                                           or pa.types.is_string_view(typ)))):
            raise InputFileError(path, f"column {field.name!r} has type {typ}, not {field.type}; "
                                       f"not a {what} from `etemseg measure`")
    try:
        return pd.read_parquet(path, engine="pyarrow", page_checksum_verification=True)
    except (OSError, pa.ArrowException, ValueError, EOFError) as exc:
        reason = (str(exc).strip().splitlines() or [""])[0][:160] or type(exc).__name__
        raise InputFileError(path, f"damaged Parquet file ({reason})") from exc


def particles_digest(df: pd.DataFrame) -> str:
    """Digest of a particle table's rows (``frame``, ``label``, ``area_px``): a frame-overlaps
    table records the one of the particle table measured with it, so that a reader can refuse to
    pair overlaps with the detections of another measurement."""
    h = hashlib.sha256()
    for c in ("frame", "label", "area_px"):
        h.update(np.ascontiguousarray(df[c].to_numpy(np.int64)).tobytes())
    return h.hexdigest()[:16]


#: The Parquet schema of a frame-overlaps table (``etemseg measure --overlaps``).
OVERLAP_SCHEMA: pa.Schema = pa.schema([pa.field(c, pa.int64()) for c in OVERLAP_COLUMNS])


def write_overlaps(df: pd.DataFrame, path: str | Path, *, metadata: dict | None = None) -> Path:
    """Write a frame-overlaps table (:data:`OVERLAP_COLUMNS`) atomically as zstd Parquet."""
    return write_table(df[list(OVERLAP_COLUMNS)], path, metadata=metadata,
                       schema=OVERLAP_SCHEMA)


def read_overlaps(path: str | Path, *, frames: tuple[int, int] | None = None) -> pd.DataFrame:
    """Read and check a frame-overlaps table written by :func:`write_overlaps`.

    Parameters
    ----------
    path : path
        An ``overlaps-{k}.parquet``.
    frames : (int, int), optional
        ``[t0, t1)``: every ``frame_b`` must lie in it (the pairs into the frames of a chunk).

    Raises
    ------
    InputFileError
        Naming ``path``: missing, unreadable or damaged, a column missing or of another type,
        a pair of frames that are not consecutive, labels < 1, no shared pixel, or a
        ``frame_b`` outside ``frames``.
    """
    path = Path(path)
    df = _read_checked(path, OVERLAP_SCHEMA, "frame-overlaps table")[list(OVERLAP_COLUMNS)]
    if len(df):
        if (df["frame_b"] != df["frame_a"] + 1).any():
            raise InputFileError(path, "pairs frames that are not consecutive; damaged table?")
        if (df[["a", "b", "n_px"]].to_numpy() < 1).any():
            raise InputFileError(path, "holds labels or pixel counts < 1; damaged table?")
        _check_in_chunk(path, df["frame_b"], frames, "pairs into frames")
    return df


def _read_schema(path: str | Path) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except (OSError, pa.ArrowException, ValueError, EOFError) as exc:
        reason = (str(exc).strip().splitlines() or [""])[0][:160] or type(exc).__name__
        raise InputFileError(path, f"not a readable Parquet file ({reason})") from exc


def read_parquet_units(path: str | Path) -> dict[str, str]:
    """Unit of every column of a particle Parquet file, from its field metadata.

    Returns
    -------
    dict
        ``{column: unit}`` for the columns that have a unit (e.g. ``{"x_nm": "nm", ...}``).
    """
    units = {}
    for f in _read_schema(path):
        if f.metadata and b"unit" in f.metadata:
            units[f.name] = f.metadata[b"unit"].decode()
    return units


def read_parquet_metadata(path: str | Path) -> dict:
    """The provenance dict written by :func:`write_parquet` (empty if there is none)."""
    meta = _read_schema(path).metadata or {}
    raw = meta.get(b"etemseg")
    return json.loads(raw) if raw else {}

