"""Tests for etemseg.nn.models: architectures, names, blur layer, parameter counts, training,
BatchNorm folding, any-size inputs, receptive fields."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from etemseg.errors import ConfigError
from etemseg.nn.models import (
    PAPER_MODELS,
    ArchConfig,
    GaussianBlur,
    build_model,
    canonical_name,
    count_parameters,
    fuse_for_inference,
    halo,
    model_table,
    parse_arch,
    receptive_field,
    size_multiple,
)

EXPLICIT = ["unet4-norm", "unet3", "unet4-twoconv-norm-blur1-k7-leaky", "hourglass",
            "hourglass-norm", "single-filter", "single-filter-k7", "shallow-wide",
            "shallow-wide-k7"]
ALL_NAMES = list(dict.fromkeys(PAPER_MODELS + EXPLICIT))
LARGE_SUBSET = ["unet4-norm", "unet3", "hourglass", "single-filter", "shallow-wide",
                "TwoConvNorm_Blur1"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def first_conv(model: torch.nn.Module) -> torch.nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def check_forward_backward(name: str, h: int, w: int, n: int = 1) -> None:
    model = build_model(name)
    x = torch.randn(n, 1, h, w)
    out = model(x)
    assert out.shape == (n, 2, h, w)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    target = (x[:, 0] < 0).long()
    F.cross_entropy(out, target).backward()
    g = first_conv(model).weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    for p in model.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


# ------------------------------------------------------------------ forward / backward, sizes

@pytest.mark.parametrize("name", ALL_NAMES)
@pytest.mark.parametrize("size", [(64, 64), (100, 130)])
def test_forward_backward_small(name, size):
    check_forward_backward(name, *size)


@pytest.mark.parametrize("name", LARGE_SUBSET)
def test_forward_backward_512(name):
    check_forward_backward(name, 512, 512)


@pytest.mark.parametrize("name", ["unet4", "unet4-norm", "hourglass4", "unet5-twoconv", "unet2"])
@pytest.mark.parametrize("size", [(65, 67), (3, 5), (1, 1), (17, 8)])
def test_odd_and_tiny_sizes(name, size):
    model = build_model(name).eval()
    x = torch.randn(2, 1, *size)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 2, *size)
    assert torch.isfinite(out).all()


def test_padding_is_crop_consistent():
    """A frame already a multiple of 2**(levels-1) is not padded; output is batch-independent."""
    model = build_model("unet4-norm").eval()
    x = torch.randn(2, 1, 64, 72)
    with torch.no_grad():
        both = model(x)
        one = model(x[1:])
    torch.testing.assert_close(both[1:], one, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ names

@pytest.mark.parametrize("name, family, levels, two_conv, norm, sigma", [
    ("Base", "unet", 4, False, False, 0.0),
    ("UNet", "unet", 4, False, False, 0.0),
    ("Norm", "unet", 4, False, True, 0.0),
    ("TwoConv", "unet", 4, True, False, 0.0),
    ("TwoConv_Norm", "unet", 4, True, True, 0.0),
    ("TwoConvNorm_Blur1", "unet", 4, True, True, 1.0),
    ("Norm_Blur1", "unet", 4, False, True, 1.0),
    ("TwoConv_Blur1", "unet", 4, True, False, 1.0),
    ("Blur1", "unet", 4, False, False, 1.0),
    ("Blur2", "unet", 4, False, False, 2.0),
    ("Norm_Blur2", "unet", 4, False, True, 2.0),
    ("twoconvnorm_blur2", "unet", 4, True, True, 2.0),
    ("unet3", "unet", 3, False, False, 0.0),
    ("unet4-norm", "unet", 4, False, True, 0.0),
    ("hourglass", "hourglass", 4, False, False, 0.0),
    ("hourglass-norm", "hourglass", 4, False, True, 0.0),
    ("UNet3_Norm", "unet", 3, False, True, 0.0),
])
def test_paper_names(name, family, levels, two_conv, norm, sigma):
    cfg = parse_arch(name)
    assert (cfg.family, cfg.levels, cfg.two_conv, cfg.norm, cfg.blur_sigma) == \
        (family, levels, two_conv, norm, sigma)
    assert cfg.kernel_size == 3 and cfg.activation == "relu" and cfg.base_channels == 8


def test_explicit_names():
    cfg = parse_arch("unet4-twoconv-norm-blur1-k7-leaky")
    assert cfg == ArchConfig("unet", levels=4, two_conv=True, norm=True, blur_sigma=1.0,
                             kernel_size=7, activation="leaky_relu")
    assert parse_arch("Norm_K7") == ArchConfig("unet", norm=True, kernel_size=7)
    assert parse_arch("single-filter") == ArchConfig("single_filter", kernel_size=9)
    assert parse_arch("single-filter").kernel_size == 9
    assert parse_arch("single-filter-k7").kernel_size == 7
    assert parse_arch("shallow-wide") == ArchConfig("shallow_wide", kernel_size=9, n_filters=32)
    assert parse_arch("shallow-wide-k7").kernel_size == 7
    assert parse_arch("single_filter") == parse_arch("SingleFilter") == parse_arch("single-filter")
    cfg = ArchConfig("unet")
    assert parse_arch(cfg) is cfg


@pytest.mark.parametrize("cfg", [
    ArchConfig("unet"), ArchConfig("unet", levels=3, norm=True),
    ArchConfig("unet", levels=5, two_conv=True, norm=True, blur_sigma=2.0, kernel_size=7,
               activation="leaky_relu", base_channels=16, in_channels=3, n_classes=3),
    ArchConfig("unet", blur_sigma=1.5), ArchConfig("unet", blur_sigma=0.25),
    ArchConfig("hourglass", levels=3, norm=True), ArchConfig("hourglass"),
    ArchConfig("single_filter"), ArchConfig("single_filter", kernel_size=7, blur_sigma=1.0),
    ArchConfig("shallow_wide", n_filters=64, kernel_size=5, activation="leaky_relu"),
])
def test_canonical_round_trip(cfg):
    name = canonical_name(cfg)
    assert name == name.lower() and "_" not in name
    assert parse_arch(name) == cfg
    assert canonical_name(name) == name
    d = json.loads(json.dumps(cfg.to_dict()))
    assert ArchConfig.from_dict(d) == cfg


def test_canonical_names():
    assert canonical_name("Norm") == "unet4-norm"
    assert canonical_name("TwoConvNorm_Blur1") == "unet4-twoconv-norm-blur1"
    assert canonical_name("Base") == "unet4"
    assert canonical_name("hourglass") == "hourglass4"
    assert canonical_name("single-filter") == "single-filter"
    assert canonical_name("shallow-wide-k7") == "shallow-wide-k7"
    for name in ALL_NAMES:
        assert parse_arch(canonical_name(name)) == parse_arch(name)


@pytest.mark.parametrize("name, token", [
    ("Norm_Foo", "Foo"), ("unet4-fancy", "fancy"), ("TwoConvX_Norm", "X"),
    ("resnet", "resnet"), ("unet4-norm-k", "k"),
])
def test_unknown_token(name, token):
    with pytest.raises(ConfigError) as exc:
        parse_arch(name)
    msg = str(exc.value)
    assert repr(token) in msg
    assert "twoconv" in msg and "blur1" in msg  # lists the valid tokens


@pytest.mark.parametrize("name", [
    "", "Blur1_Blur2", "Norm_Norm", "unet3-unet4", "single-filter-norm", "shallow-wide-twoconv",
    "single-filter-leaky", "unet4-k4", "unet7", "hourglass-base", "unet4-c0",
])
def test_invalid_names(name):
    with pytest.raises(ConfigError):
        parse_arch(name)


def test_from_dict_errors():
    with pytest.raises(ConfigError, match="bogus"):
        ArchConfig.from_dict({"family": "unet", "bogus": 1})
    with pytest.raises(ConfigError, match="family"):
        ArchConfig.from_dict({"levels": 3})
    with pytest.raises(ConfigError, match="levels"):
        ArchConfig.from_dict({"family": "unet", "levels": "4"})
    with pytest.raises(ConfigError, match="family"):
        ArchConfig.from_dict({"family": "resnet"})
    with pytest.raises(ConfigError, match="activation"):
        ArchConfig(family="unet", activation="gelu")
    with pytest.raises(ConfigError, match="norm"):
        ArchConfig(family="unet", norm=1)
    with pytest.raises(ConfigError, match="levels"):
        ArchConfig(family="single_filter", levels=3)


# ------------------------------------------------------------------ blur layer

@pytest.mark.parametrize("sigma", [1.0, 2.0, 1.5])
def test_blur_matches_scipy(sigma):
    rng = np.random.default_rng(3)
    img = rng.normal(size=(37, 41)).astype(np.float32)
    ref = ndimage.gaussian_filter(img.astype(np.float64), sigma, mode="reflect")
    out = GaussianBlur(sigma)(torch.from_numpy(img)[None, None])[0, 0].numpy()
    r = int(4 * sigma + 0.5)
    np.testing.assert_allclose(out[r:-r, r:-r], ref[r:-r, r:-r], atol=1e-5)  # interior
    np.testing.assert_allclose(out, ref, atol=1e-5)  # boundary too: scipy's 'reflect'


def test_blur_is_fixed_inside_model():
    base, blurred = build_model("Norm"), build_model("Norm_Blur2")
    assert count_parameters(base) == count_parameters(blurred)
    assert sum(p.numel() for p in blurred.parameters()) == count_parameters(base)
    blur = blurred.blur
    assert isinstance(blur, GaussianBlur) and len(list(blur.parameters())) == 0
    assert all(not b.requires_grad for b in blur.buffers())
    # not in the checkpoint: a plain model's weights load into the blurred one
    blurred.load_state_dict(base.state_dict())
    x = torch.randn(1, 1, 40, 48)
    blurred(x).sum().backward()
    assert all(not b.requires_grad and b.grad is None for b in blur.buffers())
    # the model input really is blurred first
    ref = ndimage.gaussian_filter(x[0, 0].numpy().astype(np.float64), 2.0, mode="reflect")
    np.testing.assert_allclose(blur(x)[0, 0].numpy(), ref, atol=1e-5)


def test_blur_tiny_input():
    out = GaussianBlur(2.0)(torch.randn(1, 1, 3, 5))
    assert out.shape == (1, 1, 3, 5) and torch.isfinite(out).all()


# ------------------------------------------------------------------ parameter counts

def conv(cin, cout, k, bias=True):
    return cin * cout * k * k + (cout if bias else 0)


def unet_params(levels, k=3, c=8, norm=False, two=False, skip=True, cin=1, ncls=2):
    ch = [c * 2 ** i for i in range(levels)]
    n = 2 if two else 1
    total = 0

    def block(a, b):
        t = 0
        for i in range(n):
            t += conv(a if i == 0 else b, b, k, bias=not norm) + (2 * b if norm else 0)
        return t

    for i in range(levels):
        total += block(cin if i == 0 else ch[i - 1], ch[i])
    for i in range(levels - 1):
        total += conv(ch[i + 1], ch[i], 2)                      # transposed conv 2x2
        total += block(2 * ch[i] if skip else ch[i], ch[i])
    return total + conv(ch[0], ncls, 1)


@pytest.mark.parametrize("name, expected", [
    ("single-filter", 9 * 9 + 1),
    ("single-filter-k7", 7 * 7 + 1),
    ("shallow-wide", 32 * 81 + 32 + 32 * 2 + 2),          # 2690
    ("shallow-wide-k3", 32 * 9 + 32 + 32 * 2 + 2),        # 386
    ("shallow-wide-k7", 32 * 49 + 32 + 32 * 2 + 2),
    ("unet3", 80 + 1168 + 4640 + 2064 + 4624 + 520 + 1160 + 18),  # 14274, by hand
    ("unet4", 59458),
    ("unet4-norm", 59458 - 176 + 2 * 176),                # BN: conv biases dropped, +gamma/beta
])
def test_parameter_counts_exact(name, expected):
    assert count_parameters(build_model(name)) == expected


@pytest.mark.parametrize("name", [n for n in ALL_NAMES
                                  if parse_arch(n).family in ("unet", "hourglass")])
def test_parameter_counts_formula(name):
    cfg = parse_arch(name)
    expected = unet_params(cfg.levels, cfg.kernel_size, cfg.base_channels, cfg.norm,
                           cfg.two_conv, skip=cfg.family == "unet")
    assert count_parameters(build_model(cfg)) == expected


def test_model_table():
    rows = model_table()
    assert [r["name"] for r in rows] == PAPER_MODELS
    assert len(PAPER_MODELS) == len(set(map(canonical_name, PAPER_MODELS)))
    for r in rows:
        assert {"name", "canonical", "family", "parameters", "receptive_field",
                "description"} <= set(r)
        assert r["parameters"] == count_parameters(build_model(r["name"]))
    json.dumps(rows)


def probabilities(model, x):
    """Particle probability of normalised input ``x`` (N, 1, H, W) as inference computes it
    (the model prepared and run by :mod:`etemseg.nn.inference`, eager float32 path)."""
    from etemseg.nn.inference import _forward, prepare_model

    model = prepare_model(model, torch.device("cpu"), optimised=False)
    return _forward(model, x[:, 0], optimised=False, amp_dtype=None)


def test_interpretable_weights():
    sf = build_model("single-filter")
    assert sf.kernel.shape == (9, 9)
    assert torch.equal(sf.kernel, sf.conv.weight[0, 0].detach())
    assert build_model("single-filter-k7").kernel.shape == (7, 7)
    sw = build_model("shallow-wide-k7")
    assert sw.filters.shape == (32, 7, 7)
    # single filter: softmax(...)[1] is the logistic function of one linear filter response
    x = torch.randn(2, 1, 20, 24)
    z = F.conv2d(x, sf.conv.weight, sf.conv.bias, padding=4)[:, 0]
    torch.testing.assert_close(probabilities(sf, x), torch.sigmoid(z))


def test_probabilities():
    model = build_model("unet3-norm")
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 1, 30, 34))   # non-trivial BatchNorm statistics
    x = torch.randn(2, 1, 30, 34)
    p = probabilities(model, x)
    assert p.shape == (2, 30, 34) and (p >= 0).all() and (p <= 1).all()
    model.eval()
    with torch.no_grad():
        ref = torch.softmax(model(x), dim=1)[:, 1]
    torch.testing.assert_close(p, ref)


# ------------------------------------------------------------------ training

def disks(n=4, size=64, seed=0):
    """Dark disks on a bright noisy background (normalised), labels 1 inside the disks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    imgs, labs = [], []
    for _ in range(n):
        lab = np.zeros((size, size), bool)
        for _ in range(5):
            cy, cx = rng.uniform(8, size - 8, 2)
            r = rng.uniform(3, 8)
            lab |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        imgs.append(np.where(lab, -1.0, 1.0) + rng.normal(0, 0.3, (size, size)))
        labs.append(lab)
    return (torch.tensor(np.array(imgs), dtype=torch.float32)[:, None],
            torch.tensor(np.array(labs)).long())


@pytest.mark.parametrize("name", ["unet3-norm", "shallow-wide", "single-filter"])
def test_loss_decreases(name):
    x, y = disks()
    model = build_model(name)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses


# ------------------------------------------------------------------ inference helpers

@pytest.mark.parametrize("name", ["unet4-twoconv-norm-blur1", "unet3-norm-k7-leaky",
                                  "hourglass-norm", "unet4", "shallow-wide"])
def test_fuse_for_inference(name):
    model = build_model(name)
    for m in model.modules():  # non-trivial BatchNorm affine parameters and running stats
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.5, 0.5)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, 1, 48, 48) * 2 + 0.5)
    fused = fuse_for_inference(model)
    assert model.training  # the original is untouched
    assert not fused.training
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(1, 1, 100, 130)
    model.eval()
    with torch.no_grad():
        ref, out = model(x), fused(x)
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_channels_last_and_script():
    model = build_model("unet4-norm-blur1").eval()
    x = torch.randn(1, 1, 72, 80)
    with torch.no_grad():
        ref = model(x)
        cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
        torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-5)
        for name in ["unet4-norm-blur1", "hourglass3", "single-filter", "shallow-wide"]:
            m = fuse_for_inference(build_model(name))
            scripted = torch.jit.script(m)
            torch.testing.assert_close(scripted(x), m(x))


# ------------------------------------------------------------------ receptive field

def test_receptive_field_values():
    assert receptive_field("single-filter") == 9
    assert receptive_field("single-filter-k7") == 7
    assert receptive_field("single-filter-blur1") == 9 + 8
    assert receptive_field("shallow-wide") == 9
    assert receptive_field("unet3") == 26
    assert receptive_field("unet4") == 54
    assert size_multiple("unet4") == 8 and size_multiple("unet3") == 4
    assert size_multiple("shallow-wide") == 1
    assert receptive_field("TwoConv") > receptive_field("Base")
    assert receptive_field("Blur2") == receptive_field("Base") + 16


@pytest.mark.parametrize("name", ["unet3", "unet4", "hourglass3", "unet3-twoconv-blur1",
                                  "shallow-wide-k7", "single-filter-blur1"])
def test_receptive_field_empirical(name):
    """Gradient support of single output pixels (all positions mod size_multiple) = theory."""
    model = build_model(name).eval()
    m = size_multiple(name)
    widest = 0
    for _ in range(2):
        x = torch.randn(1, 1, 128, 128, requires_grad=True)
        out = model(x)[0, 1]
        for p in range(m):
            (g,) = torch.autograd.grad(out[64 + p, 64 + p], x, retain_graph=True)
            nz = (g[0, 0] != 0).nonzero()
            if len(nz):
                widest = max(widest, int((nz.max(0).values - nz.min(0).values + 1).max()))
    assert widest == receptive_field(name)


def test_halo_makes_tiles_exact():
    name = "unet3-twoconv-norm"
    model = build_model(name).eval()
    x = torch.randn(1, 1, 96, 100)
    hl, m = halo(name), size_multiple(name)
    o = 2 * m  # tile origin, a multiple of size_multiple
    with torch.no_grad():
        full = model(x)
        tile = model(x[:, :, o:, o:])
    torch.testing.assert_close(tile[:, :, hl:-hl, hl:-hl],
                               full[:, :, o + hl:-hl, o + hl:-hl], rtol=1e-4, atol=1e-5)
