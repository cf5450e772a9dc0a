"""The results layout, spelled once.

Every path the workflow writes is built here, by the rules (``workflow/rules/*.smk`` call these
functions with wildcard strings such as ``"{movie}"``, so one function gives both a rule's file
pattern and a concrete path) and by the library and notebooks (with real names)::

    results/{movie}/source-manifest.json           frame files of a real dump (names, sizes, mtimes)
    results/{movie}/synth/{synth.json,frames,truth} the simulated demo movie and its ground truth
    results/{movie}/frames.zarr                     the movie store (ingest)
    results/{movie}/pseudo.zarr                     pseudo-labels
    results/{movie}/receipts/{stage}/chunk-{k}.json per-chunk receipts (ingest, pseudolabel)
    results/{movie}/qa/pseudo-frame-{t}.png         QA overlays; results/{movie}/pseudo_scores.json
    models/{model}/{model.pt,metrics.csv,curve.png,checkpoint.pt}
    results/{movie}/{model}/{prob,mask}.zarr        inference
    results/{movie}/{model}/receipts/infer/chunk-{k}.json
    results/{movie}/{model}/particles/{chunk,overlaps}-{k}.parquet   detections, frame overlaps
    results/{movie}/{model}/{trajectories,events,frames}.parquet   tracking (one set)
    results/{movie}/{model}/{eval,sintering}/ ; track_scores.json
    results/{movie}/{model}/sintering/{sizes,ripening,mobility,relaxation}.parquet, kinetics.png
    results/model_comparison.csv, model_threshold_sweep.png, model_contours.png
    logs/...                                        one log per job, mirroring the outputs

All functions return POSIX path strings relative to the workflow's working directory.
"""

from __future__ import annotations

RESULTS = "results"
MODELS = "models"
LOGS = "logs"
#: The tables of one tracking run (written as one set, see
#: :func:`etemseg.io.parquet.write_table_set`).
TRACK_TABLES = ("trajectories", "events", "frames")
#: The per-particle kinetics tables of one track set, in its sintering folder (one set, see
#: :func:`etemseg.analysis.sintering.write_kinetics`).
KINETICS_TABLES = ("sizes", "ripening", "mobility", "relaxation")


def movie_dir(movie: str) -> str:
    """``results/{movie}``: everything of one movie."""
    return f"{RESULTS}/{movie}"


def source_manifest(movie: str) -> str:
    return f"{movie_dir(movie)}/source-manifest.json"


def synth_dir(movie: str) -> str:
    return f"{movie_dir(movie)}/synth"


def synth_marker(movie: str) -> str:
    """Written last by ``etemseg synth``: the simulated movie is complete."""
    return f"{synth_dir(movie)}/synth.json"


def synth_frames(movie: str) -> str:
    return f"{synth_dir(movie)}/frames"


def truth_dir(movie: str) -> str:
    return f"{synth_dir(movie)}/truth"


def frames_store(movie: str) -> str:
    return f"{movie_dir(movie)}/frames.zarr"


def pseudo_store(movie: str) -> str:
    return f"{movie_dir(movie)}/pseudo.zarr"


def store_meta(store: str) -> str:
    """A store's group metadata file: what Snakemake tracks for a store's creation."""
    return f"{store}/zarr.json"


def receipt(stage: str, movie: str, k, model: str | None = None) -> str:
    """Receipt of time chunk ``k`` of a per-chunk stage (per model for ``infer``)."""
    base = product_dir(movie, model) if model else movie_dir(movie)
    return f"{base}/receipts/{stage}/chunk-{k}.json"


def qa_png(movie: str, t) -> str:
    return f"{movie_dir(movie)}/qa/pseudo-frame-{t}.png"


def pseudo_scores(movie: str) -> str:
    return f"{movie_dir(movie)}/pseudo_scores.json"


def model_dir(model: str) -> str:
    return f"{MODELS}/{model}"


def model_file(model: str) -> str:
    return f"{model_dir(model)}/model.pt"


def product_dir(movie: str, model: str) -> str:
    """``results/{movie}/{model}``: what one model made of one movie."""
    return f"{movie_dir(movie)}/{model}"


def prob_store(movie: str, model: str) -> str:
    return f"{product_dir(movie, model)}/prob.zarr"


def mask_store(movie: str, model: str) -> str:
    return f"{product_dir(movie, model)}/mask.zarr"


def particles_dir(movie: str, model: str) -> str:
    return f"{product_dir(movie, model)}/particles"


#: File names, within :func:`particles_dir`, of a time chunk's detections and frame overlaps.
PARTICLES_CHUNK = "chunk-{k}.parquet"
OVERLAPS_CHUNK = "overlaps-{k}.parquet"


def particles_chunk(movie: str, model: str, k) -> str:
    return f"{particles_dir(movie, model)}/{PARTICLES_CHUNK.format(k=k)}"


def overlaps_chunk(movie: str, model: str, k) -> str:
    """The frame-overlaps table of chunk ``k`` (pairs into its frames; ``etemseg measure
    --overlaps``), read by the track stage instead of labelling every mask again."""
    return f"{particles_dir(movie, model)}/{OVERLAPS_CHUNK.format(k=k)}"


def track_table(movie: str, model: str, table: str) -> str:
    """One of :data:`TRACK_TABLES` of a movie and model."""
    return f"{product_dir(movie, model)}/{table}.parquet"


def eval_dir(movie: str, model: str) -> str:
    return f"{product_dir(movie, model)}/eval"


def sintering_dir(movie: str, model: str) -> str:
    return f"{product_dir(movie, model)}/sintering"


def kinetics_table(movie: str, model: str, table: str) -> str:
    """One of :data:`KINETICS_TABLES` of a movie and model (in its sintering folder)."""
    return f"{sintering_dir(movie, model)}/{table}.parquet"


def kinetics_png(movie: str, model: str) -> str:
    """The kinetics figure (ripening rates, migration, relaxation) of a movie and model."""
    return f"{sintering_dir(movie, model)}/kinetics.png"


def overlay_movie(movie: str, model: str) -> str:
    """The overlay MP4 of a movie and model (contours by track, events, time, scale bar)."""
    return f"{product_dir(movie, model)}/overlay.mp4"


def track_scores(movie: str, model: str) -> str:
    return f"{product_dir(movie, model)}/track_scores.json"


def comparison(name: str) -> str:
    """Cross-movie model study outputs: ``model_comparison.csv``, ``model_contours.png``, ..."""
    return f"{RESULTS}/{name}"


def log(*parts) -> str:
    """``logs/{parts...}.log``: e.g. ``log(movie, "ingest", f"chunk-{k}")``."""
    return f"{LOGS}/" + "/".join(str(p) for p in parts) + ".log"
