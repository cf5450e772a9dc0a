"""Gatan Digital Micrograph files: a minimal DM4 writer and a fast reader for frame dumps.

The DM3/DM4 format (Gatan does not publish it; described by Chris Boothroyd and Greg Jefferis,
and implemented by rosettasciio's reader) is a tree of tags after a short big-endian header:

=================  ============================================================================
header             version (i4 BE: 3 or 4), root length (DM4: i8 BE, DM3: i4 BE), byte order of
                   the tag *values* (i4 BE: 1 little, 0 big endian)
tag group          sorted flag (u1), open flag (u1), number of entries (DM4 i8 BE, DM3 i4 BE)
tag entry          kind (u1: 20 group, 21 data), name length (i2 BE), name; DM4 then the entry's
                   length in bytes (i8 BE, counted after this field); then a group or a value
data tag value     ``%%%%``, n (length of the type description), n words (DM4 i8 BE, DM3 i4 BE)
                   describing the type, then the value in the file's byte order
=================  ============================================================================

A type is a simple code (2 i16, 3 i32, 4 u16, 5 u32, 6 f32, 7 f64, 8 bool, 9 char, 10 i8,
11 i64, 12 u64), a struct ``15, name length, field count, (name length, type) x count``, or an
array ``20, element type, count`` (text is an array of u16 UTF-16 code units). The file ends
with 8 zero bytes. An image is an entry of the root group ``ImageList``; its ``ImageData`` holds
``Data`` (the pixels, an array), ``DataType`` (the pixel type: 10 is uint16), ``Dimensions``
(width, height), ``PixelDepth`` (bytes per pixel) and ``Calibrations`` (per axis ``Origin``,
``Scale`` and ``Units``). The root group ``Thumbnails`` lists which images are thumbnails.

:func:`write_dm4` writes one 2-D frame the way GMS lays it out (a thumbnail image first, then the
data image). :class:`DMFrameReader` reads a dump of many such files quickly: all frames of a K2
dump share one tag layout, so the tag tree is parsed once per distinct layout, and every other
file is read with one ``preadv``: its pixel block straight into the output array, all other bytes
compared with the layout's, so that a file whose tags differ in anything but free-running values
(time stamps, the thumbnail's pixels, a title) is never read through the layout. The parser walks
the tags exactly as rosettasciio does and accepts only a single plain 2-D image of a real pixel
type; every other file is left to rosettasciio (the general reader).
"""

from __future__ import annotations

import logging
import math
import os
import struct
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from etemseg.errors import InputFileError

logger = logging.getLogger("etemseg.io.dm4")

__all__ = ["DMFrameReader", "DMLayout", "parse_layout", "write_dm4"]

# ---------------------------------------------------------------------------- type codes ---

_GROUP, _DATA = 20, 21
_STRUCT, _STRING, _ARRAY = 15, 18, 20
#: simple tag value types: code -> struct format character (byte order added when used)
_SIMPLE = {2: "h", 3: "i", 4: "H", 5: "I", 6: "f", 7: "d", 8: "?", 9: "b", 10: "b", 11: "q",
           12: "Q"}
_SIZE = {code: struct.calcsize(fmt) for code, fmt in _SIMPLE.items()}

#: image DataType codes read directly (real, one value per pixel) -> numpy dtype
_DATATYPE_DTYPE = {1: np.dtype(np.int16), 2: np.dtype(np.float32), 6: np.dtype(np.uint8),
                   7: np.dtype(np.int32), 9: np.dtype(np.int8), 10: np.dtype(np.uint16),
                   11: np.dtype(np.uint32), 12: np.dtype(np.float64)}
_DTYPE_CODES = {dt: (code, elt) for code, dt, elt in (
    (1, np.dtype(np.int16), 2), (2, np.dtype(np.float32), 6), (6, np.dtype(np.uint8), 10),
    (7, np.dtype(np.int32), 3), (9, np.dtype(np.int8), 10), (10, np.dtype(np.uint16), 4),
    (11, np.dtype(np.uint32), 5), (12, np.dtype(np.float64), 7))}

_THUMB_MAX_PX = 256  # longest side of the thumbnail image, px
_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=timezone.utc)


# ============================================================================ writer =========


class _Array:
    """A typed array tag value (pixels or a thumbnail) written from a contiguous buffer."""

    __slots__ = ("code", "count", "buf")

    def __init__(self, code: int, values: np.ndarray):
        self.code = code
        self.count = int(values.size)
        self.buf = memoryview(np.ascontiguousarray(values).reshape(-1).view(np.uint8))


class _Typed:
    """A simple value of an explicit DM type code (e.g. 5 for an unsigned 32-bit count)."""

    __slots__ = ("code", "value")

    def __init__(self, code: int, value):
        self.code, self.value = code, value


def _q(n: int) -> bytes:
    return struct.pack(">q", n)


def _value_parts(value) -> tuple[list[int], list]:
    """(type description, value chunks) of one tag value, values little-endian."""
    if isinstance(value, _Array):
        return [_ARRAY, value.code, value.count], [value.buf]
    if isinstance(value, _Typed):
        return [value.code], [struct.pack("<" + _SIMPLE[value.code], value.value)]
    if isinstance(value, (bool, np.bool_)):
        return [8], [struct.pack("<?", bool(value))]
    if isinstance(value, (int, np.integer)):
        v = int(value)
        code = 3 if -2**31 <= v < 2**31 else 11
        return [code], [struct.pack("<" + _SIMPLE[code], v)]
    if isinstance(value, (float, np.floating)):
        return [7], [struct.pack("<d", float(value))]
    if isinstance(value, str):  # text: an array of UTF-16 code units
        text = value.encode("utf-16-le")
        return [_ARRAY, 4, len(text) // 2], [text]
    if isinstance(value, tuple) and value and all(isinstance(v, _Typed) for v in value):
        desc = [_STRUCT, 0, len(value)]
        for v in value:
            desc += [0, v.code]
        return desc, [b"".join(struct.pack("<" + _SIMPLE[v.code], v.value) for v in value)]
    raise TypeError(f"cannot write a DM tag value of type {type(value).__name__}: {value!r}")


def _encode_group(items: Mapping[str, Any] | list, *, sort: bool = True) -> list:
    """Chunks (bytes or memoryviews) of a tag group's body: flags, entry count, entries."""
    if isinstance(items, Mapping):
        entries = sorted(items.items(), key=lambda kv: kv[0])
    else:
        entries = [("", v) for v in items]
    chunks: list = [bytes([1 if sort else 0, 0]), _q(len(entries))]
    for name, value in entries:
        label = name.encode("utf-8")
        if isinstance(value, (Mapping, list)):
            body = _encode_group(value)
            kind = _GROUP
        else:
            desc, data = _value_parts(value)
            body = [b"%%%%", _q(len(desc)), b"".join(_q(d) for d in desc), *data]
            kind = _DATA
        length = sum(len(c) for c in body)
        chunks += [struct.pack(">BH", kind, len(label)) + label + _q(length), *body]
    return chunks


def _calibration(scale: float, units: str) -> dict:
    return {"Origin": 0.0, "Scale": float(scale), "Units": units}


def _image_group(data: _Array, datatype: int, depth: int, shape: tuple[int, int],
                 scale: float, units: str, brightness: str, tags: Mapping, name: str) -> dict:
    height, width = shape
    return {
        "ImageData": {
            "Calibrations": {
                "Brightness": _calibration(1.0, brightness),
                "Dimension": [_calibration(scale, units), _calibration(scale, units)],
                "DisplayCalibratedUnits": True,
            },
            "Data": data,
            "DataType": datatype,
            "Dimensions": [_Typed(5, width), _Typed(5, height)],
            "PixelDepth": _Typed(5, depth),
        },
        "ImageTags": dict(tags),
        "Name": name,
    }


def _thumbnail(image: np.ndarray) -> np.ndarray:
    """Grey RGBA thumbnail (uint8 bytes B, G, R, A per pixel) of block means, longest side
    at most 256 px, stretched to 0..255 between its minimum and maximum."""
    f = max(1, math.ceil(max(image.shape) / _THUMB_MAX_PX))
    h, w = image.shape[0] // f, image.shape[1] // f
    rows = np.zeros((h, w * f), np.float64)
    for i in range(f):  # f strided adds: 3x faster than a mean over axes (1, 3) of a 4-D view
        rows += image[i: h * f: f, : w * f]
    rows = rows.reshape(h, w, f)
    small = rows.sum(axis=2) / (f * f)
    lo, hi = float(np.nanmin(small)), float(np.nanmax(small))
    grey = np.zeros(small.shape, np.uint8) if not hi > lo else \
        np.round((np.nan_to_num(small, nan=lo) - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    rgba = np.empty(grey.shape + (4,), np.uint8)
    rgba[..., :3] = grey[..., None]
    rgba[..., 3] = 255
    return rgba.view("<u4")[..., 0]


def _databar(acquired: datetime) -> dict:
    """DataBar tags: local date and time as DM shows them, and the UTC time stamp as a Windows
    FILETIME (100 ns ticks since 1601-01-01 UTC)."""
    if acquired.tzinfo is None:
        acquired = acquired.astimezone()
    delta = acquired.astimezone(timezone.utc) - _FILETIME_EPOCH
    ticks = (delta.days * 86400 + delta.seconds) * 10_000_000 + delta.microseconds * 10
    return {"Acquisition Date": acquired.strftime("%m/%d/%Y"),
            "Acquisition Time": acquired.strftime("%H:%M:%S"),
            "Acquisition Time (OS)": _Typed(12, ticks)}


def _root_tags(image: np.ndarray, pixel_size_nm: float | None, title: str,
               image_tags: Mapping) -> dict:
    """The root tag group of a one-frame file: thumbnail (image 0) and frame (image 1)."""
    dtype = image.dtype.newbyteorder("=")
    datatype, elt = _DTYPE_CODES[dtype]
    frame = np.ascontiguousarray(image, dtype=dtype.newbyteorder("<"))
    thumb = _thumbnail(frame)
    scale, units = (1.0, "") if pixel_size_nm is None else (float(pixel_size_nm), "nm")
    return {
        "ImageList": [
            _image_group(_Array(5, thumb), 23, 4, thumb.shape, 1.0, "", "", {}, ""),
            _image_group(_Array(elt, frame), datatype, dtype.itemsize, frame.shape, scale,
                         units, "counts", image_tags, title),
        ],
        "ImageSourceList": [{"ClassName": "ImageSource:Simple", "Id": [0], "ImageRef": 1}],
        "InImageMode": True,
        "Thumbnails": [{"ImageIndex": _Typed(5, 0), "SourceSize_Pixels": (
            _Typed(3, frame.shape[1]), _Typed(3, frame.shape[0]))}],
    }


def write_dm4(path: str | Path, image: np.ndarray, pixel_size_nm: float | None, *,
              title: str = "", exposure_s: float | None = None,
              acquired: datetime | None = None, tags: Mapping[str, Any] | None = None) -> Path:
    """Write one 2-D frame as a version-4 Digital Micrograph file (K2-IS per-frame style).

    The file holds an ``ImageList`` of two images, as GMS writes them: a grey RGBA thumbnail
    (longest side at most 256 px, listed under ``Thumbnails``) and the frame itself, little-endian,
    calibrated in nm on both axes. It is written under a temporary name and renamed into place.

    Parameters
    ----------
    path : str or Path
        Output file (``.dm4``); its folder is created if needed.
    image : numpy.ndarray
        The frame, 2-D ``(height, width)``, one of uint16 (K2 counting frames), uint8, int8,
        int16, int32, uint32, float32, float64.
    pixel_size_nm : float or None
        Pixel size in nm/px (``Scale`` of both axes, ``Units`` ``"nm"``); None writes an
        uncalibrated file (scale 1, no unit).
    title : str
        Image name (``Name`` tag).
    exposure_s : float, optional
        Exposure time per frame in s (``ImageTags/Acquisition/Parameters/High Level/
        Exposure (s)``); 1/400 s for the K2-IS at 400 frames/s.
    acquired : datetime, optional
        Acquisition time of the frame (``ImageTags/DataBar``: date, time, and the UTC time stamp
        as a Windows FILETIME); a naive datetime is taken as local time.
    tags : mapping, optional
        More ``ImageTags``: nested mappings of str, int, float or bool values.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        ``image`` is not 2-D, empty, or of another dtype; ``pixel_size_nm`` is not finite > 0.
    """
    from etemseg.io.atomic import atomic_path

    image = np.asarray(image)
    dtype = image.dtype.newbyteorder("=")
    if image.ndim != 2 or 0 in image.shape:
        raise ValueError(f"write_dm4: expected a non-empty 2-D frame, got shape {image.shape}")
    if dtype not in _DTYPE_CODES:
        raise ValueError(f"write_dm4: unsupported dtype {image.dtype} "
                         f"(supported: {', '.join(sorted(str(d) for d in _DTYPE_CODES))})")
    if pixel_size_nm is not None and not (math.isfinite(pixel_size_nm) and pixel_size_nm > 0):
        raise ValueError(f"write_dm4: pixel_size_nm must be finite and > 0, got {pixel_size_nm!r}")
    image_tags: dict[str, Any] = {}
    if exposure_s is not None:
        image_tags["Acquisition"] = {"Parameters": {"High Level": {
            "Exposure (s)": float(exposure_s)}}}
    if acquired is not None:
        image_tags["DataBar"] = _databar(acquired)
    image_tags.update(tags or {})
    body = _encode_group(_root_tags(image, pixel_size_nm, title, image_tags))
    root_len = sum(len(c) for c in body)
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(struct.pack(">iqi", 4, root_len, 1))
        for chunk in body:
            fh.write(chunk)
        fh.write(bytes(8))
    return path


# ============================================================================ parser =========


class _Truncated(Exception):
    """The tag tree or an array runs past the end of the file."""

    def __init__(self, need: int, have: int):
        super().__init__(f"needs {need} bytes, the file has {have}")
        self.need, self.have = need, have


class _Unsupported(Exception):
    """A tag tree this parser does not read (the general reader decides)."""


@dataclass
class _Value:
    """Where a data tag's value lies; simple values and short texts are decoded."""

    start: int
    end: int
    code: int  # simple type code, or _ARRAY / _STRUCT / _STRING
    elt: int = 0  # array element type
    count: int = 0  # array element count
    value: Any = None


@dataclass
class _Tree:
    version: int
    little: bool
    root: dict
    values: list = field(default_factory=list)  # (path, _Value) of every data tag


class _Parser:
    """Walks a DM3/DM4 tag tree in a bytes buffer the way rosettasciio reads it (content, not
    the DM4 entry lengths, drives the walk; the lengths are checked)."""

    def __init__(self, buf: bytes, size: int):
        self.buf, self.size, self.pos = buf, size, 0
        self.values: list = []

    def take(self, n: int) -> int:
        at = self.pos
        if at + n > self.size:
            raise _Truncated(at + n, self.size)
        self.pos = at + n
        return at

    def word(self) -> int:
        at = self.take(self.w)
        return struct.unpack_from(self.wfmt, self.buf, at)[0]

    def parse(self) -> _Tree:
        version = struct.unpack_from(">i", self.buf, self.take(4))[0]
        if version not in (3, 4):
            raise _Unsupported(f"DM version {version}")
        self.w, self.wfmt = (8, ">q") if version == 4 else (4, ">i")
        self.word()  # root length
        order = struct.unpack_from(">i", self.buf, self.take(4))[0]
        if order not in (0, 1):
            raise _Unsupported(f"byte order flag {order}")
        self.vfmt = "<" if order == 1 else ">"
        self.take(2)
        root = self.group(self.word(), ())
        return _Tree(version, order == 1, root, self.values)

    def group(self, n: int, path: tuple) -> dict:
        if n < 0 or n > self.size:
            raise _Unsupported(f"tag group with {n} entries")
        out: dict = {}
        n_groups = n_data = 0
        for _ in range(n):
            at = self.take(3)
            kind, name_len = struct.unpack_from(">Bh", self.buf, at)
            if name_len < 0:
                raise _Unsupported(f"tag name length {name_len} at byte {at}")
            raw = bytes(self.buf[self.take(name_len):self.pos])
            try:
                name = raw.decode("utf-8")
            except UnicodeDecodeError:
                name = raw.decode("latin-1")
            name = name.replace(".", "")
            length = self.word() if self.w == 8 else None
            start = self.pos
            if kind == _GROUP:
                if not name:
                    name, n_groups = f"TagGroup{n_groups}", n_groups + 1
                self.take(2)
                out[name] = self.group(self.word(), path + (name,))
            elif kind == _DATA:
                if not name:
                    name, n_data = f"Data{n_data}", n_data + 1
                out[name] = self.data(path + (name,))
            else:
                raise _Unsupported(f"tag kind {kind} at byte {at}")
            if length is not None and length != self.pos - start:
                raise _Unsupported(f"tag {'/'.join(path + (name,))}: length {length} differs "
                                   f"from its content ({self.pos - start} bytes)")
        return out

    def data(self, path: tuple) -> _Value:
        if bytes(self.buf[self.take(4):self.pos]) != b"%%%%":
            raise _Unsupported(f"tag {'/'.join(path)} lacks its %%%% mark")
        n = self.word()
        if not 1 <= n <= 1024:
            raise _Unsupported(f"tag {'/'.join(path)}: type description of {n} words")
        desc = [self.word() for _ in range(n)]
        code = desc[0]
        if n == 1 and code in _SIMPLE:
            at = self.take(_SIZE[code])
            v = _Value(at, self.pos, code,
                       value=struct.unpack_from(self.vfmt + _SIMPLE[code], self.buf, at)[0])
        elif code == _ARRAY and n == 3 and desc[1] in _SIMPLE:
            v = self.array(desc[1], desc[2])
        elif code == _STRUCT and n >= 3 and n == 3 + 2 * desc[2] and \
                all(t in _SIMPLE for t in desc[4::2]):
            fmt = self.vfmt + "".join(_SIMPLE[t] for t in desc[4::2])
            at = self.take(struct.calcsize(fmt))
            v = _Value(at, self.pos, _STRUCT, value=struct.unpack_from(fmt, self.buf, at))
        elif code == _ARRAY and n >= 5 and desc[1] == _STRUCT and n == 5 + 2 * desc[3] and \
                all(t in _SIMPLE for t in desc[5:-1:2]):
            item = struct.calcsize(self.vfmt + "".join(_SIMPLE[t] for t in desc[5:-1:2]))
            at = self.take(item * self.count(desc[-1]))
            v = _Value(at, self.pos, _ARRAY, _STRUCT, desc[-1])
        elif code == _STRING and n == 2:
            at = self.take(self.count(desc[1]))
            v = _Value(at, self.pos, _STRING, count=desc[1])
        else:
            raise _Unsupported(f"tag {'/'.join(path)}: type {desc[:8]}")
        self.values.append((path, v))
        return v

    def count(self, n: int) -> int:
        if n < 0:
            raise _Unsupported(f"negative count {n}")
        return n

    def array(self, elt: int, count: int) -> _Value:
        at = self.take(_SIZE[elt] * self.count(count))
        v = _Value(at, self.pos, _ARRAY, elt, count)
        if elt == 4 and count <= 4096:  # text: UTF-16 code units
            v.value = "".join(map(chr, struct.unpack_from(f"{self.vfmt}{count}H", self.buf, at)))
        return v


# ============================================================================ layout =========


def _simple(node) -> Any:
    return node.value if isinstance(node, _Value) and node.code in _SIMPLE else None


def _pinned(path: tuple) -> bool:
    """Tag values that decide which image is read and how: they must match the layout's."""
    if path[0] == "Thumbnails":
        return True
    if path[0] == "ImageList" and len(path) >= 4:
        if path[2] == "ImageData":
            return path[3] != "Data"
        if path[2] == "ImageTags":
            return path[3] in ("Meta Data", "spim")
    return False


def _main_image(tree: _Tree) -> dict:
    """The one image of ``ImageList`` that ``Thumbnails`` does not list (rosettasciio's choice);
    anything else (several images, odd entries) is left to the general reader."""
    images = tree.root.get("ImageList")
    if not isinstance(images, dict):
        raise _Unsupported("no ImageList")
    thumbs = tree.root.get("Thumbnails", {})
    skip = set()
    for entry in thumbs.values() if isinstance(thumbs, dict) else [None]:
        index = _simple(entry.get("ImageIndex")) if isinstance(entry, dict) else None
        if not isinstance(index, int):
            raise _Unsupported("a thumbnail without ImageIndex")
        skip.add(index)
    found = []
    for key, image in images.items():
        if not (key.startswith("TagGroup") and key[8:].isdigit() and isinstance(image, dict)):
            raise _Unsupported(f"ImageList/{key} is not an unnamed tag group")
        if int(key[8:]) not in skip:
            found.append(image)
    if len(found) != 1:
        raise _Unsupported(f"{len(found)} images besides thumbnails")
    if not isinstance(found[0].get("ImageTags"), dict):
        raise _Unsupported("no ImageTags")
    return found[0]


def _axis(entry) -> tuple[float, str]:
    """(Scale, Units) of one ``Calibrations/Dimension`` entry."""
    if not isinstance(entry, dict):
        raise _Unsupported("calibration entry is not a tag group")
    scale, units = _simple(entry.get("Scale")), entry.get("Units")
    if not isinstance(scale, (int, float)) or "Origin" not in entry:
        raise _Unsupported("calibration without Scale or Origin")
    if not (isinstance(units, _Value) and isinstance(units.value, str)):
        raise _Unsupported("calibration without text Units")
    return float(scale), units.value


def _image_format(image: dict) -> tuple[_Value, np.dtype, tuple[int, int], tuple]:
    """(pixel data tag, dtype, (height, width), ((x scale, x units), (y scale, y units))) of a
    plain 2-D image of a real pixel type; anything else raises ``_Unsupported``."""
    data = image.get("ImageData")
    if not isinstance(data, dict):
        raise _Unsupported("no ImageData")
    pixels, code = data.get("Data"), _simple(data.get("DataType"))
    dims = data.get("Dimensions")
    if not (isinstance(pixels, _Value) and pixels.code == _ARRAY and pixels.elt in _SIMPLE):
        raise _Unsupported("no pixel array")
    if code not in _DATATYPE_DTYPE:
        raise _Unsupported(f"DataType {code}")
    dtype = _DATATYPE_DTYPE[code]
    if not (isinstance(dims, dict) and len(dims) == 2):
        raise _Unsupported("not a 2-D image")
    width, height = (_simple(d) for d in dims.values())
    if not (type(width) is int and type(height) is int and width > 0 and height > 0):
        raise _Unsupported(f"dimensions {width} x {height}")
    depth = _simple(data.get("PixelDepth"))
    if depth not in (None, dtype.itemsize) or _SIZE[pixels.elt] != dtype.itemsize \
            or pixels.count != width * height:
        raise _Unsupported("pixel array does not match DataType and Dimensions")
    tags = image["ImageTags"]
    meta = tags.get("Meta Data")
    fmt = meta.get("Format") if isinstance(meta, dict) else None
    if "spim" in tags or (isinstance(fmt, _Value) and fmt.value in ("Spectrum image", "Spectrum")):
        raise _Unsupported("spectrum or spectrum-image tags")
    cal = data.get("Calibrations")
    axes = cal.get("Dimension") if isinstance(cal, dict) else None
    if not (isinstance(axes, dict) and len(axes) == 2):
        raise _Unsupported("no calibration of both axes")
    x, y = (_axis(a) for a in axes.values())
    return pixels, dtype, (height, width), (x, y)


@dataclass(eq=False)
class DMLayout:
    """The tag layout of one DM file, shared by all frames of a dump written alike.

    Attributes
    ----------
    source : Path
        The file the layout was parsed from.
    size : int
        File size in bytes.
    offset : int
        Byte offset of the pixel data.
    shape : tuple of int
        ``(height, width)`` in px.
    dtype : numpy.dtype
        Pixel type (little-endian).
    version : int
        DM version (3 or 4).
    axes : tuple
        ``((x scale, x units), (y scale, y units))`` as stored (units may be ``""``): the scale
        is in units per pixel.
    fast : bool
        Whether files of this layout are read directly; False when the general reader is to be
        used (big-endian values, or the check against the general reader failed).
    """

    source: Path
    size: int
    offset: int
    shape: tuple[int, int]
    dtype: np.dtype
    version: int
    axes: tuple
    fast: bool
    ref: np.ndarray = field(repr=False)  # uint8, every byte but the pixel data
    mask: np.ndarray = field(repr=False)  # uint8 0xFF where a byte must equal ``ref``

    @property
    def nbytes(self) -> int:
        """Size of the pixel block in bytes."""
        return int(self.dtype.itemsize * self.shape[0] * self.shape[1])

    def read(self, fd: int) -> np.ndarray | None:
        """Read an open file of ``size`` bytes through this layout.

        Returns
        -------
        numpy.ndarray or None
            The ``(height, width)`` frame, or None if any byte outside the pixel block differs
            from the layout where it matters (a tag, a type, a length, the image format, the
            calibration, the thumbnail list): such a file has another layout.
        """
        arr = np.empty(self.shape, self.dtype)
        other = np.empty(self.size - self.nbytes, np.uint8)
        views = [memoryview(other[: self.offset]), memoryview(arr.reshape(-1).view(np.uint8)),
                 memoryview(other[self.offset:])]
        if not _preadv_exact(fd, views, self.size):
            return None
        np.bitwise_xor(other, self.ref, out=other)
        np.bitwise_and(other, self.mask, out=other)
        return None if other.any() else arr


def _preadv_exact(fd: int, views: list, size: int) -> bool:
    """Fill ``views`` in order from byte 0 of ``fd``; False if the file ends early."""
    if hasattr(os, "preadv") and os.preadv(fd, views, 0) == size:
        return True
    pos = 0  # a short read (signal, odd file system) or no preadv: one view at a time
    for view in views:
        filled = 0
        while filled < len(view):
            data = os.pread(fd, len(view) - filled, pos + filled)
            if not data:
                return False
            view[filled:filled + len(data)] = data
            filled += len(data)
        pos += len(view)
    return True


def parse_layout(path: str | Path, buf: bytes | None = None) -> DMLayout:
    """Parse the tag tree of one DM3/DM4 file into a :class:`DMLayout`.

    Parameters
    ----------
    path : str or Path
        The file.
    buf : bytes, optional
        The file's whole content, if already read.

    Returns
    -------
    DMLayout
        ``fast`` is True when the tag values are little-endian (the pixels are then read as
        rosettasciio reads them, in the machine's byte order).

    Raises
    ------
    InputFileError
        The file is truncated: its tag tree or image data runs past its end.
    ValueError
        The tag tree is not one this parser reads: not exactly one plain 2-D image (besides
        thumbnails) of a real pixel type with its calibration and ``ImageTags``, or a type
        description, length or flag it does not know. The general reader decides on such a file.
    """
    path = Path(path)
    if buf is None:
        buf = path.read_bytes()
    try:
        tree = _Parser(buf, len(buf)).parse()
        pixels, dtype, shape, axes = _image_format(_main_image(tree))
    except _Truncated as exc:
        raise InputFileError(path, "cannot be read: the file is truncated or damaged (its tag "
                             f"tree or image data {exc})") from None
    except (_Unsupported, struct.error, RecursionError) as exc:
        raise ValueError(f"{path}: {exc or type(exc).__name__}") from None
    mask = np.full(len(buf), 0xFF, np.uint8)
    for tag_path, v in tree.values:
        if v is pixels or not _pinned(tag_path):
            mask[v.start:v.end] = 0
    lo, hi = pixels.start, pixels.end
    whole = np.frombuffer(buf, np.uint8)
    return DMLayout(
        source=path, size=len(buf), offset=lo, shape=shape, dtype=dtype.newbyteorder("<"),
        version=tree.version, axes=axes,
        fast=tree.little and sys.byteorder == "little",
        ref=np.concatenate([whole[:lo], whole[hi:]]), mask=np.concatenate([mask[:lo], mask[hi:]]))


# ============================================================================ reader =========

#: general(path) -> (2-D frame, byte offset of its pixel data or None): the reference reader
GeneralReader = Callable[[Path], tuple[np.ndarray, "int | None"]]


class DMFrameReader:
    """Read DM3/DM4 frames of dumps, parsing each distinct tag layout once.

    A file of a size it has not seen a layout of is parsed (:func:`parse_layout`). A later file
    of the same size is read through a kept layout in one ``preadv``: its pixel block straight
    into the frame, every other byte compared with the layout's file; where any byte that
    matters differs (a tag, a type, a length, the image format, the calibration, the thumbnail
    list; time stamps, titles and the thumbnail's pixels may differ), the file is parsed afresh
    as a new layout. Files the parser does not read (spectra, stacks, RGB, complex, several
    images, unknown tag types) go to the general reader, which reads or refuses them; so do
    big-endian files.

    Parameters
    ----------
    general : callable
        ``general(path) -> (frame, offset)``: the general reader (rosettasciio), returning the
        2-D frame and the byte offset of its pixel data (None if unknown); raises
        :class:`~etemseg.errors.InputFileError` for files it cannot read.
    verify : bool
        Also read the first file of every new layout with the general reader and keep the
        layout for direct reads only if both agree on the pixel offset, shape, dtype and every
        pixel (costs importing rosettasciio, about 1 s, once per process).
    max_layouts : int
        Layouts kept (least recently used dropped first).

    Attributes
    ----------
    stats : dict
        Files read ``"fast"`` (through a kept layout), by the ``"general"`` reader, and layouts
        ``"parsed"``.
    """

    def __init__(self, general: GeneralReader, *, verify: bool = False, max_layouts: int = 16):
        self.general = general
        self.verify = bool(verify)
        self.max_layouts = int(max_layouts)
        self._layouts: OrderedDict[int, DMLayout] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = {"fast": 0, "general": 0, "parsed": 0}

    @property
    def layouts(self) -> list[DMLayout]:
        """The layouts kept, least recently used first."""
        with self._lock:
            return list(self._layouts.values())

    def clear(self) -> None:
        """Forget every layout."""
        with self._lock:
            self._layouts.clear()

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def read(self, path: str | Path) -> np.ndarray:
        """Read the one 2-D frame of a DM file.

        Parameters
        ----------
        path : str or Path
            A ``.dm4`` or ``.dm3`` file.

        Returns
        -------
        numpy.ndarray
            ``(height, width)`` frame, pixel-identical to the general reader's.

        Raises
        ------
        InputFileError
            The file cannot be opened, is truncated, or the general reader refuses it.
        """
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except OSError as exc:
            raise InputFileError(path, f"cannot be read: {exc.strerror or exc}") from exc
        try:
            size = os.fstat(fd).st_size
            with self._lock:
                candidates = [lay for key, lay in reversed(self._layouts.items())
                              if lay.size == size]
            for layout in candidates:
                arr = layout.read(fd)
                if arr is not None:
                    with self._lock:
                        if id(layout) in self._layouts:
                            self._layouts.move_to_end(id(layout))
                    if layout.fast:
                        self._count("fast")
                        return arr
                    return self._general(path)[0]
            buf = _pread_all(fd, size)
        finally:
            os.close(fd)
        return self._learn(path, buf)

    def _general(self, path: Path) -> tuple[np.ndarray, int | None]:
        self._count("general")
        return self.general(path)

    def _learn(self, path: Path, buf: bytes) -> np.ndarray:
        """Parse a file of a new layout (check it against the general reader), keep it."""
        try:
            layout = parse_layout(path, buf)
        except ValueError as exc:
            logger.debug("%s", exc)
            return self._general(path)[0]
        except InputFileError as exc:  # runs past the end: truncated, or a damaged length
            try:
                return self._general(path)[0]
            except InputFileError:
                raise exc from None
        self._count("parsed")
        mine = np.frombuffer(buf, layout.dtype, layout.shape[0] * layout.shape[1],
                             layout.offset).reshape(layout.shape)
        arr = None
        if self.verify and layout.fast:
            arr, offset = self._general(path)
            same = (offset == layout.offset and arr.shape == layout.shape
                    and arr.dtype.newbyteorder("<") == layout.dtype
                    and np.array_equal(np.ascontiguousarray(arr).view(np.uint8),
                                       mine.view(np.uint8)))
            if not same:
                logger.warning("%s: the fast DM reader disagrees with the general reader "
                               "(pixel offset %s vs %s); files of this layout use the general "
                               "reader", path, layout.offset, offset)
                layout.fast = False
        with self._lock:
            self._layouts[id(layout)] = layout
            while len(self._layouts) > self.max_layouts:
                self._layouts.popitem(last=False)
        if layout.fast:
            return mine.copy()
        return arr if arr is not None else self._general(path)[0]


def _pread_all(fd: int, size: int) -> bytes:
    chunks, pos = [], 0
    while pos < size:
        data = os.pread(fd, size - pos, pos)
        if not data:
            break
        chunks.append(data)
        pos += len(data)
    return b"".join(chunks) if len(chunks) != 1 else chunks[0]
