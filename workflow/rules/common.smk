# Config validation, per-movie settings, chunk lists and input functions.
import json
import math
from pathlib import Path

from snakemake.utils import validate

from etemseg.config import check_config
from etemseg.io.framedump import count_frames, write_source_manifest
from etemseg.io.store import n_chunks as _n_chunks


validate(config, schema="../schemas/config.schema.yaml")
check_config(config)  # cross-checks the schema cannot express: model names, train.movies, clevel

INGEST = {"codec": "blosc-zstd", "clevel": 3, "zarr_chunk_frames": None, **config.get("ingest", {})}
MOVIES = config["movies"]
PSEUDOLABEL = {"preset": "default", "params": {}, "method": "fast", "threads": 1, "qa_frames": 3,
               **config.get("pseudolabel", {})}
TRAIN = {"movies": None, "frame_stride": 1, "max_frames": None, "threads": 2, "gpus": 1,
         "settings": {}, **config.get("train", {})}
TRAIN_THREADS = int(TRAIN["threads"])
TRAIN_GPUS = int(TRAIN["gpus"])
MODELS = list(config.get("models", []))
INFER = {"threads": 1, "gpus": 0, "settings": {}, **config.get("infer", {})}
MEASURE = {"min_area_px": 20, **config.get("measure", {})}
TRACK = {"max_disp_nm": 1.0, "memory": 3, "centroid_only": False, **config.get("track", {})}


wildcard_constraints:
    movie="|".join(sorted(MOVIES)) or "^$",
    k=r"\d+",
    t=r"\d+",
    model=r"[A-Za-z0-9][A-Za-z0-9_.-]*",


def movie_cfg(movie):
    return MOVIES[movie]


def movie_fps(movie):
    m = movie_cfg(movie)
    return float(m.get("fps", m.get("synthetic", {}).get("fps", 400.0)))


def movie_chunk_frames(movie):
    return int(movie_cfg(movie).get("chunk_frames", 400))


def movie_source(movie):
    """Frame-dump folder of a movie (for synthetic movies: the simulator's output)."""
    m = movie_cfg(movie)
    if "synthetic" in m:
        return f"results/{movie}/synth/frames"
    return m["source"]


def movie_n_frames(movie):
    """Frames in a movie, known at DAG-build time (config for synthetic, a name scan otherwise)."""
    m = movie_cfg(movie)
    if "synthetic" in m:
        return int(m["synthetic"].get("frames", 48))
    return count_frames(m["source"], fps=movie_fps(movie))


def movie_chunks(movie):
    return list(range(_n_chunks(movie_n_frames(movie), movie_chunk_frames(movie))))


def source_manifest(movie):
    """Path of a real movie's frame-file manifest (names, sizes, mtimes; see below)."""
    return f"results/{movie}/source-manifest.json"


# Refreshed once per run, while the workflow is parsed (before Snakemake looks at any file):
# written only when the frames changed, so its mtime moves exactly then. A `notes.txt` or
# `Thumbs.db` added to the dump reruns nothing; an added, removed or rewritten frame reruns the
# movie from ingest on.
for _movie, _cfg in MOVIES.items():
    if "synthetic" not in _cfg:
        write_source_manifest(_cfg["source"], source_manifest(_movie))


def ingest_source_input(wildcards):
    """What ingest waits for: the simulator's completion marker, or the real dump's manifest."""
    if "synthetic" in movie_cfg(wildcards.movie):
        return f"results/{wildcards.movie}/synth/synth.json"
    return source_manifest(wildcards.movie)


def chunk_receipts(stage, movie):
    return [f"results/{movie}/receipts/{stage}/chunk-{k}.json" for k in movie_chunks(movie)]


def pseudolabel_options(wildcards=None):
    """CLI options of `etemseg pseudolabel` from the config (preset plus overrides)."""
    opts = [f"--preset {PSEUDOLABEL['preset']}", f"--method {PSEUDOLABEL['method']}"]
    return " ".join(opts + _cli_options(PSEUDOLABEL["params"]))


def qa_frames(movie):
    """Frames sampled for QA pictures: evenly spread from first to last."""
    n, count = movie_n_frames(movie), int(PSEUDOLABEL["qa_frames"])
    return sorted({round(i * (n - 1) / max(count - 1, 1)) for i in range(count)})


def pseudolabel_qa_input(wildcards):
    k = int(wildcards.t) // movie_chunk_frames(wildcards.movie)
    return f"results/{wildcards.movie}/receipts/pseudolabel/chunk-{k}.json"


def train_movies():
    return TRAIN["movies"] or sorted(MOVIES)


def train_input(wildcards):
    files = []
    for movie in train_movies():
        files += chunk_receipts("pseudolabel", movie) + chunk_receipts("ingest", movie)
    return files


def train_pairs(wildcards):
    return " ".join(
        f"--pair results/{m}/frames.zarr results/{m}/pseudo.zarr" for m in train_movies()
    )


def _cli_options(values):
    opts = []
    for key, value in sorted(values.items()):
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            opts.append(flag if value else "--no-" + key.replace("_", "-"))
        elif value is not None:
            opts.append(f"{flag} {value}")
    return opts


def train_options(wildcards):
    opts = [f"--frame-stride {TRAIN['frame_stride']}"]
    if TRAIN["max_frames"]:
        opts.append(f"--max-frames {TRAIN['max_frames']}")
    return " ".join(opts + _cli_options(TRAIN["settings"]))


def infer_options(wildcards):
    return " ".join(_cli_options(INFER["settings"]))


def movie_frame_shape(movie):
    """(H, W) of a movie's frames: from its store once ingested, else the synthetic config, else
    a K2-IS frame (the largest this workflow expects)."""
    meta = Path(f"results/{movie}/frames.zarr/0/zarr.json")
    if meta.exists():
        return tuple(json.loads(meta.read_text())["shape"][1:])
    synth = movie_cfg(movie).get("synthetic")
    if synth:
        return int(synth.get("height", 512)), int(synth.get("width", 512))
    return 1792, 1920


def infer_mem_mb(wildcards):
    """Host memory of an infer chunk job: grows with the pixels of one batch, not with the movie
    (benchmarks/chunk_memory.py: 1.8 GB for batches of 4 x 1024², 4.7 GB for 4 x 1792x1920)."""
    h, w = movie_frame_shape(wildcards.movie)
    batch = int(INFER["settings"].get("batch_size", 4))
    return max(2000, int(1000 + 400 * batch * h * w / 1e6))


def all_targets():
    targets = []
    for movie in MOVIES:
        targets += chunk_receipts("ingest", movie)
        targets += chunk_receipts("pseudolabel", movie)
        targets += [f"results/{movie}/qa/pseudo-frame-{t}.png" for t in qa_frames(movie)]
        if "synthetic" in movie_cfg(movie):
            targets.append(f"results/{movie}/pseudo_scores.json")
    for model in MODELS:
        targets.append(f"models/{model}/model.pt")
        for movie in MOVIES:
            targets += [f"results/{movie}/{model}/particles/chunk-{k}.parquet"
                        for k in movie_chunks(movie)]
            targets += [f"results/{movie}/{model}/eval",
                        f"results/{movie}/{model}/sintering/sintering.png"]
            if "synthetic" in movie_cfg(movie):
                targets.append(f"results/{movie}/{model}/track_scores.json")
    if MODELS:
        targets += ["results/model_comparison.csv", "results/model_contours.png"]
    return targets
