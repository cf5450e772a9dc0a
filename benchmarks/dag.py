"""DAG benchmark: time for Snakemake to plan a 10-minute 400 fps movie (240,000 frames, 600 chunks).

A synthetic movie entry with ``frames: 240000`` (1792x1920, chunk_frames 400) stands in for a real
frame dump: planning only needs the frame count, nothing is simulated or read.  Each case runs
``snakemake -n --quiet rules`` (a dry run: parse, build the DAG, print the job table) in a fresh
process in an empty work directory and is timed end to end (interpreter start-up included).
Cases: the demo settings (config/config.yaml: 2 models) and the paper's settings
(config/paper.yaml: every model), each planned for local execution and through
``--profile profiles/slurm`` (which adds the job groups that bundle per-chunk jobs).
Target: < 30 s per plan.  Prints a table and writes JSON.

    python benchmarks/dag.py                   # 4 cases, best of 1 run each
    python benchmarks/dag.py --repeat 3 --cases demo
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

MOVIE = {  # 10 min at 400 frames/s, K2-IS frame size
    "synthetic": {"frames": 240_000, "height": 1792, "width": 1920, "pixel_size_nm": 0.18,
                  "seed": 0},
    "fps": 400,
    "chunk_frames": 400,
}
TARGET_S = 30.0


def bench_config(base: str) -> dict:
    """The settings of config/<base>.yaml with its movies replaced by the 10-minute movie."""
    cfg = yaml.safe_load((REPO / "config" / f"{base}.yaml").read_text())
    cfg["movies"] = {"movie10min": MOVIE}
    return cfg


def job_stats(log: str) -> dict[str, int]:
    table = log[log.index("Job stats:"):]
    rows = re.findall(r"^(\w+)\s+(\d+)$", table[:table.index("\ntotal")], re.M)
    return {rule: int(n) for rule, n in rows}


def plan(config: dict, profile: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="etemseg-dag-") as tmp:
        wd = Path(tmp)
        (wd / "config").mkdir()
        (wd / "config" / "config.yaml").write_text(yaml.safe_dump(config))
        cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
               str(wd), "-n", "--quiet", "rules"]
        cmd += ["--profile", str(REPO / "profiles" / "slurm")] if profile else ["--cores", "2"]
        start = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=1800)
        seconds = time.perf_counter() - start
    log = r.stdout + r.stderr
    if r.returncode != 0:
        raise SystemExit(f"snakemake failed ({' '.join(cmd)}):\n{log[-4000:]}")
    stats = job_stats(log)
    return {"seconds": seconds, "jobs": sum(stats.values()), "jobs_by_rule": stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["demo", "paper"], choices=["demo", "paper"])
    parser.add_argument("--modes", nargs="+", default=["local", "slurm"],
                        choices=["local", "slurm"])
    parser.add_argument("--repeat", type=int, default=1, help="runs per case; the best is kept")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "dag.json")
    args = parser.parse_args()

    bases = {"demo": "config", "paper": "paper"}
    results = []
    for case in args.cases:
        config = bench_config(bases[case])
        for mode in args.modes:
            runs = [plan(config, profile=mode == "slurm") for _ in range(args.repeat)]
            best = min(runs, key=lambda run: run["seconds"])
            n_chunks = -(-MOVIE["synthetic"]["frames"] // MOVIE["chunk_frames"])
            results.append({"case": case, "mode": mode, "models": len(config.get("models", [])),
                            "chunks": n_chunks, "seconds": best["seconds"],
                            "all_seconds": [run["seconds"] for run in runs], "jobs": best["jobs"],
                            "jobs_by_rule": best["jobs_by_rule"],
                            "within_target": best["seconds"] < TARGET_S})
            print(f"  {case:5s} {mode:5s} {best['jobs']:6d} jobs  {best['seconds']:6.1f} s",
                  file=sys.stderr, flush=True)

    header = (f"{'config':8s} {'plan':6s} {'models':>6s} {'chunks':>6s} {'jobs':>7s} "
              f"{'seconds':>8s}  < {TARGET_S:.0f} s")
    print(header)
    print("-" * len(header))
    for res in results:
        print(f"{res['case']:8s} {res['mode']:6s} {res['models']:6d} {res['chunks']:6d} "
              f"{res['jobs']:7d} {res['seconds']:8.1f}  {'yes' if res['within_target'] else 'NO'}")

    doc = {
        "benchmark": "dag",
        "what": "snakemake -n --quiet rules (parse + DAG + job table), fresh process, wall time",
        "movie": {"frames": MOVIE["synthetic"]["frames"], "fps": MOVIE["fps"],
                  "height": MOVIE["synthetic"]["height"], "width": MOVIE["synthetic"]["width"],
                  "chunk_frames": MOVIE["chunk_frames"]},
        "target_seconds": TARGET_S,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "snakemake": subprocess.run([sys.executable, "-m", "snakemake", "--version"],
                                    capture_output=True, text=True).stdout.strip(),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")


if __name__ == "__main__":
    main()
