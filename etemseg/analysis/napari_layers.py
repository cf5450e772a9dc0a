"""What `etemseg view` shows in napari: the frames, every model's masks and tracks as layers.

The layer list is plain data (napari's "layer data tuples" ``(data, kwargs, layer_type)``), built
without napari, so it is tested headless; :func:`launch` is the only place that imports napari
(the optional ``view`` extra).  Frames and masks stay lazy Zarr arrays: napari reads the frames
it shows, so a 240,000-frame movie opens at once.

World coordinates: ``t`` in frames (the store index, the ``frame`` column of every table; times
in s are ``frames.zarr/time_s``), ``y`` and ``x`` in nm (pixel size of the frame store; px when
uncalibrated).  Tracks are napari's ``[track_id, t, y, x]`` rows from ``trajectories.parquet``
(``particle``, ``frame``, ``y_px``, ``x_px``, drawn with the same scale as the images), with a
merge graph from the coalescence events (the surviving track's parents).

The mask stores are also OME-NGFF 0.5 label images (``image-label`` metadata whose
``source.image`` is the frame store, written by ``etemseg infer``): :func:`label_source` follows
that link as OME-Zarr readers do.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from etemseg.errors import ConfigError, InputFileError
from etemseg.io.store import MovieStore

__all__ = ["find_models", "label_source", "launch", "layer_data", "tracks_layer"]

log = logging.getLogger(__name__)

#: A layer data tuple: (data, keyword arguments of ``viewer.add_<type>``, layer type).
Layer = tuple[object, dict, str]


def find_models(movie_dir: str | Path) -> list[str]:
    """Models with a mask store under ``results/{movie}`` (``{model}/mask.zarr``), sorted."""
    movie_dir = Path(movie_dir)
    return sorted(p.parent.parent.name for p in movie_dir.glob("*/mask.zarr/zarr.json"))


def label_source(label_store: str | Path) -> Path:
    """The image an OME-NGFF label image belongs to: ``ome.image-label.source.image`` of the
    store's group, relative to the store (default ``../../``, the image above a ``labels``
    group), checked to be an OME-NGFF image (``multiscales``).

    Raises
    ------
    InputFileError
        No ``image-label`` metadata, or the source is not an OME-NGFF image.
    """
    label_store = Path(label_store)
    try:
        attrs = json.loads((label_store / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError) as exc:
        raise InputFileError(label_store, f"not a Zarr v3 group ({exc})") from exc
    ome = attrs.get("ome", {})
    if "image-label" not in ome:
        raise InputFileError(label_store, "has no OME-NGFF image-label metadata (written by "
                                          "`etemseg infer` since this version)")
    rel = ome["image-label"].get("source", {}).get("image", "../../")
    source = Path(os.path.normpath(label_store / rel))
    try:
        src = json.loads((source / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError):
        src = {}
    if "multiscales" not in src.get("ome", {}):
        raise InputFileError(label_store, f"its image-label source {rel!r} ({source}) is not an "
                                          "OME-NGFF image")
    return source


def _contrast_limits(frames: MovieStore) -> list[float]:
    """0.5-99.5 percentiles of the first frame (a fixed display range without reading the movie).
    """
    first = frames.read(0, 1)[0].astype(np.float32)
    finite = first[np.isfinite(first)]
    if not finite.size:
        return [0.0, 1.0]
    lo, hi = np.percentile(finite, [0.5, 99.5])
    return [float(lo), float(hi if hi > lo else lo + 1)]


def tracks_layer(tracks_dir: str | Path) -> tuple[np.ndarray, dict[int, list[int]]] | None:
    """napari tracks data of a tracking run: ``(N, 4)`` float rows ``[particle, frame, y_px,
    x_px]`` sorted by particle and frame, and the merge graph ``{child: [parents]}`` of the
    coalescence (and split) events, parents other than the child itself; None without a
    ``trajectories.parquet``."""
    tracks_dir = Path(tracks_dir)
    path = tracks_dir / "trajectories.parquet"
    if not path.is_file():
        return None
    try:
        traj = pq.read_table(path, columns=["particle", "frame", "y_px", "x_px"]).to_pandas()
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for damaged files
        raise InputFileError(path, f"not a readable trajectories table ({exc})") from exc
    traj = traj.sort_values(["particle", "frame"], kind="stable")
    data = traj[["particle", "frame", "y_px", "x_px"]].to_numpy(np.float64)
    graph: dict[int, list[int]] = {}
    events_path = tracks_dir / "events.parquet"
    if events_path.is_file():
        events = pd.read_parquet(events_path, columns=["kind", "parents", "children"])
        known = set(traj["particle"].unique().tolist())
        for parents, children in events.loc[events["kind"].isin(["coalescence", "split"]),
                                            ["parents", "children"]].itertuples(index=False):
            for child in children:
                ps = sorted(int(p) for p in parents if p != child and p in known)
                if ps and child in known:
                    graph.setdefault(int(child), [])
                    graph[int(child)] = sorted(set(graph[int(child)]) | set(ps))
    return data, graph


def layer_data(movie_dir: str | Path, models: list[str] | None = None) -> list[Layer]:
    """The layers of one movie: frames (image), each model's mask (labels) and tracks.

    Parameters
    ----------
    movie_dir : path
        ``results/{movie}`` (with ``frames.zarr``), or a mask store (its OME-NGFF
        ``image-label`` source gives the frames, its folder the model).
    models : list of str, optional
        Models to show (folders of ``movie_dir`` with a ``mask.zarr``); default all, the first
        one's layers visible.

    Returns
    -------
    list of (data, kwargs, layer_type)
        ``("image")`` the frame array ``(T, H, W)``; per model ``("labels")`` the mask array and
        ``("tracks")`` the :func:`tracks_layer` rows (when tracked).  Every layer has
        ``scale = (1, ps, ps)``: t in frames, y and x in nm.

    Raises
    ------
    InputFileError
        A missing or damaged store, or a mask store of another shape than the frames.
    ConfigError
        An unknown model.
    """
    movie_dir = Path(movie_dir)
    if (movie_dir / "zarr.json").is_file() and movie_dir.name == "mask.zarr":
        frames_path = label_source(movie_dir)
        movie_dir, models = frames_path.parent, models or [movie_dir.parent.name]
    frames = MovieStore.open(movie_dir / "frames.zarr")
    found = find_models(movie_dir)
    for m in models or ():
        if m not in found:
            raise ConfigError(f"--model: no {movie_dir / m / 'mask.zarr'}; models here: "
                              f"{', '.join(found) or 'none'}")
    models = list(models or found)
    ps = frames.pixel_size_nm or 1.0
    scale = (1.0, float(ps), float(ps))
    unit = "nm" if frames.pixel_size_nm else "px"
    layers: list[Layer] = [(frames.array, {
        "name": f"{movie_dir.name} frames", "scale": scale,
        "contrast_limits": _contrast_limits(frames), "colormap": "gray",
        "metadata": {"axes": ["t (frame)", f"y ({unit})", f"x ({unit})"],
                     "time_s": str(frames.path / "time_s")}}, "image")]
    for i, model in enumerate(models):
        masks = MovieStore.open(movie_dir / model / "mask.zarr")
        if masks.array.shape != frames.array.shape:
            raise InputFileError(masks.path, f"has shape {masks.array.shape}, the frames "
                                             f"{frames.array.shape}; not the same movie")
        layers.append((masks.array, {"name": f"{model} mask", "scale": scale, "opacity": 0.4,
                                     "visible": i == 0}, "labels"))
        tracks = tracks_layer(movie_dir / model)
        if tracks is not None and len(tracks[0]):
            layers.append((tracks[0], {"name": f"{model} tracks", "scale": scale,
                                       "graph": tracks[1], "tail_length": 40,
                                       "visible": i == 0}, "tracks"))
    return layers


def launch(layers: list[Layer], title: str = "etemseg") -> None:  # pragma: no cover - GUI
    """Open a napari window with ``layers`` and run its event loop (blocks until closed).

    Raises
    ------
    ConfigError
        napari is not installed (the optional ``view`` extra).
    """
    try:
        import napari
    except ImportError:
        raise ConfigError("napari is not installed; `pip install 'etemseg[view]'` (or "
                          "`pip install 'napari[all]'`)") from None
    viewer = napari.Viewer(title=title)
    for data, kwargs, kind in layers:
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    napari.run()
