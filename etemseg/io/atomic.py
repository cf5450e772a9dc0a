"""Atomic output: write to a temporary sibling, then rename over the target.

A job killed mid-write leaves at most a ``.tmp-*`` sibling behind, never a truncated output that
looks complete, and an existing output is only replaced once the new one is whole.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(target: str | Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success rename it onto ``target``.

    Parameters
    ----------
    target : path
        Final file (or directory, with ``directory=True``) to produce.
    directory : bool
        Create the temporary path as an empty directory; an existing target directory is replaced
        only after the new one is complete.

    On any exception the temporary path is removed and ``target`` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
        os.close(fd)
        tmp = Path(name)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        if directory:
            old = None
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
                os.rename(target, old / "x")
            os.rename(tmp, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise


def write_json(obj, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON atomically (job receipts, scores, summaries)."""
    import json

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    return path


def _resolved(path: str | Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser().resolve(strict=False)))


def guard_output(target: str | Path, *, inputs=(), own=None, what: str = "output") -> Path:
    """The output-path policy of every stage: refuse to replace anything that is not our own.

    A stage may replace ``target`` only if nothing is there yet (or an empty folder), or if
    ``own(target)`` recognises it as this stage's previous output (a store with its stage
    attribute, a Parquet file with etemseg metadata, a folder holding only the stage's own
    files). An output that is, contains or lies inside one of ``inputs`` is refused as well
    (``etemseg ingest raw raw`` must never delete the frames). Call it before any write; it
    raises :class:`~etemseg.errors.OutputPathError`, a one-line error naming the path, and
    touches nothing.

    Parameters
    ----------
    target : path
        The file or folder the stage is about to write (or replace).
    inputs : iterable of paths
        Everything the stage reads (frame folder, stores, model file).
    own : callable(Path) -> bool, optional
        Recogniser of this stage's previous output; without it an existing ``target`` is refused.
    what : str
        Words for the error message ("pseudo-label store", "particle table", ...).
    """
    from etemseg.errors import OutputPathError

    target = Path(target)
    resolved = _resolved(target)
    for inp in inputs:
        if inp is None:
            continue
        source = _resolved(inp)
        if resolved == source:
            raise OutputPathError(target, f"is also an input; writing the {what} there would "
                                          "destroy it. Choose another output path")
        if source in resolved.parents:
            raise OutputPathError(target, f"lies inside the input {inp}; choose an output path "
                                          "outside it")
        if resolved in source.parents:
            raise OutputPathError(target, f"contains the input {inp}; writing the {what} there "
                                          "would destroy it. Choose another output path")
    if not (target.exists() or target.is_symlink()):
        return target
    if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
        return target          # nothing to lose (Snakemake creates a store's folder beforehand)
    if own is not None:
        try:
            if own(target):
                return target
        except (OSError, ValueError):
            pass
    kind = "folder" if target.is_dir() else "file"
    raise OutputPathError(target, f"an existing {kind} that is not a previous etemseg {what}; "
                                  "refusing to replace it (move it away or choose another path)")


#: What a movie store folder holds (see etemseg.io.store).
STORE_PARTS = ("0", "time_s", "frame_index", "sources", "source_pages")


def is_store_of(*stages: str):
    """Recogniser for :func:`guard_output`: a Zarr store whose ``etemseg.stage`` attribute is one
    of ``stages`` (stores written by earlier versions without a stage: ``ingest`` stores are
    recognised by their ``source`` attribute; a store whose ``zarr.json`` Snakemake removed
    before a rerun by its layout)."""
    import json

    def own(path: Path) -> bool:
        path = Path(path)
        if not (path / "zarr.json").exists():
            # Snakemake deletes a rule's declared output (the store's zarr.json) before rerunning
            # it: what is left is a headless store, recognised by its layout
            return (path / "0" / "zarr.json").is_file() and all(
                p.name in STORE_PARTS or p.name.startswith(".") for p in path.iterdir())
        meta = json.loads((path / "zarr.json").read_text())
        block = meta.get("attributes", {}).get("etemseg", {})
        stage = block.get("stage") or ("ingest" if "source" in block else None)
        return stage in stages

    return own


def is_etemseg_parquet(path: Path) -> bool:
    """Recogniser for :func:`guard_output`: a Parquet file whose schema carries etemseg metadata."""
    import pyarrow.parquet as pq

    if not Path(path).is_file():
        return False
    try:
        return b"etemseg" in (pq.read_schema(path).metadata or {})
    except Exception:  # noqa: BLE001 - any unreadable file is simply "not ours"
        return False


def holds_only(*names: str):
    """Recogniser for :func:`guard_output`: a folder holding nothing but ``names`` (a stage's own
    files) and hidden temporary siblings left by a killed write."""

    def own(path: Path) -> bool:
        path = Path(path)
        return path.is_dir() and all(p.name in names or p.name.startswith(".")
                                     for p in path.iterdir())

    return own


def guard_file_output(target: str | Path | None, *, inputs=(), suffix: str) -> None:
    """:func:`guard_output` for a single-file product (a JSON score, a PNG, a CSV): an existing
    regular file with ``suffix`` may be replaced; a folder, another kind of file, or an input is
    refused. ``None`` (option not given) passes."""
    if target is None:
        return
    guard_output(target, inputs=inputs, what=f"{suffix} file",
                 own=lambda p: Path(p).is_file() and Path(p).suffix.lower() == suffix)
