"""Per-chunk memory benchmark: the peak RSS of every per-chunk job is bounded by the chunk, not
the movie.

Two movies with the same frame size and ``chunk_frames``: a short one (2 time chunks) and a long
one (``--frames``, default 32 chunks). Every per-chunk stage of the workflow runs as the real
``etemseg`` subprocess with the command line its rule uses and the demo config's settings
(``config/config.yaml``) -- ``ingest --chunk``, ``pseudolabel --chunk``, ``infer --chunk`` and
``measure --chunk`` -- on the first and the last chunk of each movie, and its peak resident memory
is the child's ``ru_maxrss`` from ``os.wait4``. ``ingest --init`` (once per movie: it scans the
whole dump) is listed too. The ratio long/short of the peak RSS per stage should be ~1.

The short movie is simulated (etemseg.synth, seed 1) and written as a K2 TIFF dump; the long
movie's dump hard-links those files under consecutive K2 names (frame i is short frame
i mod short-frames), so its first and last chunks hold the same pixels as the short movie's and
cost no extra disk. Only the measured chunks of the long movie are ingested (the others stay
unwritten): a per-chunk job reads only its own chunk, and a job that touched the whole movie
would still have to allocate it. The model for ``infer`` is trained for one short epoch on the
short movie's pseudo-labels (its weights do not matter for memory). frames/s is the job's own
rate from its receipt (ingest, pseudolabel, infer) or frames / wall time including start-up
(measure, which has no receipt).

    python benchmarks/chunk_memory.py              # 1024^2, chunks of 32, 64 vs 1024 frames
    python benchmarks/chunk_memory.py --full       # 1792x1920 frames
    python benchmarks/chunk_memory.py --frames 256 --size 512x512 --chunk-frames 16  # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("ingest --init", "ingest", "pseudolabel", "infer", "measure")


def k2_name(absolute_frame: int, fps: int = 400) -> str:
    second, frame = divmod(absolute_frame, fps)
    minute, second = divmod(second, 60)
    hour, minute = divmod(minute, 60)
    return (f"Capture1_Hour_{hour:02d}_Minute_{minute:02d}_Second_{second:02d}"
            f"_Frame_{frame:04d}.tif")


def cli_options(values: dict) -> list[str]:
    """Options from a config section, as workflow/rules/common.smk ``_cli_options`` builds them."""
    opts = []
    for key, value in sorted(values.items()):
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            opts.append(flag if value else "--no-" + key.replace("_", "-"))
        elif value is not None:
            opts += [flag, str(value)]
    return opts


def etemseg(*args) -> list[str]:
    return [sys.executable, "-m", "etemseg.cli", "--quiet", *map(str, args)]


def environment() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def run(cmd: list[str], log: Path) -> None:
    """Run an unmeasured step (simulation, training, --init of derived stores)."""
    with log.open("w") as f:
        if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=environment()).returncode:
            sys.exit(f"failed: {' '.join(cmd)}\n{log.read_text()[-3000:]}")


def measured(cmd: list[str], log: Path) -> tuple[float, float]:
    """Run ``cmd`` as a child process; its (peak RSS in MB, wall seconds)."""
    with log.open("w") as f:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=environment())
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{log.read_text()[-3000:]}")
    return usage.ru_maxrss / 1024, wall   # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1024, help="frames of the long movie")
    parser.add_argument("--short-frames", type=int,
                        help="frames of the short movie (default: 2 chunks)")
    parser.add_argument("--size", default="1024x1024", help="frame size HxW")
    parser.add_argument("--full", action="store_true", help="full K2 frames, 1792x1920")
    parser.add_argument("--chunk-frames", type=int, default=32, help="frames per time chunk")
    parser.add_argument("--model", default="unet4-norm", help="architecture for infer")
    parser.add_argument("--config", type=Path, default=ROOT / "config/config.yaml",
                        help="workflow config whose stage settings the jobs use")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/out/chunk_memory.json")
    parser.add_argument("--workdir", type=Path,
                        help="folder for the temporary movies (default: the system temp dir)")
    args = parser.parse_args()
    size = "1792x1920" if args.full else args.size
    height, width = (int(v) for v in size.lower().split("x"))
    cf = args.chunk_frames
    short_frames = args.short_frames or 2 * cf
    cfg = yaml.safe_load(args.config.read_text())
    ingest_cfg = {"codec": "blosc-zstd", "clevel": 3, **cfg.get("ingest", {})}
    pseudo_cfg = {"preset": "default", "method": "fast", "threads": 1, "params": {},
                  **cfg.get("pseudolabel", {})}
    infer_cfg = {"threads": 1, "settings": {}, **cfg.get("infer", {})}
    min_area = {"min_area_px": 20, **cfg.get("measure", {})}["min_area_px"]
    movies = {"short": short_frames, "long": args.frames}

    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        logs = tmp / "logs"
        logs.mkdir()
        print(f"simulating {short_frames} frames of {height}x{width} ...", flush=True)
        run(etemseg("synth", tmp / "synth", "--frames", short_frames, "--height", height,
                    "--width", width, "--seed", 1), logs / "synth.log")
        synth_frames = sorted((tmp / "synth/frames").iterdir())
        assert len(synth_frames) == short_frames, len(synth_frames)
        for name, n in movies.items():
            dump = tmp / name / "dump"
            dump.mkdir(parents=True)
            for i in range(n):
                os.link(synth_frames[i % short_frames], dump / k2_name(i))

        def record(stage, movie, k, rss, wall, frames, job_fps=None):
            rows.append({"stage": stage, "movie": movie, "movie_frames": movies[movie],
                         "chunk": k, "frames": frames, "peak_rss_mb": rss, "wall_s": wall,
                         "frames_per_s": job_fps if job_fps is not None else frames / wall})
            print(f"  {stage:<14} {movie:<5} chunk {k!s:>4}: {rss:7.0f} MB, {wall:6.1f} s",
                  flush=True)

        model = tmp / "model" / "model.pt"
        for movie in ("short", "long"):
            n = movies[movie]
            n_chunks = -(-n // cf)
            chunks = sorted({0, n_chunks - 1})
            d = tmp / movie
            frames, pseudo, out = d / "frames.zarr", d / "pseudo.zarr", d / args.model
            rss, wall = measured(etemseg(
                "ingest", d / "dump", frames, "--init", "--fps", 400, "--chunk-frames", cf,
                "--codec", ingest_cfg["codec"], "--clevel", ingest_cfg["clevel"],
                *(["--zarr-chunk-frames", ingest_cfg["zarr_chunk_frames"]]
                  if ingest_cfg.get("zarr_chunk_frames") else [])), logs / f"{movie}-init.log")
            record("ingest --init", movie, "-", rss, wall, n)
            for k in chunks:
                receipt = d / f"ingest-{k}.json"
                rss, wall = measured(
                    etemseg("ingest", d / "dump", frames, "--chunk", k, "--receipt", receipt),
                    logs / f"{movie}-ingest-{k}.log")
                r = json.loads(receipt.read_text())
                record("ingest", movie, k, rss, wall, r["frames"],
                       r["frames"] / max(r["elapsed_s"], 1e-9))
            pseudo_opts = ["--preset", pseudo_cfg["preset"], "--method", pseudo_cfg["method"],
                           *cli_options(pseudo_cfg["params"])]
            run(etemseg("pseudolabel", frames, pseudo, "--init", *pseudo_opts),
                logs / f"{movie}-pseudo-init.log")
            for k in chunks:
                receipt = d / f"pseudo-{k}.json"
                rss, wall = measured(etemseg(
                    "pseudolabel", frames, pseudo, "--chunk", k, "--threads",
                    pseudo_cfg["threads"], "--receipt", receipt, *pseudo_opts),
                    logs / f"{movie}-pseudo-{k}.log")
                r = json.loads(receipt.read_text())
                record("pseudolabel", movie, k, rss, wall, r["frames"], r["frames_per_s"])
            if not model.exists():
                print(f"training {args.model} briefly on the short movie ...", flush=True)
                run(etemseg("train", "--pair", frames, pseudo, "--out", model.parent, "--model",
                            args.model, "--epochs", 1, "--samples-per-epoch", 4,
                            "--batch-size", 2, "--crop-px", 64, "--max-frames", 8,
                            "--max-val-frames", 2, "--threads", 1), logs / "train.log")
            infer_opts = cli_options(infer_cfg["settings"])
            run(etemseg("infer", frames, model, out, "--init", "--expect", args.model,
                        *infer_opts), logs / f"{movie}-infer-init.log")
            for k in chunks:
                receipt = d / f"infer-{k}.json"
                rss, wall = measured(etemseg(
                    "infer", frames, model, out, "--chunk", k, "--expect", args.model,
                    "--threads", infer_cfg["threads"], "--receipt", receipt, *infer_opts),
                    logs / f"{movie}-infer-{k}.log")
                r = json.loads(receipt.read_text())
                record("infer", movie, k, rss, wall, r["frames"], r["frames_per_s"])
            for k in chunks:
                rss, wall = measured(etemseg(
                    "measure", frames, out / "mask.zarr", d / f"particles-{k}.parquet",
                    "--chunk", k, "--movie", movie, "--model", args.model,
                    "--min-area-px", min_area), logs / f"{movie}-measure-{k}.log")
                t0, t1 = k * cf, min(n, (k + 1) * cf)
                record("measure", movie, k, rss, wall, t1 - t0)

    ratios = {}
    for stage in STAGES:
        peak = {m: max(r["peak_rss_mb"] for r in rows if r["stage"] == stage and r["movie"] == m)
                for m in movies}
        ratios[stage] = {"short_mb": peak["short"], "long_mb": peak["long"],
                         "long_over_short": peak["long"] / peak["short"]}

    print(f"\n{size} frames, {cf} frames per chunk; short movie {short_frames} frames "
          f"({-(-short_frames // cf)} chunks), long {args.frames} ({-(-args.frames // cf)} chunks)")
    header = (f"{'stage':<14} {'movie frames':>12} {'chunk':>6} {'peak RSS MB':>12} "
              f"{'frames/s':>9} {'wall s':>7}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['stage']:<14} {r['movie_frames']:>12} {r['chunk']!s:>6} "
              f"{r['peak_rss_mb']:>12.0f} {r['frames_per_s']:>9.2f} {r['wall_s']:>7.1f}")
    print()
    header = f"{'stage':<14} {'short MB':>9} {'long MB':>9} {'long/short':>11}"
    print(header)
    print("-" * len(header))
    for stage, r in ratios.items():
        print(f"{stage:<14} {r['short_mb']:>9.0f} {r['long_mb']:>9.0f} "
              f"{r['long_over_short']:>11.3f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "benchmark": "chunk_memory",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "source": "simulated K2 TIFF dump (etemseg.synth, seed 1), uint16; long movie = "
                  "hard links of the short movie's frames",
        "size": size, "chunk_frames": cf, "movie_frames": movies, "model": args.model,
        "config": str(args.config), "peak_rss": "ru_maxrss of the job process (os.wait4), MB",
        "results": rows, "long_over_short": ratios}, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
