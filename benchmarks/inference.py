"""CPU inference benchmark: naive eager PyTorch vs the optimised inference path, per architecture.

For each architecture and frame size, in ONE process with ``--threads`` intra-op threads (default
2), frames/s of the full frame -> particle-probability computation (normalisation, forward pass,
softmax; batch 1):

``eager``
    The naive path: ``model.eval()``, ``torch.no_grad()``, NCHW float32, BatchNorm as modules,
    ``softmax(logits)[:, 1]``.
``optimised``
    ``etemseg.infer.prepare_model(optimised=True)`` + ``etemseg.infer.predict``: BatchNorm folded
    into the convolutions, channels-last memory layout, ``torch.inference_mode``.
``jit``
    The optimised model additionally compiled with ``torch.jit.freeze(torch.jit.script(...))``
    (TorchScript freezing: constant weights, oneDNN conv + ReLU fusion), run through
    ``infer.predict`` the same way.  Scripting (not tracing) keeps the padding branches, so the
    frozen module is valid for every frame size.  Its one-off build time is reported.
``compile`` (opt-in, ``--compile``)
    ``torch.compile`` (inductor) of the optimised model; compile time is reported.  Off by
    default: on a 2-core CPU it compiles for over a minute per model and shape.

Paths are timed frame by frame in rotating order after one warm-up call each (oneDNN primitive
creation, TorchScript profiling runs), so that all paths see the same machine load; the speed-up
is the median of the per-frame ratios.  Agreement with eager: IoU of the masks ``p > 0.5`` (min
over frames) and the largest absolute probability difference.

Models are randomly initialised (speed does not depend on the weights) with non-trivial
BatchNorm statistics (a few training-mode passes over normalised frames, random affine
parameters), and the output layer's bias shifted so that about 30 % of the pixels are particle at
p > 0.5 (many pixels near the threshold make the mask comparison meaningful).  Frames are
synthetic: dark disks of 5 nm particles (14 px radius) on a Poisson background.

    python benchmarks/inference.py                 # 7 architectures x 2 sizes, < 5 minutes
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
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from etemseg.infer import InferConfig, predict, prepare_model  # noqa: E402
from etemseg.models import build_model, canonical_name, count_parameters, parse_arch  # noqa: E402
from etemseg.train import normalise_frames  # noqa: E402

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
    fns = {"eager": lambda f: eager_probability(model, f)}
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
    probs = {k: [] for k in keys}
    for i, frame in enumerate(frames):
        order = keys[i % len(keys):] + keys[:i % len(keys)]
        for key in order:
            t0 = time.perf_counter()
            p = fns[key](frame)
            times[key].append(time.perf_counter() - t0)
            probs[key].append(p[0])
    res = {"arch": canonical_name(arch), "size": f"{h}x{w}", "frames": n_frames,
           "parameters": count_parameters(model), "build_s": {k: round(v, 2) for k, v in
                                                                build_s.items()}, "paths": {}}
    eager_t = np.array(times["eager"])
    for key in keys:
        t = np.array(times[key])
        entry = {"median_s": float(np.median(t)), "min_s": float(t.min()),
                 "frames_per_s": float(1.0 / np.median(t)),
                 "speedup_vs_eager": float(np.median(eager_t / t))}
        if key != "eager":
            entry["mask_iou_min"] = min(iou(a > 0.5, b > 0.5)
                                        for a, b in zip(probs["eager"], probs[key]))
            entry["max_abs_prob_diff"] = float(max(np.abs(a - b).max()
                                                   for a, b in zip(probs["eager"], probs[key])))
        res["paths"][key] = entry
    res["positive_fraction"] = float(np.mean([np.mean(p > 0.5) for p in probs["eager"]]))
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--frames", type=int, default=3, help="timed frames per case")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--paths", default="optimised,jit", help="besides eager")
    ap.add_argument("--compile", action="store_true", help="also torch.compile (slow to build)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "inference.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    paths = [p for p in args.paths.split(",") if p]
    start = time.perf_counter()
    load0 = os.getloadavg()
    cases = []
    head = (f"{'arch':22s} {'size':>9s} {'params':>7s} | {'eager f/s':>9s} {'opt f/s':>8s} "
            f"{'x':>5s} {'IoU':>7s} {'maxdiff':>8s} | {'jit f/s':>8s} {'x':>5s} {'IoU':>7s}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, load {load0[0]:.1f}")
    print(head)
    print("-" * len(head))
    for size in args.sizes.split(","):
        h, w = (int(v) for v in size.lower().split("x"))
        for name in args.archs.split(","):
            r = bench_case(name, h, w, args.frames, paths, args.compile)
            cases.append(r)
            p = r["paths"]
            line = (f"{r['arch']:22s} {r['size']:>9s} {r['parameters']:7d} | "
                    f"{p['eager']['frames_per_s']:9.2f} ")
            if "optimised" in p:
                o = p["optimised"]
                line += (f"{o['frames_per_s']:8.2f} {o['speedup_vs_eager']:5.2f} "
                         f"{o['mask_iou_min']:7.5f} {o['max_abs_prob_diff']:8.1e} ")
            if "jit" in p:
                j = p["jit"]
                line += (f"| {j['frames_per_s']:8.2f} {j['speedup_vs_eager']:5.2f} "
                         f"{j['mask_iou_min']:7.5f}")
            if "compile" in p:
                c = p["compile"]
                line += (f" | compile {c['frames_per_s']:.2f} f/s x{c['speedup_vs_eager']:.2f} "
                         f"(build {r['build_s']['compile']:.0f} s)")
            print(line, flush=True)
    total = time.perf_counter() - start
    out = {
        "benchmark": "inference", "threads": args.threads, "frames_per_case": args.frames,
        "paths": ["eager"] + paths + (["compile"] if args.compile else []),
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
