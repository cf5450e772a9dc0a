"""Simulated in-situ ETEM sintering movie of Au nanoparticles, with exact ground truth.

The simulator is the demo data set and the reference every later stage is scored against:
pseudo-labelling, CNN segmentation, particle measurement, tracking (with coalescence, vanish and
appear events) and the LSW ripening-rate fit.  The truth tables are produced by the same physics
that renders the images, so they agree with the pictures exactly.

The package is cut in four:

* :mod:`etemseg.synth.params`: :class:`SynthParams` (every field with its unit and validation);
* :mod:`etemseg.synth.physics`: the particle physics (LSW ripening, Brownian migration,
  coalescence, nucleation, stage drift; coordinates and label convention) and the truth tables,
  :func:`simulate_tracks`, :func:`simulate_drift`;
* :mod:`etemseg.synth.imaging` (with :mod:`etemseg.synth.optics`): the imaging modes,
  ``imaging: mass-thickness`` (the fast cartoon, the demo's default) and ``imaging: realistic``
  (crystalline particles with diffraction contrast, Fresnel fringes from a defocused
  objective lens with Cs, an amorphous phase-texture support or a thick carbon-black one with
  vacuum, detector MTF and low-dose Poisson counts), :func:`simulate`;
* :mod:`etemseg.synth.writers`: the K2-style TIFF dump with the truth labels and tables,
  :func:`write_synthetic_movie`, :func:`k2_frame_name`.

The physics of each part is written out in its module docstring; ``docs/simulator.md`` has an
overview with measured numbers.  Same parameters and seed: byte-identical output; the labels and
truth tables do not depend on the imaging mode.
"""

from __future__ import annotations

from etemseg.synth.imaging import simulate
from etemseg.synth.params import DEFAULT_DOSE, IMAGING_MODES, SynthParams
from etemseg.synth.physics import simulate_drift, simulate_tracks
from etemseg.synth.writers import k2_frame_name, write_synthetic_movie

__all__ = [
    "SynthParams",
    "simulate",
    "simulate_tracks",
    "simulate_drift",
    "write_synthetic_movie",
    "k2_frame_name",
    "IMAGING_MODES",
    "DEFAULT_DOSE",
]
