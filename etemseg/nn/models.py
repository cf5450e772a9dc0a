"""Segmentation CNNs of the paper: UNet variants, hourglass, single-filter and shallow-wide CNNs.

Every model maps a normalised frame ``(N, in_channels, H, W)`` float32 to logits
``(N, n_classes, H, W)`` (class 0 = background, class 1 = particle) for *any* ``H x W``; training
uses cross-entropy on the logits, inference ``softmax`` (see
:func:`etemseg.nn.inference.probabilities`).

Families
--------
``unet``
    ``levels`` resolution levels with ``base_channels * 2**i`` channels at level ``i`` (4 levels:
    8-16-32-64; 3 levels: 8-16-32).  Encoder level = conv block; 2x2 max-pool between levels
    (``levels - 1`` poolings); the deepest level is the bottleneck.  Decoder level = 2x2 stride-2
    transposed conv (no activation), concatenation with the encoder skip, conv block; final 1x1
    conv to ``n_classes``.  A conv block is one ``k x k`` conv (two with ``two_conv``), each
    followed by BatchNorm (``norm``; the conv then has no bias) and ReLU / LeakyReLU(0.01).
    The input is reflect-padded at the bottom/right to a multiple of ``2**(levels - 1)`` (the
    total pooling factor) and the output cropped back, so e.g. 1792x1920, 100x130, 65x67 work.
``hourglass``
    The same encoder-decoder *without* skip connections (decoder conv: ``c_i -> c_i``).
``single_filter``
    ONE learnable ``k x k`` filter (+ bias) on the input: ``z = w * x + b``, logistic output.
    For the 2-class interface the logits are ``[0, z]`` so ``softmax(...)[:, 1] = sigmoid(z)``
    and cross-entropy equals the binary logistic loss on ``z``.  ``model.kernel`` is the filter
    ``(k, k)`` (``(in_channels, k, k)`` if several input channels), for the Gabor/Gaussian fit.
``shallow_wide``
    One layer of ``n_filters`` ``k x k`` filters (+ bias, activation), then a 1x1 conv to the
    classes.  ``model.filters`` is ``(n_filters, k, k)``.

Modifiers: ``norm`` (BatchNorm after each k x k conv; unet/hourglass), ``two_conv`` (a second
conv per level; unet/hourglass), ``blur_sigma`` (fixed, non-learned Gaussian pre-filter, a
separable depthwise conv with the kernel of ``scipy.ndimage.gaussian_filter`` (truncate 4) and
its ``reflect`` boundary; a buffer, not a parameter; any family), ``kernel_size`` (3 or 7 for
unet/hourglass/shallow-wide, 9 or 7 for the single filter; any odd size is accepted),
``activation`` (``relu`` | ``leaky_relu``).  Convolutions use zero 'same' padding (``k // 2``).

Names
-----
Architectures are named like ``unet4-norm``, ``single-filter`` or the paper's ``TwoConvNorm_Blur1``;
the grammar and :func:`parse_arch` / :func:`canonical_name` live in
:mod:`etemseg.nn.architectures` (torch-free, so the workflow checks names while planning).

Inference speed: only standard modules (Conv2d, BatchNorm2d, MaxPool2d, ConvTranspose2d,
ReLU) and tensor-level padding/cropping are used, the forward passes are TorchScript-scriptable,
and :func:`fuse_for_inference` folds BatchNorm into the preceding convolutions.
:func:`receptive_field`, :func:`halo` and :func:`size_multiple` give what tiled inference needs
(:func:`tiling` for a model that runs at a coarser working pixel size).

Working pixel size
------------------
A network has a fixed field of view in pixels (54 px for ``unet4``). When a movie's pixels are
much finer than the particles need, :class:`WorkScale` runs the network on the frames binned
``f x f`` (mean) and upsamples its logits back to the full resolution (bilinear), so the
network sees the particles at ``f`` times the pixel size while its input and output keep the
movie's pixels. The factor comes from the pixel size and one physical length,
:data:`WORK_PIXEL_NM` (:func:`work_factor`), is decided when a model is trained and recorded in
its model file (:mod:`etemseg.nn.checkpoint`).
"""

from __future__ import annotations

import copy
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from etemseg.errors import ConfigError
from etemseg.nn.architectures import (BLUR_TRUNCATE, FAMILIES, LEAKY_SLOPE, ArchConfig,
                                      canonical_name, parse_arch)

__all__ = [
    "FAMILIES",
    "PAPER_MODELS",
    "ArchConfig",
    "GaussianBlur",
    "ShallowWideCNN",
    "SingleFilterCNN",
    "UNet",
    "WORK_PIXEL_NM",
    "WorkScale",
    "build_model",
    "canonical_name",
    "count_parameters",
    "describe",
    "fuse_for_inference",
    "halo",
    "model_table",
    "parse_arch",
    "receptive_field",
    "size_multiple",
    "tiling",
    "with_work_factor",
    "work_factor",
    "work_factor_of",
]


# --------------------------------------------------------------------------------------------
# layers
# --------------------------------------------------------------------------------------------

def gaussian_kernel1d(sigma: float, truncate: float = BLUR_TRUNCATE) -> torch.Tensor:
    """Normalised 1-D kernel of ``scipy.ndimage.gaussian_filter``, radius int(truncate*s + .5):
    the one Gaussian kernel of etemseg (:func:`etemseg.morphology.gaussian_kernel1d`) as a
    float32 tensor."""
    from etemseg.morphology import gaussian_kernel1d as kernel

    return torch.from_numpy(kernel(sigma, truncate))


def _pad_axis_symmetric(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """Pad ``r`` samples on both ends of ``dim`` (-1 or -2) like scipy's 'reflect'
    (d c b a | a b c d).

    Falls back to edge replication where the axis is shorter than ``r``.
    """
    n = x.shape[dim]
    if r <= n:
        lo = x.narrow(dim, 0, r).flip(dim)
        hi = x.narrow(dim, n - r, r).flip(dim)
        return torch.cat([lo, x, hi], dim=dim)
    pad = [r, r, 0, 0] if dim == -1 else [0, 0, r, r]
    return F.pad(x, pad, mode="replicate")


class GaussianBlur(nn.Module):
    """Fixed Gaussian pre-filter: separable depthwise conv, weights are buffers (not learned).

    Equals ``scipy.ndimage.gaussian_filter(x, sigma)`` (mode 'reflect', truncate 4) per channel.
    """

    def __init__(self, sigma: float, channels: int = 1):
        super().__init__()
        k1 = gaussian_kernel1d(sigma)
        self.sigma = float(sigma)
        self.radius = (k1.numel() - 1) // 2
        self.channels = channels
        n = k1.numel()
        # non-persistent: derived from the config, so checkpoints do not depend on it
        self.register_buffer("weight_x", k1.view(1, 1, 1, n).repeat(channels, 1, 1, 1),
                             persistent=False)
        self.register_buffer("weight_y", k1.view(1, 1, n, 1).repeat(channels, 1, 1, 1),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.radius
        wx = self.weight_x.to(dtype=x.dtype)
        wy = self.weight_y.to(dtype=x.dtype)
        x = F.conv2d(_pad_axis_symmetric(x, r, -1), wx, groups=self.channels)
        x = F.conv2d(_pad_axis_symmetric(x, r, -2), wy, groups=self.channels)
        return x

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:g}, radius={self.radius}, channels={self.channels}"


def _activation(name: str) -> nn.Module:
    if name == "leaky_relu":
        return nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
    return nn.ReLU(inplace=True)


def _blur(cfg: ArchConfig) -> nn.Module:
    return GaussianBlur(cfg.blur_sigma, cfg.in_channels) if cfg.blur_sigma > 0 else nn.Identity()


def _conv_block(cin: int, cout: int, cfg: ArchConfig, n_convs: int) -> nn.Sequential:
    """[Conv k x k (no bias if BN) -> (BatchNorm) -> activation] x n_convs, one flat Sequential."""
    layers: list[nn.Module] = []
    k = cfg.kernel_size
    for i in range(n_convs):
        layers.append(nn.Conv2d(cin if i == 0 else cout, cout, k, padding=k // 2,
                                bias=not cfg.norm))
        if cfg.norm:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(_activation(cfg.activation))
    return nn.Sequential(*layers)


class _UpBlock(nn.Module):
    """Transposed conv 2x2 stride 2 (cin -> cout), optional skip concatenation, conv block."""

    def __init__(self, cin: int, cout: int, cfg: ArchConfig, skip: bool):
        super().__init__()
        self.skip = skip
        self.up = nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2)
        self.conv = _conv_block(2 * cout if skip else cout, cout, cfg, 2 if cfg.two_conv else 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if self.skip:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


class UNet(nn.Module):
    """UNet (``skip=True``) or hourglass (``skip=False``) for any input size; see module doc."""

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        if cfg.family not in ("unet", "hourglass"):
            raise ConfigError(f"UNet: family must be unet or hourglass, got {cfg.family!r}")
        self.cfg = cfg
        self.multiple = 2 ** (cfg.levels - 1)
        self.blur = _blur(cfg)
        n_convs = 2 if cfg.two_conv else 1
        ch = [cfg.base_channels * 2 ** i for i in range(cfg.levels)]
        self.down = nn.ModuleList(
            _conv_block(cfg.in_channels if i == 0 else ch[i - 1], ch[i], cfg, n_convs)
            for i in range(cfg.levels))
        self.pool = nn.MaxPool2d(2)
        skip = cfg.family == "unet"
        self.ups = nn.ModuleList(_UpBlock(ch[i + 1], ch[i], cfg, skip)
                                 for i in reversed(range(cfg.levels - 1)))
        self.head = nn.Conv2d(ch[0], cfg.n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        x = self.blur(x)
        m = self.multiple
        ph, pw = (m - h % m) % m, (m - w % m) % m
        if ph > 0 or pw > 0:
            mode = "reflect" if (ph < h and pw < w) else "replicate"
            x = F.pad(x, [0, pw, 0, ph], mode=mode)
        skips: list[torch.Tensor] = []
        for i, block in enumerate(self.down):
            if i > 0:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        n = len(skips)
        for j, up in enumerate(self.ups):
            x = up(x, skips[n - 2 - j])
        x = self.head(x)
        if ph > 0 or pw > 0:
            x = x[:, :, :h, :w]
        return x


class SingleFilterCNN(nn.Module):
    """One learnable ``k x k`` filter + bias -> logit ``z``; returns logits ``[0, z]``.

    ``softmax(logits)[:, 1] == sigmoid(z)``: logistic regression on a ``k x k`` neighbourhood.
    """

    __jit_unused_properties__: ClassVar[list[str]] = ["kernel", "bias"]

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.cfg = cfg
        k = cfg.kernel_size
        self.blur = _blur(cfg)
        self.conv = nn.Conv2d(cfg.in_channels, 1, k, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv(self.blur(x))
        return torch.cat([torch.zeros_like(z), z], dim=1)

    @property
    def kernel(self) -> torch.Tensor:
        """The filter ``(k, k)`` (``(in_channels, k, k)`` for several channels), detached copy."""
        w = self.conv.weight.detach()[0].clone()
        return w[0] if w.shape[0] == 1 else w

    @property
    def bias(self) -> float:
        return float(self.conv.bias.detach()[0])


class ShallowWideCNN(nn.Module):
    """``n_filters`` ``k x k`` filters (+ bias, activation), then a 1x1 conv to the classes."""

    __jit_unused_properties__: ClassVar[list[str]] = ["filters"]

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.cfg = cfg
        k = cfg.kernel_size
        self.blur = _blur(cfg)
        self.features = nn.Sequential(
            nn.Conv2d(cfg.in_channels, cfg.n_filters, k, padding=k // 2),
            _activation(cfg.activation))
        self.head = nn.Conv2d(cfg.n_filters, cfg.n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.blur(x)))

    @property
    def filters(self) -> torch.Tensor:
        """The first-layer filters, ``(n_filters, k, k)`` (channel 0 if several); detached copy."""
        return self.features[0].weight.detach()[:, 0].clone()


# --------------------------------------------------------------------------------------------
# working pixel size
# --------------------------------------------------------------------------------------------

#: Default working pixel size of the networks, nm/px (``TrainConfig.work_pixel_nm``): movies with
#: finer pixels are binned by :func:`work_factor` before the network. Why 0.18 nm/px: the
#: 4-level UNet's field of view is 54 px (:func:`receptive_field`), which at 0.18 nm/px spans
#: 9.7 nm, about twice the typical particle (~5 nm, the diameter :mod:`etemseg.scales` assumes
#: for uncalibrated movies): a whole particle and its surroundings. With the rule of
#: :func:`work_factor` the working pixel size then never falls below 0.09 nm/px, where a 5 nm
#: particle spans 55 px, the field of view. It is also the pixel size the demo's architectures
#: and training settings were designed at.
WORK_PIXEL_NM = 0.18


def work_factor(pixel_size_nm: float | None, work_pixel_nm: float | None = WORK_PIXEL_NM) -> int:
    """The binning factor of a movie at ``pixel_size_nm``: the largest integer ``f`` with
    ``f * pixel_size_nm <= work_pixel_nm``, at least 1.

    1 (no binning) when either is None or 0 (uncalibrated movie, feature off). At the default
    0.18 nm/px: 0.06 nm/px -> 3, 0.09 -> 2, 0.1-0.18 and coarser -> 1.
    """
    if not pixel_size_nm or not work_pixel_nm or pixel_size_nm <= 0 or work_pixel_nm <= 0:
        return 1
    return max(1, math.floor(work_pixel_nm / pixel_size_nm + 1e-9))


class WorkScale(nn.Module):
    """``net`` run at ``factor`` times the input's pixel size, on full-resolution input and output.

    ``forward``: the input ``(N, C, H, W)`` is mean-pooled ``factor x factor`` (the last row and
    column of cells hold whatever pixels are left, so any ``H x W`` works), ``net`` computes
    logits on that, and the logits are upsampled bilinearly by exactly ``factor`` (pixel centres
    aligned) and cropped to ``H x W``. Everything downstream (softmax, thresholds, masks, the
    training loss against full-resolution labels) stays at the input's resolution.

    The wrapper has no state of its own: :meth:`state_dict` and :meth:`load_state_dict` are the
    network's (same keys as ``net`` alone), so a model file's weights fit its architecture
    whatever the factor; the factor is recorded beside them. Attributes it does not have (``cfg``,
    ``kernel``, ``filters``) are the network's.
    """

    def __init__(self, net: nn.Module, factor: int):
        super().__init__()
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ConfigError(f"work factor: expected an integer >= 1, got {factor!r}")
        self.net = net
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.factor
        h, w = x.shape[-2], x.shape[-1]
        z = self.net(F.avg_pool2d(x, f, stride=f, ceil_mode=True))
        z = F.interpolate(z, scale_factor=float(f), mode="bilinear", align_corners=False)
        return z[:, :, :h, :w]

    def state_dict(self, *args, **kwargs):
        return self.net.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.net.load_state_dict(state_dict, strict=strict, assign=assign)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "net":
                raise
            return getattr(self.net, name)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


def with_work_factor(net: nn.Module, factor: int) -> nn.Module:
    """``net`` at working factor ``factor``: ``net`` itself for 1, else :class:`WorkScale`."""
    if isinstance(net, WorkScale):
        raise ConfigError("with_work_factor: the network already has a work factor")
    return net if factor == 1 else WorkScale(net, factor)


def work_factor_of(model: nn.Module) -> int:
    """The working factor of a model (1 unless it is a :class:`WorkScale`)."""
    return model.factor if isinstance(model, WorkScale) else 1


def tiling(cfg: ArchConfig | str, factor: int = 1) -> tuple[int, int]:
    """``(multiple, margin)`` of tiled inference for architecture ``cfg`` at working factor
    ``factor``, in input pixels: tile origins on multiples of ``multiple``
    (:func:`size_multiple` times the factor, so tiles share the whole frame's pooling grid) and
    ``margin`` pixels of context on each side. At factor 1: :func:`size_multiple` and
    :func:`halo`; else the halo in working pixels plus two (the bilinear upsampling reaches one
    working pixel further, the binning up to one more), times the factor.
    """
    cfg = parse_arch(cfg)
    if factor == 1:
        return size_multiple(cfg), halo(cfg)
    return size_multiple(cfg) * factor, (halo(cfg) + 2) * factor


# --------------------------------------------------------------------------------------------
# public helpers
# --------------------------------------------------------------------------------------------

def build_model(cfg: ArchConfig | str) -> nn.Module:
    """Model for a config or a name (see :func:`parse_arch`); ``model.cfg`` is its ArchConfig."""
    cfg = parse_arch(cfg)
    if cfg.family in ("unet", "hourglass"):
        return UNet(cfg)
    if cfg.family == "single_filter":
        return SingleFilterCNN(cfg)
    return ShallowWideCNN(cfg)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (fixed blur kernels are buffers and do not count)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def size_multiple(cfg: ArchConfig | str) -> int:
    """Inputs are padded internally to a multiple of this (``2**(levels-1)``; 1 if no pooling).

    The UNet/hourglass output is translation-equivariant only for shifts by this multiple."""
    cfg = parse_arch(cfg)
    return 2 ** (cfg.levels - 1) if cfg.family in ("unet", "hourglass") else 1


def _rf_windows(cfg: ArchConfig) -> list[tuple[int, int]]:
    """Input window ``(lo, hi)`` (per axis, inclusive) of output pixel ``p`` for each
    ``p in range(size_multiple)``, by exact interval back-propagation: a 'same' conv widens
    ``[a, b]`` by ``k // 2`` on each side, a 2x2 max-pool maps coarse ``[a, b]`` to fine
    ``[2a, 2b + 1]``, a 2x2 stride-2 transposed conv maps fine ``[a, b]`` to coarse
    ``[a // 2, b // 2]``; skip paths are united with the deep path."""
    r = cfg.kernel_size // 2
    rb = int(BLUR_TRUNCATE * cfg.blur_sigma + 0.5) if cfg.blur_sigma > 0 else 0
    if cfg.family in ("single_filter", "shallow_wide"):
        return [(-r - rb, r + rb)]
    n = 2 if cfg.two_conv else 1
    top = cfg.levels - 1

    def enc(i: int, a: int, b: int) -> tuple[int, int]:
        a, b = a - n * r, b + n * r
        if i == 0:
            return a - rb, b + rb
        return enc(i - 1, 2 * a, 2 * b + 1)

    def dec(i: int, a: int, b: int) -> tuple[int, int]:
        a, b = a - n * r, b + n * r
        ca, cb = a // 2, b // 2
        lo, hi = dec(i + 1, ca, cb) if i + 1 < top else enc(top, ca, cb)
        if cfg.family == "unet":
            sa, sb = enc(i, a, b)
            lo, hi = min(lo, sa), max(hi, sb)
        return lo, hi

    return [dec(0, p, p) for p in range(2 ** top)]


def receptive_field(cfg: ArchConfig | str) -> int:
    """Theoretical receptive field in input pixels: the widest input window (per axis) that one
    output pixel depends on, over all paths and all output positions (with pooling it depends on
    the position modulo :func:`size_multiple`), including the blur kernel."""
    cfg = parse_arch(cfg)
    return max(hi - lo + 1 for lo, hi in _rf_windows(cfg))


def halo(cfg: ArchConfig | str) -> int:
    """Largest distance (px, per axis) from an output pixel to an input pixel it depends on.

    Tiled inference equals whole-frame inference away from the frame border when tiles overlap
    by this many pixels on each side and tile origins are multiples of :func:`size_multiple`.
    """
    cfg = parse_arch(cfg)
    return max(max(p - lo, hi - p) for p, (lo, hi) in enumerate(_rf_windows(cfg)))


def describe(cfg: ArchConfig | str) -> str:
    """One-line human description of an architecture."""
    cfg = parse_arch(cfg)
    k = cfg.kernel_size
    act = "LeakyReLU" if cfg.activation == "leaky_relu" else "ReLU"
    blur = f", fixed Gaussian blur sigma={cfg.blur_sigma:g}" if cfg.blur_sigma > 0 else ""
    if cfg.family in ("unet", "hourglass"):
        ch = "-".join(str(cfg.base_channels * 2 ** i) for i in range(cfg.levels))
        what = "UNet" if cfg.family == "unet" else "hourglass (no skips)"
        convs = "2 convs" if cfg.two_conv else "1 conv"
        norm = " + BatchNorm" if cfg.norm else ""
        return f"{cfg.levels}-level {what}, {ch} ch, {convs}/level {k}x{k}{norm}, {act}{blur}"
    if cfg.family == "single_filter":
        return f"one learnable {k}x{k} filter + bias, logistic output{blur}"
    return f"{cfg.n_filters} {k}x{k} filters + {act}, 1x1 conv to {cfg.n_classes} classes{blur}"


# The paper's model study.  The 15 UNet variants of Supplementary Fig. 3 are not all recoverable
# from the figure names; the full factorial of the named modifiers on the 4-level UNet gives 12
# ({plain, TwoConv} x {plain, Norm} x {no blur, Blur1, Blur2}, "Base" = plain).  To these we add the
# 7x7-kernel variant (Norm_K7), the 3-level UNet of the 512x512 model, the hourglass (no skips),
# the single-filter CNN (9x9 and 7x7) and the shallow-wide CNN.
PAPER_MODELS: list[str] = [
    "Base", "Norm", "TwoConv", "TwoConv_Norm",
    "Blur1", "Norm_Blur1", "TwoConv_Blur1", "TwoConvNorm_Blur1",
    "Blur2", "Norm_Blur2", "TwoConv_Blur2", "TwoConvNorm_Blur2",
    "Norm_K7",
    "unet3",
    "hourglass",
    "single-filter", "single-filter-k7",
    "shallow-wide",
]


def model_table(names: list[str] | None = None) -> list[dict]:
    """Rows ``{name, canonical, family, parameters, receptive_field, size_multiple, description}``
    for ``names`` (default :data:`PAPER_MODELS`), for ``etemseg models``."""
    rows = []
    for name in (PAPER_MODELS if names is None else names):
        cfg = parse_arch(name)
        rows.append({
            "name": name,
            "canonical": canonical_name(cfg),
            "family": cfg.family,
            "parameters": count_parameters(build_model(cfg)),
            "receptive_field": receptive_field(cfg),
            "size_multiple": size_multiple(cfg),
            "description": describe(cfg),
        })
    return rows


def _fold_bn(module: nn.Module) -> None:
    for child in module.children():
        _fold_bn(child)
    if isinstance(module, nn.Sequential):
        mods = list(module)
        for i in range(len(mods) - 1):
            conv, bn = mods[i], mods[i + 1]
            if (type(conv) is nn.Conv2d and isinstance(bn, nn.BatchNorm2d)
                    and bn.track_running_stats and bn.running_mean is not None):
                fused = fuse_conv_bn_eval(conv, bn)
                module[i] = fused
                module[i + 1] = nn.Identity()


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """Eval-mode deep copy with every BatchNorm folded into the preceding conv (weights+bias).

    The result computes the same as ``model.eval()`` (to float rounding) with fewer ops; it is
    meant for inference only (no BatchNorm left to train).
    """
    fused = copy.deepcopy(model).eval()
    with torch.no_grad():
        _fold_bn(fused)
    for p in fused.parameters():
        p.requires_grad_(False)
    return fused
