"""etemseg: in-situ ETEM movies of sintering nanoparticles -> particle measurements.

The functions a notebook user calls, importable from the package itself (each is loaded on first
use, so ``import etemseg`` stays cheap and the command line loads only what a stage needs):

==========================  ================================================================
simulate, SynthParams,      the simulated sintering movie with ground truth
write_synthetic_movie       (:mod:`etemseg.synth`)
scan_dump, read_frame       frame dumps: .dm4/.dm3/.tif/.npy, K2 names (:mod:`etemseg.io.framedump`)
MovieStore, ingest          the Zarr movie store and the dump -> store conversion
pseudolabel_fast,           the paper's classical labelling recipe, fast and literal
pseudolabel_reference,      (:mod:`etemseg.stages.pseudolabel`)
PseudoLabelParams
TrainConfig, train,         CNN training in memory and model files (:mod:`etemseg.nn`)
load_training_data,
load_model
measure_frame,              particle tables from masks, in nm and s
measure_stack               (:mod:`etemseg.analysis.measure`)
link, link_movie,           trajectories and events from detections (:mod:`etemseg.tracking`)
estimate_drift
radius_series,              ripening kinetics and size distributions
fit_lsw_rate, analyse       (:mod:`etemseg.analysis.sintering`)
score_frames, score_stores  accuracy against ground truth (:mod:`etemseg.analysis.scoring`)
==========================  ================================================================

The workflow's stages, layers and results layout: ``docs/architecture.md``.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> module that defines it
_API = {
    "simulate": "etemseg.synth", "SynthParams": "etemseg.synth",
    "write_synthetic_movie": "etemseg.synth",
    "scan_dump": "etemseg.io.framedump", "read_frame": "etemseg.io.framedump",
    "MovieStore": "etemseg.io.store", "ingest": "etemseg.stages.ingest",
    "pseudolabel_fast": "etemseg.stages.pseudolabel",
    "pseudolabel_reference": "etemseg.stages.pseudolabel",
    "PseudoLabelParams": "etemseg.stages.pseudolabel",
    "TrainConfig": "etemseg.nn.training", "train": "etemseg.nn.training",
    "load_training_data": "etemseg.nn.training", "load_model": "etemseg.nn.checkpoint",
    "measure_frame": "etemseg.analysis.measure", "measure_stack": "etemseg.analysis.measure",
    "link": "etemseg.tracking", "link_movie": "etemseg.tracking",
    "estimate_drift": "etemseg.tracking",
    "radius_series": "etemseg.analysis.sintering", "fit_lsw_rate": "etemseg.analysis.sintering",
    "analyse": "etemseg.analysis.sintering",
    "score_frames": "etemseg.analysis.scoring", "score_stores": "etemseg.analysis.scoring",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'etemseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
