"""Particle physics of the simulator: ripening, migration, coalescence, nucleation, drift.

The truth tables (:func:`simulate_tracks`) come from this physics alone; every imaging mode
renders the same frames, so the labels and tables do not depend on the imaging mode.

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from etemseg.errors import ConfigError
from etemseg.synth.params import SynthParams

__all__ = ["simulate_tracks", "simulate_drift"]

_SPHERE = 4.0 / 3.0 * math.pi


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


def _orientation_stream(seed: int) -> np.random.Generator:
    """A fourth independent generator: crystal orientations (realistic imaging).

    ``SeedSequence.spawn`` numbers its children, so this is the fourth child of the seed and
    leaves the three streams of :func:`_streams` (and so the physics) untouched.
    """
    return np.random.default_rng(np.random.SeedSequence(int(seed)).spawn(4)[3])


def _carbon_stream(seed: int) -> np.random.Generator:
    """A fifth independent generator: the carbon-black support (realistic imaging, ``support:
    carbon-black``); the fifth child of the seed, so the other four streams are untouched."""
    return np.random.default_rng(np.random.SeedSequence(int(seed)).spawn(5)[4])


def _in_frame(y: np.ndarray, x: np.ndarray, r: np.ndarray, h: int, w: int) -> np.ndarray:
    """True where at least one pixel centre of the frame lies strictly inside the disc (px)."""
    iy = np.clip(np.round(y), 0, h - 1)
    ix = np.clip(np.round(x), 0, w - 1)
    dy = iy - y
    dx = ix - x
    return dy * dy + dx * dx < r * r


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

