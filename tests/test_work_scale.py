"""Working pixel size of the networks: frames binned by an integer factor before the network,
logits upsampled back; the factor from the pixel size, recorded in the model file, used by
inference (etemseg.nn.models.WorkScale, docs/training.md)."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr

from etemseg.cli import main
from etemseg.errors import ConfigError, InputFileError
from etemseg.io.store import MovieStore
from etemseg.nn.checkpoint import load_model, normalise_frames, work_factor_of_meta
from etemseg.nn.inference import InferConfig, prepare_model, probabilities, tiles
from etemseg.nn.models import (WORK_PIXEL_NM, WorkScale, build_model, halo, parse_arch,
                               size_multiple, tiling, with_work_factor, work_factor,
                               work_factor_of)
from etemseg.nn.training import (TrainConfig, Trainer, TrainingData, fingerprint,
                                 masks_from_probabilities, resolve_crop, resolve_work_factor,
                                 sample_batch, split_frames)
from etemseg.stages.infer import InferStage
from etemseg.stages.ingest import ingest
from etemseg.stages.train import train

from .test_train import label_store


# ------------------------------------------------------------------ the rule

def test_work_factor_from_the_pixel_size():
    assert WORK_PIXEL_NM == 0.18
    # the benchmark's three pixel sizes: only the finest is binned, to 0.18 nm/px
    assert [work_factor(ps) for ps in (0.06, 0.18, 0.36)] == [3, 1, 1]
    assert work_factor(0.09) == 2 and work_factor(0.0899) == 2 and work_factor(0.091) == 1
    assert work_factor(0.1) == 1 and work_factor(0.02) == 9 and work_factor(0.005) == 36
    assert 0.3 / 0.1 < 3 and work_factor(0.1, 0.3) == 3        # not floor(2.9999999999999996)
    assert work_factor(0.06, 0.36) == 6 and work_factor(0.06, 0.12) == 2
    # off, or no pixel size: the movie's pixels
    for ps, work in ((0.06, 0), (0.06, None), (None, 0.18), (0, 0.18)):
        assert work_factor(ps, work) == 1


def calibrated(data: TrainingData, *sizes, scale=()) -> TrainingData:
    return dataclasses.replace(data, pixel_sizes_nm=list(sizes),
                               scale_pixel_sizes_nm=list(scale))


def blobs_movie(n=6, h=96, w=120, seed=0, radius=(12, 20)):
    """Raw uint16 frames of dark disks 24-40 px across (large, as at 0.06 nm/px) on a noisy
    background, and their 0/1 labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    images, labels = [], []
    for _ in range(n):
        lab = np.zeros((h, w), np.uint8)
        for _ in range(3):
            cy, cx, r = rng.uniform(15, h - 15), rng.uniform(15, w - 15), rng.uniform(*radius)
            lab[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 1
        images.append(rng.poisson(np.where(lab, 120, 200)).astype(np.uint16))
        labels.append(lab)
    return np.stack(images), np.stack(labels)


def blobs_data(pixel_size_nm=0.06, **kw) -> TrainingData:
    images, labels = blobs_movie(**kw)
    train_idx, val_idx = split_frames(len(images), TrainConfig())
    return TrainingData(normalise_frames(images), labels, train_idx, val_idx,
                        pixel_sizes_nm=[pixel_size_nm])


def test_resolve_work_factor_of_the_training_movies(caplog):
    data = blobs_data()
    cfg = TrainConfig()
    assert resolve_work_factor(cfg, calibrated(data, 0.06)) == 3
    assert resolve_work_factor(cfg, calibrated(data, 0.18)) == 1
    assert resolve_work_factor(cfg, calibrated(data, 0.36)) == 1
    assert resolve_work_factor(TrainConfig(work_pixel_nm=0), calibrated(data, 0.06)) == 1
    assert resolve_work_factor(TrainConfig(work_pixel_nm=0.36), calibrated(data, 0.06)) == 6
    # several movies: no movie's working pixel coarser than work_pixel_nm (the coarsest's)
    with caplog.at_level(logging.INFO, logger="etemseg.nn.training"):
        assert resolve_work_factor(cfg, calibrated(data, 0.06, 0.09), verbose=True) == 2
    assert any("using 2" in r.getMessage() for r in caplog.records)
    assert resolve_work_factor(cfg, calibrated(data, 0.06, 0.18)) == 1
    # uncalibrated: the pseudo-labels' scale estimate, else factor 1
    assert resolve_work_factor(cfg, calibrated(data, None)) == 1
    assert resolve_work_factor(cfg, calibrated(data)) == 1
    assert resolve_work_factor(cfg, calibrated(data, None, scale=[0.06])) == 3
    assert resolve_work_factor(cfg, calibrated(data, 0.06, None, scale=[0.06, None])) == 1


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "0.18", None])
def test_work_pixel_nm_is_validated(bad):
    with pytest.raises(ConfigError, match="train.work_pixel_nm: invalid value"):
        TrainConfig(work_pixel_nm=bad).validate()
    TrainConfig(work_pixel_nm=0).validate()


# ------------------------------------------------------------------ the wrapper

def random_model(name, seed=0):
    torch.manual_seed(seed)
    model = build_model(name)
    model.train()             # non-trivial BatchNorm statistics, so folding is exercised
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, 1, 64, 64))
    return model.eval()


@pytest.mark.parametrize("shape", [(96, 120), (100, 131), (7, 5), (1, 1)])
def test_work_scale_bins_runs_and_upsamples_to_the_full_resolution(shape):
    net = random_model("unet4-norm")
    model = with_work_factor(net, 3)
    assert isinstance(model, WorkScale) and work_factor_of(model) == 3
    assert with_work_factor(net, 1) is net and work_factor_of(net) == 1
    x = torch.randn(2, 1, *shape)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 2, *shape)
        # the same as binning (partial cells at the end: the mean of what is there), the
        # network, bilinear x3 with pixel centres aligned, crop
        hc, wc = -(-shape[0] // 3), -(-shape[1] // 3)
        binned = torch.zeros(2, 1, hc, wc)
        for i in range(hc):
            for j in range(wc):
                binned[:, :, i, j] = x[:, :, 3 * i:3 * i + 3, 3 * j:3 * j + 3].mean((-2, -1))
        z = F.interpolate(net(binned), size=(3 * hc, 3 * wc), mode="bilinear",
                          align_corners=False)[:, :, :shape[0], :shape[1]]
    torch.testing.assert_close(out, z, atol=1e-5, rtol=1e-5)


def test_work_scale_is_the_network_to_its_state_and_attributes():
    sf = build_model("single-filter")
    model = WorkScale(sf, 2)
    assert list(model.state_dict()) == list(sf.state_dict()) == ["conv.weight", "conv.bias"]
    other = build_model("single-filter")
    WorkScale(other, 4).load_state_dict(model.state_dict())
    assert torch.equal(other.kernel, sf.kernel) and torch.equal(model.kernel, sf.kernel)
    assert model.cfg == sf.cfg and model.bias == sf.bias
    assert sum(p.numel() for p in model.parameters()) == 82
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ConfigError, match="work factor"):
            WorkScale(build_model("single-filter"), bad)
    with pytest.raises(ConfigError, match="already"):
        with_work_factor(model, 2)
    with pytest.raises(AttributeError):
        model.no_such_attribute


def predict(model, frames, arch, max_tile_px):
    cfg = InferConfig(device="cpu", max_tile_px=max_tile_px, batch_size=2)
    batches = (frames[b:b + 2] for b in range(0, len(frames), 2))
    return np.concatenate([p.numpy() for p in probabilities(model, batches, arch=arch, cfg=cfg,
                                                            device="cpu")])


@pytest.mark.parametrize("name, factor", [("unet4-norm", 3), ("unet4-norm", 2),
                                          ("shallow-wide", 3), ("unet3", 4)])
def test_tiled_equals_whole_frame_at_a_work_factor(name, factor):
    arch = parse_arch(name)
    frames = np.random.default_rng(0).poisson(200, (2, 353, 331)).astype(np.uint16)
    multiple, margin = tiling(arch, factor)
    assert multiple == size_multiple(arch) * factor and margin >= halo(arch) * factor
    tile = 2 * -(-margin // multiple) * multiple + -(-96 // multiple) * multiple
    assert len(tiles(353, tile, multiple, margin)) > 1 and len(tiles(331, tile, multiple,
                                                                    margin)) > 1
    for optimised in (False, True):
        model = prepare_model(with_work_factor(random_model(name), factor),
                              torch.device("cpu"), optimised)
        whole = predict(model, frames, arch, 0)
        tiled = predict(model, frames, arch, tile)
        assert whole.shape == frames.shape                       # full resolution
        np.testing.assert_allclose(tiled, whole, atol=1e-5)
    # and not what the bare network gives (the factor changes the result)
    bare = predict(prepare_model(random_model(name), torch.device("cpu"), False), frames, arch, 0)
    assert np.abs(bare - whole).max() > 1e-2


def test_tiling_at_factor_one_is_the_network_halo():
    for name in ("unet4-norm", "shallow-wide", "unet3"):
        assert tiling(name) == tiling(name, 1) == (size_multiple(name), halo(name))


# ------------------------------------------------------------------ training and model files

FAST = dict(model="unet3", epochs=2, batch_size=4, lr=3e-3, crop_px=32, samples_per_epoch=8,
            device="cpu", seed=1, split="time_blocks", block_frames=2)


def test_training_crops_are_crop_px_working_pixels():
    data = blobs_data()
    cfg = TrainConfig(**FAST)
    x, y = sample_batch(data, cfg, torch.Generator().manual_seed(0), factor=3)
    assert x.shape == (4, 1, 96, 96) and y.shape == (4, 96, 96)
    # crop_nm: the crops cover crop_nm, in working pixels rounded to the network's multiple
    got = resolve_crop(TrainConfig(model="unet4-norm", crop_nm=23.04), data)   # at 0.06 nm/px
    assert got.crop_px == 128                        # 23.04 nm / 0.18 nm = 128 working px
    assert resolve_crop(got, data) == got
    off = resolve_crop(TrainConfig(model="unet4-norm", crop_nm=23.04, work_pixel_nm=0), data)
    assert off.crop_px == 384


@pytest.fixture(scope="module")
def fine(tmp_path_factory):
    """A unet3 trained on a movie at 0.06 nm/px (work factor 3): (data, model folder, meta)."""
    data = blobs_data()
    folder = tmp_path_factory.mktemp("fine") / "model"
    meta = train(data, TrainConfig(**FAST), folder, progress=False)
    return data, folder, meta


def test_model_file_records_the_factor_and_loads_at_it(fine):
    data, folder, meta = fine
    assert meta["work_scale"] == {"factor": 3, "work_pixel_nm": 0.18,
                                  "working_pixel_sizes_nm": [pytest.approx(0.18)],
                                  "crop_px": 96}
    blob = torch.load(folder / "model.pt", weights_only=True)
    assert work_factor_of_meta(blob) == 3
    # the weights are the network's: they fit the architecture whatever the factor
    assert set(blob["state_dict"]) == set(build_model("unet3").state_dict())
    model, meta2 = load_model(folder / "model.pt", expect="unet3")
    assert isinstance(model, WorkScale) and model.factor == 3
    assert meta2["work_scale"]["factor"] == 3
    x = torch.from_numpy(data.images[:2].astype(np.float32))[:, None]
    with torch.no_grad():
        assert model(x).shape == (2, 2, 96, 120)
    ckpt = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert ckpt["fingerprint"]["work_factor"] == 3
    assert fingerprint(data, TrainConfig(**FAST))["work_factor"] == 3
    # another pixel size is another factor: another fingerprint (no resume across factors)
    assert fingerprint(calibrated(data, 0.18), TrainConfig(**FAST))["work_factor"] == 1


def test_trainer_model_is_the_model_file_model(fine):
    """What training validated is what inference runs: the same wrapper at the same factor."""
    data, folder, _ = fine
    trainer = Trainer(data, TrainConfig(**FAST), checkpoint=folder / "checkpoint.pt")
    run = trainer.fit()                                   # finished: restored, nothing trained
    assert trainer.work_factor == 3 and work_factor_of(run.model) == 3
    model, _ = load_model(folder / "model.pt")
    run.model.load_state_dict(torch.load(folder / "model.pt", weights_only=True)["state_dict"])
    x = torch.from_numpy(data.images[:2].astype(np.float32))[:, None]
    with torch.no_grad():
        torch.testing.assert_close(run.model.eval()(x), model(x))


def edited_model(src, dst, edit):
    blob = torch.load(src, weights_only=True)
    edit(blob)
    torch.save(blob, dst)
    return dst


def test_model_file_without_work_scale_is_factor_one(fine, tmp_path):
    _, folder, _ = fine
    old = edited_model(folder / "model.pt", tmp_path / "old.pt",
                       lambda b: b.pop("work_scale"))
    model, meta = load_model(old)
    assert not isinstance(model, WorkScale) and work_factor_of(model) == 1
    assert work_factor_of_meta(meta) == 1
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 50, 70)).shape == (1, 2, 50, 70)


@pytest.mark.parametrize("value", [{"factor": 0}, {"factor": "3"}, {"factor": 2.5},
                                   {"factor": True}, {"factor": 65}, {}, 3, None])
def test_invalid_work_scale_is_refused_naming_the_file(fine, tmp_path, value):
    _, folder, _ = fine
    bad = edited_model(folder / "model.pt", tmp_path / "bad.pt",
                       lambda b: b.__setitem__("work_scale", value))
    if value is None:                    # an explicit None is "no entry": factor 1
        assert work_factor_of(load_model(bad)[0]) == 1
        return
    with pytest.raises(InputFileError, match="bad.pt.*work_scale"):
        load_model(bad)


def test_infer_runs_the_model_at_its_factor_with_full_resolution_masks(fine, tmp_path):
    data, folder, _ = fine
    images, labels = blobs_movie()
    dump = tmp_path / "dump"
    dump.mkdir()
    for i, frame in enumerate(images):
        np.save(dump / f"f_{i}.npy", frame)
    frames = ingest(dump, tmp_path / "frames.zarr", chunk_frames=3, pixel_size_nm=0.06,
                    progress=False)
    # the same frames through the engine (the factor comes from the model itself)
    model, meta = load_model(folder / "model.pt")
    fast = prepare_model(model, torch.device("cpu"), True)
    expected = predict(fast, images, parse_arch(meta["name"]), 0)
    for out, extra in (("whole", []), ("tiled", ["--max-tile-px", "64"])):
        assert main(["--quiet", "infer", str(frames.path), str(folder / "model.pt"),
                     str(tmp_path / out), "--device", "cpu", "--min-area-px", "5",
                     *extra]) == 0
        prob = zarr.open_array(tmp_path / out / "prob.zarr/0")[:]
        masks = zarr.open_array(tmp_path / out / "mask.zarr/0")[:]
        assert prob.shape == masks.shape == images.shape            # full resolution
        np.testing.assert_allclose(prob / 255.0, expected, atol=1 / 255 + 1e-6)
        store = MovieStore.open(tmp_path / out / "mask.zarr")
        assert store.meta["work_factor"] == 3
        assert store.meta["infer"]["min_area_px"] == 45          # 5 working px = 5 x 3 x 3 px
    stage = InferStage(frames.path, folder / "model.pt", tmp_path / "whole",
                       cfg=InferConfig(device="cpu"))
    assert stage.attrs["work_factor"] == 3
    receipt = stage.run_chunk(1).to_dict()
    assert (receipt["work_factor"], receipt["min_area_px"]) == (3, 180)


def test_minimum_area_is_counted_in_working_pixels():
    cfg = InferConfig()
    assert cfg.min_area_px_at(0.06) == cfg.min_area_px_at(None) == 20
    assert cfg.min_area_px_at(0.06, 3) == cfg.min_area_px_at(None, 3) == 180
    # a physical minimum area stays physical, whatever the factor
    assert InferConfig(min_area_nm2=0.972).min_area_px_at(0.06, 3) == 270
    assert InferConfig(min_area_nm2=0.972).min_area_px_at(None, 3) == 180
    prob = np.zeros((1, 60, 60), np.float32)
    prob[0, 5:15, 5:15] = 0.9            # 100 px: 11 working px at factor 3
    prob[0, 30:50, 30:50] = 0.9          # 400 px: 44 working px
    assert masks_from_probabilities(prob).sum() == 500
    assert masks_from_probabilities(prob, 3).sum() == 400


def test_train_cli_option_and_uncalibrated_movies(tmp_path, caplog):
    images, labels = blobs_movie()
    dump = tmp_path / "dump"
    dump.mkdir()
    for i, frame in enumerate(images):
        np.save(dump / f"f_{i}.npy", frame)
    fine = ingest(dump, tmp_path / "fine.zarr", chunk_frames=3, pixel_size_nm=0.06,
                  progress=False)
    plain = ingest(dump, tmp_path / "plain.zarr", chunk_frames=3, progress=False)
    options = ["--model", "unet3", "--epochs", "1", "--batch-size", "2", "--crop-px", "32",
               "--samples-per-epoch", "2", "--device", "cpu", "--split", "time_blocks",
               "--block-frames", "2"]
    cases = {"cli-off": (fine, ["--work-pixel-nm", "0"], 1),
             "cli-036": (fine, ["--work-pixel-nm", "0.36"], 6),
             "uncal": (plain, [], 1),
             "uncal-est": (plain, [], 2)}
    for name, (frames, extra, factor) in cases.items():
        attrs = {"scale": {"effective_pixel_size_nm": 0.09}} if name == "uncal-est" else {}
        pseudo = label_store(frames, tmp_path / f"{name}-pseudo.zarr", labels, **attrs)
        assert main(["--quiet", "train", "--pair", str(frames.path), str(pseudo), "--out",
                     str(tmp_path / name), *options, *extra]) == 0
        meta = torch.load(tmp_path / name / "model.pt", weights_only=True)
        assert meta["work_scale"]["factor"] == factor, name
        assert work_factor_of(load_model(tmp_path / name / "model.pt")[0]) == factor


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("precision", ["float16", "float32"])
def test_cuda_equals_cpu_at_a_work_factor(precision):
    """The GPU streaming path (uint16 upload, normalisation on the device, autocast) runs the
    binned model as the CPU does (``pytest -m gpu`` on a GPU node)."""
    arch = parse_arch("unet4-norm")
    frames = np.random.default_rng(2).poisson(40, (4, 301, 257)).astype(np.uint16)
    net = with_work_factor(random_model("unet4-norm"), 3)
    out = {}
    for device in ("cpu", "cuda"):
        cfg = InferConfig(device=device, gpu_precision=precision, max_tile_px=160, batch_size=2)
        model = prepare_model(net, torch.device(device), True)
        batches = (frames[b:b + 2] for b in range(0, len(frames), 2))
        out[device] = np.concatenate([p.cpu().numpy() for p in probabilities(
            model, batches, arch=arch, cfg=cfg, device=device)])
    assert out["cuda"].shape == frames.shape
    np.testing.assert_allclose(out["cuda"], out["cpu"],
                               atol=1e-2 if precision == "float16" else 1e-4)
