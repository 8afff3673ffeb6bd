"""Folders of Parquet files in the bucket, read with a declared schema.

Parquet is read with ``use_threads=False``: this pyarrow build can abort at interpreter exit
after threaded reads, and the folders (a date's partition or quarantine) are small enough not
to need threads.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from semclip.io.bucket import find_files

__all__ = [
    "CorruptParquetError",
    "conform_table",
    "parquet_files",
    "read_parquet_file",
    "read_parquet_files",
    "row_keys",
]

log = logging.getLogger(__name__)


class CorruptParquetError(ValueError):
    """A file's bytes arrived whole but are not readable Parquet: bad data, never retried."""


def parquet_files(fs: AbstractFileSystem, folder: str) -> tuple[str, ...]:
    """URIs of the Parquet files below ``folder``, sorted (fresh listing)."""
    return tuple(fs.unstrip_protocol(p) for p in find_files(fs, folder) if p.endswith(".parquet"))


def read_parquet_file(fs: AbstractFileSystem, path: str, schema: pa.Schema) -> pa.Table:
    """One Parquet file as a table with exactly ``schema``'s columns (null where missing).

    The bytes are fetched first and parsed from memory, so the two failures stay apart: a
    network or disk error while fetching propagates as the ``OSError`` it is (the I/O retry
    policy retries it), while anything the parser refuses, a cut-short file or a damaged
    data page alike (pyarrow says ``ArrowInvalid`` for one and ``OSError: Couldn't
    deserialize thrift`` for the other), is :class:`CorruptParquetError` naming the file.
    """
    with fs.open(path, "rb") as f:
        data = f.read()
    try:
        parquet = pq.ParquetFile(pa.BufferReader(data))
        present = [n for n in schema.names if n in parquet.schema_arrow.names]
        raw = parquet.read(columns=present, use_threads=False)
    except (pa.ArrowException, OSError) as exc:
        raise CorruptParquetError(
            f"{fs.unstrip_protocol(path)} is not readable Parquet ({type(exc).__name__}: {exc})"
        ) from exc
    return conform_table(raw, schema)


def conform_table(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns: cast where present, null where missing."""
    arrays = [
        table.column(f.name).cast(f.type)
        if f.name in table.column_names
        else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def read_parquet_files(
    fs: AbstractFileSystem,
    folder: str,
    schema: pa.Schema,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """Every Parquet file below ``folder`` as one table with ``schema`` imposed (only
    ``columns`` if given); an empty table with the schema when there is none.

    A file that is not readable Parquet is left out with an error log naming it: one
    damaged file must not make the whole folder (a date's quarantine) unreadable forever.
    """
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)
    tables = []
    for path in find_files(fs, folder):
        if not path.endswith(".parquet"):
            continue
        try:
            tables.append(read_parquet_file(fs, path, schema))
        except CorruptParquetError as exc:
            log.error("%s; left out of %s", exc, fs.unstrip_protocol(folder))
    return pa.concat_tables(tables) if tables else schema.empty_table()


def row_keys(table: pa.Table, columns: Sequence[str]) -> list[tuple[Any, ...]]:
    """One tuple of ``columns`` values per row: the key a dedupe compares."""
    return list(zip(*(table.column(c).to_pylist() for c in columns), strict=True))
