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
    tracked = "particle" in trajectories and "parents" in events  # a track set: tracked fit
    density = frames.set_index("frame")["count"] / area_um2
    series["number_density_per_um2"] = series["frame"].map(density)
    times = frames["time_s"].to_numpy()
    duration = float(times.max() - times.min()) if len(times) > 1 else 0.0
    summary = {
        "lsw_fit": (fit_lsw_tracked(trajectories, events) if tracked
                    else fit_lsw_rate(series)),
        "lsw_fit_per_frame_mean": fit_lsw_rate(series),
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



# --------------------------------------------------------------------------------------------
# kinetics of tracked particles
# --------------------------------------------------------------------------------------------


def _frame_period_s(trajectories: pd.DataFrame) -> float:
    """Median time step between consecutive frames of the table, s (NaN when unknown)."""
    f = trajectories.groupby("frame")["time_s"].first().sort_index()
    if len(f) < 2:
        return math.nan
    per = np.diff(f.to_numpy()) / np.diff(f.index.to_numpy())
    per = per[np.isfinite(per) & (per > 0)]
    return float(np.median(per)) if per.size else math.nan


def _one_size_trajectory(g: pd.DataFrame, dt: float, win: int, t_end: float | None
                         ) -> pd.DataFrame:
    """Smoothed ``r(t)`` of one particle: every frame from its first to its last detection
    (running median of ``win`` detections, then r^3 linear over gaps: the size across a gap
    comes from several detections on either side, not from the last faint one alone), extended
    linearly in r^3 to zero at ``t_end`` (its extinction) when given."""
    g = g.sort_values("frame")
    f0, f1 = int(g["frame"].iloc[0]), int(g["frame"].iloc[-1])
    frames = np.arange(f0, f1 + 1)
    r3 = (g["eq_diameter_nm"].to_numpy(float) / 2) ** 3
    raw = np.interp(frames, g["frame"].to_numpy(), r3)
    med = pd.Series(r3).rolling(win, center=True, min_periods=1).median().to_numpy()
    smooth = np.interp(frames, g["frame"].to_numpy(), med)
    seen = np.isin(frames, g["frame"].to_numpy())
    t0 = float(g["time_s"].iloc[0]) - (int(g["frame"].iloc[0]) - f0) * dt
    times = t0 + (frames - f0) * dt
    border = np.interp(frames, g["frame"].to_numpy(),
                       g["touches_border"].to_numpy(float)) > 0 if "touches_border" in g else \
        np.zeros(frames.size, bool)
    if t_end is not None and np.isfinite(dt) and t_end > times[-1] + dt / 2:
        extra = np.arange(1, int(round((t_end - times[-1]) / dt)))
        if extra.size:
            frac = 1 - extra / (extra.size + 1)
            frames = np.concatenate([frames, f1 + extra])
            times = np.concatenate([times, times[-1] + extra * dt])
            smooth = np.concatenate([smooth, smooth[-1] * frac])
            raw = np.concatenate([raw, np.full(extra.size, np.nan)])
            seen = np.concatenate([seen, np.zeros(extra.size, bool)])
            border = np.concatenate([border, np.zeros(extra.size, bool)])
    r_raw = np.where(seen, np.cbrt(raw), np.nan)
    return pd.DataFrame({"frame": frames, "time_s": times, "r_nm": r_raw,
                         "r_smooth_nm": np.cbrt(np.maximum(smooth, 0.0)),
                         "r3_smooth_nm3": np.maximum(smooth, 0.0), "observed": seen,
                         "touches_border": border})


def size_trajectories(trajectories: pd.DataFrame, events: pd.DataFrame | None = None, *,
                      smooth_ms: float = 10.0) -> pd.DataFrame:
    """Per-particle smoothed size trajectories, gaps bridged, fade-outs extended to extinction.

    Parameters
    ----------
    trajectories : DataFrame
        ``particle``, ``frame``, ``time_s`` (s), ``eq_diameter_nm``; optional ``touches_border``.
    events : DataFrame, optional
        The track events; a ``vanish`` (its ``time_s`` the extrapolated extinction, see
        :mod:`etemseg.tracking.temporal`) extends its particle's ``r^3`` linearly to zero.
    smooth_ms : float
        Running-median window, ms (converted with the frame period).

    Returns
    -------
    DataFrame
        ``particle``, ``frame``, ``time_s`` (s), ``r_nm`` (measured, NaN where not detected),
        ``r_smooth_nm``, ``r3_smooth_nm3``, ``observed`` (bool), ``touches_border`` (bool).
    """
    cols = ["particle", "frame", "time_s", "r_nm", "r_smooth_nm", "r3_smooth_nm3", "observed",
            "touches_border"]
    if not len(trajectories):
        return pd.DataFrame({c: pd.Series(dtype=float) for c in cols})
    dt = _frame_period_s(trajectories)
    win = max(1, int(round(smooth_ms / 1000 / dt))) if np.isfinite(dt) else 1
    ends: dict[int, float] = {}
    if events is not None and len(events):
        for ev in events[events["kind"] == "vanish"].itertuples():
            ends[int(ev.parents[0])] = float(ev.time_s)
    parts = []
    for pid, g in trajectories.groupby("particle", sort=True):
        one = _one_size_trajectory(g, dt, win, ends.get(int(pid)))
        one.insert(0, "particle", int(pid))
        parts.append(one)
    return pd.concat(parts, ignore_index=True)[cols]


def _hac_slope(t: np.ndarray, y: np.ndarray, confidence: float) -> dict:
    """Least-squares slope of ``y(t)`` with a Newey-West (Bartlett) standard error, bandwidth
    ``sqrt(n)`` frames: consecutive frames share particles, so residuals are correlated."""
    n = t.size
    x = t - t.mean()
    sxx = float((x * x).sum())
    slope = float((x * (y - y.mean())).sum() / sxx)
    icpt = float(y.mean() - slope * t.mean())
    u = x * (y - icpt - slope * t)
    lag = max(1, int(round(math.sqrt(n))))
    s = float((u * u).sum())
    for k in range(1, min(lag, n - 1) + 1):
        s += 2 * (1 - k / (lag + 1)) * float((u[k:] * u[:-k]).sum())
    se = math.sqrt(max(s, 0.0)) / sxx
    half = float(stats.norm.ppf(0.5 + confidence / 2)) * se
    resid = y - icpt - slope * t
    r2 = 1 - float((resid ** 2).sum()) / max(float(((y - y.mean()) ** 2).sum()), 1e-300)
    return {"K_nm3_per_s": slope, "ci_low": slope - half, "ci_high": slope + half,
            "intercept_nm3": icpt, "r2": r2, "stderr_nm3_per_s": se, "hac_lag_frames": lag}


def fit_lsw_tracked(trajectories: pd.DataFrame, events: pd.DataFrame | None = None, *,
                    confidence: float = 0.95, sizes: pd.DataFrame | None = None) -> dict:
    """LSW rate from tracked particles: ``<r>^3 - <r0>^3 = K t`` on smoothed, gap-bridged sizes.

    ``<r>`` per frame is the mean ``r_smooth_nm`` of :func:`size_trajectories` over particles not
    touching the border: a particle flickering below the detection limit keeps its (interpolated)
    size, one fading out before it vanishes is followed to extinction, so neither the detection
    limit nor flicker biases the mean.  The interval is a Newey-West one (:func:`_hac_slope`).

    Returns
    -------
    dict
        ``K_nm3_per_s``, ``ci_low``, ``ci_high`` (nm^3/s), ``intercept_nm3``, ``r2``,
        ``stderr_nm3_per_s``, ``n_frames``, ``confidence``, ``method``; NaNs under 3 frames.
    """
    sz = size_trajectories(trajectories, events) if sizes is None else sizes
    sz = sz[~sz["touches_border"].astype(bool)] if len(sz) else sz
    series = (sz.groupby("frame").agg(time_s=("time_s", "first"), r=("r_smooth_nm", "mean"))
              if len(sz) else pd.DataFrame(columns=["time_s", "r"]))
    base = {"n_frames": int(len(series)), "confidence": confidence,
            "method": "tracked, smoothed, Newey-West interval"}
    if len(series) < 3 or series["time_s"].nunique() < 3:
        return {"K_nm3_per_s": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                "r2": math.nan, **base}
    t = series["time_s"].to_numpy(float)
    y = series["r"].to_numpy(float) ** 3
    fit = _hac_slope(t - t[0], y - y[0], confidence)
    return {**fit, **base}


def ripening_rates(sizes: pd.DataFrame, *, min_ms: float = 20.0) -> pd.DataFrame:
    """Individual ripening rates: per particle the slope of ``r^3`` (smoothed) in time against
    its mean radius (the Ostwald signature: shrinking below the critical radius, growing above).

    Parameters
    ----------
    sizes : DataFrame
        :func:`size_trajectories` (observed and bridged frames; extinction extensions excluded).
    min_ms : float
        Shortest observed span that gets a rate, ms.

    Returns
    -------
    DataFrame
        ``particle``, ``mean_r_nm``, ``dr3_dt_nm3_per_s``, ``stderr_nm3_per_s``, ``n_frames``,
        ``duration_s``, ``touches_border`` (any frame).
    """
    rows = []
    obs = sizes[sizes["observed"].astype(bool)] if len(sizes) else sizes
    for pid, g in obs.groupby("particle", sort=True):
        t = g["time_s"].to_numpy(float)
        if g.shape[0] < 3 or (t[-1] - t[0]) * 1000 < min_ms:
            continue
        fit = stats.linregress(t - t[0], g["r3_smooth_nm3"].to_numpy(float))
        rows.append({"particle": int(pid), "mean_r_nm": float(g["r_smooth_nm"].mean()),
                     "dr3_dt_nm3_per_s": float(fit.slope),
                     "stderr_nm3_per_s": float(fit.stderr), "n_frames": int(len(g)),
                     "duration_s": float(t[-1] - t[0]),
                     "touches_border": bool(g["touches_border"].any())})
    cols = ["particle", "mean_r_nm", "dr3_dt_nm3_per_s", "stderr_nm3_per_s", "n_frames",
            "duration_s", "touches_border"]
    return pd.DataFrame(rows, columns=cols)


def mobility(trajectories: pd.DataFrame, *, max_lag_ms: float = 25.0,
             min_frames: int = 10) -> pd.DataFrame:
    """Drift-corrected mean-squared displacement and migration coefficient per particle.

    Positions are the trajectories' sample-frame ``x_sample_nm``, ``y_sample_nm`` (image position
    minus the estimated stage drift).  ``MSD(lag)`` over lags of 1 .. ``max_lag_ms`` (pairs of
    detections that far apart in frames); the migration coefficient is ``D = slope / 4`` of a
    least-squares line through ``MSD(lag)`` (2-D diffusion), nm^2/s.

    Returns
    -------
    DataFrame
        ``particle``, ``n_frames``, ``mean_r_nm``, ``D_nm2_per_s``, ``msd_1_nm2`` (MSD at one
        frame), ``msd_intercept_nm2`` (localisation noise, ``4 sigma^2``), ``max_lag_s``.
    """
    cols = ["particle", "n_frames", "mean_r_nm", "D_nm2_per_s", "msd_1_nm2",
            "msd_intercept_nm2", "max_lag_s"]
    if not len(trajectories) or "x_sample_nm" not in trajectories:
        return pd.DataFrame(columns=cols)
    dt = _frame_period_s(trajectories)
    if not np.isfinite(dt):
        return pd.DataFrame(columns=cols)
    max_lag = max(2, int(round(max_lag_ms / 1000 / dt)))
    rows = []
    for pid, g in trajectories.groupby("particle", sort=True):
        if len(g) < min_frames:
            continue
        g = g.sort_values("frame")
        f = g["frame"].to_numpy()
        xy = g[["x_sample_nm", "y_sample_nm"]].to_numpy(float)
        lags, msd = [], []
        for lag in range(1, max_lag + 1):
            j = np.searchsorted(f, f + lag)
            ok = (j < f.size) & (f[np.minimum(j, f.size - 1)] == f + lag)
            if ok.sum() >= 3:
                lags.append(lag)
                msd.append(float(((xy[j[ok]] - xy[ok]) ** 2).sum(axis=1).mean()))
        if len(lags) < 2:
            continue
        slope, icpt = np.polyfit(np.asarray(lags) * dt, msd, 1)
        rows.append({"particle": int(pid), "n_frames": int(len(g)),
                     "mean_r_nm": float(g["eq_diameter_nm"].mean() / 2),
                     "D_nm2_per_s": float(slope / 4), "msd_1_nm2": msd[0],
                     "msd_intercept_nm2": float(icpt), "max_lag_s": float(lags[-1] * dt)})
    return pd.DataFrame(rows, columns=cols)


def relaxation(trajectories: pd.DataFrame, events: pd.DataFrame, *,
               window_ms: float = 50.0) -> pd.DataFrame:
    """Shape relaxation of merged particles: aspect ratio (major / minor axis) of every
    coalescence child against the time since the event, up to ``window_ms``.

    Returns
    -------
    DataFrame
        ``event_frame``, ``particle`` (the child), ``n_parents``, ``t_since_s`` (s), ``frame``,
        ``aspect_ratio`` (>= 1), ``eq_diameter_nm``, ``confidence`` (of the event).
    """
    cols = ["event_frame", "particle", "n_parents", "t_since_s", "frame", "aspect_ratio",
            "eq_diameter_nm", "confidence"]
    need = {"major_axis_nm", "minor_axis_nm"}
    if not len(events) or not len(trajectories) or not need <= set(trajectories.columns):
        return pd.DataFrame(columns=cols)
    parts = []
    by_id = dict(tuple(trajectories.groupby("particle")))
    for ev in events[events["kind"] == "coalescence"].itertuples():
        g = by_id.get(int(ev.child))
        if g is None:
            continue
        t = g["time_s"].to_numpy(float) - float(ev.time_s)
        g = g[(t >= 0) & (t <= window_ms / 1000)]
        minor = g["minor_axis_nm"].to_numpy(float)
        parts.append(pd.DataFrame({
            "event_frame": int(ev.frame), "particle": int(ev.child),
            "n_parents": len(ev.parents), "t_since_s": g["time_s"].to_numpy(float) - ev.time_s,
            "frame": g["frame"].to_numpy(), "aspect_ratio": np.where(
                minor > 0, g["major_axis_nm"].to_numpy(float) / np.maximum(minor, 1e-12),
                np.nan),
            "eq_diameter_nm": g["eq_diameter_nm"].to_numpy(float),
            "confidence": float(getattr(ev, "confidence", math.nan))}))
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


def _schema(*fields: tuple[str, str, str | None]):
    """A pyarrow schema of ``(name, type, unit)`` fields, the unit in the field metadata."""
    import pyarrow as pa

    types = {"i": pa.int64(), "f": pa.float64(), "b": pa.bool_()}
    return pa.schema([pa.field(n, types[t], metadata={b"unit": u.encode()} if u else None)
                      for n, t, u in fields])


#: Arrow schemas (with units) of the kinetics tables (:func:`kinetics_tables`).
KINETICS_SCHEMAS = {
    "sizes": _schema(("particle", "i", None), ("frame", "i", None), ("time_s", "f", "s"),
                     ("r_nm", "f", "nm"), ("r_smooth_nm", "f", "nm"),
                     ("r3_smooth_nm3", "f", "nm^3"), ("observed", "b", None),
                     ("touches_border", "b", None)),
    "ripening": _schema(("particle", "i", None), ("mean_r_nm", "f", "nm"),
                        ("dr3_dt_nm3_per_s", "f", "nm^3/s"), ("stderr_nm3_per_s", "f", "nm^3/s"),
                        ("n_frames", "i", None), ("duration_s", "f", "s"),
                        ("touches_border", "b", None)),
    "mobility": _schema(("particle", "i", None), ("n_frames", "i", None),
                        ("mean_r_nm", "f", "nm"), ("D_nm2_per_s", "f", "nm^2/s"),
                        ("msd_1_nm2", "f", "nm^2"), ("msd_intercept_nm2", "f", "nm^2"),
                        ("max_lag_s", "f", "s")),
    "relaxation": _schema(("event_frame", "i", None), ("particle", "i", None),
                          ("n_parents", "i", None), ("t_since_s", "f", "s"), ("frame", "i", None),
                          ("aspect_ratio", "f", None), ("eq_diameter_nm", "f", "nm"),
                          ("confidence", "f", None)),
}


def write_kinetics(folder, kin: dict[str, pd.DataFrame], *, metadata: dict | None = None) -> str:
    """Write the kinetics tables as one set (``folder/{sizes,ripening,mobility,relaxation}
    .parquet``, units in the field metadata, see :data:`KINETICS_SCHEMAS`); returns the set id.
    """
    from etemseg.io.parquet import write_table_set

    out = {}
    for name, schema in KINETICS_SCHEMAS.items():
        df = kin[name]
        df = pd.DataFrame({f.name: df[f.name].to_numpy() if len(df) else [] for f in schema})
        for f in schema:
            df[f.name] = df[f.name].astype({"int64": "int64", "double": "float64",
                                            "bool": "bool"}[str(f.type)])
        out[name] = (df, schema)
    return write_table_set(folder, out, metadata=metadata)


def kinetics_tables(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The per-particle kinetics tables of a track set (units in the column names).

    Parameters
    ----------
    tables : dict
        ``trajectories`` and ``events`` (``etemseg track``).

    Returns
    -------
    dict
        ``sizes`` (:func:`size_trajectories`), ``ripening`` (:func:`ripening_rates`),
        ``mobility`` (:func:`mobility`), ``relaxation`` (:func:`relaxation`).
    """
    traj, events = tables["trajectories"], tables["events"]
    sizes = size_trajectories(traj, events)
    return {"sizes": sizes, "ripening": ripening_rates(sizes), "mobility": mobility(traj),
            "relaxation": relaxation(traj, events)}


def plot_kinetics(kin: dict[str, pd.DataFrame], path, *, title: str = "") -> None:
    """Three panels: individual ripening rates d(r^3)/dt vs r, migration coefficient vs r,
    aspect ratio of merged particles vs time since the coalescence."""
    from etemseg.plotting import plt, save_figure

    fig, axes = plt.subplots(1, 3, figsize=(13, 4), dpi=110)
    rip = kin["ripening"]
    rip = rip[~rip["touches_border"].astype(bool)] if len(rip) else rip
    axes[0].errorbar(rip["mean_r_nm"], rip["dr3_dt_nm3_per_s"], yerr=rip["stderr_nm3_per_s"],
                     fmt=".", alpha=0.7)
    axes[0].axhline(0, color="k", lw=0.5)
    axes[0].set_xlabel("mean radius r (nm)")
    axes[0].set_ylabel("d(r³)/dt (nm³/s)")
    axes[0].set_title("individual ripening rates", fontsize=9)
    mob = kin["mobility"]
    axes[1].plot(mob["mean_r_nm"], mob["D_nm2_per_s"], ".", color="C1")
    axes[1].set_xlabel("mean radius r (nm)")
    axes[1].set_ylabel("migration coefficient D (nm²/s)")
    axes[1].set_title("drift-corrected MSD / 4t", fontsize=9)
    rel = kin["relaxation"]
    for i, (_, g) in enumerate(rel.groupby(["event_frame", "particle"])):
        axes[2].plot(g["t_since_s"] * 1000, g["aspect_ratio"], "-", color=f"C{i % 10}", lw=0.8)
    axes[2].set_xlabel("time since coalescence (ms)")
    axes[2].set_ylabel("aspect ratio (major / minor)")
    axes[2].set_title("relaxation of merged particles", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
