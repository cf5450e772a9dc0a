"""The workflow on a real single-node SLURM (tests/slurm/slurm.sh) through profiles/slurm.

Every job goes through sbatch: the run uses `--profile profiles/slurm --profile profiles/slurm-ci`
(the real profile, then the overlay for the test cluster). Needs root and the Debian packages
munge slurmctld slurmd slurm-client plus `pip install snakemake-executor-plugin-slurm`; skipped
without them, unless ETEMSEG_REQUIRE_SLURM=1 (CI) turns the skip into a failure.
Run alone, with the numbers printed:  python -m pytest tests/test_slurm.py -q -s
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
import zarr

pytestmark = pytest.mark.slow   # whole-workflow runs: `pytest -m "not slow"` skips them

REPO = Path(__file__).resolve().parents[1]
SLURM_SH = REPO / "tests" / "slurm" / "slurm.sh"
PROFILES = ["--profile", str(REPO / "profiles" / "slurm"),
            "--profile", str(REPO / "profiles" / "slurm-ci")]
RUN_TIMEOUT_S = 1500

# Same as TINY in tests/test_workflow.py (kept here so that test can change without making this
# one slower: every extra model adds SLURM round trips).
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

SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+) \(log: (\S+?)\)\.?$", re.M)


def job_stats(log: str) -> dict[str, int]:
    """The `Job stats` table Snakemake prints before running: rule -> number of jobs."""
    table = log[log.index("Job stats:"):]
    rows = re.findall(r"^(\w+)\s+(\d+)$", table[:table.index("\ntotal")], re.M)
    return {rule: int(n) for rule, n in rows}


def _missing_requirements() -> list[str]:
    search_path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    tools = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "srun")
    missing = [tool for tool in tools if shutil.which(tool, path=search_path) is None]
    if missing:
        missing = [f"{', '.join(missing)} (apt-get install -y munge slurmctld slurmd slurm-client)"]
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        missing.append("snakemake-executor-plugin-slurm"
                       " (pip install snakemake-executor-plugin-slurm)")
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        missing.append("root (slurmd runs jobs as their user)")
    return missing


@pytest.fixture(scope="module")
def slurm():
    """A private single-node SLURM for this module; stopped by its pid files afterwards."""
    missing = _missing_requirements()
    if missing:
        msg = "single-node SLURM not available: missing " + "; ".join(missing)
        if os.environ.get("ETEMSEG_REQUIRE_SLURM") == "1":
            pytest.fail(msg + " (ETEMSEG_REQUIRE_SLURM=1)")
        pytest.skip(msg)
    # short path: munge's unix socket lives in it
    cluster_dir = Path(tempfile.mkdtemp(prefix="etemseg-slurm-", dir="/tmp"))
    env = dict(os.environ)
    env["PATH"] = f"{cluster_dir / 'bin'}:{env.get('PATH', '')}:/usr/sbin:/sbin"
    env["SLURM_CONF"] = str(cluster_dir / "slurm.conf")
    try:
        start = subprocess.run(["bash", str(SLURM_SH), "start", str(cluster_dir)], env=env,
                               capture_output=True, text=True, timeout=180)
        if start.returncode != 0:
            pytest.fail(f"tests/slurm/slurm.sh start failed:\n{start.stdout}\n{start.stderr}")
        print("\n" + start.stdout.strip())
        yield SimpleNamespace(dir=cluster_dir, env=env)
    finally:
        subprocess.run(["bash", str(SLURM_SH), "stop", str(cluster_dir)], env=env,
                       capture_output=True, text=True, timeout=120)
        shutil.rmtree(cluster_dir, ignore_errors=True)


def run_snakemake(workdir: Path, *args: str, env=None, snakefile: Path = REPO / "Snakefile"):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "--directory", str(workdir),
           *args]
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env,
                       cwd=REPO)
    r.wall_s = time.monotonic() - t0
    r.log = r.stdout + r.stderr
    return r


def workdir_with(path: Path, config: dict) -> Path:
    (path / "config").mkdir(parents=True, exist_ok=True)
    (path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return path


def slurm_jobs_of_run(log: str, env) -> dict[str, str]:
    """SLURM job id -> state, from squeue (accounting is off; MinJobAge keeps finished jobs)."""
    run_id = re.search(r"SLURM run ID: (\S+)", log).group(1)
    out = subprocess.run(["squeue", "--noheader", "--states=all", "--name", run_id,
                          "--format=%i|%T"], env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return dict(line.split("|", 1) for line in out.split())


def scontrol_job(job_id: str, env) -> str:
    return subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True,
                          text=True, timeout=60, check=True).stdout


def read_array(store: Path) -> np.ndarray:
    return zarr.open_group(store, mode="r")["0"][:]


def test_tiny_workflow_through_slurm_equals_local_run(tmp_path, slurm):
    wd = workdir_with(tmp_path / "slurm", TINY).resolve()
    r = run_snakemake(wd, *PROFILES, env=slurm.env)
    assert r.returncode == 0, r.log[-6000:]

    # every job of the workflow ran through sbatch, in fewer SLURM jobs than Snakemake jobs
    submitted = SUBMITTED.findall(r.log)
    stats = job_stats(r.log)
    n_jobs = sum(stats.values()) - stats.get("all", 0)  # `all` has no command: not submitted
    states = slurm_jobs_of_run(r.log, slurm.env)
    assert submitted and sorted(states) == sorted(job for job, _ in submitted), (submitted, states)
    assert set(states.values()) == {"COMPLETED"}, states
    assert stats["ingest_chunk"] == 3 and stats["train"] == 1, stats
    assert len(submitted) < n_jobs
    assert "100%) done" in r.log
    by_kind = {}
    for job, log_path in submitted:
        kind = Path(log_path).parent.relative_to(wd / "logs" / "slurm").parts[0]
        by_kind.setdefault(kind, []).append(job)
    assert len(by_kind["group_chunks_ingest_chunk_pseudolabel_chunk"]) == 2  # 3 chunks, 2 per job
    # training went to the gpu partition with one (fake) GPU
    (train_job,) = by_kind["rule_train"]
    train = scontrol_job(train_job, slurm.env)
    assert "Partition=gpu" in train and "gpu:1" in train, train

    # outputs equal a local run's bit for bit
    local_wd = workdir_with(tmp_path / "local", TINY)
    local = run_snakemake(local_wd, "--cores", "2")
    assert local.returncode == 0, local.log[-6000:]
    for store in ("results/tiny/frames.zarr", "results/tiny/pseudo.zarr"):
        a, b = read_array(wd / store), read_array(local_wd / store)
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), store
        assert a.any(), store
    assert (wd / "results/tiny/shallow-wide/mask.zarr").is_dir()

    print(f"\nSLURM run of the tiny workflow: {r.wall_s:.0f} s wall, {n_jobs} Snakemake jobs "
          f"in {len(submitted)} SLURM jobs (sbatch calls): "
          + ", ".join(f"{kind} {len(jobs)}" for kind, jobs in sorted(by_kind.items()))
          + f"; local run (--cores 2): {local.wall_s:.0f} s")


def test_failed_job_is_retried_and_reported_with_its_logs(tmp_path, slurm):
    wd = (tmp_path / "retry").resolve()
    wd.mkdir()
    r = run_snakemake(wd, *PROFILES, "--retries", "1", "--keep-going", env=slurm.env,
                      snakefile=REPO / "tests" / "slurm" / "retry.smk")
    assert r.returncode != 0, r.log[-6000:]
    submitted = SUBMITTED.findall(r.log)
    rules = [Path(log_path).parent.name for _, log_path in submitted]
    # flaky failed once and succeeded on its retry; broken was tried twice
    assert rules.count("rule_flaky") == 2 and rules.count("rule_broken") == 2, submitted
    assert (wd / "flaky.txt").read_text() == "ok\n"
    assert "flaky: attempt 2" in (wd / "logs/flaky.log").read_text()
    assert not (wd / "broken.txt").exists()
    # the failure names the rule, its log and its SLURM log, and show-failed-logs prints the log
    assert "Error in rule broken" in r.log
    assert "SLURM status is: 'FAILED'" in r.log
    assert re.search(r"log: logs/broken\.log, \S+/logs/slurm/rule_broken/\d+\.log",
                     r.log), r.log[-4000:]
    assert "broken: deliberate failure" in r.log
    states = slurm_jobs_of_run(r.log, slurm.env)
    assert sorted(states.values()) == ["COMPLETED", "FAILED", "FAILED", "FAILED"], states
    print(f"\nSLURM failure/retry run: {r.wall_s:.0f} s wall, {len(submitted)} SLURM jobs "
          f"({', '.join(f'{j}={s}' for j, s in sorted(states.items()))})")
