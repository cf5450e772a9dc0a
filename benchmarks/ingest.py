"""Ingest benchmark: frames/s, MB/s, compression ratio and peak memory per frame size and codec.

A simulated K2-style TIFF dump (etemseg.synth, realistic texture and Poisson noise) is ingested
with ``chunk_frames`` frames per time chunk, each case in a fresh process so its peak resident
memory (VmHWM) is its own. Prints a table and writes JSON.

    python benchmarks/ingest.py                                  # 1024^2 and 1792x1920, 3 codecs
    python benchmarks/ingest.py --sizes 1792x1920 --frames 400 --codecs blosc-zstd   # memory check
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


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_case(src: str, out: str, codec: str, chunk_frames: int) -> dict:
    """One ingest in this process; returns timings and peak memory."""
    from etemseg.stages.ingest import ingest_chunk, init_store

    start = time.perf_counter()
    store = init_store(src, out, codec=codec, chunk_frames=chunk_frames)
    for k in range(store.n_chunks):
        ingest_chunk(store, k)
    elapsed = time.perf_counter() - start
    raw = store.array.nbytes
    return {"frames": store.n_frames, "seconds": elapsed, "raw_bytes": raw,
            "stored_bytes": dir_bytes(Path(out) / "0"), "peak_rss_mb": peak_rss_mb(),
            "zarr_chunk_frames": int(store.array.chunks[0])}


def make_dump(folder: Path, height: int, width: int, frames: int) -> Path:
    from etemseg.synth import SynthParams, write_synthetic_movie

    write_synthetic_movie(folder, SynthParams(frames=frames, height=height, width=width, seed=1),
                          progress=True)
    return folder / "frames"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--chunk-frames", type=int, default=400)
    parser.add_argument("--sizes", nargs="+", default=["1024x1024", "1792x1920"])
    parser.add_argument("--codecs", nargs="+", default=["blosc-zstd", "blosc-lz4", "zstd"])
    parser.add_argument("--json", type=Path, default=Path("benchmarks/out/ingest.json"))
    parser.add_argument("--workdir", type=Path, help="keep dumps here (default: a temp dir)")
    parser.add_argument("--_case", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._case:
        src, out, codec, chunk_frames = args._case
        print(json.dumps(run_case(src, out, codec, int(chunk_frames))))
        return

    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for size in args.sizes:
            height, width = (int(v) for v in size.lower().split("x"))
            dump = make_dump(Path(tmp) / f"dump-{size}", height, width, args.frames)
            src_bytes = dir_bytes(dump)
            for codec in args.codecs:
                out = Path(tmp) / f"{size}-{codec}.zarr"
                proc = subprocess.run(
                    [sys.executable, __file__, "--_case", str(dump), str(out), codec,
                     str(args.chunk_frames)], capture_output=True, text=True, check=True)
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append({
                    "size": size, "codec": codec, "frames": r["frames"],
                    "zarr_chunk_frames": r["zarr_chunk_frames"],
                    "frames_per_s": r["frames"] / r["seconds"],
                    "mb_per_s": r["raw_bytes"] / 1e6 / r["seconds"],
                    "compression_ratio": r["raw_bytes"] / r["stored_bytes"],
                    "tiff_dump_mb": src_bytes / 1e6, "store_mb": r["stored_bytes"] / 1e6,
                    "peak_rss_mb": r["peak_rss_mb"],
                })
                subprocess.run(["rm", "-rf", str(out)], check=True)
    header = (f"{'size':>10} {'codec':>11} {'frames':>6} {'frames/s':>9} {'MB/s':>7} "
              f"{'ratio':>6} {'store MB':>9} {'peak MB':>8}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['size']:>10} {r['codec']:>11} {r['frames']:>6} {r['frames_per_s']:>9.1f} "
              f"{r['mb_per_s']:>7.1f} {r['compression_ratio']:>6.2f} {r['store_mb']:>9.1f} "
              f"{r['peak_rss_mb']:>8.0f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "benchmark": "ingest",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "source": "simulated K2 TIFF dump (etemseg.synth, seed 1), uint16",
        "chunk_frames": args.chunk_frames, "results": rows}, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
