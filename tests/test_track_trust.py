"""Track-level trust (``min_diameter_nm``, ``trust_ms``; ``etemseg.tracking.temporal`` step 3):
a trajectory that never looks like a particle stays in the tables, flagged ``trusted = False``,
but reports no event and is no coalescence parent.  Every test fails without the rule it names:
the first three also run with the rule off and check the old events come back; the border test
fails if a sliver were judged by its size (its visible part is below ``min_diameter_nm``)."""

from __future__ import annotations

import numpy as np
import pytest

from etemseg.errors import ConfigError
from etemseg.tracking import LinkParams
from tests.test_track import PS, STATIC, movie, pid, run

BIG = (20, 30, 6)  # px: 2.4 nm across at PS
SPECK = 2.8  # px radius: ~24 px, 1.1 nm across, below min_diameter_nm
OFF = {"min_diameter_nm": 0.0, "trust_ms": 0.0}


def test_speck_reports_no_event_and_is_flagged():
    """A small component (a CNN false positive, 1.1 nm across) seen for 50 ms: long enough to be
    confirmed, so without the size rule it appears and vanishes."""
    assert 2 * np.sqrt(np.pi * SPECK ** 2 / np.pi) * PS < LinkParams.min_diameter_nm
    frames = [[STATIC, BIG] + ([(45, 20, SPECK)] if 20 <= f < 40 else []) for f in range(70)]
    labs, det = movie(frames)
    for mode in ("overlap", "centroid"):
        traj, events, _ = run(mode, labs, det)
        assert len(events) == 0, mode
        speck = traj[traj.particle == pid(traj, 25, 45, 20)]
        assert len(speck) == 20 and not speck.trusted.any()
        assert traj[traj.particle != speck.particle.iloc[0]].trusted.all()
        _, before, _ = run(mode, labs, det, **OFF)
        assert sorted(before.kind) == ["appear", "vanish"], mode


def test_speck_is_no_coalescence_parent():
    """A speck that touches a particle and joins its mask: no coalescence, the particle keeps
    its id through the merge."""
    frames = []
    for f in range(80):
        d = [STATIC, BIG]
        if 10 <= f < 30:
            d.append((20, 39.5, SPECK))  # apart (a gap of ~1 px)
        elif 30 <= f < 50:
            d.append((20, 37.0, SPECK))  # joined in pixels with BIG
        frames.append(d)
    labs, det = movie(frames)
    traj, events, _ = run("overlap", labs, det)
    assert not (events.kind == "coalescence").any()
    assert pid(traj, 5, 20, 30) == pid(traj, 40, 20, 31) == pid(traj, 79, 20, 30)
    _, before, _ = run("overlap", labs, det, **OFF)
    assert (before.kind == "coalescence").any()


def test_brief_trajectory_reports_no_vanish():
    """A particle-sized trajectory that begins (split off, or appears) and ends within
    ``trust_ms`` reports no appear / vanish; the same one lasting longer does."""
    def frames_(n):
        return [[STATIC] + ([BIG] if 20 <= f < 20 + n else []) for f in range(80)]

    labs, det = movie(frames_(12))  # 30 ms: confirmed (> confirm_ms 10) but brief
    _, events, _ = run("overlap", labs, det, trust_ms=40.0)
    assert len(events) == 0
    _, events, _ = run("overlap", labs, det, trust_ms=0.0)
    assert sorted(events.kind) == ["appear", "vanish"]
    labs, det = movie(frames_(24))  # 60 ms
    _, events, _ = run("overlap", labs, det, trust_ms=40.0)
    assert sorted(events.kind) == ["appear", "vanish"]


def test_border_only_trajectory_is_not_judged_by_size():
    """A sliver at the frame edge has no usable size: it is trusted (its events are exits and
    enters, decided by the border)."""
    frames = [[STATIC] + ([(30, -4, 6)] if 20 <= f < 50 else []) for f in range(80)]
    labs, det = movie(frames)
    assert det[det.touches_border].eq_diameter_nm.max() < LinkParams.min_diameter_nm
    traj, events, _ = run("overlap", labs, det)
    assert traj.trusted.all()
    assert sorted(events.kind) == ["enter", "exit"]


@pytest.mark.parametrize("field,value", [("min_diameter_nm", -1.0), ("trust_ms", float("nan"))])
def test_trust_parameters_checked(field, value):
    with pytest.raises(ConfigError, match=field):
        LinkParams(**{field: value}).validate()
