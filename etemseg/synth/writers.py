"""Writers of the simulator: the K2-style frame dump, the truth labels and tables, synth.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from etemseg import __version__
from etemseg.errors import ConfigError, InputFileError
from etemseg.io.atomic import atomic_path
from etemseg.io.parquet import write_table
from etemseg.synth.imaging import _run
from etemseg.synth.params import SynthParams
from etemseg.synth.physics import _TableBuilder, simulate_drift

__all__ = ["write_synthetic_movie", "k2_frame_name"]


def k2_frame_name(index: int, fps: float, prefix: str = "Capture1", suffix: str = ".tif") -> str:
    """Gatan K2-IS file name of absolute frame ``index`` (0-based), ending in ``suffix``.

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
        f"_Frame_{within:04d}{suffix}"
    )


#: Frame file formats of :func:`write_synthetic_movie`: the suffix of each.
FRAME_FORMATS = {"tiff": ".tif", "dm4": ".dm4"}


def _tiff_writer(p: SynthParams):
    import tifffile

    ps = float(p.pixel_size_nm)
    meta_desc = {"unit": "nm", "pixel_size_nm": ps, "fps": float(p.fps)}

    def write(path: Path, img: np.ndarray) -> None:
        tifffile.imwrite(path, img, imagej=True, resolution=(1.0 / ps, 1.0 / ps),
                         metadata={"unit": "nm", "finterval": 1.0 / p.fps,
                                   "Info": json.dumps(meta_desc)})
    return write


def _dm4_writer(p: SynthParams):
    from etemseg.io.dm4 import write_dm4

    def write(path: Path, img: np.ndarray) -> None:
        write_dm4(path, img.astype(np.uint16, copy=False), float(p.pixel_size_nm),
                  exposure_s=1.0 / float(p.fps))
    return write



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
    frames_dir: Path, truth_dir: Path, p: SynthParams, tb: _TableBuilder, progress: bool,
    frame_format: str = "tiff",
) -> list[float]:
    """Simulate the movie; write the frames (TIFF or DM4) and the truth labels; fill ``tb``.

    Returns
    -------
    list of float
        Label coverage (fraction of non-zero pixels) of the first and the last frame (a single
        value when there is one frame).
    """
    from tqdm import tqdm

    write = {"tiff": _tiff_writer, "dm4": _dm4_writer}[frame_format](p)
    suffix = FRAME_FORMATS[frame_format]
    arr = _create_label_array(truth_dir / "labels.zarr", p)
    cov: list[float] = []
    bar = tqdm(total=p.frames, desc="synth", unit="frame", disable=not progress)
    try:
        for fr, img, lab in _run(p):
            write(frames_dir / k2_frame_name(fr.index, p.fps, suffix=suffix), img)
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
    summary["imaging"] = p.imaging
    summary["dose_per_px"] = p.dose_per_px
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
    out_dir: str | Path, params: SynthParams, *, progress: bool = True,
    frame_format: str = "tiff",
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
    size in nm. ``frame_format="dm4"`` writes K2-style DM4 files instead (``...Frame_FFFF.dm4``,
    uint16, calibrated in nm: :func:`etemseg.io.dm4.write_dm4`), as the camera does.
    Everything is built in a temporary directory next to ``out_dir`` and renamed into
    place when complete (``atomic_path``), so an interrupted run leaves no partial output.  A
    previous synth output (one holding ``synth.json``) is replaced; any other non-empty directory
    is refused.

    Parameters
    ----------
    out_dir : path
    params : SynthParams
    progress : bool
        Show a tqdm progress bar.
    frame_format : {"tiff", "dm4"}
        File format of the frames (:data:`FRAME_FORMATS`).

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
    if frame_format not in FRAME_FORMATS:
        raise ConfigError(f"format: {frame_format!r} is not one of {', '.join(FRAME_FORMATS)}")
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    p = params
    tb = _TableBuilder(p)
    with atomic_path(out_dir, directory=True) as tmp:
        frames_dir = tmp / "frames"
        truth_dir = tmp / "truth"
        frames_dir.mkdir()
        truth_dir.mkdir()
        cov = _write_frames(frames_dir, truth_dir, p, tb, progress, frame_format)
        particles, events = _write_truth_tables(truth_dir, p, tb)
        summary = _summary(p, particles, events, cov, out_dir)
        doc = {"params": p.to_dict(), "summary": summary, "version": __version__,
               "generator": "etemseg.synth"}
        (tmp / "synth.json").write_text(json.dumps(doc, indent=2) + "\n")
    return summary

