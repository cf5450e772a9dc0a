"""Simulated in-situ ETEM sintering movie of Au nanoparticles, with exact ground truth.

The simulator is the demo data set and the reference every later stage is scored against:
pseudo-labelling, CNN segmentation, particle measurement, tracking (with coalescence, vanish and
appear events) and the LSW ripening-rate fit.  The truth tables are produced by the same physics
that renders the images, so they agree with the pictures exactly.

Physics (physical units: nm, s)
-------------------------------
* Particles are spheres seen in projection; the projected radius ``r`` is the sphere radius and the
  volume is ``4/3 pi r**3``.  At frame 0 they are placed at random without overlap (at least
  ``initial_gap_nm`` apart), radii lognormal with mean ``radius_mean_nm`` and log-sigma
  ``radius_sigma``; the count gives ``coverage`` projected area fraction unless ``n_particles``.
* **Ostwald ripening**, diffusion-controlled mean-field LSW::

      dr/dt = k / r * (1 / r_crit - 1 / r),    r_crit = mean radius,  k = ripening_rate [nm^3/s]

  integrated in volume space, ``d(r^3)/dt = 3 k (r / r_crit - 1)``, whose sum over particles is zero
  when ``r_crit`` is the mean radius.  After every step the surviving volumes are rescaled so that
  ``sum r**3`` is conserved exactly.  A particle whose radius drops below ``min_radius_nm``
  **vanishes**; its remaining volume goes to the survivors by that same rescaling.  Asymptotically
  LSW gives ``<r>^3 - <r_0>^3 = (4/9) k t``.
* **Brownian migration**: every particle random-walks with diffusion coefficient
  ``migration_nm2_per_s`` (per axis step ``sqrt(2 D dt)``).
* **Coalescence**: particles whose centre distance is below ``r1 + r2`` merge into one new particle
  (new id) at the volume-weighted centroid with ``r = (r1^3 + r2^3 + ...)^(1/3)``; merging is
  repeated until no two particles overlap, so a frame never shows overlapping particles and a
  3-way merge is a single event with three parents.
* **Appear**: nucleation of new particles of radius ``appear_radius_nm`` at random free positions,
  a Poisson process of ``appear_rate`` events per um^2 per s.  Appearing particles bring new volume
  (the only process that changes ``sum r**3``).
* **Stage drift**: the field of view moves by ``drift_px_per_frame`` (dy, dx) per frame, i.e. the
  drift at frame ``f`` is ``f * drift_px_per_frame`` pixels.  The physics lives in the *sample*
  frame (equal to image coordinates at frame 0); the truth tables give positions in *image*
  coordinates, sample position plus drift, i.e. where the particle appears in that frame.
* Frame ``f`` shows the state after ``f`` time steps of ``1 / fps`` seconds (each split into a few
  internal sub-steps); ``time_s = f / fps``.

The simulated area is the union of all fields of view over the movie plus a margin of a few
radii, so particles drift into view from outside and may be cut by the frame edge.

Coordinates
-----------
Pixel ``(row i, column j)`` has its centre at ``y_px = i, x_px = j``; ``x`` is the column axis,
``y`` the row axis, the origin is the centre of pixel (0, 0); ``x_nm = x_px * pixel_size_nm``.
A pixel belongs to particle ``p`` in the label image when its centre is strictly within
``radius_px`` of the particle centre: ``(i - y_px)**2 + (j - x_px)**2 < radius_px**2``.

Imaging (bright field, mass-thickness contrast)
-----------------------------------------------
``intensity = dose * illumination * (1 + texture * T) * (1 - contrast * G(thickness))`` where ``T``
is Gaussian-filtered white noise (amorphous support, drifts with the stage), ``illumination`` a
slowly varying low-order polynomial, ``thickness = sqrt(1 - (d / r)^2)`` (sphere projection, 1 at
the centre) and ``G`` a Gaussian blur of sigma ``edge_width_px / 2``.  Counts are Poisson(intensity)
clipped to uint16.  Particles are dark on a brighter background.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from etemseg import __version__
from etemseg.io.atomic import atomic_path
from etemseg.io.parquet import write_table
from etemseg.errors import ConfigError, InputFileError, is_int, is_number

__all__ = [
    "SynthParams",
    "simulate",
    "simulate_tracks",
    "simulate_drift",
    "write_synthetic_movie",
    "k2_frame_name",
]

_SPHERE = 4.0 / 3.0 * math.pi


# --------------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthParams:
    """Parameters of a simulated ETEM sintering movie.

    Attributes
    ----------
    frames : int
        Number of frames (>= 1).
    height, width : int
        Frame size in pixels (rows, columns), each >= 16.
    fps : float
        Frame rate in frames per second; the physics time step is ``1 / fps`` s.
    pixel_size_nm : float
        Pixel size in nm.
    n_particles : int or None
        Number of particles at frame 0 in the simulated area (the field of view plus a drift
        margin); None: as many as give ``coverage``.
    coverage : float
        Target projected area fraction of particles at frame 0 (0 < coverage < 0.6).
    radius_mean_nm : float
        Mean initial particle radius in nm.
    radius_sigma : float
        Log-space standard deviation of the lognormal initial radii.
    dose : float
        Mean electron counts per background pixel (Poisson noise).
    contrast : float
        Fractional intensity drop at the centre of a particle (0 <= contrast < 1).
    edge_width_px : float
        Width of the soft particle edge in px (Gaussian blur of sigma ``edge_width_px / 2``).
    texture : float
        Amplitude (standard deviation, fraction of background) of the amorphous support texture.
    texture_length_px : float
        Correlation length (Gaussian sigma, px) of the support texture.
    gradient : float
        Amplitude of the slow illumination gradient (fraction of background, 0 <= gradient < 0.8).
    drift_px_per_frame : tuple of float
        ``(dy, dx)`` stage drift per frame in px, accumulated (sub-pixel).
    ripening_rate : float
        LSW rate constant ``k`` in nm^3/s of ``dr/dt = k/r (1/<r> - 1/r)``; 0 switches ripening off.
        The default is sped up so a 48-frame movie at 400 fps shows several vanish events.
    min_radius_nm : float
        A particle whose radius falls below this vanishes.
    migration_nm2_per_s : float
        Diffusion coefficient of the Brownian particle migration, nm^2/s.
    coalescence : bool
        Merge touching particles (otherwise they may overlap; the larger wins in the labels).
    initial_gap_nm : float
        Minimum surface-to-surface gap between particles at frame 0, nm.
    appear_rate : float
        Nucleation rate of new particles, events per um^2 of simulated area per s (0: none).
    appear_radius_nm : float
        Radius of a newly nucleated particle, nm (must exceed ``min_radius_nm``).
    seed : int
        Seed of ``numpy.random.default_rng``; identical parameters give byte-identical output.
    """

    frames: int = 48
    height: int = 512
    width: int = 512
    fps: float = 400.0
    pixel_size_nm: float = 0.18
    n_particles: int | None = None
    coverage: float = 0.15
    radius_mean_nm: float = 2.5
    radius_sigma: float = 0.25
    dose: float = 200.0
    contrast: float = 0.45
    edge_width_px: float = 2.0
    texture: float = 0.08
    texture_length_px: float = 1.5
    gradient: float = 0.15
    drift_px_per_frame: tuple[float, float] = (0.05, 0.03)
    ripening_rate: float = 50.0
    min_radius_nm: float = 0.5
    migration_nm2_per_s: float = 2.5
    coalescence: bool = True
    initial_gap_nm: float = 0.1
    appear_rate: float = 1000.0
    appear_radius_nm: float = 1.5
    seed: int = 0

    # ---------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check every field; raise :class:`ConfigError` naming the first bad one."""

        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"synth.{name}: {why} (got {getattr(self, name)!r})")

        if not is_int(self.frames) or self.frames < 1:
            raise bad("frames", "must be an integer >= 1")
        for name in ("height", "width"):
            v = getattr(self, name)
            if not is_int(v) or v < 16:
                raise bad(name, "must be an integer >= 16")
        positive = ("fps", "pixel_size_nm", "radius_mean_nm", "dose", "min_radius_nm",
                    "appear_radius_nm", "texture_length_px")
        for name in positive:
            v = getattr(self, name)
            if not is_number(v) or v <= 0:
                raise bad(name, "must be a finite number > 0")
        non_negative = ("radius_sigma", "edge_width_px", "texture", "ripening_rate",
                        "migration_nm2_per_s", "initial_gap_nm", "appear_rate")
        for name in non_negative:
            v = getattr(self, name)
            if not is_number(v) or v < 0:
                raise bad(name, "must be a finite number >= 0")
        if self.n_particles is not None and (not is_int(self.n_particles) or self.n_particles < 0):
            raise bad("n_particles", "must be None or an integer >= 0")
        if not is_number(self.coverage) or not 0 < self.coverage < 0.6:
            raise bad("coverage", "must be in (0, 0.6)")
        if not is_number(self.contrast) or not 0 <= self.contrast < 1:
            raise bad("contrast", "must be in [0, 1)")
        if not is_number(self.gradient) or not 0 <= self.gradient < 0.8:
            raise bad("gradient", "must be in [0, 0.8)")
        if self.radius_sigma > 1.5:
            raise bad("radius_sigma", "must be <= 1.5")
        if self.texture > 1:
            raise bad("texture", "must be <= 1")
        d = self.drift_px_per_frame
        if (
            not isinstance(d, (tuple, list))
            or len(d) != 2
            or not all(is_number(v) for v in d)
        ):
            raise bad("drift_px_per_frame", "must be a pair of finite numbers (dy, dx)")
        if self.min_radius_nm >= self.radius_mean_nm:
            raise bad("min_radius_nm", "must be smaller than radius_mean_nm")
        if self.appear_radius_nm <= self.min_radius_nm:
            raise bad("appear_radius_nm", "must exceed min_radius_nm")
        if not isinstance(self.coalescence, (bool, np.bool_)):
            raise bad("coalescence", "must be true or false")
        if not is_int(self.seed) or self.seed < 0:
            raise bad("seed", "must be an integer >= 0")

    # ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dictionary of the parameters (the drift tuple becomes a list)."""
        out = asdict(self)
        out["drift_px_per_frame"] = [float(v) for v in self.drift_px_per_frame]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SynthParams":
        """Build (and validate) parameters from a dictionary such as ``synth.json["params"]``.

        Raises
        ------
        ConfigError
            On an unknown key or an invalid value.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"synth.{unknown[0]}: unknown parameter")
        kw = dict(data)
        if "drift_px_per_frame" in kw and isinstance(kw["drift_px_per_frame"], list):
            kw["drift_px_per_frame"] = tuple(kw["drift_px_per_frame"])
        p = cls(**kw)
        p.validate()
        return p


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def k2_frame_name(index: int, fps: float, prefix: str = "Capture1") -> str:
    """Gatan K2-IS file name of absolute frame ``index`` (0-based).

    ``second = index // fps``, ``frame-within-second = index % fps`` (4 digits); hours and minutes
    are split off the seconds.  Example: ``k2_frame_name(405, 400)`` is
    ``'Capture1_Hour_00_Minute_00_Second_01_Frame_0005.tif'``.
    """
    per_s = max(1, int(round(fps)))
    sec_total, within = divmod(int(index), per_s)
    hours, rem = divmod(sec_total, 3600)
    minutes, seconds = divmod(rem, 60)
    return (
        f"{prefix}_Hour_{hours:02d}_Minute_{minutes:02d}_Second_{seconds:02d}"
        f"_Frame_{within:04d}.tif"
    )


def _drift(p: SynthParams, frame: int) -> tuple[float, float]:
    """Accumulated stage drift (dy, dx) in px at ``frame``."""
    return frame * float(p.drift_px_per_frame[0]), frame * float(p.drift_px_per_frame[1])


def simulate_drift(params: SynthParams) -> pd.DataFrame:
    """Per-frame stage drift.

    Returns
    -------
    pandas.DataFrame
        Columns ``frame`` (int64), ``dy_px``, ``dx_px`` (float64, px): image position = sample
        position + drift.
    """
    params.validate()
    f = np.arange(params.frames, dtype=np.int64)
    dy, dx = (float(v) for v in params.drift_px_per_frame)
    return pd.DataFrame({"frame": f, "dy_px": f * dy, "dx_px": f * dx})


def _region_px(p: SynthParams) -> tuple[float, float, float, float]:
    """Sample-frame rectangle (y0, y1, x0, x1) in px holding every particle that can be seen."""
    last = p.frames - 1
    dys = (0.0, _drift(p, last)[0])
    dxs = (0.0, _drift(p, last)[1])
    margin = 3.0 * p.radius_mean_nm / p.pixel_size_nm + 2.0
    return (
        -0.5 - max(dys) - margin,
        p.height - 0.5 - min(dys) + margin,
        -0.5 - max(dxs) - margin,
        p.width - 0.5 - min(dxs) + margin,
    )


def _streams(seed: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """Independent generators: physics, support texture / illumination, shot noise."""
    ss = np.random.SeedSequence(int(seed))
    a, b, c = ss.spawn(3)
    return np.random.default_rng(a), np.random.default_rng(b), np.random.default_rng(c)


def _in_frame(y: np.ndarray, x: np.ndarray, r: np.ndarray, h: int, w: int) -> np.ndarray:
    """True where at least one pixel centre of the frame lies strictly inside the disc (px)."""
    iy = np.clip(np.round(y), 0, h - 1)
    ix = np.clip(np.round(x), 0, w - 1)
    dy = iy - y
    dx = ix - x
    return dy * dy + dx * dx < r * r


# --------------------------------------------------------------------------------------------
# physics
# --------------------------------------------------------------------------------------------


@dataclass
class _Frame:
    """Physics state at one frame (sample coordinates in nm; ids sorted ascending)."""

    index: int
    ids: np.ndarray  # int64 (n,)
    y_nm: np.ndarray  # float64 (n,), sample frame
    x_nm: np.ndarray
    r_nm: np.ndarray
    events: list[dict[str, Any]]


def _initial_particles(
    p: SynthParams, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random non-overlapping initial particles: (y_nm, x_nm, r_nm) in the sample frame."""
    ps = p.pixel_size_nm
    y0, y1, x0, x1 = (v * ps for v in _region_px(p))
    area = (y1 - y0) * (x1 - x0)
    sigma = float(p.radius_sigma)
    mu = math.log(p.radius_mean_nm) - 0.5 * sigma * sigma
    rmin = p.min_radius_nm * 1.5

    def draw(n: int) -> np.ndarray:
        r = rng.lognormal(mu, sigma, size=n) if sigma > 0 else np.full(n, p.radius_mean_nm)
        return np.maximum(r, rmin)

    if p.n_particles is not None:
        radii = draw(int(p.n_particles))
    else:
        target = p.coverage * area
        est = int(target / (math.pi * p.radius_mean_nm**2 * math.exp(sigma * sigma))) + 1
        radii = draw(max(est + 16, 16))
        while np.sum(np.pi * radii**2) < target:
            radii = np.concatenate([radii, draw(max(est // 4, 16))])
        cum = np.cumsum(np.pi * radii**2)
        n = int(np.searchsorted(cum, target)) + 1
        radii = radii[:n]
    n = radii.size
    if n == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    order = np.argsort(-radii, kind="stable")  # largest first: packs more easily
    radii = radii[order]
    gap = float(p.initial_gap_nm)
    cell = 2.0 * float(radii.max()) + gap
    grid: dict[tuple[int, int], list[int]] = {}
    ys = np.empty(n)
    xs = np.empty(n)
    max_attempts = 2000 + 300 * n
    attempts = 0
    placed = 0
    batch = 256
    while placed < n:
        cy = rng.uniform(y0, y1, size=batch)
        cx = rng.uniform(x0, x1, size=batch)
        for yy, xx in zip(cy.tolist(), cx.tolist()):
            attempts += 1
            if attempts > max_attempts:
                field = "n_particles" if p.n_particles is not None else "coverage"
                raise ConfigError(
                    f"synth.{field}: cannot place {n} non-overlapping particles "
                    f"(placed {placed}); lower it"
                )
            r = radii[placed]
            gy, gx = int(math.floor(yy / cell)), int(math.floor(xx / cell))
            ok = True
            for ky in (gy - 1, gy, gy + 1):
                for kx in (gx - 1, gx, gx + 1):
                    for j in grid.get((ky, kx), ()):
                        dy = ys[j] - yy
                        dx = xs[j] - xx
                        lim = r + radii[j] + gap
                        if dy * dy + dx * dx < lim * lim:
                            ok = False
                            break
                    if not ok:
                        break
                if not ok:
                    break
            if ok:
                ys[placed] = yy
                xs[placed] = xx
                grid.setdefault((gy, gx), []).append(placed)
                placed += 1
                if placed == n:
                    break
    perm = rng.permutation(n)  # ids in random order, not by size
    return ys[perm], xs[perm], radii[perm]


def _merge(
    y: np.ndarray,
    x: np.ndarray,
    r: np.ndarray,
    members: list[tuple[int, ...]],
    new: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, ...]], np.ndarray]:
    """Merge overlapping particles (centre distance < r1 + r2) until none overlap."""
    while y.size > 1:
        tree = cKDTree(np.column_stack([y, x]))
        pairs = tree.query_pairs(2.0 * float(r.max()), output_type="ndarray")
        if pairs.size == 0:
            break
        i, j = pairs[:, 0], pairs[:, 1]
        d2 = (y[i] - y[j]) ** 2 + (x[i] - x[j]) ** 2
        touch = d2 < (r[i] + r[j]) ** 2
        if not touch.any():
            break
        i, j = i[touch], j[touch]
        n = y.size
        graph = coo_matrix((np.ones(i.size), (i, j)), shape=(n, n))
        ncomp, comp = connected_components(graph, directed=False)
        counts = np.bincount(comp, minlength=ncomp)
        single = counts[comp] == 1
        keep = np.flatnonzero(single)
        multi = np.flatnonzero(counts > 1)
        v = r**3
        vs = np.bincount(comp, weights=v, minlength=ncomp)[multi]
        ym = np.bincount(comp, weights=v * y, minlength=ncomp)[multi] / vs
        xm = np.bincount(comp, weights=v * x, minlength=ncomp)[multi] / vs
        rm = np.cbrt(vs)
        groups: dict[int, list[int]] = {int(c): [] for c in multi}
        for k in np.flatnonzero(~single):
            groups[int(comp[k])].extend(members[k])
        new_members = [members[k] for k in keep] + [tuple(sorted(groups[int(c)])) for c in multi]
        y = np.concatenate([y[keep], ym])
        x = np.concatenate([x[keep], xm])
        r = np.concatenate([r[keep], rm])
        new = np.concatenate([new[keep], np.ones(multi.size, dtype=bool)])
        members = new_members
    return y, x, r, members, new


_Members = list[tuple[int, ...]]


def _substeps(p: SynthParams, dt: float) -> tuple[int, float, float]:
    """Internal sub-steps of one frame step of ``dt`` seconds.

    Sub-steps keep the volume change of a mean particle per step small, and migration steps
    below a tenth of the minimum radius, so that merges are not tunnelled through.

    Returns
    -------
    nsub : int
        Number of sub-steps per frame (1 to 1000).
    h : float
        Sub-step length in s.
    step_sd : float
        Per-axis standard deviation of one Brownian migration step, nm.
    """
    k = float(p.ripening_rate)
    nsub = 1
    if k > 0:
        nsub = max(nsub, math.ceil(dt * 3 * k / (0.02 * p.radius_mean_nm**3)))
    if p.migration_nm2_per_s > 0:
        nsub = max(nsub, math.ceil(2 * p.migration_nm2_per_s * dt / (0.1 * p.min_radius_nm) ** 2))
    nsub = min(nsub, 1000)
    h = dt / nsub
    step_sd = math.sqrt(2.0 * p.migration_nm2_per_s * h)
    return nsub, h, step_sd


def _ripen(
    y: np.ndarray,
    x: np.ndarray,
    r: np.ndarray,
    members: _Members,
    new: np.ndarray,
    h: float,
    k: float,
    vmin: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, _Members, np.ndarray, list[dict[str, Any]]]:
    """One volume-conserving LSW ripening sub-step of ``h`` s with rate constant ``k``.

    The new volumes are rescaled so that ``sum r**3`` is unchanged; particles whose volume falls
    below ``vmin`` vanish (never the last one) and their volume goes to the survivors by the same
    rescaling.

    Returns
    -------
    y, x, r, members, new
        The survivors.
    events : list of dict
        One 'vanish' event per vanished particle.
    """
    v = r**3
    total = v.sum()
    vn = v + h * 3.0 * k * (r / r.mean() - 1.0)
    alive = np.ones(r.size, dtype=bool)
    while True:
        vn[alive] *= total / vn[alive].sum()
        dead = alive & (vn < vmin)
        if not dead.any():
            break
        if dead.sum() == alive.sum():  # never let the last one go
            dead[np.flatnonzero(alive)[np.argmax(vn[alive])]] = False
            if not dead.any():
                break
        alive &= ~dead
    events = [
        {"kind": "vanish", "parents": list(members[kk]), "child": -1,
         "y_nm": float(y[kk]), "x_nm": float(x[kk])}
        for kk in np.flatnonzero(~alive)
    ]
    keep = np.flatnonzero(alive)
    r = np.cbrt(vn[keep])
    return y[keep], x[keep], r, [members[kk] for kk in keep], new[keep], events


def _migrate(
    y: np.ndarray, x: np.ndarray, step_sd: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One Brownian migration sub-step: Gaussian steps of ``step_sd`` nm, all y then all x."""
    y = y + rng.normal(0.0, step_sd, size=y.size)
    x = x + rng.normal(0.0, step_sd, size=y.size)
    return y, x


def _frame_step(
    p: SynthParams,
    y: np.ndarray,
    x: np.ndarray,
    r: np.ndarray,
    ids: np.ndarray,
    substeps: tuple[int, float, float],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, _Members, np.ndarray, list[dict[str, Any]]]:
    """Advance the particles by one frame: sub-steps of ripening, migration and coalescence.

    Returns
    -------
    y, x, r : numpy.ndarray
        The particles after the step (not yet sorted by id).
    members : list of tuple of int
        Ids (at the previous frame) of the particles each one is made of.
    new : numpy.ndarray
        bool, True for merge products (which get new ids).
    events : list of dict
        The 'vanish' events of the step, in order.
    """
    nsub, h, step_sd = substeps
    k = float(p.ripening_rate)
    vmin = p.min_radius_nm**3
    members: _Members = [(int(i),) for i in ids]
    new = np.zeros(ids.size, dtype=bool)
    events: list[dict[str, Any]] = []
    for _ in range(nsub):
        if k > 0 and r.size > 1:
            y, x, r, members, new, vanished = _ripen(y, x, r, members, new, h, k, vmin)
            events.extend(vanished)
        if step_sd > 0 and r.size:
            y, x = _migrate(y, x, step_sd, rng)
        if p.coalescence and r.size > 1:
            y, x, r, members, new = _merge(y, x, r, members, new)
    return y, x, r, members, new, events


def _assign_ids(
    y: np.ndarray, x: np.ndarray, members: _Members, new: np.ndarray, next_id: int
) -> tuple[np.ndarray, list[dict[str, Any]], int]:
    """Ids after a frame step: survivors keep theirs, merge products get new ones.

    Returns
    -------
    ids : numpy.ndarray
        int64 id of every particle, in input order.
    events : list of dict
        One 'coalescence' event per merge product.
    next_id : int
        The next unused id.
    """
    out_ids = np.empty(len(members), dtype=np.int64)
    events: list[dict[str, Any]] = []
    for kk in range(len(members)):
        if new[kk]:
            out_ids[kk] = next_id
            events.append(
                {"kind": "coalescence", "parents": list(members[kk]), "child": next_id,
                 "y_nm": float(y[kk]), "x_nm": float(x[kk])}
            )
            next_id += 1
        else:
            out_ids[kk] = members[kk][0]
    return out_ids, events, next_id


def _free_spot(
    p: SynthParams,
    y: np.ndarray,
    x: np.ndarray,
    r: np.ndarray,
    region: tuple[float, float, float, float],
    rng: np.random.Generator,
) -> tuple[float, float] | None:
    """A random position in ``region`` (nm) where a new particle fits; None after 20 tries.

    The new particle of radius ``appear_radius_nm`` must keep ``initial_gap_nm`` to every other.
    """
    ry0, ry1, rx0, rx1 = region
    ra = float(p.appear_radius_nm)
    tree = cKDTree(np.column_stack([y, x])) if r.size else None
    rmax = float(r.max()) if r.size else 0.0
    for _try in range(20):
        cy = float(rng.uniform(ry0, ry1))
        cx = float(rng.uniform(rx0, rx1))
        if tree is not None:
            near = tree.query_ball_point([cy, cx], ra + rmax + p.initial_gap_nm)
            if any(
                (y[j] - cy) ** 2 + (x[j] - cx) ** 2 < (r[j] + ra + p.initial_gap_nm) ** 2
                for j in near
            ):
                continue
        return cy, cx
    return None


def _nucleate(
    p: SynthParams,
    y: np.ndarray,
    x: np.ndarray,
    r: np.ndarray,
    ids: np.ndarray,
    next_id: int,
    n_new: int,
    region: tuple[float, float, float, float],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]], int]:
    """Nucleate up to ``n_new`` particles at free random positions (a try may find none).

    Returns
    -------
    y, x, r, ids
        The particles with the new ones appended.
    events : list of dict
        One 'appear' event per new particle.
    next_id : int
        The next unused id.
    """
    ra = float(p.appear_radius_nm)
    events: list[dict[str, Any]] = []
    for _ in range(n_new):
        spot = _free_spot(p, y, x, r, region, rng)
        if spot is None:
            continue
        cy, cx = spot
        y = np.append(y, cy)
        x = np.append(x, cx)
        r = np.append(r, ra)
        ids = np.append(ids, next_id)
        events.append(
            {"kind": "appear", "parents": [], "child": next_id, "y_nm": cy, "x_nm": cx}
        )
        next_id += 1
    return y, x, r, ids, events, next_id


def _physics(p: SynthParams) -> Iterator[_Frame]:
    """Yield the particle state of every frame, one at a time (sample coordinates, nm)."""
    rng = _streams(p.seed)[0]
    ps = p.pixel_size_nm
    y, x, r = _initial_particles(p, rng)
    ids = np.arange(1, y.size + 1, dtype=np.int64)
    next_id = int(y.size) + 1
    ry0, ry1, rx0, rx1 = (v * ps for v in _region_px(p))
    region = (ry0, ry1, rx0, rx1)
    area_um2 = (ry1 - ry0) * (rx1 - rx0) * 1e-6
    dt = 1.0 / float(p.fps)
    substeps = _substeps(p, dt)
    yield _Frame(0, ids, y, x, r, [])

    for f in range(1, p.frames):
        y, x, r, members, new, events = _frame_step(p, y, x, r, ids, substeps, rng)
        out_ids, merged, next_id = _assign_ids(y, x, members, new, next_id)
        events.extend(merged)
        if p.appear_rate > 0:
            n_new = int(rng.poisson(p.appear_rate * area_um2 * dt))
            y, x, r, out_ids, born, next_id = _nucleate(
                p, y, x, r, out_ids, next_id, n_new, region, rng
            )
            events.extend(born)
        order = np.argsort(out_ids, kind="stable")
        ids, y, x, r = out_ids[order], y[order], x[order], r[order]
        yield _Frame(f, ids, y, x, r, events)


def _image_coords(p: SynthParams, fr: _Frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y_px, x_px, r_px) in image coordinates (sample position + drift) of a frame."""
    ps = p.pixel_size_nm
    dy, dx = _drift(p, fr.index)
    return fr.y_nm / ps + dy, fr.x_nm / ps + dx, fr.r_nm / ps


def _frame_tables(
    p: SynthParams, fr: _Frame
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Particle rows (dict of columns) and event rows of one frame."""
    ps = p.pixel_size_nm
    yp, xp, rp = _image_coords(p, fr)
    n = fr.ids.size
    t = fr.index / float(p.fps)
    cols = {
        "frame": np.full(n, fr.index, dtype=np.int64),
        "time_s": np.full(n, t),
        "particle": fr.ids.astype(np.int64),
        "x_nm": xp * ps,
        "y_nm": yp * ps,
        "radius_nm": fr.r_nm.copy(),
        "volume_nm3": _SPHERE * fr.r_nm**3,
        "x_px": xp,
        "y_px": yp,
        "radius_px": rp,
        "in_frame": _in_frame(yp, xp, rp, p.height, p.width),
    }
    dy, dx = _drift(p, fr.index)
    events = []
    for ev in fr.events:
        eyp = ev["y_nm"] / ps + dy
        exp_ = ev["x_nm"] / ps + dx
        if ev["child"] >= 0:
            rr = float(fr.r_nm[np.searchsorted(fr.ids, ev["child"])]) / ps
        else:
            rr = p.min_radius_nm / ps
        events.append(
            {
                "kind": ev["kind"],
                "frame": fr.index,
                "time_s": t,
                "parents": [int(v) for v in ev["parents"]],
                "child": int(ev["child"]),
                "x_nm": exp_ * ps,
                "y_nm": eyp * ps,
                "x_px": exp_,
                "y_px": eyp,
                "in_frame": bool(
                    _in_frame(np.array([eyp]), np.array([exp_]), np.array([rr]),
                              p.height, p.width)[0]
                ),
            }
        )
    return cols, events


_PARTICLE_SCHEMA = pa.schema(
    [
        ("frame", pa.int64()),
        ("time_s", pa.float64()),
        ("particle", pa.int64()),
        ("x_nm", pa.float64()),
        ("y_nm", pa.float64()),
        ("radius_nm", pa.float64()),
        ("volume_nm3", pa.float64()),
        ("x_px", pa.float64()),
        ("y_px", pa.float64()),
        ("radius_px", pa.float64()),
        ("in_frame", pa.bool_()),
    ]
)

_EVENT_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        ("frame", pa.int64()),
        ("time_s", pa.float64()),
        ("parents", pa.list_(pa.int64())),
        ("child", pa.int64()),
        ("x_nm", pa.float64()),
        ("y_nm", pa.float64()),
        ("x_px", pa.float64()),
        ("y_px", pa.float64()),
        ("in_frame", pa.bool_()),
    ]
)


class _TableBuilder:
    """Accumulates per-frame rows into the particles and events tables."""

    def __init__(self, p: SynthParams):
        self.p = p
        self.parts: list[dict[str, np.ndarray]] = []
        self.events: list[dict[str, Any]] = []

    def add(self, fr: _Frame) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
        cols, events = _frame_tables(self.p, fr)
        self.parts.append(cols)
        self.events.extend(events)
        return cols, events

    def particles_arrow(self) -> pa.Table:
        cols = {
            name: np.concatenate([c[name] for c in self.parts]) if self.parts else np.zeros(0)
            for name in _PARTICLE_SCHEMA.names
        }
        return pa.Table.from_pydict(cols, schema=_PARTICLE_SCHEMA)

    def events_arrow(self) -> pa.Table:
        cols = {name: [e[name] for e in self.events] for name in _EVENT_SCHEMA.names}
        return pa.Table.from_pydict(cols, schema=_EVENT_SCHEMA)


def simulate_tracks(params: SynthParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run the particle physics only (no images).

    The same physics (same random stream) drives :func:`simulate`, so these tables are exactly
    the truth of the rendered movie.

    Parameters
    ----------
    params : SynthParams

    Returns
    -------
    particles : pandas.DataFrame
        One row per particle per frame, every simulated particle (also those outside the field of
        view; filter on ``in_frame``).  Columns: ``frame`` (int64), ``time_s`` (float64, s),
        ``particle`` (int64 id, >= 1), ``x_nm``, ``y_nm`` (centre in image coordinates, i.e.
        sample position plus that frame's drift; x = column axis, origin at the centre of pixel
        (0, 0)), ``radius_nm``, ``volume_nm3`` (``4/3 pi r^3``), ``x_px``, ``y_px``,
        ``radius_px`` (the same in pixels), ``in_frame`` (bool: the particle owns at least one
        pixel of the label image).
    events : pandas.DataFrame
        Columns: ``kind`` ('coalescence', 'vanish' or 'appear'), ``frame`` (int64: first frame in
        which the child exists / the vanished particle is gone), ``time_s``, ``parents`` (list of
        int64 ids that exist in ``frame - 1``; empty for 'appear'), ``child`` (int64 id existing
        in ``frame``; -1 for 'vanish'), ``x_nm``, ``y_nm``, ``x_px``, ``y_px`` (child position at
        ``frame``, or where the particle vanished, image coordinates at ``frame``), ``in_frame``.
    """
    params.validate()
    tb = _TableBuilder(params)
    for fr in _physics(params):
        tb.add(fr)
    return tb.particles_arrow().to_pandas(), tb.events_arrow().to_pandas()


# --------------------------------------------------------------------------------------------
# imaging
# --------------------------------------------------------------------------------------------


class _Renderer:
    """Renders (image, labels) of a physics frame; holds the drifting support texture."""

    def __init__(self, p: SynthParams, rng: np.random.Generator):
        self.p = p
        h, w = p.height, p.width
        last = p.frames - 1
        dys = (0.0, _drift(p, last)[0])
        dxs = (0.0, _drift(p, last)[1])
        # texture in sample coordinates: image pixel i at drift d sits at sample i - d
        self.oy = int(math.floor(-max(dys))) - 1
        self.ox = int(math.floor(-max(dxs))) - 1
        ny = int(math.ceil(h - 1 - min(dys))) - self.oy + 3
        nx = int(math.ceil(w - 1 - min(dxs))) - self.ox + 3
        if p.texture > 0:
            tex = rng.standard_normal((ny, nx), dtype=np.float32)
            ndimage.gaussian_filter(tex, p.texture_length_px, output=tex, mode="wrap")
            tex -= tex.mean()
            tex /= max(float(tex.std()), 1e-12)
            # lag-1 correlations, to keep the texture variance constant under bilinear shifts
            self.rho_y = float(np.mean(tex[1:, :] * tex[:-1, :]))
            self.rho_x = float(np.mean(tex[:, 1:] * tex[:, :-1]))
            self.tex = tex
        else:
            self.tex = None
        # slow illumination: beam centre and tilt wander sinusoidally (periods of seconds)
        self.illum = rng.uniform(-1.0, 1.0, size=8)
        self.yn = ((np.arange(h) - (h - 1) / 2) / max(h, w)).astype(np.float64)
        self.xn = ((np.arange(w) - (w - 1) / 2) / max(h, w)).astype(np.float64)

    def _illumination(self, t: float) -> np.ndarray:
        a = self.illum
        g = self.p.gradient
        cy = 0.15 * a[0] + 0.05 * math.sin(2 * math.pi * t / 3.0 + 3 * a[1])
        cx = 0.15 * a[2] + 0.05 * math.sin(2 * math.pi * t / 4.0 + 3 * a[3])
        ty = 0.5 * a[4] + 0.1 * math.sin(2 * math.pi * t / 5.0 + 3 * a[5])
        tx = 0.5 * a[6] + 0.1 * math.sin(2 * math.pi * t / 6.0 + 3 * a[7])
        col = (1.0 + g * 0.5) + g * (0.5 * ty * self.yn - 2.0 * (self.yn - cy) ** 2)
        row = g * (0.5 * tx * self.xn - 2.0 * (self.xn - cx) ** 2)
        ill = col.astype(np.float32)[:, None] + row.astype(np.float32)[None, :]
        return np.maximum(ill, np.float32(0.05), out=ill)

    def _texture(self, frame: int) -> np.ndarray | None:
        if self.tex is None:
            return None
        h, w = self.p.height, self.p.width
        dy, dx = _drift(self.p, frame)
        sy = -dy - self.oy
        sx = -dx - self.ox
        iy, ix = int(math.floor(sy)), int(math.floor(sx))
        fy, fx = sy - iy, sx - ix
        c = self.tex[iy : iy + h + 1, ix : ix + w + 1]
        top = (1 - fx) * c[:-1, :-1] + fx * c[:-1, 1:]
        bot = (1 - fx) * c[1:, :-1] + fx * c[1:, 1:]
        out = (1 - fy) * top + fy * bot
        vy = (1 - fy) ** 2 + fy**2 + 2 * fy * (1 - fy) * self.rho_y
        vx = (1 - fx) ** 2 + fx**2 + 2 * fx * (1 - fx) * self.rho_x
        out *= np.float32(self.p.texture / math.sqrt(max(vy * vx, 1e-6)))
        return out

    def labels_and_thickness(
        self, yp: np.ndarray, xp: np.ndarray, rp: np.ndarray, ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Label image (uint32) and normalised thickness map (float32), bounding boxes only."""
        h, w = self.p.height, self.p.width
        labels = np.zeros((h, w), dtype=np.uint32)
        thick = np.zeros((h, w), dtype=np.float32)
        y0 = np.maximum(np.ceil(yp - rp), 0).astype(np.int64)
        y1 = np.minimum(np.floor(yp + rp) + 1, h).astype(np.int64)
        x0 = np.maximum(np.ceil(xp - rp), 0).astype(np.int64)
        x1 = np.minimum(np.floor(xp + rp) + 1, w).astype(np.int64)
        vis = np.flatnonzero((y1 > y0) & (x1 > x0))
        # increasing radius: where discs overlap the larger is written last and wins
        for k in vis[np.argsort(rp[vis], kind="stable")]:
            a0, a1, b0, b1 = y0[k], y1[k], x0[k], x1[k]
            dy = np.arange(a0, a1, dtype=np.float64) - yp[k]
            dx = np.arange(b0, b1, dtype=np.float64) - xp[k]
            d2 = dy[:, None] * dy[:, None] + dx[None, :] * dx[None, :]
            r2 = rp[k] * rp[k]
            inside = d2 < r2
            if not inside.any():
                continue
            lab = labels[a0:a1, b0:b1]
            lab[inside] = ids[k]
            prof = np.sqrt(np.clip(1.0 - d2 / r2, 0.0, None)).astype(np.float32)
            th = thick[a0:a1, b0:b1]
            np.maximum(th, prof, out=th)
        return labels, thick

    def render(
        self, fr: _Frame, noise_rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        p = self.p
        yp, xp, rp = _image_coords(p, fr)
        labels, thick = self.labels_and_thickness(yp, xp, rp, fr.ids)
        if p.edge_width_px > 0:
            ndimage.gaussian_filter(
                thick, p.edge_width_px / 2.0, output=thick, mode="nearest", truncate=3.0
            )
        inten = self._illumination(fr.index / float(p.fps))
        tex = self._texture(fr.index)
        if tex is not None:
            inten *= np.maximum(1.0 + tex, 0.0)
        inten *= 1.0 - np.float32(p.contrast) * thick
        inten *= np.float32(p.dose)
        counts = noise_rng.poisson(inten.astype(np.float64))
        np.minimum(counts, 65535, out=counts)
        return counts.astype(np.uint16), labels


def _run(p: SynthParams) -> Iterator[tuple[_Frame, np.ndarray, np.ndarray]]:
    _, tex_rng, noise_rng = _streams(p.seed)
    renderer = _Renderer(p, tex_rng)
    for fr in _physics(p):
        img, lab = renderer.render(fr, noise_rng)
        yield fr, img, lab


def simulate(params: SynthParams) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Simulate the movie one frame at a time.

    Memory stays bounded by a few frames whatever ``params.frames`` is.

    Parameters
    ----------
    params : SynthParams

    Yields
    ------
    image : numpy.ndarray
        ``(height, width)`` uint16 electron counts (particles dark on a bright background).
    labels : numpy.ndarray
        ``(height, width)`` uint32 particle id per pixel, 0 = background; ids are those of
        :func:`simulate_tracks`.
    """
    params.validate()
    for _, img, lab in _run(params):
        yield img, lab


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def _check_out_dir(out_dir: Path) -> None:
    """Refuse an ``out_dir`` that is a file, or a non-empty directory that is no synth output.

    Raises
    ------
    InputFileError
        ``out_dir`` is a file, or a non-empty directory without ``synth.json``.
    """
    if out_dir.exists():
        if not out_dir.is_dir():
            raise InputFileError(out_dir, "exists and is not a directory")
        if any(out_dir.iterdir()) and not (out_dir / "synth.json").is_file():
            raise InputFileError(
                out_dir,
                "is a non-empty directory that is not a synth output; refusing to overwrite",
            )


def _create_label_array(path: Path, p: SynthParams) -> Any:
    """Create the empty zarr v3 truth label array ``(t, y, x)`` uint32 at ``path``."""
    import zarr

    ps = float(p.pixel_size_nm)
    return zarr.create_array(
        store=str(path),
        shape=(p.frames, p.height, p.width),
        chunks=(1, p.height, p.width),
        dtype="uint32",
        compressors=zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle"),
        fill_value=0,
        dimension_names=("t", "y", "x"),
        attributes={
            "pixel_size_nm": ps,
            "fps": float(p.fps),
            "axes": "tyx",
            "description": "ground-truth particle ids, 0 = background",
        },
    )


def _write_frames(
    frames_dir: Path, truth_dir: Path, p: SynthParams, tb: _TableBuilder, progress: bool
) -> list[float]:
    """Simulate the movie; write the TIFF frames and the truth labels; fill ``tb``.

    Returns
    -------
    list of float
        Label coverage (fraction of non-zero pixels) of the first and the last frame (a single
        value when there is one frame).
    """
    import tifffile
    from tqdm import tqdm

    ps = float(p.pixel_size_nm)
    arr = _create_label_array(truth_dir / "labels.zarr", p)
    meta_desc = {"unit": "nm", "pixel_size_nm": ps, "fps": float(p.fps)}
    cov: list[float] = []
    bar = tqdm(total=p.frames, desc="synth", unit="frame", disable=not progress)
    try:
        for fr, img, lab in _run(p):
            tifffile.imwrite(
                frames_dir / k2_frame_name(fr.index, p.fps),
                img,
                imagej=True,
                resolution=(1.0 / ps, 1.0 / ps),
                metadata={"unit": "nm", "finterval": 1.0 / p.fps,
                          "Info": json.dumps(meta_desc)},
            )
            arr[fr.index] = lab
            tb.add(fr)
            if fr.index in (0, p.frames - 1):
                cov.append(float(np.count_nonzero(lab)) / lab.size)
            bar.update(1)
    finally:
        bar.close()
    return cov


def _write_truth_tables(
    truth_dir: Path, p: SynthParams, tb: _TableBuilder
) -> tuple[pa.Table, pa.Table]:
    """Write the particle, event and drift truth tables; return (particles, events)."""
    particles = tb.particles_arrow()
    events = tb.events_arrow()
    truth_meta = {"source": "etemseg synth ground truth", "pixel_size_nm": float(p.pixel_size_nm),
                  "fps": float(p.fps), "seed": p.seed}
    write_table(particles, truth_dir / "particles.parquet", metadata=truth_meta)
    write_table(events, truth_dir / "events.parquet", metadata=truth_meta)
    write_table(simulate_drift(p), truth_dir / "drift.parquet", metadata=truth_meta)
    return particles, events


def _summary(
    p: SynthParams, particles: pa.Table, events: pa.Table, cov: list[float], out_dir: Path
) -> dict[str, Any]:
    """Summary of a written movie (see :func:`write_synthetic_movie`)."""
    pdf = particles.to_pandas()
    edf = events.to_pandas()
    first = pdf[(pdf["frame"] == 0) & pdf["in_frame"]]
    last = pdf[(pdf["frame"] == p.frames - 1) & pdf["in_frame"]]
    summary: dict[str, Any] = {
        "n_frames": int(p.frames),
        "height": int(p.height),
        "width": int(p.width),
        "pixel_size_nm": float(p.pixel_size_nm),
        "fps": float(p.fps),
        "n_particles_initial": int(len(first)),
        "n_particles_simulated": int((pdf["frame"] == 0).sum()),
        "n_particles_final": int(len(last)),
    }
    for kind in ("coalescence", "vanish", "appear"):
        sel = edf["kind"] == kind
        summary[f"n_{kind}"] = int(sel.sum())
        summary[f"n_{kind}_in_frame"] = int((sel & edf["in_frame"]).sum())
    summary["coverage"] = cov[0]
    summary["coverage_final"] = cov[-1]
    summary["mean_radius_nm_initial"] = float(first["radius_nm"].mean()) if len(first) else 0.0
    summary["mean_radius_nm_final"] = float(last["radius_nm"].mean()) if len(last) else 0.0
    rel = {
        "frames": "frames",
        "labels": "truth/labels.zarr",
        "particles": "truth/particles.parquet",
        "events": "truth/events.parquet",
        "drift": "truth/drift.parquet",
        "synth_json": "synth.json",
    }
    summary["paths"] = {k: str(out_dir / v) for k, v in rel.items()}
    return summary


def write_synthetic_movie(
    out_dir: str | Path, params: SynthParams, *, progress: bool = True
) -> dict[str, Any]:
    """Write a simulated movie and its ground truth into ``out_dir``.

    Layout::

        out_dir/frames/Capture1_Hour_HH_Minute_MM_Second_SS_Frame_FFFF.tif  uint16, one per frame
        out_dir/truth/labels.zarr        zarr v3 (t, y, x) uint32, chunks (1, H, W), Blosc zstd
        out_dir/truth/particles.parquet  see simulate_tracks
        out_dir/truth/events.parquet     see simulate_tracks
        out_dir/truth/drift.parquet      frame, dy_px, dx_px
        out_dir/synth.json               {"params", "summary", "version"}

    The TIFFs carry ImageJ metadata (``unit='nm'``, resolution = pixels per nm) and the pixel
    size in nm.  Everything is built in a temporary directory next to ``out_dir`` and renamed into
    place when complete (``atomic_path``), so an interrupted run leaves no partial output.  A
    previous synth output (one holding ``synth.json``) is replaced; any other non-empty directory
    is refused.

    Parameters
    ----------
    out_dir : path
    params : SynthParams
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    dict
        ``n_frames``, ``height``, ``width``, ``n_particles_initial`` (in the field of view at
        frame 0), ``n_particles_simulated``, ``n_coalescence``, ``n_vanish``, ``n_appear`` (all
        events, also outside the view) and their ``*_in_frame`` counts, ``coverage`` (label
        fraction at frame 0), ``coverage_final``, ``mean_radius_nm_initial`` /
        ``mean_radius_nm_final`` (in view), and ``paths`` (strings).

    Raises
    ------
    InputFileError
        ``out_dir`` is a file, or a non-empty directory without ``synth.json``.
    ConfigError
        Invalid parameters.
    """
    params.validate()
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    p = params
    tb = _TableBuilder(p)
    with atomic_path(out_dir, directory=True) as tmp:
        frames_dir = tmp / "frames"
        truth_dir = tmp / "truth"
        frames_dir.mkdir()
        truth_dir.mkdir()
        cov = _write_frames(frames_dir, truth_dir, p, tb, progress)
        particles, events = _write_truth_tables(truth_dir, p, tb)
        summary = _summary(p, particles, events, cov, out_dir)
        doc = {"params": p.to_dict(), "summary": summary, "version": __version__,
               "generator": "etemseg.synth"}
        (tmp / "synth.json").write_text(json.dumps(doc, indent=2) + "\n")
    return summary
