"""Index and read a folder of per-frame camera dumps (Gatan K2-IS DM4/DM3, TIFF, NumPy).

A K2-IS camera recording at 400 frames/s writes one file per frame, named like
``Capture1_Hour_00_Minute_05_Second_20_Frame_0007.dm4`` (the frame number counts within the
second, from 0). A ten-minute run is 240,000 files, so :func:`scan_dump` builds its index from
the file *names* and opens only what it must: the first frame (for shape, dtype and calibration)
and, for TIFF and ``.npy`` dumps that are not K2-named, each file's header, because such a file
may hold a stack of frames.

Missing frames are never hidden: :attr:`DumpIndex.time_s` is computed from the absolute frame
index, so a dropped frame shows as a jump in time and later frames keep their true times, and
the gaps are listed in :attr:`DumpIndex.gaps` and logged as a warning.

DM3/DM4 frames are read by :class:`etemseg.io.dm4.DMFrameReader`: the tag tree of each distinct
layout is parsed once, and every other file of that layout is read with one system call (its
pixel block straight into the frame, its other bytes checked against the layout's); a file of
any other layout is parsed afresh, and what that parser does not read (spectra, stacks, colour,
complex, big-endian files) goes to rosettasciio.

Every problem with an input file is raised as :class:`~etemseg.errors.InputFileError`, whose
message starts with the offending path.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import re
import threading
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from etemseg.errors import ConfigError, InputFileError
from etemseg.io.dm4 import DMFrameReader, parse_layout

logger = logging.getLogger("etemseg.io.framedump")

__all__ = [
    "K2_PATTERN",
    "SUPPORTED_SUFFIXES",
    "DumpIndex",
    "FrameSource",
    "K2Name",
    "count_frames",
    "find_gaps",
    "natural_key",
    "parse_k2_name",
    "read_dm_metadata",
    "read_frame",
    "read_pixel_size_nm",
    "scan_dump",
    "unit_to_nm",
]

# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------

#: ``<capture>_Hour_HH_Minute_MM_Second_SS_Frame_FFFF[.ext]``; case-insensitive, any digit
#: counts, any capture prefix (possibly empty); ``_``, ``-`` or a space may separate the parts.
K2_PATTERN = re.compile(
    r"^(?P<capture>.*?)[_\- ]?"
    r"Hour[_\- ]?(?P<hour>\d+)[_\- ]?"
    r"Minute[_\- ]?(?P<minute>\d+)[_\- ]?"
    r"Second[_\- ]?(?P<second>\d+)[_\- ]?"
    r"Frame[_\- ]?(?P<frame>\d+)"
    r"(?:\.(?P<ext>[A-Za-z0-9]+))?$",
    re.IGNORECASE,
)

#: Frame file types :func:`scan_dump` and :func:`read_frame` accept (compared case-insensitively).
SUPPORTED_SUFFIXES = (".dm4", ".dm3", ".tif", ".tiff", ".npy")

# Suffix -> family; one dump may mix suffixes of one family only.
_FAMILY = {".dm4": "dm", ".dm3": "dm", ".tif": "tiff", ".tiff": "tiff", ".npy": "npy"}

_TRAILING_INT = re.compile(r"(\d+)$")


def _fps_as_int(fps: float) -> int:
    """Return ``fps`` as an int, or raise ``ValueError`` if it is not (close to) integral."""
    if not (isinstance(fps, (int, float, np.integer, np.floating)) and math.isfinite(fps)):
        raise ValueError(f"frame rate must be a finite number, got {fps!r}")
    n = round(float(fps))
    if n <= 0 or abs(float(fps) - n) > 1e-6:
        raise ValueError(f"K2 frame names need a positive integral frame rate, got {fps!r}")
    return n


@dataclass(frozen=True)
class K2Name:
    """The parts of a K2-IS per-frame file name.

    Attributes
    ----------
    capture : str
        Capture prefix, e.g. ``"Capture1"`` (may be empty).
    hour, minute, second : int
        Time of the frame's second since the start of the capture.
    frame : int
        Frame number within that second, 0-based, below the frame rate.
    """

    capture: str
    hour: int
    minute: int
    second: int
    frame: int

    def absolute_frame(self, fps: float) -> int:
        """Absolute frame index since the capture started.

        Parameters
        ----------
        fps : float
            Frame rate; must be integral (within 1e-6), as the K2 counts whole frames per second.

        Returns
        -------
        int
            ``((hour * 60 + minute) * 60 + second) * fps + frame``.

        Raises
        ------
        ValueError
            If ``fps`` is not a positive integer or ``frame >= fps``.
        """
        n = _fps_as_int(fps)
        if self.frame >= n:
            raise ValueError(f"frame number {self.frame} is not below the frame rate ({n} fps)")
        return ((self.hour * 60 + self.minute) * 60 + self.second) * n + self.frame


def parse_k2_name(name: str | os.PathLike) -> K2Name | None:
    """Parse a K2-IS per-frame file name.

    Parameters
    ----------
    name : str or path
        File name (a full path is accepted; only its last component is used).

    Returns
    -------
    K2Name or None
        The parsed parts, or None if ``name`` does not follow the K2 pattern.

    Examples
    --------
    >>> parse_k2_name("Capture1_Hour_00_Minute_05_Second_20_Frame_0007.dm4")
    K2Name(capture='Capture1', hour=0, minute=5, second=20, frame=7)
    """
    m = K2_PATTERN.match(os.path.basename(os.fspath(name)))
    if m is None:
        return None
    return K2Name(
        capture=m["capture"],
        hour=int(m["hour"]),
        minute=int(m["minute"]),
        second=int(m["second"]),
        frame=int(m["frame"]),
    )


_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key that orders embedded integers numerically (``frame_2`` before ``frame_10``)."""
    parts = _DIGITS.split(name)
    parts[1::2] = map(int, parts[1::2])
    parts[0::2] = map(str.lower, parts[0::2])
    parts.append(name)
    return tuple(parts)


def _trailing_int(stem: str) -> int | None:
    m = _TRAILING_INT.search(stem)
    return int(m.group(1)) if m else None


def find_gaps(frame_index: np.ndarray) -> list[tuple[int, int]]:
    """Runs of missing indices in a sorted, duplicate-free index array.

    Parameters
    ----------
    frame_index : array of int
        Sorted absolute frame indices of the present frames.

    Returns
    -------
    list of (int, int)
        ``(first_missing_index, n_missing)`` for each run of missing frames.
    """
    idx = np.asarray(frame_index, dtype=np.int64)
    if idx.size < 2:
        return []
    step = np.diff(idx)
    where = np.nonzero(step > 1)[0]
    return [(int(idx[i]) + 1, int(step[i]) - 1) for i in where]


# --------------------------------------------------------------------------------------------
# Units
# --------------------------------------------------------------------------------------------

_NM_PER_UNIT = {
    "nm": 1.0,
    "nanometer": 1.0,
    "nanometre": 1.0,
    "nanometers": 1.0,
    "nanometres": 1.0,
    "\u03bcm": 1e3,
    "um": 1e3,
    "micron": 1e3,
    "microns": 1e3,
    "micrometer": 1e3,
    "micrometre": 1e3,
    "micrometers": 1e3,
    "micrometres": 1e3,
    "\u00e5": 0.1,
    "a": 0.1,
    "angstrom": 0.1,
    "angstroms": 0.1,
    "ang": 0.1,
    "pm": 1e-3,
    "mm": 1e6,
    "cm": 1e7,
    "m": 1e9,
}


def unit_to_nm(unit: Any) -> float | None:
    """Nanometres per one ``unit`` of length, or None for a non-length or unknown unit.

    Parameters
    ----------
    unit : str
        A length unit as written by Digital Micrograph or ImageJ: ``nm``, ``µm``/``um``/``micron``,
        ``Å``/``A``/``Angstrom``, ``pm``, ``mm``, ``cm``, ``m`` (case-insensitive; the micro and
        Ångström signs may be either Unicode form; ImageJ's ``\\u00B5m`` escape is understood).

    Returns
    -------
    float or None
        The factor, e.g. 1000.0 for ``µm``; None for ``1/nm``, ``eV``, ``pixel``, ``""``...
    """
    if not isinstance(unit, str):
        return None
    text = unit.strip()
    if "\\u" in text:
        try:
            text = text.encode("latin-1", "backslashreplace").decode("unicode_escape")
        except UnicodeError:
            return None
    text = unicodedata.normalize("NFKC", text).strip().lower()
    return _NM_PER_UNIT.get(text)


def _pixel_size_from_scales(
    path: Path, x: tuple[float, Any] | None, y: tuple[float, Any] | None
) -> float | None:
    """Pixel size in nm from (scale, unit) of the x and y axes; warn if they disagree."""

    def to_nm(axis: tuple[float, Any] | None) -> float | None:
        if axis is None:
            return None
        scale, unit = axis
        factor = unit_to_nm(unit)
        try:
            scale = float(scale)
        except (TypeError, ValueError):
            return None
        if factor is None or not math.isfinite(scale) or scale <= 0:
            return None
        return scale * factor

    px, py = to_nm(x), to_nm(y)
    if px is None:
        return None
    if py is not None and not math.isclose(px, py, rel_tol=1e-4):
        logger.warning(
            "%s: x and y pixel sizes differ (%.6g nm and %.6g nm); using x", path, px, py
        )
    return px


# --------------------------------------------------------------------------------------------
# Validation of one frame
# --------------------------------------------------------------------------------------------


def _check_dtype(path: Path, dtype: np.dtype) -> None:
    """Refuse complex, colour (structured), bool, object and string data."""
    dtype = np.dtype(dtype)
    if dtype.names:
        fields = {n.upper() for n in dtype.names}
        if {"R", "G", "B"} <= fields:
            raise InputFileError(
                path, "RGB/RGBA colour data is not supported (expected a single-channel image)"
            )
        raise InputFileError(path, f"unsupported dtype {dtype} (structured data)")
    if dtype.kind == "c":
        raise InputFileError(path, "complex data is not supported (expected a real image)")
    if dtype.kind not in "uif":
        raise InputFileError(path, f"unsupported dtype {dtype}")


def _check_frame(path: Path, arr: np.ndarray) -> np.ndarray:
    """Check that ``arr`` is one 2-D real frame; return it in native byte order."""
    _check_dtype(path, arr.dtype)
    if arr.ndim == 1:
        raise InputFileError(
            path,
            f"holds 1-D data of length {arr.shape[0]} (a spectrum or profile?), not a 2-D image",
        )
    if arr.ndim != 2:
        raise InputFileError(
            path, f"holds {arr.ndim}-D data of shape {tuple(arr.shape)}, expected one 2-D frame"
        )
    if 0 in arr.shape:
        raise InputFileError(path, f"holds an empty frame (shape {tuple(arr.shape)})")
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _check_shape(path: Path, arr: np.ndarray, expect_shape) -> None:
    if expect_shape is not None and tuple(arr.shape) != tuple(int(s) for s in expect_shape):
        raise InputFileError(
            path,
            f"frame shape {tuple(int(s) for s in arr.shape)} differs from the movie's "
            f"{tuple(int(s) for s in expect_shape)}",
        )


def _cannot_read(path: Path, exc: BaseException) -> InputFileError:
    """The error for a file a reader library choked on: one line, and a hint when the library's
    own words say little (``KeyError: 1``, ``unpack requires a buffer of 4 bytes``...)."""
    lines = str(exc).strip().splitlines()
    reason = lines[0].strip() if lines else ""
    if len(reason) > 200:
        reason = reason[:197] + "..."
    if not reason or len(reason) < 24 or isinstance(exc, (KeyError, IndexError, EOFError)) \
            or "unpack requires" in reason or "failed to read" in reason:
        reason = f"the file looks truncated or damaged ({type(exc).__name__}: {reason or '-'})"
    return InputFileError(path, f"cannot be read: {reason}")


def _family(path: Path) -> str:
    fam = _FAMILY.get(path.suffix.lower())
    if fam is None:
        raise InputFileError(
            path,
            f"unsupported file type {path.suffix or '(no suffix)'!r} "
            f"(supported: {', '.join(SUPPORTED_SUFFIXES)})",
        )
    return fam


# --------------------------------------------------------------------------------------------
# Digital Micrograph
# --------------------------------------------------------------------------------------------


def _load_dm(path: Path, *, lazy: bool) -> dict:
    """First dataset of a DM3/DM4 file as rosettasciio returns it; errors -> InputFileError."""
    from rsciio.digitalmicrograph import file_reader

    if not path.is_file():
        raise InputFileError(path, "does not exist" if not path.exists() else "is not a file")
    try:
        datasets = file_reader(str(path), lazy=lazy)
    except Exception as exc:  # the DM reader raises many types for damaged files
        raise _cannot_read(path, exc) from exc
    if not datasets:
        raise InputFileError(path, "cannot be read: the file holds no image")
    if len(datasets) > 1:
        logger.debug("%s: holds %d images; using the first", path, len(datasets))
    return datasets[0]


def _dm_signal_check(path: Path, ds: dict) -> None:
    """Refuse DM data that is not a single 2-D image (spectra, spectrum images, stacks)."""
    data = ds["data"]
    _check_dtype(path, data.dtype)
    axes = ds.get("axes") or []
    if data.ndim == 2 and any(a.get("navigate") for a in axes):
        names = ", ".join(str(a.get("name")) for a in axes if not a.get("navigate"))
        raise InputFileError(
            path,
            f"is a spectrum image or line scan (data shape {tuple(data.shape)}, signal axis "
            f"{names}), not a 2-D image",
        )
    if data.ndim > 2:
        raise InputFileError(
            path,
            f"holds {data.ndim}-D data of shape {tuple(data.shape)} (an image stack or spectrum "
            "image), not a single 2-D image",
        )


def _dm_axes_scales(ds: dict) -> tuple[tuple | None, tuple | None]:
    """(scale, units) of the x and y image axes of a rosettasciio dataset."""
    axes = [a for a in (ds.get("axes") or []) if not a.get("navigate")]
    by_name = {str(a.get("name", "")).lower(): a for a in axes}
    x = by_name.get("x", axes[-1] if axes else None)
    y = by_name.get("y", axes[-2] if len(axes) >= 2 else None)

    def su(a):
        return None if a is None else (a.get("scale", 1.0), a.get("units", ""))

    return su(x), su(y)


def _read_dm_general(path: Path) -> tuple[np.ndarray, int | None]:
    """A DM frame read by rosettasciio, and the byte offset of its pixel data (None if the
    reader does not say)."""
    ds = _load_dm(path, lazy=False)
    _dm_signal_check(path, ds)
    arr = np.asarray(ds["data"])
    if isinstance(arr, np.memmap):
        arr = np.array(arr)
    try:
        offset = ds["original_metadata"]["ImageList"]["TagGroup0"]["ImageData"]["Data"]["offset"]
    except (KeyError, TypeError):
        offset = None
    return arr, (int(offset) if isinstance(offset, (int, np.integer)) else None)


#: DM frames: each distinct tag layout is parsed once, then files of that layout are read
#: directly (:mod:`etemseg.io.dm4`); anything else (and big-endian files) by rosettasciio.
_DM_READER = DMFrameReader(_read_dm_general)


def _read_dm(path: Path) -> np.ndarray:
    return _DM_READER.read(path)


def _filetime_to_iso(value: Any) -> str | None:
    """Windows FILETIME (100 ns ticks since 1601-01-01 UTC) -> ISO 8601 string."""
    try:
        ticks = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(ticks) or ticks <= 0:
        return None
    try:
        t = datetime(1601, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=ticks / 10)
    except OverflowError:
        return None
    return t.isoformat()


def _find_key(tree: Any, key: str, depth: int = 0) -> Any:
    """Depth-first search for ``key`` in nested dicts (bounded depth)."""
    if not isinstance(tree, dict) or depth > 8:
        return None
    if key in tree:
        return tree[key]
    for value in tree.values():
        found = _find_key(value, key, depth + 1)
        if found is not None:
            return found
    return None


def read_dm_metadata(path: str | Path) -> dict:
    """A small summary of a DM3/DM4 file's metadata, without loading the pixel data.

    Parameters
    ----------
    path : str or Path
        A ``.dm3`` or ``.dm4`` file.

    Returns
    -------
    dict
        ``shape`` (tuple), ``dtype`` (str), ``pixel_size_nm`` (float or None), ``scale`` and
        ``units`` of the x axis as stored, ``title``, ``signal_type``, and when the file records
        them ``acquisition_date``, ``acquisition_time`` (as DM writes them, local time),
        ``acquisition_time_utc`` (ISO 8601, from DM's OS timestamp) and ``exposure_s``.

    Raises
    ------
    InputFileError
        If the file is missing, not a DM file or cannot be parsed.
    """
    path = Path(path)
    ds = _load_dm(path, lazy=True)
    data = ds["data"]
    x, y = _dm_axes_scales(ds)
    md = ds.get("metadata") or {}
    omd = ds.get("original_metadata") or {}
    out: dict[str, Any] = {
        "shape": tuple(int(s) for s in data.shape),
        "dtype": str(data.dtype),
        "pixel_size_nm": _pixel_size_from_scales(path, x, y),
        "scale": None if x is None else float(x[0]),
        "units": None if x is None else (x[1] if isinstance(x[1], str) else ""),
        "title": (md.get("General") or {}).get("title"),
        "signal_type": (md.get("Signal") or {}).get("signal_type"),
    }
    try:
        tags = omd["ImageList"]["TagGroup0"]["ImageTags"]
    except (KeyError, TypeError):
        tags = {}
    bar = tags.get("DataBar") if isinstance(tags, dict) else None
    if isinstance(bar, dict):
        for src, dst in (
            ("Acquisition Date", "acquisition_date"),
            ("Acquisition Time", "acquisition_time"),
        ):
            if bar.get(src) is not None:
                out[dst] = str(bar[src])
        iso = _filetime_to_iso(bar.get("Acquisition Time (OS)"))
        if iso:
            out["acquisition_time_utc"] = iso
    exposure = _find_key(tags, "Exposure (s)")
    if isinstance(exposure, (int, float)):
        out["exposure_s"] = float(exposure)
    return out


# --------------------------------------------------------------------------------------------
# TIFF
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TiffLayout:
    n_frames: int
    contiguous_offset: int | None  # set when frames are read from contiguous data, not pages
    frame_shape: tuple[int, ...]
    dtype: np.dtype


def _tiff_layout(path: Path, tf) -> _TiffLayout:
    """How many frames a TIFF holds and how to reach them; refuses truncated stacks."""
    n_pages = len(tf.pages)
    if n_pages == 0:
        raise InputFileError(path, "cannot be read: the TIFF holds no image")
    first = tf.pages[0]
    if n_pages == 1 and not (tf.is_imagej or tf.is_shaped):
        return _TiffLayout(1, None, tuple(first.shape), np.dtype(first.dtype))
    series = tf.series[0]
    axes, shape = series.axes, tuple(series.shape)
    n = 1
    frame_shape = []
    for ax, dim in zip(axes, shape):
        if ax in "YXS":
            frame_shape.append(dim)
        else:
            n *= dim
    claimed = n
    if tf.is_imagej:
        claimed = max(n, int((tf.imagej_metadata or {}).get("images", 1) or 1))
    elif tf.is_shaped:
        meta = (tf.shaped_metadata or [{}])[0] or {}
        mshape = meta.get("shape")
        if mshape and len(mshape) > len(frame_shape):
            claimed = max(n, int(np.prod(mshape[: len(mshape) - len(frame_shape)])))
    if claimed > n:
        raise InputFileError(
            path,
            f"is truncated or damaged: its metadata describe {claimed} frames but only {n} "
            "could be read",
        )
    if len(tf.series) > 1:
        logger.warning(
            "%s: holds %d image series; only the first (%d frame(s) of shape %s) is used",
            path,
            len(tf.series),
            n,
            tuple(frame_shape),
        )
    pages = [p for p in series.pages if p is not None]
    if len(pages) >= n:
        return _TiffLayout(n, None, tuple(frame_shape), np.dtype(series.dtype))
    offset = series.dataoffset
    itemsize = np.dtype(series.dtype).itemsize
    if offset is not None and os.path.getsize(path) >= offset + n * itemsize * int(
        np.prod(frame_shape)
    ):
        return _TiffLayout(n, int(offset), tuple(frame_shape), np.dtype(series.dtype))
    raise InputFileError(
        path,
        f"is truncated or damaged: its metadata describe {n} frames but only {len(pages)} "
        "page(s) are present",
    )


class _TiffCache:
    """A few open TIFF files, so reading page i of a long stack does not re-walk the IFD chain."""

    def __init__(self, size: int = 8):
        self.size = size
        self.lock = threading.Lock()
        self.items: OrderedDict[tuple, tuple] = OrderedDict()

    def get(self, path: Path):
        import tifffile

        st = path.stat()
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
        with self.lock:
            hit = self.items.get(key)
            if hit is not None:
                self.items.move_to_end(key)
                return hit
        tf = tifffile.TiffFile(str(path))
        try:
            layout = _tiff_layout(path, tf)
        except BaseException:
            tf.close()
            raise
        entry = (tf, layout, threading.Lock())
        with self.lock:
            self.items[key] = entry
            while len(self.items) > self.size:
                _, (old, _, old_lock) = self.items.popitem(last=False)
                with old_lock:
                    old.close()
        return entry

    def clear(self) -> None:
        with self.lock:
            for tf, _, lk in self.items.values():
                with lk:
                    tf.close()
            self.items.clear()


_TIFF_CACHE = _TiffCache()


def _read_tiff(path: Path, page: int) -> np.ndarray:
    tf, layout, lock = _TIFF_CACHE.get(path)
    if not 0 <= page < layout.n_frames:
        raise InputFileError(path, f"has no frame {page} (it holds {layout.n_frames})")
    with lock:
        if layout.contiguous_offset is None:
            p = tf.series[0].pages[page] if layout.n_frames > 1 or tf.is_shaped else tf.pages[0]
            spp = int(getattr(p, "samplesperpixel", 1) or 1)
            if spp > 1:
                raise InputFileError(
                    path,
                    f"has {spp} samples per pixel: RGB/RGBA or other multi-channel data is not "
                    "supported (expected a single-channel image)",
                )
            arr = p.asarray()
        else:
            frame_bytes = layout.dtype.itemsize * int(np.prod(layout.frame_shape))
            dtype = layout.dtype.newbyteorder(tf.byteorder)
            mm = np.memmap(
                path,
                dtype=dtype,
                mode="r",
                shape=layout.frame_shape,
                offset=layout.contiguous_offset + page * frame_bytes,
            )
            arr = np.array(mm)
            del mm
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        raise InputFileError(
            path, "RGB/RGBA colour data is not supported (expected a single-channel image)"
        )
    return arr


def _tiff_pixel_size_nm(path: Path) -> float | None:
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tf:
            page = tf.pages[0]
            desc = page.description or ""
            if desc.lstrip().startswith("{"):
                try:
                    meta = json.loads(desc)
                except ValueError:
                    meta = None
                if isinstance(meta, dict) and meta.get("pixel_size_nm") is not None:
                    value = float(meta["pixel_size_nm"])
                    return value if math.isfinite(value) and value > 0 else None
            if not tf.is_imagej:
                return None
            unit = (tf.imagej_metadata or {}).get("unit")
            if unit_to_nm(unit) is None:
                return None

            def scale(tagname):
                tag = page.tags.get(tagname)
                if tag is None:
                    return None
                num, den = tag.value
                if not num or not den:
                    return None
                return (den / num, unit)  # ImageJ stores pixels per unit

            return _pixel_size_from_scales(path, scale("XResolution"), scale("YResolution"))
    except InputFileError:
        raise
    except Exception as exc:
        raise _cannot_read(path, exc) from exc


# --------------------------------------------------------------------------------------------
# NumPy
# --------------------------------------------------------------------------------------------


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) from a ``.npy`` header, without loading the data."""
    from numpy.lib import format as npf

    with open(path, "rb") as fh:
        version = npf.read_magic(fh)
        if version == (1, 0):
            shape, _fortran, dtype = npf.read_array_header_1_0(fh, max_header_size=100000)
        elif version == (2, 0):
            shape, _fortran, dtype = npf.read_array_header_2_0(fh, max_header_size=100000)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
        return tuple(int(s) for s in shape), np.dtype(dtype), fh.tell()


def _npy_layout(path: Path) -> tuple[int, tuple[int, ...], np.dtype]:
    """(number of frames, array shape, dtype) of a ``.npy`` file; refuses truncated files."""
    try:
        shape, dtype, offset = _npy_header(path)
    except FileNotFoundError as exc:
        raise InputFileError(path, "does not exist") from exc
    except Exception as exc:
        raise _cannot_read(path, exc) from exc
    if dtype.hasobject:
        raise InputFileError(path, f"unsupported dtype {dtype} (Python objects)")
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = os.path.getsize(path)
    if have < need:
        raise InputFileError(
            path, f"is truncated: its header describes {need} bytes but the file has {have}"
        )
    if have > need:  # np.save writes exactly the header and the data
        raise InputFileError(
            path, f"is damaged: its header describes {need} bytes but the file has {have}"
        )
    if len(shape) == 3 and shape[-1] in (3, 4) and shape[0] > 4:
        raise InputFileError(
            path, f"looks like RGB/RGBA colour data (shape {shape}); expected single-channel frames"
        )
    n = shape[0] if len(shape) == 3 else 1
    return n, shape, dtype


def _read_npy(path: Path, page: int) -> np.ndarray:
    n, shape, dtype = _npy_layout(path)
    _check_dtype(path, dtype)
    if len(shape) not in (2, 3):
        desc = "1-D data (a spectrum or profile?)" if len(shape) == 1 else f"{len(shape)}-D data"
        raise InputFileError(
            path, f"holds {desc} of shape {shape}, expected a 2-D frame or a 3-D stack of frames"
        )
    if not 0 <= page < n:
        raise InputFileError(path, f"has no frame {page} (it holds {n})")
    try:
        mm = np.load(path, mmap_mode="r", allow_pickle=False)
        arr = np.array(mm[page] if mm.ndim == 3 else mm)
        del mm
    except Exception as exc:
        raise _cannot_read(path, exc) from exc
    return arr


# --------------------------------------------------------------------------------------------
# Public readers
# --------------------------------------------------------------------------------------------


@dataclass
class FrameSource:
    """Where one frame of a dump lives.

    Attributes
    ----------
    path : Path
        The file.
    page : int
        Page within a multi-page TIFF, or index within a 3-D ``.npy`` stack; else 0.
    index : int
        Absolute frame index since the capture started (from the K2 name, a trailing integer in
        the file name, or the order of the files).
    """

    path: Path
    page: int
    index: int


def read_frame(source: FrameSource | str | Path, *, expect_shape=None) -> np.ndarray:
    """Read one frame as a 2-D real array.

    Parameters
    ----------
    source : FrameSource, str or Path
        The frame; a plain path means page 0 of that file.
    expect_shape : tuple of int, optional
        The movie's ``(H, W)``; a frame of another shape is refused.

    Returns
    -------
    numpy.ndarray
        2-D array in the file's own real dtype (uint8, uint16, int16, int32, uint32, float32,
        float64, ...), native byte order, not memory-mapped.

    Raises
    ------
    InputFileError
        If the file is missing, corrupt or truncated ("cannot be read: ..."), holds complex,
        colour, boolean or other non-numeric data, is not a single 2-D image (a spectrum, a
        spectrum image, a DM stack), or its shape differs from ``expect_shape``.
    """
    if isinstance(source, FrameSource):
        path, page = Path(source.path), int(source.page)
    else:
        path, page = Path(source), 0
    fam = _family(path)
    if not path.exists():
        raise InputFileError(path, "does not exist")
    if not path.is_file():
        raise InputFileError(path, "is not a file")
    try:
        if fam == "dm":
            if page != 0:
                raise InputFileError(path, f"has no frame {page} (a DM file holds one image)")
            arr = _read_dm(path)
        else:
            if parse_k2_name(path.name) is not None:
                # a K2 dump holds one frame per file: never keep only the first page of a stack
                # (the scan checks the first file only, to stay cheap)
                n = _TIFF_CACHE.get(path)[1].n_frames if fam == "tiff" else _npy_layout(path)[0]
                if n != 1:
                    raise InputFileError(
                        path, f"is K2-named but holds {n} frames; a K2 dump has one frame per file"
                    )
            arr = _read_tiff(path, page) if fam == "tiff" else _read_npy(path, page)
    except InputFileError:
        raise
    except Exception as exc:  # library errors on corrupt input: ValueError, TiffFileError, ...
        raise _cannot_read(path, exc) from exc
    arr = _check_frame(path, arr)
    _check_shape(path, arr, expect_shape)
    return arr


def read_pixel_size_nm(path: str | Path) -> float | None:
    """Pixel size in nm from a frame file's calibration.

    Parameters
    ----------
    path : str or Path
        A ``.dm3``/``.dm4`` (axis scale and units), ``.tif``/``.tiff`` (a JSON ImageDescription
        with ``pixel_size_nm``, else ImageJ ``unit`` with XResolution) or ``.npy`` (never
        calibrated) file.

    Returns
    -------
    float or None
        Nanometres per pixel along x; None if the file is uncalibrated or calibrated in a
        non-length unit (e.g. ``1/nm`` for a diffraction pattern). If x and y disagree, x is
        used and a warning is logged.
    """
    path = Path(path)
    fam = _family(path)
    if not path.exists():
        raise InputFileError(path, "does not exist")
    if fam == "dm":
        try:  # a plain 2-D image: calibration from the tag tree, without rosettasciio
            x, y = parse_layout(path).axes
        except (ValueError, InputFileError):
            ds = _load_dm(path, lazy=True)
            x, y = _dm_axes_scales(ds)
        return _pixel_size_from_scales(path, x, y)
    if fam == "tiff":
        return _tiff_pixel_size_nm(path)
    return None


# --------------------------------------------------------------------------------------------
# Scanning a dump folder
# --------------------------------------------------------------------------------------------


@dataclass
class DumpIndex:
    """Index of the frames of one dump folder, in time order.

    Attributes
    ----------
    root : Path
        The folder.
    sources : list of FrameSource
        Present frames, in time order.
    fps : float
        Frame rate used for ``time_s``.
    frame_index : numpy.ndarray
        int64 absolute index of each present frame.
    time_s : numpy.ndarray
        float64 ``(frame_index - frame_index[0]) / fps``: a missing frame shows as a jump, later
        frames are never shifted.
    gaps : list of (int, int)
        ``(first_missing_index, n_missing)`` runs.
    shape : tuple of int
        ``(H, W)`` of the first frame.
    dtype : numpy.dtype
        Source dtype of the first frame.
    pixel_size_nm : float or None
        From the first frame's calibration.
    naming : str
        ``"k2"`` (indices from K2 names), ``"numbered"`` (from a trailing integer in each file
        name) or ``"sequential"`` (from the natural sort order of the files and their pages).
    """

    root: Path
    sources: list[FrameSource]
    fps: float
    frame_index: np.ndarray
    time_s: np.ndarray
    gaps: list[tuple[int, int]]
    shape: tuple[int, int]
    dtype: np.dtype
    pixel_size_nm: float | None
    naming: str

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def n_missing(self) -> int:
        """Total number of missing frames."""
        return sum(n for _, n in self.gaps)


def _check_fps(fps: float) -> float:
    try:
        value = float(fps)
    except (TypeError, ValueError):
        raise ConfigError(f"fps: must be a number, got {fps!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"fps: must be a positive number, got {fps!r}")
    return value


def _list_frame_files(root: Path) -> list[str]:
    """Names of the supported, non-hidden files in ``root``, naturally sorted."""
    if not root.exists():
        raise InputFileError(root, "frame folder does not exist")
    if not root.is_dir():
        raise InputFileError(root, "is not a folder (expected a folder of frame files)")
    names, others = [], []
    try:
        with os.scandir(root) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                try:
                    is_file = entry.is_file()
                except OSError:
                    continue
                if not is_file:
                    continue
                if os.path.splitext(entry.name)[1].lower() in _FAMILY:
                    _check_utf8_name(root, entry.name)
                    names.append(entry.name)
                else:
                    others.append(entry.name)
    except OSError as exc:
        raise InputFileError(root, f"cannot be listed: {exc.strerror or exc}") from exc
    if not names:
        extra = ""
        if others:
            others.sort(key=natural_key)
            extra = f"; ignored {len(others)} other file(s), e.g. {others[0]!r}"
        raise InputFileError(
            root,
            f"no frame files found (supported: {', '.join(SUPPORTED_SUFFIXES)}){extra}",
        )
    names.sort(key=natural_key)
    families: dict[str, str] = {}
    for n in names:
        families.setdefault(_FAMILY[os.path.splitext(n)[1].lower()], n)
    if len(families) > 1:
        a, b = list(families.values())[:2]
        raise InputFileError(
            root,
            f"mixes frame file types ({a!r} and {b!r}); keep one type per folder",
        )
    return names


def _check_utf8_name(root: Path, name: str) -> None:
    """Refuse a frame file whose name is not valid UTF-8 (Python hands it over with surrogate
    escapes): the store records every frame's source name as text, and silently skipping the
    file would drop a frame from the movie. The message shows the raw bytes."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(name)
        raise InputFileError(
            root, f"frame file name {raw!r} is not valid UTF-8; rename it (e.g. with "
            "`convmv -f latin1 -t utf8`)"
        ) from None


def _tiff_frame_count(path: Path) -> int:
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tf:
            return _tiff_layout(path, tf).n_frames
    except InputFileError:
        raise
    except Exception as exc:
        raise _cannot_read(path, exc) from exc


def _frames_in(path: Path, family: str) -> int:
    if family == "dm":
        return 1
    if family == "npy":
        return _npy_layout(path)[0]
    return _tiff_frame_count(path)


def _build_sources(root: Path, fps: float, names: list[str] | None = None
                   ) -> tuple[list[FrameSource], str]:
    """Sources in time order and the naming scheme; checks duplicates and K2 names. ``names``:
    the folder's listing (:func:`_list_frame_files`), when the caller has it already."""
    names = _list_frame_files(root) if names is None else names
    family = _FAMILY[os.path.splitext(names[0])[1].lower()]
    k2 = [parse_k2_name(n) for n in names]
    n_k2 = sum(k is not None for k in k2)

    if n_k2:
        if n_k2 < len(names):
            other = next(n for n, k in zip(names, k2) if k is None)
            first = next(n for n, k in zip(names, k2) if k is not None)
            raise InputFileError(
                root,
                f"mixes K2-named frames (e.g. {first!r}) with other files (e.g. {other!r}); "
                "move the others out",
            )
        captures = sorted({k.capture for k in k2})
        if len(captures) > 1:
            raise InputFileError(
                root,
                f"holds frames of more than one capture ({', '.join(map(repr, captures[:3]))}); "
                "put each capture in its own folder",
            )
        try:
            ifps = _fps_as_int(fps)
        except ValueError as exc:
            raise ConfigError(f"fps: {exc}") from None
        for n, k in zip(names, k2):
            if k.frame >= ifps:
                raise InputFileError(
                    root / n,
                    f"K2 frame number {k.frame} is not below the frame rate ({ifps} fps); "
                    "is the frame rate (fps) right?",
                )
            if k.minute >= 60 or k.second >= 60:
                raise InputFileError(root / n, "K2 name has a minute or second of 60 or more")
        # K2 writes one frame per file; check the first file only, to keep the scan cheap.
        n0 = _frames_in(root / names[0], family)
        if n0 != 1:
            raise InputFileError(
                root / names[0],
                f"is K2-named but holds {n0} frames; a K2 dump has one frame per file",
            )
        sources = [FrameSource(root / n, 0, k.absolute_frame(ifps)) for n, k in zip(names, k2)]
        naming = "k2"
    else:
        counts = (
            [_frames_in(root / n, family) for n in names] if family != "dm" else [1] * len(names)
        )
        numbers = [_trailing_int(os.path.splitext(n)[0]) for n in names]
        if all(c == 1 for c in counts) and all(x is not None for x in numbers):
            sources = [FrameSource(root / n, 0, int(x)) for n, x in zip(names, numbers)]
            naming = "numbered"
        else:
            sources = []
            for n, c in zip(names, counts):
                for p in range(c):
                    sources.append(FrameSource(root / n, p, len(sources)))
            naming = "sequential"

    sources.sort(key=lambda s: s.index)  # stable: ties keep the natural file order
    for a, b in itertools.pairwise(sources):
        if a.index == b.index:
            raise InputFileError(
                root,
                f"{a.path.name!r} and {b.path.name!r} both give frame index {a.index}",
            )
    return sources, naming


def scan_dump(src: str | Path, fps: float = 400.0) -> DumpIndex:
    """Index a folder of per-frame files, cheaply.

    The index comes from the file names: K2 names (``..._Hour_HH_Minute_MM_Second_SS_Frame_FFFF``)
    give the absolute frame index directly; otherwise a trailing integer in every file stem is
    taken as the index; otherwise frames are numbered in natural sort order. Only the first
    frame is read (for shape, dtype and pixel size); TIFF and ``.npy`` headers are opened to
    expand multi-page stacks, except in K2 dumps, which hold one frame per file.

    Parameters
    ----------
    src : str or Path
        The dump folder. Hidden files and files of other types are ignored.
    fps : float
        Frame rate in frames per second (400 for the K2-IS); must be integral for K2 names.

    Returns
    -------
    DumpIndex

    Raises
    ------
    InputFileError
        The folder is missing, not a folder, or holds no supported frame files; it mixes file
        types or captures; two files give the same frame index; a K2 frame number is not below
        ``fps``; the first frame cannot be read.
    ConfigError
        ``fps`` is not a positive number (or not integral with K2 names).
    """
    root = Path(src)
    fps = _check_fps(fps)
    sources, naming = _build_sources(root, fps)
    frame_index = np.fromiter((s.index for s in sources), dtype=np.int64, count=len(sources))
    time_s = (frame_index - frame_index[0]) / fps
    gaps = find_gaps(frame_index)
    if gaps:
        shown = ", ".join(
            f"{first}" if n == 1 else f"{first}-{first + n - 1}" for first, n in gaps[:10]
        )
        more = f" and {len(gaps) - 10} more" if len(gaps) > 10 else ""
        logger.warning(
            "%s: %d frame(s) missing in %d gap(s): %s%s",
            root,
            sum(n for _, n in gaps),
            len(gaps),
            shown,
            more,
        )
    first = read_frame(sources[0])
    pixel_size = read_pixel_size_nm(sources[0].path)
    return DumpIndex(
        root=root,
        sources=sources,
        fps=fps,
        frame_index=frame_index,
        time_s=time_s,
        gaps=gaps,
        shape=(int(first.shape[0]), int(first.shape[1])),
        dtype=first.dtype,
        pixel_size_nm=pixel_size,
        naming=naming,
    )


def count_frames(src: str | Path, fps: float = 400.0, manifest: str | Path | None = None) -> int:
    """Number of frames present in a dump folder (cheap: names and TIFF/npy headers only).

    Parameters
    ----------
    src : str or Path
        The dump folder.
    fps : float
        Frame rate, as for :func:`scan_dump`.
    manifest : str or Path, optional
        Also refresh the dump's :func:`source_manifest` there (:func:`write_source_manifest`),
        from the same listing of the folder (one listing per plan of a 240,000-file dump).

    Returns
    -------
    int
    """
    root = Path(src)
    names = _list_frame_files(root)
    n = len(_build_sources(root, _check_fps(fps), names)[0])
    if manifest is not None:
        write_source_manifest(root, manifest, names)
    return n


def source_manifest(src: str | Path, names: list[str] | None = None) -> dict:
    """What identifies a dump's content: name, size (bytes) and modification time (ns) of every
    frame file, in time order; other files in the folder (notes, ``Thumbs.db``) are not part of it.
    ``names``: the folder's frame files, when the caller listed them already.

    The workflow tracks a movie's source by this manifest rather than by the folder's mtime, so
    adding an unrelated file reruns nothing, while an added, removed or rewritten frame reruns
    the movie (:func:`write_source_manifest`).
    """
    root = Path(src)
    files = []
    for name in (_list_frame_files(root) if names is None else names):
        try:
            st = os.stat(root / name)
        except OSError as exc:
            raise InputFileError(root / name, f"cannot be read: {exc.strerror or exc}") from exc
        files.append([name, int(st.st_size), int(st.st_mtime_ns)])
    return {"source": str(root.resolve()), "files": files}


def write_source_manifest(src: str | Path, path: str | Path, names: list[str] | None = None
                          ) -> bool:
    """Write :func:`source_manifest` of ``src`` (``names``: its frame files, if listed already)
    to ``path`` (JSON) unless ``path`` already holds the same manifest; returns True when
    written. The file's mtime therefore changes exactly when the frames change, which is what
    Snakemake compares."""
    import json

    from etemseg.io.atomic import atomic_path

    path = Path(path)
    text = json.dumps(source_manifest(src, names), separators=(",", ":")) + "\n"
    try:
        if path.read_text() == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return True
