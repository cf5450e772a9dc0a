"""Parquet conventions for every table etemseg writes.

zstd compression, atomic writes, the unit of each column both in its name (``x_nm``, ``time_s``)
and in the field metadata (``{"unit": "nm"}``), and provenance JSON in the schema metadata key
``etemseg``. Tables carry ``movie`` and ``model`` columns, so one glob reads every movie and model:
``pandas.read_parquet(path)`` per file or folder,
``polars.read_parquet("results/*/*/trajectories.parquet")``,
``duckdb.sql("select * from 'results/*/*/trajectories.parquet'")``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from etemseg import __version__
from etemseg.io.atomic import atomic_path
from etemseg.layout import TRACK_TABLES  # the tables `etemseg track` writes as one set

#: Column-name suffix -> unit, longest suffix first.
SUFFIX_UNITS = (   # longest first: the first suffix that matches wins
    ("_per_s_per_um2", "1/(s*um^2)"), ("_nm3_per_s", "nm^3/s"), ("_nm2_per_s", "nm^2/s"),
    ("_per_um2", "1/um^2"), ("_per_s", "1/s"), ("_nm2", "nm^2"), ("_nm3", "nm^3"),
    ("_nm", "nm"), ("_px", "px"), ("_s", "s"), ("_rad", "rad"), ("_um2", "um^2"),
)


def unit_of(column: str) -> str | None:
    """Unit implied by a column name's suffix (None for unitless columns)."""
    for suffix, unit in SUFFIX_UNITS:
        if column.endswith(suffix):
            return unit
    return None


def write_table(df: pd.DataFrame | pa.Table, path: str | Path, *, metadata: dict | None = None,
                schema: pa.Schema | None = None) -> Path:
    """Write a table atomically as zstd Parquet with per-column units, provenance and page
    checksums: the one Parquet writer of etemseg (particles, tracks, events, truth tables).

    Parameters
    ----------
    df : pandas.DataFrame or pyarrow.Table
        The table.
    path : path
        Destination ``.parquet`` file (written to a temporary sibling, then renamed).
    metadata : dict, optional
        Provenance stored as JSON under the schema metadata key ``etemseg``.
    schema : pyarrow.Schema, optional
        Fixed schema (so empty tables keep their types); default inferred from ``df``.
    """
    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, schema=schema,
                                                                       preserve_index=False)
    fields = []
    for field in table.schema:
        meta = dict(field.metadata or {})
        unit = unit_of(field.name)
        if unit and b"unit" not in meta:
            meta[b"unit"] = unit.encode()
        fields.append(field.with_metadata(meta))
    info = {"etemseg_version": __version__, **(metadata or {})}
    schema_meta = dict(table.schema.metadata or {})
    schema_meta[b"etemseg"] = json.dumps(info, default=str).encode()
    table = table.cast(pa.schema(fields, metadata=schema_meta))
    path = Path(path)
    with atomic_path(path) as tmp:
        # page checksums: a flipped bit in the data is an error on reading, not a wrong value
        pq.write_table(table, tmp, compression="zstd", write_page_checksum=True)
    return path





def write_table_set(folder: str | Path, tables: dict, *, metadata: dict | None = None) -> str:
    """Write several tables as one unit: all or none are replaced.

    Every table is written completely to a temporary sibling first; only then are they renamed
    into place, one after the other (microseconds apart). Each carries the same ``set_id`` in its
    ``etemseg`` metadata (a digest of the tables, so identical runs write identical files), and a
    reader (:func:`read_table_set`) detects the one remaining way to get a mixed set (a death
    between two renames) and refuses it instead of mixing runs.

    Parameters
    ----------
    folder : path
        Destination folder; tables land as ``folder/{name}.parquet``.
    tables : dict
        ``name -> (DataFrame, pyarrow.Schema or None)``.
    metadata : dict, optional
        Provenance shared by every table.

    Returns
    -------
    str
        The set id.
    """
    import contextlib
    import hashlib
    import os

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # the id is a digest of the content, so identical runs write identical bytes
    digest = hashlib.sha256(json.dumps(metadata or {}, sort_keys=True, default=str).encode())
    for name in sorted(tables):
        df, schema = tables[name]
        sink = pa.BufferOutputStream()
        table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
        with pa.ipc.new_stream(sink, table.schema) as stream:    # list columns hash too
            stream.write_table(table)
        digest.update(name.encode())
        digest.update(sink.getvalue())
    set_id = digest.hexdigest()[:32]
    meta = {**(metadata or {}), "set_id": set_id, "set": sorted(tables)}
    staged = []
    try:
        for name, (df, schema) in tables.items():
            tmp = folder / f".{name}.parquet.set-{set_id}"
            write_table(df, tmp, metadata=meta, schema=schema)
            staged.append((tmp, folder / f"{name}.parquet"))
        for tmp, final in staged:
            os.replace(tmp, final)
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise
    return set_id


def read_table_set(folder: str | Path, names=TRACK_TABLES) -> dict[str, pd.DataFrame]:
    """Read tables written by :func:`write_table_set`, refusing a missing, unreadable or mixed set.

    Raises :class:`~etemseg.errors.InputFileError` naming the file (one line at the CLI).
    """
    from etemseg.errors import InputFileError

    folder = Path(folder)
    out, ids = {}, {}
    for name in names:
        path = folder / f"{name}.parquet"
        if not path.is_file():
            raise InputFileError(path, "missing; run `etemseg track` first")
        try:
            meta = json.loads((pq.read_schema(path).metadata or {}).get(b"etemseg", b"{}"))
            out[name] = pd.read_parquet(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for damaged files
            raise InputFileError(path, f"not a readable Parquet table ({type(exc).__name__}: "
                                       f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
        ids[name] = meta.get("set_id")
    if len({i for i in ids.values() if i is not None}) > 1:
        raise InputFileError(folder, "its tables come from different runs of `etemseg track` "
                                     f"(set ids {ids}); rerun `etemseg track`")
    return out
