"""CPU inference benchmark: naive eager PyTorch vs the optimised inference path, per architecture.

For each architecture and frame size, in ONE process with ``--threads`` intra-op threads (default
2), frames/s of the full frame -> particle-probability computation (normalisation, forward pass,
softmax; batch 1):

``eager``
    The naive path: ``model.eval()``, ``torch.no_grad()``, NCHW float32, BatchNorm as modules,
    ``softmax(logits)[:, 1]``.
``optimised``
    ``etemseg.nn.inference.prepare_model(optimised=True)`` + the engine's
    ``etemseg.nn.inference.probabilities`` (:func:`predict` here): BatchNorm folded into the
    convolutions, channels-last memory layout, ``torch.inference_mode``.
``optimised+heap``
    The optimised path in a process whose allocator keeps freed memory (glibc ``mallopt``:
    ``M_MMAP_THRESHOLD`` 1 GiB, ``M_TRIM_THRESHOLD`` 2 GiB; see :func:`retain_heap`).  By default
    glibc serves every block over 32 MiB (a 1792x1920 feature map of 8 channels is 110 MB) by a
    fresh ``mmap`` and unmaps it on free, so every forward pass page-faults all its large
    activations in again (zero-filled by the kernel): up to half the CPU time as system time.
    A process-wide setting, so it runs in a child process after the other paths (timings at a
    different moment: compare the CPU-time columns too).
``jit`` (opt-in, ``--paths optimised,jit``)
    The optimised model compiled with ``torch.jit.freeze(torch.jit.script(...))`` (TorchScript
    freezing, oneDNN conv + ReLU fusion; scripting keeps the padding branches, so it is valid
    for every frame size), run through :func:`predict`; its build time is reported.
``compile`` (opt-in, ``--compile``)
    ``torch.compile`` (inductor) of the optimised model; compile time is reported (over a minute
    per model and shape on a 2-core CPU).

Paths are timed frame by frame in rotating order after a warm-up call each (oneDNN primitive
creation, TorchScript profiling runs), so that they see the same machine load; the speed-up is
the median of the per-frame ratios of wall time.  Process CPU time per frame (user + system, all
threads) is reported as well: on a shared machine it is steadier than wall time.  Agreement with
eager: IoU of the masks ``p > 0.5`` (min over frames) and the largest absolute probability
difference.

Models are randomly initialised (speed does not depend on the weights) with non-trivial
BatchNorm statistics (a few training-mode passes over normalised frames, random affine
parameters), and the output layer's bias shifted so that about 30 % of the pixels are particle at
p > 0.5 (many pixels near the threshold make the mask comparison meaningful).  Frames are
synthetic: dark disks of 5 nm particles (14 px radius) on a Poisson background.

    python benchmarks/inference.py                 # 7 architectures x 2 sizes, < 5 minutes
    python benchmarks/inference.py --heap none     # skip the optimised+heap child process
    python benchmarks/inference.py --archs unet4-norm --sizes 1024x1024 --frames 5
    python benchmarks/inference.py --archs unet4-norm --sizes 1024x1024 --compile
"""

from __future__ import annotations

import os
import sys

_THREADS = "2"   # thread pools read these at import: set them before torch is imported
for _i, _a in enumerate(sys.argv):
    if _a == "--threads" and _i + 1 < len(sys.argv):
        _THREADS = sys.argv[_i + 1]
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = _THREADS

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from etemseg.nn.checkpoint import normalise_frames  # noqa: E402
from etemseg.nn.inference import (InferConfig, prepare_model, probabilities,  # noqa: E402
                                  retain_heap)
from etemseg.nn.models import build_model, canonical_name, count_parameters, parse_arch  # noqa: E402

ARCHS = ["unet4-norm", "unet3-norm", "unet4", "hourglass", "single-filter", "shallow-wide",
         "unet4-twoconv-norm"]
SIZES = ["1024x1024", "1792x1920"]


def synthetic_frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Dark disks (radius ~14 px: 5 nm at 0.18 nm/px) on a Poisson background, uint16."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, h, w), np.uint16)
    yy, xx = np.ogrid[:h, :w]
    for i in range(n):
        mean = np.full((h, w), 200.0)
        for _ in range(int(h * w / 60_000) + 1):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(8, 20)
            y0, y1, x0, x1 = (max(0, int(cy - r)), min(h, int(cy + r) + 1),
                              max(0, int(cx - r)), min(w, int(cx + r) + 1))
            d = (yy[y0:y1] - cy) ** 2 + (xx[:, x0:x1] - cx) ** 2 < r * r
            mean[y0:y1, x0:x1][d] = 120.0
        out[i] = rng.poisson(mean)
    return out


def random_model(name: str, calib: np.ndarray, seed: int = 0) -> torch.nn.Module:
    """Random weights, non-trivial BatchNorm statistics and affine, ~30 % positives at p > .5."""
    torch.manual_seed(seed)
    model = build_model(name)
    x = torch.from_numpy(normalise_frames(calib))[:, None]
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0.0, 0.2)
                mod.momentum = 0.5
        model.train()
        for _ in range(3):
            model(x)
        model.eval()
        logits = model(x)
        z = (logits[:, 1] - logits[:, 0]).flatten()
        shift = float(torch.quantile(z[:: max(1, z.numel() // 100_000)], 0.7))
        head = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        if head.out_channels == 1:          # single filter: logits [0, z]
            head.bias -= shift
        else:
            head.bias[1] -= shift
    return model


def predict(model, frames: np.ndarray, *, arch, cfg: InferConfig, device) -> np.ndarray:
    """Particle probability (T, H, W) float32 of raw frames (T, H, W) through the inference
    engine (:func:`etemseg.nn.inference.probabilities`, batches of ``cfg.batch_size``)."""
    batches = (frames[b:b + cfg.batch_size] for b in range(0, len(frames), cfg.batch_size))
    return np.concatenate([p.cpu().numpy() for p in probabilities(model, batches, arch=arch,
                                                                   cfg=cfg, device=device)])


def eager_probability(model, frame: np.ndarray) -> np.ndarray:
    """The naive path: NCHW float32, no_grad, BatchNorm modules, softmax."""
    x = torch.from_numpy(normalise_frames(frame[None]))[:, None]
    with torch.no_grad():
        return torch.softmax(model(x), dim=1)[:, 1].numpy()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else float(np.count_nonzero(a & b) / union)


def bench_case(name: str, h: int, w: int, n_frames: int, paths: list[str], compile_: bool
               ) -> dict:
    arch = parse_arch(name)
    frames = synthetic_frames(n_frames, h, w, seed=h + w)
    calib = synthetic_frames(2, 256, 256, seed=1)
    model = random_model(name, calib)
    cpu = torch.device("cpu")
    cfg = InferConfig(batch_size=1, optimised=True, device="cpu")
    build_s = {}
    fns = {}
    if "eager" in paths:
        fns["eager"] = lambda f: eager_probability(model, f)
    opt = prepare_model(model, cpu, optimised=True)
    if "optimised" in paths:
        fns["optimised"] = lambda f: predict(opt, f[None], arch=arch, cfg=cfg, device=cpu)[0:1]
    if "jit" in paths:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frozen = torch.jit.freeze(torch.jit.script(opt).eval())
        build_s["jit"] = time.perf_counter() - t0
        fns["jit"] = lambda f: predict(frozen, f[None], arch=arch, cfg=cfg, device=cpu)[0:1]
    if compile_:
        compiled = torch.compile(opt, dynamic=False)
        fns["compile"] = lambda f: predict(compiled, f[None], arch=arch, cfg=cfg, device=cpu)[0:1]
    # warm-up (the first compile call compiles; TorchScript profiles its first two runs)
    for key, fn in fns.items():
        t0 = time.perf_counter()
        fn(frames[0])
        if key in ("jit",):
            fn(frames[0])
        if key == "compile":
            build_s["compile"] = time.perf_counter() - t0
    keys = list(fns)
    times = {k: [] for k in keys}
    cpu_times = {k: [] for k in keys}
    probs = {k: [] for k in keys}
    for i, frame in enumerate(frames):
        order = keys[i % len(keys):] + keys[:i % len(keys)]
        for key in order:
            c0, t0 = time.process_time(), time.perf_counter()
            p = fns[key](frame)
            times[key].append(time.perf_counter() - t0)
            cpu_times[key].append(time.process_time() - c0)
            probs[key].append(p[0])
    res = {"arch": canonical_name(arch), "size": f"{h}x{w}", "frames": n_frames,
           "parameters": count_parameters(model), "build_s": {k: round(v, 2) for k, v in
                                                                build_s.items()}, "paths": {}}
    eager_t = np.array(times.get("eager", []))
    for key in keys:
        t = np.array(times[key])
        entry = {"median_s": float(np.median(t)), "min_s": float(t.min()),
                 "frames_per_s": float(1.0 / np.median(t)),
                 "cpu_s_per_frame": float(np.median(cpu_times[key])),
                 "speedup_vs_eager": float(np.median(eager_t / t)) if len(eager_t) else None}
        if key != "eager" and probs.get("eager"):
            entry["mask_iou_min"] = min(iou(a > 0.5, b > 0.5)
                                        for a, b in zip(probs["eager"], probs[key]))
            entry["max_abs_prob_diff"] = float(max(np.abs(a - b).max()
                                                   for a, b in zip(probs["eager"], probs[key])))
        res["paths"][key] = entry
    res["positive_fraction"] = float(np.mean([np.mean(p > 0.5) for p in probs[keys[0]]]))
    res["digests"] = {k: hashlib.sha1(b"".join(np.ascontiguousarray(p).tobytes()
                                                for p in probs[k])).hexdigest() for k in keys}
    return res


def _fmt_row(r: dict) -> str:
    p = r["paths"]
    e = p.get("eager")
    line = f"{r['arch']:20s} {r['size']:>9s} {r['parameters']:7d} |"
    line += f" {e['frames_per_s']:6.2f} {e['cpu_s_per_frame']:6.2f} |" if e else " " * 16 + "|"
    for key in ("optimised", "optimised+heap", "jit", "compile"):
        if key not in p:
            continue
        o = p[key]
        x = o.get("speedup_vs_eager")
        iou_ = o.get("mask_iou_min")
        line += (f" {o['frames_per_s']:6.2f} {o['cpu_s_per_frame']:6.2f} "
                 f"{'' if x is None else f'{x:4.2f}x':>5s}")
        if key == "optimised":
            line += f" {iou_:7.5f} {o['max_abs_prob_diff']:7.1e}"
        elif key == "optimised+heap":
            line += f" {'same' if o.get('identical_to_optimised') else 'DIFF':>4s}"
        elif iou_ is not None:
            line += f" {iou_:7.5f}"
        line += " |"
    return line


def run_child(args, paths_out: Path) -> dict:
    """The optimised path again in a child process with :func:`retain_heap`."""
    import subprocess

    cmd = [sys.executable, __file__, "--child-heap", "--archs", args.archs, "--sizes",
           args.sizes, "--frames", str(args.frames), "--threads", str(args.threads),
           "--paths", "optimised", "--out", str(paths_out)]
    subprocess.run(cmd, check=True)
    return json.loads(paths_out.read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--frames", type=int, default=3, help="timed frames per case")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--paths", default="optimised", help="besides eager: optimised, jit")
    ap.add_argument("--heap", choices=("retain", "none"), default="retain",
                    help="also time the optimised path with retain_heap() (child process)")
    ap.add_argument("--compile", action="store_true", help="also torch.compile (slow to build)")
    ap.add_argument("--child-heap", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "inference.json"))
    args = ap.parse_args(argv)
    child = args.child_heap
    if child and not retain_heap():
        print("mallopt unavailable: heap retention not applied", file=sys.stderr)
    torch.set_num_threads(args.threads)
    paths = [p for p in args.paths.split(",") if p]
    if not child:
        paths = ["eager"] + [p for p in paths if p != "eager"]
    start = time.perf_counter()
    load0 = os.getloadavg()
    cases = []
    if not child:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
              f"{torch.backends.cpu.get_cpu_capability()}, load average {load0[0]:.1f}")
        print("per path: frames/s (wall, median), CPU s/frame (user+sys, all threads), "
              "speed-up vs eager (median of per-frame wall ratios)")
        print(f"columns: arch, size, params | eager | {' | '.join(paths[1:])}")
    for size in args.sizes.split(","):
        h, w = (int(v) for v in size.lower().split("x"))
        for name in args.archs.split(","):
            r = bench_case(name, h, w, args.frames, paths, args.compile and not child)
            cases.append(r)
            if not child:
                print(_fmt_row(r), flush=True)
    if child:
        Path(args.out).write_text(json.dumps({"cases": cases}) + "\n")
        return 0
    if args.heap == "retain":
        print("optimised path again in a child process with retain_heap() ...", flush=True)
        tmp = Path(args.out).with_suffix(".heap.json")
        try:
            heap = run_child(args, tmp)["cases"]
        finally:
            tmp.unlink(missing_ok=True)
        for r, hr in zip(cases, heap):
            o, e = hr["paths"]["optimised"], r["paths"]["eager"]
            o["speedup_vs_eager"] = e["median_s"] / o["median_s"]
            o["cpu_speedup_vs_eager"] = e["cpu_s_per_frame"] / o["cpu_s_per_frame"]
            o["identical_to_optimised"] = (hr["digests"]["optimised"]
                                           == r["digests"]["optimised"])
            o["note"] = ("separate process, timed after the other paths: speed-up = ratio of "
                         "median wall times")
            r["paths"]["optimised+heap"] = o
        head = ("arch                      size  params | eager f/s cpu-s | optimised f/s cpu-s"
                "   x     IoU maxdiff | +heap f/s cpu-s   x  mask |")
        print("\n" + head)
        print("-" * len(head))
        for r in cases:
            print(_fmt_row(r))
    total = time.perf_counter() - start
    out = {
        "benchmark": "inference", "threads": args.threads, "frames_per_case": args.frames,
        "paths": paths + (["optimised+heap"] if args.heap == "retain" else [])
        + (["compile"] if args.compile else []),
        "machine": {"processor": platform.processor() or platform.machine(),
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "cpu_count": os.cpu_count(), "torch": str(torch.__version__),
                    "numpy": np.__version__, "python": platform.python_version(),
                    "load_average_start": load0[0], "load_average_end": os.getloadavg()[0]},
        "total_s": round(total, 1), "cases": cases,
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    tmp.replace(path)
    print(f"total {total:.0f} s; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
