"""The Snakemake workflow on a tiny simulated movie: dry run, real run, config validation."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
import zarr

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "movies": {
        "tiny": {
            "synthetic": {"frames": 10, "height": 64, "width": 96, "seed": 3},
            "chunk_frames": 4,
        }
    },
    "models": ["shallow-wide"],
    "train": {"threads": 1, "settings": {"epochs": 2, "batch_size": 2, "crop_px": 32,
                                         "samples_per_epoch": 4, "lr": 0.01}},
    "infer": {"settings": {"threshold": "otsu_chunk"}},
}


def run_notebook(results: Path) -> dict:
    """Execute every code cell of the sintering notebook against a results folder."""
    import os

    import nbformat

    nb = nbformat.read(REPO / "workflow/notebooks/sintering.ipynb", as_version=4)
    env = {"ETEMSEG_RESULTS": str(results), "ETEMSEG_NOTEBOOK_OUT": str(results / "notebook")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        namespace: dict = {}
        for cell in nb.cells:
            if cell.cell_type == "code":
                exec(compile(cell.source, "sintering.ipynb", "exec"), namespace)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert (results / "notebook" / "radius_lsw.png").exists()
    assert (results / "notebook" / "density_psd.png").exists()
    return namespace


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
           str(workdir), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def workdir_with(tmp_path: Path, config: dict) -> Path:
    (tmp_path / "config").mkdir(parents=True, exist_ok=True)
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def test_demo_config_is_valid_and_plans_three_ingest_chunks(tmp_path):
    demo = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    r = snakemake(workdir_with(tmp_path, demo), "-n", "--quiet", "rules")
    assert r.returncode == 0, r.stderr
    assert "ingest_chunk" in r.stdout and "synth" in r.stdout


@pytest.mark.slow
def test_tiny_run_then_nothing_to_do(tiny_workflow):
    wd = tiny_workflow
    store = zarr.open_group(wd / "results" / "tiny" / "frames.zarr")
    frames = store["0"][:]
    assert frames.shape == (10, 64, 96) and frames.dtype == np.uint16
    assert store.attrs["etemseg"]["n_chunks"] == 3
    assert sorted(p.name for p in (wd / "results/tiny/receipts/ingest").iterdir()) == [
        "chunk-0.json", "chunk-1.json", "chunk-2.json"]
    assert (wd / "logs" / "tiny" / "ingest" / "chunk-0.log").exists()
    pseudo = zarr.open_group(wd / "results" / "tiny" / "pseudo.zarr")
    masks = pseudo["0"][:]
    assert masks.shape == frames.shape and masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, 1} and 0.02 < masks.mean() < 0.5
    assert pseudo.attrs["etemseg"]["preset"] == "default"
    assert sorted(p.name for p in (wd / "results/tiny/qa").iterdir()) == [
        "pseudo-frame-0.png", "pseudo-frame-4.png", "pseudo-frame-9.png"]
    scores = json.loads((wd / "results/tiny/pseudo_scores.json").read_text())
    assert scores["frames"] == 10 and scores["pixel"]["f1"] > 0.8
    assert (wd / "models/shallow-wide/model.pt").exists()
    assert (wd / "models/shallow-wide/curve.png").exists()
    mask = zarr.open_array(wd / "results/tiny/shallow-wide/mask.zarr/0")[:]
    assert mask.shape == frames.shape
    receipts = wd / "results/tiny/shallow-wide/receipts/infer"
    assert len(list(receipts.iterdir())) == 3
    out = wd / "results/tiny/shallow-wide"
    frames_t = pd.read_parquet(out / "frames.parquet")
    assert frames_t["frame"].tolist() == list(range(10))  # every frame, no silent gap
    traj = pd.read_parquet(out / "trajectories.parquet")
    assert {"particle", "frame", "time_s", "x_nm", "eq_diameter_nm", "movie", "model"} <= set(traj)
    assert pq.read_schema(out / "trajectories.parquet").field("x_nm").metadata[b"unit"] == b"nm"
    assert (out / "sintering/sintering.png").exists()
    scores = json.loads((out / "track_scores.json").read_text())
    assert 0 <= scores["tracking"]["followed_fraction"] <= 1
    assert (wd / "results/model_comparison.csv").exists()
    run_notebook(wd / "results")
    again = snakemake(wd, "-n")
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.parametrize("bad, key", [
    ({"movies": {"m": {"synthetic": {"frames": 4}, "colour": "red"}}}, "colour"),
    ({"movies": {"m": {"synthetic": {"frames": "many"}}}}, "many"),
    ({"movies": {"m": {"synthetic": {"frames": 4}}}, "ingest": {"codec": "lzma"}}, "lzma"),
    ({"movies": {"m": {"synthetic": {"frames": 4}}}, "typo_section": 1}, "typo_section"),
    # cross-checks (etemseg.config.check_config): fail while planning, not in the first job
    ({"movies": {"m": {"synthetic": {"frames": 4}}}, "models": ["unet99-bogus"]},
     "models[0]: architecture 'unet99-bogus'"),
    ({"movies": {"m": {"synthetic": {"frames": 4}}}, "models": ["unet4-norm", "Norm"]},
     "same network"),
    ({"movies": {"m": {"synthetic": {"frames": 4}}}, "train": {"movies": ["nosuchmovie"]}},
     "train.movies[0]: 'nosuchmovie' is not a movie"),
    ({"movies": {"m": {"synthetic": {"frames": 4}}}, "ingest": {"clevel": 12}}, "clevel"),
    ({"movies": {"m": {"synthetic": {"frames": 4}}},
      "ingest": {"codec": "blosc-lz4", "clevel": 10}}, "clevel"),
    ({"movies": {"m": {"synthetic": {"frames": 4}, "chunk_frames": 6}},
      "ingest": {"zarr_chunk_frames": 4}}, "ingest.zarr_chunk_frames: 4 does not divide"),
])
def test_invalid_config_names_the_key(tmp_path, bad, key):
    r = snakemake(workdir_with(tmp_path, bad), "-n")
    assert r.returncode != 0
    assert key in r.stderr + r.stdout


def test_synth_schema_matches_simulator_parameters():
    import dataclasses

    from etemseg.synth import SynthParams

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    synth = schema["properties"]["movies"]["additionalProperties"]["properties"]["synthetic"]
    assert set(synth["properties"]) == {f.name for f in dataclasses.fields(SynthParams)}


def test_configfile_runs_exactly_its_movies(tmp_path):
    """`--configfile my.yaml` replaces the demo movie of config/config.yaml; other settings stay."""
    from .conftest import write_k2_dump

    frames = np.random.default_rng(0).poisson(1000, size=(6, 40, 48)).astype(np.uint16)
    dump = write_k2_dump(tmp_path / "k2 dump", frames, range(6))
    wd = workdir_with(tmp_path / "wd", yaml.safe_load((REPO / "config/config.yaml").read_text()))
    mine = tmp_path / "my.yaml"
    mine.write_text(yaml.safe_dump({"movies": {"run7": {"source": str(dump), "chunk_frames": 3}}}))
    r = snakemake(wd, "-n", "--quiet", "rules", "--configfile", str(mine))
    assert r.returncode == 0, r.stderr[-3000:]
    stats = {rule: int(n) for rule, n in
             (line.split() for line in r.stdout.splitlines() if re.fullmatch(r"\w+\s+\d+", line))}
    assert "synth" not in stats and stats["ingest_chunk"] == 2, stats   # no demo, 6 frames / 3
    assert stats["train"] == len(yaml.safe_load((REPO / "config/config.yaml").read_text())
                                 ["models"]), stats                   # the models of config.yaml
    # no movies on the command line: the demo
    r = snakemake(wd, "-n", "--quiet", "rules")
    assert r.returncode == 0 and re.search(r"^synth\s+1$", r.stdout, re.M), r.stderr[-3000:]


@pytest.mark.parametrize("case, message", [
    ("no movies", "movies: no movies configured"),
    ("empty folder", "movies.run7.source: {empty}: no frame files found"),
    ("missing folder", "movies.run7.source: {empty}/nope: frame folder does not exist"),
    ("unknown movie", "results/run8/frames.zarr/zarr.json: 'run8' is not a movie of this config"),
])
def test_bad_movie_input_is_one_line_naming_the_key(tmp_path, case, message):
    empty = tmp_path / "empty dump"
    empty.mkdir()
    (empty / "notes.txt").write_text("no frames here")
    config = {"movies": {"run7": {"source": str(empty)}}}
    args = []
    if case == "no movies":
        config = {"models": []}
    elif case == "missing folder":
        config["movies"]["run7"]["source"] = str(empty / "nope")
    elif case == "unknown movie":
        config = {"movies": {"m": {"synthetic": {"frames": 4}}}}
        args = ["results/run8/frames.zarr/zarr.json"]
    r = snakemake(workdir_with(tmp_path / "wd", config), "-n", *args)
    assert r.returncode != 0
    lines = (r.stdout + r.stderr).splitlines()
    assert any(message.format(empty=empty) in line for line in lines), lines[-12:]
