"""Sintering analysis of particle tables: ripening kinetics, number density, coalescence rate, PSDs.

Lifshitz–Slyozov–Wagner (LSW) theory of diffusion-limited Ostwald ripening predicts
``<r>^3 - <r0>^3 = K t`` and a stationary size distribution of ``u = r / <r>`` (:func:`lsw_pdf`).
Functions take the tables written by the track stage (``frames.parquet``, ``trajectories.parquet``,
``events.parquet``) as DataFrames and return DataFrames / dicts; :func:`plot_sintering` draws them.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats


def radius_series(trajectories: pd.DataFrame) -> pd.DataFrame:
    """Per frame: time_s, n, mean radius and mean cubed radius (nm, from equivalent diameters).

    Parameters
    ----------
    trajectories : DataFrame
        Columns ``frame``, ``time_s``, ``eq_diameter_nm`` (one row per particle per frame);
        particles touching the frame border should be excluded by the caller if wanted.
    """
    r = trajectories["eq_diameter_nm"] / 2.0
    g = trajectories.assign(r_nm=r).groupby("frame")
    out = g.agg(time_s=("time_s", "first"), n=("r_nm", "size"), mean_r_nm=("r_nm", "mean"))
    out["mean_r_cubed_nm3"] = out["mean_r_nm"] ** 3
    return out.reset_index()


def fit_lsw_rate(series: pd.DataFrame, *, confidence: float = 0.95) -> dict:
    """Fit ``<r>^3 - <r0>^3 = K t`` by least squares; K in nm^3/s with its confidence interval.

    ``<r0>`` is the first frame's mean radius. The interval comes from the regression's standard
    error; consecutive frames are correlated, so treat it as a lower bound on the uncertainty.
    Returns NaNs when fewer than 3 frames have particles.
    """
    s = series.dropna(subset=["mean_r_nm"])
    if len(s) < 3 or s["time_s"].nunique() < 3:
        return {"K_nm3_per_s": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                "r2": math.nan, "n_frames": int(len(s)), "confidence": confidence}
    t = s["time_s"].to_numpy() - s["time_s"].iloc[0]
    y = s["mean_r_cubed_nm3"].to_numpy() - s["mean_r_cubed_nm3"].iloc[0]
    fit = stats.linregress(t, y)
    half = stats.t.ppf(0.5 + confidence / 2, len(s) - 2) * fit.stderr
    return {"K_nm3_per_s": float(fit.slope), "ci_low": float(fit.slope - half),
            "ci_high": float(fit.slope + half), "intercept_nm3": float(fit.intercept),
            "r2": float(fit.rvalue ** 2), "n_frames": int(len(s)), "confidence": confidence}


def lsw_pdf(u: np.ndarray) -> np.ndarray:
    """LSW stationary distribution of ``u = r / <r>`` (zero for u >= 1.5), normalised to 1."""
    u = np.asarray(u, dtype=float)
    out = np.zeros_like(u)
    ok = (u > 0) & (u < 1.5)
    x = u[ok]
    out[ok] = (4 / 9) * x**2 * (3 / (3 + x)) ** (7 / 3) * (1.5 / (1.5 - x)) ** (11 / 3) \
        * np.exp(-x / (1.5 - x))
    grid = np.linspace(1e-6, 1.5 - 1e-6, 4001)
    gx = grid
    norm = np.trapezoid((4 / 9) * gx**2 * (3 / (3 + gx)) ** (7 / 3)
                        * (1.5 / (1.5 - gx)) ** (11 / 3) * np.exp(-gx / (1.5 - gx)), grid)
    return out / norm


def size_distributions(trajectories: pd.DataFrame, n_times: int = 3,
                       bins: np.ndarray | None = None) -> pd.DataFrame:
    """Histograms (probability density) of ``r / <r>`` at ``n_times`` frames spread over the
    movie."""
    bins = np.linspace(0, 2.5, 26) if bins is None else bins
    frames = np.sort(trajectories["frame"].unique())
    rows = []
    if len(frames) == 0:
        return pd.DataFrame(columns=["frame", "time_s", "u_low", "u_high", "density", "n"])
    picks = frames[np.linspace(0, len(frames) - 1, min(n_times, len(frames))).round().astype(int)]
    for f in picks:
        sel = trajectories[trajectories["frame"] == f]
        r = sel["eq_diameter_nm"].to_numpy() / 2
        u = r / r.mean()
        hist, edges = np.histogram(u, bins=bins, density=True)
        for lo, hi, d in zip(edges[:-1], edges[1:], hist):
            rows.append({"frame": int(f), "time_s": float(sel["time_s"].iloc[0]), "u_low": lo,
                         "u_high": hi, "density": d, "n": len(r)})
    return pd.DataFrame(rows)


def event_rates(events: pd.DataFrame, *, duration_s: float, area_um2: float) -> dict:
    """Events per second and per second per µm² for each event kind."""
    out = {"duration_s": duration_s, "area_um2": area_um2}
    kinds = events["kind"].value_counts() if len(events) else pd.Series(dtype=int)
    for kind in ("coalescence", "vanish", "appear", "split"):
        n = int(kinds.get(kind, 0))
        out[f"{kind}_count"] = n
        out[f"{kind}_per_s"] = n / duration_s if duration_s > 0 else math.nan
        out[f"{kind}_per_s_per_um2"] = (n / duration_s / area_um2
                                         if duration_s > 0 and area_um2 > 0 else math.nan)
    return out


def analyse(trajectories: pd.DataFrame, frames: pd.DataFrame, events: pd.DataFrame, *,
            area_um2: float, exclude_border: bool = True,
            ) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """All sintering numbers of one movie × model.

    Returns ``(summary, series, psd)``: the summary dict (LSW fit, event rates, mean radius and
    number density at start and end), the per-frame series (time_s, mean radius, <r>^3, count,
    number density per µm²) and the size distributions at a few times.
    """
    traj = trajectories
    if exclude_border and "touches_border" in traj:
        traj = traj[~traj["touches_border"].astype(bool)]
    series = radius_series(traj)
    density = frames.set_index("frame")["count"] / area_um2
    series["number_density_per_um2"] = series["frame"].map(density)
    times = frames["time_s"].to_numpy()
    duration = float(times.max() - times.min()) if len(times) > 1 else 0.0
    summary = {
        "lsw_fit": fit_lsw_rate(series),
        "events": event_rates(events, duration_s=duration, area_um2=area_um2),
        "mean_radius_nm_first": float(series["mean_r_nm"].iloc[0]) if len(series) else math.nan,
        "mean_radius_nm_last": float(series["mean_r_nm"].iloc[-1]) if len(series) else math.nan,
        "number_density_per_um2_first": float(density.iloc[0]) if len(density) else math.nan,
        "number_density_per_um2_last": float(density.iloc[-1]) if len(density) else math.nan,
        "border_particles_excluded": bool(exclude_border),
    }
    return summary, series, size_distributions(traj)


def plot_sintering(series: pd.DataFrame, psd: pd.DataFrame, summary: dict, path, *,
                   title: str = "") -> None:
    """Four panels: <r>(t), <r>^3 - <r0>^3 with the LSW fit, number density, PSDs vs LSW."""
    from etemseg.plotting import plt, save_figure

    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5), dpi=110)
    t = series["time_s"].to_numpy()
    ax = axes[0, 0]
    ax.plot(t, series["mean_r_nm"], ".-")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mean radius <r> (nm)")
    ax = axes[0, 1]
    if len(series):
        y = series["mean_r_cubed_nm3"] - series["mean_r_cubed_nm3"].iloc[0]
        ax.plot(t - t[0], y, ".", label="measured")
    fit = summary["lsw_fit"]
    if np.isfinite(fit["K_nm3_per_s"]):
        tt = np.array([0, t[-1] - t[0]])
        ax.plot(tt, fit["intercept_nm3"] + fit["K_nm3_per_s"] * tt, "-",
                label=f"K = {fit['K_nm3_per_s']:.3g} nm³/s "
                      f"[{fit['ci_low']:.3g}, {fit['ci_high']:.3g}]")
    ax.set_xlabel("time since first frame (s)")
    ax.set_ylabel("<r>³ − <r₀>³ (nm³)")
    ax.legend(fontsize=8)
    ax = axes[1, 0]
    ax.plot(t, series["number_density_per_um2"], ".-", color="C2")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("number density (particles / µm²)")
    ev = summary["events"]
    ax.set_title(f"coalescence: {ev['coalescence_count']} events, "
                 f"{ev['coalescence_per_s_per_um2']:.3g} /s/µm²", fontsize=9)
    ax = axes[1, 1]
    for i, (frame, g) in enumerate(psd.groupby("frame")):
        centres = (g["u_low"] + g["u_high"]) / 2
        ax.step(centres, g["density"], where="mid", color=f"C{i}",
                label=f"t = {g['time_s'].iloc[0]:.4f} s (n = {g['n'].iloc[0]})")
    u = np.linspace(0, 1.6, 200)
    ax.plot(u, lsw_pdf(u), "k--", label="LSW")
    ax.set_xlabel("r / <r>")
    ax.set_ylabel("probability density")
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def field_of_view_um2(frame_shape: tuple[int, int], pixel_size_nm: float) -> float:
    """Area of the field of view in µm² for frames of ``(H, W)`` px at ``pixel_size_nm``."""
    return frame_shape[0] * frame_shape[1] * pixel_size_nm ** 2 / 1e6


def sintering_report(tables: dict[str, pd.DataFrame], *, frame_shape: tuple[int, int],
                     pixel_size_nm: float) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """:func:`analyse` of a track set, with the movie and model named from the tables' own
    ``movie``/``model`` columns (not from folder names) and the field of view in the summary.

    Parameters
    ----------
    tables : dict
        ``trajectories``, ``frames``, ``events`` DataFrames (``etemseg track``).
    frame_shape : (int, int)
        Frame size in px.
    pixel_size_nm : float
        nm per px.
    """
    area_um2 = field_of_view_um2(frame_shape, pixel_size_nm)
    summary, series, psd = analyse(tables["trajectories"], tables["frames"], tables["events"],
                                   area_um2=area_um2)
    names = {}
    for column in ("movie", "model"):
        values = pd.concat([t[column] for t in tables.values() if column in t]).unique()
        names[column] = str(values[0]) if len(values) == 1 else ",".join(map(str, values))
    summary.update({**names, "field_of_view_um2": area_um2})
    return summary, series, psd
