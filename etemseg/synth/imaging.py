"""Imaging modes of the simulator: physics frames -> uint16 counts and exact labels.

Both modes render the same physics frames (:mod:`etemseg.synth.physics`) with the same exact label
image (a pixel belongs to a particle iff its centre lies strictly inside the projected disc), so
the ground truth does not depend on the imaging mode.  Particles are dark on a brighter
background in both.  ``imaging`` selects the mode (:class:`~etemseg.synth.params.SynthParams`).

Mass-thickness (``imaging: mass-thickness``, the fast cartoon)
---------------------------------------------------------------
``intensity = dose * illumination * (1 + texture * T) * (1 - contrast * G(thickness))`` where ``T``
is Gaussian-filtered white noise (amorphous support, drifts with the stage), ``illumination`` a
slowly varying low-order polynomial, ``thickness = sqrt(1 - (d / r)^2)`` (sphere projection, 1 at
the centre) and ``G`` a Gaussian blur of sigma ``edge_width_px / 2``.  Counts are Poisson(intensity)
clipped to uint16.  Every particle has the same contrast.

Realistic (``imaging: realistic``, bright-field phase contrast of crystalline Au)
---------------------------------------------------------------------------------
Coherent image formation with the objective lens (a multiplicative exit wave, one projection;
lengths in nm, reciprocal lengths in nm^-1):

1. **Exit wave.**  A particle of projected radius ``r`` has thickness ``t = 2 sqrt(r^2 - d^2)`` at
   distance ``d`` from its centre (a sphere).  Its transmission is
   ``exp(i sigma V t - sigma V' t) * sqrt(T_Bragg(t))``: the phase ``sigma V t`` of the mean inner
   potential ``V`` (``mean_inner_potential_v``, Au ~30 V; ``sigma`` the relativistic interaction
   constant, 6.53e-3 rad/(V nm) at 300 kV, i.e. ~1 rad at the centre of a 5 nm particle), the
   mass-thickness absorption of the absorptive potential ``V' = absorption_ratio * V`` (thermal
   diffuse scattering beyond the aperture), and the diffraction contrast ``T_Bragg``.
2. **Diffraction contrast.**  Each particle is a single fcc Au crystal with an orientation ``R``
   drawn uniformly over SO(3) (a new particle: a fresh orientation; a coalescence product: the
   orientation of its largest parent).  Orientations perform rotational diffusion
   (``rotation_deg2_per_s``: per-axis rotation steps of ``sqrt(2 D dt)`` per frame), so contrast
   drifts and a particle can fade and recover.  For the 26 reflections {111}, {200}, {220}
   (lab-frame ``g = R g_c``, beam along z) the excitation error is
   ``s_g = -(g_z + lambda |g|^2 / 2)`` and the dynamical two-beam diffracted fraction
   ``I_g = (pi t / xi_g)^2 sinc^2(t sqrt(s_g^2 + xi_g^-2))`` with the Au extinction distances
   ``xi_g`` (18.3, 20.2, 27.8 nm at 100 kV, scaled by ``1 / (lambda gamma)``: ~26, 29, 39 nm at
   300 kV).  The objective aperture (``aperture_per_nm`` < 4.25 nm^-1, the {111} radius) stops the
   Bragg beams, so ``T_Bragg = prod_g (1 - I_g)`` (independent two-beam losses, reflections with
   ``|s_g| < 1 nm^-1``).  Near the Bragg condition of a low-order reflection a particle is dark
   (up to ``sin^2(pi t / xi)``, ~35 % at 5 nm); far from every one, only absorption and phase
   remain and the particle is faint.  Lattice fringes are not modelled.
3. **Support.**  ``support: film`` (default): an amorphous carbon film, a random phase texture
   (Gaussian-filtered white noise, correlation length ``support_length_nm``, r.m.s.
   ``support_phase_rad``), fixed in the sample frame and moving with the stage drift; the
   particles lie on it (the phases add).  ``support: carbon-black`` (a Pt/C catalyst's support)
   replaces the film by graphitic carbon spheres (radius ``carbon_radius_nm`` x (1 + 0.25 N),
   a Boolean model covering ``carbon_coverage`` of the field, vacuum between them) whose
   chord lengths add to a thickness ``t``: phase ``sigma V_C t`` (``carbon_inner_potential_v``,
   ~9 V, so a 30 nm sphere is a ~1.8 rad phase object with Fresnel fringes at its edge under
   defocus), mass-thickness attenuation ``exp(-t / carbon_mfp_nm)`` in intensity (scattering
   beyond the aperture), and a texture of r.m.s. phase ``carbon_texture_rad sqrt(t / 10 nm)``
   (independent turbostratic crystallites add in quadrature), half a ring spectrum at the
   graphite (002) spacing 0.344 nm (resolved only where the pixel's Nyquist frequency exceeds
   2.9 nm^-1), half the film's amorphous texture.  Thick patches where spheres overlap are
   darker and more textured than single spheres; particles lie anywhere (also over vacuum: the
   physics does not know the support).
4. **Objective lens.**  The exit wave ``psi`` is imaged with the wave transfer function
   ``Psi(k) * A(k) E_t(k) E_s(k) exp(-i chi(k))``,
   ``chi = pi lambda df k^2 + pi/2 Cs lambda^3 k^4`` (``defocus_nm`` ``df``, negative is underfocus;
   ``spherical_aberration_mm`` ``Cs``), temporal ``E_t = exp(-(pi lambda Delta)^2 k^4 / 2)``
   (``focal_spread_nm``) and spatial ``E_s = exp(-(pi alpha / lambda)^2 (df lambda k +
   Cs lambda^3 k^3)^2)`` (``convergence_mrad``) coherence envelopes in the quasi-coherent
   approximation, and the aperture ``A``.  This is the full (not weak-phase) coherent image,
   ``|IFFT(...)|^2``: a defocus gives Fresnel fringes of width ~``sqrt(lambda |df|)`` at particle
   edges (0.77 nm at 300 kV and -300 nm); at ``df = 0`` and ``Cs = 0`` they vanish.  The wave is
   sampled on the detector pixels (frequencies above Nyquist are not represented) on a grid padded
   by the delocalisation ``|df| lambda k + |Cs| lambda^3 k^3`` so the periodic FFT does not wrap.
   Sub-pixel stage drift is applied as a Fourier phase ramp on the imaged wave.
5. **Detector.**  The intensity is multiplied by the slow illumination of the mass-thickness mode
   (``gradient``), blurred by the detector MTF (the pixel's ``sinc`` times a Gaussian of sigma
   ``mtf_sigma_px``), scaled to ``dose`` counts per background pixel per frame (default 40: low,
   as at 400 frames/s) and drawn as Poisson counts, clipped to uint16.

Cost: four FFTs of the padded frame (~(H + 2P) x (W + 2P) complex64) per frame plus a bounding-box
loop over the particles; see ``docs/simulator.md`` for measured times.  Random streams: the
physics stream is never touched by imaging; the support and illumination come from the texture
stream, the orientations from a fourth stream of the seed, the counts from the noise stream, so
one seed gives byte-identical output.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from etemseg.synth.optics import (
    au_reflections_per_nm,
    detector_mtf,
    excitation_errors,
    interaction_constant,
    random_rotations,
    small_rotations,
    two_beam_intensity,
    wave_transfer,
    wavelength_nm,
)
from etemseg.synth.params import SynthParams
from etemseg.synth.physics import (
    _carbon_stream,
    _drift,
    _Frame,
    _image_coords,
    _orientation_stream,
    _physics,
    _streams,
)

__all__ = ["simulate", "MassThicknessRenderer", "RealisticRenderer"]

#: Reflections with ``|s_g|`` beyond this (nm^-1) diffract < 0.2 % each and are skipped.
_S_CUT_PER_NM = 1.0


class _Illumination:
    """Slow illumination: beam centre and tilt wander sinusoidally (periods of seconds).

    Parameters
    ----------
    p : SynthParams
    rng : numpy.random.Generator
        Draws the 8 wander coefficients.
    """

    def __init__(self, p: SynthParams, rng: np.random.Generator):
        h, w = p.height, p.width
        self.gradient = p.gradient
        self.illum = rng.uniform(-1.0, 1.0, size=8)
        self.yn = ((np.arange(h) - (h - 1) / 2) / max(h, w)).astype(np.float64)
        self.xn = ((np.arange(w) - (w - 1) / 2) / max(h, w)).astype(np.float64)

    def __call__(self, t: float) -> np.ndarray:
        """Relative illumination ``(height, width)`` float32 at time ``t`` s (mean ~1)."""
        a = self.illum
        g = self.gradient
        cy = 0.15 * a[0] + 0.05 * math.sin(2 * math.pi * t / 3.0 + 3 * a[1])
        cx = 0.15 * a[2] + 0.05 * math.sin(2 * math.pi * t / 4.0 + 3 * a[3])
        ty = 0.5 * a[4] + 0.1 * math.sin(2 * math.pi * t / 5.0 + 3 * a[5])
        tx = 0.5 * a[6] + 0.1 * math.sin(2 * math.pi * t / 6.0 + 3 * a[7])
        col = (1.0 + g * 0.5) + g * (0.5 * ty * self.yn - 2.0 * (self.yn - cy) ** 2)
        row = g * (0.5 * tx * self.xn - 2.0 * (self.xn - cx) ** 2)
        ill = col.astype(np.float32)[:, None] + row.astype(np.float32)[None, :]
        return np.maximum(ill, np.float32(0.05), out=ill)


def _labels_and_thickness(
    h: int, w: int, yp: np.ndarray, xp: np.ndarray, rp: np.ndarray, ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact label image and normalised sphere thickness of a frame, bounding boxes only.

    Parameters
    ----------
    h, w : int
        Frame size, px.
    yp, xp, rp : numpy.ndarray
        Particle centres and radii in image coordinates, px.
    ids : numpy.ndarray
        Particle ids (int64).

    Returns
    -------
    labels : numpy.ndarray
        ``(h, w)`` uint32: the id of the particle whose disc holds the pixel centre strictly
        inside (the larger wins where discs overlap), 0 = background.
    thickness : numpy.ndarray
        ``(h, w)`` float32 ``sqrt(1 - (d / r)^2)`` of the thickest particle at each pixel.
    """
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


class MassThicknessRenderer:
    """Mass-thickness imaging: renders (image, labels) of a physics frame.

    Holds the drifting support texture and the illumination.

    Parameters
    ----------
    p : SynthParams
    rng : numpy.random.Generator
        The texture / illumination stream (drawn from in a fixed order: texture, illumination).
    """

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
        self.illumination = _Illumination(p, rng)

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
        return _labels_and_thickness(self.p.height, self.p.width, yp, xp, rp, ids)

    def render(
        self, fr: _Frame, noise_rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Counts (uint16) and labels (uint32) of one frame; ``noise_rng`` draws the shot noise."""
        p = self.p
        yp, xp, rp = _image_coords(p, fr)
        labels, thick = self.labels_and_thickness(yp, xp, rp, fr.ids)
        if p.edge_width_px > 0:
            ndimage.gaussian_filter(
                thick, p.edge_width_px / 2.0, output=thick, mode="nearest", truncate=3.0
            )
        inten = self.illumination(fr.index / float(p.fps))
        tex = self._texture(fr.index)
        if tex is not None:
            inten *= np.maximum(1.0 + tex, 0.0)
        inten *= 1.0 - np.float32(p.contrast) * thick
        inten *= np.float32(p.dose_per_px)
        counts = noise_rng.poisson(inten.astype(np.float64))
        np.minimum(counts, 65535, out=counts)
        return counts.astype(np.uint16), labels




class _Orientations:
    """Crystal orientation of every particle, by id, under rotational diffusion.

    Parameters
    ----------
    rng : numpy.random.Generator
        The orientation stream.
    step_rad : float
        Per-axis standard deviation of the rotation vector of one frame step, rad.
    """

    def __init__(self, rng: np.random.Generator, step_rad: float):
        self.rng = rng
        self.step_rad = step_rad
        self.rot: dict[int, np.ndarray] = {}
        self.radius: dict[int, float] = {}

    def advance(self, fr: _Frame) -> np.ndarray:
        """Orientations ``(n, 3, 3)`` of the particles of ``fr`` (in ``fr.ids`` order).

        Known particles rotate by one diffusion step (from frame 1 on); a coalescence product
        takes the orientation of its largest parent; any other new particle a uniform one.
        """
        inherit: dict[int, np.ndarray] = {}
        for ev in fr.events:
            if ev["kind"] == "coalescence":
                parents = [q for q in ev["parents"] if q in self.rot]
                if parents:
                    big = max(parents, key=lambda q: (self.radius[q], -q))
                    inherit[int(ev["child"])] = self.rot[big]
        ids = fr.ids.tolist()
        rot = np.empty((len(ids), 3, 3))
        fresh = []
        for k, i in enumerate(ids):
            m = self.rot.get(i, inherit.get(i))
            if m is None:
                fresh.append(k)
            else:
                rot[k] = m
        if fresh:
            rot[fresh] = random_rotations(self.rng, len(fresh))
        if fr.index > 0 and self.step_rad > 0 and ids:
            rot = small_rotations(self.rng, len(ids), self.step_rad) @ rot
        self.rot = dict(zip(ids, rot))
        self.radius = dict(zip(ids, fr.r_nm.tolist()))
        return rot


class RealisticRenderer:
    """Realistic bright-field imaging: renders (image, labels) of a physics frame.

    Holds the padded FFT grid, the lens and detector transfer functions, the drifting support
    phase, the particles' orientations and the illumination (see the module docstring).

    Parameters
    ----------
    p : SynthParams
    rng : numpy.random.Generator
        The texture / illumination stream (support phase first, then the illumination).
    orientation_rng : numpy.random.Generator
        The orientation stream.
    """

    def __init__(self, p: SynthParams, rng: np.random.Generator,
                 orientation_rng: np.random.Generator):
        self.p = p
        ps = float(p.pixel_size_nm)
        kv = float(p.accelerating_voltage_kv)
        self.lam = wavelength_nm(kv)
        kmax = min(float(p.aperture_per_nm), math.sqrt(0.5) / ps)
        deloc_nm = (abs(p.defocus_nm) * self.lam * kmax
                    + abs(p.spherical_aberration_mm) * 1e6 * self.lam**3 * kmax**3)
        self.pad = int(math.ceil(deloc_nm / ps)) + 8
        self.shape = (sfft.next_fast_len(p.height + 2 * self.pad),
                      sfft.next_fast_len(p.width + 2 * self.pad))
        self._make_support(rng)
        self.support_logamp = None
        if p.support == "carbon-black":
            self._make_carbon(_carbon_stream(p.seed))
        self.illumination = _Illumination(p, rng)
        self.transfer = wave_transfer(
            self.shape, ps, kv=kv, defocus_nm=p.defocus_nm, cs_mm=p.spherical_aberration_mm,
            aperture_per_nm=p.aperture_per_nm, focal_spread_nm=p.focal_spread_nm,
            convergence_mrad=p.convergence_mrad)
        self.mtf = detector_mtf(self.shape, p.mtf_sigma_px)
        self.uy = np.fft.fftfreq(self.shape[0])[:, None]
        self.ux = np.fft.fftfreq(self.shape[1])[None, :]
        self.g, self.xi = au_reflections_per_nm(kv)
        self.sigma_v = interaction_constant(kv) * p.mean_inner_potential_v  # rad / nm
        d_rad2 = p.rotation_deg2_per_s * (math.pi / 180.0) ** 2
        self.orientations = _Orientations(orientation_rng, math.sqrt(2.0 * d_rad2 / p.fps))

    def _make_support(self, rng: np.random.Generator) -> None:
        """The support's phase texture in sample coordinates, covering every padded frame."""
        p, pad = self.p, self.pad
        last = p.frames - 1
        dys = (0.0, _drift(p, last)[0])
        dxs = (0.0, _drift(p, last)[1])
        # grid node j of a frame sits at support index floor(-dy - oy) + j - pad
        self.oy = int(math.floor(-max(dys))) - 1 - pad
        self.ox = int(math.floor(-max(dxs))) - 1 - pad
        ny = int(math.ceil(-min(dys) - self.oy)) + self.shape[0] - pad + 2
        nx = int(math.ceil(-min(dxs) - self.ox)) + self.shape[1] - pad + 2
        sup = rng.standard_normal((ny, nx), dtype=np.float32)
        sigma_px = p.support_length_nm / p.pixel_size_nm
        ndimage.gaussian_filter(sup, sigma_px, output=sup, mode="wrap")
        sup -= sup.mean()
        sup *= np.float32(p.support_phase_rad / max(float(sup.std()), 1e-12))
        self.support = sup

    def _make_carbon(self, rng: np.random.Generator) -> None:
        """Replace the film by a carbon-black support on the same sample-coordinate grid.

        Spheres of graphitic carbon (radii ``carbon_radius_nm`` x (1 + 0.25 N(0, 1)), at least
        0.3 of it) at uniform random centres, a Boolean model with the density that covers
        ``carbon_coverage`` of the plane in projection; ``t`` the summed chord lengths (nm).
        The carbon's phase is ``sigma V_C t + carbon_texture_rad sqrt(t / 10 nm) T`` and its
        log-amplitude ``-t / (2 carbon_mfp_nm)``, with ``T`` a unit-variance texture: half a
        ring spectrum at the graphite (002) spacing (0.344 nm, ring width 0.35 nm^-1: turbostratic
        crystallites ~1-2 nm across), half the amorphous film's Gaussian texture
        (``support_length_nm``); the ring is normalised to its full, unaliased variance, so at
        pixel sizes whose Nyquist frequency lies below 2.9 nm^-1 the fringes are not resolved
        and only that part of the texture is left.  Vacuum (``t = 0``) has neither phase nor
        texture.
        """
        p = self.p
        ps = float(p.pixel_size_nm)
        ny, nx = self.support.shape
        r_mean = float(p.carbon_radius_nm) / ps                      # px
        margin = 2.0 * r_mean
        area = (ny + 2 * margin) * (nx + 2 * margin)
        mean_r2 = r_mean**2 * (1.0 + 0.25**2)
        lam = -math.log(1.0 - float(p.carbon_coverage)) / (math.pi * mean_r2)
        n = int(rng.poisson(lam * area))
        cy = rng.uniform(-margin, ny + margin, n)
        cx = rng.uniform(-margin, nx + margin, n)
        rr = r_mean * np.maximum(1.0 + 0.25 * rng.standard_normal(n), 0.3)
        t = np.zeros((ny, nx), dtype=np.float64)                     # nm of carbon
        for k in range(n):
            y0, y1 = max(int(math.ceil(cy[k] - rr[k])), 0), min(int(cy[k] + rr[k]) + 1, ny)
            x0, x1 = max(int(math.ceil(cx[k] - rr[k])), 0), min(int(cx[k] + rr[k]) + 1, nx)
            if y1 <= y0 or x1 <= x0:
                continue
            dy = np.arange(y0, y1) - cy[k]
            dx = np.arange(x0, x1) - cx[k]
            d2 = dy[:, None] ** 2 + dx[None, :] ** 2
            t[y0:y1, x0:x1] += 2.0 * ps * np.sqrt(np.clip(rr[k] ** 2 - d2, 0.0, None))
        # texture: graphitic ring + amorphous part, each of unit (full-band) variance
        white = rng.standard_normal((ny, nx))
        k = np.hypot(np.fft.fftfreq(ny)[:, None], np.fft.fftfreq(nx)[None, :]) / ps  # nm^-1
        k0, width = 1.0 / 0.344, 0.35
        ring = np.exp(-0.5 * ((k - k0) / width) ** 2)
        full_var = ps**2 * 2.0 * math.pi * k0 * width * math.sqrt(math.pi)
        tex = np.fft.ifft2(np.fft.fft2(white) * ring).real / math.sqrt(full_var)
        amorph = ndimage.gaussian_filter(rng.standard_normal((ny, nx)),
                                         float(p.support_length_nm) / ps, mode="wrap")
        amorph /= max(float(amorph.std()), 1e-12)
        tex = (tex + amorph) / math.sqrt(2.0)
        sigma_c = interaction_constant(float(p.accelerating_voltage_kv)) * float(
            p.carbon_inner_potential_v)
        phase = sigma_c * t + float(p.carbon_texture_rad) * np.sqrt(t / 10.0) * tex
        self.support = phase.astype(np.float32)
        self.support_logamp = (-t / (2.0 * float(p.carbon_mfp_nm))).astype(np.float32)
        self.carbon_nm = t.astype(np.float32)

    def particle_wave(self, yg: np.ndarray, xg: np.ndarray, rp: np.ndarray,
                      s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Log-amplitude and phase (rad) of the particles' transmission on the padded grid.

        Parameters
        ----------
        yg, xg, rp : numpy.ndarray
            Centres on the padded grid and radii, px.
        s : numpy.ndarray
            ``(n, 26)`` excitation errors, nm^-1.

        Returns
        -------
        log_amplitude, phase : numpy.ndarray
            ``self.shape`` float32 each (0 off the particles).
        """
        ny, nx = self.shape
        ps = float(self.p.pixel_size_nm)
        absorb = self.sigma_v * float(self.p.absorption_ratio)
        logamp = np.zeros(self.shape, dtype=np.float32)
        phase = np.zeros(self.shape, dtype=np.float32)
        y0 = np.maximum(np.ceil(yg - rp), 0).astype(np.int64)
        y1 = np.minimum(np.floor(yg + rp) + 1, ny).astype(np.int64)
        x0 = np.maximum(np.ceil(xg - rp), 0).astype(np.int64)
        x1 = np.minimum(np.floor(xg + rp) + 1, nx).astype(np.int64)
        for k in np.flatnonzero((y1 > y0) & (x1 > x0)):
            dy = np.arange(y0[k], y1[k], dtype=np.float64) - yg[k]
            dx = np.arange(x0[k], x1[k], dtype=np.float64) - xg[k]
            d2 = dy[:, None] ** 2 + dx[None, :] ** 2
            t = 2.0 * ps * np.sqrt(np.clip(rp[k] * rp[k] - d2, 0.0, None))  # nm
            la = -absorb * t
            for j in np.flatnonzero(np.abs(s[k]) < _S_CUT_PER_NM):
                ig = two_beam_intensity(t, float(s[k, j]), float(self.xi[j]))
                la += 0.5 * np.log(np.clip(1.0 - ig, 1e-3, 1.0))
            logamp[y0[k]:y1[k], x0[k]:x1[k]] += la.astype(np.float32)
            phase[y0[k]:y1[k], x0[k]:x1[k]] += (self.sigma_v * t).astype(np.float32)
        return logamp, phase

    def intensity(self, fr: _Frame, yp: np.ndarray, xp: np.ndarray,
                  rp: np.ndarray) -> np.ndarray:
        """Noise-free image intensity ``(height, width)`` float32 of a frame (background ~1).

        Parameters
        ----------
        fr : _Frame
        yp, xp, rp : numpy.ndarray
            Particle centres and radii in image coordinates, px.
        """
        p, pad = self.p, self.pad
        dy, dx = _drift(p, fr.index)
        sy, sx = -dy - self.oy, -dx - self.ox
        iy, ix = int(math.floor(sy)), int(math.floor(sx))
        fy, fx = sy - iy, sx - ix
        # grid node j shows image coordinate j - pad - fy: render there, shift back in Fourier
        s = excitation_errors(self.orientations.advance(fr), self.g, self.lam)
        logamp, phase = self.particle_wave(yp + pad + fy, xp + pad + fx, rp, s)
        phase += self.support[iy - pad: iy - pad + self.shape[0],
                              ix - pad: ix - pad + self.shape[1]]
        if self.support_logamp is not None:
            logamp += self.support_logamp[iy - pad: iy - pad + self.shape[0],
                                          ix - pad: ix - pad + self.shape[1]]
        amp = np.exp(logamp, out=logamp)
        wave = np.empty(self.shape, dtype=np.complex64)
        wave.real = amp * np.cos(phase)
        wave.imag = amp * np.sin(phase)
        spec = sfft.fft2(wave, overwrite_x=True)
        spec *= self.transfer
        spec *= np.exp(2j * np.pi * self.uy * fy).astype(np.complex64)  # separable ramp
        spec *= np.exp(2j * np.pi * self.ux * fx).astype(np.complex64)
        img = sfft.ifft2(spec, overwrite_x=True)
        inten = (img.real * img.real + img.imag * img.imag).astype(np.float32)
        inten = sfft.irfft2(sfft.rfft2(inten) * self.mtf, s=self.shape)
        inten = inten[pad: pad + p.height, pad: pad + p.width]
        return inten * self.illumination(fr.index / float(p.fps))

    def render(
        self, fr: _Frame, noise_rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Counts (uint16) and labels (uint32) of one frame; ``noise_rng`` draws the shot noise."""
        p = self.p
        yp, xp, rp = _image_coords(p, fr)
        labels, _ = _labels_and_thickness(p.height, p.width, yp, xp, rp, fr.ids)
        inten = self.intensity(fr, yp, xp, rp)
        inten *= np.float32(p.dose_per_px)
        counts = noise_rng.poisson(np.maximum(inten, 0.0).astype(np.float64))
        np.minimum(counts, 65535, out=counts)
        return counts.astype(np.uint16), labels


def _renderer(p: SynthParams, tex_rng: np.random.Generator
              ) -> MassThicknessRenderer | RealisticRenderer:
    """The renderer of ``p.imaging``."""
    if p.imaging == "realistic":
        return RealisticRenderer(p, tex_rng, _orientation_stream(p.seed))
    return MassThicknessRenderer(p, tex_rng)


def _run(p: SynthParams) -> Iterator[tuple[_Frame, np.ndarray, np.ndarray]]:
    """Physics and imaging together: yields (physics frame, counts, labels) of each frame."""
    _, tex_rng, noise_rng = _streams(p.seed)
    renderer = _renderer(p, tex_rng)
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
