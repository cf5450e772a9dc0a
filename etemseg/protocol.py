"""The per-chunk stage protocol, written once.

Every per-chunk stage (ingest, pseudolabel, infer) has the same three modes, and Snakemake drives
the first two:

``--init``
    create the stage's empty output store(s) with all metadata (:meth:`ChunkStage.create`);
``--chunk K [--receipt R]``
    fill time chunk ``K`` of the existing stores and write the chunk's :class:`Receipt` last, so
    a job killed mid-write leaves no receipt and is rerun (:meth:`ChunkStage.run_chunk`);
whole movie (neither)
    create the stores under temporary names, fill every chunk, then rename them into place, so a
    failure leaves existing outputs untouched.

A stage says what its outputs are (:meth:`ChunkStage.outputs`: path and the stage attribute
that recognises its own previous store), and :func:`run` applies the output-path policy
(:func:`etemseg.io.atomic.guard_output`) before anything is written, in every mode that
creates stores.
"""

from __future__ import annotations

import contextlib
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from etemseg.errors import EtemsegError
from etemseg.io.atomic import atomic_path, guard_output, is_store_of, write_json

log = logging.getLogger(__name__)

#: How errors name a stage's store.
STORE_WORDS = {"ingest": "frame store", "pseudolabel": "pseudo-label store"}


@dataclass(frozen=True)
class Receipt:
    """What one per-chunk job did; its JSON is the file Snakemake tracks for the chunk.

    Parameters
    ----------
    stage : str
        ``ingest``, ``pseudolabel`` or ``infer``.
    store : str
        The store the chunk was written to.
    chunk, t0, t1 : int
        Time chunk index and its frame range ``[t0, t1)``.
    elapsed_s : float
        Wall time of the chunk, s.
    stats : dict
        Stage-specific facts (intensity range, coverage, thresholds, source files, ...).
    """

    stage: str
    store: str
    chunk: int
    t0: int
    t1: int
    elapsed_s: float
    stats: dict = field(default_factory=dict)

    @property
    def frames(self) -> int:
        return self.t1 - self.t0

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.elapsed_s if self.elapsed_s > 0 else float("inf")

    def to_dict(self) -> dict:
        """Flat JSON-ready dict: the common fields, then the stage's stats."""
        common = {"stage": self.stage, "store": self.store, "chunk": int(self.chunk),
                  "t0": int(self.t0), "t1": int(self.t1), "frames": int(self.frames),
                  "elapsed_s": round(float(self.elapsed_s), 3),
                  "frames_per_s": round(self.frames_per_s, 3)}
        return {**common, **{k: v for k, v in self.stats.items() if k not in common}}

    @classmethod
    def from_dict(cls, d: dict, *, stage: str | None = None, store: str | None = None
                  ) -> "Receipt":
        """A receipt from a stage function's result dict (``seconds`` is read as ``elapsed_s``;
        ``frames``/``frames_per_s`` are recomputed; everything else goes to :attr:`stats`)."""
        d = dict(d)
        elapsed = d.pop("elapsed_s", d.pop("seconds", 0.0))
        for key in ("frames", "frames_per_s"):
            d.pop(key, None)
        return cls(stage=d.pop("stage", stage) or stage, store=str(d.pop("store", store)),
                   chunk=int(d.pop("chunk")), t0=int(d.pop("t0")), t1=int(d.pop("t1")),
                   elapsed_s=float(elapsed), stats=d)

    def write(self, path: str | Path) -> Path:
        """Write the receipt atomically (the last thing a chunk job does)."""
        return write_json(self.to_dict(), path)


class ChunkStage(ABC):
    """The interface of a per-chunk stage: subclasses set :attr:`name` and implement every
    method (``IngestStage``, ``PseudolabelStage``, ``InferStage``)."""

    #: Stage name, as in receipts and ``ETEMSEG_FAULT``.
    name = ""

    @abstractmethod
    def inputs(self) -> list[Path]:
        """Everything the stage reads (an output may not be, contain or lie inside one)."""

    @abstractmethod
    def outputs(self) -> dict[Path, str]:
        """Output store path -> the ``etemseg.stage`` attribute such a store carries."""

    @abstractmethod
    def create(self, paths: dict[Path, Path]) -> None:
        """Create the empty output stores; ``paths`` maps each output to where to create it (the
        output itself, or its temporary sibling in whole-movie mode)."""

    @abstractmethod
    def n_chunks(self, paths: dict[Path, Path]) -> int:
        """Time chunks of the movie whose stores were created at ``paths``."""

    @abstractmethod
    def run_chunk(self, k: int, paths: dict[Path, Path] | None = None) -> Receipt:
        """Fill time chunk ``k`` of the stores at ``paths`` (default: the outputs themselves)."""


def check_receipt_path(path: Path | None) -> None:
    """Refuse an unwritable ``--receipt`` before a chunk job does its work, not after."""
    import os

    if path is None:
        return
    path = Path(path)
    folder = next((p for p in [path.parent, *path.parent.parents] if p.exists()), Path("."))
    if path.is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise EtemsegError(f"{path}: --receipt cannot be written there "
                           f"({'a folder' if path.is_dir() else f'{folder} is not writable'})")


def run(stage: ChunkStage, *, init: bool = False, chunk: int | None = None,
        receipt: Path | None = None) -> Receipt | None:
    """Run ``stage`` in one of its three modes (see the module docstring).

    Returns the chunk's receipt in ``--chunk`` mode, else None.
    """
    if chunk is not None:
        check_receipt_path(receipt)
        result = stage.run_chunk(chunk)
        if receipt is not None:
            result.write(receipt)
        log.info("%s chunk %d: frames %d..%d in %.1f s (%.2f frames/s)", stage.name, chunk,
                 result.t0, result.t1, result.elapsed_s, result.frames_per_s)
        return result
    for path, kind in stage.outputs().items():
        what = STORE_WORDS.get(kind, f"{kind} store")
        guard_output(path, inputs=stage.inputs(), own=is_store_of(kind), what=what)
    if init:
        stage.create({p: p for p in stage.outputs()})
        return None
    with contextlib.ExitStack() as stack:
        tmp = {p: stack.enter_context(atomic_path(p, directory=True)) for p in stage.outputs()}
        stage.create(tmp)
        for k in range(stage.n_chunks(tmp)):
            stage.run_chunk(k, tmp)
    log.info("%s: wrote %s", stage.name, ", ".join(map(str, stage.outputs())))
    return None


__all__ = ["ChunkStage", "Receipt", "check_receipt_path", "run"]
