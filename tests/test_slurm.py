"""The workflow on a real single-node SLURM (tests/slurm/slurm.sh), as a user with their site's
generic SLURM profile runs it: `snakemake --profile slurm`.

The site profile is installed in a temporary $HOME (~/.config/snakemake/slurm/config.yaml) and
holds only what a site profile holds (executor, jobs, the cluster's quirks and limits, its GPU
partition); the bundling, runtimes and GPU requests must come from the workflow itself and its
workflow profile profiles/default, which Snakemake loads next to it. Needs root and the Debian
packages munge slurmctld slurmd slurm-client plus `pip install snakemake-executor-plugin-slurm`;
skipped without them, unless ETEMSEG_REQUIRE_SLURM=1 (CI) turns the skip into a failure.
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
import threading
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
RUN_TIMEOUT_S = 1500

# A generic site profile of the single-node test cluster, as a site would write one: nothing in
# it knows this workflow. Cluster-specific, and why:
#   - accounting is off: job status from squeue (sacct has nothing), no account;
#   - 2 CPUs and a few GB: `cores` caps every job's threads, `resources: mem_mb` caps every job's
#     memory request (train asks 16000) -- caps, not a limit on jobs running side by side;
#   - the GPU partition is `gpu` (set-resources), which the workflow profile must not clobber;
#   - short waits (local disk, tiny jobs); successful jobs' SLURM logs kept for inspection.
SITE_PROFILE = {
    "executor": "slurm",
    "jobs": 50,
    "cores": 2,
    "resources": {"mem_mb": 1000},
    "set-resources": {"train": {"slurm_partition": "gpu"}},
    "latency-wait": 5,
    "slurm-no-account": True,
    "slurm-status-command": "squeue",
    "slurm-init-seconds-before-status-checks": 1,
    "slurm-keep-successful-logs": True,
    "slurm-logdir": "logs/slurm",
    "max-status-checks-per-second": 10,
}
PROFILE = ["--profile", "slurm"]  # found by name in $HOME/.config/snakemake, as typed by a user

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
    # the user's home with the site's generic SLURM profile and nothing else
    home = cluster_dir / "home"
    profile = home / ".config" / "snakemake" / "slurm" / "config.yaml"
    profile.parent.mkdir(parents=True)
    profile.write_text(yaml.safe_dump(SITE_PROFILE))
    env["HOME"] = str(home)
    env["XDG_CONFIG_HOME"] = str(home / ".config")
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


class SlurmWatch:
    """Every SLURM job seen while a run goes: its last state and its `scontrol show job`, taken
    while SLURM still knows the job (without accounting, finished jobs are forgotten after
    MinJobAge, and a slow run outlives its first jobs)."""

    def __init__(self, env):
        self.env, self.jobs = env, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _poll(self):
        out = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%i|%T"],
                             env=self.env, capture_output=True, text=True, timeout=60).stdout
        for line in out.split():
            job, state = line.split("|", 1)
            info = self.jobs.setdefault(job, {})
            info["state"] = state
            if "scontrol" not in info:
                show = subprocess.run(["scontrol", "show", "job", job], env=self.env,
                                      capture_output=True, text=True, timeout=60)
                if show.returncode == 0:
                    info["scontrol"] = show.stdout

    def _loop(self):
        while not self._stop.is_set():
            try:
                self._poll()
            except (subprocess.SubprocessError, OSError):
                pass
            self._stop.wait(2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._poll()

    def states(self, submitted) -> dict[str, str]:
        """State of each submitted job (every one must have been seen)."""
        missing = [job for job, _ in submitted if job not in self.jobs]
        assert not missing, f"SLURM never showed jobs {missing}"
        return {job: self.jobs[job]["state"] for job, _ in submitted}


def read_array(store: Path) -> np.ndarray:
    return zarr.open_group(store, mode="r")["0"][:]


def time_limit_min(scontrol: str) -> int:
    """TimeLimit of a `scontrol show job` text, in minutes."""
    days_time = re.search(r"TimeLimit=(\S+)", scontrol).group(1)
    days, _, hms = days_time.rpartition("-")
    h, m, s = (int(x) for x in hms.split(":"))
    return (int(days or 0) * 24 + h) * 60 + m + (s > 0)


def test_tiny_workflow_through_slurm_equals_local_run(tmp_path, slurm):
    wd = workdir_with(tmp_path / "slurm", TINY).resolve()
    with SlurmWatch(slurm.env) as watch:
        r = run_snakemake(wd, *PROFILE, env=slurm.env)
    assert r.returncode == 0, r.log[-6000:]
    assert "workflow specific profile" in r.log  # profiles/default was loaded next to the site's

    # every job of the workflow ran through sbatch, in fewer SLURM jobs than Snakemake jobs
    submitted = SUBMITTED.findall(r.log)
    stats = job_stats(r.log)
    n_jobs = sum(stats.values()) - stats.get("all", 0)  # `all` has no command: not submitted
    states = watch.states(submitted)
    assert submitted and set(states.values()) == {"COMPLETED"}, states
    assert stats["ingest_chunk"] == 3 and stats["train"] == 1, stats
    assert "100%) done" in r.log
    by_kind = {}
    for job, log_path in submitted:
        kind = Path(log_path).parent.relative_to(wd / "logs" / "slurm").parts[0]
        by_kind.setdefault(kind.split("_")[0] + "_" + kind.split("_")[1]
                           if kind.startswith("group_") else kind, []).append(job)
    # the workflow's bundles (rules' `group:`, sizes from profiles/default), not the site's:
    # synth + ingest_init + pseudolabel_init in one job, the 3 chunks x (ingest + pseudolabel) in
    # one job (up to 10 chunks per job), the 3 QA overlays + the score in one job
    assert len(by_kind["group_prep"]) == 1, by_kind
    assert len(by_kind["group_chunks"]) == 1, by_kind
    assert len(by_kind["group_qa"]) == 1, by_kind
    assert len(submitted) == n_jobs - (3 - 1) - (6 - 1) - (4 - 1), (len(submitted), n_jobs)
    # a bundle's jobs run one after another, so it asks for the sum of the rules' runtimes
    (chunks_job,) = by_kind["group_chunks"]
    assert time_limit_min(watch.jobs[chunks_job]["scontrol"]) == 3 * 5 + 3 * 10
    # training: the rule's GPU request and runtime, on the site's GPU partition
    (train_job,) = by_kind["rule_train"]
    train = watch.jobs[train_job]["scontrol"]
    assert "Partition=gpu" in train and "gpu:1" in train, train
    assert time_limit_min(train) == 240

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
    with SlurmWatch(slurm.env) as watch:
        r = run_snakemake(wd, *PROFILE, "--retries", "1", "--keep-going", env=slurm.env,
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
    states = watch.states(submitted)
    assert sorted(states.values()) == ["COMPLETED", "FAILED", "FAILED", "FAILED"], states
    print(f"\nSLURM failure/retry run: {r.wall_s:.0f} s wall, {len(submitted)} SLURM jobs "
          f"({', '.join(f'{j}={s}' for j, s in sorted(states.items()))})")


def test_generic_profile_plans_the_bundles_of_profiles_slurm(tmp_path):
    """Dry runs (no cluster needed): a site's generic profile found by name plans the same SLURM
    jobs (bundles included) as profiles/slurm, because both get them from the workflow."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm not installed")
    home = tmp_path / "home"
    profile = home / ".config" / "snakemake" / "slurm" / "config.yaml"
    profile.parent.mkdir(parents=True)
    profile.write_text(yaml.safe_dump({"executor": "slurm", "jobs": 50}))
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    plans = {}
    for name, args in {"generic": PROFILE, "example": ["--profile", str(REPO / "profiles/slurm")]
                       }.items():
        r = run_snakemake(workdir_with(tmp_path / name, TINY).resolve(), *args, "-n", env=env)
        assert r.returncode == 0, r.log[-3000:]
        groups = sorted(re.findall(r"\] Group job (\S+) \(", r.log))
        ungrouped = sorted(rule for rule in re.findall(r"^rule (\w+):$", r.log, re.M)
                           if rule != "all")
        plans[name] = groups, ungrouped
    assert plans["generic"][0] == ["chunks", "prep", "qa"], plans
    assert plans["generic"] == plans["example"], plans
