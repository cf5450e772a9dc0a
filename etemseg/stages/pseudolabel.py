"""Classical pseudo-labels for CNN training: the paper's scikit-image recipe and a fast twin.

The design, the evidence for its constants and its limits: ``docs/pseudolabelling.md``.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numba
import numpy as np

from etemseg.errors import ConfigError, EtemsegError, is_int, is_number
from etemseg.io.store import DEFAULT_WINDOW_MS, MovieStore, frames_in_window
from etemseg.morphology import (
    FLOOD_KEY_MASK,
    fill_holes_inplace,
    flood_keys_from_float,
    flood_keys_reflood,
    gaussian_into,
    gaussian_kernel1d,
    histogram_above,
    image_minmax,
    li_threshold,
    opening_disk_fast,
    otsu_threshold,
    otsu_threshold_below,
    pad_frame,
    priority_flood,
    remove_small_inplace,
    rescale_inplace,
    threshold_into,
)
from etemseg.protocol import ChunkStage, Receipt
from etemseg.scales import _denoise, area_px, round_half_up

__all__ = [
    "BACKGROUND_BLOCKS",
    "BACKGROUND_RADIUS_MAX_PX",
    "FAINT_NOISE_K",
    "FAINT_VALLEY",
    "HIGH_COVERAGE_WARN",
    "MAX_COVERAGE",
    "NOISE_FLOOR_K",
    "NM_TWINS",
    "PRESETS",
    "QUANT_LEVELS",
    "SCALE_FRAMES",
    "SIGMA_MIN_PX",
    "PseudoLabelParams",
    "PseudolabelStage",
    "background_depth",
    "faint_components",
    "label_chunk",
    "params_from_preset",
    "particle_scaled_background",
    "prepare_frame",
    "pseudolabel_fast",
    "pseudolabel_reference",
    "pseudolabel_stack",
    "resolve_for_movie",
    "smoothed_noise",
]

log = logging.getLogger("etemseg.stages.pseudolabel")

#: Quantisation levels of the smoothed frame in the fast reconstruction (16 bit; at most
#: :data:`etemseg.morphology.FLOOD_MAX_LEVELS`).
QUANT_LEVELS = 65536
#: Threshold (feature units) must exceed this many noise sigmas of the smoothed frame.
NOISE_FLOOR_K = 0.65
#: ``faint_noise_k`` of the ``default`` preset: a faint particle's deepest point must reach this
#: many noise sigmas of the smoothed frame (chosen on simulated dev movies,
#: ``docs/pseudolabelling.md``).  Off in ``thick-support``: on a thick, textured support the
#: texture's basins are as deep as faint particles.
FAINT_NOISE_K = 1.75
#: ``faint_noise_k``'s valley test: the second class's fullest histogram bin must hold this many
#: times the emptiest bin between it and the background (:func:`faint_components`).
FAINT_VALLEY = 2.0
#: Masks covering more than this fraction of the frame are returned empty.
MAX_COVERAGE = 0.95
#: Masks covering more than this fraction are kept but logged.
HIGH_COVERAGE_WARN = 0.6

#: Smallest Gaussian sigma, px, that a physical ``sigma_nm`` resolves to.
SIGMA_MIN_PX = 0.5
#: Each physical length -> its pixel twin.
NM_TWINS = {"sigma_nm": "sigma", "opening_radius_nm": "opening_radius",
            "min_area_nm2": "min_area_px", "border_pad_nm": "border_pad_px",
            "background_radius_nm": "background_radius_px"}
#: Largest ``background_radius_px``.
BACKGROUND_RADIUS_MAX_PX = 4096

_THRESHOLDS = ("otsu", "li", "fixed")
_POLARITIES = ("dark", "bright")


# --------------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PseudoLabelParams:
    """Parameters of the classical pseudo-labelling recipe.

    Attributes
    ----------
    sigma : float
        Gaussian sigma in px (> 0).
    opening_radius : int
        Radius in px of the ``skimage.morphology.disk`` used for the grey opening (>= 0; 0 = no
        opening).
    threshold : str
        ``"otsu"`` (paper), ``"li"`` or ``"fixed"``.
    fixed_threshold : float
        Threshold on the feature rescaled to ``[0, 1]``, used when ``threshold == "fixed"``;
        ``0 < fixed_threshold < 1``.
    polarity : str
        ``"dark"`` particles (bright-field TEM, the paper) or ``"bright"`` (the frame is inverted
        after normalisation).
    min_area_px : int
        Remove 8-connected mask components with fewer pixels than this (0 = keep all).
    fill_holes : bool
        Fill holes in the mask (background regions 4-connected and not touching the border).
    border_pad_px : int
        Not in the paper (0 there).  Pad the smoothed frame by this many px before the two
        border-seeded reconstructions (mirrored about the frame edge after removing a fitted
        quadratic trend, see :func:`etemseg.morphology.pad_frame`), and crop the depth ``d``
        back to the frame.  A particle cut by the frame edge then becomes a closed basin and is
        found; the pad should exceed the largest particle diameter in px.
    background_radius_px : int
        Not in the paper (0 there: off).  Cap the basin depth ``d`` by the depth below the local
        background, :func:`background_depth` (a grey closing of the smoothed frame with a disk
        of this radius): a dark region wider than the disk (a thick patch of the
        support, e.g. carbon black) is not a particle however deep a basin it is, while a
        particle narrower than about the disk keeps its full depth, also where it sits on such a
        patch.  Should be about the largest particle diameter in px.
    background_per_diameter : float
        Not in the paper (0: the radius is ``background_radius_px`` as given).  With the local
        background on (``background_radius_px`` or ``background_radius_nm`` > 0), its radius
        scales with the movie's particles: :func:`resolve_for_movie` raises it to this multiple
        of the upper-quartile particle diameter, px, that :func:`etemseg.scales.blob_scale`
        finds in the movie's first frames (``background_radius_px`` / ``_nm`` is then the
        floor, used alone where no diameter is found).  The closing fills a dark region
        narrower than twice the radius, so 1.0 keeps particles up to twice the upper-quartile
        diameter (eight times its volume: the growth of a sintering movie) and takes wider dark
        regions for support.
    faint_noise_k : float
        Not in the paper (0 there: off).  Faint particles beside dark ones: with diffraction
        contrast one particle can be far darker than the others, and the one Otsu split then
        separates it from everything else.  With ``faint_noise_k`` > 0 a second Otsu level is
        taken on the (opened) feature below the first threshold; when those pixels form two
        classes (a valley in their histogram, :data:`FAINT_VALLEY`), every component above that
        level that the first threshold missed entirely is added if its deepest point is at
        least ``faint_noise_k`` times the smoothed frame's noise (:func:`smoothed_noise`).
        Particles the first threshold found keep their extent.  See :func:`faint_components`.
    sigma_nm : float or None
        Physical twin of ``sigma``, nm (> 0).
    opening_radius_nm : float or None
        Physical twin of ``opening_radius``, nm (>= 0).
    min_area_nm2 : float or None
        Physical twin of ``min_area_px``, nm^2 (>= 0).
    border_pad_nm : float or None
        Physical twin of ``border_pad_px``, nm (>= 0).
    background_radius_nm : float or None
        Physical twin of ``background_radius_px``, nm (>= 0).

    Notes
    -----
    The recipe works in px.  A physical length that is set (not None) overrides its pixel twin
    once the pixel size is known: :meth:`resolved` fills the px fields from the nm fields and
    clears them.  The recipe functions refuse parameters whose nm fields are still set.
    """

    sigma: float = 2.0
    opening_radius: int = 5
    threshold: str = "otsu"
    fixed_threshold: float = 0.5
    polarity: str = "dark"
    min_area_px: int = 0
    fill_holes: bool = False
    border_pad_px: int = 0
    background_radius_px: int = 0
    background_per_diameter: float = 0.0
    faint_noise_k: float = 0.0
    sigma_nm: float | None = None
    opening_radius_nm: float | None = None
    min_area_nm2: float | None = None
    border_pad_nm: float | None = None
    background_radius_nm: float | None = None

    def validate(self) -> None:
        """Check every field; raise :class:`~etemseg.errors.ConfigError` naming the first bad
        one (the message starts with ``pseudolabel.<field>``)."""

        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"pseudolabel.{name}: {why} (got {getattr(self, name)!r})")

        if not is_number(self.sigma) or not 0 < self.sigma <= 100:
            raise bad("sigma", "must be a finite number in (0, 100]")
        if not is_int(self.opening_radius) or not 0 <= self.opening_radius <= 64:
            raise bad("opening_radius", "must be an integer in [0, 64]")
        if not isinstance(self.threshold, str) or self.threshold not in _THRESHOLDS:
            raise bad("threshold", f"must be one of {', '.join(_THRESHOLDS)}")
        if not is_number(self.fixed_threshold) or not 0 < self.fixed_threshold < 1:
            raise bad("fixed_threshold", "must be a number in (0, 1)")
        if not isinstance(self.polarity, str) or self.polarity not in _POLARITIES:
            raise bad("polarity", f"must be one of {', '.join(_POLARITIES)}")
        if not is_int(self.min_area_px) or self.min_area_px < 0:
            raise bad("min_area_px", "must be an integer >= 0")
        if not isinstance(self.fill_holes, (bool, np.bool_)):
            raise bad("fill_holes", "must be true or false")
        if not is_int(self.border_pad_px) or not 0 <= self.border_pad_px <= 4096:
            raise bad("border_pad_px", "must be an integer in [0, 4096]")
        if (not is_int(self.background_radius_px)
                or not 0 <= self.background_radius_px <= BACKGROUND_RADIUS_MAX_PX):
            raise bad("background_radius_px",
                      f"must be an integer in [0, {BACKGROUND_RADIUS_MAX_PX}]")
        if (not is_number(self.background_per_diameter)
                or not 0 <= self.background_per_diameter <= 100):
            raise bad("background_per_diameter", "must be a finite number in [0, 100]")
        if not is_number(self.faint_noise_k) or not 0 <= self.faint_noise_k <= 100:
            raise bad("faint_noise_k", "must be a finite number in [0, 100]")
        for name in NM_TWINS:
            value = getattr(self, name)
            if value is None:
                continue
            if not is_number(value) or value < 0 or (name == "sigma_nm" and value == 0):
                kind = "> 0" if name == "sigma_nm" else ">= 0"
                raise bad(name, f"must be null or a finite number {kind}")

    @property
    def physical(self) -> tuple[str, ...]:
        """Names of the nm fields that are set (empty once :meth:`resolved`)."""
        return tuple(name for name in NM_TWINS if getattr(self, name) is not None)

    @property
    def scales_with_particles(self) -> bool:
        """Whether the local background's radius follows the movie's particle diameter (the
        radius then needs a few of the movie's frames, :func:`resolve_for_movie`)."""
        on = self.background_radius_px > 0 or bool(self.background_radius_nm)
        return on and self.background_per_diameter > 0

    def pixel_only(self) -> PseudoLabelParams:
        """These parameters with every nm field cleared: the px fields as they are."""
        return replace(self, **dict.fromkeys(NM_TWINS))

    def resolved(self, pixel_size_nm: float) -> PseudoLabelParams:
        """The px parameters at a pixel size: px fields from the set nm fields, nm fields cleared.

        Parameters
        ----------
        pixel_size_nm : float
            Pixel size, nm/px (finite, > 0).

        Returns
        -------
        PseudoLabelParams
            Validated, without nm fields.  ``sigma = max(SIGMA_MIN_PX, sigma_nm / ps)`` px;
            ``opening_radius = round(opening_radius_nm / ps)`` px, at least 1 when
            ``opening_radius_nm > 0``; ``min_area_px = round(min_area_nm2 / ps**2)``;
            ``border_pad_px = ceil(border_pad_nm / ps)``, where ``ps = pixel_size_nm``, rounding
            is half-up after removing float noise (6 decimals), and each value is clipped to its
            valid range (with a warning).

        Raises
        ------
        ConfigError
            Invalid parameters or pixel size.
        """
        self.validate()
        if not is_number(pixel_size_nm) or not pixel_size_nm > 0:
            raise ConfigError(f"pseudolabel: pixel size must be a finite number > 0 nm "
                              f"(got {pixel_size_nm!r})")
        ps = float(pixel_size_nm)
        px: dict[str, Any] = {}
        if self.sigma_nm is not None:
            px["sigma"] = _clip("sigma", max(SIGMA_MIN_PX, _denoise(self.sigma_nm / ps)), 100.0)
        if self.opening_radius_nm is not None:
            r = round_half_up(self.opening_radius_nm / ps)
            px["opening_radius"] = _clip("opening_radius",
                                         max(r, 1 if self.opening_radius_nm > 0 else 0), 64)
        if self.min_area_nm2 is not None:
            px["min_area_px"] = area_px(self.min_area_nm2, ps)
        if self.border_pad_nm is not None:
            px["border_pad_px"] = _clip("border_pad_px",
                                        math.ceil(_denoise(self.border_pad_nm / ps)), 4096)
        if self.background_radius_nm is not None:
            r = round_half_up(self.background_radius_nm / ps)
            px["background_radius_px"] = _clip(
                "background_radius_px", max(r, 1 if self.background_radius_nm > 0 else 0),
                BACKGROUND_RADIUS_MAX_PX)
        out = replace(self, **px, **dict.fromkeys(NM_TWINS))
        out.validate()
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dictionary of the parameters."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PseudoLabelParams:
        """Build and validate parameters from a dictionary; unknown keys raise ConfigError."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"pseudolabel.{unknown[0]}: unknown parameter")
        p = cls(**data)
        p.validate()
        return p


def _clip(name: str, value: float, hi: float) -> Any:
    if value > hi:
        log.warning("pseudolabel: %s = %s px from the physical length is above its maximum %s; "
                    "using %s", name, value, hi, hi)
        return type(value)(hi)
    return value


def params_from_preset(preset: str, overrides: dict[str, Any] | None = None
                       ) -> PseudoLabelParams:
    """A preset with overrides, where an overridden px field drops the preset's nm twin.

    Parameters
    ----------
    preset : str
        Name in :data:`PRESETS`.
    overrides : dict, optional
        Field values to change (``None`` values are ignored).  ``sigma`` given without
        ``sigma_nm`` clears the preset's ``sigma_nm`` (likewise for every px/nm pair), so a
        length given in px is used as given.

    Returns
    -------
    PseudoLabelParams
        Validated (nm fields possibly still set: :meth:`PseudoLabelParams.resolved`).

    Raises
    ------
    ConfigError
        Unknown preset or field, or an invalid value.
    """
    if preset not in PRESETS:
        raise ConfigError(f"pseudolabel.preset: unknown preset {preset!r}; one of "
                          f"{', '.join(PRESETS)}")
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    values = PRESETS[preset].to_dict()
    for nm_name, px_name in NM_TWINS.items():
        if px_name in given and nm_name not in given:
            values[nm_name] = None
    return PseudoLabelParams.from_dict({**values, **given})


#: ``"paper"``: the published recipe in px, no extras (pixel F1 ~0.86 on the demo movie).  Its
#: lengths are bound to the magnification of the paper's movies (~0.18 nm/px, ~5 nm particles);
#: at another magnification use ``"default"`` or set the nm fields.
#: ``"default"``: the recipe plus detrended mirror padding against the edge losses, hole filling
#: and a minimum area, in nm: at 0.18 nm/px it resolves exactly to the px values it also holds
#: (sigma 2 px, opening radius 5 px, min area 30 px, pad 48 px; pixel F1 ~0.92 on the demo movie,
#: ``SynthParams()``), the px fallback when the pixel size is unknown and cannot be estimated.
#: ``"thick-support"``: ``"default"`` plus the local background (``background_radius_nm`` 5 nm,
#: 28 px at 0.18 nm/px) for thick, uneven supports such as carbon black: dark regions wider than
#: about 10 nm are taken for support, so particles of more than ~10 nm diameter are lost too
#: (a 12 nm particle at 0.18 nm/px is; raise ``background_radius_nm`` to about the largest
#: particle diameter).  Not the default for that reason.
PRESETS: dict[str, PseudoLabelParams] = {
    "paper": PseudoLabelParams(
        sigma=2.0, opening_radius=5, threshold="otsu", polarity="dark", min_area_px=0,
        fill_holes=False,
    ),
    "default": PseudoLabelParams(
        sigma=2.0, opening_radius=5, threshold="otsu", polarity="dark", min_area_px=30,
        fill_holes=True, border_pad_px=48, faint_noise_k=FAINT_NOISE_K,
        sigma_nm=0.36, opening_radius_nm=0.9, min_area_nm2=0.972, border_pad_nm=8.64,
    ),
    "thick-support": PseudoLabelParams(
        sigma=2.0, opening_radius=5, threshold="otsu", polarity="dark", min_area_px=30,
        fill_holes=True, border_pad_px=48, background_radius_px=28, background_per_diameter=1.0,
        sigma_nm=0.36, opening_radius_nm=0.9, min_area_nm2=0.972, border_pad_nm=8.64,
        background_radius_nm=5.0,
    ),
}


# --------------------------------------------------------------------------------------------
# shared guards: input cleaning, normalisation, noise floor, coverage
# --------------------------------------------------------------------------------------------


def _check_params(params: PseudoLabelParams | None) -> PseudoLabelParams:
    if params is None:
        params = PseudoLabelParams()
    if not isinstance(params, PseudoLabelParams):
        raise ConfigError(
            f"pseudolabel: params must be PseudoLabelParams (got {type(params).__name__})")
    params.validate()
    if params.physical:
        raise ConfigError(
            f"pseudolabel: params hold physical lengths ({', '.join(params.physical)}) that are "
            "not resolved to px; call params.resolved(pixel_size_nm) or resolve_for_movie() first")
    return params


def _check_image(image: Any) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim != 2:
        raise EtemsegError(f"pseudolabel: expected a 2-D frame (H, W), got shape {a.shape}")
    if a.size == 0:
        raise EtemsegError(f"pseudolabel: empty frame of shape {a.shape}")
    if a.dtype.kind not in "biuf":
        raise EtemsegError(f"pseudolabel: unsupported dtype {a.dtype} (need real numbers)")
    return a


def prepare_frame(
    image: np.ndarray, polarity: str = "dark", dtype: Any = np.float64
) -> np.ndarray | None:
    """Clean, normalise and orient one frame (the input guards shared by both implementations).

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` frame, any real dtype.
    polarity : {"dark", "bright"}
        ``"bright"`` inverts the normalised frame so that particles are dark.
    dtype : numpy dtype
        float dtype of the result (float64 for the reference, float32 for the fast path).

    Returns
    -------
    numpy.ndarray or None
        ``(H, W)`` C-contiguous normalised frame in ``[0, 1]`` of ``dtype``, particles dark;
        None (and a warning logged) when the frame is unusable: constant, or without a finite
        pixel.  Non-finite pixels are replaced by the median of the finite ones (warning).
    """
    a = _check_image(image)
    if a.dtype.kind == "b":
        a = a.astype(np.uint8)
    if a.dtype.kind == "f":
        finite = np.isfinite(a)
        if not finite.all():
            n_bad = int(a.size - np.count_nonzero(finite))
            if n_bad == a.size:
                log.warning("pseudolabel: frame has no finite pixel; returning an empty mask")
                return None
            fill = np.median(a[finite])
            log.warning(
                "pseudolabel: %d non-finite pixel(s) replaced by the finite median %.6g", n_bad,
                float(fill),
            )
            a = np.where(finite, a, fill)
    lo = a.min()
    hi = a.max()
    if not hi > lo:
        log.warning("pseudolabel: constant frame (value %s); returning an empty mask", lo)
        return None
    lo_f = float(lo)
    span = float(hi) - lo_f
    exact32 = (a.dtype.kind in "bu" and a.dtype.itemsize <= 2) or a.dtype == np.float32
    if np.dtype(dtype) == np.float64 or not exact32 or not math.isfinite(span):
        x = np.subtract(a, lo_f, dtype=np.float64)
        span = float(np.float64(hi) - np.float64(lo))
        x *= 1.0 / span
        x = np.ascontiguousarray(x, dtype=dtype)
    else:  # values exactly representable in float32: cast first, half the memory traffic
        x = np.array(a, dtype=dtype, order="C")
        x -= lo_f
        x *= 1.0 / span
    np.clip(x, 0.0, 1.0, out=x)
    if polarity == "bright":
        np.subtract(dtype(1.0), x, out=x)
    return x


def smoothed_noise(g: np.ndarray, sigma: float) -> float:
    """Robust noise sigma of the smoothed frame ``g`` (noise + support texture), for the guard.

    Differences at a lag ``L = max(2, round(4 sigma))`` px (beyond the correlation length of the
    smoothed noise, short against the illumination gradient) along every 16th row and every
    16th column; ``sigma_g = 1.4826 * median(|g(p + L) - g(p)|) / sqrt(2)`` (the median is
    robust to the particles).  0.0 for frames smaller than ``L + 1`` px in both directions.

    Parameters
    ----------
    g : numpy.ndarray
        ``(H, W)`` smoothed normalised frame (float32 or float64, any layout).
    sigma : float
        The Gaussian sigma that produced ``g``.

    Returns
    -------
    float
        Noise sigma in grey-range units.
    """
    lag = max(2, round(4.0 * float(sigma)))
    parts = []
    if g.shape[1] > lag:
        rows = g[::16]
        parts.append(np.abs(rows[:, lag:] - rows[:, :-lag]).ravel())
    if g.shape[0] > lag:
        cols = g[:, ::16]
        parts.append(np.abs(cols[lag:] - cols[:-lag]).ravel())
    if not parts:
        return 0.0
    dif = np.concatenate(parts)
    return 1.4826 * float(np.median(dif)) / math.sqrt(2.0)


def _accept_threshold(t_norm: float, s_lo: float, s_hi: float, noise: float,
                      params: PseudoLabelParams) -> bool:
    """Noise-floor guard: is the threshold, in un-rescaled feature units, above the noise floor?

    ``t_norm`` is the threshold on the rescaled feature ``(s - s_lo) / (s_hi - s_lo)``;
    ``noise`` is :func:`smoothed_noise` of the smoothed frame.
    """
    if not math.isfinite(t_norm):
        log.warning("pseudolabel: threshold is not finite; returning an empty mask")
        return False
    t_feat = s_lo + t_norm * (s_hi - s_lo)
    floor = NOISE_FLOOR_K * noise
    if not t_feat > floor:
        log.warning(
            "pseudolabel: threshold %.4g is below the noise floor %.4g (%.2f x smoothed-frame "
            "noise); no particles found, returning an empty mask", t_feat, floor, NOISE_FLOOR_K,
        )
        return False
    return True


def faint_components(o: np.ndarray, o_lo: float, t1: float, t2: float, s_lo: float,
                     s_hi: float, noise: float, k: float) -> np.ndarray | None:
    """Faint particles the first threshold missed: the second level of ``faint_noise_k``.

    Two tests, both needed:

    1. *the pixels below the first threshold are two classes*: in their histogram (64 bins over
       ``(o_lo, t1]``, the pixels at ``o_lo`` -- the flat background -- left out, a 3-bin
       running mean) the fullest bin above ``t2`` holds at least :data:`FAINT_VALLEY` times the
       emptiest bin below it, i.e. there is a valley at ``t2``.  On a textured support the
       histogram falls steadily from the background and no level is taken;
    2. *each added component is deep*: its deepest point reaches ``k`` noise sigmas.

    Parameters
    ----------
    o : numpy.ndarray
        ``(H, W)`` opened feature, rescaled from ``[s_lo, s_hi]`` to ``[0, 1]``.
    o_lo : float
        ``min(o)`` (both paths have it already).
    t1 : float
        The first threshold (``o > t1`` is the mask so far).
    t2 : float
        The second Otsu level, of the pixels ``o <= t1``.
    s_lo, s_hi : float
        Range of the feature before rescaling (grey-range units, as ``noise``).
    noise : float
        :func:`smoothed_noise` of the smoothed frame.
    k : float
        ``faint_noise_k``.

    Returns
    -------
    numpy.ndarray or None
        ``(H, W)`` bool: every 8-connected component of ``o > t2`` with no pixel above ``t1``
        whose maximum reaches ``k * noise`` in feature units; None when there is none or the
        valley test fails.
    """
    from scipy import ndimage as ndi

    span = s_hi - s_lo
    if not (span > 0 and math.isfinite(t2) and t2 < t1):
        return None
    tk = (k * noise - s_lo) / span  # the significance level on the rescaled feature
    if tk > t1 or not _has_valley(o, o_lo, t1, t2):
        return None  # (a component reaching tk > t1 also crosses t1: found already)
    lab, n = ndi.label(o > t2, structure=np.ones((3, 3), bool))
    if n == 0:
        return None
    keep = np.zeros(n + 1, bool)
    keep[lab[o >= tk]] = True
    keep[lab[o > t1]] = False
    keep[0] = False
    return keep[lab] if keep.any() else None


def _has_valley(o: np.ndarray, lo: float, t1: float, t2: float, nbins: int = 64) -> bool:
    """Test 1 of :func:`faint_components`: a valley at ``t2`` in the histogram of
    ``lo < o <= t1`` (``lo = min(o)``)."""
    counts = histogram_above(o, lo, t1, nbins)
    if not counts.any():
        return False
    n = np.convolve(np.ones(nbins), np.ones(3), "same")
    smooth = np.convolve(counts, np.ones(3), "same") / n
    mid = lo + (np.arange(nbins) + 0.5) * (t1 - lo) / nbins
    below, above = smooth[mid < t2], smooth[mid > t2]
    if not below.size or not above.size:
        return False
    return bool(above.max() >= FAINT_VALLEY * max(below.min(), 0.5))


def _check_coverage(mask: np.ndarray) -> np.ndarray:
    """Coverage guard shared by both paths: empty above MAX_COVERAGE, warning above
    HIGH_COVERAGE_WARN."""
    cov = float(np.count_nonzero(mask)) / mask.size
    if cov > MAX_COVERAGE:
        log.warning(
            "pseudolabel: mask covers %.1f %% of the frame (> %.0f %%); implausible, returning an "
            "empty mask", 100 * cov, 100 * MAX_COVERAGE,
        )
        return np.zeros_like(mask)
    if cov > HIGH_COVERAGE_WARN:
        log.warning("pseudolabel: mask covers %.1f %% of the frame; check polarity", 100 * cov)
    return mask


def _empty(shape: tuple[int, ...]) -> np.ndarray:
    return np.zeros(shape, dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# reference implementation (scikit-image, float64)
# --------------------------------------------------------------------------------------------


#: ``_depth_sobel``'s "no cap".
_NO_CAP = np.zeros((0, 0), np.float32)
#: :func:`background_depth` works on blocks of about ``radius / BACKGROUND_BLOCKS`` px.
BACKGROUND_BLOCKS = 4


def background_depth(g: np.ndarray, radius_px: int) -> np.ndarray:
    """Depth of the smoothed frame ``g`` below its local background: ``max(B - g, 0)``.

    ``B`` is the grey closing, with a disk of radius ``radius_px``, of the block means of ``g``
    (blocks of ``b = max(1, radius_px // BACKGROUND_BLOCKS)`` px; a disk of ``radius_px / b``
    blocks, scipy, edges reflected), brought back to the frame by linear interpolation.  Block
    means average the support's texture out; the closing fills every dark region narrower than
    the disk (a particle, or a cluster of them with brighter gaps) to the level around it, and
    leaves a wider one (a thick patch of the support) where it is, following its edge (a
    closing keeps a step), so that inside such a patch only its own dips have depth.  Shared
    by both implementations of the recipe.

    Parameters
    ----------
    g : numpy.ndarray
        ``(H, W)`` float image (particles dark).
    radius_px : int
        Radius of the disk, px (>= 1).

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` of ``g``'s dtype, >= 0.
    """
    from scipy import ndimage as ndi

    h, w = g.shape
    b = max(1, int(radius_px) // BACKGROUND_BLOCKS)
    hb, wb = -(-h // b), -(-w // b)
    padded = np.pad(g, ((0, hb * b - h), (0, wb * b - w)), mode="edge")
    blocks = padded.reshape(hb, b, wb, b).mean(axis=(1, 3), dtype=np.float64)
    r = max(1.0, radius_px / b)
    k = int(math.floor(r))
    yy, xx = np.mgrid[-k:k + 1, -k:k + 1]
    disk = (yy * yy + xx * xx) <= r * r
    bg = ndi.grey_closing(blocks, footprint=disk, mode="reflect")
    if b > 1:
        bg = ndi.zoom(bg, b, order=1, mode="nearest", grid_mode=True)[:h, :w]
    out = bg.astype(g.dtype) - g
    np.maximum(out, 0, out=out)
    return out


def _border_seed(img: np.ndarray, value: float) -> np.ndarray:
    seed = img.copy()
    seed[1:-1, 1:-1] = value
    return seed


def reference_feature(
    x: np.ndarray, params: PseudoLabelParams
) -> tuple[np.ndarray, float, float, float]:
    """Steps 2-5 of the recipe with scikit-image (float64).

    Parameters
    ----------
    x : numpy.ndarray
        ``(H, W)`` float64 normalised frame (particles dark), from :func:`prepare_frame`.
    params : PseudoLabelParams

    Returns
    -------
    s : numpy.ndarray
        ``(H, W)`` float64 feature ``d + sobel(d)`` rescaled to ``[0, 1]``.
    s_lo, s_hi : float
        Range of the feature before rescaling (fractions of the grey range).
    noise : float
        :func:`smoothed_noise` of the smoothed frame (for the noise-floor guard).
    """
    from skimage import filters, morphology

    g = filters.gaussian(x, sigma=params.sigma, mode="nearest", truncate=4.0, preserve_range=True)
    noise = smoothed_noise(g, params.sigma)
    cap = background_depth(g, params.background_radius_px) if params.background_radius_px else None
    pad = params.border_pad_px
    g = pad_frame(g, pad)
    r = morphology.reconstruction(_border_seed(g, g.min()), g, method="dilation")
    r1 = morphology.reconstruction(_border_seed(r, r.max()), r, method="erosion")
    d = np.abs(r - r1)
    if pad:
        d = d[pad:-pad, pad:-pad]
    if cap is not None:
        d = np.minimum(d, cap)
    s = d + filters.sobel(d)
    s_lo, s_hi = float(s.min()), float(s.max())
    if s_hi > s_lo:
        s = (s - s_lo) / (s_hi - s_lo)
    else:
        s = np.zeros_like(s)
    return s, s_lo, s_hi, noise


def _postprocess_reference(mask: np.ndarray, params: PseudoLabelParams) -> np.ndarray:
    from scipy import ndimage as ndi
    from skimage import morphology

    if params.fill_holes:
        mask = ndi.binary_fill_holes(mask)
    if params.min_area_px > 1:
        try:  # scikit-image >= 0.26: removes components of size <= max_size
            mask = morphology.remove_small_objects(mask, max_size=params.min_area_px - 1,
                                                   connectivity=2)
        except TypeError:  # pragma: no cover - older scikit-image: removes size < min_size
            mask = morphology.remove_small_objects(mask, min_size=params.min_area_px,
                                                   connectivity=2)
    return mask


def pseudolabel_reference(image: np.ndarray, params: PseudoLabelParams | None = None) -> np.ndarray:
    """Pseudo-label one frame with the paper's recipe, literally, using scikit-image.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` frame, any real dtype (uint16 counts, float...).
    params : PseudoLabelParams, optional
        Defaults to ``PseudoLabelParams()`` (= ``PRESETS["paper"]``).

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` uint8 mask, 1 = particle.

    Raises
    ------
    ConfigError
        Invalid parameters.
    EtemsegError
        Not a non-empty 2-D array of real numbers.
    """
    from skimage import filters, morphology

    params = _check_params(params)
    x = prepare_frame(image, params.polarity, np.float64)
    if x is None:
        return _empty(np.shape(image))
    s, s_lo, s_hi, noise = reference_feature(x, params)
    if params.opening_radius > 0:
        o = morphology.opening(s, morphology.disk(params.opening_radius))
    else:
        o = s
    o_lo = float(o.min())
    if not float(o.max()) > o_lo:
        log.warning("pseudolabel: feature is flat after the opening; returning an empty mask")
        return _empty(x.shape)
    if params.threshold == "otsu":
        t = float(filters.threshold_otsu(o))
    elif params.threshold == "li":
        t = float(filters.threshold_li(o))
    else:
        t = float(params.fixed_threshold)
    if not _accept_threshold(t, s_lo, s_hi, noise, params):
        return _empty(x.shape)
    mask = o > t
    if params.faint_noise_k > 0:
        below = o[~mask]
        t2 = float(filters.threshold_otsu(below)) if below.max() > below.min() else t
        faint = faint_components(o, o_lo, t, t2, s_lo, s_hi, noise, params.faint_noise_k)
        if faint is not None:
            mask |= faint
    mask = _postprocess_reference(mask, params)
    mask = _check_coverage(mask)
    return mask.astype(np.uint8)


# --------------------------------------------------------------------------------------------
# fast implementation: the recipe on the numba kernels of etemseg.morphology (float32, single
# thread, work arrays reused across frames)
# --------------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _depth_sobel(key1, key2, w2, off, top, step, dbuf, out, cap):  # pragma: no cover - numba
    """Feature ``s = d + sobel(d)`` of the (H, W) frame into ``out``; returns ``(lo, hi)``.

    ``d = r1 - r`` with ``r = top - key1`` (first flood, dilation) and ``r1 = key2`` (second
    flood) in units of ``step``; frame pixel (i, j) is key index ``(i+1+off) * w2 + j+1+off``.
    ``cap``: an (H, W) float32 array, ``d = min(d, cap)`` (:func:`background_depth`), or a
    (0, 0) array for none.
    Sobel as skimage: ``sqrt((gx^2 + gy^2) / 2)``, smoothing ``[1, 2, 1] / 4``, 'reflect' borders
    (for a 3x3 kernel: the edge pixel repeated).  ``dbuf`` is (H+2, W+2) float32 work.
    """
    h, w = out.shape
    m = np.int32(FLOOD_KEY_MASK)
    st = np.float32(step)
    capped = cap.shape[0] == h and cap.shape[1] == w
    for i in range(h):
        base = (i + 1 + off) * w2 + 1 + off
        drow = dbuf[i + 1]
        for j in range(w):
            v = (key2[base + j] & m) + (key1[base + j] & m) - top
            drow[j + 1] = np.float32(v) * st
        if capped:
            crow = cap[i]
            for j in range(w):
                drow[j + 1] = min(drow[j + 1], crow[j])
        drow[0] = drow[1]
        drow[w + 1] = drow[w]
    for j in range(w + 2):
        dbuf[0, j] = dbuf[1, j]
        dbuf[h + 1, j] = dbuf[h, j]
    lo = np.float32(np.inf)
    hi = np.float32(-np.inf)
    quarter = np.float32(0.25)
    half = np.float32(0.5)
    two = np.float32(2.0)
    for i in range(h):
        a = dbuf[i]
        b = dbuf[i + 1]
        c = dbuf[i + 2]
        a0 = a[0:w]
        a1 = a[1:w + 1]
        a2 = a[2:w + 2]
        b0 = b[0:w]
        b1 = b[1:w + 1]
        b2 = b[2:w + 2]
        c0 = c[0:w]
        c1 = c[1:w + 1]
        c2 = c[2:w + 2]
        o = out[i]
        for j in range(w):
            gx = ((a0[j] - a2[j]) + two * (b0[j] - b2[j]) + (c0[j] - c2[j])) * quarter
            gy = ((a0[j] - c0[j]) + two * (a1[j] - c1[j]) + (a2[j] - c2[j])) * quarter
            o[j] = b1[j] + np.sqrt((gx * gx + gy * gy) * half)
        for j in range(w):
            lo = min(lo, o[j])
            hi = max(hi, o[j])
    return lo, hi



class _Workspace:
    """Work arrays of the fast path for one frame shape and pad, reused across frames."""

    def __init__(self, shape: tuple[int, int], pad: int):
        h, w = shape
        hp, wp = h + 2 * pad, w + 2 * pad
        n = (hp + 2) * (wp + 2)
        self.key_shape = (shape, pad)
        self.g = np.empty((h, w), np.float32)
        self.tmp = np.empty((h, w), np.float32)
        self.gp = np.empty((hp, wp), np.float32) if pad else None
        self.key1 = np.empty(n, np.int32)
        self.key2 = np.empty(n, np.int32)
        self.seg = np.empty(n, np.int32)
        self.stack = np.empty(n, np.int32)  # flood stack, also fill_holes / remove_small
        self.rptr = np.empty(QUANT_LEVELS, np.int32)
        self.wptr = np.empty(QUANT_LEVELS, np.int32)
        self.dbuf = np.empty((h + 2, w + 2), np.float32)

    def flood(self, key: np.ndarray, w2: int) -> np.ndarray:
        return priority_flood(key, w2, QUANT_LEVELS, self.seg, self.stack, self.rptr, self.wptr)

    @classmethod
    def get(cls, ws: _Workspace | None, shape: tuple[int, int], pad: int) -> _Workspace:
        if ws is not None and ws.key_shape == (shape, pad):
            return ws
        return cls(shape, pad)


def pseudolabel_fast(image: np.ndarray, params: PseudoLabelParams | None = None) -> np.ndarray:
    """Pseudo-label one frame: the mask of :func:`pseudolabel_reference`, >= 10x faster.

    Same recipe and the same guards; float32 numba kernels; the two reconstructions are
    linear-time priority floods on the smoothed frame quantised to 16 bits (see the module notes).

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` frame, any real dtype.
    params : PseudoLabelParams, optional
        Defaults to ``PseudoLabelParams()`` (= ``PRESETS["paper"]``).

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` uint8 mask, 1 = particle.

    Raises
    ------
    ConfigError
        Invalid parameters.
    EtemsegError
        Not a non-empty 2-D array of real numbers.
    """
    params = _check_params(params)
    return _fast_one(image, params, None)[0]


def _fast_one(
    image: np.ndarray, params: PseudoLabelParams, ws: _Workspace | None
) -> tuple[np.ndarray, _Workspace | None]:
    x = prepare_frame(image, params.polarity, np.float32)
    if x is None:
        return _empty(np.shape(image)), ws
    h, w = x.shape
    pad = params.border_pad_px
    ws = _Workspace.get(ws, (h, w), pad)
    if pad:  # smooth straight into the centre of the padded frame
        g = gaussian_into(x, gaussian_kernel1d(params.sigma), ws.tmp, ws.gp[pad:-pad, pad:-pad])
    else:
        g = gaussian_into(x, gaussian_kernel1d(params.sigma), ws.tmp, ws.g)
    noise = smoothed_noise(g, params.sigma)
    gp = pad_frame(g, pad, out=ws.gp) if pad else g
    w2 = gp.shape[1] + 2
    top = QUANT_LEVELS - 1
    _, step = flood_keys_from_float(gp, ws.key1, QUANT_LEVELS, True)
    ws.flood(ws.key1, w2)  # step 3: remove domes
    flood_keys_reflood(ws.key1, ws.key2, top)
    ws.flood(ws.key2, w2)  # step 4: fill basins
    s = ws.tmp
    if params.background_radius_px:
        cap = background_depth(g, params.background_radius_px).astype(np.float32, copy=False)
    else:
        cap = _NO_CAP
    s_lo, s_hi = _depth_sobel(ws.key1, ws.key2, w2, pad, top, step, ws.dbuf, s, cap)
    s_lo, s_hi = float(s_lo), float(s_hi)
    rescale_inplace(s, s_lo, s_hi)
    o = opening_disk_fast(s, params.opening_radius, out=x, tmp=ws.g)
    o_lo, o_hi = image_minmax(o)
    o_lo, o_hi = float(o_lo), float(o_hi)
    if not o_hi > o_lo:
        log.warning("pseudolabel: feature is flat after the opening; returning an empty mask")
        return _empty((h, w)), ws
    if params.threshold == "otsu":
        t = float(otsu_threshold(o, o_lo, o_hi, 256))
    elif params.threshold == "li":
        t = float(li_threshold(o, o_lo, 1e-7))
    else:
        t = float(params.fixed_threshold)
    if not _accept_threshold(t, s_lo, s_hi, noise, params):
        return _empty((h, w)), ws
    mask = threshold_into(o, t, np.empty((h, w), np.uint8))
    if params.faint_noise_k > 0:
        t2 = float(otsu_threshold_below(o, o_lo, t, 256))
        faint = faint_components(o, o_lo, t, t2, s_lo, s_hi, noise, params.faint_noise_k)
        if faint is not None:
            mask[faint] = 1
    if params.fill_holes:
        fill_holes_inplace(mask, ws.stack)
    if params.min_area_px > 1:
        remove_small_inplace(mask, params.min_area_px)
    return _check_coverage(mask), ws


def pseudolabel_stack(
    frames: np.ndarray, params: PseudoLabelParams | None = None, *, method: str = "fast"
) -> np.ndarray:
    """Pseudo-label a chunk of frames, one after the other (fast path: work arrays reused).

    Parameters
    ----------
    frames : numpy.ndarray
        ``(T, H, W)`` frames, any real dtype (an ``(H, W)`` frame is treated as ``T = 1``).
    params : PseudoLabelParams, optional
    method : {"fast", "reference"}

    Returns
    -------
    numpy.ndarray
        ``(T, H, W)`` uint8 masks, equal to the per-frame function applied to each frame.

    Raises
    ------
    ConfigError
        Invalid parameters or method.
    EtemsegError
        Not a 3-D array of real numbers.
    """
    params = _check_params(params)
    if method not in ("fast", "reference"):
        raise ConfigError(f"pseudolabel.method: must be 'fast' or 'reference' (got {method!r})")
    arr = np.asarray(frames)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise EtemsegError(f"pseudolabel_stack: expected (T, H, W) frames, got shape {arr.shape}")
    out = np.zeros(arr.shape, np.uint8)
    ws = None
    for k in range(arr.shape[0]):
        if method == "fast":
            out[k], ws = _fast_one(arr[k], params, ws)
        else:
            out[k] = pseudolabel_reference(arr[k], params)
    return out


def _label_block(frames: np.ndarray, params: PseudoLabelParams, method: str,
                 threads: int) -> np.ndarray:
    """``pseudolabel_stack`` over a block, split into ``threads`` contiguous parts run in threads
    (the numba kernels release the GIL); the result does not depend on ``threads``."""
    n = len(frames)
    if threads <= 1 or n <= 1:
        return pseudolabel_stack(frames, params, method=method)
    from concurrent.futures import ThreadPoolExecutor

    bounds = np.linspace(0, n, min(threads, n) + 1).astype(int)
    out = np.empty(frames.shape, np.uint8)
    with ThreadPoolExecutor(max_workers=len(bounds) - 1) as pool:
        futures = {
            pool.submit(pseudolabel_stack, frames[a:b], params, method=method): (a, b)
            for a, b in itertools.pairwise(bounds)
        }
        for fut, (a, b) in futures.items():
            out[a:b] = fut.result()
    return out


def label_chunk(src: Any, dst: Any, k: int, *, params: PseudoLabelParams | None = None,
                method: str = "fast", threads: int = 1, progress: bool = False,
                empty: bool = False, window: int = 1) -> dict[str, Any]:
    """Pseudo-label time chunk ``k`` of a movie store into a uint8 store of the same layout.

    Streams the chunk one Zarr block at a time (:func:`etemseg.io.store.map_chunk`); every frame's
    mask equals :func:`pseudolabel_stack` / the per-frame function, whatever ``threads`` is.

    Parameters
    ----------
    src, dst : etemseg.io.store.MovieStore
        Frames ``(T, H, W)`` and the output store (``dst = src.like(path, np.uint8)``).
    k : int
        Time-chunk index.
    params : PseudoLabelParams, optional
    method : {"fast", "reference"}
    threads : int
        Frames labelled in parallel threads (>= 1).
    progress : bool
        Show a progress bar.
    empty : bool
        Write empty masks without labelling (a movie whose particles were not found, see
        :class:`PseudolabelStage`).
    window : int
        Label each frame's temporal mean over this many frames centred on it (odd; 1: the frame
        itself; :meth:`etemseg.io.store.MovieStore.read_mean`).

    Returns
    -------
    dict
        Receipt: ``chunk``, ``t0``, ``t1``, ``frames``, ``coverage`` (mask fraction per frame),
        ``coverage_mean``, ``seconds``, ``frames_per_s``, ``method``, ``threads``, ``params``.
    """
    import time

    from etemseg.io.store import map_chunk

    params = _check_params(params)
    if method not in ("fast", "reference"):
        raise ConfigError(f"pseudolabel.method: must be 'fast' or 'reference' (got {method!r})")
    if not isinstance(threads, (int, np.integer)) or isinstance(threads, bool) or threads < 1:
        raise ConfigError(f"pseudolabel.threads: must be an integer >= 1 (got {threads!r})")
    coverage: list[float] = []

    def fn(block: np.ndarray, b0: int) -> np.ndarray:
        masks = (np.zeros(block.shape, np.uint8) if empty
                 else _label_block(np.asarray(block), params, method, int(threads)))
        coverage.extend(float(np.count_nonzero(m)) / m.size for m in masks)
        return masks

    t_start = time.perf_counter()
    map_chunk(src, dst, int(k), fn, progress=progress, desc=f"pseudolabel chunk {k}",
              stage="pseudolabel", window=int(window))
    seconds = time.perf_counter() - t_start
    t0, t1 = src.chunk_bounds(int(k))
    n = t1 - t0
    return {
        "chunk": int(k), "t0": int(t0), "t1": int(t1), "frames": int(n),
        "coverage": coverage,
        "coverage_mean": float(np.mean(coverage)) if coverage else 0.0,
        "seconds": seconds,
        "frames_per_s": n / seconds if seconds > 0 else float("inf"),
        "method": method, "threads": int(threads), "params": params.to_dict(),
        "window_frames": int(window),
    }


def resolve_for_movie(params: PseudoLabelParams, pixel_size_nm: float | None,
                      frames_sample: np.ndarray | None, expected_diameter_nm: float = 5.0
                      ) -> tuple[PseudoLabelParams, dict[str, Any]]:
    """Resolve physical lengths for one movie: at its calibration, else at an estimated scale.

    Parameters
    ----------
    params : PseudoLabelParams
        Possibly with nm fields (e.g. ``PRESETS["default"]``).
    pixel_size_nm : float or None
        The movie's pixel size, nm/px.
    frames_sample : numpy.ndarray or None
        A few ``(T, H, W)`` frames; read when ``pixel_size_nm`` is None and ``params`` has nm
        fields, and for the particle diameter of a local background that scales with it
        (:func:`particle_scaled_background`).
    expected_diameter_nm : float
        Particle diameter, nm, an uncalibrated movie is assumed to show (the nm defaults are
        physical for ~5 nm Au particles).

    Returns
    -------
    params : PseudoLabelParams
        Without nm fields: :meth:`PseudoLabelParams.resolved` at the pixel size, or at the
        effective pixel size ``expected_diameter_nm / d_px`` where ``d_px`` is
        :func:`etemseg.scales.estimate_particle_diameter_px` of ``frames_sample`` (a warning
        names it), or, when that fails too, the px fields as they are (a warning).
    info : dict
        :func:`etemseg.scales.scale_for_movie`'s record (``pixel_size_nm``, ``source``,
        ``effective_pixel_size_nm``, ...); ``source`` is ``"px"`` when ``params`` has no nm
        fields; ``background`` where the local background scales with the particles
        (:func:`particle_scaled_background`).
    """
    from etemseg.scales import scale_for_movie

    params.validate()
    if not params.physical:
        info = {"pixel_size_nm": pixel_size_nm, "source": "px", "effective_pixel_size_nm": None}
        return particle_scaled_background(params, frames_sample, info), info
    info = scale_for_movie(pixel_size_nm, frames_sample, polarity=params.polarity,
                           expected_diameter_nm=expected_diameter_nm)
    ps = info["effective_pixel_size_nm"]
    out = params.pixel_only() if ps is None else params.resolved(ps)
    return particle_scaled_background(out, frames_sample, info), info


def particle_scaled_background(params: PseudoLabelParams, frames_sample: np.ndarray | None,
                               info: dict[str, Any]) -> PseudoLabelParams:
    """``params`` (px) with the local background's radius raised to
    ``background_per_diameter`` times the movie's upper-quartile particle diameter, px.

    The diameter is the 75th percentile of :func:`etemseg.scales.blob_scale`'s blob diameters:
    of ``info["blobs"]`` when the scale estimate already found them, else of
    ``frames_sample``.  The radius given (px, resolved from nm) is the floor; without a diameter
    it is used alone.  ``info["background"]`` records the choice (``radius_px``, ``source``
    ``"particles"`` or ``"fixed"``, ``upper_quartile_diameter_px``).  Unchanged when the
    radius does not scale (:attr:`PseudoLabelParams.scales_with_particles`).
    """
    from etemseg.scales import blob_scale

    if not params.scales_with_particles:
        return params
    blobs = info.get("blobs")
    if (blobs is None or blobs.get("spread_px") is None) and frames_sample is not None:
        blobs = blob_scale(frames_sample, params.polarity).to_dict()
    q75 = None if blobs is None or blobs.get("spread_px") is None else blobs["spread_px"][1]
    floor = params.background_radius_px
    radius = floor if q75 is None else max(floor, _clip(
        "background_radius_px", round_half_up(params.background_per_diameter * q75),
        BACKGROUND_RADIUS_MAX_PX))
    info["background"] = {"radius_px": int(radius), "floor_px": int(floor),
                          "source": "fixed" if q75 is None else "particles",
                          "upper_quartile_diameter_px": q75}
    if q75 is None:
        log.warning("pseudolabel: no particle diameter found for the local background; its "
                    "radius stays %d px", floor)
    return replace(params, background_radius_px=int(radius))


#: Frames of the first time chunk the stage estimates an uncalibrated movie's scale from.
SCALE_FRAMES = 8


def _first_frames(src: MovieStore, t0: int, t1: int) -> np.ndarray:
    """Frames ``[t0, t1)`` of a movie for the scale estimate: from the dump files the store
    records (:meth:`MovieStore.source_frames`, so ``--init`` needs no ingested chunk: in the
    workflow it runs beside the ingest chunk jobs), else from the store itself."""
    if "source" in src.meta and "sources" in src.group:
        try:
            return src.source_frames(t0, t1).astype(np.float32)
        except (OSError, EtemsegError) as exc:
            log.info("%s: dump files not readable for the scale estimate (%s); using the store",
                     src.path, exc)
    return src.read(t0, t1)


class PseudolabelStage(ChunkStage):
    """``etemseg pseudolabel`` as a per-chunk stage (see :mod:`etemseg.protocol`).

    The lengths are resolved once, when the store is created (:func:`resolve_for_movie`: at the
    frame store's ``pixel_size_nm``, else at a scale estimated from up to :data:`SCALE_FRAMES`
    frames of time chunk 0; those frames also give the particle diameter of a local background
    that scales with it, calibrated or not), and recorded in the store's attributes:
    ``params`` (the px values every chunk uses), ``params_nm`` (the parameters as given, nm
    fields included) and ``scale`` (how the pixel size was found).  Chunk jobs read ``params``
    back from the store.

    Parameters
    ----------
    frames, out : path
        The frame store and the pseudo-label store to write (same shape and chunking, uint8).
    preset : str
        Name in :data:`PRESETS` the record of the store keeps.
    params : PseudoLabelParams
        The parameters as given (nm fields allowed).
    method : {"fast", "reference"}
    threads : int
        Frames labelled in parallel.
    progress : bool
    expected_diameter_nm : float
        Particle diameter, nm, assumed for a movie without a pixel size.
    window_ms : float
        Label the temporal mean of the frames over a centred window of this many ms
        (:func:`etemseg.io.store.frames_in_window` at the movie's frame rate, recorded at
        creation as ``window_frames``); 0: each frame alone. Default
        :data:`etemseg.io.store.DEFAULT_WINDOW_MS`.
    """

    name = "pseudolabel"

    def __init__(self, frames, out, *, preset: str, params: PseudoLabelParams,
                 method: str = "fast", threads: int = 1, progress: bool = False,
                 expected_diameter_nm: float = 5.0, window_ms: float = DEFAULT_WINDOW_MS):
        self.frames, self.out = Path(frames), Path(out)
        self.preset, self.params, self.method = preset, params, method
        self.threads, self.progress = threads, progress
        self.expected_diameter_nm = expected_diameter_nm
        self.window_ms = window_ms

    def inputs(self) -> list[Path]:
        return [self.frames]

    def outputs(self) -> dict[Path, str]:
        return {self.out: "pseudolabel"}

    def resolve(self, src: MovieStore) -> tuple[PseudoLabelParams, dict[str, Any]]:
        """The px parameters for the movie ``src`` and the scale record (see the class)."""
        sample = None
        needs = ((src.pixel_size_nm is None and self.params.physical)
                 or self.params.scales_with_particles)
        if needs and src.n_frames:
            t0, t1 = src.chunk_bounds(0)
            sample = _first_frames(src, t0, min(t1, t0 + SCALE_FRAMES))
        params, info = resolve_for_movie(self.params, src.pixel_size_nm, sample,
                                         self.expected_diameter_nm)
        if sample is not None:
            info["frames_used"] = [int(t0), int(t0 + len(sample))]
        return params, info

    def create(self, paths) -> None:
        src = MovieStore.open(self.frames)
        params, info = self.resolve(src)
        log.info("pseudolabel: lengths for %s: sigma %.4g px, opening radius %d px, min area %d "
                 "px, border pad %d px (%s)", self.frames, params.sigma, params.opening_radius,
                 params.min_area_px, params.border_pad_px, info["source"])
        window = frames_in_window(self.window_ms, src.fps)
        src.like(paths[self.out], np.uint8, label=True, attrs={
            "stage": "pseudolabel", "preset": self.preset, "params": params.to_dict(),
            "params_nm": self.params.to_dict(), "scale": info,
            "window_ms": float(self.window_ms), "window_frames": window,
            "method": self.method, "values": "1 = particle, 0 = background"})

    def n_chunks(self, paths) -> int:
        return MovieStore.open(self.frames).n_chunks

    def recorded_params(self, dst: MovieStore) -> PseudoLabelParams:
        """The px parameters recorded at creation (a warning when they came from other given
        parameters than this stage's)."""
        if "params" not in dst.meta:
            raise EtemsegError(f"{dst.path}: pseudo-label store without recorded 'params'; "
                               "rerun `etemseg pseudolabel ... --init`")
        given = dst.meta.get("params_nm")
        if given is not None and given != self.params.to_dict():
            log.warning("pseudolabel: %s was created with other parameters than given now; "
                        "every chunk uses the recorded ones (rerun --init to change them)",
                        dst.path)
        return PseudoLabelParams.from_dict(dst.meta["params"])

    def run_chunk(self, k: int, paths=None) -> Receipt:
        dst = MovieStore.open((paths or {}).get(self.out, self.out), mode="r+")
        mismatch = (dst.meta.get("scale") or {}).get("polarity_mismatch")
        if mismatch:
            log.warning("pseudolabel: %s chunk %d: empty masks: the particles of this movie look "
                        "%s, not %s (pseudolabel.polarity)", self.frames, k, mismatch["looks"],
                        self.params.polarity)
        result = label_chunk(MovieStore.open(self.frames), dst, k,
                             params=self.recorded_params(dst), method=self.method,
                             threads=self.threads, progress=self.progress,
                             empty=bool(mismatch), window=int(dst.meta.get("window_frames", 1)))
        return Receipt.from_dict(result, stage=self.name, store=str(self.out))


# --------------------------------------------------------------------------------------------
# preview: a few frames x several parameter choices, side by side (`etemseg pseudolabel-preview`)
# --------------------------------------------------------------------------------------------

#: More panels than this make an unreadable sheet (a warning, not an error).
PREVIEW_MAX_PANELS = 48


def parse_vary(specs: list[str] | None) -> list[dict[str, Any]]:
    """Parameter choices from ``--vary NAME=V1,V2,...`` options: every combination of the values
    (the first option varies slowest); ``[{}]`` without options.

    Values are converted to the field's type (numbers, ``true``/``false``, ``null`` for an nm
    field).

    Raises
    ------
    ConfigError
        A malformed option, an unknown parameter or a value of the wrong type (naming ``--vary``).
    """
    import typing

    hints = typing.get_type_hints(PseudoLabelParams)
    axes: list[list[tuple[str, Any]]] = []
    for spec in specs or []:
        name, sep, values = spec.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not values.strip():
            raise ConfigError(f"--vary: expected NAME=V1,V2,..., got {spec!r}")
        if name not in hints:
            raise ConfigError(f"--vary: unknown parameter {name!r}; one of "
                              f"{', '.join(f.name for f in fields(PseudoLabelParams))}")
        kinds = [k for k in typing.get_args(hints[name]) if k is not type(None)] or [hints[name]]
        axes.append([(name, _convert(name, v.strip(), kinds[0])) for v in values.split(",")])
    return [dict(combo) for combo in itertools.product(*axes)] or [{}]


def _convert(name: str, text: str, kind: type) -> Any:
    if text.lower() in ("null", "none") and name in NM_TWINS:
        return None
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        return kind(text)
    except ValueError:
        raise ConfigError(f"--vary: {name}={text!r} is not a {kind.__name__}") from None


def preview_frames(source: str | Path, frames: list[int] | None = None, *, fps: float = 400.0
                   ) -> tuple[np.ndarray, list[int], float | None, str]:
    """A few frames of a movie store or of a raw frame dump (before ingest).

    Parameters
    ----------
    source : path
        A movie store (``frames.zarr``) or a frame-dump folder (.dm4/.dm3/.tif/.npy).
    frames : list of int, optional
        Frame indices (time order, as after ingest); default first, middle and last.
    fps : float
        Frame rate of a dump, frames/s (for K2 names).

    Returns
    -------
    frames : (n, H, W) float32
    indices : list of int
    pixel_size_nm : float or None
        The store's or the first dump file's calibration.
    name : str
        The movie's name for titles.

    Raises
    ------
    ConfigError
        A frame index outside the movie.
    InputFileError
        An unreadable store, dump or frame.
    """
    from etemseg.io.framedump import read_frame, scan_dump

    source = Path(source)
    if (source / "zarr.json").is_file():
        store = MovieStore.open(source)
        n, ps, name = store.n_frames, store.pixel_size_nm, store.path.parent.name
    else:
        index = scan_dump(source, fps=fps)
        n, ps, name = len(index), index.pixel_size_nm, source.name
    picks = sorted({0, n // 2, n - 1}) if frames is None else [int(f) for f in frames]
    bad = [f for f in picks if not 0 <= f < n]
    if bad:
        raise ConfigError(f"--frames: {bad[0]} is outside 0..{n - 1} ({source})")
    if (source / "zarr.json").is_file():
        data = store.take(picks)
    else:
        data = np.stack([read_frame(index.sources[f], expect_shape=index.shape) for f in picks])
    return data.astype(np.float32), picks, ps, name


def preview(source: str | Path, out: str | Path, *, frames: list[int] | None = None,
            vary: list[dict[str, Any]] | None = None, preset: str = "default",
            base: dict[str, Any] | None = None, pixel_size_nm: float | None = None,
            fps: float = 400.0, method: str = "fast") -> list[dict[str, Any]]:
    """Pseudo-label a few frames with several parameter choices and draw them side by side: a
    PNG grid (rows frames, columns choices) with the contours and each panel's particle count, to
    choose a movie's settings in minutes before launching the workflow.

    Parameters
    ----------
    source : path
        Movie store or raw frame dump (:func:`preview_frames`).
    out : path
        PNG to write (atomically, :func:`etemseg.plotting.save_figure`).
    frames : list of int, optional
        Frames to show; default first, middle and last.
    vary : list of dict, optional
        The choices (:func:`parse_vary`), each applied over ``preset`` and ``base``.
    preset : str
        Name in :data:`PRESETS`.
    base : dict, optional
        Parameters every choice shares (as the ``pseudolabel`` options).
    pixel_size_nm : float, optional
        Overrides the source's calibration, nm/px (as ``ingest --pixel-size-nm``).
    fps : float
        Frame rate of a dump, frames/s.
    method : {"fast", "reference"}

    Returns
    -------
    list of dict
        One row per panel: ``frame``, ``choice`` (the varied values), ``params`` (px values
        used), ``scale`` (how nm became px), ``particles`` (8-connected components),
        ``coverage`` (mask fraction).
    """
    from scipy import ndimage

    data, picks, ps, name = preview_frames(source, frames, fps=fps)
    ps = pixel_size_nm or ps
    choices = vary or [{}]
    rows: list[dict[str, Any]] = []
    masks = np.zeros((len(choices), *data.shape), np.uint8)
    for j, choice in enumerate(choices):
        given = params_from_preset(preset, {**(base or {}), **choice})
        params, info = resolve_for_movie(given, ps, data)
        masks[j] = pseudolabel_stack(data, params, method=method)
        for i, f in enumerate(picks):
            n = int(ndimage.label(masks[j, i], structure=np.ones((3, 3), bool))[1])
            rows.append({"frame": f, "choice": choice, "params": params.to_dict(),
                         "scale": info.get("source"), "particles": n,
                         "coverage": float(masks[j, i].mean())})
    if len(choices) * len(picks) > PREVIEW_MAX_PANELS:
        log.warning("pseudolabel preview: %d panels; fewer frames or choices read better",
                    len(choices) * len(picks))
    _preview_figure(data, masks, picks, choices, rows, out, title=f"{name}: preset {preset}"
                    + (f", {ps:g} nm/px" if ps else ", uncalibrated"))
    return rows


def _preview_figure(data: np.ndarray, masks: np.ndarray, picks: list[int],
                    choices: list[dict[str, Any]], rows: list[dict[str, Any]], out, *,
                    title: str) -> Path:
    """The preview grid: rows frames, columns choices; contours in gold, count in each panel."""
    import matplotlib.pyplot as plt

    from etemseg.plotting import save_figure

    nr, nc = len(picks), len(choices)
    h, w = data.shape[1:]
    size = 3.6
    fig, axes = plt.subplots(nr, nc, figsize=(size * nc, size * nr * h / w + 0.6), dpi=110,
                             squeeze=False)
    for i, f in enumerate(picks):
        lo, hi = np.percentile(data[i], [0.5, 99.5])
        for j, choice in enumerate(choices):
            ax, row = axes[i, j], rows[j * nr + i]
            ax.imshow(data[i], cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1,
                      interpolation="antialiased")
            if masks[j, i].any():
                ax.contour(masks[j, i], levels=[0.5], colors="#ffd700", linewidths=0.7)
            ax.text(0.02, 0.98, f"{row['particles']} particles, {100 * row['coverage']:.1f} %",
                    transform=ax.transAxes, va="top", color="white", fontsize=8,
                    bbox={"facecolor": "black", "alpha": 0.6, "pad": 2, "lw": 0})
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                p = row["params"]
                text = ", ".join(f"{k}={v}" for k, v in choice.items()) or "preset"
                ax.set_title(f"{text}\n(σ {p['sigma']:.3g} px, opening {p['opening_radius']} px, "
                             f"min {p['min_area_px']} px)", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"frame {f}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out)
