"""Probability levels: the uint8 quantisation of particle probabilities and thresholds on it.

Inference stores the particle probability ``p`` as ``q = round(255 p)`` (uint8); a pixel is
particle at threshold level ``l`` when ``q > l``. Otsu thresholds come from the 256-bin histogram
of the levels, so they are exact (no binning). Used by inference (masks), evaluation (sweeps,
Otsu thresholds) and the comparison figures; NumPy only (no torch), so the light commands can
use it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["EMPTY_LEVEL", "dequantise", "hysteresis_levels", "level_histogram", "otsu_level",
           "otsu_split", "quantise", "threshold_level"]

#: Threshold level of an empty mask (``q > 255`` is never true).
EMPTY_LEVEL = 255


def quantise(prob: np.ndarray) -> np.ndarray:
    """Probability [0, 1] -> uint8 0..255."""
    return np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8)


def dequantise(q: np.ndarray) -> np.ndarray:
    """uint8 0..255 -> probability float32."""
    return q.astype(np.float32) / 255.0


def level_histogram(q: np.ndarray) -> np.ndarray:
    """256-bin histogram (int64) of uint8 levels ``q`` (any shape): bin ``l`` counts level ``l``."""
    return np.bincount(np.asarray(q).ravel(), minlength=256)


def threshold_level(threshold) -> np.ndarray:
    """uint8 level(s) of probability threshold(s): ``p > t`` is ``q > floor(255 t)``.

    A tiny tolerance absorbs float error in ``255 t`` (``0.6 * 255`` is 152.99999...).
    Thresholds below 0 give level -1 (everything positive), above 1 give 255 (nothing).
    """
    t = np.asarray(threshold, dtype=np.float64)
    return np.clip(np.floor(t * 255.0 + 1e-6), -1, 255).astype(np.int64)


def otsu_split(hist: np.ndarray) -> tuple[int, float]:
    """Otsu threshold of a 256-bin histogram of uint8 probabilities and how far apart its two
    classes lie: ``(level, separation)``, mask is ``q > level``.

    The probabilities are stored as 256 levels, so Otsu on their histogram is exact (no binning).
    ``separation`` is the mean probability of the upper class minus that of the lower one
    (0..1); a histogram with fewer than two occupied levels gives ``(127, 0.0)`` (p > 0.5).
    """
    hist = np.asarray(hist, dtype=np.float64)
    if np.count_nonzero(hist) < 2:
        return 127, 0.0
    levels = np.arange(hist.size)
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * levels)
    mu0 = m0 / np.where(w0 > 0, w0, 1)
    mu1 = (m0[-1] - m0) / np.where(w1 > 0, w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    between[(w0 == 0) | (w1 == 0)] = -1
    level = int(np.argmax(between))
    return level, float(mu1[level] - mu0[level]) / 255.0


def otsu_level(hist: np.ndarray) -> int:
    """Otsu threshold of a 256-bin histogram of uint8 probabilities: mask is ``q > level``.

    A histogram with fewer than two occupied levels gives 127 (p > 0.5). See :func:`otsu_split`.
    """
    return otsu_split(hist)[0]


def hysteresis_levels(level: int, hysteresis: float) -> tuple[int, int]:
    """``(low, mid)`` of a threshold ``level`` under hysteresis (see
    :func:`etemseg.morphology.above_level_filtered`): the lenient level ``floor(hysteresis *
    level)`` and the level over which pieces of one particle join, midway between it and
    ``level``, ``floor((1 + hysteresis) / 2 * level)``.  Both are ``level`` without hysteresis
    (``hysteresis`` >= 1) and for an empty mask's :data:`EMPTY_LEVEL`, which nothing exceeds."""
    h = min(float(hysteresis), 1.0)
    if h >= 1 or level >= EMPTY_LEVEL:
        return int(level), int(level)
    return (int(np.floor(h * level + 1e-6)), int(np.floor((1.0 + h) / 2.0 * level + 1e-6)))
