"""Host side of the ``infer_chunk`` job, without the network: frames/s per core.

On a GPU node the network runs at ~420 full frames/s (benchmarks/records), so what the whole
per-chunk job reaches is set by the host: reading and decoding the raw frames, thresholding and
minimum-area filtering the masks, encoding and writing the probability and mask stores. This
benchmark measures that ceiling on any machine: it runs the real
:func:`etemseg.stages.infer.infer_chunk` with the network replaced by *stored* probabilities
(``stream_levels`` consumes the frame blocks as the real one does, and yields precomputed uint8
levels and histograms: the work the GPU does is free here).

Frames are synthetic (dark discs of 5 nm particles on a Poisson background, 1792x1920 uint16 at
0.18 nm/px by default); the stored probabilities are a smooth function of the frames, so they
compress like a network's output. Every case runs in this process with ``--threads`` intra-op
threads (default 1: frames/s *per core*; ``infer_chunk`` sizes its mask pool by
``torch.get_num_threads()``).

Rows:

``job``
    The whole host side of ``infer_chunk`` (one time chunk), per threshold mode, with the
    stage's output codec (:data:`etemseg.stages.infer.OUTPUT_CODEC`) and each frames codec.
``step: ...``
    Each part alone on the same frames: decode of the frames, the mask filter (threshold +
    minimum area), encode+write of the probability and of the mask store per candidate codec,
    and the bytes each codec stores per frame.

frames/CPU-s is frames per second of process CPU time (all threads): the per-core rate.
``main ms`` is the CPU time per frame of the job's main thread, the loop that feeds the network
(everything else runs in the read, mask and write pools): work that more cores do not spread, so
``1000 / main ms`` frames/s caps the job on any number of cores (before the network's own
launch overhead).

The process keeps freed memory as ``etemseg infer`` does (:func:`etemseg.nn.inference.retain_heap`,
called by the CLI before any job): the blocks of frames, temporal means and levels are then not
page-faulted and zeroed anew for every block. ``--no-retain-heap`` measures without it (what a
library caller of ``infer_chunk`` that does not call it gets).

    python benchmarks/infer_host.py                  # 1792x1920, 32 frames, 1 thread
    python benchmarks/infer_host.py --frames 64 --threads 2 --output-codecs zstd:1
"""

from __future__ import annotations

import os
import sys

_THREADS = "1"   # thread pools read these at import: set them before numpy/torch are imported
for _i, _a in enumerate(sys.argv):
    if _a == "--threads" and _i + 1 < len(sys.argv):
        _THREADS = sys.argv[_i + 1]
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = _THREADS

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from etemseg.io.store import MovieStore, create_store  # noqa: E402
from etemseg.nn.inference import HYSTERESIS, InferConfig, retain_heap  # noqa: E402
from etemseg.stages import infer as infer_stage  # noqa: E402


def synthetic_frames(n: int, h: int, w: int, pixel_size_nm: float, seed: int = 0) -> np.ndarray:
    """(n, h, w) uint16: dark discs of 5 nm diameter at ~15 % coverage on Poisson(200) counts."""
    rng = np.random.default_rng(seed)
    r_px = 2.5 / pixel_size_nm
    n_disc = int(0.15 * h * w / (np.pi * r_px**2))
    cy, cx = rng.uniform(0, h, n_disc), rng.uniform(0, w, n_disc)
    yy, xx = np.mgrid[0:h, 0:w]
    dark = np.zeros((h, w), np.float32)
    step = int(np.ceil(r_px)) + 1
    for y, x in zip(cy, cx):
        y0, y1 = max(0, int(y) - step), min(h, int(y) + step + 1)
        x0, x1 = max(0, int(x) - step), min(w, int(x) + step + 1)
        d2 = (yy[y0:y1, x0:x1] - y) ** 2 + (xx[y0:y1, x0:x1] - x) ** 2
        np.maximum(dark[y0:y1, x0:x1], np.clip(1 - d2 / r_px**2, 0, 1) ** 0.5,
                   out=dark[y0:y1, x0:x1])
    out = np.empty((n, h, w), np.uint16)
    for i in range(n):
        shifted = np.roll(dark, (i // 4, i // 3), axis=(0, 1))
        out[i] = rng.poisson(200.0 * (1 - 0.45 * shifted))
    return out


def stored_levels(frames: np.ndarray) -> np.ndarray:
    """uint8 'probabilities' of the frames: a logistic of the local darkness (smooth, like a
    network's output)."""
    from scipy import ndimage

    q = np.empty(frames.shape, np.uint8)
    for i, f in enumerate(frames):
        s = ndimage.gaussian_filter(f.astype(np.float32), 1.5)
        p = 1.0 / (1.0 + np.exp((s - 155.0) / 8.0))
        q[i] = np.round(255 * p).astype(np.uint8)
    return q


def fake_stream_levels(levels: np.ndarray, t_first: int):
    """A ``stream_levels`` that consumes the frame blocks and yields stored levels."""
    hists = np.stack([np.bincount(f.ravel(), minlength=256) for f in levels])

    def stream(model, blocks, *, arch, cfg, device):
        for b0, frames in blocks:
            i0 = b0 - t_first
            yield b0, levels[i0:i0 + len(frames)].copy(), hists[i0:i0 + len(frames)]
    return stream


def make_frames_store(path: Path, frames: np.ndarray, codec: str, pixel_size_nm: float,
                      zarr_chunk_frames: int) -> MovieStore:
    n, h, w = frames.shape
    create_store(path, n_frames=n, frame_shape=(h, w), dtype=np.uint16, chunk_frames=n, fps=400.0,
                 pixel_size_nm=pixel_size_nm, codec=codec, zarr_chunk_frames=zarr_chunk_frames)
    store = MovieStore.open(path, "r+")
    store.array[:] = frames
    return MovieStore.open(path)


def timed(fn, repeat: int) -> tuple[float, float]:
    """Best wall time and best process CPU time (all threads) of ``repeat`` calls, s."""
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        fn()
        best = min(best, time.perf_counter() - t)
        best_cpu = min(best_cpu, time.process_time() - c)
    return best, best_cpu


def bench_job(tmp: Path, frames_store: MovieStore, levels: np.ndarray, codec: str, mode: str,
              repeat: int, window_ms: float = 0.0, hysteresis: float = HYSTERESIS) -> dict:
    cfg = InferConfig(threshold=mode, min_area_px=20, device="cpu", hysteresis=hysteresis)
    infer_stage.stream_levels = fake_stream_levels(levels, 0)
    n = frames_store.n_frames

    receipts, main_cpu = [], []

    def run():
        prob, mask = infer_stage.create_outputs(frames_store, tmp / "prob.zarr",
                                                tmp / "mask.zarr", {})
        meta = {"name": "unet4-norm", "data": {"window_ms": window_ms}}
        c = time.thread_time()
        receipts.append(infer_stage.infer_chunk(frames_store, prob, mask, 0, None, meta, cfg,
                                                torch.device("cpu")))
        main_cpu.append(time.thread_time() - c)
    seconds, cpu = timed(run, repeat)
    # the job's own profile (last run): seconds its main thread waited for reads and writes
    waits = {key: receipts[-1][key] for key in ("read_wait_s", "write_wait_s")}
    # CPU of the job's main thread (the loop that feeds the network; the rest runs in pools):
    # the part no number of cores parallelises, so 1000 / ms-per-frame caps the whole job
    main_ms = 1000.0 * min(main_cpu) / n
    return {"row": f"job, window {window_ms:g} ms", "mode": mode, "codec": f"frames {codec}",
            "frames": n,
            "seconds": round(seconds, 3),
            "frames_per_s": round(n / seconds, 2), "frames_per_cpu_s": round(n / cpu, 2),
            "main_thread_ms_per_frame": round(main_ms, 3),
            "main_thread_ceiling_frames_per_s": round(1000.0 / main_ms, 1), **waits}


def bench_decode(frames_store: MovieStore, codec: str, repeat: int) -> dict:
    n = frames_store.n_frames
    s, cpu = timed(lambda: frames_store.read(0, n), repeat)
    return {"row": "step: decode frames", "mode": "", "codec": codec, "frames": n,
            "seconds": round(s, 3), "frames_per_s": round(n / s, 2),
            "frames_per_cpu_s": round(n / cpu, 2)}


def bench_outputs(tmp: Path, frames_store: MovieStore, levels: np.ndarray, codec: str,
                  clevel: int, repeat: int, hysteresis: float = HYSTERESIS) -> list[dict]:
    """Mask filter (with ``hysteresis``, default the workflow's), and encode+write of
    probabilities and masks with one codec."""
    n = frames_store.n_frames
    masks = np.stack([infer_stage.mask_from_levels(q, 127, 20, hysteresis) for q in levels])
    steps = {"mask filter": lambda: [infer_stage.mask_from_levels(q, 127, 20, hysteresis)
                                     for q in levels]}
    prob = frames_store.like(tmp / f"p-{codec}-{clevel}.zarr", np.uint8, codec=codec,
                             clevel=clevel)
    mask = frames_store.like(tmp / f"m-{codec}-{clevel}.zarr", np.uint8, codec=codec,
                             clevel=clevel)
    steps["encode+write prob"] = lambda: prob.array.__setitem__(slice(0, n), levels)
    steps["encode+write mask"] = lambda: mask.array.__setitem__(slice(0, n), masks)
    rows = []
    for name, fn in steps.items():
        s, cpu = timed(fn, repeat)
        rows.append({"row": f"step: {name}", "mode": "", "codec": f"{codec} {clevel}",
                     "frames": n, "seconds": round(s, 3), "frames_per_s": round(n / s, 2),
                     "frames_per_cpu_s": round(n / cpu, 2)})
    for label, store in (("prob", prob), ("mask", mask)):
        stored = sum(f.stat().st_size for f in (store.path / "0").rglob("*") if f.is_file())
        rows.append({"row": f"bytes/frame: {label}", "mode": "", "codec": f"{codec} {clevel}",
                     "frames": n, "seconds": None, "frames_per_s": None,
                     "frames_per_cpu_s": None, "bytes_per_frame": round(stored / n)})
    return rows


OUTPUT_CODECS = ["blosc-zstd:3", "blosc-lz4:3", "zstd:1", "zstd:3"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--size", default="1792x1920")
    p.add_argument("--pixel-size-nm", type=float, default=0.18)
    p.add_argument("--zarr-chunk-frames", type=int, default=8)
    p.add_argument("--frames-codecs", nargs="+", default=["blosc-zstd"],
                   help="codecs of the frames store (the ingest codec)")
    p.add_argument("--output-codecs", nargs="+", default=OUTPUT_CODECS,
                   help="CODEC:LEVEL candidates for the probability and mask stores")
    p.add_argument("--modes", nargs="+", default=["otsu_frame", "fixed", "otsu_chunk"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--window-ms", type=float, nargs="+", default=[0.0, 12.5],
                   help="temporal windows of the model's input (12.5 ms: 5 frames at 400/s)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--hysteresis", type=float, default=HYSTERESIS,
                   help="infer.settings.hysteresis of the mask filter (default: the workflow's, "
                        f"{HYSTERESIS})")
    p.add_argument("--no-retain-heap", dest="retain_heap", action="store_false",
                   help="do not keep freed memory in the process (etemseg infer does)")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks/out/infer_host.json")
    args = p.parse_args(argv)
    if args.retain_heap and not retain_heap():
        print("retain_heap: mallopt unavailable here; measuring without it", file=sys.stderr)
        args.retain_heap = False
    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.lower().split("x"))
    frames = synthetic_frames(args.frames, h, w, args.pixel_size_nm)
    levels = stored_levels(frames)
    infer_stage.mask_from_levels(levels[0], 127, 20, 0.5)   # warm-up: numba compilation
    rows = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        for codec in args.frames_codecs:
            store = make_frames_store(tmp / f"frames-{codec}.zarr", frames, codec,
                                      args.pixel_size_nm, args.zarr_chunk_frames)
            for window_ms in args.window_ms:
                for mode in args.modes:
                    rows.append(bench_job(tmp, store, levels, codec, mode, args.repeat,
                                          window_ms, args.hysteresis))
            rows.append(bench_decode(store, codec, args.repeat))
        for spec in args.output_codecs:
            codec, _, clevel = spec.partition(":")
            rows.extend(bench_outputs(tmp, store, levels, codec, int(clevel or 1), args.repeat,
                                      args.hysteresis))
    print(f"\ninfer_chunk host side, {h}x{w}, {args.frames} frames, {args.threads} thread(s), "
          f"{'heap retained' if args.retain_heap else 'heap not retained'}")
    print(f"{'row':26s} {'mode':11s} {'codec':11s} {'s':>8s} {'frames/s':>9s} "
          f"{'frames/CPU-s':>12s} {'B/frame':>9s} {'main ms':>8s}")
    for r in rows:
        s = "" if r["seconds"] is None else f"{r['seconds']:8.3f}"
        f = "" if r["frames_per_s"] is None else f"{r['frames_per_s']:9.1f}"
        c = "" if r["frames_per_cpu_s"] is None else f"{r['frames_per_cpu_s']:12.1f}"
        b = f"{r['bytes_per_frame']:9d}" if "bytes_per_frame" in r else ""
        m = f"{r['main_thread_ms_per_frame']:8.2f}" if "main_thread_ms_per_frame" in r else ""
        print(f"{r['row']:26s} {r['mode']:11s} {r['codec']:11s} {s:>8s} {f:>9s} {c:>12s} {b:>9s} "
              f"{m:>8s}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__}, "rows": rows}, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
