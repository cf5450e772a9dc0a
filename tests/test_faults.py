"""Fault tolerance: jobs killed mid-write, and the whole workflow killed (node death), then rerun.

The kills are real SIGKILLs at a chosen point inside a per-chunk job, after some but not all Zarr
blocks of its time chunk are written and before its receipt: the test hook
:func:`etemseg.io.store.fault_point`, driven by the ``ETEMSEG_FAULT`` environment variable
(``STAGE:CHUNK:BLOCKS[:kill|stop]``; unset in normal use, and then it does nothing).

What a user types to recover:

* a job killed (OOM killer, ``scancel``, ``kill -9``) while Snakemake keeps running: Snakemake
  reports the job as failed (exit status 137) and removes its bookkeeping, so a plain rerun,
  ``snakemake``, redoes exactly the chunks without a receipt;
* a killed ``train`` job resumes from ``models/{model}/checkpoint.pt`` on the rerun, with the
  random states of the epoch it stopped after, so the model equals an uninterrupted run's;
* Snakemake itself killed with its jobs (node death, SIGKILL of the whole process tree): its lock
  and "incomplete" markers stay behind, so ``snakemake --unlock`` then
  ``snakemake --rerun-incomplete``. A plain rerun refuses: the directory is locked, and a receipt
  written by a job whose end the dead Snakemake never recorded is reported as incomplete.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from .test_workflow import REPO, TINY, snakemake, workdir_with

pytestmark = pytest.mark.slow   # whole-workflow runs: `pytest -m "not slow"` skips them

#: One frame per Zarr block, so a 4-frame time chunk is written in 4 steps and a kill after 2
#: leaves it half written.
CONFIG = copy.deepcopy(TINY)
CONFIG["ingest"] = {"zarr_chunk_frames": 1}
MODEL = CONFIG["models"][0]
#: Everything per chunk (ingest, pseudo-labels, inference, measurement), training and tracking.
TARGETS = [f"results/tiny/{MODEL}/trajectories.parquet"]
STORES = ["results/tiny/frames.zarr", "results/tiny/pseudo.zarr",
          f"results/tiny/{MODEL}/prob.zarr", f"results/tiny/{MODEL}/mask.zarr"]
#: Receipt, model-file and metrics fields that are timings (differ from run to run).
TIMINGS = {"elapsed_s", "seconds", "frames_per_s", "training_time_s", "wall_time_s_this_run",
           "epoch_s", "images_per_s", "read_wait_s", "write_wait_s"}
SIGKILLED = "non-zero exit status 137"   # 128 + SIGKILL, as the job's shell reports it


def read(wd: Path, store: str, t0: int | None = None, t1: int | None = None) -> np.ndarray:
    return zarr.open_array(wd / store / "0", mode="r")[t0:t1]


def zarr_block_written(wd: Path, store: str, t: int) -> bool:
    """Whether the Zarr chunk file of frame ``t`` exists (chunks are (1, H, W) here)."""
    return (wd / store / "0" / "c" / str(t) / "0" / "0").is_file()


def assert_half_written(wd: Path, ref: Path, store: str, t0: int, done: int, total: int = 4):
    """Frames t0..t0+done of ``store`` are written and equal the reference; the rest of the time
    chunk is unwritten (no chunk file, fill value 0) although the reference has data there."""
    written, missing = range(t0, t0 + done), range(t0 + done, t0 + total)
    assert all(zarr_block_written(wd, store, t) for t in written), store
    assert not any(zarr_block_written(wd, store, t) for t in missing), store
    assert np.array_equal(read(wd, store, t0, t0 + done), read(ref, store, t0, t0 + done)), store
    assert not read(wd, store, missing[0], missing[-1] + 1).any(), store
    assert read(ref, store, missing[0], missing[-1] + 1).any(), store


def _procs() -> dict[int, tuple[str, int, str]]:
    """pid -> (state, parent pid, command line) of every process, from /proc."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
        out[int(d.name)] = (state, int(ppid), cmdline)
    return out


def descendants(root: int) -> dict[int, tuple[str, int, str]]:
    procs = _procs()
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = procs[child]
            todo.append(child)
    return found


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process started with ``start_new_session`` and every descendant (node death).

    Everything is frozen first, so nothing starts or runs on between the kills."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGSTOP)
    tree = descendants(proc.pid)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)


def strip_timings(obj):
    if isinstance(obj, dict):
        return {k: strip_timings(v) for k, v in obj.items() if k not in TIMINGS}
    if isinstance(obj, (list, tuple)):
        return [strip_timings(v) for v in obj]
    return obj


def assert_same(a, b, where: str) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor) and where.endswith("['model_file']"):
        # the checkpoint keeps the finished model.pt as bytes; torch.save writes a random
        # serialization id into every file, so compare what the two files hold
        import io

        def load(t):
            return torch.load(io.BytesIO(t.numpy().tobytes()), weights_only=True)

        assert_same(strip_timings(load(a)), strip_timings(load(b)), where)
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b or (a != a and b != b), where   # NaN == NaN


def output_files(wd: Path) -> list[str]:
    """Every file under results/ and models/, minus the ``.tmp-*`` siblings that atomic writes
    killed mid-way may leave (documented in etemseg.io.atomic; never read by anything)."""
    return sorted(str(p.relative_to(wd)) for top in ("results", "models")
                  for p in (wd / top).rglob("*") if p.is_file() and ".tmp-" not in p.name)


def assert_same_outputs(run: Path, ref: Path) -> None:
    """Every output of ``run`` equals ``ref``'s: Zarr arrays, Parquet tables, chunk files and
    figures byte for byte; JSON (receipts, Zarr metadata) and model files as content, without
    timings and with the work directory's own path replaced."""
    files = output_files(ref)
    assert output_files(run) == files
    for store in STORES:
        a, b = read(run, store), read(ref, store)
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), store
        assert b.any(), store
    for name in files:
        a, b = run / name, ref / name
        if name.endswith(".json"):
            ja = json.loads(a.read_text().replace(str(run), "<workdir>"))
            jb = json.loads(b.read_text().replace(str(ref), "<workdir>"))
            assert_same(strip_timings(ja), strip_timings(jb), name)
        elif name.endswith(".pt"):
            assert_same(strip_timings(torch.load(a, weights_only=True)),
                        strip_timings(torch.load(b, weights_only=True)), name)
        elif name.endswith("metrics.csv"):
            ta, tb = pd.read_csv(a), pd.read_csv(b)
            pd.testing.assert_frame_equal(ta.drop(columns=[c for c in ta if c in TIMINGS]),
                                          tb.drop(columns=[c for c in tb if c in TIMINGS]))
        else:
            assert a.read_bytes() == b.read_bytes(), name


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_jobs_and_node_death_then_rerun_equal_an_uninterrupted_run(tmp_path, monkeypatch):
    t_start = time.perf_counter()
    monkeypatch.delenv("ETEMSEG_FAULT", raising=False)
    ref = workdir_with(tmp_path / "reference", CONFIG).resolve()
    r = snakemake(ref, *TARGETS)
    assert r.returncode == 0, r.stderr[-3000:]
    t_ref = time.perf_counter() - t_start

    # 1. two jobs of two stages SIGKILLed half-way through their chunk; Snakemake carries on
    #    with the rest (--keep-going) and fails at the end
    wd = workdir_with(tmp_path / "faults", CONFIG).resolve()
    monkeypatch.setenv("ETEMSEG_FAULT", "ingest:1:2,pseudolabel:0:2")
    r = snakemake(wd, "--keep-going", *TARGETS)
    log = r.stdout + r.stderr
    assert r.returncode != 0
    assert log.count(SIGKILLED) == 2, log[-4000:]
    assert "Error in rule ingest_chunk" in log and "Error in rule pseudolabel_chunk" in log
    assert_half_written(wd, ref, "results/tiny/frames.zarr", t0=4, done=2)       # chunk 1
    assert_half_written(wd, ref, "results/tiny/pseudo.zarr", t0=0, done=2)       # chunk 0
    receipts = wd / "results/tiny/receipts"
    assert sorted(p.name for p in (receipts / "ingest").iterdir()) == ["chunk-0.json",
                                                                       "chunk-2.json"]
    assert not (receipts / "pseudolabel/chunk-0.json").exists()
    assert not (wd / f"models/{MODEL}/model.pt").exists()   # nothing downstream ran

    # 1b. training SIGKILLed after the first of its two epochs (Snakemake alive): the job
    #     fails, Snakemake removes its declared outputs, the checkpoint stays for the next run
    monkeypatch.setenv("ETEMSEG_FAULT", "train:0:1")
    r = snakemake(wd, "--keep-going", *TARGETS)
    log = r.stdout + r.stderr
    assert r.returncode != 0 and "Error in rule train" in log and SIGKILLED in log, log[-4000:]
    assert (wd / f"models/{MODEL}/checkpoint.pt").exists()
    assert not (wd / f"models/{MODEL}/model.pt").exists()

    # 2. node death: the rerun resumes training, then gets as far as inference, whose chunk 1
    #    freezes after 2 of its 4 blocks; then Snakemake and every job it runs are SIGKILLed at once
    monkeypatch.setenv("ETEMSEG_FAULT", "infer:1:2:stop")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
           str(wd), "--cores", "2", *TARGETS]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        frozen = []
        while not frozen and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
            frozen = [pid for pid, (state, _, cmdline) in descendants(proc.pid).items()
                      if state == "T" and " infer " in cmdline and "--chunk 1 " in cmdline]
        assert frozen, f"no infer chunk 1 job stopped itself (snakemake exit {proc.poll()})"
    finally:
        kill_tree(proc)
    assert proc.returncode == -signal.SIGKILL
    assert_half_written(wd, ref, f"results/tiny/{MODEL}/prob.zarr", t0=4, done=2)
    assert not (wd / f"results/tiny/{MODEL}/receipts/infer/chunk-1.json").exists()
    assert (receipts / "ingest/chunk-1.json").exists()       # step 1's kills were repaired
    assert (receipts / "pseudolabel/chunk-0.json").exists()

    # 3. recover as a user would: the dead Snakemake's lock must be removed explicitly, and
    #    receipts written by jobs whose completion it never recorded are refused until rerun
    monkeypatch.delenv("ETEMSEG_FAULT")
    plain = snakemake(wd, *TARGETS)
    assert plain.returncode != 0
    assert "LockException" in plain.stderr or "IncompleteFilesException" in plain.stderr, \
        plain.stderr[-3000:]
    assert snakemake(wd, "--unlock").returncode == 0
    r = snakemake(wd, "--rerun-incomplete", *TARGETS)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_outputs(wd, ref)
    print(f"\nreference run {t_ref:.0f} s; killed jobs, node death and recovery "
          f"{time.perf_counter() - t_start - t_ref:.0f} s")


@pytest.mark.parametrize("spec", ["ingest:1", "ingest:x:2", "ingest:1:2:explode",
                                  "ingest:1:2,infer"])
def test_malformed_fault_spec_is_an_error_not_silently_ignored(monkeypatch, spec):
    from etemseg.errors import ConfigError
    from etemseg.io.store import fault_point

    monkeypatch.setenv("ETEMSEG_FAULT", spec)
    with pytest.raises(ConfigError, match="ETEMSEG_FAULT"):
        fault_point("pseudolabel", 0, 1)


def test_fault_hook_does_nothing_when_unset_or_not_matching(monkeypatch):
    from etemseg.io.store import fault_point

    monkeypatch.delenv("ETEMSEG_FAULT", raising=False)
    fault_point("ingest", 1, 2)
    monkeypatch.setenv("ETEMSEG_FAULT", "ingest:1:2,pseudolabel:0:3:stop")
    for stage, k, n in [("ingest", 1, 1), ("ingest", 0, 2), ("infer", 1, 2), ("pseudolabel", 0, 2)]:
        fault_point(stage, k, n)   # still alive
