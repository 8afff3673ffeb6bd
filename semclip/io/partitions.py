"""Predictions: one hive partition ``predictions/date=<date>/`` per raw date, rewritten as a union.

Re-running a date rewrites its partition as the rows already there that are still valid
plus the new ones (:func:`write_partition`): nothing is lost, nothing duplicated.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as ds
from fsspec import AbstractFileSystem
from pyarrow.fs import FSSpecHandler, PyFileSystem

from semclip.io.bucket import find_files
from semclip.io.pipeline_schema import PARTITION_FIELD, PIPELINE_PREDICTION_SCHEMA
from semclip.io.schema import validate_table
from semclip.io.tables import parquet_files, read_parquet_files, row_keys

__all__ = [
    "PartitionWrite",
    "existing_keys",
    "predictions_dataset",
    "read_partition",
    "write_partition",
]


_KEY_COLUMNS = ("image_sha256", "model_version")


@dataclass(frozen=True)
class PartitionWrite:
    """What :func:`write_partition` did, for the flow's run report."""

    uri: str  # the partition folder
    rows_new: int  # rows of the new table
    rows_kept: int  # earlier rows carried over (their key is not in the new table)
    rows_replaced: int  # earlier rows superseded by a new row with the same key
    files: tuple[str, ...] = ()  # Parquet files now in the partition

    @property
    def rows_total(self) -> int:
        return self.rows_new + self.rows_kept


def read_partition(
    fs: AbstractFileSystem, root: str, run_date: dt.date, columns: Sequence[str] | None = None
) -> pa.Table:
    """The ``predictions/date=<run_date>/`` rows with :data:`PIPELINE_PREDICTION_SCHEMA`.

    The hive key ``date`` is not a column here (it is the folder). Files written before a
    column was added read with that column null, since the declared schema is imposed.
    """
    return read_parquet_files(
        fs, _partition_path(root, run_date), PIPELINE_PREDICTION_SCHEMA, columns
    )


def existing_keys(fs: AbstractFileSystem, root: str, run_date: dt.date) -> set[tuple[str, str]]:
    """``(image_sha256, model_version)`` already predicted for ``run_date``: skip these."""
    table = read_partition(fs, root, run_date, columns=list(_KEY_COLUMNS))
    return {
        (sha, version)
        for sha, version in zip(*(table.column(c).to_pylist() for c in _KEY_COLUMNS), strict=True)
        if sha is not None
    }


def write_partition(
    fs: AbstractFileSystem,
    root: str,
    run_date: dt.date,
    table: pa.Table,
    *,
    key_columns: Sequence[str] = _KEY_COLUMNS,
) -> PartitionWrite:
    """Rewrite the date's partition as the union of its current rows and ``table``.

    A current row survives unless ``table`` has a row with the same key (new rows win);
    a current row without an image hash (it failed to read) is also replaced by a new row
    for the same ``image_uri`` and model version. The partition is then written with
    ``existing_data_behavior="delete_matching"``, so no file of an earlier run remains.
    Re-running with the same rows is therefore a no-op in content and never duplicates.

    One writer per date at a time: two concurrent writers each keep only their own union.
    Raises ``ValueError`` if ``table`` does not match the schema or repeats a key.
    """
    validate_table(table, schema=PIPELINE_PREDICTION_SCHEMA)
    table = pa.Table.from_arrays(table.columns, schema=PIPELINE_PREDICTION_SCHEMA)
    new_keys = row_keys(table, key_columns)
    if len(set(new_keys)) != len(new_keys):
        dupes = sorted({k for k in new_keys if new_keys.count(k) > 1}, key=str)[:3]
        raise ValueError(f"new predictions repeat key(s) {dupes} of {tuple(key_columns)}")
    folder = _partition_path(root, run_date)
    if table.num_rows == 0:
        return PartitionWrite(fs.unstrip_protocol(folder), 0, 0, 0, parquet_files(fs, folder))
    current = read_partition(fs, root, run_date)
    keep = _rows_to_keep(current, table, key_columns)
    merged = pa.concat_tables([current.filter(pa.array(keep, pa.bool_())), table])
    merged = merged.sort_by([("image_uri", "ascending"), ("model_version", "ascending")])
    _write_hive(fs, root, run_date, merged)
    kept = sum(keep)
    return PartitionWrite(
        uri=fs.unstrip_protocol(folder),
        rows_new=table.num_rows,
        rows_kept=kept,
        rows_replaced=current.num_rows - kept,
        files=parquet_files(fs, folder),
    )


def predictions_dataset(fs: AbstractFileSystem, root: str) -> ds.Dataset:
    """Every prediction partition as one dataset: the declared schema plus ``date`` (date32).

    Use this rather than hive discovery, which would type ``date`` as a string and guess
    the other columns from whichever file it opens first.
    """
    folder = f"{root}/predictions"
    files = [p for p in find_files(fs, folder) if p.endswith(".parquet")]
    return ds.dataset(
        files,
        schema=pa.schema([*PIPELINE_PREDICTION_SCHEMA, PARTITION_FIELD]),
        format="parquet",
        filesystem=PyFileSystem(FSSpecHandler(fs)),
        partitioning=_hive_partitioning(),
        partition_base_dir=folder,
    )


def _hive_partitioning() -> ds.Partitioning:
    return ds.partitioning(pa.schema([PARTITION_FIELD]), flavor="hive")


def _rows_to_keep(current: pa.Table, new: pa.Table, key_columns: Sequence[str]) -> list[bool]:
    new_keys = set(row_keys(new, key_columns))
    new_uris = set(row_keys(new, ("image_uri", "model_version")))
    current_uris = row_keys(current, ("image_uri", "model_version"))
    hashes = current.column("image_sha256").to_pylist()
    current_keys = row_keys(current, key_columns)
    return [
        key not in new_keys and not (sha is None and uri_key in new_uris)
        for key, uri_key, sha in zip(current_keys, current_uris, hashes, strict=True)
    ]


def _write_hive(fs: AbstractFileSystem, root: str, run_date: dt.date, table: pa.Table) -> None:
    dates = pa.array([run_date] * table.num_rows, type=PARTITION_FIELD.type)
    with_date = table.append_column(PARTITION_FIELD, dates)
    ds.write_dataset(
        with_date,
        base_dir=f"{root}/predictions",
        filesystem=PyFileSystem(FSSpecHandler(fs)),
        format="parquet",
        partitioning=_hive_partitioning(),
        existing_data_behavior="delete_matching",
        basename_template=f"part-{uuid.uuid4().hex}-{{i}}.parquet",
        use_threads=False,
    )
    fs.invalidate_cache()


def _partition_path(root: str, run_date: dt.date) -> str:
    return f"{root}/predictions/date={run_date.isoformat()}"
