"""Bad inputs, walked through the real command line (``etemseg.cli.main``).

The README promises: an error a user can fix prints ONE line naming the file or option
(``etemseg CMD: error: PATH: problem``) and exits with status 2, and existing outputs are never
touched by a failed run. Two kinds of tests hold the code to it:

* a table of known bad inputs (corrupt, truncated or missing Zarr chunks, damaged store metadata,
  bad options, empty frames, undecodable file names, K2-named stacks, garbage Parquet, bad JSON,
  unwritable outputs), each expecting exit 2, one ``etemseg ...`` line naming the culprit, no
  traceback, and a work folder (inputs and existing outputs) unchanged byte for byte;
* a property test that cuts real input files (DM4, DM3, TIFF, NPY, a Zarr chunk of a frames and
  of a mask store, a Parquet chunk table, a model file) at 15 offsets spread over the file and
  flips a byte at 15 offsets, runs the command that reads them and accepts only a clean one-line
  error (exit 2, outputs untouched) or correct data (exit 0, output equal to the undamaged run's).

One allowance, documented where it applies: DM, TIFF and NPY store raw pixels without a checksum,
so a byte flipped inside the pixel data *is* the file's data; it may come back as exactly one
changed pixel (nothing else may differ). Zarr chunks (CRC-32C codec) and Parquet tables (page
checksums) written by etemseg carry checksums, so every flip there must be an error or harmless.

Everything runs in-process on a tiny movie (8 frames of 64x64); the module takes well under a
minute on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import traceback
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr

from etemseg.cli import main

from .conftest import k2_name, write_k2_dump

DM = Path(__file__).parent / "data" / "dm"
N_OFFSETS = 15


# ------------------------------------------------------------------------------------ helpers


@pytest.fixture(autouse=True)
def _no_log_lines_on_stderr():
    """``cli.main`` calls ``logging.basicConfig``, which would send warnings to (captured) stderr
    when the root logger has no handler; a NullHandler keeps stderr to what the CLI prints."""
    handler = logging.NullHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    yield
    root.removeHandler(handler)


def cli(*argv) -> int:
    """Run ``etemseg -q ARGV`` in-process; its exit status. An exception fails the test."""
    try:
        return main(["-q", *map(str, argv)])
    except SystemExit as exc:  # argparse
        return exc.code
    except Exception:  # noqa: BLE001 - exactly what the promise rules out
        pytest.fail(f"etemseg {argv[0]} raised instead of a one-line error:\n"
                    f"{traceback.format_exc()}")


def run(capsys, *argv) -> tuple[int, str]:
    """``cli`` with its stderr: (exit status, stderr)."""
    capsys.readouterr()
    rc = cli(*argv)
    return rc, capsys.readouterr().err


def tree_hash(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder`` (and '<dir>' for folders), hidden
    and temporary files included: a failed run must leave no trace at all."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), folder)] = "<dir>"
        for name in filenames:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def assert_one_line_error(rc, err: str, *fragments: str) -> str:
    assert rc == 2, f"exit status {rc}, stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.startswith("etemseg ") and ": error: " in line, line
    for frag in fragments:
        assert str(frag) in line, f"{frag!r} not named in: {line}"
    return line


def cut(path: Path, n: int) -> None:
    path.write_bytes(path.read_bytes()[:n])


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def offsets(n_bytes: int) -> list[int]:
    """N_OFFSETS offsets spread over a file of ``n_bytes`` bytes, first and last byte included."""
    return [int(round(x)) for x in np.linspace(0, n_bytes - 1, N_OFFSETS)]


def copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)
    return dst


# ------------------------------------------------------------------------------------ movie


def tiny_frames() -> np.ndarray:
    """8 frames of 64x64 uint16: Poisson background with two dark particles, one drifting."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    frames = np.empty((8, 64, 64), np.uint16)
    for i in range(8):
        dark = ((((yy - 30) ** 2 + (xx - 20 - i) ** 2) < 60)
                | (((yy - 45) ** 2 + (xx - 45) ** 2) < 40))
        frames[i] = rng.poisson(np.where(dark, 350, 1000))
    return frames


@pytest.fixture(scope="module")
def movie(tmp_path_factory):
    """Every stage's output for a tiny movie, built once: the references the tests damage."""
    import torch

    from etemseg.nn.models import build_model, canonical_name, parse_arch
    from etemseg.nn.checkpoint import NORMALISATION

    root = tmp_path_factory.mktemp("bad-inputs")
    frames = tiny_frames()
    m = SimpleNamespace(root=root, frames_data=frames)
    m.dump = write_k2_dump(root / "dump", frames, range(8))
    m.npy = root / "npy"
    m.npy.mkdir()
    for i, frame in enumerate(frames):
        np.save(m.npy / f"f_{i}.npy", frame)
    m.frames, m.pseudo = root / "frames.zarr", root / "pseudo.zarr"
    m.ingest_opts = ["--chunk-frames", 4, "--zarr-chunk-frames", 2, "--pixel-size-nm", 0.2]
    assert cli("ingest", m.dump, m.frames, *m.ingest_opts) == 0
    assert cli("pseudolabel", m.frames, m.pseudo) == 0
    arch = parse_arch("single-filter")
    torch.manual_seed(0)
    m.model = root / "model" / "model.pt"
    m.model.parent.mkdir()
    torch.save({"format": "etemseg-model-1", "arch": arch.to_dict(), "name": canonical_name(arch),
                "normalisation": dict(NORMALISATION), "state_dict": build_model(arch).state_dict()},
               m.model)
    m.infer = root / "infer"
    assert cli("infer", m.frames, m.model, m.infer) == 0
    m.particles = root / "particles"
    for k in range(2):
        assert cli("measure", m.frames, m.pseudo, m.particles / f"chunk-{k}.parquet",
                   "--chunk", k) == 0
    assert len(pd.read_parquet(m.particles / "chunk-0.parquet")) > 0
    m.measured = root / "measured.parquet"
    assert cli("measure", m.frames, m.pseudo, m.measured) == 0
    m.tracks = root / "tracks"
    assert cli("track", m.frames, m.pseudo, m.particles, m.tracks) == 0
    return m


# ---------------------------------------------------------------------- (a) table of cases
#
# Each case prepares its inputs in the private work folder ``w`` (copies of the references,
# damaged) and an existing output there, and returns (argv, fragments the error line must name).


def _damaged_store(m, w, which: str, chunk: str, how: str) -> Path:
    store = copy(getattr(m, which), w / f"{which}.zarr")
    path = store / chunk
    if how == "truncate":
        cut(path, path.stat().st_size // 2)
    elif how == "corrupt":
        flip(path, path.stat().st_size // 3)
    else:
        path.unlink()
    return store


def _store_meta(m, w, *, drop_key=None, drop_array=None) -> Path:
    store = copy(m.frames, w / "frames.zarr")
    if drop_array:
        shutil.rmtree(store / drop_array)
    if drop_key:
        meta = json.loads((store / "zarr.json").read_text())
        del meta["attributes"]["etemseg"][drop_key]
        (store / "zarr.json").write_text(json.dumps(meta))
    return store


def _existing(m, w, kind: str) -> Path:
    """An existing output of the stage, which a failed run must leave as it is."""
    if kind == "pseudolabel":
        return copy(m.pseudo, w / "out" / "pseudo.zarr")
    if kind == "infer":
        return copy(m.infer, w / "out" / "infer")
    if kind == "measure":
        return copy(m.measured, w / "out" / "particles.parquet")
    if kind == "track":
        return copy(m.tracks, w / "out" / "tracks")
    if kind == "ingest":
        return copy(m.frames, w / "out" / "frames.zarr")
    raise AssertionError(kind)


def case_chunk(stage: str, which: str, how: str):
    chunk = "0/c/3/0/0"   # Zarr chunk 3 = frames 6..7 = time chunk 1

    def make(m, w):
        store = _damaged_store(m, w, which, chunk, how)
        frames = store if which == "frames" else m.frames
        masks = store if which == "pseudo" else m.pseudo
        out = _existing(m, w, stage)
        argv = {"pseudolabel": ["pseudolabel", frames, out],
                "infer": ["infer", frames, m.model, out],
                "measure": ["measure", frames, masks, out],
                "track": ["track", frames, masks, m.particles, out]}[stage]
        return argv, [store, chunk]
    return make


def case_store_meta(stage: str, **damage):
    def make(m, w):
        store = _store_meta(m, w, **damage)
        out = _existing(m, w, stage)
        argv = {"pseudolabel": ["pseudolabel", store, out],
                "measure": ["measure", store, m.pseudo, out],
                "track": ["track", store, m.pseudo, m.particles, out]}[stage]
        return argv, [store, damage.get("drop_key") or damage.get("drop_array")]
    return make


def case_ingest_option(*option):
    def make(m, w):
        opts = dict(zip(m.ingest_opts[::2], m.ingest_opts[1::2]))
        opts.update(dict(zip(option[::2], option[1::2])))
        argv = ["ingest", m.dump, _existing(m, w, "ingest")]
        for k, v in opts.items():
            argv += [k, v]
        return argv, [option[0].lstrip("-").replace("-", "_")]
    return make


def case_ingest_init_option(*option):
    def make(m, w):
        argv, frags = case_ingest_option(*option)(m, w)
        return argv + ["--init"], frags
    return make


def case_empty_frames(suffix: str):
    """Frames with a zero dimension: the first file (TIFF) or a later one (NPY)."""
    def make(m, w):
        dump = w / "dump"
        dump.mkdir()
        for i in range(3):
            if suffix == ".npy":
                np.save(dump / f"f_{i}.npy", np.zeros((0, 5) if i == 1 else (4, 5), np.uint16))
            else:
                with warnings.catch_warnings():   # "writing zero-size array to nonconformant"
                    warnings.simplefilter("ignore")
                    tifffile.imwrite(dump / f"f_{i}.tif", np.zeros((0, 5), np.uint16))
        bad = dump / ("f_1.npy" if suffix == ".npy" else "f_0.tif")
        return ["ingest", dump, _existing(m, w, "ingest")], [bad]
    return make


def case_non_utf8_name(m, w):
    dump = copy(m.dump, w / "dump")
    good = dump / k2_name(3)
    bad = os.fsencode(dump) + b"/" + os.fsencode(k2_name(3)).replace(b"_Frame", b"\xff_Frame")
    try:
        os.rename(os.fsencode(good), bad)
    except OSError as exc:  # e.g. a file system that stores names as UTF-16 (macOS, Windows)
        pytest.skip(f"the file system refuses non-UTF-8 names ({exc})")
    return ["ingest", dump, _existing(m, w, "ingest"), *m.ingest_opts], [dump, "UTF-8", r"\xff"]


def case_k2_stack(index: int, pages: int = 5, **kw):
    def make(m, w):
        dump = copy(m.dump, w / "dump")
        f = dump / k2_name(index)
        tifffile.imwrite(f, np.stack([tifffile.imread(f)] * pages), **kw)
        return ["ingest", dump, _existing(m, w, "ingest"), *m.ingest_opts], [f, f"{pages} frames"]
    return make


def case_k2_npy_stack(m, w):
    dump = w / "dump"
    dump.mkdir()
    for i, frame in enumerate(m.frames_data):
        np.save(dump / k2_name(i, suffix=".npy"), np.stack([frame] * 3) if i == 5 else frame)
    return (["ingest", dump, _existing(m, w, "ingest"), *m.ingest_opts],
            [dump / k2_name(5, suffix=".npy"), "3 frames"])


def case_garbage_parquet(content: bytes):
    def make(m, w):
        particles = copy(m.particles, w / "particles")
        (particles / "chunk-1.parquet").write_bytes(content)
        return (["track", m.frames, m.pseudo, particles, _existing(m, w, "track")],
                [particles / "chunk-1.parquet"])
    return make


def case_foreign_parquet(m, w):
    particles = copy(m.particles, w / "particles")
    pd.DataFrame({"a": [1, 2]}).to_parquet(particles / "chunk-0.parquet")
    return (["track", m.frames, m.pseudo, particles, _existing(m, w, "track")],
            [particles / "chunk-0.parquet", "particle table"])


def case_params_json(text: str, named: str = "--params-json"):
    def make(m, w):
        out = w / "synth"
        out.mkdir()
        (out / "synth.json").write_text("{}\n")   # an "existing output"
        return ["synth", out, "--frames", 2, "--params-json", text], [named]
    return make


def case_output_under_file(stage: str):
    """An output path below a regular file: mkdir fails with an OSError naming the file."""
    def make(m, w):
        blocker = w / "not-a-folder"
        blocker.write_text("a file, not a folder\n")
        if stage == "measure":
            argv = ["measure", m.frames, m.pseudo, blocker / "out.parquet", "--chunk", 0]
        elif stage == "pseudolabel-receipt":
            out = _existing(m, w, "pseudolabel")
            argv = ["pseudolabel", m.frames, out, "--chunk", 0,
                    "--receipt", blocker / "receipts" / "chunk-0.json"]
        else:
            argv = ["track", m.frames, m.pseudo, m.particles, blocker / "tracks"]
        return argv, [blocker]
    return make


def case_read_only_folder(stage: str):
    def make(m, w):
        if os.geteuid() == 0:
            pytest.skip("root ignores permission bits")
        ro = w / "read-only"
        ro.mkdir()
        if stage == "measure":
            argv = ["measure", m.frames, m.pseudo, ro / "sub" / "out.parquet", "--chunk", 0]
        else:
            out = _existing(m, w, "pseudolabel")
            argv = ["pseudolabel", m.frames, out, "--chunk", 0, "--receipt", ro / "chunk-0.json"]
        ro.chmod(0o500)
        return argv, [ro]
    return make


CASES = {
    # a corrupt or truncated Zarr chunk of a store read by each stage: store and chunk named
    "pseudolabel-frames-chunk-truncated": case_chunk("pseudolabel", "frames", "truncate"),
    "pseudolabel-frames-chunk-corrupt": case_chunk("pseudolabel", "frames", "corrupt"),
    "infer-frames-chunk-truncated": case_chunk("infer", "frames", "truncate"),
    "infer-frames-chunk-corrupt": case_chunk("infer", "frames", "corrupt"),
    "measure-frames-chunk-truncated": case_chunk("measure", "frames", "truncate"),
    "measure-mask-chunk-corrupt": case_chunk("measure", "pseudo", "corrupt"),
    "measure-mask-chunk-truncated": case_chunk("measure", "pseudo", "truncate"),
    "track-mask-chunk-truncated": case_chunk("track", "pseudo", "truncate"),
    "track-mask-chunk-corrupt": case_chunk("track", "pseudo", "corrupt"),
    # a missing chunk of a frames store: its ingest job never ran; stages needing pixels refuse
    "pseudolabel-frames-chunk-missing": case_chunk("pseudolabel", "frames", "missing"),
    "infer-frames-chunk-missing": case_chunk("infer", "frames", "missing"),
    "measure-frames-chunk-missing": case_chunk("measure", "frames", "missing"),
    # damaged store metadata
    "pseudolabel-store-without-time_s": case_store_meta("pseudolabel", drop_array="time_s"),
    "measure-store-without-time_s": case_store_meta("measure", drop_array="time_s"),
    "track-store-without-frame_index": case_store_meta("track", drop_array="frame_index"),
    "pseudolabel-store-without-chunk_frames": case_store_meta("pseudolabel",
                                                              drop_key="chunk_frames"),
    "measure-store-without-chunk_frames": case_store_meta("measure", drop_key="chunk_frames"),
    "track-store-without-fps": case_store_meta("track", drop_key="fps"),
    # ingest options
    "ingest-zarr-chunk-frames-0": case_ingest_option("--zarr-chunk-frames", 0),
    "ingest-zarr-chunk-frames-not-dividing": case_ingest_option("--zarr-chunk-frames", 3),
    "ingest-chunk-frames-0": case_ingest_option("--chunk-frames", 0),
    "ingest-chunk-frames-negative": case_ingest_option("--chunk-frames", -4),
    "ingest-pixel-size-inf": case_ingest_option("--pixel-size-nm", "inf"),
    "ingest-pixel-size-nan": case_ingest_option("--pixel-size-nm", "nan"),
    "ingest-pixel-size-negative": case_ingest_option("--pixel-size-nm", -0.2),
    "ingest-pixel-size-in-um": case_ingest_option("--pixel-size-nm", 0.00018),
    "ingest-pixel-size-in-pm": case_ingest_init_option("--pixel-size-nm", 180),
    "ingest-fps-0": case_ingest_option("--fps", 0),
    "ingest-fps-inf": case_ingest_option("--fps", "inf"),
    "ingest-clevel-99": case_ingest_option("--clevel", 99),
    "ingest-init-zarr-chunk-frames-0": case_ingest_init_option("--zarr-chunk-frames", 0),
    "ingest-init-pixel-size-inf": case_ingest_init_option("--pixel-size-nm", "inf"),
    # frames and file names
    "ingest-0xN-npy-frame": case_empty_frames(".npy"),
    "ingest-0xN-tiff-frames": case_empty_frames(".tif"),
    "ingest-non-utf8-file-name": case_non_utf8_name,
    "ingest-k2-multipage-tiff-not-first": case_k2_stack(5),
    "ingest-k2-multipage-tiff-first": case_k2_stack(0),
    "ingest-k2-imagej-stack": case_k2_stack(6, pages=4, imagej=True),
    "ingest-k2-npy-stack": case_k2_npy_stack,
    # particle tables
    "track-garbage-parquet": case_garbage_parquet(b"garbage " * 40),
    "track-empty-parquet": case_garbage_parquet(b""),
    "track-foreign-parquet": case_foreign_parquet,
    # options of other commands
    "synth-params-json-bad": case_params_json("{bad"),
    "synth-params-json-not-object": case_params_json("[1, 2]"),
    "synth-params-json-bad-value": case_params_json('{"frames": "many"}', "frames"),
    # outputs that cannot be written
    "measure-output-below-a-file": case_output_under_file("measure"),
    "track-output-below-a-file": case_output_under_file("track"),
    "pseudolabel-receipt-below-a-file": case_output_under_file("pseudolabel-receipt"),
    "measure-output-in-read-only-folder": case_read_only_folder("measure"),
    "pseudolabel-receipt-in-read-only-folder": case_read_only_folder("receipt"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_touches_nothing(name, movie, tmp_path, capsys):
    w = tmp_path / "w"
    w.mkdir()
    argv, fragments = CASES[name](movie, w)
    before = tree_hash(w)
    try:
        rc, err = run(capsys, *argv)
    finally:
        for p in w.rglob("*"):   # undo read-only folders so pytest can clean up
            if p.is_dir():
                p.chmod(0o755)
    assert_one_line_error(rc, err, *fragments)
    assert tree_hash(w) == before, "a failed run changed the work folder (inputs or outputs)"


def test_missing_mask_chunk_is_a_warning_naming_store_and_chunk(movie, tmp_path, caplog):
    """A missing chunk of a derived (mask) store reads as zeros with a warning naming the store
    and the chunk: stores written before etemseg stored all-zero chunks legitimately lack them."""
    masks = _damaged_store(movie, tmp_path, "pseudo", "0/c/3/0/0", "missing")
    with caplog.at_level(logging.WARNING):
        rc = cli("measure", movie.frames, masks, tmp_path / "out.parquet")
    assert rc == 0
    assert any(str(masks) in r.getMessage() and "0/c/3/0/0" in r.getMessage()
               for r in caplog.records), caplog.text
    table = pd.read_parquet(tmp_path / "out.parquet")
    assert not table["frame"].isin([6, 7]).any()


def test_whole_movie_ingest_warnings_name_the_output_not_the_temporary(tmp_path, caplog):
    dump = tmp_path / "dump"
    dump.mkdir()
    frame = np.ones((6, 5), np.float32)
    for i in range(3):
        bad = frame.copy()
        bad[0, 0] = np.nan
        np.save(dump / f"f_{i}.npy", bad)
    out = tmp_path / "frames.zarr"
    with caplog.at_level(logging.WARNING):
        assert cli("ingest", dump, out, "--pixel-size-nm", 0.2) == 0
    assert "non-finite" in caplog.text and str(out) in caplog.text, caplog.text
    assert ".tmp-" not in caplog.text, caplog.text
    ome = zarr.open_group(out, mode="r").attrs["ome"]
    assert ome["multiscales"][0]["name"] == "frames"


# ------------------------------------------------------------- (b) cut and flipped files
#
# A format: what to damage and the command that reads it. ``prepare(m, w)`` copies the inputs
# into ``w`` and returns (file to damage, argv, output path); ``load(out)`` reads the output for
# comparison with the undamaged run; ``named`` is what the error line must contain.


def _ingest_dir(files: list[Path], *opts):
    def prepare(m, w):
        dump = w / "dump"
        dump.mkdir()
        for f in files:
            shutil.copy2(f, dump / f.name)
        out = w / "out" / "frames.zarr"
        return dump / files[len(files) // 2].name, ["ingest", dump, out, *opts], out
    return prepare


def _dm(name: str):
    return _ingest_dir([DM / name], "--pixel-size-nm", 0.2)


def _tiff(m, w):
    dump = copy(m.dump, w / "dump")
    out = w / "out" / "frames.zarr"
    return dump / k2_name(3), ["ingest", dump, out, *m.ingest_opts], out


def _npy(m, w):
    dump = copy(m.npy, w / "dump")
    out = w / "out" / "frames.zarr"
    return dump / "f_3.npy", ["ingest", dump, out, *m.ingest_opts], out


def _zarr(which: str):
    def prepare(m, w):
        store = copy(getattr(m, which), w / f"{which}.zarr")
        frames = store if which == "frames" else m.frames
        masks = store if which == "pseudo" else m.pseudo
        out = w / "out" / "particles.parquet"
        return store / "0" / "c" / "1" / "0" / "0", ["measure", frames, masks, out], out
    return prepare


def _parquet(m, w):
    particles = copy(m.particles, w / "particles")
    out = w / "out" / "tracks"
    return particles / "chunk-0.parquet", ["track", m.frames, m.pseudo, particles, out], out


def _model(m, w):
    model = copy(m.model, w / "model" / "model.pt")
    out = w / "out" / "infer"
    return model, ["infer", m.frames, model, out, "--init"], out


def _load_store(out: Path):
    return zarr.open_array(out / "0", mode="r")[:]


def _load_tables(out: Path):
    if out.is_dir():
        return {p.name: pd.read_parquet(p) for p in sorted(out.glob("*.parquet"))}
    return {out.name: pd.read_parquet(out)}


def _load_model_state(out: Path):
    return {"stores": sorted(p.name for p in out.iterdir())}


FORMATS = {
    # name: (prepare, load, raw pixels without checksum, modes)
    "dm4": (_dm("dm4_2D_test-10.dm4"), _load_store, True, ("cut", "flip")),
    "dm3": (_dm("test_STEM_image.dm3"), _load_store, True, ("cut", "flip")),
    "tiff": (_tiff, _load_store, True, ("cut", "flip")),
    "npy": (_npy, _load_store, True, ("cut", "flip")),
    "zarr-frames-chunk": (_zarr("frames"), _load_tables, False, ("cut", "flip")),
    "zarr-mask-chunk": (_zarr("pseudo"), _load_tables, False, ("cut", "flip")),
    "parquet": (_parquet, _load_tables, False, ("cut", "flip")),
    # model files: cut only (torch's zip container has no checksum over the weights); another
    # part of the code (load_model) owns these, the cases stay here as the promise's check
    "model": (_model, _load_model_state, False, ("cut",)),
}
PROPERTY_CASES = [pytest.param(fmt, mode, i, id=f"{fmt}-{mode}-{i:02d}")
                  for fmt, (*_, modes) in FORMATS.items() for mode in modes
                  for i in range(N_OFFSETS)]

_REFERENCE: dict[str, object] = {}


def reference(fmt: str, movie, tmp_path_factory):
    """The command's output on the undamaged input (computed once per format)."""
    if fmt not in _REFERENCE:
        prepare, load, *_ = FORMATS[fmt]
        w = tmp_path_factory.mktemp(f"ref-{fmt}")
        _, argv, out = prepare(movie, w)
        assert cli(*argv) == 0, f"the undamaged {fmt} input fails"
        _REFERENCE[fmt] = (load(out), out)
    return _REFERENCE[fmt]


def assert_same_output(fmt, got, want, *, raw_flip: bool) -> None:
    if isinstance(want, np.ndarray):
        assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape)
        differ = int((got != want).sum())
        # a flipped byte inside raw pixels (DM/TIFF/NPY have no checksum) is one changed pixel
        assert differ == 0 or (raw_flip and differ == 1), f"{fmt}: {differ} pixels differ"
    elif isinstance(want, dict) and all(isinstance(v, pd.DataFrame) for v in want.values()):
        assert got.keys() == want.keys()
        for name in want:
            pd.testing.assert_frame_equal(got[name], want[name], obj=f"{fmt} {name}")
    else:
        assert got == want, fmt


@pytest.mark.parametrize("fmt, mode, i", PROPERTY_CASES)
def test_damaged_file_is_clean_error_or_correct_data(fmt, mode, i, movie, tmp_path,
                                                     tmp_path_factory, capsys):
    prepare, load, raw, _ = FORMATS[fmt]
    want, ref_out = reference(fmt, movie, tmp_path_factory)
    w = tmp_path / "w"
    w.mkdir()
    victim, argv, out = prepare(movie, w)
    copy(ref_out, out)                      # an existing output from an undamaged run
    offset = offsets(victim.stat().st_size)[i]
    cut(victim, offset) if mode == "cut" else flip(victim, offset)
    before = tree_hash(w)
    rc, err = run(capsys, *argv)
    if rc == 0:
        assert_same_output(fmt, load(out), want, raw_flip=raw and mode == "flip")
        if fmt == "model":   # the model loaded: it must be the original, byte for byte
            from etemseg.nn.checkpoint import load_model

            got, _ = load_model(victim)
            ref, _ = load_model(movie.model)
            for k, v in ref.state_dict().items():
                assert np.array_equal(got.state_dict()[k].numpy(), v.numpy()), k
        return
    named = [victim.name] if not fmt.startswith("zarr") else [victim.parents[4].name, "0/c/1/0/0"]
    assert_one_line_error(rc, err, *named)
    assert tree_hash(w) == before, "a failed run changed the work folder (inputs or outputs)"


def test_property_offsets_are_spread():
    o = offsets(1000)
    assert len(set(o)) == N_OFFSETS and o[0] == 0 and o[-1] == 999


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
