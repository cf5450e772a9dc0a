"""Inference: tiling equivalence, optimised vs eager, thresholds, bad models and frames."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import zarr

from etemseg.analysis.scoring import pixel_counts, rates
from etemseg.errors import ConfigError
from etemseg.io.store import MovieStore
from etemseg.levels import otsu_level, otsu_split, quantise
from etemseg.nn.checkpoint import normalise_tensor
from etemseg.nn.inference import (MIN_SEPARATION, InferConfig, edge_padding, open_model,
                                  prepare_model, probabilities, reflect_pad, stream_levels, tiles)
from etemseg.nn.models import build_model, halo, parse_arch, size_multiple, tiling
from etemseg.nn.training import TrainConfig
from etemseg.stages.infer import infer_chunk, mask_from_levels
from etemseg.stages.ingest import ingest
from etemseg.stages.train import train

from .test_train import disks_data


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "etemseg.cli", "--quiet", *map(str, args)],
                          capture_output=True, text=True)


def predict(model, frames, *, arch, cfg, device):
    """Particle probability (T, H, W) float32 of raw frames (T, H, W), in batches of
    ``cfg.batch_size`` through the inference engine (:func:`probabilities`, what
    :func:`stream_levels` quantises)."""
    batches = (frames[b:b + cfg.batch_size] for b in range(0, len(frames), cfg.batch_size))
    return np.concatenate([p.cpu().numpy() for p in probabilities(model, batches, arch=arch,
                                                                   cfg=cfg, device=device)])


def levels(model, frames, *, arch, cfg, device):
    """Quantised probabilities and per-frame histograms of frames (T, H, W), as one block of
    :func:`stream_levels` (what ``infer_chunk`` runs)."""
    (_, q, hist), = stream_levels(model, [(0, frames)], arch=arch, cfg=cfg, device=device)
    return q, hist


def random_model(name, seed=0):
    torch.manual_seed(seed)
    model = build_model(name)
    # give BatchNorm non-trivial statistics so folding is really exercised
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, 1, 64, 64))
    return model.eval()


@pytest.mark.parametrize("name", ["unet4-norm", "unet3", "hourglass", "shallow-wide",
                                  "single-filter", "unet4-twoconv-norm-blur1"])
def test_tiled_equals_whole_frame(name):
    arch = parse_arch(name)
    frames = np.random.default_rng(0).poisson(200, (2, 150, 203)).astype(np.uint16)
    model = prepare_model(random_model(name), torch.device("cpu"), optimised=False)
    whole = predict(model, frames, arch=arch, cfg=InferConfig(max_tile_px=0), device="cpu")
    tiled = predict(model, frames, arch=arch, cfg=InferConfig(max_tile_px=96), device="cpu")
    assert len(tiles(203, 96, size_multiple(arch), halo(arch))) > 1 or halo(arch) > 40
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_frame_edges_are_reflected_not_zero_padded():
    """The model sees the frame continued by reflection over its halo (rounded up to its pooling
    grid), not the convolutions' zero (mean) padding, whole-frame and tiled alike."""
    arch = parse_arch("unet4-norm")
    m, margin = tiling(arch)
    assert edge_padding((150, 203), m, margin) == 32 == -(-margin // m) * m
    assert edge_padding((20, 203), m, margin) == 16  # a small frame reflects less
    assert edge_padding((8, 8), m, margin) == 0
    frames = np.random.default_rng(2).poisson(200, (2, 150, 203)).astype(np.uint16)
    frames[:, :40, :40] -= 60  # a dark corner
    model = prepare_model(random_model("unet4-norm"), torch.device("cpu"), optimised=False)
    got = predict(model, frames, arch=arch, cfg=InferConfig(max_tile_px=0), device="cpu")
    x = normalise_tensor(torch.from_numpy(frames.astype(np.float32)))
    with torch.no_grad():
        logits = model(reflect_pad(x, 32)[:, None])[:, :, 32:182, 32:235]
        zero = torch.softmax(model(x[:, None]), 1)[:, 1].numpy()
    np.testing.assert_allclose(got, torch.softmax(logits, 1)[:, 1].numpy(), atol=1e-5)
    np.testing.assert_allclose(got[:, 40:-40, 40:-40], zero[:, 40:-40, 40:-40], atol=1e-5)
    assert np.abs(got[:, :8, :8] - zero[:, :8, :8]).max() > 1e-3  # the edge is seen otherwise
    tiled = predict(model, frames, arch=arch, cfg=InferConfig(max_tile_px=96), device="cpu")
    np.testing.assert_allclose(tiled, got, atol=1e-5)


def test_optimised_path_gives_identical_masks():
    arch = parse_arch("unet4-norm")
    frames = np.random.default_rng(1).poisson(200, (2, 128, 160)).astype(np.uint16)
    model = random_model("unet4-norm")
    eager = predict(prepare_model(model, torch.device("cpu"), False), frames, arch=arch,
                    cfg=InferConfig(optimised=False), device=torch.device("cpu"))
    fast = predict(prepare_model(model, torch.device("cpu"), True), frames, arch=arch,
                   cfg=InferConfig(optimised=True), device=torch.device("cpu"))
    np.testing.assert_allclose(fast, eager, atol=1e-4)
    qa, qb = quantise(eager), quantise(fast)
    for level in (50, 127, 200):
        c = pixel_counts(qa > level, qb > level)
        assert rates(**c)["iou"] >= 0.999


def test_otsu_level_and_fixed_threshold_semantics():
    hist = np.zeros(256, np.int64)
    hist[10], hist[240] = 900, 100
    assert 10 <= otsu_level(hist) < 240
    assert otsu_level(np.bincount(np.full(50, 7), minlength=256)) == 127  # constant -> p > 0.5
    q = np.array([[127, 128, 255, 0]], np.uint8)
    assert mask_from_levels(q, 127, 0).tolist() == [[0, 1, 1, 0]]


def test_min_area_filter_removes_small_clusters():
    q = np.zeros((40, 40), np.uint8)
    q[2:4, 2:4] = 255         # 4 px cluster
    q[10:20, 10:20] = 255     # 100 px particle
    m = mask_from_levels(q, 127, 20)
    assert m.sum() == 100


def ndimage_count(mask):
    from scipy import ndimage as ndi

    return ndi.label(mask, np.ones((3, 3), bool))[1]


def test_hysteresis_grows_components_to_the_lenient_level():
    """A faint particle whose centre passes the threshold is drawn whole down to the lenient
    level (half the threshold by default), not as the piece above the threshold; a blob that
    never passes the threshold stays out, and so does everything at the empty level and a speck
    under the minimum area; pieces of one particle join, two particles whose rims touch at the
    lenient level do not."""
    from etemseg.levels import EMPTY_LEVEL, hysteresis_levels

    yy, xx = np.mgrid[:60, :90]
    r1 = np.hypot(yy - 30, xx - 25)
    r2 = np.hypot(yy - 30, xx - 65)
    p = np.where(r1 <= 10, 0.35, 0.0)          # faint particle, radius 10 px ...
    p[r1 <= 3] = 0.7                           # ... whose centre passes 0.5
    p[r2 <= 8] = 0.4                           # never passes the threshold
    q = np.rint(p * 255).astype(np.uint8)
    assert mask_from_levels(q, 127, 0).sum() == (r1 <= 3).sum()
    grown = mask_from_levels(q, 127, 0, 0.5)   # lenient level 63 (p > 0.25)
    np.testing.assert_array_equal(grown, r1 <= 10)
    assert mask_from_levels(q, 127, 0, 0.8).sum() == (r1 <= 3).sum()   # 0.35 < 0.8 * 0.5
    assert mask_from_levels(q, EMPTY_LEVEL, 0, 0.5).sum() == 0
    # two particles whose faint rims touch (0.35 < 0.75 x 0.5): not joined, each its own part
    r3 = np.hypot(yy - 30, xx - 46)
    p2 = np.where((r1 <= 10) | (r3 <= 10), 0.35, 0.0)
    p2[(r1 <= 3) | (r3 <= 3)] = 0.7
    q2 = np.rint(p2 * 255).astype(np.uint8)
    np.testing.assert_array_equal(mask_from_levels(q2, 127, 0, 0.5), (r1 <= 3) | (r3 <= 3))
    # the area filter is on the part above the threshold (29 px): a speck does not grow in
    assert mask_from_levels(q, 127, 30, 0.5).sum() == 0
    assert mask_from_levels(q, 127, 29, 0.5).sum() == (r1 <= 10).sum()
    # two pieces of one faint particle (probability between them 0.45 > 0.75 x 0.5): one
    p3 = np.where(r1 <= 10, 0.35, 0.0)
    p3[r1 <= 6] = 0.45
    p3[(r1 <= 6) & (np.abs(xx - 25) >= 3)] = 0.7
    q3 = np.rint(p3 * 255).astype(np.uint8)
    assert ndimage_count(mask_from_levels(q3, 127, 0)) == 2
    np.testing.assert_array_equal(mask_from_levels(q3, 127, 0, 0.5), r1 <= 10)
    assert hysteresis_levels(127, 0.5) == (63, 95) and hysteresis_levels(127, 1.0) == (127, 127)
    assert hysteresis_levels(EMPTY_LEVEL, 0.3) == (EMPTY_LEVEL, EMPTY_LEVEL)
    for bad in (0, -0.5, 1.5, "x"):
        with pytest.raises(ConfigError, match="infer.hysteresis"):
            InferConfig(hysteresis=bad).validate()
    InferConfig(hysteresis=1.0).validate()


def hysteresis_reference(q, level, low, mid, min_area):
    """:func:`etemseg.morphology.above_level_filtered` with hysteresis, from scipy labellings."""
    from scipy import ndimage as ndi

    s8 = np.ones((3, 3), bool)
    strict, _ = ndi.label(q > level, s8)
    big = (np.bincount(strict.ravel()) >= min_area)[strict] & (strict > 0)   # the particles
    lab_mid, n_mid = ndi.label(q > mid, s8)
    seeded = np.zeros(n_mid + 1, bool)
    seeded[np.unique(lab_mid[big])] = True
    seeded[0] = False
    grown_mid = seeded[lab_mid]                       # pieces joined over q > mid
    lab_low, n_low = ndi.label(q > low, s8)
    pairs = np.unique(np.stack([lab_low[grown_mid], lab_mid[grown_mid]]), axis=1)
    count = np.bincount(pairs[0], minlength=n_low + 1)
    one = (count == 1)[lab_low] & (lab_low > 0)
    several = (count > 1)[lab_low] & grown_mid
    return one | several, one & (q <= mid), several


def test_hysteresis_kernel_is_scipy_labelling():
    """The kernel equals scipy labellings of the three levels: particles are the strict
    components of at least the minimum area, joined over the middle level; a lenient component
    with one particle is kept whole, one with several keeps them (grown to the middle level),
    one with none is dropped (random smooth fields, levels and areas)."""
    from scipy import ndimage as ndi

    from etemseg.morphology import above_level_filtered

    rng = np.random.default_rng(4)
    kinds = set()
    for _ in range(60):
        f = ndi.gaussian_filter(rng.random(rng.integers(8, 120, 2)), rng.uniform(0.5, 3))
        q = np.rint((f - f.min()) / max(np.ptp(f), 1e-9) * 255).astype(np.uint8)
        level, low = int(rng.integers(100, 220)), int(rng.integers(0, 100))
        mid = int(rng.integers(low, level + 1))
        min_area = int(rng.integers(1, 50))
        want, grown, several = hysteresis_reference(q, level, low, mid, min_area)
        kinds |= {"grown"} if grown.any() else set()
        kinds |= {"several"} if several.any() else set()
        out = np.zeros(q.shape, np.uint8)
        assert above_level_filtered(q, level, min_area, out, low, mid) == want.sum()
        np.testing.assert_array_equal(out, want)
        plain = np.zeros(q.shape, np.uint8)              # mid omitted: pieces join at low
        above_level_filtered(q, level, min_area, plain, low)
        np.testing.assert_array_equal(plain, hysteresis_reference(q, level, low, low,
                                                                  min_area)[0])
    assert kinds == {"grown", "several"}      # both rules were exercised


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    data = disks_data(n=6, h=64, w=80)
    cfg = TrainConfig(model="shallow-wide", epochs=4, batch_size=4, lr=3e-3, crop_px=32,
                      samples_per_epoch=32, device="cpu")
    train(data, cfg, root / "model", progress=False)
    raw = (data.images * 30 + 200).clip(0, 65535).astype(np.uint16)
    folder = root / "dump"
    folder.mkdir()
    for i, frame in enumerate(raw):
        np.save(folder / f"f_{i}.npy", frame)
    ingest(folder, root / "frames.zarr", chunk_frames=4, progress=False)
    return root, data


@pytest.mark.parametrize("mode", ["fixed", "otsu_frame", "otsu_chunk"])
def test_cli_per_chunk_threshold_modes(trained, mode):
    root, data = trained
    out = root / f"out-{mode}"
    common = ["--threshold", mode, "--min-area-px", 5, "--expect", "shallow-wide"]
    assert run_cli("infer", root / "frames.zarr", root / "model/model.pt", out, "--init",
                   *common).returncode == 0
    for k in (1, 0):
        r = run_cli("infer", root / "frames.zarr", root / "model/model.pt", out, "--chunk", k,
                    *common)
        assert r.returncode == 0, r.stderr
    masks = zarr.open_array(out / "mask.zarr/0")[:]
    prob = zarr.open_array(out / "prob.zarr/0")[:]
    assert masks.shape == (6, 64, 80) and prob.dtype == np.uint8
    f1 = rates(**pixel_counts(masks > 0, data.labels > 0))["f1"]
    assert f1 > 0.6


def test_bad_models_leave_no_output(trained, tmp_path):
    root, _ = trained
    out = tmp_path / "out"
    r = run_cli("infer", root / "frames.zarr", tmp_path / "missing.pt", out, "--init")
    assert r.returncode == 2 and "missing.pt" in r.stderr and not out.exists()
    bad = tmp_path / "trunc.pt"
    bad.write_bytes((root / "model/model.pt").read_bytes()[:500])
    r = run_cli("infer", root / "frames.zarr", bad, out)
    assert r.returncode == 2 and "trunc.pt" in r.stderr and not out.exists()
    r = run_cli("infer", root / "frames.zarr", root / "model/model.pt", out, "--expect",
                "unet4-norm")
    assert r.returncode == 2 and "not unet4-norm" in r.stderr and not out.exists()


def test_tiny_and_nan_frames(trained, tmp_path):
    root, _ = trained
    folder = tmp_path / "tiny"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        frame = rng.normal(200, 10, (5, 7)).astype(np.float32)  # smaller than the model's field
        if i == 1:
            frame[2, 3] = np.nan
        np.save(folder / f"f_{i}.npy", frame)
    ingest(folder, tmp_path / "tiny.zarr", chunk_frames=3, progress=False)
    r = run_cli("infer", tmp_path / "tiny.zarr", root / "model/model.pt", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    masks = zarr.open_array(tmp_path / "o/mask.zarr/0")[:]
    assert masks.shape == (3, 5, 7) and masks[1].sum() == 0
    assert "NaN" in r.stderr


def test_min_area_filter_is_8_connected_like_the_measurements():
    q = np.zeros((30, 30), np.uint8)
    for i in range(12):          # a diagonal line of 12 px: one 8-connected component
        q[5 + i, 5 + i] = 255
    q[25, 25] = 255              # an isolated pixel
    m = mask_from_levels(q, 127, 10)
    assert m.sum() == 12 and m[25, 25] == 0
    assert mask_from_levels(q, 127, 13).sum() == 0


def test_stream_levels_equals_quantised_probabilities_and_bincount():
    arch = parse_arch("unet3-norm")
    torch.manual_seed(0)
    model = prepare_model(build_model(arch), torch.device("cpu"), True)
    frames = np.random.default_rng(0).poisson(200, (5, 40, 48)).astype(np.uint16)
    cfg = InferConfig(batch_size=2)
    q, hist = levels(model, frames, arch=arch, cfg=cfg, device="cpu")
    assert q.dtype == np.uint8 and hist.shape == (5, 256)
    np.testing.assert_array_equal(q, quantise(predict(model, frames, arch=arch, cfg=cfg,
                                                      device="cpu")))
    for f, h in zip(q, hist):
        np.testing.assert_array_equal(h, np.bincount(f.ravel(), minlength=256))
    # blocks of any size (an empty one too) come back in order, as one block would
    blocks = [(0, frames[:3]), (3, frames[3:3]), (3, frames[3:])]
    out = list(stream_levels(model, blocks, arch=arch, cfg=cfg, device="cpu"))
    assert [b0 for b0, _, _ in out] == [0, 3, 3]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in out]), q)
    np.testing.assert_array_equal(np.concatenate([b[2] for b in out]), hist)


def test_uint16_frames_keep_their_full_range_on_the_way_to_float():
    from etemseg.nn.inference import _to_float

    raw = np.array([[0, 1, 32767, 32768, 40000, 65535]], np.uint16)
    np.testing.assert_array_equal(_to_float(torch.from_numpy(raw)).numpy(),
                                  raw.astype(np.float32))


# ------------------------------------------------------------------ featureless (blank) frames

def blank_frames(h, w, seed=0):
    """All zeros, constant mid-grey, and three frames of pure Poisson noise (no particles)."""
    rng = np.random.default_rng(seed)
    return np.stack([np.zeros((h, w), np.uint16), np.full((h, w), 1000, np.uint16),
                     *rng.poisson(200, (2, h, w)).astype(np.uint16),
                     rng.poisson(5, (h, w)).astype(np.uint16)])


def movie_store(folder, frames, chunk_frames, pixel_size_nm=None):
    folder.mkdir(parents=True)
    for i, frame in enumerate(frames):
        np.save(folder / f"f_{i:03d}.npy", frame)
    return ingest(folder, folder.with_suffix(".zarr"), chunk_frames=chunk_frames, progress=False,
                  pixel_size_nm=pixel_size_nm)


def infer_all(store, model, name, out, **settings):
    """Masks and receipts of every chunk, in process (``infer_chunk``, as ``etemseg infer``)."""
    cfg = InferConfig(device="cpu", **settings)
    cfg.validate()
    prob = store.like(out / "prob.zarr", np.uint8)
    mask = store.like(out / "mask.zarr", np.uint8)
    receipts = [infer_chunk(store, prob, mask, k, model, {"name": name}, cfg, torch.device("cpu"))
                for k in range(store.n_chunks)]
    return mask.array[:], receipts


@pytest.fixture(scope="module")
def models(trained):
    """The trained shallow-wide of ``trained`` and untrained models of other families."""
    root, _ = trained
    out = {"shallow-wide": open_model(root / "model/model.pt", torch.device("cpu"), True)[0]}
    for name in ("unet4-norm", "single-filter", "hourglass"):
        out[name] = prepare_model(random_model(name), torch.device("cpu"), True)
    return out


def test_otsu_split_separation():
    hist = np.zeros(256, np.int64)
    hist[10], hist[240] = 900, 100
    level, sep = otsu_split(hist)
    assert level == otsu_level(hist) and sep == pytest.approx(230 / 255)
    assert otsu_split(np.bincount(np.full(50, 7), minlength=256)) == (127, 0.0)
    noise = np.bincount(quantise(np.random.default_rng(0).normal(0.2, 0.05, 10**5)),
                        minlength=256)
    assert otsu_split(noise)[1] < 0.1         # unimodal: Otsu splits it, but nothing apart
    with pytest.raises(Exception, match="min_separation"):
        InferConfig(min_separation=1.0).validate()


@pytest.mark.parametrize("name", ["shallow-wide", "unet4-norm", "single-filter", "hourglass"])
def test_blank_frames_give_empty_masks_and_one_warning(models, name, tmp_path, caplog):
    frames = blank_frames(64, 80)
    store = movie_store(tmp_path / "blank", frames, chunk_frames=3)
    model = models[name]
    before, _ = infer_all(store, model, name, tmp_path / "off", min_separation=0, min_area_px=5)
    caplog.clear()
    masks, receipts = infer_all(store, model, name, tmp_path / "on", min_area_px=5)
    assert masks.sum() == 0
    assert [r["blank_frames"] for r in receipts] == [3, 2]
    assert all(t == 1.0 for r in receipts for t in r["thresholds"])
    warnings = [r.getMessage() for r in caplog.records if "featureless" in r.getMessage()]
    assert len(warnings) == 2                          # one per chunk, not one per frame
    assert str(store.path) in warnings[0] and "frames 0-2" in warnings[0]
    assert "chunk 1" in warnings[1] and "frames 3-4" in warnings[1]
    if name in ("shallow-wide", "single-filter"):      # what the check prevents
        assert before.reshape(len(frames), -1).mean(axis=1).max() > 0.3
    # otsu_chunk judges the chunk: all blank here, so all empty as well
    masks, receipts = infer_all(store, model, name, tmp_path / "chunk", threshold="otsu_chunk",
                                min_area_px=5)
    assert masks.sum() == 0 and [r["blank_frames"] for r in receipts] == [3, 2]


def test_normal_masks_are_unchanged_by_the_blank_check(trained, models, small_movie, tmp_path,
                                                       caplog):
    root, _ = trained
    store = MovieStore.open(root / "frames.zarr")
    small = movie_store(tmp_path / "small", small_movie, chunk_frames=16)
    for s in (store, small):
        for mode in ("otsu_frame", "otsu_chunk"):
            caplog.clear()
            on, receipts = infer_all(s, models["shallow-wide"], "shallow-wide",
                                     tmp_path / f"on-{s.path.stem}-{mode}", threshold=mode)
            off, _ = infer_all(s, models["shallow-wide"], "shallow-wide",
                               tmp_path / f"off-{s.path.stem}-{mode}", threshold=mode,
                               min_separation=0)
            np.testing.assert_array_equal(on, off)
            assert on.reshape(len(on), -1).any(axis=1).all()
            assert all(r["blank_frames"] == 0 for r in receipts)
            assert not any("featureless" in r.getMessage() for r in caplog.records)
    # every normal frame's Otsu classes lie far more than MIN_SEPARATION apart
    _, hist = levels(models["shallow-wide"], small_movie, arch=parse_arch("shallow-wide"),
                     cfg=InferConfig(), device="cpu")
    assert min(otsu_split(h)[1] for h in hist) > MIN_SEPARATION + 0.2


def test_only_the_blank_frames_of_a_mixed_movie_are_emptied(trained, models, tmp_path, caplog):
    root, data = trained
    normal = MovieStore.open(root / "frames.zarr").array[:]
    blank = blank_frames(*normal.shape[1:], seed=1)
    # chunks of 4: [n, zeros, n, grey] [n, noise, n, noise] [noise, n]
    order = [("n", 0), ("b", 0), ("n", 1), ("b", 1), ("n", 2), ("b", 2), ("n", 3), ("b", 3),
             ("b", 4), ("n", 4)]
    frames = np.stack([normal[i] if kind == "n" else blank[i] for kind, i in order])
    is_blank = np.array([kind == "b" for kind, _ in order])
    store = movie_store(tmp_path / "mixed", frames, chunk_frames=4)
    model = models["shallow-wide"]
    masks, receipts = infer_all(store, model, "shallow-wide", tmp_path / "on")
    off, _ = infer_all(store, model, "shallow-wide", tmp_path / "off", min_separation=0)
    per_frame = masks.reshape(len(masks), -1).sum(axis=1)
    assert (per_frame[is_blank] == 0).all() and (per_frame[~is_blank] > 0).all()
    np.testing.assert_array_equal(masks[~is_blank], off[~is_blank])
    assert off[is_blank].any()                  # without the check the noise became particles
    assert [r["blank_frames"] for r in receipts] == [2, 2, 1]
    assert sum(r["blank_frames"] for r in receipts) == is_blank.sum()
    text = "\n".join(r.getMessage() for r in caplog.records if "featureless" in r.getMessage())
    assert "frames 1, 3;" in text and "frames 5, 7;" in text and "frames 8;" in text
    # otsu_chunk: the same frames are featureless and left out of the chunk's threshold (half
    # noise frames would otherwise pull it into the noise), so the normal frames keep theirs
    masks, receipts = infer_all(store, model, "shallow-wide", tmp_path / "chunk",
                                threshold="otsu_chunk")
    per_frame = masks.reshape(len(masks), -1).sum(axis=1)
    assert (per_frame[is_blank] == 0).all() and (per_frame[~is_blank] > 0).all()
    assert [r["blank_frames"] for r in receipts] == [2, 2, 1]
    normal_only = movie_store(tmp_path / "normal", frames[~is_blank], chunk_frames=5)
    alone, _ = infer_all(normal_only, model, "shallow-wide", tmp_path / "alone",
                         threshold="otsu_chunk")
    f1 = rates(**pixel_counts(masks[~is_blank] > 0, alone > 0))["f1"]
    assert f1 > 0.95                 # ~ the threshold of the normal frames' chunk on their own


def test_fixed_threshold_has_no_blank_check(models, tmp_path):
    """``fixed``: the user chose the threshold; a constant frame above it stays all particle."""
    frames = blank_frames(32, 40)
    store = movie_store(tmp_path / "blank", frames, chunk_frames=5)
    masks, (receipt,) = infer_all(store, models["single-filter"], "single-filter", tmp_path / "o",
                                  threshold="fixed", min_area_px=0)
    assert receipt["blank_frames"] == 0
    q = MovieStore.open(tmp_path / "o/prob.zarr").array[:]
    np.testing.assert_array_equal(masks, mask_from_levels_stack(q, 127))
    assert masks[0].all()      # the untrained filter's constant response is above 0.5


def mask_from_levels_stack(q, level):
    """The masks ``etemseg infer`` makes at ``level`` (default hysteresis, no area filter)."""
    return np.stack([mask_from_levels(f, level, 0, InferConfig().hysteresis) for f in q])


# ------------------------------------------------------------------ minimum area in nm²

def component_areas(mask):
    """Areas (px) of the 8-connected components of a 2-D mask (scipy, not the kernel)."""
    from scipy import ndimage

    lab, n = ndimage.label(mask, structure=np.ones((3, 3)))
    return np.bincount(lab.ravel(), minlength=n + 1)[1:], lab


def test_min_area_nm2_arithmetic_and_validation():
    cfg = InferConfig(min_area_px=20, min_area_nm2=8.0)
    assert cfg.min_area_px_at(0.5) == 32                   # 8 nm² / 0.25 nm²
    assert cfg.min_area_px_at(0.3) == 89                   # round(88.9)
    assert cfg.min_area_px_at(2.0) == 2
    assert cfg.min_area_px_at(None) == 20                  # uncalibrated: min_area_px
    assert InferConfig(min_area_px=7).min_area_px_at(0.5) == 7   # no nm² value: min_area_px
    assert InferConfig(min_area_nm2=0).min_area_px_at(0.5) == 0
    InferConfig(min_area_nm2=0.0).validate()
    for bad in (-1.0, float("nan"), float("inf"), "8"):
        with pytest.raises(ConfigError, match="infer.min_area_nm2"):
            InferConfig(min_area_nm2=bad).validate()


@pytest.fixture(scope="module")
def calibrated(trained, tmp_path_factory):
    """The trained movie as a store with a pixel size of 0.5 nm (0.25 nm² per px)."""
    root, _ = trained
    raw = MovieStore.open(root / "frames.zarr").array[:]
    return movie_store(tmp_path_factory.mktemp("calibrated") / "cal", raw, chunk_frames=4,
                       pixel_size_nm=0.5)


def test_min_area_nm2_drops_exactly_the_components_below_it(trained, calibrated, models,
                                                           tmp_path):
    model = models["shallow-wide"]
    # without hysteresis, so that the filter is on the components themselves (with it, on the
    # parts above the threshold: test_hysteresis_kernel_is_scipy_labelling)
    every, _ = infer_all(calibrated, model, "shallow-wide", tmp_path / "all", min_area_px=0,
                         hysteresis=1.0)
    areas = np.concatenate([component_areas(m)[0] for m in every])
    px = int(np.median(areas))                  # some components on either side of it
    assert (areas < px).any() and (areas >= px).any() and px != InferConfig().min_area_px
    a = px * 0.25                               # the same area in nm²
    masks, receipts = infer_all(calibrated, model, "shallow-wide", tmp_path / "nm",
                                min_area_nm2=a, hysteresis=1.0)   # min_area_px: default 20
    same, _ = infer_all(calibrated, model, "shallow-wide", tmp_path / "px", min_area_px=px,
                        hysteresis=1.0)
    np.testing.assert_array_equal(masks, same)
    for m, full in zip(masks, every):
        size, lab = component_areas(full)
        keep = np.isin(lab, np.flatnonzero(size >= px) + 1)
        np.testing.assert_array_equal(m, keep)
    assert [(r["min_area_px"], r["min_area_nm2"]) for r in receipts] == [(px, a), (px, a)]
    # the stage records the px value applied and the nm² value in both stores
    from etemseg.cli import main

    out = tmp_path / "stage"
    model_file = trained[0] / "model/model.pt"
    assert main(["--quiet", "infer", str(calibrated.path), str(model_file), str(out),
                 "--min-area-nm2", str(a), "--hysteresis", "1", "--device", "cpu"]) == 0
    for name in ("prob.zarr", "mask.zarr"):
        record = MovieStore.open(out / name).meta["infer"]
        assert record["min_area_px"] == px and record["min_area_nm2"] == a
    np.testing.assert_array_equal(MovieStore.open(out / "mask.zarr").array[:], masks)


def test_uncalibrated_min_area_nm2_falls_back_to_px_with_one_warning(trained, models, tmp_path,
                                                                    caplog):
    root, _ = trained
    store = MovieStore.open(root / "frames.zarr")
    assert store.pixel_size_nm is None and store.n_chunks == 2
    model = models["shallow-wide"]
    ref, _ = infer_all(store, model, "shallow-wide", tmp_path / "px", min_area_px=5)
    caplog.clear()
    masks, receipts = infer_all(store, model, "shallow-wide", tmp_path / "nm", min_area_px=5,
                                min_area_nm2=100.0)
    np.testing.assert_array_equal(masks, ref)
    assert [(r["min_area_px"], r["min_area_nm2"]) for r in receipts] == [(5, 100.0)] * 2
    warnings = [r.getMessage() for r in caplog.records if "min_area_nm2 = " in r.getMessage()]
    assert len(warnings) == 1, warnings                 # once, not once per chunk
    assert "no pixel size" in warnings[0] and "min_area_px = 5 px" in warnings[0]
