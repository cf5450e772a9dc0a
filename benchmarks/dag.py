"""DAG benchmark: time for Snakemake to plan a 10-minute 400 fps movie (240,000 frames, 600 chunks).

The movie is a real-named K2-IS frame dump: 240,000 empty files named like
``Capture1_Hour_00_Minute_05_Second_20_Frame_0007.dm4`` (``etemseg.synth.k2_frame_name``).
Planning reads only names and sizes (the frame count from the names, the source manifest from
each file's size and mtime), so empty files plan exactly as real ones. Each case runs
``snakemake -n`` (a dry run: parse, scan the dump, build the DAG, print every job) in a fresh
process in an empty work directory and is timed end to end (interpreter start-up included).

Configs: the demo settings (config/config.yaml) and the paper's (config/paper.yaml: 16 models),
each with its movies replaced by the dump. Plans:

- ``local``:   ``--cores 2``
- ``slurm``:   ``--profile profiles/slurm`` (this repository's example site profile)
- ``generic``: ``--profile slurm`` with a generic site profile (``executor: slurm``, ``jobs: 50``)
  in a temporary ``$HOME/.config/snakemake/slurm``: what a user with their site's profile types.

For the two SLURM plans the SLURM jobs are counted from the dry run: one per group job (the
bundles of profiles/default) plus one per ungrouped job. Targets: the demo plan < 30 s, the paper
plan < 60 s (2 cores); a generic profile gives as many SLURM jobs as profiles/slurm. Wall time
and the process's CPU time are both reported: on a shared machine the CPU time is what the plan
costs (Snakemake plans on one core), the wall time what it took under that load.

    python benchmarks/dag.py                             # every config and plan, 1 run each
    python benchmarks/dag.py --cases demo --modes local generic --repeat 3
    python benchmarks/dag.py --dump /tmp/k2-240k         # keep (and reuse) the 240,000 files
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from etemseg.synth import k2_frame_name  # noqa: E402

FRAMES, FPS, CHUNK_FRAMES = 240_000, 400, 400  # 10 min at 400 frames/s, 1 s per chunk
TARGET_S = {"demo": 30.0, "paper": 60.0}
GENERIC_PROFILE = {"executor": "slurm", "jobs": 50}
LOCAL_RULES = {"all"}  # rules without a command: never submitted


def make_dump(folder: Path, frames: int = FRAMES) -> Path:
    """``frames`` empty K2-named ``.dm4`` files in ``folder`` (kept if already complete)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [Path(k2_frame_name(i, FPS)).with_suffix(".dm4").name for i in range(frames)]
    if sum(1 for _ in os.scandir(folder)) != frames:
        for name in names:
            (folder / name).touch()
    return folder


def bench_config(base: str, dump: Path) -> dict:
    """The settings of config/<base>.yaml with its movies replaced by the dump."""
    cfg = yaml.safe_load((REPO / "config" / f"{base}.yaml").read_text())
    cfg["movies"] = {"run10min": {"source": str(dump), "fps": FPS, "chunk_frames": CHUNK_FRAMES,
                                  "pixel_size_nm": 0.18}}
    return cfg


def job_stats(log: str) -> dict[str, int]:
    table = log[log.index("Job stats:"):]
    rows = re.findall(r"^(\w+)\s+(\d+)$", table[:table.index("\ntotal")], re.M)
    return {rule: int(n) for rule, n in rows}


def cluster_jobs(log: str) -> dict[str, int]:
    """Jobs a cluster executor submits, from a dry run's job list: each group job (a bundle) and
    each top-level job outside a group (jobs inside a group are printed indented)."""
    counts: dict[str, int] = {}
    for group in re.findall(r"\] Group job (\S+) \(", log):
        counts[f"group {group}"] = counts.get(f"group {group}", 0) + 1
    for rule in re.findall(r"^(?:rule|checkpoint) (\w+):$", log, re.M):
        if rule not in LOCAL_RULES:
            counts[rule] = counts.get(rule, 0) + 1
    return counts


def plan(config: dict, mode: str, home: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="etemseg-dag-") as tmp:
        wd = Path(tmp)
        (wd / "config").mkdir()
        (wd / "config" / "config.yaml").write_text(yaml.safe_dump(config))
        cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
               str(wd), "-n"]
        env = dict(os.environ)
        if mode == "local":
            cmd += ["--cores", "2"]
        elif mode == "slurm":
            cmd += ["--profile", str(REPO / "profiles" / "slurm")]
        else:  # a generic site profile found by name, as `snakemake --profile slurm` finds it
            cmd += ["--profile", "slurm"]
            env["HOME"] = str(home)
            env["XDG_CONFIG_HOME"] = str(home / ".config")
        start, cpu0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=1800, env=env)
        seconds = time.perf_counter() - start
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_seconds = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    log = r.stdout + r.stderr
    if r.returncode != 0:
        raise SystemExit(f"snakemake failed ({' '.join(cmd)}):\n{log[-4000:]}")
    stats = job_stats(log)
    out = {"seconds": seconds, "cpu_seconds": cpu_seconds, "command": " ".join(cmd[1:]),
           "jobs": sum(stats.values()), "jobs_by_rule": stats}
    if mode != "local":
        by_kind = cluster_jobs(log)
        out.update(slurm_jobs=sum(by_kind.values()), slurm_jobs_by_kind=by_kind)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["demo", "paper"], choices=["demo", "paper"])
    parser.add_argument("--modes", nargs="+", default=["local", "slurm", "generic"],
                        choices=["local", "slurm", "generic"])
    parser.add_argument("--repeat", type=int, default=1, help="runs per case; the best is kept")
    parser.add_argument("--dump", type=Path, default=None,
                        help="folder for the 240,000 empty frame files (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "dag.json")
    args = parser.parse_args()

    bases = {"demo": "config", "paper": "paper"}
    results = []
    with tempfile.TemporaryDirectory(prefix="etemseg-dag-home-") as tmp:
        home = Path(tmp)
        profile = home / ".config" / "snakemake" / "slurm" / "config.yaml"
        profile.parent.mkdir(parents=True)
        profile.write_text(yaml.safe_dump(GENERIC_PROFILE))
        dump = make_dump(args.dump or home / "k2-dump")
        n_chunks = -(-FRAMES // CHUNK_FRAMES)
        for case in args.cases:
            config = bench_config(bases[case], dump)
            for mode in args.modes:
                runs = [plan(config, mode, home) for _ in range(args.repeat)]
                best = min(runs, key=lambda run: run["seconds"])
                res = {"case": case, "mode": mode, "models": len(config.get("models", [])),
                       "chunks": n_chunks, "all_seconds": [run["seconds"] for run in runs],
                       "target_seconds": TARGET_S[case],
                       "within_target_wall": best["seconds"] < TARGET_S[case],
                       "within_target_cpu": best["cpu_seconds"] < TARGET_S[case], **best}
                results.append(res)
                slurm = f"  {best['slurm_jobs']:5d} SLURM jobs" if "slurm_jobs" in best else ""
                print(f"  {case:5s} {mode:7s} {best['jobs']:6d} jobs{slurm}  "
                      f"{best['seconds']:6.1f} s ({best['cpu_seconds']:.1f} s CPU)",
                      file=sys.stderr, flush=True)

    header = (f"{'config':7s} {'plan':8s} {'models':>6s} {'chunks':>6s} {'jobs':>6s} "
              f"{'SLURM jobs':>26s} {'wall s':>7s} {'CPU s':>6s}  target  wall/CPU within")
    print(header)
    print("-" * len(header))
    for res in results:
        slurm = str(res.get("slurm_jobs", "-"))
        chunk_bundles = res.get("slurm_jobs_by_kind", {}).get("group chunks")
        if chunk_bundles is not None:
            slurm += f" ({chunk_bundles} chunk bundles)"
        print(f"{res['case']:7s} {res['mode']:8s} {res['models']:6d} {res['chunks']:6d} "
              f"{res['jobs']:6d} {slurm:>26s} {res['seconds']:7.1f} {res['cpu_seconds']:6.1f}  "
              f"< {res['target_seconds']:.0f} s  {'yes' if res['within_target_wall'] else 'NO'}/"
              f"{'yes' if res['within_target_cpu'] else 'NO'}")

    doc = {
        "benchmark": "dag",
        "what": "snakemake -n (parse, scan the dump, DAG, job list), fresh process, wall time",
        "movie": {"frames": FRAMES, "fps": FPS, "chunk_frames": CHUNK_FRAMES,
                  "source": "real-named K2 dump of empty .dm4 files"},
        "generic_profile": GENERIC_PROFILE,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "load_average": os.getloadavg()},
        "snakemake": subprocess.run([sys.executable, "-m", "snakemake", "--version"],
                                    capture_output=True, text=True).stdout.strip(),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")


if __name__ == "__main__":
    main()
