"""Where models run: the ``device`` setting of training and inference (auto, cpu, cuda)."""

from __future__ import annotations

import torch

from etemseg.errors import ConfigError

__all__ = ["pick_device"]


def pick_device(name: str = "auto") -> torch.device:
    """CUDA when present (or asked), else the CPU.

    Raises :class:`ConfigError` when ``cuda`` is asked for and no CUDA device is available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but no CUDA device is available")
    return torch.device(name)
