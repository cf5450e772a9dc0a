"""Particle scale of a movie without calibration: the characteristic diameter of its blobs, px.

A movie without a pixel size cannot resolve the physical lengths of the pseudo-label recipe.  Its
particles, though, have a size in px, and Au nanoparticles in in-situ sintering movies are a few
nm across; so an estimate of the typical particle diameter in px gives an *effective* pixel size
(``expected_diameter_nm / diameter_px``) at which the physical recipe applies.

Estimator (:func:`blob_scale`): scale-normalised Laplacian of Gaussian
``R(x, s) = s^2 * laplacian(G_s * I)(x)`` on the frame normalised to its robust grey range
(1st to 99th percentile; particles dark, so a dark blob is a positive peak).  Scales ``s`` are
geometric (``SCALES_PER_OCTAVE`` per octave, diameters from 3 px to a third of the frame); a
coarse scale is computed on a block-mean pyramid level (``R`` is invariant to it).

* A *dark blob* is a local maximum of ``R`` in space and scale, at least ``BLOB_K`` robust
  standard deviations (1.4826 MAD of ``R`` at its scale; its ``z``) above the median response and
  ``BLOB_FLOOR`` above in grey-range units, at least ``1.5 s`` from the frame edge (particles cut
  by the edge are not whole); its scale is refined by a parabola through the three responses in
  ``log s`` and gives its diameter ``DIAMETER_PER_SIGMA * s``.  Blobs inside a more significant
  blob are suppressed.
* A *mirror blob* is the same for ``-R``.  Noise and support texture are symmetric, so they give
  as many mirror as dark blobs at each scale; dark particles give dark blobs only.  At the lowest
  cut ``z >= u`` (``Z_CUTS``) where the dark blobs exceed the mirror blobs significantly
  (``BLOB_SIGNIFICANCE`` Poisson sigmas, at least ``MIN_BLOBS``) and purely (the excess is at
  least ``PURITY`` of the dark blobs), the weakest dark blobs of each scale, as many as there
  are mirror blobs, are dropped, and the characteristic diameter is the median of the rest (over
  all frames).  No such cut: no blob structure (None).  Low cuts serve dense, small, noisy
  particles; high cuts few large particles over a texture that gives many weak small blobs.

For a disc the response peaks at ``s = r / sqrt(2)`` (``d / s = 2.83``), for the projection of a
sphere ``sqrt(1 - (rho / r)^2)`` (the simulator's particles) at ``d / s = 3.32``
(``DIAMETER_PER_SIGMA = 3.3``; a disc-like particle reads ~17 % large).  On simulated movies
(``etemseg.synth``, 2.5 nm mean radius, default imaging) the estimate is within ~10 % of the true
median diameter at 0.06-0.36 nm/px (``tests/test_scales.py``); at 0.9 nm/px (5 px particles,
blurred by the simulator's 1 px edge blur) ~15 % large.

numpy and scipy only; no etemseg stage is imported (the pseudo-label stage calls
:func:`scale_for_movie`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from etemseg.errors import ConfigError, is_number

__all__ = [
    "BLOB_FLOOR",
    "BLOB_K",
    "DIAMETER_PER_SIGMA",
    "BlobScale",
    "blob_scale",
    "PLAUSIBLE_PIXEL_SIZE_NM",
    "check_pixel_size",
    "estimate_particle_diameter_px",
    "opposite_polarity",
    "scale_for_movie",
]

log = logging.getLogger("etemseg.scales")

#: Diameter of a blob per LoG scale of its strongest response (between a disc, 2.83, and the
#: projection of a sphere, 3.32).
DIAMETER_PER_SIGMA = 3.3
#: A blob's response exceeds the median response at its scale by this many robust sigmas.
BLOB_K = 4.0
#: ... and this fraction of the frame's robust grey range (1st to 99th percentile).
BLOB_FLOOR = 0.05
#: Fewer blobs than this over all frames: no blob structure.
MIN_BLOBS = 5
#: The excess of dark over mirror blobs must be this many Poisson sigmas.
BLOB_SIGNIFICANCE = 3.0
#: ... and at least this fraction of the dark blobs.
PURITY = 0.75
#: Significance cuts (robust sigmas at the blob's scale) tried in turn, lowest first.
Z_CUTS = (4.0, 5.0, 6.0, 8.0, 11.0, 16.0)
#: Scales per octave.
SCALES_PER_OCTAVE = 4


@dataclass(frozen=True)
class BlobScale:
    """What :func:`blob_scale` found.

    Attributes
    ----------
    diameter_px : float or None
        Characteristic (median) blob diameter, px; None when there is no blob structure.
    n_blobs : int
        Blobs found over all frames.
    frames : int
        Frames analysed.
    spread_px : tuple of float or None
        25th and 75th percentile of the blob diameters, px.
    reason : str
        Why ``diameter_px`` is None ("" otherwise).
    """

    diameter_px: float | None
    n_blobs: int
    frames: int
    spread_px: tuple[float, float] | None = None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dictionary."""
        d = asdict(self)
        d["spread_px"] = None if self.spread_px is None else list(self.spread_px)
        return d


def _normalised(frame: np.ndarray, polarity: str, max_side: int) -> np.ndarray | None:
    """Centre crop (at most ``max_side`` px a side), float32, robust range 1, particles dark."""
    a = np.asarray(frame)
    if a.ndim != 2 or a.size == 0 or a.dtype.kind not in "biuf":
        raise ConfigError(f"scales: expected 2-D frames of real numbers, got a frame of shape "
                          f"{a.shape} and dtype {a.dtype}")
    h, w = a.shape
    y0, x0 = max(0, (h - max_side) // 2), max(0, (w - max_side) // 2)
    a = a[y0:y0 + max_side, x0:x0 + max_side].astype(np.float32)
    finite = np.isfinite(a)
    if not finite.any():
        return None
    if not finite.all():
        a[~finite] = np.median(a[finite])
    lo, hi = np.percentile(a, [1.0, 99.0])
    if not hi > lo:
        lo, hi = float(a.min()), float(a.max())
        if not hi > lo:
            return None
    a = (a - np.float32(lo)) / np.float32(hi - lo)
    return -a if polarity == "bright" else a


def _scales(shape: tuple[int, int], min_diameter_px: float,
            max_diameter_px: float | None) -> np.ndarray:
    """LoG scales, px: one below the smallest and one above the largest diameter (the ends
    only bracket the scale maxima)."""
    top = min(shape) / 3.0 if max_diameter_px is None else float(max_diameter_px)
    s_lo = min_diameter_px / DIAMETER_PER_SIGMA
    s_hi = top / DIAMETER_PER_SIGMA
    if not s_hi > s_lo:
        return np.zeros(0)
    step = 2.0 ** (1.0 / SCALES_PER_OCTAVE)
    n = int(math.ceil(math.log(s_hi / s_lo) / math.log(step)))
    return s_lo * step ** np.arange(-1, n + 2)


def _level(image: np.ndarray, f: int, cache: dict[int, np.ndarray]) -> np.ndarray:
    """Block mean of ``image`` by ``f`` (cropped to a multiple of ``f``), cached."""
    if f not in cache:
        h, w = (image.shape[0] // f) * f, (image.shape[1] // f) * f
        cache[f] = image[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))
    return cache[f]


def _response(image: np.ndarray, s: float, cache: dict[int, np.ndarray]
              ) -> tuple[np.ndarray, int]:
    """``s^2 * laplacian(G_s * image)`` on the coarsest pyramid level where ``s >= 2`` level px;
    returns the map and the level's factor."""
    f = 1
    while s / (2 * f) >= 2.0 and min(image.shape) // (2 * f) >= 16:
        f *= 2
    level = _level(image, f, cache)
    sl = s / f
    r = ndi.gaussian_laplace(level, sl, mode="reflect")
    r *= np.float32(sl * sl)
    return r, f


def _sample(r: np.ndarray, f: int, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``r`` (a level of factor ``f``) at frame coordinates ``(y, x)``, bilinear."""
    c = (np.asarray(y) - (f - 1) / 2.0) / f, (np.asarray(x) - (f - 1) / 2.0) / f
    return ndi.map_coordinates(r, c, order=1, mode="nearest")


def _peaks(r: np.ndarray, f: int, s: float, sign: float
           ) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Spatial maxima of ``sign * (r - median)`` above ``BLOB_K`` robust sigmas and
    ``BLOB_FLOOR``, at least ``1.5 s`` from the frame edge: frame coordinates ``y, x``, the
    median and the robust sigma of ``r``."""
    med = float(np.median(r))
    spread = 1.4826 * float(np.median(np.abs(r - med)))
    v = (r - np.float32(med)) * np.float32(sign)
    thr = max(BLOB_K * spread, BLOB_FLOOR)
    cand = (v > thr) & (ndi.maximum_filter(v, size=3, mode="nearest") == v)
    m = int(math.ceil(1.5 * s / f))
    if 2 * m >= min(r.shape):
        return np.zeros(0), np.zeros(0), med, spread
    cand[:m] = cand[-m:] = False
    cand[:, :m] = cand[:, -m:] = False
    i, j = np.nonzero(cand)
    return i * f + (f - 1) / 2.0, j * f + (f - 1) / 2.0, med, spread


def _scale_maxima(maps: list[tuple[np.ndarray, int]], scales: np.ndarray, k: int,
                  sign: float) -> np.ndarray:
    """Extrema of scale ``k`` (``maps`` holds scales ``k-1, k, k+1``) that are also maxima of
    ``sign * R`` along scale: rows ``(k, diameter px, z, y, x)`` with ``z`` the response in
    robust sigmas of its scale, the scale refined by a parabola in ``log s``."""
    (rm, fm), (r0, f0), (rp, fp) = maps
    y, x, med, spread = _peaks(r0, f0, float(scales[k]), sign)
    if not y.size:
        return np.zeros((0, 5))
    v0 = sign * _sample(r0, f0, y, x)
    vm, vp = sign * _sample(rm, fm, y, x), sign * _sample(rp, fp, y, x)
    keep = (v0 >= vm) & (v0 >= vp)
    vm, v0, vp, y, x = vm[keep], v0[keep], vp[keep], y[keep], x[keep]
    curv = vm - 2.0 * v0 + vp
    off = np.where(curv < 0, 0.5 * (vm - vp) / np.where(curv < 0, curv, -1.0), 0.0)
    step = math.log(scales[1] / scales[0])
    diam = DIAMETER_PER_SIGMA * scales[k] * np.exp(step * np.clip(off, -0.5, 0.5))
    z = (v0 - sign * med) / max(spread, 1e-12)
    return np.column_stack([np.full(y.size, k), diam, z, y, x])


def _suppress(blobs: np.ndarray) -> np.ndarray:
    """Greedy non-maximum suppression: most significant first, a blob whose centre lies inside a
    kept (more significant) blob is dropped."""
    order = np.argsort(-blobs[:, 2], kind="stable")
    kept: list[int] = []
    for i in order:
        _, _, _, y, x = blobs[i]
        if kept:
            k = blobs[kept]
            if np.any((k[:, 3] - y) ** 2 + (k[:, 4] - x) ** 2 < (0.5 * k[:, 1]) ** 2):
                continue
        kept.append(int(i))
    return blobs[sorted(kept)]


def _frame_blobs(image: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale-space blobs of one normalised frame: dark ones (positive response) and, as the
    noise reference, their mirror images (negative response); rows of :func:`_scale_maxima`,
    after :func:`_suppress`."""
    cache: dict[int, np.ndarray] = {}
    maps = [_response(image, float(s), cache) for s in scales[:2]]
    found: dict[float, list[np.ndarray]] = {1.0: [], -1.0: []}
    for k in range(1, len(scales) - 1):
        maps.append(_response(image, float(scales[k + 1]), cache))
        for sign, out in found.items():
            out.append(_scale_maxima(maps[-3:], scales, k, sign))
        maps.pop(0)
    return tuple(_suppress(np.concatenate(found[sign] or [np.zeros((0, 5))]))
                 for sign in (1.0, -1.0))


def _excess(dark: np.ndarray, mirror: np.ndarray) -> tuple[np.ndarray, int]:
    """Diameters of the dark blobs in excess of the noise: at each scale, as many of the weakest
    dark blobs are dropped as there are mirror blobs (a field without blobs is symmetric).
    Also returns the number of dark and mirror blobs at the scales with an excess (the variance
    of the excess under the no-blob hypothesis)."""
    out, pooled = [], 0
    for k in np.unique(dark[:, 0]):
        at = dark[dark[:, 0] == k]
        n_mirror = int(np.count_nonzero(mirror[:, 0] == k))
        n = at.shape[0] - n_mirror
        if n > 0:
            out.append(at[np.argsort(-at[:, 2], kind="stable")[:n], 1])
            pooled += at.shape[0] + n_mirror
    return (np.concatenate(out) if out else np.zeros(0)), pooled


def _significant(dark: np.ndarray, mirror: np.ndarray) -> tuple[np.ndarray | None, str]:
    """Diameters of the dark blobs at the lowest significance cut (``Z_CUTS``) where their
    excess over the mirror blobs is significant (``BLOB_SIGNIFICANCE`` Poisson sigmas, at least
    ``MIN_BLOBS``) and pure (at least ``PURITY`` of the dark blobs); else None and why."""
    why = f"{dark.shape[0]} dark and {mirror.shape[0]} mirror-image (noise) blob(s)"
    for u in Z_CUTS:
        d, m = dark[dark[:, 2] >= u], mirror[mirror[:, 2] >= u]
        if d.shape[0] < MIN_BLOBS:
            break
        diam, pooled = _excess(d, m)
        if diam.size >= max(MIN_BLOBS, BLOB_SIGNIFICANCE * math.sqrt(pooled),
                            PURITY * d.shape[0]):
            return diam, ""
    return None, why + "; no significant excess of dark blobs at any cut"


def blob_scale(frames: np.ndarray, polarity: str = "dark", *, min_diameter_px: float = 3.0,
               max_diameter_px: float | None = None, max_side: int = 1024) -> BlobScale:
    """Characteristic diameter of the dark (or bright) blobs of a few frames.

    Parameters
    ----------
    frames : numpy.ndarray
        ``(T, H, W)`` or ``(H, W)`` frames, any real dtype (a few: every one is analysed).
    polarity : {"dark", "bright"}
        Particles darker (bright-field TEM) or brighter than the background.
    min_diameter_px, max_diameter_px : float
        Diameter range searched, px; the largest defaults to a third of the (cropped) frame.
    max_side : int
        Frames are cropped to their central ``max_side x max_side`` px (cost).

    Returns
    -------
    BlobScale
        ``diameter_px`` None, with ``reason``, when fewer than ``MIN_BLOBS`` blobs are found
        (blank, constant or pure-noise frames) or the frames are too small.
    """
    if polarity not in ("dark", "bright"):
        raise ConfigError(f"scales: polarity must be 'dark' or 'bright' (got {polarity!r})")
    arr = np.asarray(frames)
    arr = arr[None] if arr.ndim == 2 else arr
    if arr.ndim != 3 or arr.shape[0] == 0:
        raise ConfigError(f"scales: expected (T, H, W) frames, got shape {arr.shape}")
    dark, mirror = [np.zeros((0, 5))], [np.zeros((0, 5))]
    for frame in arr:
        image = _normalised(frame, polarity, int(max_side))
        scales = _scales(frame.shape if image is None else image.shape, min_diameter_px,
                         max_diameter_px)
        if image is None or scales.size < 3:
            continue
        d, m = _frame_blobs(image, scales)
        dark.append(d)
        mirror.append(m)
    n, usable = len(arr), len(dark) - 1
    if usable == 0:
        return BlobScale(None, 0, n, None, "no usable frame (constant, non-finite or smaller "
                                          f"than {3 * min_diameter_px:.0f} px)")
    dark_all, mirror_all = np.concatenate(dark), np.concatenate(mirror)
    diam, why = _significant(dark_all, mirror_all)
    if diam is None:
        return BlobScale(None, 0, n, None, f"no blob structure in {usable} frame(s): {why}")
    q25, q50, q75 = (float(v) for v in np.percentile(diam, [25, 50, 75]))
    return BlobScale(q50, int(diam.size), n, (q25, q75))


def estimate_particle_diameter_px(frames: np.ndarray, polarity: str = "dark",
                                  **options: Any) -> float | None:
    """Characteristic particle diameter of a few frames, px (:func:`blob_scale`).

    Parameters
    ----------
    frames : numpy.ndarray
        ``(T, H, W)`` or ``(H, W)`` frames, any real dtype.
    polarity : {"dark", "bright"}
    **options
        ``min_diameter_px``, ``max_diameter_px``, ``max_side`` of :func:`blob_scale`.

    Returns
    -------
    float or None
        Median blob diameter, px; None (the reason logged as a warning) without blob structure.
    """
    found = blob_scale(frames, polarity, **options)
    if found.diameter_px is None:
        log.warning("scales: cannot estimate the particle diameter: %s", found.reason)
    return found.diameter_px


#: Pixel sizes a TEM movie can have, nm/px: from atomic-resolution (aberration-corrected, ~0.01)
#: to low-magnification overviews (a 1792 px frame 90 um wide). Outside, the number was most
#: likely given in another unit (0.00018 "nm" is 0.18 nm written in um).
PLAUSIBLE_PIXEL_SIZE_NM = (0.005, 50.0)


def check_pixel_size(value: Any, key: str) -> float:
    """``value`` as a float if it is a plausible pixel size in nm/px, else a
    :class:`ConfigError` naming ``key`` (the config key, option or file it came from)."""
    lo, hi = PLAUSIBLE_PIXEL_SIZE_NM
    if not is_number(value) or not value > 0:
        raise ConfigError(f"{key}: must be a finite number > 0 (nm/px), got {value!r}")
    if not lo <= float(value) <= hi:
        hint = (f" ({value} um would be {float(value) * 1000:g} nm)" if value < lo
                else f" ({value} pm would be {float(value) / 1000:g} nm, {value} A would be "
                f"{float(value) / 10:g} nm)")
        raise ConfigError(f"{key}: {value} nm/px is not a plausible pixel size for TEM frames "
                          f"(expected {lo:g}..{hi:g} nm/px); was it given in another unit?{hint}")
    return float(value)


def opposite_polarity(frames: np.ndarray | None, polarity: str, found: BlobScale
                      ) -> BlobScale | None:
    """The blobs of the opposite polarity when they, rather than ``found``, look like the
    particles of ``frames``: they have a scale, and they are both more numerous and larger than
    ``found`` (or ``found`` has none). None otherwise.

    Dark bright-field particles show the bright gaps between them as smaller, fewer blobs; the
    lattice fringes and support texture of real HRTEM give many bright blobs, but small ones
    (``../shared/realdata``: 268-378 bright blobs of 6-7 px against dark particles of 46-82 px),
    so neither is taken for a wrong polarity.
    """
    if frames is None:
        return None
    other = blob_scale(frames, "bright" if polarity == "dark" else "dark")
    if other.diameter_px is None:
        return None
    if found.diameter_px is None or (other.n_blobs > found.n_blobs
                                     and other.diameter_px > found.diameter_px):
        return other
    return None


def scale_for_movie(pixel_size_nm: float | None, frames_sample: np.ndarray | None, *,
                    expected_diameter_nm: float = 5.0, polarity: str = "dark"
                    ) -> dict[str, Any]:
    """The pixel size to resolve physical lengths at: the calibration, or an estimate.

    Parameters
    ----------
    pixel_size_nm : float or None
        The movie's calibration, nm/px.
    frames_sample : numpy.ndarray or None
        A few ``(T, H, W)`` frames, used only without a calibration.
    expected_diameter_nm : float
        Typical particle diameter, nm, that an uncalibrated movie is assumed to show.
    polarity : {"dark", "bright"}

    Returns
    -------
    dict
        ``pixel_size_nm`` (the calibration or None), ``source`` (``"calibration"``,
        ``"estimate"`` or ``"none"``), ``effective_pixel_size_nm`` (nm/px to resolve at; None when
        there is neither a calibration nor an estimate), and without a calibration
        ``estimated_diameter_px``, ``expected_diameter_nm``, ``blobs`` (:class:`BlobScale` as a
        dict).  Without a calibration a WARNING is logged, naming the estimate or why there is
        none.
    """
    if pixel_size_nm is not None:
        if not is_number(pixel_size_nm) or not pixel_size_nm > 0:
            raise ConfigError(f"scales: pixel size must be a number > 0 nm (got "
                              f"{pixel_size_nm!r})")
        return {"pixel_size_nm": float(pixel_size_nm), "source": "calibration",
                "effective_pixel_size_nm": float(pixel_size_nm)}
    if not is_number(expected_diameter_nm) or not expected_diameter_nm > 0:
        raise ConfigError(f"scales: expected_diameter_nm must be a number > 0 (got "
                          f"{expected_diameter_nm!r})")
    found = (blob_scale(frames_sample, polarity) if frames_sample is not None
             else BlobScale(None, 0, 0, None, "no frames to estimate from"))
    info: dict[str, Any] = {"pixel_size_nm": None, "source": "none",
                            "estimated_diameter_px": found.diameter_px,
                            "expected_diameter_nm": float(expected_diameter_nm),
                            "effective_pixel_size_nm": None, "blobs": found.to_dict()}
    other = opposite_polarity(frames_sample, polarity, found)
    if other is not None:
        opposite = "bright" if polarity == "dark" else "dark"
        info["polarity_mismatch"] = {"looks": opposite, "blobs": other.to_dict()}
        log.warning("pixel size unknown and the particles look %s, not %s: %d %s blobs %.1f px "
                    "across against %d %s ones of %s px; check pseudolabel.polarity. The masks "
                    "of this movie stay empty", opposite, polarity, other.n_blobs, opposite,
                    other.diameter_px, found.n_blobs, polarity,
                    "no" if found.diameter_px is None else f"{found.diameter_px:.1f}")
        return info
    if found.diameter_px is None:
        log.warning("pixel size unknown and the particle diameter cannot be estimated (%s); "
                    "physical lengths fall back to their px values", found.reason)
        return info
    ps = float(expected_diameter_nm) / found.diameter_px
    info.update(source="estimate", effective_pixel_size_nm=ps)
    log.warning("pixel size unknown: estimated particle diameter %.1f px (%d blobs in %d "
                "frames); resolving physical lengths at %.4g nm/px, as if the particles were "
                "%.3g nm across", found.diameter_px, found.n_blobs, found.frames, ps,
                float(expected_diameter_nm))
    return info


def _denoise(value: float) -> float:
    """``value`` rounded to 6 decimals, so that e.g. 8.64 / 0.18 is 48, not 48.00000000000001."""
    return round(float(value), 6)


def round_half_up(value: float) -> int:
    """Nearest integer, halves up, after removing float noise (the rounding of every physical
    length converted to px)."""
    return int(math.floor(_denoise(value) + 0.5))


def area_px(area_nm2: float, pixel_size_nm: float) -> int:
    """An area in nm² as a whole number of px at ``pixel_size_nm`` nm/px (half up)."""
    return round_half_up(area_nm2 / pixel_size_nm ** 2)

