"""Electron optics and crystal diffraction for the realistic imaging mode.

Everything here is a small function of physical quantities (nm, V, kV, rad) used by
:class:`etemseg.synth.imaging.RealisticRenderer`; the physics is written out in the docstring of
:mod:`etemseg.synth.imaging`.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "wavelength_nm",
    "interaction_constant",
    "extinction_distances_nm",
    "au_reflections_per_nm",
    "wave_transfer",
    "detector_mtf",
    "random_rotations",
    "small_rotations",
    "excitation_errors",
    "two_beam_intensity",
]

_H = 6.62607015e-34  # J s
_M0 = 9.1093837015e-31  # kg
_E = 1.602176634e-19  # C
_C = 299792458.0  # m/s

#: Au lattice constant, nm (fcc).
AU_LATTICE_NM = 0.40782

#: Two-beam extinction distances of Au at 100 kV, nm (Williams & Carter, Table 13.1), by family.
AU_EXTINCTION_100KV_NM = {(1, 1, 1): 18.3, (2, 0, 0): 20.2, (2, 2, 0): 27.8}


def wavelength_nm(kv: float) -> float:
    """Relativistic electron wavelength, nm, at an accelerating voltage of ``kv`` kV.

    ``lambda = h / sqrt(2 m0 e V (1 + e V / (2 m0 c^2)))``; 300 kV gives 1.969 pm.
    """
    v = float(kv) * 1e3
    return _H / math.sqrt(2.0 * _M0 * _E * v * (1.0 + _E * v / (2.0 * _M0 * _C**2))) * 1e9


def interaction_constant(kv: float) -> float:
    """Interaction constant ``sigma = 2 pi gamma m0 e lambda / h^2``, rad / (V nm).

    The phase of the exit wave is ``sigma * V * t`` for a mean inner potential ``V`` (V) and a
    thickness ``t`` (nm); 300 kV gives 6.53e-3 rad / (V nm).
    """
    v = float(kv) * 1e3
    gamma = 1.0 + _E * v / (_M0 * _C**2)
    lam_m = wavelength_nm(kv) * 1e-9
    return 2.0 * math.pi * gamma * _M0 * _E * lam_m / _H**2 * 1e-9


def _lambda_gamma(kv: float) -> float:
    v = float(kv) * 1e3
    return wavelength_nm(kv) * (1.0 + _E * v / (_M0 * _C**2))


def extinction_distances_nm(kv: float) -> dict[tuple[int, int, int], float]:
    """Au extinction distances at ``kv`` kV, nm, per reflection family.

    ``xi_g = pi V_cell cos(theta_B) / (lambda F_g)`` with ``F_g`` proportional to the relativistic
    mass, so ``xi_g`` scales as ``1 / (lambda gamma)`` from the 100 kV table (x1.42 at 300 kV).
    """
    scale = _lambda_gamma(100.0) / _lambda_gamma(kv)
    return {hkl: xi * scale for hkl, xi in AU_EXTINCTION_100KV_NM.items()}


def au_reflections_per_nm(kv: float) -> tuple[np.ndarray, np.ndarray]:
    """The low-order Au reflections in the crystal frame and their extinction distances.

    Returns
    -------
    g : numpy.ndarray
        ``(26, 3)`` float64 reciprocal-lattice vectors, nm^-1: the 8 {111}, 6 {200} and 12 {220}.
    xi : numpy.ndarray
        ``(26,)`` float64 extinction distance of each, nm.
    """
    xis = extinction_distances_nm(kv)
    g, xi = [], []
    for h in (-2, -1, 0, 1, 2):
        for k in (-2, -1, 0, 1, 2):
            for ll in (-2, -1, 0, 1, 2):
                key = tuple(sorted((abs(h), abs(k), abs(ll)), reverse=True))
                if key in xis:
                    g.append((h, k, ll))
                    xi.append(xis[key])
    return np.asarray(g, dtype=np.float64) / AU_LATTICE_NM, np.asarray(xi, dtype=np.float64)


def wave_transfer(
    shape: tuple[int, int],
    pixel_size_nm: float,
    *,
    kv: float,
    defocus_nm: float,
    cs_mm: float,
    aperture_per_nm: float,
    focal_spread_nm: float,
    convergence_mrad: float,
) -> np.ndarray:
    """Objective-lens wave transfer function on an FFT grid (``numpy.fft`` frequency order).

    ``T(k) = A(k) E_t(k) E_s(k) exp(-i chi(k))`` with the aberration phase
    ``chi = pi lambda df k^2 + pi/2 Cs lambda^3 k^4`` (``df < 0``: underfocus), the temporal and
    spatial coherence envelopes ``E_t = exp(-(pi lambda Delta)^2 k^4 / 2)``,
    ``E_s = exp(-(pi alpha / lambda)^2 (df lambda k + Cs lambda^3 k^3)^2)`` and the objective
    aperture ``A`` (1 inside ``aperture_per_nm``, a raised-cosine edge 5 % wide).

    Returns
    -------
    numpy.ndarray
        ``shape`` complex64.
    """
    lam = wavelength_nm(kv)
    cs = float(cs_mm) * 1e6
    ky = np.fft.fftfreq(shape[0], d=pixel_size_nm)
    kx = np.fft.fftfreq(shape[1], d=pixel_size_nm)
    k2 = ky[:, None] ** 2 + kx[None, :] ** 2
    k = np.sqrt(k2)
    chi = math.pi * lam * defocus_nm * k2 + 0.5 * math.pi * cs * lam**3 * k2 * k2
    env = np.exp(-0.5 * (math.pi * lam * focal_spread_nm) ** 2 * k2 * k2)
    grad = defocus_nm * lam * k + cs * lam**3 * k2 * k
    env *= np.exp(-((math.pi * convergence_mrad * 1e-3 / lam) ** 2) * grad * grad)
    edge = 0.05 * aperture_per_nm
    ramp = np.clip((aperture_per_nm - k) / edge, 0.0, 1.0)
    env *= 0.5 - 0.5 * np.cos(math.pi * ramp)
    return (env * np.exp(-1j * chi)).astype(np.complex64)


def detector_mtf(shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Detector MTF on an ``rfft2`` grid: pixel sinc times a Gaussian charge spread.

    ``MTF(u, v) = sinc(u) sinc(v) exp(-2 pi^2 sigma^2 (u^2 + v^2))``, ``u, v`` in cycles/px.

    Returns
    -------
    numpy.ndarray
        ``(shape[0], shape[1] // 2 + 1)`` float32.
    """
    u = np.fft.fftfreq(shape[0])
    v = np.fft.rfftfreq(shape[1])
    gauss = np.exp(-2.0 * math.pi**2 * sigma_px**2 * (u[:, None] ** 2 + v[None, :] ** 2))
    return (np.sinc(u)[:, None] * np.sinc(v)[None, :] * gauss).astype(np.float32)


def random_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    """``(n, 3, 3)`` rotation matrices uniform over SO(3) (normalised Gaussian quaternions)."""
    q = rng.standard_normal((n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], axis=-1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], axis=-1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], axis=-1),
    ], axis=1)


def small_rotations(rng: np.random.Generator, n: int, sd_rad: float) -> np.ndarray:
    """``(n, 3, 3)`` rotations by rotation vectors with independent ``N(0, sd_rad^2)`` components.

    One step of rotational diffusion (Rodrigues' formula).
    """
    w = rng.standard_normal((n, 3)) * sd_rad
    theta = np.linalg.norm(w, axis=1)
    safe = np.where(theta > 0, theta, 1.0)
    a = (w / safe[:, None]) * (theta > 0)[:, None]
    kx = np.zeros((n, 3, 3))
    kx[:, 0, 1], kx[:, 0, 2], kx[:, 1, 2] = -a[:, 2], a[:, 1], -a[:, 0]
    kx[:, 1, 0], kx[:, 2, 0], kx[:, 2, 1] = a[:, 2], -a[:, 1], a[:, 0]
    s, c = np.sin(theta)[:, None, None], np.cos(theta)[:, None, None]
    return np.eye(3)[None] + s * kx + (1 - c) * (kx @ kx)


def excitation_errors(rot: np.ndarray, g: np.ndarray, lam_nm: float) -> np.ndarray:
    """Excitation errors ``s_g``, nm^-1, of reflections ``g`` for crystals rotated by ``rot``.

    The beam runs along +z; with the Ewald sphere of radius ``1 / lambda``,
    ``s_g = -(g_z + lambda |g|^2 / 2)`` for the lab-frame ``g = R g_crystal``.

    Parameters
    ----------
    rot : (n, 3, 3) float
    g : (m, 3) float, nm^-1
    lam_nm : float

    Returns
    -------
    numpy.ndarray
        ``(n, m)`` float64.
    """
    gz = np.einsum("nj,mj->nm", rot[:, 2, :], g)
    return -(gz + 0.5 * lam_nm * np.sum(g * g, axis=1)[None, :])


def two_beam_intensity(t_nm: np.ndarray, s: float, xi_nm: float) -> np.ndarray:
    """Dynamical two-beam diffracted intensity (fraction of the incident beam).

    ``I_g = (pi t / xi)^2 sinc^2(t s_eff)``, ``s_eff = sqrt(s^2 + 1 / xi^2)``,
    ``sinc(x) = sin(pi x) / (pi x)``; at the Bragg condition ``I_g = sin^2(pi t / xi)``.

    Parameters
    ----------
    t_nm : numpy.ndarray
        Thickness, nm.
    s : float
        Excitation error, nm^-1.
    xi_nm : float
        Extinction distance, nm.
    """
    s_eff = math.sqrt(s * s + 1.0 / (xi_nm * xi_nm))
    return (math.pi * t_nm / xi_nm) ** 2 * np.sinc(t_nm * s_eff) ** 2
