"""Model files: their format, loading and saving, and the input normalisation they record.

The model file (``model.pt``, written by ``etemseg train``) holds plain tensors and JSON-like
metadata only, so it loads with ``torch.load(path, weights_only=True)``: state dict,
architecture, input normalisation (:data:`NORMALISATION`), training config, per-epoch metrics
and package versions. :func:`load_model` refuses, naming the file, anything else.

A model trained at a working pixel size coarser than its movies' (frames binned ``f x f`` before
the network, :class:`etemseg.nn.models.WorkScale`) records ``work_scale`` (``factor`` and how it
was chosen); :func:`load_model` returns the network wrapped at that factor, so the model always
runs at the factor it was trained at. A file without the entry (written before it existed) is a
model at factor 1. The weights are the network's alone either way.

Frames enter a model normalised per frame (:func:`normalise_tensor`, the one implementation of
:data:`NORMALISATION`): training normalises on the host (:func:`normalise_frames`), inference on
the device from the raw frames.
"""

from __future__ import annotations

import io
import pickle
import platform
from pathlib import Path

import numpy as np
import torch

from etemseg import __version__
from etemseg.errors import ConfigError, InputFileError
from etemseg.io.atomic import atomic_path
from etemseg.nn.models import (ArchConfig, build_model, canonical_name, parse_arch,
                               with_work_factor)

__all__ = ["MAX_WORK_FACTOR", "MODEL_FORMAT", "MODEL_KEYS", "NORMALISATION", "load_model",
           "model_file_bytes", "normalise_frames", "normalise_tensor", "one_line", "save_model",
           "versions", "work_factor_of_meta"]

#: How frames are scaled before they enter a model (stored in every model file; inference uses it).
NORMALISATION = {"method": "per_frame_standardise",
                 "description": "(x - mean) / std per frame over finite pixels; non-finite -> 0"}


def _all_finite(x: torch.Tensor) -> bool:
    if not x.is_floating_point():
        return True
    if x.device.type == "cpu":   # numpy's check is several times faster on the CPU
        return bool(np.isfinite(x.numpy()).all())
    return bool(torch.isfinite(x).all())


def normalise_tensor(x: torch.Tensor) -> torch.Tensor:
    """Per-frame standardisation of a (T, H, W) tensor, on whatever device it lives.

    Returns float32 ``(x - mean) / std`` with mean and std of each frame's finite pixels, std 0
    taken as 1, non-finite pixels (and all-non-finite frames) 0. The one implementation of
    :data:`NORMALISATION`: training (via :func:`normalise_frames`) and inference (on the GPU,
    from the raw frames) both call it.
    """
    if x.ndim == 2:
        x = x[None]
    if _all_finite(x):   # integer frames always: one var_mean pass, one fused scale
        x = x.to(torch.float32)
        var, mean = torch.var_mean(x, dim=(1, 2), correction=0)
        std = torch.sqrt(var)
        scale = torch.where(std > 0, 1.0 / std, 1.0)
        return torch.sub(x, mean[:, None, None]).mul_(scale[:, None, None])
    x = x.to(torch.float32)
    finite = torch.isfinite(x)
    n = finite.sum(dim=(1, 2), dtype=torch.float64)
    xz = torch.where(finite, x, 0.0)
    mean = xz.sum(dim=(1, 2), dtype=torch.float64) / n.clamp(min=1)
    d = torch.where(finite, x - mean.to(torch.float32)[:, None, None], 0.0)
    std = torch.sqrt(torch.square(d).sum(dim=(1, 2), dtype=torch.float64) / n.clamp(min=1))
    std = torch.where(std > 0, std, 1.0).to(torch.float32)
    return torch.where(finite, d / std[:, None, None], 0.0)


def normalise_frames(frames: np.ndarray) -> np.ndarray:
    """Per-frame standardisation of (T, H, W) frames to float32 (non-finite pixels become 0).

    Per-frame scaling removes dose and gain differences between movies and frames. Frame by
    frame through :func:`normalise_tensor`, so temporary memory stays a few frames.
    """
    x = np.asarray(frames)
    if x.ndim == 2:
        x = x[None]
    out = np.empty(x.shape, np.float32)
    for i, frame in enumerate(x):
        out[i] = normalise_tensor(torch.from_numpy(np.ascontiguousarray(frame))).numpy()[0]
    return out


#: Model file layout (``format`` entry) and the entries :func:`load_model` requires.
MODEL_FORMAT = "etemseg-model-1"
MODEL_KEYS = ("name", "arch", "normalisation", "state_dict")


def versions() -> dict:
    """Versions of the packages a model file was written with (its ``versions`` entry)."""
    import numpy
    import skimage
    import zarr

    return {"etemseg": __version__, "torch": str(torch.__version__), "numpy": numpy.__version__,
            "zarr": zarr.__version__, "scikit-image": skimage.__version__,
            "python": platform.python_version()}


def one_line(exc: BaseException) -> str:
    """``Class: first sentence of the message`` (at most 200 characters), for one-line errors."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return exc.__class__.__name__
    return f"{exc.__class__.__name__}: {lines[0].split('. ')[0][:200]}"


def _misfit(expected: dict, state: dict) -> str | None:
    """How a state dict differs from a model's (missing, unexpected, wrongly shaped entries)."""
    def some(keys: list[str]) -> str:
        return keys[0] + (f" and {len(keys) - 1} more" if len(keys) > 1 else "")

    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shaped = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"no {some(missing)}")
    if unexpected:
        problems.append(f"unexpected {some(unexpected)}")
    if shaped:
        key = shaped[0]
        problems.append(f"{key} has shape {tuple(state[key].shape)}, not "
                        f"{tuple(expected[key].shape)}")
    return "; ".join(problems) or None


def _read_model_blob(path: Path) -> dict:
    """The dict in a model file, with every entry of :data:`MODEL_KEYS`; else InputFileError."""
    if not path.exists():
        raise InputFileError(path, "model file does not exist; train it first")
    if not path.is_file():
        raise InputFileError(path, "is not a file; give the model.pt written by `etemseg train`")
    if path.stat().st_size == 0:
        raise InputFileError(path, "empty model file (0 bytes); retrain or copy it again")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputFileError(path, "not a model file (not a PyTorch file of plain tensors and "
                                   "data)") from exc
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds on damaged files
        raise InputFileError(path, f"cannot be read as a model file; truncated or damaged? "
                                   f"({one_line(exc)})") from exc
    if not isinstance(blob, dict) or blob.get("format") != MODEL_FORMAT:
        raise InputFileError(path, f"not an etemseg model file (no 'format: {MODEL_FORMAT}')")
    missing = [key for key in MODEL_KEYS if key not in blob]
    if missing:
        raise InputFileError(path, f"incomplete model file: no {', '.join(missing)}")
    return blob


def _model_arch(path: Path, blob: dict) -> ArchConfig:
    """The architecture of a model file, consistent with its name; else InputFileError."""
    try:
        arch = ArchConfig.from_dict(blob["arch"])
        named = parse_arch(blob["name"]) if isinstance(blob["name"], str) else None
    except (ConfigError, TypeError, ValueError) as exc:
        raise InputFileError(path, f"invalid architecture in the model file ({exc})") from exc
    if named != arch:
        raise InputFileError(path, f"name {blob['name']!r} does not match its architecture "
                                   f"{canonical_name(arch)}")
    norm = blob["normalisation"]
    if not isinstance(norm, dict) or norm.get("method") != NORMALISATION["method"]:
        raise InputFileError(path, f"unknown input normalisation {norm!r:.200}")
    return arch


#: Largest working factor a model file may record (a 64 x 64 bin is far past any sensible use).
MAX_WORK_FACTOR = 64


def work_factor_of_meta(meta: dict, path: str | Path = "model file") -> int:
    """The working factor a model file records (``work_scale.factor``); 1 for files without
    ``work_scale`` (written before it existed). Anything but an integer in
    1..:data:`MAX_WORK_FACTOR` raises :class:`InputFileError` naming ``path``."""
    scale = meta.get("work_scale")
    if scale is None:
        return 1
    factor = scale.get("factor") if isinstance(scale, dict) else None
    if (isinstance(factor, bool) or not isinstance(factor, int)
            or not 1 <= factor <= MAX_WORK_FACTOR):
        raise InputFileError(path, f"invalid work_scale {scale!r:.200} (expected a factor, an "
                                   f"integer in 1..{MAX_WORK_FACTOR})")
    return factor


def _load_weights(path: Path, model: torch.nn.Module, state, arch: ArchConfig) -> None:
    """Load ``state`` into ``model``, refusing misfit and non-finite weights (InputFileError)."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise InputFileError(path, "state_dict is not a mapping of names to tensors")
    misfit = _misfit(model.state_dict(), state)
    if misfit:
        raise InputFileError(path, f"weights do not fit architecture {canonical_name(arch)}: "
                                   f"{misfit}")
    try:
        model.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - RuntimeError mostly; any misfit is the file's
        raise InputFileError(path, f"weights do not fit architecture {canonical_name(arch)} "
                                   f"({one_line(exc)})") from exc
    bad = [k for k, v in state.items() if not _all_finite(v.detach())]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise InputFileError(path, f"non-finite weights (NaN or inf) in {bad[0]}{more}; the "
                                   "training diverged, retrain (e.g. with a lower --lr)")


def load_model(path: str | Path, *, expect: str | ArchConfig | None = None,
               device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Load a model file written by :func:`etemseg.nn.training.train` (``weights_only=True``) in
    eval mode.

    Parameters
    ----------
    path : path
        The model file (``model.pt``).
    expect : str or ArchConfig, optional
        Refuse a file of another architecture.
    device : str or torch.device
        Where the model goes.

    Returns
    -------
    model, meta
        The model on ``device``, wrapped at the working factor the file records
        (:func:`work_factor_of_meta`, :class:`etemseg.nn.models.WorkScale`; the bare network at
        factor 1), and the file's metadata (without the weights).

    Raises
    ------
    InputFileError
        Naming the file, when it is missing, empty, truncated, not a model file, lacks an entry,
        holds an invalid or unexpected architecture, weights that do not fit it, non-finite
        weights or an invalid working factor.
    """
    path = Path(path)
    blob = _read_model_blob(path)
    arch = _model_arch(path, blob)
    factor = work_factor_of_meta(blob, path)
    if expect is not None:
        want = parse_arch(expect) if isinstance(expect, str) else expect
        if want != arch:
            raise InputFileError(path, f"holds architecture {canonical_name(arch)}, "
                                 f"not {canonical_name(want)}")
    try:
        model = build_model(arch)
    except Exception as exc:  # noqa: BLE001 - values from_dict accepted but the model cannot use
        raise InputFileError(path, f"invalid architecture {canonical_name(arch)} "
                                   f"({one_line(exc)})") from exc
    _load_weights(path, model, blob["state_dict"], arch)
    meta = {k: v for k, v in blob.items() if k != "state_dict"}
    return with_work_factor(model, factor).to(device).eval(), meta


def model_file_bytes(meta: dict, state: dict) -> torch.Tensor:
    """A model file (``meta`` and the weights ``state``) serialised once, as a uint8 tensor.

    ``torch.save`` is not byte for byte repeatable; a finished training run keeps these bytes
    (in its checkpoint too), so that every later :func:`save_model` writes the same file.
    """
    buffer = io.BytesIO()
    torch.save({**meta, "state_dict": state}, buffer)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def save_model(blob: torch.Tensor, path: str | Path) -> None:
    """Write the model file ``blob`` (from :func:`model_file_bytes`) to ``path`` atomically."""
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(blob.numpy().tobytes())
