"""Folders of Parquet files in the bucket, read with a declared schema.

Parquet is read with ``use_threads=False``: this pyarrow build can abort at interpreter exit
after threaded reads, and the folders (a date's partition or quarantine) are small enough not
to need threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
from fsspec import AbstractFileSystem
from pyarrow.fs import FSSpecHandler, PyFileSystem

from semclip.io.bucket import find_files

__all__ = ["parquet_files", "read_parquet_files", "row_keys"]


def parquet_files(fs: AbstractFileSystem, folder: str) -> tuple[str, ...]:
    """URIs of the Parquet files below ``folder``, sorted (fresh listing)."""
    return tuple(fs.unstrip_protocol(p) for p in find_files(fs, folder) if p.endswith(".parquet"))


def read_parquet_files(
    fs: AbstractFileSystem,
    folder: str,
    schema: pa.Schema,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """Every Parquet file below ``folder`` as one table with ``schema`` imposed (only
    ``columns`` if given); an empty table with the schema when there is none."""
    files = [p for p in find_files(fs, folder) if p.endswith(".parquet")]
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)
    if not files:
        return schema.empty_table()
    dataset = ds.dataset(
        files, schema=schema, format="parquet", filesystem=PyFileSystem(FSSpecHandler(fs))
    )
    return dataset.to_table(use_threads=False)


def row_keys(table: pa.Table, columns: Sequence[str]) -> list[tuple[Any, ...]]:
    """One tuple of ``columns`` values per row: the key a dedupe compares."""
    return list(zip(*(table.column(c).to_pylist() for c in columns), strict=True))
