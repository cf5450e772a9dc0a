"""CUDA against CPU on a tiny movie: the GPU path (uint16 upload, normalisation on the device,
float16 autocast, quantisation and histograms on the device) gives the CPU's masks. Skipped where
there is no CUDA device (CI has none; run it on a GPU node: ``pytest -m gpu``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from etemseg.cli import main
from etemseg.synth import SynthParams, write_synthetic_movie

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.fixture(scope="module")
def movie(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu")
    write_synthetic_movie(root / "synth", SynthParams(frames=8, height=256, width=256, seed=4),
                          progress=False)
    assert main(["-q", "ingest", str(root / "synth/frames"), str(root / "frames.zarr"),
                 "--chunk-frames", "4"]) == 0
    assert main(["-q", "pseudolabel", str(root / "frames.zarr"), str(root / "pseudo.zarr")]) == 0
    assert main(["-q", "train", "--pair", str(root / "frames.zarr"), str(root / "pseudo.zarr"),
                 "--out", str(root / "model"), "--model", "unet4-norm", "--epochs", "2",
                 "--crop-px", "128", "--device", "cpu"]) == 0
    return root


@pytest.mark.parametrize("precision", ["float16", "float32"])
def test_cuda_masks_equal_cpu_masks(movie, precision):
    out = {}
    for device in ("cpu", "cuda"):
        folder = movie / f"{device}-{precision}"
        assert main(["-q", "infer", str(movie / "frames.zarr"), str(movie / "model/model.pt"),
                     str(folder), "--device", device, "--gpu-precision", precision]) == 0
        out[device] = (zarr.open_array(folder / "prob.zarr/0")[:].astype(int),
                       zarr.open_array(folder / "mask.zarr/0")[:] > 0)
    (p_cpu, m_cpu), (p_gpu, m_gpu) = out["cpu"], out["cuda"]
    assert np.abs(p_cpu - p_gpu).max() <= (2 if precision == "float16" else 1)
    union = (m_cpu | m_gpu).sum()
    assert union > 0 and (m_cpu & m_gpu).sum() / union >= 0.999
