"""The Zarr movie store: one (t, y, x) array per movie and product, chunked along time.

Layout of a store (a Zarr v3 group, OME-NGFF 0.5 so napari / ome-zarr readers open it)::

    frames.zarr/
        zarr.json        group attributes: ``ome`` (multiscales axes t/y/x in s/nm) and ``etemseg``
                         (pixel_size_nm, fps, chunk_frames, n_chunks, gaps, source, ...)
        0/               the movie, shape (T, H, W); Zarr chunks (zarr_chunk_frames, H, W)
        time_s/          float64 (T,)  time of each stored frame since the first, s
                                       (gaps show as jumps)
        frame_index/     int64 (T,)    absolute camera frame index of each stored frame
        sources/         str (T,)      source file of each frame, relative to ``etemseg.source``
        source_pages/    int32 (T,)    page of each frame within its source file

Work is split into *time chunks* of ``chunk_frames`` frames (one Snakemake job each). A time chunk
is a whole number of Zarr chunks, so two jobs never write the same Zarr chunk. Zarr chunks are kept
small enough (default <= 64 MiB uncompressed) that a job streams its time chunk block by block with
memory bounded by one block, whatever the movie length.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import zarr
import zarr.codecs

from etemseg import __version__
from etemseg.io.atomic import atomic_path
from etemseg.errors import ConfigError, InputFileError, is_int, is_number

ARRAY = "0"
#: Codecs offered for the movie array; the ingest benchmark compares them.
CODECS = ("blosc-zstd", "blosc-lz4", "zstd", "none")
DEFAULT_CODEC = "blosc-zstd"
DEFAULT_CLEVEL = 3
DEFAULT_BLOCK_BYTES = 64 * 2**20
#: Environment variable read by :func:`fault_point` (a test hook; unset in normal use).
FAULT_ENV = "ETEMSEG_FAULT"
#: What Zarr and its codecs raise for a damaged chunk: a short or checksum-failing chunk
#: (ValueError), Blosc/Zstd decompression errors (RuntimeError), an unreadable file (OSError).
_DECODE_ERRORS = (ValueError, RuntimeError, OSError, EOFError)
#: (store, chunk) pairs already warned about as missing (one warning per chunk and process).
_WARNED: set = set()

log = logging.getLogger(__name__)


_TMP_NAME = re.compile(r"^\.(?P<name>.+)\.tmp-[A-Za-z0-9_]+$")


def display_path(path: str | Path) -> Path:
    """``path`` as the user knows it: the temporary sibling names of
    :func:`~etemseg.io.atomic.atomic_path` (``.frames.zarr.tmp-x1y2``) replaced by their target
    (``frames.zarr``), so messages about a store being built name the output, not the temporary."""
    path = Path(path)
    parts = [(m["name"] if (m := _TMP_NAME.match(p)) else p) for p in path.parts]
    return Path(*parts) if parts else path


def _reason(exc: BaseException) -> str:
    """First line of an exception's message (its type if empty), at most 160 characters."""
    text = (str(exc).strip().splitlines() or [""])[0] or type(exc).__name__
    if "checksum" in text.lower():
        text = "CRC-32C checksum mismatch"
    return text if len(text) <= 160 else text[:157] + "..."


def compressors_for(codec: str, clevel: int = DEFAULT_CLEVEL) -> list:
    """Zarr v3 compressor list for a codec name in :data:`CODECS`.

    ``blosc-*`` use Blosc with bit-shuffle (integer pixel data with few significant bits compresses
    far better bit-shuffled); ``zstd`` is plain Zstandard; ``none`` stores raw bytes.

    Every codec ends with a CRC-32C checksum of the chunk (the Zarr v3 ``crc32c`` codec, 4 bytes
    per chunk): without it a flipped bit in a compressed chunk decodes silently into wrong pixels;
    with it reading the chunk fails and :class:`MovieStore` reports the store and chunk.
    """
    if codec in CODECS and codec != "none":
        lo, hi = (0, 9) if codec.startswith("blosc") else (-(1 << 17), 22)
        if not is_int(clevel) or not lo <= clevel <= hi:
            raise ConfigError(f"clevel: {codec} takes a compression level {lo}..{hi}, "
                              f"got {clevel!r}")
    crc = [zarr.codecs.Crc32cCodec()]
    if codec == "blosc-zstd":
        return [zarr.codecs.BloscCodec(cname="zstd", clevel=clevel, shuffle="bitshuffle")] + crc
    if codec == "blosc-lz4":
        return [zarr.codecs.BloscCodec(cname="lz4", clevel=clevel, shuffle="bitshuffle")] + crc
    if codec == "zstd":
        return [zarr.codecs.ZstdCodec(level=clevel)] + crc
    if codec == "none":
        return crc
    raise ConfigError(f"codec: unknown codec {codec!r}; choose one of {', '.join(CODECS)}")


#: Default temporal window of the input frames, ms: the centred mean of 5 frames at 400 frames/s
#: (the config's ``window_ms``). Measured on the realistic simulator (docs/inference.md): pseudo-
#: label pixel F1 +0.01 at 0.18 nm/px, +0.07..0.12 at 0.36 nm/px, -0.006 at 0.06 nm/px.
DEFAULT_WINDOW_MS = 12.5


def store_dtype(source_dtype) -> np.dtype:
    """Pixel type of the store for a source pixel type: float32 for floats, else uint16."""
    source_dtype = np.dtype(source_dtype)
    if source_dtype.kind == "f":
        return np.dtype(np.float32)
    if source_dtype.kind in "ui":
        return np.dtype(np.uint16)
    raise ConfigError(f"unsupported source pixel type {source_dtype}")


def to_store_dtype(frame: np.ndarray, dtype: np.dtype, path: Path) -> np.ndarray:
    """Convert one frame to the store's pixel type, refusing values that do not fit.

    Integer frames must lie in [0, 65535] (K2 counting frames do); anything else is an error naming
    ``path`` rather than a silent wrap-around.
    """
    if dtype.kind == "f":
        if frame.dtype.kind != "f":
            raise InputFileError(path, f"integer frame ({frame.dtype}) in a movie of float frames")
        return frame.astype(np.float32, copy=False)
    if frame.dtype.kind not in "ui":
        raise InputFileError(path, f"{frame.dtype} frame in a movie of integer frames")
    if frame.dtype.itemsize > 2 or frame.dtype.kind == "i":
        lo, hi = int(frame.min()), int(frame.max())
        if lo < 0 or hi > 65535:
            raise InputFileError(path, f"pixel values {lo}..{hi} do not fit uint16 (0..65535)")
    return frame.astype(np.uint16, copy=False)


def window_means(raw: np.ndarray | Sequence[np.ndarray], a: int, t0: int, t1: int, window: int
                 ) -> np.ndarray:
    """Means (float32) of frames ``[t0, t1)`` over centred windows of ``window`` frames, from
    ``raw``, the frames ``[a, a + len(raw))`` -- one array, or consecutive pieces of the movie
    (read in turn, never concatenated) -- which must hold every frame of those windows that
    exists (windows are cut where ``raw`` ends: at the movie's ends). Running sums: integer
    counts (uint16) are summed exactly (float32 holds integers up to 2**24)."""
    arrays = [raw] if isinstance(raw, np.ndarray) else list(raw)
    pieces = [p for p in arrays if len(p)] or arrays[:1]
    while len(pieces) > 3:                       # the kernel reads up to three pieces
        pieces[-2:] = [np.concatenate(pieces[-2:])]
    frame_shape = pieces[0].shape[1:]
    empty = pieces[0][:0]
    pieces = [np.ascontiguousarray(p) for p in pieces] + [empty] * (3 - len(pieces))
    from etemseg.io.means import running_means   # numba: loaded by the jobs that need it

    out = np.empty((t1 - t0, *frame_shape), np.float32)
    running_means(*pieces, a, t0, t1, window, out, np.zeros(frame_shape, np.float32))
    return out


def frames_in_window(window_ms: float, fps: float) -> int:
    """The odd number of frames of a centred temporal window of ``window_ms`` ms at ``fps``
    frames/s: ``window_ms * fps / 1000`` rounded to the nearest odd integer (>= 1)."""
    if not is_number(window_ms) or window_ms < 0:
        raise ConfigError(f"window_ms: must be a number >= 0 (ms), got {window_ms!r}")
    n = float(window_ms) * float(fps) / 1000.0
    return max(1, 2 * int(math.floor((n - 1.0) / 2.0 + 0.5)) + 1)


def n_chunks(n_frames: int, chunk_frames: int) -> int:
    """Number of time chunks of ``chunk_frames`` frames covering ``n_frames`` frames."""
    if chunk_frames < 1:
        raise ConfigError(f"chunk_frames: must be >= 1, got {chunk_frames}")
    return max(1, math.ceil(n_frames / chunk_frames))


def chunk_bounds(k: int, n_frames: int, chunk_frames: int) -> tuple[int, int]:
    """Frame range ``[t0, t1)`` of time chunk ``k``."""
    total = n_chunks(n_frames, chunk_frames)
    if not 0 <= k < total:
        raise ConfigError(f"chunk: {k} is out of range; this movie has chunks 0..{total - 1}")
    t0 = k * chunk_frames
    return t0, min(n_frames, t0 + chunk_frames)


def auto_zarr_chunk_frames(chunk_frames: int, frame_shape: Sequence[int], itemsize: int,
                           max_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
    """Largest divisor of ``chunk_frames`` whose Zarr chunk stays under ``max_bytes``.

    At least 1.
    """
    frame_bytes = int(np.prod(frame_shape)) * itemsize
    best = 1
    for d in range(1, chunk_frames + 1):
        if chunk_frames % d == 0 and d * frame_bytes <= max_bytes:
            best = d
    return best


def _ome_attrs(name: str, fps: float, pixel_size_nm: float | None,
               image_label: dict | None = None) -> dict:
    """OME-NGFF 0.5 ``ome`` attributes: one-level ``multiscales`` with axes t/y/x in s/nm
    (``image-label`` too for a label image)."""
    px = float(pixel_size_nm) if pixel_size_nm else 1.0
    unit = "nanometer" if pixel_size_nm else None
    axes = [{"name": "t", "type": "time", "unit": "second"}]
    for ax in ("y", "x"):
        entry = {"name": ax, "type": "space"}
        if unit:
            entry["unit"] = unit
        axes.append(entry)
    ome = {
        "version": "0.5",
        "multiscales": [{
            "name": name,
            "axes": axes,
            "datasets": [{
                "path": ARRAY,
                "coordinateTransformations": [{"type": "scale", "scale": [1.0 / fps, px, px]}],
            }],
        }],
    }
    if image_label is not None:
        ome["image-label"] = image_label
    return ome


#: Display colours of a 0/1 mask as an OME-NGFF label image: background clear, particles gold.
MASK_LABEL_COLORS = [{"label-value": 0, "rgba": [0, 0, 0, 0]},
                     {"label-value": 1, "rgba": [255, 215, 0, 160]}]
MASK_LABEL_PROPERTIES = [{"label-value": 0, "class": "background"},
                         {"label-value": 1, "class": "particle"}]


def image_label_attrs(path: str | Path, source: str | Path) -> dict:
    """OME-NGFF 0.5 ``image-label`` metadata of a 0/1 mask store at ``path`` derived from the
    image store ``source``: colours, classes and ``source.image``, the path of ``source``
    relative to ``path`` (``../../frames.zarr`` for ``results/{movie}/{model}/mask.zarr``), so an
    OME-Zarr reader that opens the mask also loads the frames beneath it (ome-zarr-py,
    napari-ome-zarr). Temporary sibling names are resolved to their targets first."""
    rel = os.path.relpath(os.path.abspath(display_path(source)),
                          os.path.abspath(display_path(path)))
    return {"colors": MASK_LABEL_COLORS, "properties": MASK_LABEL_PROPERTIES,
            "source": {"image": Path(rel).as_posix()}}


def _label_metadata(path: str | Path, dtype: np.dtype, image_label: dict | None) -> dict | None:
    """``image_label``, checked to go with an integer dtype (a ConfigError otherwise)."""
    if image_label is not None and not np.issubdtype(dtype, np.integer):
        raise ConfigError(f"{display_path(path)}: an OME-NGFF label image needs an integer "
                          f"dtype, not {dtype}")
    return image_label


def create_store(path: str | Path, *, n_frames: int, frame_shape: tuple[int, int], dtype,
                 chunk_frames: int, fps: float, pixel_size_nm: float | None,
                 time_s: np.ndarray | None = None, frame_index: np.ndarray | None = None,
                 sources: Sequence[str] | None = None, source_pages: Sequence[int] | None = None,
                 codec: str = DEFAULT_CODEC, clevel: int = DEFAULT_CLEVEL,
                 zarr_chunk_frames: int | None = None, attrs: dict | None = None,
                 image_label: dict | None = None) -> Path:
    """Create an empty movie store (metadata and axes only; chunks are written by jobs).

    The store is built in a temporary sibling and renamed into place, so an existing store is
    replaced only by a complete new one.

    Parameters
    ----------
    path : path
        Store directory (``*.zarr``).
    n_frames, frame_shape : int, (H, W)
        Shape of the movie array, ``(n_frames, H, W)``.
    dtype : numpy dtype
        Pixel type (uint16 frames, float32 probabilities, uint8 masks).
    chunk_frames : int
        Frames per time chunk (one job each).
    fps : float
        Frame rate, frames/s.
    pixel_size_nm : float or None
        Pixel size in nm (None when uncalibrated).
    time_s, frame_index : (T,) arrays, optional
        Frame times in s and absolute camera frame indices; default ``arange(T)/fps``.
    sources, source_pages : (T,) sequences, optional
        Source file (relative path) and page of every frame.
    codec, clevel : str, int
        Compression (see :func:`compressors_for`).
    zarr_chunk_frames : int, optional
        Frames per Zarr chunk; must divide ``chunk_frames``.
        Default: :func:`auto_zarr_chunk_frames`.
    attrs : dict, optional
        Extra entries for the ``etemseg`` attribute block.
    image_label : dict, optional
        OME-NGFF ``image-label`` metadata (:func:`image_label_attrs`; integer dtypes only).
    """
    path = Path(path)
    dtype = np.dtype(dtype)
    H, W = (int(s) for s in frame_shape)
    if zarr_chunk_frames is None:
        zarr_chunk_frames = auto_zarr_chunk_frames(chunk_frames, (H, W), dtype.itemsize)
    if chunk_frames % zarr_chunk_frames:
        raise ConfigError(f"zarr_chunk_frames: {zarr_chunk_frames} must divide chunk_frames "
                          f"({chunk_frames}) so that jobs never share a Zarr chunk")
    if time_s is None:
        frame_index = np.arange(n_frames, dtype=np.int64)
        time_s = frame_index / fps
    meta = {
        "version": __version__,
        "pixel_size_nm": None if pixel_size_nm is None else float(pixel_size_nm),
        "fps": float(fps),
        "n_frames": int(n_frames),
        "frame_shape": [H, W],
        "chunk_frames": int(chunk_frames),
        "zarr_chunk_frames": int(zarr_chunk_frames),
        "n_chunks": n_chunks(n_frames, chunk_frames),
        "codec": codec,
        "clevel": int(clevel),
        "units": {"time_s": "s", "pixel_size_nm": "nm", "fps": "1/s"},
    }
    meta.update(attrs or {})
    with atomic_path(path, directory=True) as tmp:
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        group.attrs.update({"ome": _ome_attrs(display_path(path).stem, fps, pixel_size_nm,
                                              _label_metadata(path, dtype, image_label)),
                            "etemseg": meta})
        group.create_array(ARRAY, shape=(n_frames, H, W), chunks=(zarr_chunk_frames, H, W),
                           dtype=dtype, compressors=compressors_for(codec, clevel),
                           fill_value=0, dimension_names=("t", "y", "x"))
        group.create_array("time_s", data=np.asarray(time_s, dtype=np.float64))
        group.create_array("frame_index", data=np.asarray(frame_index, dtype=np.int64))
        if sources is not None:
            _write_sources(group, n_frames, sources, source_pages)
    return path


def _write_sources(group: zarr.Group, n_frames: int, sources: Sequence[str],
                   source_pages: Sequence[int] | None) -> None:
    """The ``sources`` (file of each frame) and ``source_pages`` arrays of a new store."""
    arr = group.create_array("sources", shape=(n_frames,), dtype=str,
                             chunks=(max(1, min(n_frames, 65536)),))
    arr[:] = np.asarray(list(sources), dtype=str)
    group.create_array("source_pages", data=np.asarray(
        source_pages if source_pages is not None else np.zeros(n_frames), dtype=np.int32))


@dataclass
class MovieStore:
    """An opened movie store: the (t, y, x) array plus its metadata."""

    path: Path
    group: zarr.Group
    array: zarr.Array
    meta: dict

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> "MovieStore":
        """Open a store created by :func:`create_store` (``mode='r+'`` for jobs that write chunks).

        Checks what every stage relies on (the movie, ``time_s`` and ``frame_index`` arrays and
        the ``chunk_frames``, ``fps`` and ``pixel_size_nm`` metadata); a damaged or foreign store
        is an :class:`InputFileError` naming it.
        """
        path = Path(path)

        def bad(problem: str) -> InputFileError:
            return InputFileError(display_path(path), problem)

        if not (path / "zarr.json").exists():
            raise bad("not an etemseg movie store (no zarr.json); run ingest first")
        try:
            group = zarr.open_group(path, mode=mode, zarr_format=3)
            meta = group.attrs.get("etemseg")
        except (ValueError, TypeError, OSError) as exc:  # JSONDecodeError is a ValueError
            raise bad(f"not a valid etemseg movie store ({_reason(exc)})") from exc
        if not isinstance(meta, dict):
            raise bad("not an etemseg movie store (no 'etemseg' attributes)")
        arrays = {}
        for name in (ARRAY, "time_s", "frame_index"):
            try:
                arrays[name] = group[name]
            except KeyError:
                raise bad(f"damaged or incomplete movie store: the {name!r} array is "
                          "missing") from None
            except (ValueError, TypeError, OSError) as exc:
                raise bad(f"damaged movie store: the {name!r} array cannot be opened "
                          f"({_reason(exc)})") from exc
            if not isinstance(arrays[name], zarr.Array):
                raise bad(f"damaged movie store: {name!r} is not an array")
        array = arrays[ARRAY]
        if array.ndim != 3:
            raise bad(f"the movie array has shape {array.shape}; expected (t, y, x)")
        for name in ("time_s", "frame_index"):
            if arrays[name].shape != array.shape[:1]:
                raise bad(f"damaged movie store: the {name!r} array has shape "
                          f"{arrays[name].shape}, not ({array.shape[0]},) like the movie")

        def shown(key):
            return "missing" if meta.get(key) is None else repr(meta[key])

        if not (is_int(meta.get("chunk_frames")) and meta["chunk_frames"] >= 1):
            raise bad(f"damaged movie store: metadata 'chunk_frames' is {shown('chunk_frames')}; "
                      "expected an integer >= 1")
        if not (is_number(meta.get("fps")) and meta["fps"] > 0):
            raise bad(f"damaged movie store: metadata 'fps' is {shown('fps')}; expected a "
                      "number > 0")
        ps = meta.get("pixel_size_nm")
        if ps is not None and not (is_number(ps) and ps > 0):
            raise bad(f"damaged movie store: metadata 'pixel_size_nm' is {ps!r}; expected a "
                      "number > 0 or null")
        if mode != "r":
            # Writers store every Zarr chunk, all-zero ones included (Zarr skips them by
            # default), so a missing chunk file always means "never written" (see read()).
            array = array.with_config({"write_empty_chunks": True})
        return cls(path, group, array, dict(meta))

    @property
    def n_frames(self) -> int:
        return int(self.array.shape[0])

    @property
    def frame_shape(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.array.shape[1:])

    @property
    def chunk_frames(self) -> int:
        return int(self.meta["chunk_frames"])

    @property
    def n_chunks(self) -> int:
        return n_chunks(self.n_frames, self.chunk_frames)

    @property
    def pixel_size_nm(self) -> float | None:
        return self.meta.get("pixel_size_nm")

    @property
    def fps(self) -> float:
        return float(self.meta["fps"])

    def time_s(self) -> np.ndarray:
        """Time of each frame since the first, s."""
        return self.read(0, self.n_frames, name="time_s")

    def frame_index(self) -> np.ndarray:
        """Absolute camera frame index of each frame."""
        return self.read(0, self.n_frames, name="frame_index")

    @property
    def is_frames_store(self) -> bool:
        """Whether this is a movie written by ``etemseg ingest`` (not a derived product)."""
        stage = self.meta.get("stage") or ("ingest" if "source" in self.meta else None)
        return stage == "ingest"

    def read(self, t0: int, t1: int, *, name: str = ARRAY) -> np.ndarray:
        """Frames ``[t0, t1)`` of the movie (or of the 1-D array ``name``), Zarr chunk by chunk.

        A chunk that cannot be decoded (truncated, corrupt, checksum mismatch, unreadable file)
        raises :class:`InputFileError` naming the store and the chunk. Zarr reads a *missing*
        chunk file as zeros; writers store every chunk (see :meth:`open`), so a missing chunk of
        the movie array means its job never ran: an error for a frames store (``ingest``), whose
        pixels every later stage needs, and a logged warning for a derived store (pseudo-labels,
        probabilities, masks), where stores written by older versions legitimately skip all-zero
        chunks. Missing chunks of the small per-frame arrays (``time_s``...) are not checked:
        they are written at creation, and Zarr skips those equal to the fill value.
        """
        arr = self.array if name == ARRAY else self.group[name]
        t0, t1 = max(0, int(t0)), min(int(arr.shape[0]), int(t1))
        if t1 <= t0:
            return arr[t0:t1]
        step = int(arr.chunks[0])
        parts = []
        for c in range(t0 // step, (t1 - 1) // step + 1):
            a, b = max(t0, c * step), min(t1, (c + 1) * step)
            if name == ARRAY:
                self._check_present(c)
            try:
                parts.append(arr[a:b])
            except _DECODE_ERRORS as exc:
                raise self._damaged(arr, name, c, exc) from exc
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def read_mean(self, t0: int, t1: int, window: int) -> np.ndarray:
        """Frames ``[t0, t1)``, each the mean of the ``window`` frames centred on it (float32).

        ``window`` is odd (:func:`frames_in_window`); 1 returns :meth:`read` unchanged. The
        window is cut at the movie's ends (the mean of the frames there are). Reads the
        ``window // 2`` frames on either side, from the neighbouring time chunks too. Integer
        counts (uint16) are summed exactly (float32 holds integers up to 2**24).
        """
        window = int(window)
        if window <= 1:
            return self.read(t0, t1)
        if window % 2 == 0:
            raise ConfigError(f"temporal window: {window} frames; must be odd (centred)")
        h = window // 2
        t0, t1 = max(0, int(t0)), min(self.n_frames, int(t1))
        a, b = max(0, t0 - h), min(self.n_frames, t1 + h)
        raw = [self._halo(a, t0), self.read(t0, t1), self._halo(t1, b)]
        return window_means(raw, a, t0, t1, window)

    def _halo(self, a: int, b: int) -> np.ndarray:
        """Frames ``[a, b)`` next to the ones a windowed read was asked for: from the store where
        their Zarr chunks are written, else from the frame dump the store records (the same
        pixels ingest writes there), so that a chunk job does not wait for its neighbours'
        ingest."""
        if b <= a:
            return self.array[a:a]
        step = int(self.array.chunks[0])
        parts = []
        for c in range(a // step, (b - 1) // step + 1):
            lo, hi = max(a, c * step), min(b, (c + 1) * step)
            if self._present(c) or "sources" not in self.group or "source" not in self.meta:
                parts.append(self.read(lo, hi))
            else:
                parts.append(self.source_frames(lo, hi))
        return np.concatenate(parts)

    def _chunk_keys(self, c: int) -> list[str]:
        """Keys (relative to the store) of the chunk files of movie chunk row ``c``."""
        arr = self.array
        return [f"{ARRAY}/{arr.metadata.encode_chunk_key((c, *rest))}"
                for rest in itertools.product(*(range(n) for n in arr.cdata_shape[1:]))]

    def _present(self, c: int) -> bool:
        return all((self.path / key).is_file() for key in self._chunk_keys(c))

    def source_frames(self, t0: int, t1: int) -> np.ndarray:
        """Frames ``[t0, t1)`` read from the frame dump the store was ingested from (recorded
        ``source`` folder, ``sources`` and ``source_pages``), in the store's pixel type."""
        from etemseg.io.framedump import FrameSource, read_frame

        root = Path(self.meta["source"])
        names, pages = self.group["sources"][t0:t1], self.group["source_pages"][t0:t1]
        index = self.frame_index()[t0:t1]
        out = np.empty((t1 - t0, *self.frame_shape), self.array.dtype)
        for i, (name, page, idx) in enumerate(zip(names, pages, index)):
            src = FrameSource(path=root / str(name), page=int(page), index=int(idx))
            out[i] = to_store_dtype(read_frame(src, expect_shape=self.frame_shape),
                                    self.array.dtype, src.path)
        return out

    def take(self, frames: Sequence[int] | np.ndarray, window: int = 1) -> np.ndarray:
        """The movie frames at the indices ``frames`` (any order), with the checks of
        :meth:`read`: for readers that pick frames across the movie (e.g. training).
        ``window`` > 1: each frame's temporal mean (:meth:`read_mean`), float32; runs of
        consecutive indices are read together."""
        if int(window) > 1:
            idx = np.asarray(frames, dtype=np.int64)
            out = np.empty((idx.size, *self.frame_shape), np.float32)
            order = np.argsort(idx, kind="stable")
            cuts = np.flatnonzero(np.diff(idx[order]) != 1) + 1
            for run in np.split(order, cuts) if idx.size else []:
                a = int(idx[run[0]])
                means = self.read_mean(a, int(idx[run[-1]]) + 1, int(window))
                out[run] = means[idx[run] - a]
            return out
        idx = np.asarray(frames, dtype=np.int64)
        step = int(self.array.chunks[0])
        chunks = np.unique(idx // step) if idx.size else []
        for c in chunks:
            self._check_present(int(c))
        try:
            return self.array.get_orthogonal_selection((idx,))
        except _DECODE_ERRORS as exc:
            for c in chunks:
                try:
                    self.array[int(c) * step:(int(c) + 1) * step]
                except _DECODE_ERRORS as exc_c:
                    raise self._damaged(self.array, ARRAY, int(c), exc_c) from exc
            raise

    def _check_present(self, c: int) -> None:
        """Handle a missing chunk file of movie chunk row ``c`` (see :meth:`read`)."""
        arr, step = self.array, int(self.array.chunks[0])
        for key in self._chunk_keys(c):
            if not (self.path / key).is_file():
                self._missing_chunk(key, c * step, min(arr.shape[0], (c + 1) * step))

    def _damaged(self, arr: zarr.Array, name: str, c: int, exc: BaseException) -> InputFileError:
        """The error for a chunk of row ``c`` that does not decode, naming the first bad chunk."""
        return InputFileError(display_path(self.path), f"Zarr chunk {self._chunk_at(arr, name, c)}"
                                                       f" is corrupt or truncated ({_reason(exc)})")

    def _chunk_at(self, arr: zarr.Array, name: str, c: int) -> str:
        """Key of chunk row ``c`` (of its first damaged chunk, if a frame spans several)."""
        coords = [(c, *rest) for rest in itertools.product(*(range(n)
                                                              for n in arr.cdata_shape[1:]))]
        for coord in coords if len(coords) > 1 else ():
            try:
                arr[tuple(slice(i * n, (i + 1) * n) for i, n in zip(coord, arr.chunks))]
            except _DECODE_ERRORS:
                return f"{name}/{arr.metadata.encode_chunk_key(coord)}"
        return f"{name}/{arr.metadata.encode_chunk_key(coords[0])}"

    def _missing_chunk(self, key: str, a: int, b: int) -> None:
        shown, first = display_path(self.path), a // self.chunk_frames
        if self.is_frames_store:
            raise InputFileError(shown, f"Zarr chunk {key} (frames {a}..{b - 1}) is missing: time "
                                        f"chunk {first} was never ingested, or the file was "
                                        f"deleted; rerun `etemseg ingest SRC {shown} --chunk "
                                        f"{first}`")
        if (self.path, key) not in _WARNED:
            _WARNED.add((self.path, key))
            log.warning("%s: Zarr chunk %s (frames %d..%d) is missing; reading it as zeros (time "
                        "chunk %d was never written, or the store predates etemseg writing "
                        "all-zero chunks)", shown, key, a, b - 1, first)

    def chunk_bounds(self, k: int) -> tuple[int, int]:
        """Frame range ``[t0, t1)`` of time chunk ``k``."""
        return chunk_bounds(k, self.n_frames, self.chunk_frames)

    def blocks(self, k: int) -> Iterator[tuple[int, int]]:
        """Frame ranges of the Zarr chunks inside time chunk ``k`` (the unit of streaming I/O)."""
        t0, t1 = self.chunk_bounds(k)
        step = int(self.array.chunks[0])
        for b0 in range(t0, t1, step):
            yield b0, min(t1, b0 + step)

    def read_chunk(self, k: int, window: int = 1) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(t0, frames)`` blocks of time chunk ``k`` in order, one Zarr chunk at a time
        (``window`` > 1: temporal means as :meth:`read_mean`, each block decoded once)."""
        raw = ((b0, self.read(b0, b1)) for b0, b1 in self.blocks(k))
        if int(window) <= 1:
            yield from raw
            return
        for p0, p1, lo, parts in _window_parts(self, k, raw, int(window)):
            yield p0, window_means(parts, lo, p0, p1, int(window))

    def like(self, path: str | Path, dtype, *, codec: str | None = None,
             clevel: int | None = None, attrs: dict | None = None,
             label: bool = False) -> "MovieStore":
        """Create a store with this movie's shape, chunking, times and pixel size but another dtype.

        Used for derived products (pseudo-labels, probabilities, masks) so they align frame by
        frame. ``codec``/``clevel`` default to this store's. ``label=True`` (0/1 masks) also
        writes OME-NGFF ``image-label`` metadata whose source is this store
        (:func:`image_label_attrs`).
        """
        create_store(path, n_frames=self.n_frames, frame_shape=self.frame_shape, dtype=dtype,
                     chunk_frames=self.chunk_frames, fps=self.fps,
                     pixel_size_nm=self.pixel_size_nm, time_s=self.time_s(),
                     frame_index=self.frame_index(),
                     codec=codec or self.meta.get("codec", DEFAULT_CODEC),
                     clevel=self.meta.get("clevel", DEFAULT_CLEVEL) if clevel is None
                     else clevel,
                     zarr_chunk_frames=int(self.array.chunks[0]),
                     attrs={"derived_from": str(self.path), **(attrs or {})},
                     image_label=image_label_attrs(path, self.path) if label else None)
        return MovieStore.open(path, mode="r+")


def fault_point(stage: str, k: int, blocks_written: int) -> None:
    """Test hook: kill this process here if :data:`FAULT_ENV` asks for it; nothing when unset.

    Per-chunk writers call it after each Zarr block of time chunk ``k`` they have written (with
    the number written so far), so a test can kill a real job in the middle of writing its region,
    receipt not yet written, and check that a rerun repairs it (``tests/test_faults.py``).

    ``ETEMSEG_FAULT`` is a comma-separated list of ``STAGE:CHUNK:BLOCKS[:ACTION]``: when ``stage``
    (``ingest``, ``pseudolabel``, ``infer``; ``train`` with CHUNK 0 and BLOCKS = epochs done,
    called after each checkpoint), ``k`` and ``blocks_written`` match an entry the process sends
    itself ``SIGKILL`` (ACTION ``kill``, the default: an uncatchable death, as by
    the OOM killer or ``scancel``) or ``SIGSTOP`` (ACTION ``stop``: frozen mid-write, for a test
    that then kills the whole workflow as a node failure would). A malformed value is a
    :class:`ConfigError`, so a mistyped fault never silently does nothing.
    """
    spec = os.environ.get(FAULT_ENV, "").strip()
    if not spec:
        return
    for entry in spec.split(","):
        parts = entry.strip().split(":")
        action = parts[3] if len(parts) == 4 else "kill"
        if len(parts) not in (3, 4) or action not in ("kill", "stop") \
                or not (parts[1].isdigit() and parts[2].isdigit()):
            raise ConfigError(f"{FAULT_ENV}: expected STAGE:CHUNK:BLOCKS[:kill|stop], "
                              f"got {entry!r}")
        if parts[0] == stage and int(parts[1]) == k and int(parts[2]) == blocks_written:
            os.kill(os.getpid(), signal.SIGKILL if action == "kill" else signal.SIGSTOP)


def read_chunk_ahead(store: MovieStore, k: int, depth: int = 1, window: int = 1,
                     waits: dict | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield the ``(t0, frames)`` blocks of time chunk ``k`` in order, decoding up to ``depth``
    blocks ahead in as many threads (Zarr decoding releases the GIL): at most ``depth + 1``
    blocks in memory. ``window`` > 1: each frame the temporal mean of ``window`` frames
    (as :meth:`MovieStore.read_mean`), every Zarr block decoded once (:func:`_window_parts`) and
    the means of up to ``depth`` blocks computed at once, each in its own thread.

    ``waits``: adds to ``waits["read_wait_s"]`` the seconds the consumer waited for a block (the
    reads did not keep up)."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    ranges = iter(store.blocks(k))
    waits = {} if waits is None else waits
    waits.setdefault("read_wait_s", 0.0)

    def result(future):
        t = time.perf_counter()
        try:
            return future.result()
        finally:
            waits["read_wait_s"] += time.perf_counter() - t

    def raw_blocks():
        with ThreadPoolExecutor(max(1, depth), thread_name_prefix="etemseg-read") as pool:
            queued: deque = deque()
            for b0, b1 in ranges:
                queued.append((b0, pool.submit(store.read, b0, b1)))
                if len(queued) >= depth:
                    break
            while queued:
                b0, future = queued.popleft()
                nxt = next(ranges, None)
                if nxt is not None:
                    queued.append((nxt[0], pool.submit(store.read, *nxt)))
                yield b0, result(future)

    if int(window) <= 1:
        yield from raw_blocks()
        return
    with ThreadPoolExecutor(max(1, depth), thread_name_prefix="etemseg-means") as pool:
        queued: deque = deque()     # the means of up to ``depth`` blocks computed in parallel
        for p0, p1, lo, parts in _window_parts(store, k, raw_blocks(), int(window)):
            queued.append((p0, pool.submit(window_means, parts, lo, p0, p1, int(window))))
            if len(queued) > max(1, depth):
                b0, future = queued.popleft()
                yield b0, result(future)
        while queued:
            b0, future = queued.popleft()
            yield b0, result(future)


def _window_parts(store: MovieStore, k: int, blocks: Iterator[tuple[int, np.ndarray]],
                  window: int) -> Iterator[tuple[int, int, int, list[np.ndarray]]]:
    """For each raw block of time chunk ``k``, ``(p0, p1, lo, parts)``: its frames ``[p0, p1)``
    and the frames from ``lo`` on that their temporal means over ``window`` frames need
    (:func:`window_means`), as views of the blocks (and of the ``window // 2`` frames on either
    side of the chunk, from :meth:`MovieStore._halo`), kept while a later block needs them, so no
    frame is decoded or copied twice."""
    from collections import deque

    h = window // 2
    t0, t1 = store.chunk_bounds(k)
    start, end = max(0, t0 - h), min(store.n_frames, t1 + h)
    pieces: deque = deque([(start, store._halo(start, t0))])    # (first frame, frames)
    pending: deque = deque()
    for b0, block in itertools.chain(blocks, [(t1, None)]):
        if block is None:                   # after the last block: the frames past the chunk
            block = store._halo(t1, end)
        else:
            pending.append((b0, b0 + len(block)))
        pieces.append((b0, block))
        have = b0 + len(block)
        while pending and min(end, pending[0][1] + h) <= have:
            p0, p1 = pending.popleft()
            lo, hi = max(start, p0 - h), min(end, p1 + h)
            yield p0, p1, lo, [f[max(0, lo - f0):hi - f0] for f0, f in pieces
                               if f0 < hi and f0 + len(f) > lo]
            keep = max(start, (pending[0][0] if pending else p1) - h)
            while pieces and pieces[0][0] + len(pieces[0][1]) <= keep:
                pieces.popleft()


class BlockWriter:
    """Writes blocks of one store in up to ``depth`` threads (Zarr encoding releases the GIL),
    each block its own Zarr chunk(s), so writes never overlap; at most ``depth`` in flight.

    ``landed(n)`` is called with the number of blocks written so far each time the oldest write
    has finished (for :func:`fault_point`). Use as a context manager: leaving it waits for every
    write and raises the first error. :attr:`waited_s`: the seconds the producer waited for
    writes (the writes did not keep up).
    """

    def __init__(self, array, depth: int = 1, landed=None, name: str = "etemseg-write"):
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        self.array, self.depth, self.landed = array, max(1, depth), landed
        self.pool = ThreadPoolExecutor(self.depth, thread_name_prefix=name)
        self.pending: deque = deque()
        self.written = 0
        self.waited_s = 0.0

    def submit(self, b0: int, block: np.ndarray) -> None:
        """Queue the write of ``block`` at frame ``b0``, first waiting while ``depth`` writes
        are in flight."""
        while len(self.pending) >= self.depth:
            self._land_oldest()
        self.pending.append(self.pool.submit(self.array.__setitem__,
                                             slice(b0, b0 + len(block)), block))

    def _land_oldest(self) -> None:
        t = time.perf_counter()
        try:
            self.pending.popleft().result()
        finally:
            self.waited_s += time.perf_counter() - t
        self.written += 1
        if self.landed is not None:
            self.landed(self.written)

    def wait(self) -> None:
        """Wait for every write in flight (raising the first error)."""
        while self.pending:
            self._land_oldest()

    def __enter__(self) -> "BlockWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.wait()
        finally:
            self.pool.shutdown(wait=True)


def read_ahead(items: Iterator) -> Iterator:
    """Yield the items of ``items``, computing the next one in a thread meanwhile (for readers
    of Zarr blocks: decoding releases the GIL); at most two items in memory. ``items`` must not
    yield None."""
    from concurrent.futures import ThreadPoolExecutor

    it = iter(items)
    with ThreadPoolExecutor(1, thread_name_prefix="etemseg-read") as pool:
        nxt = pool.submit(next, it, None)
        while True:
            item = nxt.result()
            if item is None:
                return
            nxt = pool.submit(next, it, None)
            yield item


def map_chunk(src: MovieStore, dst: MovieStore, k: int, fn, *, progress: bool = False,
              desc: str = "", stage: str | None = None, stream: bool = False,
              io_threads: int = 1, window: int = 1, waits: dict | None = None) -> None:
    """Apply ``fn(frames, t0) -> frames`` to time chunk ``k`` of ``src``, writing ``dst``.

    ``stream=True``: ``fn(blocks)`` takes the iterator of ``(t0, frames)`` blocks and yields
    ``(t0, output)`` per block in order (for work pipelined across blocks, e.g. on a GPU).

    Streams one Zarr chunk of frames at a time, so memory stays bounded by a few blocks: the next
    ``io_threads`` blocks are read (decoded) and the previous ``io_threads`` written (encoded) in
    threads while ``fn`` runs on this one. ``dst`` must have the same shape and chunking (see
    :meth:`MovieStore.like`). ``stage`` names the job for :func:`fault_point` (called each time
    a block has landed); default: the ``stage`` attribute of ``dst`` up to its first ``-``
    (``pseudolabel``, ``infer`` for ``infer-probability``). ``window`` > 1: ``fn`` sees each
    frame as the temporal mean of ``window`` frames centred on it (:meth:`MovieStore.read_mean`).
    ``waits``: gets the seconds spent waiting for reads (``read_wait_s``) and writes
    (``write_wait_s``), the host's share of the job's time.
    """
    from tqdm.auto import tqdm

    waits = {} if waits is None else waits

    if stage is None:
        stage = str(dst.meta.get("stage", "")).partition("-")[0]
    if dst.array.shape != src.array.shape or dst.array.chunks[0] != src.array.chunks[0]:
        raise InputFileError(dst.path, f"shape/chunks {dst.array.shape}/{dst.array.chunks} do not "
                             f"match {src.path} {src.array.shape}/{src.array.chunks}")
    t0, t1 = src.chunk_bounds(k)
    bar = tqdm(total=t1 - t0, desc=desc or f"chunk {k}", unit="frame", disable=not progress)
    with bar, BlockWriter(dst.array, io_threads,
                          landed=lambda n: fault_point(stage, k, n)) as writer:
        blocks = read_chunk_ahead(src, k, io_threads, window, waits)
        outputs = fn(blocks) if stream else ((b0, fn(block, b0)) for b0, block in blocks)
        for b0, out in outputs:
            writer.submit(b0, out)
            bar.update(len(out))
        writer.wait()
    waits["write_wait_s"] = waits.get("write_wait_s", 0.0) + writer.waited_s
