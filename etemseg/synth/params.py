"""Parameters of the simulator: :class:`SynthParams`, its validation and (de)serialisation.

Lengths carry their unit in the field name (``_nm``, ``_px``, ``_mm``, ``_per_nm``); the imaging
fields of each mode are described in :mod:`etemseg.synth.imaging`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from etemseg.errors import ConfigError, is_int, is_number

__all__ = ["SynthParams", "IMAGING_MODES", "DEFAULT_DOSE", "SUPPORTS"]

#: The imaging modes of :func:`etemseg.synth.simulate`.
IMAGING_MODES = ("mass-thickness", "realistic")

#: Mean counts per background pixel per frame when ``dose`` is None, per imaging mode.  The
#: realistic default, 40 e-/px/frame, is ~12 e-/A^2 per frame at 0.18 nm/px, i.e. ~5,000 e-/A^2/s
#: at 400 frames/s: a usual in-situ HRTEM dose rate for Au, and low counts per frame.
DEFAULT_DOSE = {"mass-thickness": 200.0, "realistic": 40.0}

#: Supports of the realistic mode: an amorphous carbon film, or carbon-black aggregates (thick
#: graphitic carbon spheres with vacuum between them), see :mod:`etemseg.synth.imaging`.
SUPPORTS = ("film", "carbon-black")

#: Au {111} spacing 0.2355 nm: an objective aperture below 1/0.2355 nm^-1 keeps Bragg beams out.
_AU_111_PER_NM = 4.246


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
    dose : float or None
        Mean electron counts per background pixel per frame (Poisson noise); None: the imaging
        mode's default, :data:`DEFAULT_DOSE` (200 for mass-thickness, 40 for realistic).
    contrast : float
        Mass-thickness mode: fractional intensity drop at the centre of a particle
        (0 <= contrast < 1).
    edge_width_px : float
        Mass-thickness mode: width of the soft particle edge in px (Gaussian blur of sigma
        ``edge_width_px / 2``).
    texture : float
        Mass-thickness mode: amplitude (standard deviation, fraction of background) of the
        amorphous support texture.
    texture_length_px : float
        Mass-thickness mode: correlation length (Gaussian sigma, px) of the support texture.
    gradient : float
        Amplitude of the slow illumination gradient (fraction of background, 0 <= gradient < 0.8).
    imaging : str
        ``'mass-thickness'`` (the fast cartoon: dark discs with soft edges) or ``'realistic'``
        (bright-field phase-contrast imaging of crystalline particles: diffraction contrast,
        Fresnel fringes, amorphous support, MTF, low dose); see :mod:`etemseg.synth.imaging`.
        The fields below apply to ``'realistic'`` only.
    accelerating_voltage_kv : float
        Accelerating voltage, kV (electron wavelength, interaction constant, extinction
        distances).
    defocus_nm : float
        Objective-lens defocus, nm; negative is underfocus (weaker lens).
    spherical_aberration_mm : float
        Spherical aberration coefficient Cs, mm (1.2: an uncorrected 300 kV FEG objective; ~0 with
        an image corrector).
    aperture_per_nm : float
        Objective aperture radius in reciprocal space, nm^-1 (below Au {111}, 4.25 nm^-1, so the
        Bragg beams are stopped and diffraction shows as contrast).
    focal_spread_nm : float
        Focal spread of the temporal-coherence envelope, nm.
    convergence_mrad : float
        Illumination semi-angle of the spatial-coherence envelope, mrad.
    mean_inner_potential_v : float
        Mean inner potential of the particles, V (Au ~30 V): the phase shift per nm of thickness.
    absorption_ratio : float
        Absorptive over real potential (``V'/V``, thermal diffuse scattering beyond the
        aperture): the mass-thickness absorption of the particles (0 <= ratio < 1).
    rotation_deg2_per_s : float
        Rotational diffusion coefficient of the particles' crystal orientation, deg^2/s: the
        diffraction contrast of a particle drifts with time, so particles fade and recover
        (default 5: ~3 deg r.m.s. per axis in 1 s, about one Bragg width of a 5 nm particle).
    support_phase_rad : float
        Root-mean-square phase of the amorphous support's random phase texture, rad.
    support_length_nm : float
        Correlation length (Gaussian sigma) of the support's phase texture, nm.
    support : str
        Realistic mode: ``'film'`` (an amorphous carbon film under every particle, the phase
        texture above) or ``'carbon-black'`` (Pt/C-catalyst-like: overlapping graphitic carbon
        spheres, thick and textured, with bare vacuum between them; replaces the film).
    carbon_radius_nm : float
        Carbon-black support: mean radius of the carbon primary spheres, nm (Vulcan-type carbon
        blacks: 15-25 nm).
    carbon_coverage : float
        Carbon-black support: projected fraction of the field covered by carbon (the rest is
        vacuum), in (0, 1).
    carbon_mfp_nm : float
        Carbon-black support: mass-thickness attenuation length of carbon, nm (intensity
        ``exp(-t / carbon_mfp_nm)`` through ``t`` nm of carbon: scattering beyond the aperture).
    carbon_inner_potential_v : float
        Carbon-black support: mean inner potential of graphitic carbon, V (its phase per nm).
    carbon_texture_rad : float
        Carbon-black support: r.m.s. phase of the carbon's texture through 10 nm of carbon, rad
        (grows as the square root of the thickness: independent graphitic crystallites add up).
    mtf_sigma_px : float
        Detector MTF: Gaussian sigma of the charge spread, px, on top of the pixel's own sinc.
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
    dose: float | None = None
    contrast: float = 0.45
    edge_width_px: float = 2.0
    texture: float = 0.08
    texture_length_px: float = 1.5
    gradient: float = 0.15
    imaging: str = "mass-thickness"
    accelerating_voltage_kv: float = 300.0
    defocus_nm: float = -300.0
    spherical_aberration_mm: float = 1.2
    aperture_per_nm: float = 3.5
    focal_spread_nm: float = 4.0
    convergence_mrad: float = 0.2
    mean_inner_potential_v: float = 30.0
    absorption_ratio: float = 0.08
    rotation_deg2_per_s: float = 5.0
    support_phase_rad: float = 0.08
    support_length_nm: float = 0.3
    support: str = "film"
    carbon_radius_nm: float = 15.0
    carbon_coverage: float = 0.75
    carbon_mfp_nm: float = 200.0
    carbon_inner_potential_v: float = 9.0
    carbon_texture_rad: float = 0.15
    mtf_sigma_px: float = 0.5
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
        positive = ("fps", "pixel_size_nm", "radius_mean_nm", "min_radius_nm",
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
        self._validate_imaging(bad)

    def _validate_imaging(self, bad: Any) -> None:
        """Check the dose and the imaging fields (``bad(name, why)`` builds the error)."""
        if self.dose is not None and (not is_number(self.dose) or self.dose <= 0):
            raise bad("dose", "must be None or a finite number > 0")
        if self.imaging not in IMAGING_MODES:
            raise bad("imaging", f"must be one of {', '.join(IMAGING_MODES)}")
        if self.support not in SUPPORTS:
            raise bad("support", f"must be one of {', '.join(SUPPORTS)}")
        ranges = {  # name: (low, high, low inclusive)
            "accelerating_voltage_kv": (10.0, 3000.0, False),
            "defocus_nm": (-1e5, 1e5, True),
            "spherical_aberration_mm": (-10.0, 10.0, True),
            "aperture_per_nm": (0.0, _AU_111_PER_NM, False),
            "focal_spread_nm": (0.0, 100.0, True),
            "convergence_mrad": (0.0, 10.0, True),
            "mean_inner_potential_v": (0.0, 100.0, False),
            "absorption_ratio": (0.0, 1.0, True),
            "rotation_deg2_per_s": (0.0, 1e6, True),
            "support_phase_rad": (0.0, 3.0, True),
            "support_length_nm": (0.0, 100.0, False),
            "mtf_sigma_px": (0.0, 10.0, True),
            "carbon_radius_nm": (0.0, 1000.0, False),
            "carbon_coverage": (0.0, 1.0, False),
            "carbon_mfp_nm": (0.0, 1e5, False),
            "carbon_inner_potential_v": (0.0, 100.0, True),
            "carbon_texture_rad": (0.0, 3.0, True),
        }
        for name, (lo, hi, closed) in ranges.items():
            v = getattr(self, name)
            ok = is_number(v) and (v >= lo if closed else v > lo) and v < hi
            if not ok:
                low = "[" if closed else "("
                raise bad(name, f"must be a finite number in {low}{lo:g}, {hi:g})")

    @property
    def dose_per_px(self) -> float:
        """Mean counts per background pixel per frame: ``dose``, or the imaging mode's default."""
        return float(DEFAULT_DOSE[self.imaging] if self.dose is None else self.dose)

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

