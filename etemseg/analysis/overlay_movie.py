"""Overlay movies: frames with particle contours coloured by track id, event markers, a time stamp
and a scale bar, written as an H.264 MP4 (imageio-ffmpeg).

A 240,000-frame movie (10 min at 400 frames/s) becomes a watchable minute: each output frame
covers ``every_ms`` of movie time (default: as much as makes the whole movie fit ``max_seconds``
of playback at ``fps``), chosen by time so that gaps in the recording never shift later frames
(:func:`plan_movie`).  Frames and masks are read Zarr chunk by Zarr chunk, only the chunks that
hold a chosen frame, with the next one read in a thread while this one is drawn; memory is
bounded by one Zarr chunk of each store whatever the movie length.  Everything is drawn with
NumPy on the (integer-)downscaled frame: contours are the inner boundaries of the track-id image
(8-connected components of the mask, numbered as ``etemseg measure`` numbers them, mapped to
``particle`` ids through ``trajectories.parquet``), text comes from a glyph atlas rendered once
with matplotlib (:class:`GlyphAtlas`), so a frame costs a few milliseconds.

Colours: a track keeps its colour for the whole movie (``PALETTE[particle % len(PALETTE)]``);
components too small to be measured (no trajectory row) are outlined in grey; a coalescence is a
white ring and a vanish a red cross, shown for ``event_s`` seconds of playback from the output
frame whose time window holds the event.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from scipy import ndimage

from etemseg.errors import ConfigError, InputFileError, is_int, is_number
from etemseg.io.atomic import atomic_path
from etemseg.io.store import MovieStore, read_ahead

__all__ = ["MARKERS", "PALETTE", "GlyphAtlas", "MoviePlan", "OverlayMovieParams",
           "draw_contours", "plan_movie", "render_overlay_movie", "track_colours",
           "track_id_image"]

log = logging.getLogger(__name__)

#: Track colours (RGB, uint8): bright, mutually distinct, none near white, grey or the markers' red.
PALETTE = np.array([
    (31, 119, 255), (255, 127, 14), (44, 210, 44), (148, 103, 229), (23, 220, 240),
    (255, 196, 0), (227, 119, 194), (140, 200, 80), (0, 160, 140), (255, 160, 120),
    (120, 170, 255), (200, 120, 40), (170, 255, 120), (210, 80, 255), (0, 200, 255),
    (230, 230, 60), (255, 100, 170), (100, 220, 180), (180, 140, 255), (255, 140, 60),
], dtype=np.uint8)
#: Outline of a component that has no trajectory row (under the measurement's minimum area).
UNTRACKED = np.array((150, 150, 150), np.uint8)
#: Event kind -> (shape, RGB colour) of its marker.
MARKERS = {"coalescence": ("ring", (255, 255, 255)), "vanish": ("cross", (255, 40, 40))}
TEXT = np.array((255, 255, 255), np.uint8)


@dataclass(frozen=True)
class OverlayMovieParams:
    """Settings of an overlay movie (defaults: ``overlay_movie`` in the workflow config schema).

    Attributes
    ----------
    every_ms : float or None
        Movie time each output frame covers, ms (> 0); converted to a frame stride with the
        movie's frame rate (at least one frame).  None: the smallest stride that fits the whole
        movie into ``max_seconds``.
    max_seconds : float
        Longest playback, s (> 0); a movie that would run longer is cut (with a warning).
    fps : float
        Playback frame rate, frames/s (> 0).
    max_width_px : int
        Frames wider than this are shrunk by an integer factor (block mean), px (>= 16).
    line_px : int
        Contour width in output pixels (>= 1).
    event_s : float
        How long an event marker stays on screen, s of playback (>= 0; at least one frame).
    crf : int
        H.264 constant rate factor, 0 (lossless) .. 51 (worst); x264's default 23 keeps thin
        contours saturated (noisy frames take ~50 kB each at 512 x 512); 28 about halves the
        bytes with paler contours.
    """

    every_ms: float | None = None
    max_seconds: float = 60.0
    fps: float = 25.0
    max_width_px: int = 1024
    line_px: int = 2
    event_s: float = 0.4
    crf: int = 23

    def validate(self) -> None:
        """Raise :class:`~etemseg.errors.ConfigError` naming the first bad field
        (``overlay_movie.<field>``)."""

        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"overlay_movie.{name}: {why} (got {getattr(self, name)!r})")

        if self.every_ms is not None and not (is_number(self.every_ms) and self.every_ms > 0):
            raise bad("every_ms", "must be null or a number of ms > 0")
        for name in ("max_seconds", "fps"):
            if not (is_number(getattr(self, name)) and getattr(self, name) > 0):
                raise bad(name, "must be a number > 0")
        if not (is_int(self.max_width_px) and self.max_width_px >= 16):
            raise bad("max_width_px", "must be an integer >= 16")
        if not (is_int(self.line_px) and 1 <= self.line_px <= 16):
            raise bad("line_px", "must be an integer in [1, 16]")
        if not (is_number(self.event_s) and self.event_s >= 0):
            raise bad("event_s", "must be a number of s >= 0")
        if not (is_int(self.crf) and 0 <= self.crf <= 51):
            raise bad("crf", "must be an integer in [0, 51]")

    @classmethod
    def from_dict(cls, data: dict) -> OverlayMovieParams:
        """Validated parameters from a dict (None values ignored); unknown keys raise."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"overlay_movie.{unknown[0]}: unknown setting")
        params = cls(**{k: v for k, v in data.items() if v is not None})
        params.validate()
        return params


# --------------------------------------------------------------------------------------------
# which frames
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MoviePlan:
    """Which movie frames become output frames.

    Attributes
    ----------
    frames : (K,) int64
        Store index of each output frame, increasing.
    stride : int
        Movie frames per output frame (at the movie's frame rate).
    every_ms : float
        Movie time each output frame covers, ms (``stride / movie_fps``).
    fps : float
        Playback frame rate, frames/s.
    truncated : bool
        The movie did not fit ``max_seconds``: the output ends before the movie.
    """

    frames: np.ndarray
    stride: int
    every_ms: float
    fps: float
    truncated: bool

    @property
    def seconds(self) -> float:
        """Playback length, s."""
        return len(self.frames) / self.fps

    @property
    def speed(self) -> float:
        """Movie seconds per playback second (10 = ten times faster than real time)."""
        return self.every_ms / 1000.0 * self.fps


def plan_movie(time_s: np.ndarray, movie_fps: float, params: OverlayMovieParams) -> MoviePlan:
    """Choose the output frames of a movie.

    Output frame ``k`` shows the first stored frame at or after ``t0 + k * stride / movie_fps``
    (so a gap in the recording is skipped, never spread over later frames), for
    ``k < floor(max_seconds * fps)``; frames picked twice (inside a gap) are shown once.

    Parameters
    ----------
    time_s : (T,) float
        Time of each stored frame since the first, s (increasing).
    movie_fps : float
        The movie's frame rate, frames/s.
    params : OverlayMovieParams

    Returns
    -------
    MoviePlan
    """
    params.validate()
    time_s = np.asarray(time_s, float)
    n_out = max(1, math.floor(params.max_seconds * params.fps + 1e-9))
    if len(time_s) == 0:
        return MoviePlan(np.zeros(0, np.int64), 1, 1000.0 / movie_fps, params.fps, False)
    span = int(round((time_s[-1] - time_s[0]) * movie_fps)) + 1      # frames, gaps included
    if params.every_ms is None:
        stride = max(1, math.ceil(span / n_out))
    else:
        stride = max(1, int(round(params.every_ms / 1000.0 * movie_fps + 1e-9)))
    k = np.arange(min(n_out, math.ceil(span / stride)))
    targets = time_s[0] + k * stride / movie_fps
    tol = 0.25 / movie_fps                                             # float noise in time_s
    idx = np.searchsorted(time_s, targets - tol, side="left")
    idx = np.unique(idx[idx < len(time_s)]).astype(np.int64)
    truncated = math.ceil(span / stride) > n_out
    return MoviePlan(idx, stride, stride * 1000.0 / movie_fps, float(params.fps), truncated)


def event_windows(plan: MoviePlan, event_frames: np.ndarray) -> np.ndarray:
    """Output frame whose time window holds each event: the first ``k`` with
    ``event_frame <= plan.frames[k]`` (events after the last output frame: -1)."""
    k = np.searchsorted(plan.frames, np.asarray(event_frames, np.int64), side="left")
    return np.where(k < len(plan.frames), k, -1)


# --------------------------------------------------------------------------------------------
# drawing
# --------------------------------------------------------------------------------------------


def track_colours(ids: np.ndarray) -> np.ndarray:
    """RGB (uint8, ``ids.shape + (3,)``) of track ids: ``PALETTE[id % len(PALETTE)]`` for ids
    >= 1, :data:`UNTRACKED` grey for ids < 0 (untracked components)."""
    ids = np.asarray(ids, np.int64)
    out = PALETTE[np.mod(ids, len(PALETTE))]
    out[ids < 0] = UNTRACKED
    return out


def track_id_image(mask: np.ndarray, labels: np.ndarray, particles: np.ndarray) -> np.ndarray:
    """Track id of every pixel: 0 background, the ``particle`` of each measured component, -1 for
    components without a trajectory row.

    Parameters
    ----------
    mask : (H, W) array
        Mask frame (non-zero = particle).
    labels, particles : (n,) int
        The frame's trajectory rows: component ``label`` (8-connected, raster order, as
        ``etemseg measure`` numbers them) and its ``particle`` id.
    """
    comp, n = ndimage.label(np.asarray(mask) > 0, structure=np.ones((3, 3), bool))
    lut = np.full(n + 1, -1, np.int64)
    lut[0] = 0
    labels = np.asarray(labels, np.int64)
    ok = (labels >= 1) & (labels <= n)
    lut[labels[ok]] = np.asarray(particles, np.int64)[ok]
    return lut[comp]


def draw_contours(rgb: np.ndarray, ids: np.ndarray, line_px: int = 1) -> np.ndarray:
    """Paint the inner boundary of every non-zero region of ``ids`` into ``rgb`` (in place) in its
    track colour (:func:`track_colours`), ``line_px`` pixels wide; returns the boundary mask."""
    edge = np.zeros(ids.shape, bool)
    edge[1:] |= ids[1:] != ids[:-1]
    edge[:-1] |= ids[:-1] != ids[1:]
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    edge &= ids != 0
    for _ in range(int(line_px) - 1):            # thicken inwards, inside the same region
        grown = edge.copy()
        grown[1:] |= edge[:-1] & (ids[1:] == ids[:-1])
        grown[:-1] |= edge[1:] & (ids[:-1] == ids[1:])
        grown[:, 1:] |= edge[:, :-1] & (ids[:, 1:] == ids[:, :-1])
        grown[:, :-1] |= edge[:, 1:] & (ids[:, :-1] == ids[:, 1:])
        edge = grown & (ids != 0)
    rgb[edge] = track_colours(ids[edge])
    return edge


def draw_marker(rgb: np.ndarray, kind: str, y: float, x: float, radius: float,
                width: int = 2) -> None:
    """Draw the :data:`MARKERS` symbol of an event kind centred on ``(y, x)`` (output px): a ring
    of radius ``radius`` .. ``radius + width - 1`` or a cross, ``width`` px wide in the kind's
    colour with a one-pixel black outline on both sides (visible on any background)."""
    from skimage.draw import circle_perimeter, line

    shape, colour = MARKERS[kind]
    h, w = rgb.shape[:2]
    cy, cx, r = int(round(y)), int(round(x)), max(3, int(round(radius)))

    def stroke(d: int) -> list:
        if shape == "ring":
            return [circle_perimeter(cy, cx, r + d)]
        a = int(round(r * 0.7))
        return [line(cy - a, cx - a + d, cy + a, cx + a + d),
                line(cy - a, cx + a + d, cy + a, cx - a + d)]

    for offsets, c in (((-1, width), (0, 0, 0)), (range(width), colour)):
        for d in offsets:
            for rr, cc in stroke(d):
                keep = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
                rgb[rr[keep], cc[keep]] = c


class GlyphAtlas:
    """Printable-ASCII glyphs of a monospace font, rendered once with matplotlib (Agg), then
    blended into frames with NumPy (:meth:`draw`): text costs microseconds per frame.

    Parameters
    ----------
    size_px : int
        Glyph cell height, px (the font is about 0.7 of it).
    """

    CHARS = "".join(chr(c) for c in range(32, 127))

    def __init__(self, size_px: int):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.h = int(max(8, size_px))
        self.w = int(math.ceil(self.h * 0.62))
        n = len(self.CHARS)
        fig = Figure(figsize=(n * self.w / 100, self.h / 100), dpi=100, facecolor="black")
        FigureCanvasAgg(fig)
        for i, ch in enumerate(self.CHARS):
            fig.text((i + 0.5) * self.w / (n * self.w), 0.27, ch, color="white",
                     family="DejaVu Sans Mono", fontsize=self.h * 0.72 * 72 / 100,
                     ha="center", va="baseline")
        fig.canvas.draw()
        alpha = np.asarray(fig.canvas.buffer_rgba())[..., 0].astype(np.float32) / 255.0
        self.cells = alpha[:self.h, :n * self.w].reshape(self.h, n, self.w).transpose(1, 0, 2)

    def size(self, text: str) -> tuple[int, int]:
        """``(height, width)`` of ``text`` in px."""
        return self.h, self.w * len(text)

    def draw(self, rgb: np.ndarray, text: str, y: int, x: int, colour=TEXT,
             backdrop: bool = True) -> None:
        """Blend ``text`` into ``rgb`` (in place) with its top-left corner at ``(y, x)``; a dark
        half-transparent box behind it keeps it legible; characters outside printable ASCII show
        as ``?``; what falls outside the frame is clipped."""
        idx = [self.CHARS.find(c) if c in self.CHARS else self.CHARS.find("?") for c in text]
        if not idx:
            return
        alpha = np.concatenate([self.cells[i] for i in idx], axis=1)
        h, w = rgb.shape[:2]
        y0, x0 = max(0, y), max(0, x)
        y1, x1 = min(h, y + alpha.shape[0]), min(w, x + alpha.shape[1])
        if y1 <= y0 or x1 <= x0:
            return
        a = alpha[y0 - y:y1 - y, x0 - x:x1 - x, None]
        region = rgb[y0:y1, x0:x1].astype(np.float32)
        if backdrop:
            region *= 0.45
        region = region * (1 - a) + np.asarray(colour, np.float32) * a
        rgb[y0:y1, x0:x1] = np.clip(region + 0.5, 0, 255).astype(np.uint8)


def nice_length_nm(width_nm: float) -> float:
    """A 1-2-5 length, nm, of about a fifth of ``width_nm`` (the scale bar's)."""
    target = max(width_nm / 5, 1e-3)
    base = 10 ** math.floor(math.log10(target))
    return max(v * base for v in (1, 2, 5) if v * base <= target)


def draw_scale_bar(rgb: np.ndarray, glyphs: GlyphAtlas, nm_per_px: float) -> float:
    """A white bar of :func:`nice_length_nm` with its length written above, lower left; returns
    the bar's length, nm."""
    h, w = rgb.shape[:2]
    length_nm = nice_length_nm(w * nm_per_px)
    length_px = max(1, int(round(length_nm / nm_per_px)))
    thick = max(3, h // 120)
    x0, y1 = max(4, w // 25), h - max(4, h // 25)
    rgb[y1 - thick:y1, x0:x0 + length_px] = 255
    label = f"{length_nm:g} nm"
    th, tw = glyphs.size(label)
    glyphs.draw(rgb, label, y1 - thick - th - 2, x0 + max(0, (length_px - tw) // 2))
    return length_nm


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameTracks:
    """Trajectory rows of the output frames, sorted by frame: component ``label`` -> ``particle``.
    """

    frame: np.ndarray
    label: np.ndarray
    particle: np.ndarray

    def of(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """``(labels, particles)`` of frame ``t``."""
        a, b = np.searchsorted(self.frame, [t, t + 1])
        return self.label[a:b], self.particle[a:b]


def _set_id(path: Path) -> str | None:
    try:
        meta = json.loads((pq.read_schema(path).metadata or {}).get(b"etemseg", b"{}"))
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for damaged files
        raise InputFileError(path, f"not a readable Parquet table ({type(exc).__name__})") from exc
    return meta.get("set_id")


def read_tracks(tracks_dir: str | Path, frames: np.ndarray) -> tuple[FrameTracks, pd.DataFrame]:
    """The trajectory rows of ``frames`` and the coalescence / vanish events of a tracking run.

    Reads only the columns needed and, for the trajectories, only the rows of ``frames`` (row
    groups are skipped by their statistics), so memory follows the output, not the movie.

    Parameters
    ----------
    tracks_dir : path
        Folder with ``trajectories.parquet`` and ``events.parquet`` of one ``etemseg track`` run.
    frames : (K,) int
        Store indices of the output frames.

    Returns
    -------
    tracks : FrameTracks
    events : pandas.DataFrame
        ``kind``, ``frame``, ``x_px``, ``y_px``, ``eq_diameter_nm`` of the events drawn
        (:data:`MARKERS`), sorted by frame.

    Raises
    ------
    InputFileError
        A table is missing, unreadable, lacks a column, or the two come from different runs.
    """
    tracks_dir = Path(tracks_dir)
    paths = {name: tracks_dir / f"{name}.parquet" for name in ("trajectories", "events")}
    for path in paths.values():
        if not path.is_file():
            raise InputFileError(path, "missing; run `etemseg track` first")
    ids = {name: _set_id(path) for name, path in paths.items()}
    if len({i for i in ids.values() if i is not None}) > 1:
        raise InputFileError(tracks_dir, "its tables come from different runs of `etemseg "
                                         f"track` (set ids {ids}); rerun `etemseg track`")
    wanted = {"trajectories": ["frame", "label", "particle"],
              "events": ["kind", "frame", "x_px", "y_px", "eq_diameter_nm"]}
    tables = {}
    for name, path in paths.items():
        have = set(pq.read_schema(path).names)
        missing = [c for c in wanted[name] if c not in have]
        if missing:
            raise InputFileError(path, f"has no column {missing[0]!r}; not an etemseg {name} "
                                       "table")
        filters = ([("frame", "in", [int(f) for f in frames])]
                   if name == "trajectories" and len(frames) else None)
        tables[name] = pq.read_table(path, columns=wanted[name], filters=filters).to_pandas()
    traj = tables["trajectories"].sort_values(["frame", "label"], kind="stable")
    events = tables["events"]
    events = events[events["kind"].isin(list(MARKERS))].sort_values("frame", kind="stable")
    return (FrameTracks(traj["frame"].to_numpy(np.int64), traj["label"].to_numpy(np.int64),
                        traj["particle"].to_numpy(np.int64)), events.reset_index(drop=True))


def _blocks(frames: MovieStore, masks: MovieStore, idx: np.ndarray
            ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(indices, frames, masks)`` of the chosen frames, one Zarr chunk row of the frames store
    at a time (only the rows holding a chosen frame are read)."""
    step = int(frames.array.chunks[0])
    rows = idx // step
    for r in np.unique(rows):
        sel = idx[rows == r]
        a, b = int(sel[0]), int(sel[-1]) + 1
        yield sel, frames.read(a, b)[sel - a], masks.read(a, b)[sel - a]


def open_inputs(frames_path, masks_path) -> tuple[MovieStore, MovieStore]:
    """The frame and mask stores of one movie, checked to be frame-aligned."""
    frames, masks = MovieStore.open(frames_path), MovieStore.open(masks_path)
    if masks.array.shape != frames.array.shape:
        raise InputFileError(masks.path, f"has shape {masks.array.shape}, the frames "
                                         f"{frames.path} {frames.array.shape}; not the same movie")
    return frames, masks


# --------------------------------------------------------------------------------------------
# composing and writing
# --------------------------------------------------------------------------------------------


def _decimals(step_s: float) -> int:
    """Decimals that show every multiple of ``step_s`` exactly (at most 6)."""
    for d in range(7):
        v = step_s * 10 ** d
        if abs(v - round(v)) < 1e-6 * max(1.0, v):
            return d
    return 6


@dataclass
class _Canvas:
    """What every output frame shares: downscale factor, display range, fonts, texts."""

    factor: int
    lo: float
    hi: float
    shape: tuple[int, int]              # output (H, W), even
    glyphs: GlyphAtlas
    nm_per_px: float | None             # of the output frame
    line_px: int
    decimals: int
    title: str
    speed: str

    def grey(self, frame: np.ndarray) -> np.ndarray:
        """Downscaled (block mean), display-scaled uint8 RGB frame, padded to :attr:`shape`."""
        f = self.factor
        x = np.asarray(frame, np.float32)
        if f > 1:
            h, w = x.shape[0] // f, x.shape[1] // f
            x = x[:h * f, :w * f].reshape(h, f, w, f).mean(axis=(1, 3))
        g = np.clip((x - self.lo) * (255.0 / (self.hi - self.lo)) + 0.5, 0, 255).astype(np.uint8)
        out = np.zeros((*self.shape, 3), np.uint8)
        out[:g.shape[0], :g.shape[1]] = g[..., None]
        return out

    def ids(self, ids: np.ndarray) -> np.ndarray:
        """Track-id image on the output grid (nearest sample), padded with background."""
        small = ids[::self.factor, ::self.factor][:self.shape[0], :self.shape[1]]
        out = np.zeros(self.shape, np.int64)
        out[:small.shape[0], :small.shape[1]] = small
        return out


def _canvas(frames: MovieStore, plan: MoviePlan, params: OverlayMovieParams,
            title: str) -> _Canvas:
    h, w = frames.frame_shape
    factor = max(1, math.ceil(w / params.max_width_px))
    oh, ow = h // factor, w // factor
    shape = (oh + oh % 2, ow + ow % 2)                    # H.264 4:2:0 needs even sizes
    pick = plan.frames[[0, len(plan.frames) // 2, -1]]
    sample = frames.take(np.unique(pick))[:, ::2, ::2].astype(np.float32)
    finite = sample[np.isfinite(sample)]
    lo, hi = (np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0))
    hi = hi if hi > lo else lo + 1
    ps = frames.pixel_size_nm
    speed = f"{plan.speed:.3g}x real time"
    return _Canvas(factor, float(lo), float(hi), shape, GlyphAtlas(max(12, shape[0] // 28)),
                   ps * factor if ps else None, params.line_px,
                   _decimals(1.0 / frames.fps), title, speed)


def compose_frame(canvas: _Canvas, frame: np.ndarray, ids: np.ndarray, t_s: float, index: int,
                  markers: pd.DataFrame) -> np.ndarray:
    """One output frame (uint8 RGB, ``canvas.shape``): the grey frame, contours coloured by track
    id, event markers (``markers``: ``kind``, ``y``, ``x``, ``r`` in output px), time stamp and
    frame index (upper left), title (upper right), scale bar (lower left), legend and playback
    speed (lower right)."""
    rgb = canvas.grey(frame)
    draw_contours(rgb, canvas.ids(ids), canvas.line_px)
    for kind, y, x, r in markers[["kind", "y", "x", "r"]].itertuples(index=False):
        draw_marker(rgb, kind, y, x, r)
    g = canvas.glyphs
    pad = max(4, g.h // 3)
    g.draw(rgb, f"t = {t_s:.{canvas.decimals}f} s", pad, pad)
    g.draw(rgb, f"frame {index}", pad + g.h, pad)
    if canvas.title:
        g.draw(rgb, canvas.title, pad, canvas.shape[1] - pad - g.size(canvas.title)[1])
    if canvas.nm_per_px:
        draw_scale_bar(rgb, g, canvas.nm_per_px)
    _legend(rgb, canvas)
    return rgb


def _legend(rgb: np.ndarray, canvas: _Canvas) -> None:
    g = canvas.glyphs
    h, w = canvas.shape
    pad = max(4, g.h // 3)
    y = h - pad - g.h
    g.draw(rgb, canvas.speed, y, w - pad - g.size(canvas.speed)[1])
    for kind in reversed(list(MARKERS)):
        y -= g.h + 2
        x = w - pad - g.size(kind)[1]
        g.draw(rgb, kind, y, x)
        draw_marker(rgb, kind, y + g.h / 2, x - g.h * 0.8, g.h * 0.35)


def _markers(plan: MoviePlan, events: pd.DataFrame, canvas: _Canvas, ps: float | None,
             params: OverlayMovieParams) -> pd.DataFrame:
    """Events with their first output frame ``k0``, last ``k1`` and marker geometry in output px."""
    ev = events.copy()
    ev["k0"] = event_windows(plan, ev["frame"].to_numpy())
    ev = ev[ev["k0"] >= 0]
    ev["k1"] = ev["k0"] + max(1, int(round(params.event_s * plan.fps)))
    f = canvas.factor
    d_px = ev["eq_diameter_nm"].to_numpy(float) / ps if ps else np.full(len(ev), np.nan)
    ev["r"] = np.where(np.isfinite(d_px), d_px / 2, 6.0) / f + max(4, canvas.line_px + 2)
    ev["y"], ev["x"] = ev["y_px"] / f, ev["x_px"] / f
    return ev.reset_index(drop=True)


def _open_writer(path: Path, shape: tuple[int, int], params: OverlayMovieParams, threads: int):
    try:
        import imageio_ffmpeg
    except ImportError:
        raise ConfigError("the imageio-ffmpeg package is not installed (it writes the MP4); "
                          "`pip install imageio-ffmpeg`") from None
    gen = imageio_ffmpeg.write_frames(
        str(path), (shape[1], shape[0]), fps=params.fps, codec="libx264", quality=None,
        pix_fmt_out="yuv420p", macro_block_size=1, ffmpeg_log_level="error",
        output_params=["-crf", str(params.crf), "-preset", "veryfast", "-threads",
                       str(max(1, int(threads))), "-movflags", "+faststart", "-f", "mp4"])
    gen.send(None)
    return gen


def render_overlay_movie(frames_path, masks_path, tracks_dir, out, *,
                         params: OverlayMovieParams | None = None, title: str = "",
                         threads: int = 2, progress: bool = False) -> dict:
    """Write the overlay movie of one movie and model as an H.264 MP4, atomically.

    Parameters
    ----------
    frames_path, masks_path : path
        Frame store (``frames.zarr``) and mask store (``{model}/mask.zarr``) of the movie.
    tracks_dir : path
        Folder with the ``trajectories.parquet`` and ``events.parquet`` of the masks.
    out : path
        The ``.mp4`` to write (built under a temporary name, renamed when complete).
    params : OverlayMovieParams, optional
    title : str
        Written in the upper right corner (e.g. ``"demo / unet4-norm"``).
    threads : int
        Encoder threads.
    progress : bool
        Show a progress bar.

    Returns
    -------
    dict
        ``path``, ``frames`` (output frames), ``seconds`` (playback), ``fps``, ``stride``
        (movie frames per output frame), ``every_ms``, ``speed``, ``truncated``, ``size``
        ``[H, W]`` px, ``movie_frames`` (the store indices shown).
    """
    from tqdm.auto import tqdm

    params = params or OverlayMovieParams()
    params.validate()
    frames, masks = open_inputs(frames_path, masks_path)
    plan = plan_movie(frames.time_s(), frames.fps, params)
    if not len(plan.frames):
        raise InputFileError(frames.path, "holds no frames; nothing to render")
    if plan.truncated:
        log.warning("%s: at %g ms per output frame the movie does not fit %g s of playback; the "
                    "overlay movie ends at frame %d of %d", out, plan.every_ms,
                    params.max_seconds, plan.frames[-1], frames.n_frames)
    tracks, events = read_tracks(tracks_dir, plan.frames)
    canvas = _canvas(frames, plan, params, title)
    ev = _markers(plan, events, canvas, frames.pixel_size_nm, params)
    time_s = frames.time_s()
    bar = tqdm(total=len(plan.frames), desc=f"overlay movie {Path(out).name}", unit="frame",
               disable=not progress)
    with atomic_path(out) as tmp, bar:
        writer = _open_writer(tmp, canvas.shape, params, threads)
        k = 0
        try:
            for sel, fblock, mblock in read_ahead(_blocks(frames, masks, plan.frames)):
                for t, frame, mask in zip(sel, fblock, mblock):
                    ids = track_id_image(mask, *tracks.of(int(t)))
                    shown = ev[(ev["k0"] <= k) & (k < ev["k1"])]
                    writer.send(compose_frame(canvas, frame, ids, float(time_s[t]), int(t),
                                              shown).tobytes())
                    k += 1
                    bar.update(1)
        finally:
            writer.close()
    log.info("%s: %d frames (%g ms of movie each, %.3g x real time), %.1f s at %g fps", out,
             len(plan.frames), plan.every_ms, plan.speed, plan.seconds, plan.fps)
    return {"path": str(out), "frames": int(len(plan.frames)), "seconds": plan.seconds,
            "fps": plan.fps, "stride": plan.stride, "every_ms": plan.every_ms,
            "speed": plan.speed, "truncated": plan.truncated, "size": list(canvas.shape),
            "movie_frames": plan.frames.tolist()}
