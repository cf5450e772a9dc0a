"""Architecture names and their configuration, without torch (so the workflow can check a
config's model names while planning, in milliseconds).

Explicit names are lower-case and '-'-separated: a family (``unet4``, ``unet3``, ``unet`` = unet4,
``hourglass`` = hourglass4, ``hourglass3``, ``single-filter``, ``shallow-wide``) followed by
modifiers ``norm``, ``twoconv``, ``blur1`` / ``blur2`` / ``blur<sigma>``, ``k7`` / ``k<n>``,
``leaky``, and rarely ``c<n>`` (base channels), ``f<n>`` (shallow-wide filters), ``in<n>`` (input
channels), ``cls<n>`` (classes).  The paper's figure names ("Norm", "TwoConv_Norm",
"TwoConvNorm_Blur1", "Blur2", "Base", "UNet", ...) are parsed the same way, case-insensitively,
tokens split on '_' or '-', and a token may concatenate modifiers ("TwoConvNorm"); without a
family they are 4-level UNets (the paper's 1024x1024 study).  :func:`canonical_name` gives the
unique explicit name (``unet4-twoconv-norm-blur1``), which :func:`parse_arch` maps back.
The networks themselves are built by :mod:`etemseg.nn.models`.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from etemseg.errors import ConfigError

FAMILIES = ("unet", "hourglass", "single_filter", "shallow_wide")
ACTIVATIONS = ("relu", "leaky_relu")
LEAKY_SLOPE = 0.01
BLUR_TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter default

# shallow-wide uses the single filter's 9x9 kernel: the paper widens the single-filter model from
# 1 to 32 filters, and a 3x3 field cannot see across a 5 nm particle at 0.18 nm/px.
_DEFAULT_KERNEL = {"unet": 3, "hourglass": 3, "single_filter": 9, "shallow_wide": 9}


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------

def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise ConfigError(f"{name}: must be {rng}, got {value}")


@dataclass(frozen=True)
class ArchConfig:
    """Architecture of a segmentation CNN (see the module docstring).

    ``kernel_size=None`` means the family default (9 for ``single_filter`` and ``shallow_wide``,
    else 3).  Fields that
    do not apply to a family must keep their defaults, so every model has exactly one config and
    one :func:`canonical_name`.
    """

    family: str                       # "unet" | "hourglass" | "single_filter" | "shallow_wide"
    levels: int = 4                   # unet/hourglass resolution levels (2..5)
    base_channels: int = 8            # unet/hourglass channels at level 0
    norm: bool = False                # BatchNorm after each k x k conv
    two_conv: bool = False            # two convs per level instead of one
    blur_sigma: float = 0.0           # 0 = none, else fixed Gaussian pre-filter
    kernel_size: int | None = None  # None -> family default (3; single_filter, shallow_wide 9)
    activation: str = "relu"          # "relu" | "leaky_relu"
    n_filters: int = 32               # shallow_wide
    in_channels: int = 1
    n_classes: int = 2

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"family: must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        fam = self.family
        if self.kernel_size is None:
            object.__setattr__(self, "kernel_size", _DEFAULT_KERNEL[fam])
        _check_int("levels", self.levels, 2, 5)
        _check_int("base_channels", self.base_channels, 1, 4096)
        _check_int("kernel_size", self.kernel_size, 1, 63)
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size: must be odd ('same' padding), got {self.kernel_size}")
        _check_int("n_filters", self.n_filters, 1, 4096)
        _check_int("in_channels", self.in_channels, 1, 64)
        _check_int("n_classes", self.n_classes, 2, 256)
        for key in ("norm", "two_conv"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{key}: expected true/false, got {getattr(self, key)!r}")
        sigma = self.blur_sigma
        if (isinstance(sigma, bool) or not isinstance(sigma, (int, float))
                or not math.isfinite(sigma)):
            raise ConfigError(f"blur_sigma: expected a number, got {sigma!r}")
        if sigma < 0 or (0 < sigma < 0.1) or sigma > 16:
            raise ConfigError(f"blur_sigma: must be 0 (none) or in 0.1..16, got {sigma}")
        object.__setattr__(self, "blur_sigma", float(sigma))
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation: must be one of {', '.join(ACTIVATIONS)}, "
                              f"got {self.activation!r}")
        # fields that do not apply to the family must keep their defaults
        bad = []
        if fam in ("single_filter", "shallow_wide"):
            bad += [k for k in ("levels", "base_channels", "norm", "two_conv")
                    if getattr(self, k) != _FIELD_DEFAULTS[k]]
        if fam != "shallow_wide" and self.n_filters != _FIELD_DEFAULTS["n_filters"]:
            bad.append("n_filters")
        if fam == "single_filter":
            if self.activation != "relu":
                bad.append("activation")
            if self.n_classes != 2:
                bad.append("n_classes")
        if bad:
            raise ConfigError(f"{', '.join(bad)}: not applicable to family {fam!r} "
                              f"(leave at the default)")

    def to_dict(self) -> dict:
        """JSON-safe dict of all fields (kernel size resolved), for checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ArchConfig:
        """Inverse of :meth:`to_dict`; unknown keys or a missing ``family`` raise ConfigError."""
        if not isinstance(d, dict):
            raise ConfigError(f"architecture: expected a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown architecture key(s): {', '.join(map(str, unknown))} "
                              f"(valid: {', '.join(sorted(known))})")
        if "family" not in d:
            raise ConfigError("family: missing from the architecture")
        return cls(**d)

    @property
    def name(self) -> str:
        return canonical_name(self)


_FIELD_DEFAULTS = {f.name: f.default for f in fields(ArchConfig)}


# --------------------------------------------------------------------------------------------
# names
# --------------------------------------------------------------------------------------------

_NUM = r"\d+(?:\.\d+)?"
_TOKEN_RE = re.compile(
    r"(?P<single>single[-_]?filter)"
    r"|(?P<shallow>shallow[-_]?wide)"
    r"|hourglass(?P<hourglass>\d?)"
    r"|unet(?P<unet>\d?)"
    r"|(?P<base>base)"
    r"|(?P<twoconv>two[-_]?conv)"
    r"|(?P<norm>batchnorm|norm|bn)"
    r"|(?P<leaky>leaky(?:[-_]?relu)?)"
    r"|(?P<relu>relu)"
    r"|blur(?P<blur>" + _NUM + r")"
    r"|k(?P<k>\d+)"
    r"|cls(?P<cls>\d+)"
    r"|c(?P<c>\d+)"
    r"|f(?P<f>\d+)"
    r"|in(?P<inch>\d+)"
)

VALID_TOKENS = ("unet", "unet2..unet5", "hourglass", "hourglass2..hourglass5", "single-filter",
                "shallow-wide", "base", "norm", "twoconv", "blur1", "blur2", "blur<sigma>", "k3",
                "k7", "k9", "k<odd n>", "leaky", "relu", "c<base channels>",
                "f<shallow-wide filters>", "in<input channels>", "cls<classes>")


def _unknown_token(original: str, pos: int, seps: str) -> ConfigError:
    """The error for the unknown token of name ``original`` at ``pos`` (and the whole
    ``seps``-separated part around it, when the token is only its tail)."""
    s = original.lower()
    start = pos
    while start > 0 and s[start - 1] not in seps:
        start -= 1
    end = pos
    while end < len(s) and s[end] not in seps:
        end += 1
    bad, chunk = original[pos:end], original[start:end]
    where = f" (in {chunk!r})" if chunk != bad else ""
    return ConfigError(f"architecture {original!r}: unknown token {bad!r}{where}; valid "
                       f"tokens: {', '.join(VALID_TOKENS)} (joined by '-' or '_', e.g. "
                       f"unet4-norm, TwoConvNorm_Blur1, single-filter-k7)")


def parse_arch(name: str | ArchConfig) -> ArchConfig:
    """Architecture name (explicit like ``unet4-norm`` or the paper's like ``TwoConvNorm_Blur1``)
    -> :class:`ArchConfig`.  Unknown tokens raise :class:`ConfigError` naming the token."""
    if isinstance(name, ArchConfig):
        return name
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"architecture name: expected a non-empty string, got {name!r}")
    original = name.strip()
    s = original.lower()
    seps = "-_"
    values: dict[str, Any] = {}
    seen: dict[str, str] = {}

    def put(key: str, value: Any, token: str) -> None:
        if key in values:
            raise ConfigError(f"architecture {original!r}: token {token!r} conflicts with "
                              f"{seen[key]!r} (both set {key})")
        values[key] = value
        seen[key] = token

    pos = 0
    while pos < len(s):
        if s[pos] in seps:
            pos += 1
            continue
        m = _TOKEN_RE.match(s, pos)
        if m is None:
            raise _unknown_token(original, pos, seps)
        tok = original[m.start():m.end()]
        g = m.lastgroup
        if g == "single":
            put("family", "single_filter", tok)
        elif g == "shallow":
            put("family", "shallow_wide", tok)
        elif g in ("hourglass", "unet"):
            put("family", g, tok)
            if m.group(g):
                put("levels", int(m.group(g)), tok)
        elif g == "base":
            put("base", True, tok)
        elif g == "twoconv":
            put("two_conv", True, tok)
        elif g == "norm":
            put("norm", True, tok)
        elif g == "leaky":
            put("activation", "leaky_relu", tok)
        elif g == "relu":
            put("activation", "relu", tok)
        elif g == "blur":
            put("blur_sigma", float(m.group(g)), tok)
        elif g == "k":
            put("kernel_size", int(m.group(g)), tok)
        elif g == "cls":
            put("n_classes", int(m.group(g)), tok)
        elif g == "c":
            put("base_channels", int(m.group(g)), tok)
        elif g == "f":
            put("n_filters", int(m.group(g)), tok)
        elif g == "inch":
            put("in_channels", int(m.group(g)), tok)
        else:  # pragma: no cover - regex and branches out of sync
            raise AssertionError(g)
        pos = m.end()
    base = values.pop("base", False)
    values.setdefault("family", "unet")
    if base and values["family"] != "unet":
        raise ConfigError(f"architecture {original!r}: 'Base' names the plain UNet, not a "
                          f"{values['family']}")
    try:
        return ArchConfig(**values)
    except ConfigError as exc:
        raise ConfigError(f"architecture {original!r}: {exc}") from None


def _fmt_sigma(sigma: float) -> str:
    s = f"{sigma:g}"
    if "e" in s or float(s) != sigma:
        s = f"{sigma:.6f}".rstrip("0").rstrip(".")
    return s


def canonical_name(cfg: ArchConfig | str) -> str:
    """Unique explicit name, e.g. ``unet4-twoconv-norm-blur1-k7-leaky``; parse_arch round-trips."""
    cfg = parse_arch(cfg)
    d = _FIELD_DEFAULTS
    fam = cfg.family
    if fam in ("unet", "hourglass"):
        parts = [f"{fam}{cfg.levels}"]
        if cfg.two_conv:
            parts.append("twoconv")
        if cfg.norm:
            parts.append("norm")
    else:
        parts = [fam.replace("_", "-")]
    if cfg.blur_sigma > 0:
        parts.append(f"blur{_fmt_sigma(cfg.blur_sigma)}")
    if cfg.kernel_size != _DEFAULT_KERNEL[fam]:
        parts.append(f"k{cfg.kernel_size}")
    if cfg.activation == "leaky_relu":
        parts.append("leaky")
    if cfg.base_channels != d["base_channels"]:
        parts.append(f"c{cfg.base_channels}")
    if cfg.n_filters != d["n_filters"]:
        parts.append(f"f{cfg.n_filters}")
    if cfg.in_channels != d["in_channels"]:
        parts.append(f"in{cfg.in_channels}")
    if cfg.n_classes != d["n_classes"]:
        parts.append(f"cls{cfg.n_classes}")
    return "-".join(parts)

