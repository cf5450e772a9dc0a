"""GPU benchmark: training UNet-Norm on a 1024² simulated movie, and inference at 1792x1920.

Needs a CUDA device (``--device cpu`` runs the same steps small, to check the script).

1. **Data**: a simulated sintering movie (``etemseg.synth``, ``--train-frames`` frames of
   ``--train-size``), pseudo-labelled with the fast classical path (``default`` preset) as the
   workflow does; host time per step is reported.
2. **Batch sampling**: random crops + the paper's augmentation from host tensors (crop on the CPU,
   then upload) vs from the training set uploaded once to the GPU
   (``etemseg.nn.training.device_tensors``).
3. **Training** (``etemseg.stages.train.train``, the workflow's own function): ``--model`` with
   ``--crop``-px crops, batch ``--batch``, AMP (bf16 on Hopper), ``--epochs`` epochs of
   ``--samples`` crops; per-epoch wall time (including full-frame validation), images/s and peak
   GPU memory (``torch.cuda.max_memory_allocated``).
4. **Inference** with the model just trained, on ``--infer-frames`` simulated 1792x1920 frames
   (uint16, on the host, as a Zarr chunk decodes them), repeated to ``--infer-total`` frames:

   ``naive``
       host normalisation, float32 upload, eager float32 model (BatchNorm as modules, NCHW),
       softmax, float32 probabilities back to the host, quantised there.
   ``optimised``
       ``etemseg.nn.inference.stream_levels`` over ``--block``-frame blocks, as ``infer_chunk``
       runs it:
       uint16 upload through pinned buffers, normalisation on the GPU, folded BatchNorm,
       channels-last, autocast in ``--precisions``, uint8 probabilities and per-frame histograms
       back, transfers overlapping the GPU work of the neighbouring batches; per ``--batches``.
   ``float32-back``
       the optimised model but float32 probabilities back (``etemseg.nn.inference.probabilities``)
       and quantised on the host.
   ``model-only``
       forward passes on frames already normalised on the GPU: the ceiling without transfers.
   ``compile`` (``--compile``)
       ``torch.compile`` of the optimised model (compile time reported).

   Masks ``q > 127`` are compared with the naive float32 path (IoU, min over frames; largest
   probability difference in 1/255 levels).
5. **Chunk job** (``--chunk``): ``etemseg.stages.infer.infer_chunk`` on a Zarr store of the frames,
   Otsu per frame, min-area filter and both output stores written: the workflow's per-chunk
   frames/s, host post-processing included.

    python benchmarks/gpu.py                       # on a GPU node, about 2 minutes
    python benchmarks/gpu.py --device cpu --train-size 128 --train-frames 6 --epochs 1 \\
        --crop 64 --samples 8 --infer-size 256x256 --infer-frames 4 --infer-total 8 --batches 2

Writes ``benchmarks/out/gpu.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from etemseg.levels import quantise  # noqa: E402
from etemseg.nn.checkpoint import load_model, normalise_frames, normalise_tensor  # noqa: E402
from etemseg.nn.inference import (InferConfig, open_model, prepare_model, retain_heap,  # noqa: E402
                                  probabilities, stream_levels)
from etemseg.nn.models import parse_arch  # noqa: E402
from etemseg.nn.training import (TrainConfig, TrainingData, device_tensors,  # noqa: E402
                                 sample_batch, split_frames)
from etemseg.stages.infer import infer_chunk  # noqa: E402
from etemseg.stages.pseudolabel import PRESETS, pseudolabel_stack  # noqa: E402
from etemseg.stages.train import train  # noqa: E402
from etemseg.synth import SynthParams, simulate  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def simulated(frames: int, h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W) uint16 frames and uint8 truth masks of a simulated sintering movie."""
    p = SynthParams(frames=frames, height=h, width=w, seed=seed)
    imgs, labs = zip(*((img, lab > 0) for img, lab in simulate(p)))
    return np.stack(imgs), np.stack(labs).astype(np.uint8)


def f1(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = int(np.count_nonzero(pred & truth))
    return 2 * tp / max(1, int(np.count_nonzero(pred)) + int(np.count_nonzero(truth)))


def iou_min(a: np.ndarray, b: np.ndarray) -> float:
    out = 1.0
    for x, y in zip(a, b):
        union = np.count_nonzero(x | y)
        out = min(out, np.count_nonzero(x & y) / union if union else 1.0)
    return out


def time_frames(fn, frames: np.ndarray, total: int, device) -> tuple[float, np.ndarray]:
    """frames/s of ``fn(frames, repeat) -> uint8`` over ``total`` frames (``frames`` cycled),
    after one warm-up call; returns the rate and the output of the first ``len(frames)`` frames.
    ``fn`` sees all ``repeat`` passes at once, so a pipelined path streams through them."""
    first = fn(frames, 1)
    sync(device)
    repeat = max(1, -(-total // len(frames)))
    t0 = time.perf_counter()
    fn(frames, repeat)
    sync(device)
    return repeat * len(frames) / (time.perf_counter() - t0), first


def per_call(fn):
    """A ``fn(frames)`` called once per pass (no pipelining across passes)."""
    def run(frames: np.ndarray, repeat: int):
        first = fn(frames)
        for _ in range(repeat - 1):
            fn(frames)
        return first
    return run


def streamed(model, arch, cfg: InferConfig, device, block: int):
    """``stream_levels`` over Zarr-like blocks of ``block`` frames, as ``infer_chunk`` runs it."""
    def run(frames: np.ndarray, repeat: int):
        blocks = ((r * len(frames) + b0, frames[b0:b0 + block])
                  for r in range(repeat) for b0 in range(0, len(frames), block))
        first = np.empty(frames.shape, np.uint8)
        for b0, q, _ in stream_levels(model, blocks, arch=arch, cfg=cfg, device=device):
            if b0 < len(frames):
                first[b0:b0 + len(q)] = q
        return first
    return run


def float32_back(model, arch, cfg: InferConfig, device):
    """Float32 probabilities back to the host (:func:`probabilities` in batches of
    ``cfg.batch_size``), quantised there."""
    def run(frames: np.ndarray) -> np.ndarray:
        batches = (frames[b:b + cfg.batch_size] for b in range(0, len(frames), cfg.batch_size))
        return quantise(np.concatenate([p.cpu().numpy() for p in probabilities(
            model, batches, arch=arch, cfg=cfg, device=device)]))
    return run


def naive_fn(model, device, batch: int):
    def run(frames: np.ndarray) -> np.ndarray:
        out = np.empty(frames.shape, np.uint8)
        for b0 in range(0, len(frames), batch):
            x = torch.from_numpy(normalise_frames(frames[b0:b0 + batch]))[:, None].to(device)
            with torch.no_grad():
                p = torch.softmax(model(x), dim=1)[:, 1]
            out[b0:b0 + batch] = quantise(p.cpu().numpy())
        return out
    return run


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default="unet4-norm")
    ap.add_argument("--train-size", type=int, default=1024)
    ap.add_argument("--train-frames", type=int, default=48)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--crop", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--infer-size", default="1792x1920")
    ap.add_argument("--infer-frames", type=int, default=32)
    ap.add_argument("--infer-total", type=int, default=256)
    ap.add_argument("--batches", default="1,4,8,16")
    ap.add_argument("--block", type=int, default=8,
                    help="frames per Zarr block streamed through the optimised path (a 1792x1920 "
                         "uint16 store has 8-frame blocks at 64-frame chunks)")
    ap.add_argument("--precisions", default="float16,bfloat16,float32")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--chunk", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "gpu.json")
    return ap.parse_args(argv)


def save(result: dict, path: Path) -> None:
    """Write the results so far to ``path`` (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)


def bench_data(args, device: torch.device, result: dict) -> tuple[TrainingData, TrainConfig]:
    """1. A simulated movie, pseudo-labelled: the training data and config."""
    t0 = time.perf_counter()
    frames, truth = simulated(args.train_frames, args.train_size, args.train_size, seed=1)
    t_sim = time.perf_counter() - t0
    t0 = time.perf_counter()
    pseudo = pseudolabel_stack(frames, PRESETS["default"].resolved(0.18))  # simulator: 0.18 nm/px
    t_pseudo = time.perf_counter() - t0
    cfg = TrainConfig(model=args.model, epochs=args.epochs, batch_size=args.batch, lr=args.lr,
                      crop_px=args.crop, samples_per_epoch=args.samples, device=device.type,
                      max_val_frames=16, seed=0)
    train_idx, val_idx = split_frames(len(frames), cfg)
    data = TrainingData(normalise_frames(frames).astype(np.float16), pseudo, train_idx, val_idx)
    result["data"] = {"frames": len(frames), "size_px": args.train_size,
                      "simulate_s": round(t_sim, 2), "pseudolabel_s": round(t_pseudo, 2),
                      "pseudo_f1_vs_truth": round(f1(pseudo > 0, truth > 0), 4)}
    print(f"data: {len(frames)} frames {args.train_size}² simulated in {t_sim:.1f} s, "
          f"pseudo-labelled in {t_pseudo:.1f} s (pixel F1 vs truth "
          f"{result['data']['pseudo_f1_vs_truth']:.3f})")
    return data, cfg


def bench_sampling(data: TrainingData, cfg: TrainConfig, device: torch.device,
                   crop: int) -> list[dict]:
    """2. Crops per second from host tensors and from the training set on the device."""
    rows = []
    for where, tensors in (("host", None), ("device", device_tensors(data, device))):
        gen = torch.Generator().manual_seed(0)
        sample_batch(data, cfg, gen, tensors=tensors)
        sync(device)
        t0 = time.perf_counter()
        n = 10
        for _ in range(n):
            x, y = sample_batch(data, cfg, gen, tensors=tensors)
            x, y = x.to(device), y.to(device)
        sync(device)
        rate = n * cfg.batch_size / (time.perf_counter() - t0)
        rows.append({"crops_from": where, "crops_per_s": round(rate, 1)})
        print(f"batch sampling from {where} tensors: {rate:.1f} crops/s ({crop}²)")
    return rows


def bench_training(data: TrainingData, cfg: TrainConfig, args, device: torch.device,
                   folder: Path, result: dict) -> dict:
    """3. The workflow's training into ``folder``; returns the model file's metadata."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    meta = train(data, cfg, folder, progress=False)
    result["train"] = {"model": meta["name"], "parameters": meta["parameters"],
                       "crop_px": args.crop, "batch": args.batch, "epochs": meta["history"]}
    print(f"\ntraining {meta['name']} ({meta['parameters']:,} parameters), {args.crop}² crops, "
          f"batch {args.batch}, {args.samples} crops/epoch, AMP on CUDA")
    print("| epoch | epoch s (incl. validation) | images/s | peak GPU MB | val F1 |")
    print("|---|---|---|---|---|")
    for h in meta["history"]:
        print(f"| {h['epoch']} | {h['epoch_s']:.2f} | {h['images_per_s']:.1f} | "
              f"{h.get('peak_gpu_mem_mb', float('nan')):.0f} | {h['val_f1']:.3f} |")
    return meta


class InferenceTable:
    """Rows of the inference table: frames/s of each path over ``total`` frames, its masks
    ``q > 127`` compared with the naive path's (``ref``, set after the naive row) and truth."""

    def __init__(self, frames: np.ndarray, truth: np.ndarray, total: int, device: torch.device,
                 result: dict, out: Path) -> None:
        self.frames, self.truth, self.total, self.device = frames, truth, total, device
        self.result, self.out = result, out
        self.ref: np.ndarray | None = None
        self.rows: list[dict] = []
        print("| path | precision | batch | frames/s | mask IoU min vs naive | max Δ level | "
              "F1 vs truth | peak GPU MB |")
        print("|---|---|---|---|---|---|---|---|")

    def record(self, path: str, precision: str, batch: int, fn) -> dict:
        """Time ``fn`` (see :func:`time_frames`), print and save its row."""
        device, ref = self.device, self.ref
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        rate, q = time_frames(fn, self.frames, self.total, device)
        row = {"path": path, "precision": precision, "batch": batch,
               "frames_per_s": round(rate, 1), "mask_iou_min_vs_naive": None,
               "max_level_diff": None, "pixel_f1_vs_truth": None}
        if q is not None:   # model-only returns nothing to compare
            row.update({"mask_iou_min_vs_naive": round(iou_min(q > 127, ref > 127), 6)
                        if ref is not None else 1.0,
                        "max_level_diff": int(np.abs(q.astype(int) - ref).max())
                        if ref is not None else 0,
                        "pixel_f1_vs_truth": round(f1(q > 127, self.truth > 0), 4)})
        if device.type == "cuda":
            row["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
        self.rows.append(row)
        cells = [row["mask_iou_min_vs_naive"], row["max_level_diff"], row["pixel_f1_vs_truth"]]
        print(f"| {path} | {precision} | {batch} | {row['frames_per_s']:.1f} | "
              + " | ".join("-" if c is None else str(c) for c in cells)
              + f" | {row.get('peak_gpu_mb', '')} |")
        self.result["inference"] = self.rows
        save(self.result, self.out)
        return row


def model_only_fn(model, xs: torch.Tensor, batch: int, precision: str, device: torch.device):
    """Forward passes on frames already normalised on the device: no transfers."""
    amp = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(precision)

    def run(f: np.ndarray, repeat: int) -> None:
        for _ in range(0, repeat * len(f), batch):
            t = xs[:, None].contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), torch.autocast(device.type, dtype=amp or torch.float16,
                                                        enabled=amp is not None):
                model(t)
        return None
    return run


def bench_inference(args, device: torch.device, model_path: Path, name: str, result: dict
                    ) -> tuple[dict, torch.nn.Module, np.ndarray]:
    """4. Inference paths on simulated frames; returns the best optimised row, the optimised
    model and the frames."""
    h, w = (int(v) for v in args.infer_size.split("x"))
    t0 = time.perf_counter()
    iframes, itruth = simulated(args.infer_frames, h, w, seed=2)
    t_sim = time.perf_counter() - t0
    print(f"\ninference frames: {len(iframes)} simulated {h}x{w} in {t_sim:.1f} s;"
          f" each timing runs {args.infer_total} frames")
    arch = parse_arch(name)
    eager, _ = load_model(model_path, device="cpu")
    eager = prepare_model(eager, device, optimised=False)
    optimised, _ = open_model(model_path, device, optimised=True)
    table = InferenceTable(iframes, itruth, args.infer_total, device, result, args.out)
    base = table.record("naive", "float32", 4, per_call(naive_fn(eager, device, 4)))
    table.ref = naive_fn(eager, device, 4)(iframes).astype(int)
    for precision in args.precisions.split(","):
        for b in (int(b) for b in args.batches.split(",")):
            cfg_i = InferConfig(batch_size=b, gpu_precision=precision, max_tile_px=0)
            table.record("optimised", precision, b,
                         streamed(optimised, arch, cfg_i, device, args.block))
    best = max((r for r in table.rows if r["path"] == "optimised"),
               key=lambda r: r["frames_per_s"])
    cfg_b = InferConfig(batch_size=best["batch"], gpu_precision=best["precision"], max_tile_px=0)
    table.record("float32-back", best["precision"], best["batch"],
                 per_call(float32_back(optimised, arch, cfg_b, device)))
    xs = normalise_tensor(torch.from_numpy(iframes[:best["batch"]]).to(device))
    table.record("model-only", best["precision"], best["batch"],
                 model_only_fn(optimised, xs, best["batch"], best["precision"], device))
    if args.compile:
        t0 = time.perf_counter()
        compiled = torch.compile(optimised)
        streamed(compiled, arch, cfg_b, device, args.block)(iframes[:best["batch"]], 1)
        result["compile_s"] = round(time.perf_counter() - t0, 1)
        print(f"(torch.compile: {result['compile_s']} s)")
        table.record("compile", best["precision"], best["batch"],
                     streamed(compiled, arch, cfg_b, device, args.block))
    print(f"\nbest optimised: {best['frames_per_s']:.1f} frames/s ({best['precision']}, batch "
          f"{best['batch']}) = {best['frames_per_s'] / base['frames_per_s']:.1f}x naive; "
          f"camera: 400 frames/s")
    return best, optimised, iframes


def bench_chunk(work: Path, model_path: Path, model, iframes: np.ndarray, best: dict,
                device: torch.device, result: dict, total: int) -> None:
    """5. ``infer_chunk`` on a Zarr store of ``total`` frames (the ``--infer-frames`` repeated),
    as the workflow runs it: Otsu per frame and fixed threshold, single frames and the default
    12.5 ms temporal window, with the receipt's profile (seconds waited for reads and writes)."""
    from etemseg.io.store import MovieStore, create_store

    n, h, w = iframes.shape
    frames = np.concatenate([iframes] * max(1, -(-total // n)))[:max(total, n)]
    create_store(work / "frames.zarr", n_frames=len(frames), frame_shape=(h, w),
                 dtype=np.uint16, chunk_frames=len(frames), fps=400.0, pixel_size_nm=0.18)
    fs = MovieStore.open(work / "frames.zarr", "r+")
    fs.array[:] = frames
    prob = fs.like(work / "prob.zarr", np.uint8)
    mask = fs.like(work / "mask.zarr", np.uint8)
    _, meta_m = load_model(model_path, device="cpu")
    for window_ms in (0.0, 12.5):
        meta_w = {**meta_m, "data": {**(meta_m.get("data") or {}), "window_ms": window_ms}}
        for threshold in ("otsu_frame", "fixed"):
            cfg_c = InferConfig(threshold=threshold, batch_size=best["batch"],
                                gpu_precision=best["precision"])
            infer_chunk(fs, prob, mask, 0, model, meta_w, cfg_c, device)   # warm
            receipt = infer_chunk(fs, prob, mask, 0, model, meta_w, cfg_c, device)
            result.setdefault("chunk", []).append(
                {"threshold": threshold, "window_ms": window_ms, "frames": len(frames),
                 "host_threads": torch.get_num_threads(),
                 **{k: receipt[k] for k in ("frames_per_s", "elapsed_s", "read_wait_s",
                                            "write_wait_s", "window_frames")}})
            print(f"infer_chunk ({len(frames)} frames {h}x{w}, {threshold}, window "
                  f"{window_ms:g} ms, min area 20 px, Zarr read+write, "
                  f"{torch.get_num_threads()} host threads): "
                  f"{receipt['frames_per_s']:.1f} frames/s; waited {receipt['read_wait_s']:.2f} s "
                  f"for reads, {receipt['write_wait_s']:.2f} s for writes of "
                  f"{receipt['elapsed_s']:.2f} s")


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu to check the script", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    retain_heap()    # as ``etemseg infer`` does: freed host memory stays in the process
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    result: dict = {"device": gpu, "torch": torch.__version__, "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    print(f"# {gpu}, torch {torch.__version__}, python {platform.python_version()}")
    data, cfg = bench_data(args, device, result)
    result["sampling"] = bench_sampling(data, cfg, device, args.crop)
    save(result, args.out)
    work = Path(tempfile.mkdtemp(prefix="etemseg-gpu-"))
    meta = bench_training(data, cfg, args, device, work / "model", result)
    save(result, args.out)
    model_path = work / "model" / "model.pt"
    best, optimised, iframes = bench_inference(args, device, model_path, meta["name"], result)
    if args.chunk:
        bench_chunk(work, model_path, optimised, iframes, best, device, result,
                    args.infer_total)
        save(result, args.out)
    print(f"\nJSON: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
