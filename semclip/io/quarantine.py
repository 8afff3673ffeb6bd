"""Inputs that could not be used: ``quarantine/date=<date>/<uuid>.parquet``, with the reason."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
from fsspec import AbstractFileSystem

from semclip.io.pipeline_schema import QUARANTINE_SCHEMA, quarantine_records_to_table
from semclip.io.staging import parquet_bytes, replace_atomically, staging_path
from semclip.io.tables import read_parquet_files, row_keys

__all__ = ["QUARANTINE_KEY", "read_quarantine", "write_quarantine"]


QUARANTINE_KEY = ("image_uri", "reason")  # one row per broken input and reason, per date


def write_quarantine(
    fs: AbstractFileSystem, root: str, run_date: dt.date, rows: Iterable[Mapping[str, Any]]
) -> str | None:
    """Append ``rows`` (image_uri, reason, flow_run_id, quarantined_at) as a new file.

    One new file per call, so concurrent shards never overwrite each other. Rows the date
    already records (same image_uri and reason) are not written again: a re-run or backfill
    of the date leaves one row per broken input, stamped by the run that first met it, and
    a count over the folder stays a count of inputs. Returns the new file's URI, or ``None``
    when there was nothing new to write. ``quarantined_at`` defaults to now.

    The file is staged and swapped in whole (:func:`semclip.io.staging.replace_atomically`):
    a full disk or a kill mid-write leaves no cut-short file for every later read of the
    date to trip on, and the caller gets the write's own error. A damaged file already
    there is left out of the reads with an error log (:func:`read_parquet_files`), so its
    inputs are recorded again rather than the date failing forever.
    """
    table = quarantine_records_to_table(rows)
    if table.num_rows == 0:
        return None
    folder = f"{root}/quarantine/date={run_date.isoformat()}"
    known = read_parquet_files(fs, folder, QUARANTINE_SCHEMA, QUARANTINE_KEY)
    if known.num_rows:
        seen = set(row_keys(known, QUARANTINE_KEY))
        fresh = [key not in seen for key in row_keys(table, QUARANTINE_KEY)]
        table = table.filter(pa.array(fresh, type=pa.bool_()))
        if table.num_rows == 0:
            return None
    name = f"{uuid.uuid4().hex}.parquet"
    path = f"{folder}/{name}"
    fs.makedirs(folder, exist_ok=True)
    staged = staging_path(root, "quarantine", run_date, name)
    replace_atomically(fs, staged, path, parquet_bytes(table), table.num_rows)
    return fs.unstrip_protocol(path)


def read_quarantine(fs: AbstractFileSystem, root: str, run_date: dt.date) -> pa.Table:
    """All quarantine rows of ``run_date`` (empty table with the schema if none)."""
    return read_parquet_files(
        fs, f"{root}/quarantine/date={run_date.isoformat()}", QUARANTINE_SCHEMA
    )
