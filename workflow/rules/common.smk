# Config validation, per-movie settings, chunk lists and input functions.
import copy
import json
import re
from pathlib import Path

from snakemake.utils import validate

from etemseg import layout
from etemseg.config import check_config
from etemseg.errors import ConfigError, EtemsegError
from etemseg.io.framedump import count_frames
from etemseg.io.store import n_chunks as _n_chunks

# `--configfile my.yaml` (or `--config movies=...`) runs exactly the movies it lists: the Snakefile's
# config/config.yaml gives every other setting, but its demo movie is not merged into the user's
# movies. The demo runs only when the command line names no movies.
if "movies" in workflow.config_settings.overwrite_config:
    config["movies"] = copy.deepcopy(workflow.config_settings.overwrite_config["movies"])
if not config.get("movies"):
    raise ConfigError(
        "movies: no movies configured; list at least one under `movies:` in config/config.yaml "
        "or in the file given with --configfile (see README, 'Your own movie in three steps')"
    )
validate(config, schema="../schemas/config.schema.yaml")
check_config(config)  # cross-checks the schema cannot express: model names, train.movies, clevel

# The schema fills in every default (one place for them: workflow/schemas/config.schema.yaml).
INGEST = config["ingest"]
MOVIES = config["movies"]
PSEUDOLABEL = config["pseudolabel"]
TRAIN = {"movies": None, "max_frames": None, **config["train"]}
TRAIN_THREADS = int(TRAIN["threads"])
TRAIN_GPUS = int(TRAIN["gpus"])
MODELS = list(config["models"])
INFER = config["infer"]
MEASURE = config["measure"]
TRACK = config["track"]


wildcard_constraints:
    movie="|".join(sorted(MOVIES)) or "^$",
    k=r"\d+",
    t=r"\d+",
    model=r"[A-Za-z0-9][A-Za-z0-9_.-]*",


# Bundling small jobs on a cluster (rules' `group:`; bundle sizes in profiles/default, the
# workflow profile Snakemake loads next to any --profile). Inside one cluster job the grouped
# jobs run one after another: each asks for one `group_slots` and a cluster job holds one, so a
# bundle asks for the largest CPU/memory request of its jobs and the SUM of their runtimes.
# The scope `local` keeps the slot from limiting how many cluster jobs run at once. The limit is
# set only when jobs are submitted (`--jobs`/`jobs:` given to a cluster executor: Snakemake's
# `nodes`), so a local run has none and runs grouped rules side by side as --cores allows; a
# site profile's own `resources:` stay as they are.
resource_scopes:
    group_slots="local",


if workflow.resource_settings.nodes is not None:
    workflow.global_resources.setdefault("group_slots", 1)


def rule_runtime(minutes):
    """`runtime` resource of a rule, in minutes, doubled on each retry (`--retries`)."""
    return lambda wildcards, attempt: minutes * attempt


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
        return layout.synth_frames(movie)
    return m["source"]


def _scan_source(movie):
    """Frames of a real movie's dump, and (planning only) its refreshed source manifest.

    The manifest is written only when the frames changed, so its mtime moves exactly then: a
    `notes.txt` or `Thumbs.db` added to the dump reruns nothing; an added, removed or rewritten
    frame reruns the movie from ingest on. Jobs on a cluster parse this file again but never
    rewrite the manifest (only the planning process does)."""
    src = movie_cfg(movie)["source"]
    try:
        n = count_frames(
            src,
            fps=movie_fps(movie),
            manifest=layout.source_manifest(movie) if workflow.is_main_process else None,
        )
    except ConfigError as exc:  # a bad setting of the movie, e.g. "fps: ..."
        raise ConfigError(f"movies.{movie}.{exc}") from None
    except EtemsegError as exc:  # the folder or a file in it: the message starts with the path
        raise ConfigError(f"movies.{movie}.source: {exc}") from None
    return n


def _stored_n_frames(movie):
    """Frames of a movie's ingested store, or None before ingest."""
    try:
        meta = json.loads(Path(layout.store_meta(layout.frames_store(movie))).read_text())
        return int(meta["attributes"]["etemseg"]["n_frames"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


_N_FRAMES = {}  # movie -> number of frames: each dump is listed once per run, not per lookup


def movie_n_frames(movie):
    """Frames in a movie, known at DAG-build time: from the config for a synthetic movie, else a
    name scan of the dump while planning. A cluster job (which parses this file again) takes the
    count from the ingested store when there is one, so thousands of jobs do not each list a
    240,000-file folder on a shared file system."""
    if movie not in _N_FRAMES:
        m = movie_cfg(movie)
        stored = None if workflow.is_main_process else _stored_n_frames(movie)
        if "synthetic" in m:
            _N_FRAMES[movie] = int(m["synthetic"].get("frames", 48))
        elif stored is not None:
            _N_FRAMES[movie] = stored
        else:
            _N_FRAMES[movie] = _scan_source(movie)
    return _N_FRAMES[movie]


def movie_chunks(movie):
    return list(range(_n_chunks(movie_n_frames(movie), movie_chunk_frames(movie))))


# Every dump is scanned (and its manifest refreshed) while the workflow is planned, before
# Snakemake looks at any file; a missing or empty folder stops the plan naming the movie's key.
if workflow.is_main_process:
    for _movie in MOVIES:
        movie_n_frames(_movie)


def _not_a_movie(wildcards):
    raise ConfigError(
        f"{layout.RESULTS}/{wildcards.name}/{wildcards.path}: {wildcards.name!r} is not a movie "
        f"of this config (movies: {', '.join(sorted(MOVIES))})"
    )


# A target under results/ whose movie is not configured (a typo on the command line) stops the
# plan naming the movie, instead of Snakemake's "no rule to produce ...".
rule unknown_movie:
    input:
        _not_a_movie,
    output:
        f"{layout.RESULTS}/{{name}}/{{path}}",
    wildcard_constraints:
        name="(?!(?:{})/)[^/]+".format("|".join(re.escape(m) for m in MOVIES)),
        path=".+",
    localrule: True
    shell:
        "exit 1"


def ingest_source_input(wildcards):
    """What ingest waits for: the simulator's completion marker, or the real dump's manifest."""
    if "synthetic" in movie_cfg(wildcards.movie):
        return layout.synth_marker(wildcards.movie)
    return layout.source_manifest(wildcards.movie)


def chunk_receipts(stage, movie):
    return [layout.receipt(stage, movie, k) for k in movie_chunks(movie)]


def pseudolabel_options(wildcards):
    """CLI options of `etemseg pseudolabel` for a movie: the preset, then `pseudolabel.params`,
    then the movie's own `movies.NAME.pseudolabel` overrides."""
    opts = [
        f"--preset {PSEUDOLABEL['preset']}",
        f"--method {PSEUDOLABEL['method']}",
        f"--window-ms {config['window_ms']}",
    ]
    params = {**PSEUDOLABEL["params"], **movie_cfg(wildcards.movie).get("pseudolabel", {})}
    return " ".join(opts + _cli_options(params))


def qa_frames(movie):
    """Frames sampled for QA pictures: evenly spread from first to last."""
    n, count = movie_n_frames(movie), int(PSEUDOLABEL["qa_frames"])
    return sorted({round(i * (n - 1) / max(count - 1, 1)) for i in range(count)})


def pseudolabel_qa_input(wildcards):
    k = int(wildcards.t) // movie_chunk_frames(wildcards.movie)
    return layout.receipt("pseudolabel", wildcards.movie, k)


def train_movies():
    return TRAIN["movies"] or sorted(MOVIES)


def train_input(wildcards):
    files = []
    for movie in train_movies():
        files += chunk_receipts("pseudolabel", movie) + chunk_receipts("ingest", movie)
    return files


def train_pairs(wildcards):
    return " ".join(
        f"--pair {layout.frames_store(m)} {layout.pseudo_store(m)}" for m in train_movies()
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
    opts = [f"--frame-stride {TRAIN['frame_stride']}", f"--window-ms {config['window_ms']}"]
    if TRAIN["max_frames"]:
        opts.append(f"--max-frames {TRAIN['max_frames']}")
    return " ".join(opts + _cli_options(TRAIN["settings"]))


def infer_settings(movie):
    """`infer.settings` with the movie's own `movies.NAME.infer` overrides."""
    return {**INFER["settings"], **movie_cfg(movie).get("infer", {})}


def infer_options(wildcards):
    return " ".join(_cli_options(infer_settings(wildcards.movie)))


def previous_chunk_masks(wildcards):
    """The infer receipt of the chunk before (none for chunk 0): the measure job reads that
    chunk's last mask for the overlaps into its own first frame."""
    k = int(wildcards.k)
    return [layout.receipt("infer", wildcards.movie, k - 1, model=wildcards.model)] if k else []


def measure_options(wildcards):
    """`measure` settings with the movie's own `movies.NAME.measure` overrides."""
    return " ".join(_cli_options({**MEASURE, **movie_cfg(wildcards.movie).get("measure", {})}))


def movie_frame_shape(movie):
    """(H, W) of a movie's frames: from its store once ingested, else the synthetic config, else
    a K2-IS frame (the largest this workflow expects)."""
    meta = Path(layout.frames_store(movie)) / "0" / "zarr.json"
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
    batch = int(infer_settings(wildcards.movie).get("batch_size", 4))
    return max(2000, int(1000 + 400 * batch * h * w / 1e6))


def all_targets():
    targets = []
    for movie in MOVIES:
        targets += chunk_receipts("ingest", movie)
        targets += chunk_receipts("pseudolabel", movie)
        targets += [layout.qa_png(movie, t) for t in qa_frames(movie)]
        if "synthetic" in movie_cfg(movie):
            targets.append(layout.pseudo_scores(movie))
    for model in MODELS:
        targets.append(layout.model_file(model))
        for movie in MOVIES:
            targets += [layout.particles_chunk(movie, model, k) for k in movie_chunks(movie)]
            targets += [
                layout.eval_dir(movie, model),
                f"{layout.sintering_dir(movie, model)}/sintering.png",
                layout.overlay_movie(movie, model),
            ]
            if "synthetic" in movie_cfg(movie):
                targets.append(layout.track_scores(movie, model))
    if MODELS:
        targets += [
            layout.comparison("model_comparison.csv"),
            layout.comparison("model_contours.png"),
        ]
    return targets
