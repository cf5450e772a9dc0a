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

from . import __version__
from .errors import EtemsegError

log = logging.getLogger("etemseg")


def _synth_param_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per :class:`etemseg.synth.SynthParams` field (single source of truth)."""
    from .synth import SynthParams

    hints = typing.get_type_hints(SynthParams)
    for field in dataclasses.fields(SynthParams):
        flag = "--" + field.name.replace("_", "-")
        hint = hints[field.name]
        origin = typing.get_origin(hint)
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        default = field.default
        if origin is tuple:
            parser.add_argument(flag, type=float, nargs=len(args), default=default,
                                metavar=tuple(f"V{i}" for i in range(len(args))),
                                help=f"default {default}")
        elif hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                                help=f"default {default}")
        else:
            kind = args[0] if args else hint
            parser.add_argument(flag, type=kind, default=default, help=f"default {default}")


def cmd_synth(args: argparse.Namespace) -> int:
    from .synth import SynthParams, write_synthetic_movie

    names = {f.name for f in dataclasses.fields(SynthParams)}
    values = {k: v for k, v in vars(args).items() if k in names}
    if args.params_json:
        values.update(json.loads(args.params_json))
    params = SynthParams.from_dict(values)
    summary = write_synthetic_movie(args.out_dir, params, progress=not args.quiet)
    print(json.dumps(summary, indent=1, default=str))
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from .ingest import ingest, ingest_chunk, init_store, write_receipt
    from .store import MovieStore

    options = dict(fps=args.fps, pixel_size_nm=args.pixel_size_nm, chunk_frames=args.chunk_frames,
                   zarr_chunk_frames=args.zarr_chunk_frames, codec=args.codec, clevel=args.clevel)
    if args.init:
        store = init_store(args.src, args.out, **options)
        log.info("created %s: %d frames %s in %d chunks", store.path, store.n_frames,
                 store.frame_shape, store.n_chunks)
        return 0
    if args.chunk is not None:
        store = MovieStore.open(args.out, mode="r+")
        recorded = Path(store.meta["source"])
        if Path(args.src).resolve() != recorded:
            raise EtemsegError(f"{args.out}: store was initialised from {recorded}, not {args.src}")
        receipt = ingest_chunk(store, args.chunk, progress=not args.quiet)
        if args.receipt:
            write_receipt(receipt, args.receipt)
        log.info("chunk %d: frames %d..%d in %.1f s", args.chunk, receipt["t0"], receipt["t1"],
                 receipt["elapsed_s"])
        return 0
    store = ingest(args.src, args.out, progress=not args.quiet, **options)
    log.info("wrote %s: %d frames %s, %d chunks, pixel size %s nm", store.path, store.n_frames,
             store.frame_shape, store.n_chunks, store.pixel_size_nm)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .store import MovieStore

    store = MovieStore.open(args.store)
    info = {"path": str(store.path), "shape": list(store.array.shape),
            "dtype": str(store.array.dtype), "zarr_chunks": list(store.array.chunks),
            **store.meta}
    print(json.dumps(info, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .store import CODECS, DEFAULT_CLEVEL, DEFAULT_CODEC

    parser = argparse.ArgumentParser(prog="etemseg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"etemseg {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="simulate an ETEM sintering movie with ground truth",
                       description="Write a simulated ETEM movie of sintering Au nanoparticles as a "
                       "K2-style frame dump (OUT_DIR/frames) with ground truth (OUT_DIR/truth).")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--params-json", help="parameters as a JSON object (overrides the options)")
    _synth_param_arguments(p)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("ingest", help="convert a frame dump into a chunked Zarr movie store",
                       description="Convert a folder of .dm4/.dm3/.tif/.npy frames into a Zarr v3 "
                       "(t, y, x) store. Without --init/--chunk: the whole movie, atomically.")
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
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--init", action="store_true", help="only create the empty store")
    mode.add_argument("--chunk", type=int, metavar="K", help="only fill time chunk K")
    p.add_argument("--receipt", type=Path, help="with --chunk: write the chunk's receipt JSON here")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("info", help="print a movie store's shape and metadata")
    p.add_argument("store", type=Path)
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EtemsegError as exc:
        print(f"etemseg {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
