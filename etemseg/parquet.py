"""Parquet conventions for every table etemseg writes.

zstd compression, atomic writes, the unit of each column both in its name (``x_nm``, ``time_s``)
and in the field metadata (``{"unit": "nm"}``), and provenance JSON in the schema metadata key
``etemseg``. Tables carry ``movie`` and ``model`` columns, so one glob reads every movie and model:
``pandas.read_parquet(path)`` per file or folder, ``polars.read_parquet("results/*/*/trajectories.parquet")``,
``duckdb.sql("select * from 'results/*/*/trajectories.parquet'")``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from .atomic import atomic_path

#: Column-name suffix -> unit, longest suffix first.
SUFFIX_UNITS = (
    ("_per_s_per_um2", "1/(s*um^2)"), ("_per_um2", "1/um^2"), ("_per_s", "1/s"),
    ("_nm3_per_s", "nm^3/s"), ("_nm2", "nm^2"), ("_nm3", "nm^3"), ("_nm", "nm"),
    ("_px", "px"), ("_s", "s"), ("_rad", "rad"), ("_um2", "um^2"),
)


def unit_of(column: str) -> str | None:
    """Unit implied by a column name's suffix (None for unitless columns)."""
    for suffix, unit in SUFFIX_UNITS:
        if column.endswith(suffix):
            return unit
    return None


def write_table(df: pd.DataFrame, path: str | Path, *, metadata: dict | None = None,
                schema: pa.Schema | None = None) -> Path:
    """Write ``df`` atomically as zstd Parquet with per-column units and provenance.

    Parameters
    ----------
    schema : pyarrow.Schema, optional
        Fixed schema (so empty tables keep their types); default inferred from ``df``.
    """
    table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
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
        pq.write_table(table, tmp, compression="zstd")
    return path
