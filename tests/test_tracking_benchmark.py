"""The tracking benchmark's pooled table (``benchmarks/pooling.py``): events of every
movie and training counted together, not per-movie scores averaged."""

from __future__ import annotations

import pytest

from benchmarks.pooling import pooled, wilson


def _row(seed, train_seed, coal, van, switches, trajectories, k_err, covered, linker="etemseg"):
    return {"masks": "cnn", "linker": linker, "seed": seed, "train_seed": train_seed,
            **{f"coal_{c}": v for c, v in zip(("matched", "measured", "truth"), coal)},
            **{f"van_{c}": v for c, v in zip(("matched", "measured", "truth"), van)},
            "switches": switches, "truth_trajectories": trajectories, "K_err": k_err,
            "K_covered": covered}


def test_wilson_interval():
    assert wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)  # the textbook value
    lo, hi = wilson(5, 5)
    assert lo == pytest.approx(0.5655, abs=1e-4) and hi == 1.0
    assert wilson(0, 5)[0] == 0.0
    assert all(x != x for x in wilson(0, 0))  # NaN: nothing to count


def test_pooled_counts_events_not_scores():
    rows = [_row(1, 0, (1, 1, 4), (9, 10, 10), 1, 40, 0.05, True),
            _row(1, 1, (3, 4, 4), (18, 20, 20), 0, 40, 0.20, True),
            _row(2, 0, (0, 0, 2), (5, 10, 6), 3, 20, -0.1, False),
            {"masks": "cnn", "linker": "trackpy", "seed": 1}]  # no events: not pooled
    (p,) = pooled(rows)
    assert (p["runs"], p["movies"], p["trainings"]) == (3, 2, 2)
    assert p["coal_P"] == pytest.approx(4 / 5) and p["coal_R"] == pytest.approx(4 / 10)
    assert p["van_P"] == pytest.approx(32 / 40) and p["van_R"] == pytest.approx(32 / 36)
    assert p["van_P_ci"] == pytest.approx(wilson(32, 40))
    assert p["switches_per_100"] == pytest.approx(100 * 4 / 100)
    assert (p["K_within_15pct"], p["K_covered"]) == (2, 2)
    assert p["K_abs_err_median"] == pytest.approx(0.1)
