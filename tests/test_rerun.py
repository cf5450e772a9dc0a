"""Rerun only what changed: the tiny workflow, run once, then changed one thing at a time.

One fully-run workdir (config ``TINY`` of test_workflow.py) is shared by the module and copied
per test with its ``.snakemake`` metadata and original mtimes (``shutil.copy2``), so each test
sees exactly the state a user has after a finished run. What Snakemake would run is read from

* ``--summary``: one tab-separated row per output file of the DAG with its rule, status
  (``ok``, ``missing``, ``params changed``, ``set of input files changed``, ``rule
  implementation changed``, ``updated input files``) and plan (``update pending`` / ``no update``);
* ``--dry-run --quiet rules``: the "Job stats" table, jobs per rule;
* ``--list-changes code``: the output files whose rule code changed since they were made.

A second run with nothing changed runs nothing: that is
``test_workflow.py::test_tiny_run_then_nothing_to_do`` (not repeated here);
``test_copied_workdir_has_nothing_to_do`` only checks that the copies used below start there.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import yaml

# tests/ is a package (tests/__init__.py), so pytest's default "prepend" import mode puts the
# repository root, not tests/, on sys.path: `from test_workflow import ...` would fail.
from .test_workflow import REPO, TINY, snakemake, workdir_with

pytestmark = pytest.mark.slow   # whole-workflow runs: `pytest -m "not slow"` skips them

UPSTREAM = {"synth", "ingest_init", "ingest_chunk"}
PSEUDO = {"pseudolabel_init", "pseudolabel_chunk", "pseudolabel_qa", "pseudolabel_score"}
PER_MODEL = {"infer_init", "infer_chunk", "measure_chunk", "evaluate", "track", "sintering",
             "score_tracks", "overlay_movie"}
# model_comparison reads the evaluation of every movie x model: the one cross-movie job.
AGGREGATE = {"model_comparison"}
AGGREGATE_FILES = {"results/model_comparison.csv", "results/model_threshold_sweep.png",
                   "results/model_contours.png"}


# ----------------------------------------------------------------------------- helpers


def summary(wd: Path) -> dict[str, tuple[str, str, str]]:
    """``snakemake --summary``: output file -> (rule, status, plan)."""
    r = snakemake(wd, "--summary")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {}
    for line in r.stdout.splitlines():
        fields = line.split("\t")
        if len(fields) == 6 and fields[0] != "output_file":
            path, _date, rule, _log, status, plan = fields
            rows[path] = (rule, status, plan)
    assert rows, r.stdout[-3000:]
    return rows


def pending(rows: dict[str, tuple[str, str, str]]) -> dict[str, tuple[str, str]]:
    """Output files Snakemake would (re)make: file -> (rule, status)."""
    return {f: (rule, status) for f, (rule, status, plan) in rows.items()
            if plan == "update pending"}


def job_counts(wd: Path) -> dict[str, int]:
    """Jobs per rule of a dry run, from the "Job stats" table of ``-n --quiet rules``."""
    r = snakemake(wd, "--dry-run", "--quiet", "rules")
    assert r.returncode == 0, r.stderr[-3000:]
    lines = (r.stdout + "\n" + r.stderr).splitlines()
    if not any(line.strip() == "Job stats:" for line in lines):
        assert "Nothing to be done" in r.stdout + r.stderr, r.stdout + r.stderr
        return {}
    start = next(i for i, line in enumerate(lines) if line.strip() == "Job stats:")
    counts = {}
    for line in lines[start + 3:]:  # skip "Job stats:", the header and the dashes
        rule, _, n = line.strip().rpartition(" ")
        if not line.strip() or rule.strip() == "total":
            break
        counts[rule.strip()] = int(n)
    assert counts.pop("all", 1) == 1
    return counts


def set_config(wd: Path, config: dict) -> None:
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(config))


def snapshot(wd: Path, *folders: str) -> dict[str, tuple[bytes, int]]:
    """Every file under the folders: relative path -> (bytes, mtime in ns)."""
    out = {}
    for folder in folders:
        for p in sorted((wd / folder).rglob("*")):
            if p.is_file():
                out[str(p.relative_to(wd))] = (p.read_bytes(), p.stat().st_mtime_ns)
    assert out, folders
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """The tiny workflow, fully run once for the whole module (~60 s on 2 cores)."""
    wd = workdir_with(tmp_path_factory.mktemp("rerun-base"), TINY)
    r = snakemake(wd)
    assert r.returncode == 0, r.stderr[-3000:]
    return wd


@pytest.fixture
def wd(base, tmp_path) -> Path:
    """A private copy of the finished workdir, metadata and mtimes included."""
    return shutil.copytree(base, tmp_path / "wd", copy_function=shutil.copy2, symlinks=True)


# ----------------------------------------------------------------------------- tests


def test_copied_workdir_has_nothing_to_do(wd):
    assert (wd / ".snakemake" / "metadata").is_dir()
    r = snakemake(wd, "-n")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Nothing to be done" in r.stdout + r.stderr


def test_pseudolabel_param_reruns_pseudolabelling_onwards_not_ingest(wd):
    config = copy.deepcopy(TINY)
    config["pseudolabel"] = {"params": {"sigma": 3.0}}  # the default preset has sigma 2.0
    set_config(wd, config)

    # The plan: pseudo-labelling and everything downstream of it, one job per chunk; no
    # synth or ingest job.
    counts = job_counts(wd)
    assert set(counts) == PSEUDO | {"train"} | PER_MODEL | AGGREGATE, counts
    assert counts["pseudolabel_chunk"] == counts["infer_chunk"] == counts["measure_chunk"] == 3
    assert counts["train"] == counts["pseudolabel_init"] == 1

    # A real rerun of the pseudo-labelling stage (the expensive rest stays planned, below).
    ingest_before = snapshot(wd, "results/tiny/synth", "results/tiny/frames.zarr",
                             "results/tiny/receipts/ingest")
    pseudo_dirs = ("results/tiny/pseudo.zarr/0/c", "results/tiny/receipts/pseudolabel")
    pseudo_before = snapshot(wd, *pseudo_dirs)
    r = snakemake(wd, "--until", "pseudolabel_chunk")
    assert r.returncode == 0, r.stderr[-3000:]

    # Ingest outputs (zarr chunks, receipts, metadata, the simulator's frames): same bytes,
    # same mtimes, i.e. never rewritten.
    ingest_after = snapshot(wd, "results/tiny/synth", "results/tiny/frames.zarr",
                            "results/tiny/receipts/ingest")
    assert ingest_after == ingest_before
    assert any("frames.zarr/0/c/" in f for f in ingest_after)
    assert len([f for f in ingest_after if "receipts/ingest/" in f]) == 3

    # Pseudo-label chunks and receipts: all rewritten, with the new sigma.
    pseudo_after = snapshot(wd, *pseudo_dirs)
    assert set(pseudo_after) == set(pseudo_before)
    assert all(pseudo_after[f][1] > pseudo_before[f][1] for f in pseudo_after)
    chunks = [f for f in pseudo_after if "pseudo.zarr/0/c/" in f]
    assert len(chunks) == 3
    assert any(pseudo_after[f][0] != pseudo_before[f][0] for f in chunks)
    meta = yaml.safe_load((wd / "results/tiny/pseudo.zarr/zarr.json").read_text())
    assert meta["attributes"]["etemseg"]["params"]["sigma"] == 3.0

    # What is left is exactly the rest of the chain, now triggered by the newer pseudo-label
    # receipts (mtime), not by the config: QA, scores, training and every model output.
    left = pending(summary(wd))
    assert {rule for rule, _ in left.values()} == (
        {"pseudolabel_qa", "pseudolabel_score", "train"} | PER_MODEL | AGGREGATE)
    assert left["models/shallow-wide/model.pt"] == ("train", "updated input files")
    assert not any(f.startswith(("results/tiny/synth", "results/tiny/frames.zarr",
                                 "results/tiny/receipts")) for f in left)


@pytest.mark.parametrize("change", ["train-setting", "added-model"])
def test_model_change_reruns_training_onwards_only(wd, change):
    config = copy.deepcopy(TINY)
    if change == "train-setting":
        config["train"]["settings"]["epochs"] = 3
    else:
        config["models"] = ["shallow-wide", "single-filter"]
    set_config(wd, config)

    left = pending(summary(wd))
    rules = {rule for rule, _ in left.values()}
    assert rules == {"train"} | PER_MODEL | AGGREGATE, rules
    assert not rules & (UPSTREAM | PSEUDO)
    if change == "train-setting":
        assert left["models/shallow-wide/model.pt"] == ("train", "params changed")
        assert job_counts(wd)["infer_chunk"] == 3
    else:
        # Only the new model is trained and run; the comparison gains a model (new input).
        assert all("single-filter" in f for f in set(left) - AGGREGATE_FILES), sorted(left)
        assert not any("shallow-wide" in f for f in left)
        assert left["results/model_comparison.csv"] == ("model_comparison",
                                                        "set of input files changed")
        assert left["models/single-filter/model.pt"] == ("train", "missing")


def second_movie_config(pin_training: bool) -> dict:
    config = copy.deepcopy(TINY)
    # "tiny2" sorts after "tiny", so model_comparison's contour movie stays "tiny".
    config["movies"]["tiny2"] = {
        "synthetic": {"frames": 6, "height": 64, "width": 96, "seed": 4}, "chunk_frames": 4}
    if pin_training:
        config["train"]["movies"] = ["tiny"]  # the default (null) means all movies
    return config


def test_second_movie_runs_only_its_jobs(wd):
    """With training pinned to the first movie, a new movie costs only its own jobs.

    Besides them only ``model_comparison`` reruns: it is the one job over all movies x models
    (its input list gains ``results/tiny2/<model>/eval``). Pinning ``train.movies: [tiny]``
    changes nothing for the existing run (same pairs, same inputs), so train stays put.
    """
    set_config(wd, second_movie_config(pin_training=True))
    left = pending(summary(wd))
    assert set(left) - AGGREGATE_FILES, left
    assert all(f.startswith("results/tiny2/") for f in set(left) - AGGREGATE_FILES), sorted(left)
    assert all(status == "missing" for f, (_, status) in left.items() if f not in AGGREGATE_FILES)
    assert {left[f] for f in AGGREGATE_FILES} == {
        ("model_comparison", "set of input files changed")}
    rules = {rule for rule, _ in left.values()}
    assert rules == UPSTREAM | PSEUDO | PER_MODEL | AGGREGATE, rules  # no train
    assert len([f for f in left if f.startswith("results/tiny2/receipts/ingest/")]) == 2


def test_second_movie_with_default_training_set_retrains_but_keeps_first_movie_upstream(wd):
    """With ``train.movies`` unset the models train on every movie, so a new movie changes the
    training set: train reruns (its input set changed) and with it the first movie's inference
    and everything after. The first movie's synth, ingest and pseudo-labels still do not."""
    set_config(wd, second_movie_config(pin_training=False))
    left = pending(summary(wd))
    assert left["models/shallow-wide/model.pt"] == ("train", "set of input files changed")
    first = {rule for f, (rule, _) in left.items() if f.startswith("results/tiny/")}
    assert first == PER_MODEL, first


def test_new_masks_of_a_chunk_remeasure_it_and_the_next(wd):
    """The measure job of chunk k also reads chunk k - 1's last mask (the overlaps into its first
    frame): new masks of chunk 1 re-measure chunks 1 and 2, never chunk 0."""
    receipt = wd / "results" / "tiny" / "shallow-wide" / "receipts" / "infer" / "chunk-1.json"
    receipt.write_text(receipt.read_text() + "\n")  # as a new infer job of chunk 1 would
    left = pending(summary(wd))
    measured = {f for f, (rule, _) in left.items() if rule == "measure_chunk"}
    assert measured == {f"results/tiny/shallow-wide/particles/{name}-{k}.parquet"
                        for k in (1, 2) for name in ("chunk", "overlaps")}


def test_rule_code_change_is_listed_by_list_changes_code(wd):
    """Editing a rule's shell command: ``--list-changes code`` names that rule's outputs only."""
    for name in ("workflow", "envs"):  # the Snakefile's includes, schema, report and conda envs
        shutil.copytree(REPO / name, wd / name)
    shutil.copy2(REPO / "Snakefile", wd / "Snakefile")

    def list_code_changes():
        r = snakemake(wd, "-s", str(wd / "Snakefile"), "--list-changes", "code")
        assert r.returncode == 0, r.stderr[-3000:]
        return {line.strip() for line in r.stdout.splitlines() if line.strip()}

    # The copied workflow is the same code, though it lives elsewhere: nothing listed.
    assert list_code_changes() == set()

    smk = wd / "workflow" / "rules" / "measure.smk"
    text = smk.read_text()
    assert text.count('"etemseg --quiet measure ') == 1
    smk.write_text(text.replace('"etemseg --quiet measure ', '"etemseg measure --quiet '))

    assert list_code_changes() == {
        f"results/tiny/shallow-wide/particles/{name}-{k}.parquet"
        for k in range(3) for name in ("chunk", "overlaps")}
