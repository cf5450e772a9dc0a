"""Segmentation scores against ground truth."""

import numpy as np
import pytest

from etemseg.analysis.scoring import match_particles, rates, score_frames


def disk_labels(shape, disks):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    lab = np.zeros(shape, np.uint32)
    for pid, (y, x, r) in disks.items():
        lab[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = pid
    return lab


def test_perfect_prediction():
    truth = disk_labels((40, 60), {3: (10, 10, 5), 7: (25, 40, 8)})
    s = score_frames([(truth > 0, truth)], pixel_size_nm=0.2)
    assert s["pixel"]["f1"] == 1.0 and s["pixel"]["iou"] == 1.0
    assert s["detection"]["f1"] == 1.0 and s["detection"]["matched"] == 2
    assert s["diameter_error"]["median_px"] == 0.0 and s["diameter_error"]["median_nm"] == 0.0


def test_missed_false_and_grown_particles():
    truth = disk_labels((50, 80), {1: (10, 10, 5), 2: (30, 40, 6), 3: (40, 70, 4)})
    # particle 1 found exactly, particle 2 found 1 px too large, particle 3 missed, one false blob
    pred = disk_labels((50, 80), {1: (10, 10, 5), 2: (30, 40, 7), 9: (10, 60, 3)}) > 0
    matches, nt, npred = match_particles(pred, truth)
    assert (nt, npred, len(matches)) == (3, 3, 2)
    assert set(matches["truth"]) == {1, 2}
    s = score_frames([(pred, truth)], pixel_size_nm=0.5)
    assert s["detection"]["precision"] == pytest.approx(2 / 3)
    assert s["detection"]["recall"] == pytest.approx(2 / 3)
    err = s["diameter_error"]
    assert err["n"] == 2 and err["median_px"] > 0.5  # half of (0 and ~2 px) errors
    assert err["median_nm"] == pytest.approx(err["median_px"] * 0.5)
    counts = s["pixel"]
    assert counts["tp"] + counts["fn"] == np.count_nonzero(truth)
    assert 0 < counts["f1"] < 1


def test_rates_of_nothing():
    assert rates(0, 0, 0)["f1"] == 1.0
    assert rates(0, 5, 0)["precision"] == 0.0
