"""Sintering analysis: LSW fit recovers a known rate, PSDs, event rates, the figure."""

import numpy as np
import pandas as pd
import pytest

from etemseg.analysis.sintering import analyse, fit_lsw_rate, lsw_pdf, plot_sintering, radius_series


def lsw_movie(K=2.0, r0=2.0, frames=40, n=30, dt=0.01, seed=0):
    """Particles whose mean radius follows <r>^3 = r0^3 + K t exactly (sizes scaled by a ratio)."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(0.6, 1.4, n)
    u /= u.mean()
    rows = []
    for f in range(frames):
        t = f * dt
        mean_r = (r0**3 + K * t) ** (1 / 3)
        for i, ui in enumerate(u):
            rows.append({"particle": i, "frame": f, "time_s": t, "eq_diameter_nm": 2 * ui * mean_r,
                         "touches_border": i == 0})
    traj = pd.DataFrame(rows)
    counts = traj.groupby("frame").size()
    frames_t = pd.DataFrame({"frame": counts.index, "time_s": counts.index * dt,
                             "count": counts.to_numpy()})
    return traj, frames_t


def test_lsw_fit_recovers_rate():
    traj, _ = lsw_movie(K=2.0)
    fit = fit_lsw_rate(radius_series(traj))
    assert fit["K_nm3_per_s"] == pytest.approx(2.0, rel=1e-6)
    assert fit["ci_low"] <= 2.0 <= fit["ci_high"] and fit["r2"] > 0.999


def test_lsw_pdf_normalised_and_zero_beyond_cutoff():
    u = np.linspace(0, 1.5, 20001)
    assert np.trapezoid(lsw_pdf(u), u) == pytest.approx(1.0, abs=1e-3)
    assert lsw_pdf(np.array([1.5, 2.0])).tolist() == [0.0, 0.0]
    assert u[np.argmax(lsw_pdf(u))] == pytest.approx(1.13, abs=0.02)  # known LSW mode


def test_analyse_and_plot(tmp_path):
    traj, frames_t = lsw_movie()
    events = pd.DataFrame({"kind": ["coalescence", "coalescence", "vanish"], "frame": [3, 9, 20],
                           "time_s": [0.03, 0.09, 0.2]})
    summary, series, psd = analyse(traj, frames_t, events, area_um2=0.01)
    assert summary["events"]["coalescence_count"] == 2
    assert summary["events"]["coalescence_per_s_per_um2"] == pytest.approx(2 / 0.39 / 0.01)
    assert series["number_density_per_um2"].iloc[0] == pytest.approx(30 / 0.01)
    assert set(psd["frame"]) == {0, 20, 39}
    assert series["n"].iloc[0] == 29  # the border particle is excluded
    plot_sintering(series, psd, summary, tmp_path / "s.png", title="test")
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_too_short_movie_gives_nan_not_crash():
    traj, frames_t = lsw_movie(frames=1)
    summary, series, psd = analyse(traj, frames_t, pd.DataFrame(columns=["kind"]), area_um2=1)
    assert np.isnan(summary["lsw_fit"]["K_nm3_per_s"])


def test_units_of_rate_columns_come_from_the_longest_suffix():
    from etemseg.io.parquet import unit_of

    assert [unit_of(c) for c in ("k_nm3_per_s", "d_nm2_per_s", "rate_per_s",
                                 "density_per_s_per_um2", "radius_nm", "time_s", "label")] == \
        ["nm^3/s", "nm^2/s", "1/s", "1/(s*um^2)", "nm", "s", None]
