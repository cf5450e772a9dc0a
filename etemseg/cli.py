"""The ``etemseg`` command line: every workflow stage is runnable by hand.

Errors a user can fix (bad file, bad option) print one line naming the file or option and exit 2;
existing outputs are left untouched.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from pathlib import Path

from etemseg import __version__
from etemseg.errors import EtemsegError

log = logging.getLogger("etemseg")


def _dataclass_arguments(parser: argparse.ArgumentParser, cls, *, unset_default=False) -> None:
    """One option per dataclass field (the dataclass stays the single source of truth).

    With ``unset_default`` every option defaults to None, so only options given on the command
    line override a preset.
    """
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        flag = "--" + field.name.replace("_", "-")
        hint = hints[field.name]
        origin = typing.get_origin(hint)
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        default = None if unset_default else field.default
        shown = f"(default {field.default})"
        if origin is tuple:
            parser.add_argument(flag, type=float, nargs=len(args), default=default,
                                metavar=tuple(f"V{i}" for i in range(len(args))), help=shown)
        elif hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                                help=shown)
        else:
            kind = args[0] if args else hint
            parser.add_argument(flag, type=kind, default=default, help=shown)


def _dataclass_values(args: argparse.Namespace, cls) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def cmd_synth(args: argparse.Namespace) -> int:
    from etemseg.synth import SynthParams, write_synthetic_movie

    values = _dataclass_values(args, SynthParams)
    if args.params_json:
        try:
            extra = json.loads(args.params_json)
        except ValueError as exc:
            raise EtemsegError(f"--params-json: not valid JSON ({exc})") from None
        if not isinstance(extra, dict):
            raise EtemsegError(f"--params-json: expected a JSON object such as "
                               f'\'{{"frames": 8}}\', got a {type(extra).__name__}')
        values.update(extra)
    params = SynthParams.from_dict(values)
    summary = write_synthetic_movie(args.out_dir, params, progress=not args.quiet,
                                    frame_format=args.format)
    print(json.dumps(summary, indent=1, default=str))
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from etemseg.protocol import run
    from etemseg.stages.ingest import IngestStage

    options = dict(fps=args.fps, pixel_size_nm=args.pixel_size_nm, chunk_frames=args.chunk_frames,
                   zarr_chunk_frames=args.zarr_chunk_frames, codec=args.codec, clevel=args.clevel)
    run(IngestStage(args.src, args.out, progress=not args.quiet, **options), init=args.init,
        chunk=args.chunk, receipt=args.receipt)
    return 0


def cmd_pseudolabel(args: argparse.Namespace) -> int:
    from etemseg.protocol import run
    from etemseg.stages.pseudolabel import (PRESETS, PseudoLabelParams, PseudolabelStage,
                                            params_from_preset)

    if args.preset not in PRESETS:
        raise EtemsegError(f"--preset: unknown preset {args.preset!r}; one of {', '.join(PRESETS)}")
    # a px option given alone replaces the preset's nm twin; nm options win over px ones
    params = params_from_preset(args.preset, _dataclass_values(args, PseudoLabelParams))
    stage = PseudolabelStage(args.frames, args.out, preset=args.preset, params=params,
                             method=args.method, threads=args.threads, progress=not args.quiet,
                             window_ms=args.window_ms)
    run(stage, init=args.init, chunk=args.chunk, receipt=args.receipt)
    return 0


def cmd_pseudolabel_preview(args: argparse.Namespace) -> int:
    from etemseg.io.atomic import guard_file_output
    from etemseg.stages.pseudolabel import (PRESETS, PseudoLabelParams, parse_vary,
                                            preview)

    if args.preset not in PRESETS:
        raise EtemsegError(f"--preset: unknown preset {args.preset!r}; one of {', '.join(PRESETS)}")
    guard_file_output(args.out, inputs=[args.source], suffix=".png")
    try:
        frames = [int(f) for f in args.frames.split(",")] if args.frames else None
    except ValueError:
        raise EtemsegError(f"--frames: expected frame indices such as 0,100, got "
                           f"{args.frames!r}") from None
    rows = preview(args.source, args.out, frames=frames, vary=parse_vary(args.vary),
                   preset=args.preset, base=_dataclass_values(args, PseudoLabelParams),
                   pixel_size_nm=args.pixel_size_nm, fps=args.fps, method=args.method)
    for row in rows:
        print(json.dumps({k: row[k] for k in ("frame", "choice", "particles", "coverage")}))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from etemseg.analysis.scoring import score_stores
    from etemseg.io.atomic import guard_file_output, write_json

    guard_file_output(args.out, inputs=[args.pred, args.truth], suffix=".json")
    scores = score_stores(args.pred, args.truth, iou_min=args.iou_min)
    if args.out:
        write_json(scores, args.out)
    print(json.dumps(scores, indent=1))
    return 0


def cmd_overlay(args: argparse.Namespace) -> int:
    import zarr

    from etemseg.io.atomic import guard_file_output
    from etemseg.io.store import MovieStore
    from etemseg.plotting import overlay_png

    guard_file_output(args.out, inputs=[args.frames, args.truth, *(
        spec.partition("=")[2] or None for spec in args.mask)], suffix=".png")
    frames = MovieStore.open(args.frames)
    if not 0 <= args.frame < frames.n_frames:
        raise EtemsegError(f"--frame: {args.frame} is outside 0..{frames.n_frames - 1}")
    masks = {}
    for spec in args.mask:
        name, _, path = spec.partition("=")
        if not path:
            raise EtemsegError(f"--mask: expected NAME=STORE.zarr, got {spec!r}")
        masks[name] = MovieStore.open(path).take([args.frame])[0] > 0
    if args.truth:
        masks["ground truth"] = zarr.open_array(args.truth, mode="r")[args.frame] > 0
    t = frames.time_s()[args.frame]
    overlay_png(frames.take([args.frame])[0], masks, args.out, pixel_size_nm=frames.pixel_size_nm,
                title=f"{frames.path.parent.name}  frame {args.frame}  t = {t:.4f} s")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from etemseg.nn.models import model_table

    rows = model_table()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'name':<34} {'family':<14} {'parameters':>10} {'receptive field px':>19}")
    for r in rows:
        print(f"{r['name']:<34} {r['family']:<14} {r['parameters']:>10,} "
              f"{r.get('receptive_field', ''):>19}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from etemseg.nn.training import TrainConfig, load_training_data
    from etemseg.stages.train import guard_model_folder, train

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cfg = TrainConfig.from_dict(_dataclass_values(args, TrainConfig))
    guard_model_folder(args.out, inputs=[path for pair in args.pair for path in pair])
    data = load_training_data(args.pair, cfg, stride=args.frame_stride, max_frames=args.max_frames)
    log.info("training %s on %d frames (%d train / %d validation, split %s)", cfg.model,
             len(data.images), len(data.train), len(data.val), cfg.split)
    meta = train(data, cfg, args.out, progress=not args.quiet)
    log.info("wrote %s/model.pt: %d parameters, validation F1 %.4f (epoch %d), %.1f s", args.out,
             meta["parameters"], meta["val_f1"], meta["saved_epoch"], meta["training_time_s"])
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    from etemseg.nn.inference import InferConfig, retain_heap
    from etemseg.protocol import run
    from etemseg.stages.infer import InferStage

    retain_heap()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cfg = InferConfig(**_dataclass_values(args, InferConfig))
    cfg.validate()
    stage = InferStage(args.frames, args.model, args.out, cfg=cfg, expect=args.expect,
                       progress=not args.quiet)
    run(stage, init=args.init, chunk=args.chunk, receipt=args.receipt)
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    import pandas as pd

    from etemseg.io.atomic import guard_output, is_etemseg_parquet
    from etemseg.analysis.measure import (empty_table, particles_digest, write_overlaps,
                                          write_parquet)
    from etemseg.stages.measure import measure_chunk, open_stores, resolve_min_area

    outs = [(args.out, "particle table")]
    if args.overlaps is not None:
        outs.append((args.overlaps, "frame-overlaps table"))
    for path, what in outs:
        guard_output(path, inputs=[args.frames, args.masks], own=is_etemseg_parquet, what=what)
    masks, frames, ps = open_stores(args.masks, args.frames)
    min_area = resolve_min_area(args.min_area_px, args.min_area_nm2, ps,
                                movie=args.movie or str(args.masks))
    chunks = [args.chunk] if args.chunk is not None else range(masks.n_chunks)
    got = [measure_chunk(masks, frames, k, movie=args.movie, model=args.model,
                         min_area_px=min_area, overlaps=args.overlaps is not None)
           for k in chunks]
    parts = [g[0] if args.overlaps is not None else g for g in got]
    parts = [p for p in parts if len(p)]
    table = pd.concat(parts, ignore_index=True) if parts else empty_table(args.movie, args.model)
    meta = {"movie": args.movie, "model": args.model, "pixel_size_nm": masks.pixel_size_nm,
            "chunk": args.chunk, "frames_store": str(args.frames), "mask_store": str(args.masks),
            "min_area_px": min_area, "min_area_nm2": args.min_area_nm2}
    if args.overlaps is not None:  # paired with the table by its digest (the track stage checks)
        write_overlaps(pd.concat([g[1] for g in got], ignore_index=True), args.overlaps,
                       metadata={**meta, "connectivity": 8,
                                 "particles_digest": particles_digest(table)})
    write_parquet(table, args.out, metadata=meta)
    log.info("%s: %d particles in %d frames", args.out, len(table), table["frame"].nunique())
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from etemseg.io.atomic import guard_output
    from etemseg.stages.evaluate import evaluate_model

    # an evaluation folder is recognised by its scores.json (it holds figures and tables)
    guard_output(args.out, inputs=[args.model], what="evaluation folder",
                 own=lambda p: (p / "scores.json").is_file())
    result = evaluate_model(args.movie_dir, args.model_name, args.model, out_dir=args.out,
                            max_frames=args.max_frames)
    print(json.dumps(result["summary"], indent=1, default=str))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from etemseg.analysis.comparison import compare_models, plot_model_contours
    from etemseg.io.atomic import atomic_path, guard_file_output

    guard_file_output(args.out, inputs=args.scores, suffix=".csv")
    guard_file_output(args.contours[1] if args.contours else None, inputs=args.scores,
                      suffix=".png")
    guard_file_output(args.sweep_png, inputs=args.scores, suffix=".png")
    rows = []
    for path in args.scores:
        path = path / "scores.json" if path.is_dir() else path
        try:
            rows.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            raise EtemsegError(f"{path}: cannot read evaluation scores ({exc})") from exc
    table = compare_models(rows)
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False)
    if args.contours:
        movie_dir = Path(args.contours[0])
        models = [r["model"] for r in rows if r["movie"] == movie_dir.name][:6]
        plot_model_contours(movie_dir.parent, movie_dir.name, models, args.contours[1])
    if args.sweep_png:
        import pandas as pd

        from etemseg.analysis.comparison import plot_threshold_sweep

        dirs = [p if p.is_dir() else p.parent for p in args.scores]
        sweeps = {f"{r['model']} ({r['movie']})": pd.read_csv(d / "threshold_sweep.csv")
                  for r, d in zip(rows, dirs)}
        otsu = {f"{r['model']} ({r['movie']})":
                pd.read_csv(d / "otsu_thresholds.csv")["otsu_threshold"].to_numpy()
                for r, d in zip(rows, dirs)}
        plot_threshold_sweep(sweeps, otsu, args.sweep_png)
    print(table.to_string(index=False))
    return 0


def cmd_track(args: argparse.Namespace) -> int:
    import pyarrow as pa

    from etemseg.io.atomic import guard_output, is_etemseg_parquet
    from etemseg.io.parquet import TRACK_TABLES, write_table_set
    from etemseg.io.store import MovieStore
    from etemseg.stages.track import track_movie
    from etemseg.tracking import EVENTS_SCHEMA

    for name in TRACK_TABLES:
        guard_output(args.out / f"{name}.parquet", inputs=[args.frames, args.masks, args.particles],
                     own=is_etemseg_parquet, what=f"{name} table")
    traj, events, frames_t = track_movie(args.frames, args.masks, args.particles,
                                         movie=args.movie, model=args.model,
                                         overlap=not args.centroid_only,
                                         max_disp_nm=args.max_disp_nm, memory=args.memory,
                                         gap_ms=args.gap_ms, persist_ms=args.persist_ms,
                                         confirm_ms=args.confirm_ms, reid_ms=args.reid_ms,
                                         min_diameter_nm=args.min_diameter_nm,
                                         trust_ms=args.trust_ms)
    meta = {"movie": args.movie, "model": args.model,
            "pixel_size_nm": MovieStore.open(args.frames).pixel_size_nm,
            "linking": "centroid" if args.centroid_only else "mask overlap"}
    ev_schema = pa.schema([pa.field("movie", pa.string()), pa.field("model", pa.string()),
                           *EVENTS_SCHEMA])
    write_table_set(args.out, {"trajectories": (traj, None), "frames": (frames_t, None),
                               "events": (events[ev_schema.names], ev_schema)}, metadata=meta)
    counts = events["kind"].value_counts().to_dict() if len(events) else {}
    log.info("%s: %d particles in %d frames; events %s", args.out, traj["particle"].nunique(),
             len(frames_t), counts)
    return 0


def cmd_sintering(args: argparse.Namespace) -> int:
    from etemseg.io.atomic import atomic_path, guard_output, holds_only, write_json
    from etemseg.io.parquet import TRACK_TABLES, read_table_set
    from etemseg.analysis.sintering import (kinetics_tables, plot_kinetics, plot_sintering,
                                            sintering_report, write_kinetics)
    from etemseg.io.store import MovieStore
    from etemseg.layout import KINETICS_TABLES

    guard_output(args.out, inputs=[args.frames, *(args.tracks / f"{name}.parquet"
                                                  for name in TRACK_TABLES)],
                 own=holds_only("series.csv", "size_distributions.csv", "summary.json",
                                "sintering.png", "kinetics.png",
                                *(f"{t}.parquet" for t in KINETICS_TABLES)),
                 what="sintering folder")
    frames = MovieStore.open(args.frames)
    if not frames.pixel_size_nm:
        raise EtemsegError(f"{args.frames}: no pixel size; sintering analysis needs nm")
    tables = read_table_set(args.tracks)
    summary, series, psd = sintering_report(tables, frame_shape=frames.frame_shape,
                                            pixel_size_nm=frames.pixel_size_nm)
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out / "series.csv") as tmp:
        series.to_csv(tmp, index=False)
    with atomic_path(args.out / "size_distributions.csv") as tmp:
        psd.to_csv(tmp, index=False)
    write_json(summary, args.out / "summary.json")
    title = f"{summary['movie']} / {summary['model']}"
    plot_sintering(series, psd, summary, args.out / "sintering.png", title=title)
    kin = kinetics_tables(tables)
    write_kinetics(args.out, kin, metadata={"movie": summary["movie"], "model": summary["model"]})
    plot_kinetics(kin, args.out / "kinetics.png", title=title)
    print(json.dumps(summary, indent=1, default=str))
    return 0


def cmd_score_tracks(args: argparse.Namespace) -> int:
    import pandas as pd

    from etemseg.analysis.scoring import (EVENT_TOLERANCE_S, score_stores,
                                          score_tracks_against_truth)
    from etemseg.io.atomic import guard_file_output, write_json
    from etemseg.io.parquet import read_table_set
    from etemseg.io.store import MovieStore

    guard_file_output(args.out, suffix=".json", inputs=[
        args.tracks / "trajectories.parquet", args.tracks / "events.parquet", args.masks,
        args.truth])
    tracks = read_table_set(args.tracks, ("trajectories", "events"))
    scores = score_tracks_against_truth(tracks["trajectories"], tracks["events"],
                                        pd.read_parquet(args.truth / "particles.parquet"),
                                        pd.read_parquet(args.truth / "events.parquet"),
                                        frame_shape=MovieStore.open(args.masks).frame_shape,
                                        tol_s=EVENT_TOLERANCE_S)
    scores["segmentation"] = score_stores(args.masks, args.truth / "labels.zarr")
    write_json(scores, args.out)
    print(json.dumps(scores, indent=1, default=str))
    return 0


def cmd_overlay_movie(args: argparse.Namespace) -> int:
    from etemseg.analysis.overlay_movie import OverlayMovieParams, render_overlay_movie
    from etemseg.io.atomic import guard_file_output

    guard_file_output(args.out, suffix=".mp4", inputs=[
        args.frames, args.masks, args.tracks / "trajectories.parquet",
        args.tracks / "events.parquet"])
    if args.threads < 1:
        raise EtemsegError(f"--threads: must be >= 1, got {args.threads}")
    params = OverlayMovieParams.from_dict(_dataclass_values(args, OverlayMovieParams))
    summary = render_overlay_movie(args.frames, args.masks, args.tracks, args.out, params=params,
                                   title=args.title, threads=args.threads,
                                   progress=not args.quiet)
    summary.pop("movie_frames")
    print(json.dumps(summary, indent=1))
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from etemseg.analysis.napari_layers import launch, layer_data

    layers = layer_data(args.results_dir, args.model or None)
    if args.list:
        for data, kwargs, kind in layers:
            print(json.dumps({"name": kwargs["name"], "type": kind, "shape": list(data.shape),
                              "scale": list(kwargs["scale"])}))
        return 0
    launch(layers, title=f"etemseg: {args.results_dir}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from etemseg.io.store import MovieStore

    store = MovieStore.open(args.store)
    info = {"path": str(store.path), "shape": list(store.array.shape),
            "dtype": str(store.array.dtype), "zarr_chunks": list(store.array.chunks),
            **store.meta}
    print(json.dumps(info, indent=1))
    return 0


def _args_synth(p: argparse.ArgumentParser) -> None:
    from etemseg.synth import SynthParams

    p.add_argument("out_dir", type=Path)
    p.add_argument("--params-json", help="parameters as a JSON object (overrides the options)")
    p.add_argument("--format", choices=("tiff", "dm4"), default="tiff",
                   help="frame files: ImageJ TIFF (default) or K2-style DM4, as the camera "
                        "writes them")
    _dataclass_arguments(p, SynthParams)


def _args_ingest(p: argparse.ArgumentParser) -> None:
    from etemseg.io.store import CODECS, DEFAULT_CLEVEL, DEFAULT_CODEC

    p.add_argument("src", type=Path, help="frame dump folder")
    p.add_argument("out", type=Path, help="output store, e.g. results/movie/frames.zarr")
    p.add_argument("--fps", type=float, default=400.0, help="frames/s (default 400, K2-IS)")
    p.add_argument("--pixel-size-nm", type=float, help="override the files' calibration, nm/px")
    p.add_argument("--chunk-frames", type=int, default=400,
                   help="frames per time chunk = per job (default 400 = 1 s)")
    p.add_argument("--zarr-chunk-frames", type=int,
                   help="frames per Zarr chunk, divides --chunk-frames (default: <= 64 MiB)")
    p.add_argument("--codec", choices=CODECS, default=DEFAULT_CODEC)
    p.add_argument("--clevel", type=int, default=DEFAULT_CLEVEL, help="compression level")
    _chunk_mode_arguments(p, "fill")


def _chunk_mode_arguments(p: argparse.ArgumentParser, verb: str) -> None:
    """--init / --chunk K / --receipt: how every per-chunk stage runs under Snakemake."""
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--init", action="store_true", help="only create the empty output store(s)")
    mode.add_argument("--chunk", type=int, metavar="K", help=f"only {verb} time chunk K")
    p.add_argument("--receipt", type=Path, help="with --chunk: write the chunk's receipt JSON here")


def _args_pseudolabel(p: argparse.ArgumentParser) -> None:
    from etemseg.stages.pseudolabel import PRESETS, PseudoLabelParams

    p.add_argument("frames", type=Path, help="movie store, e.g. results/movie/frames.zarr")
    p.add_argument("out", type=Path, help="output store, e.g. results/movie/pseudo.zarr")
    p.add_argument("--preset", default="default", help=f"one of {', '.join(PRESETS)}")
    p.add_argument("--method", choices=("fast", "reference"), default="fast")
    p.add_argument("--threads", type=int, default=1, help="frames labelled in parallel")
    _window_argument(p, "label the temporal mean of the frames")
    _chunk_mode_arguments(p, "label")
    _dataclass_arguments(p, PseudoLabelParams, unset_default=True)


def _window_argument(p: argparse.ArgumentParser, what: str) -> None:
    from etemseg.io.store import DEFAULT_WINDOW_MS

    p.add_argument("--window-ms", type=float, default=DEFAULT_WINDOW_MS,
                   help=f"{what} over a centred window of this many ms (rounded to an odd number "
                        f"of frames; 0: single frames; default {DEFAULT_WINDOW_MS:g})")


def _args_pseudolabel_preview(p: argparse.ArgumentParser) -> None:
    from etemseg.stages.pseudolabel import PRESETS, PseudoLabelParams

    p.add_argument("source", type=Path,
                   help="frame dump folder (before ingest) or movie store (frames.zarr)")
    p.add_argument("out", type=Path, help="PNG to write")
    p.add_argument("--frames", help="frame indices, e.g. 0,100 (default first, middle, last)")
    p.add_argument("--vary", action="append", default=[], metavar="NAME=V1,V2,...",
                   help="a parameter and its values, e.g. sigma_nm=0.2,0.36,0.6 (repeatable: "
                        "every combination is a column)")
    p.add_argument("--preset", default="default", help=f"one of {', '.join(PRESETS)}")
    p.add_argument("--method", choices=("fast", "reference"), default="fast")
    p.add_argument("--fps", type=float, default=400.0, help="frames/s of a dump (default 400)")
    p.add_argument("--pixel-size-nm", type=float, help="override the calibration, nm/px")
    _dataclass_arguments(p, PseudoLabelParams, unset_default=True)


def _args_score(p: argparse.ArgumentParser) -> None:
    p.add_argument("pred", type=Path, help="mask store (pseudo.zarr or mask.zarr)")
    p.add_argument("truth", type=Path,
                   help="truth label array, e.g. results/movie/synth/truth/labels.zarr")
    p.add_argument("--out", type=Path, help="write the scores JSON here")
    p.add_argument("--iou-min", type=float, default=0.5, help="IoU for a particle match")


def _args_overlay(p: argparse.ArgumentParser) -> None:
    p.add_argument("frames", type=Path)
    p.add_argument("out", type=Path, help="PNG to write")
    p.add_argument("--frame", type=int, default=0, help="frame index (t)")
    p.add_argument("--mask", action="append", default=[], metavar="NAME=STORE.zarr")
    p.add_argument("--truth", type=Path, help="ground-truth label array to outline as well")


def _args_models(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable listing")


def _args_train(p: argparse.ArgumentParser) -> None:
    from etemseg.nn.training import TrainConfig

    p.add_argument("--pair", nargs=2, action="append", required=True,
                   metavar=("FRAMES.zarr", "PSEUDO.zarr"), help="training movie (repeatable)")
    p.add_argument("--out", type=Path, required=True,
                   help="model folder, new or written by `etemseg train` (model.pt, metrics.csv, "
                        "curve.png, checkpoint.pt), e.g. models/unet4-norm")
    p.add_argument("--frame-stride", type=int, default=1, help="use every N-th frame")
    p.add_argument("--max-frames", type=int, help="at most this many frames per movie")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    _dataclass_arguments(p, TrainConfig, unset_default=True)


def _args_infer(p: argparse.ArgumentParser) -> None:
    from etemseg.nn.inference import InferConfig

    p.add_argument("frames", type=Path)
    p.add_argument("model", type=Path, help="model file written by `etemseg train`")
    p.add_argument("out", type=Path, help="output folder, e.g. results/movie/unet4-norm")
    p.add_argument("--expect", help="refuse a model file of another architecture")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    _chunk_mode_arguments(p, "segment")
    _dataclass_arguments(p, InferConfig, unset_default=True)


def _args_measure(p: argparse.ArgumentParser) -> None:
    p.add_argument("frames", type=Path, help="raw frame store (mean intensity, times, pixel size)")
    p.add_argument("masks", type=Path, help="mask store, e.g. results/movie/model/mask.zarr")
    p.add_argument("out", type=Path, help="Parquet file to write")
    p.add_argument("--chunk", type=int, metavar="K", help="only time chunk K (default: all)")
    p.add_argument("--movie", default="", help="value of the movie column")
    p.add_argument("--model", default="", help="value of the model column")
    p.add_argument("--min-area-px", type=int, default=20,
                   help="drop smaller components, px (default 20, as the workflow)")
    p.add_argument("--min-area-nm2", type=float, default=None,
                   help="drop smaller components, nm²; replaces --min-area-px when the movie has "
                        "a pixel size (else --min-area-px, with a warning)")
    p.add_argument("--overlaps", type=Path, metavar="PATH",
                   help="also write the frame-overlaps table (pixels shared by the particles of "
                        "consecutive frames, for the track stage) to this Parquet file")


def _args_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("movie_dir", type=Path, help="results/{movie}")
    p.add_argument("model_name", help="the model's folder under MOVIE_DIR")
    p.add_argument("model", type=Path, help="models/{model}/model.pt")
    p.add_argument("out", type=Path, help="output folder for figures, CSV and scores.json")
    p.add_argument("--max-frames", type=int, default=32, help="evaluation frames at most")


def _args_compare(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", type=Path, help="comparison CSV, e.g. results/model_comparison.csv")
    p.add_argument("scores", nargs="+", type=Path,
                   help="evaluation folders (or their scores.json)")
    p.add_argument("--contours", nargs=2, metavar=("MOVIE_DIR", "PNG"),
                   help="also draw every model's Otsu contours on one frame of MOVIE_DIR")
    p.add_argument("--sweep-png", type=Path,
                   help="also plot P/R/F1 vs threshold of every model (Fig. 7a)")


def _args_track(p: argparse.ArgumentParser) -> None:
    from etemseg.tracking.params import LinkParams

    p.add_argument("frames", type=Path, help="frame store (times, pixel size)")
    p.add_argument("masks", type=Path, help="mask store (label images for overlap linking)")
    p.add_argument("particles", type=Path, help="folder of chunk-{k}.parquet detection tables")
    p.add_argument("out", type=Path, help="folder for trajectories/events/frames.parquet")
    p.add_argument("--movie", default="")
    p.add_argument("--model", default="")
    p.add_argument("--centroid-only", action=argparse.BooleanOptionalAction, default=False,
                   help="link by centroids, not mask overlap")
    p.add_argument("--max-disp-nm", type=float, default=1.0,
                   help="largest displacement between consecutive frames, nm (after drift)")
    p.add_argument("--memory", type=int, default=LinkParams.memory,
                   help="frames a particle may go missing and keep its id (default 3)")
    p.add_argument("--gap-ms", type=float, default=LinkParams.gap_ms,
                   help="longest time a particle may stay undetected and keep its id, ms")
    p.add_argument("--persist-ms", type=float, default=LinkParams.persist_ms,
                   help="a merged body must persist this long to be a coalescence, ms")
    p.add_argument("--confirm-ms", type=float, default=LinkParams.confirm_ms,
                   help="a new trajectory must last this long to report events, ms")
    p.add_argument("--reid-ms", type=float, default=LinkParams.reid_ms,
                   help="longest time a lost particle (below the detection limit or out of view) "
                        "may be found again at its drift-corrected place, ms (needs --gap-ms > 0)")
    p.add_argument("--min-diameter-nm", type=float, default=LinkParams.min_diameter_nm,
                   help="a trajectory that never reaches this equivalent diameter off the frame "
                        "border is flagged untrusted and reports no events, nm (0: off)")
    p.add_argument("--trust-ms", type=float, default=LinkParams.trust_ms,
                   help="a trajectory shorter than this reports no appear/vanish, ms (0: off)")


def _args_sintering(p: argparse.ArgumentParser) -> None:
    p.add_argument("frames", type=Path, help="frame store (pixel size, field of view)")
    p.add_argument("tracks", type=Path, help="folder with trajectories/frames/events.parquet")
    p.add_argument("out", type=Path, help="output folder (sintering.png, summary.json, CSVs)")


def _args_score_tracks(p: argparse.ArgumentParser) -> None:
    p.add_argument("tracks", type=Path, help="folder with trajectories/events.parquet")
    p.add_argument("masks", type=Path, help="mask store of the same model")
    p.add_argument("truth", type=Path, help="simulator truth folder (results/movie/synth/truth)")
    p.add_argument("out", type=Path, help="scores JSON")


def _args_overlay_movie(p: argparse.ArgumentParser) -> None:
    from etemseg.analysis.overlay_movie import OverlayMovieParams

    p.add_argument("frames", type=Path, help="frame store, e.g. results/movie/frames.zarr")
    p.add_argument("masks", type=Path, help="mask store, e.g. results/movie/model/mask.zarr")
    p.add_argument("tracks", type=Path,
                   help="folder with trajectories.parquet and events.parquet (etemseg track)")
    p.add_argument("out", type=Path, help="MP4 to write, e.g. results/movie/model/overlay.mp4")
    p.add_argument("--title", default="", help="text in the upper right corner")
    p.add_argument("--threads", type=int, default=2, help="H.264 encoder threads (default 2)")
    d = OverlayMovieParams()
    p.add_argument("--every-ms", type=float, default=d.every_ms,
                   help="movie time each output frame covers, ms (default: the smallest that "
                        "fits the whole movie into --max-seconds)")
    p.add_argument("--max-seconds", type=float, default=d.max_seconds,
                   help=f"longest playback, s; a longer movie is cut (default {d.max_seconds:g})")
    p.add_argument("--fps", type=float, default=d.fps,
                   help=f"playback frame rate, frames/s (default {d.fps:g})")
    p.add_argument("--max-width-px", type=int, default=d.max_width_px,
                   help=f"shrink wider frames by an integer factor, px (default {d.max_width_px})")
    p.add_argument("--line-px", type=int, default=d.line_px,
                   help=f"contour width, output px (default {d.line_px})")
    p.add_argument("--event-s", type=float, default=d.event_s,
                   help=f"event markers stay this long, s of playback (default {d.event_s:g})")
    p.add_argument("--crf", type=int, default=d.crf,
                   help=f"H.264 quality, 0 lossless .. 51 worst (default {d.crf})")


def _args_view(p: argparse.ArgumentParser) -> None:
    p.add_argument("results_dir", type=Path,
                   help="a movie's results folder (results/{movie}) or one of its mask stores")
    p.add_argument("--model", action="append", default=[],
                   help="model to show (repeatable; default every model with a mask.zarr)")
    p.add_argument("--list", action="store_true",
                   help="print the layers (name, type, shape, scale) instead of opening napari")


def _args_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", type=Path)


#: name -> (one-line help, description, argument builder, handler)
COMMANDS = {
    "synth": ("simulate an ETEM sintering movie with ground truth",
              "Write a simulated ETEM movie of sintering Au nanoparticles as a K2-style frame "
              "dump (OUT_DIR/frames) with ground truth (OUT_DIR/truth).",
              _args_synth, cmd_synth),
    "ingest": ("convert a frame dump into a chunked Zarr movie store",
               "Convert a folder of .dm4/.dm3/.tif/.npy frames into a Zarr v3 (t, y, x) store. "
               "Without --init/--chunk: the whole movie, atomically.",
               _args_ingest, cmd_ingest),
    "pseudolabel": ("classical pseudo-labels (the paper's recipe, fast) per time chunk",
                    "Label particles in every frame of FRAMES.zarr with the paper's classical "
                    "recipe (Gaussian, border reconstructions, Sobel, opening, Otsu); writes "
                    "OUT.zarr (uint8 0/1) with the same chunking. Options override the preset.",
                    _args_pseudolabel, cmd_pseudolabel),
    "pseudolabel-preview": ("contours of several pseudolabel settings on a few frames, side by "
                            "side",
                            "Pseudo-label a few frames of a frame dump (before ingest) or a movie "
                            "store with every combination of the --vary values and write a PNG "
                            "grid (rows frames, columns settings) with the contours and each "
                            "panel's particle count: choose a movie's settings before the "
                            "workflow. Options fix the other parameters, over the preset.",
                            _args_pseudolabel_preview, cmd_pseudolabel_preview),
    "score": ("score a mask store against ground-truth labels",
              "Pixel precision/recall/F1/IoU, particle detection F1 (matched by IoU) and "
              "equivalent-diameter error (px and nm) of PRED against TRUTH.",
              _args_score, cmd_score),
    "overlay": ("PNG of one frame with mask outlines and a scale bar", None,
                _args_overlay, cmd_overlay),
    "models": ("list the architectures and their sizes", None, _args_models, cmd_models),
    "train": ("train a CNN on pseudo-labels",
              "Train a segmentation CNN (Adam, cross-entropy, augmented random crops, validation "
              "on full frames) on frames + pseudo-labels. Writes OUT/model.pt, OUT/metrics.csv, "
              "OUT/curve.png; resumes from OUT/checkpoint.pt after a kill.",
              _args_train, cmd_train),
    "infer": ("segment every frame with a trained model",
              "Particle probability (uint8, p = value/255) and mask of every frame of FRAMES.zarr "
              "with MODEL.pt, written to OUT/prob.zarr and OUT/mask.zarr (same chunking as the "
              "frames).",
              _args_infer, cmd_infer),
    "measure": ("measure every particle of every frame into a Parquet table",
                "Connected components of MASKS (8-connected), one row per particle per frame: "
                "centroid, area, equivalent diameter, axes, eccentricity, orientation, "
                "perimeter (nm), mean intensity (counts), border contact.",
                _args_measure, cmd_measure),
    "evaluate": ("evaluate a trained model: P/R/F1 vs threshold, profiles, kernels",
                 "Precision/recall/F1 against threshold (vs pseudo-labels and ground truth), "
                 "Otsu thresholds, line profiles, learned kernels and their Gabor fit, scores.",
                 _args_evaluate, cmd_evaluate),
    "compare": ("model study table from several evaluations", None, _args_compare, cmd_compare),
    "track": ("link particles across frames: trajectories, events, per-frame table",
              "Reads every chunk's detections, links them over the whole movie (mask overlap, "
              "drift-corrected) and writes trajectories.parquet, events.parquet (coalescence, "
              "vanish, appear, split, ...) and frames.parquet.", _args_track, cmd_track),
    "sintering": ("ripening kinetics, densities, coalescence rate, size distributions", None,
                  _args_sintering, cmd_sintering),
    "score-tracks": ("score segmentation, tracking, events and LSW rate against truth", None,
                     _args_score_tracks, cmd_score_tracks),
    "overlay-movie": ("MP4 of the frames with contours coloured by track, events, time, scale",
                      "Render an H.264 MP4 of a movie: frames with particle contours coloured by "
                      "track id, coalescence (white ring) and vanish (red cross) markers, time "
                      "stamp (s) and scale bar (nm). Each output frame covers --every-ms of "
                      "movie time (default: the whole movie fits --max-seconds of playback at "
                      "--fps); frames are read Zarr chunk by chunk (bounded memory).",
                      _args_overlay_movie, cmd_overlay_movie),
    "view": ("open frames, masks and tracks in napari (optional extra: etemseg[view])",
             "Open a movie's frames (image), every model's masks (labels) and tracks in napari: "
             "t in frames, y and x in nm. Needs napari (`pip install 'etemseg[view]'`); --list "
             "prints the layers without it.", _args_view, cmd_view),
    "info": ("print a movie store's shape and metadata", None, _args_info, cmd_info),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The CLI parser. With ``only``, just that subcommand gets its options, so a per-chunk job
    imports only what its stage needs (``etemseg ingest`` never imports torch)."""
    parser = argparse.ArgumentParser(prog="etemseg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"etemseg {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_, description, add_arguments, handler) in COMMANDS.items():
        p = sub.add_parser(name, parents=[common], help=help_, description=description or help_)
        p.set_defaults(func=handler)
        if only is None or only == name:
            add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), "")
    args = build_parser(only=command).parse_args(argv)
    try:
        return args.func(args)
    except EtemsegError as exc:
        message = str(exc)
    except OSError as exc:
        # An OSError that names a file (permission denied, no such file or folder, read-only
        # file system, a file where a folder is expected, ...) is about a path the user gave or
        # its surroundings: the user can fix it, so it gets the one-line treatment. OSErrors
        # without a file name (EIO, ENOSPC raised by write(), broken pipes, network failures)
        # say nothing actionable about the input and may be bugs: their traceback is kept.
        if exc.filename is None:
            raise
        import os

        from etemseg.io.store import display_path   # the output, not its temporary sibling

        names = [display_path(os.fsdecode(f)) if isinstance(f, (str, bytes, os.PathLike))
                 else f for f in (exc.filename, exc.filename2) if f is not None]
        message = f"{' -> '.join(map(str, names))}: {exc.strerror or type(exc).__name__}"
        blocker = names[0]
        if isinstance(exc, NotADirectoryError) or (
                isinstance(exc, FileExistsError) and isinstance(blocker, Path)
                and blocker.exists() and not blocker.is_dir()):
            message += " (a file stands where a folder is needed)"
    # one line, whatever a library put in the message
    message = " ".join(line.strip() for line in message.splitlines() if line.strip())
    print(f"etemseg {args.command}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
