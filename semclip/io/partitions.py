"""Predictions: one hive partition ``predictions/date=<date>/`` per raw date, rewritten as a union.

Re-running a date rewrites its partition as the rows already there that are still valid
plus the new ones (:func:`write_partition`): nothing is lost, nothing duplicated.

Each partition is one object with a fixed name, ``predictions/date=<date>/part-0.parquet``,
replaced whole (:func:`semclip.io.staging.replace_atomically`: staged under ``_staging/``,
then one rename or one server-side copy). At every instant the partition holds the old rows
or the new ones in full: a kill or a full disk during the write leaves the old object.

Partitions written before this layout hold several ``part-<uuid>-<i>.parquet`` files; they
are read as the partition until the next write of that date, which folds their rows into
``part-0.parquet`` and then deletes them. Once ``part-0.parquet`` exists it alone is the
partition (any other file there is a superseded leftover of that migration, deleted on the
next write), so readers never count a row twice.

A file that is not readable Parquet (a truncated file of the old writer) is skipped by the
readers with an error log naming it, so its images are predicted again, and moved by the
next write to ``quarantine/corrupt/date=<date>/`` so that it never breaks a query again.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as ds
from fsspec import AbstractFileSystem
from pyarrow.fs import FSSpecHandler, PyFileSystem

from semclip.io.bucket import find_files
from semclip.io.pipeline_schema import PARTITION_FIELD, PIPELINE_PREDICTION_SCHEMA
from semclip.io.schema import validate_table
from semclip.io.staging import (
    ORPHAN_GRACE,
    STALE_GRACE,
    parquet_bytes,
    replace_atomically,
    staging_path,
    sweep_orphans,
)
from semclip.io.tables import CorruptParquetError, parquet_files, read_parquet_file, row_keys

__all__ = [
    "CORRUPT_DIR",
    "PART_FILE",
    "PartitionWrite",
    "existing_keys",
    "live_files",
    "predictions_dataset",
    "quarantine_corrupt_file",
    "read_partition",
    "write_partition",
]

log = logging.getLogger(__name__)

PART_FILE = "part-0.parquet"  # the one object of a partition in the current layout
CORRUPT_DIR = "quarantine/corrupt"  # unreadable partition files, moved aside by date
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


def live_files(fs: AbstractFileSystem, root: str, run_date: dt.date) -> tuple[list[str], list[str]]:
    """``(live, superseded)`` Parquet paths of the date's partition (fresh listing).

    Live: ``part-0.parquet`` when it exists, else every Parquet file there (the old layout).
    Superseded: the other files beside ``part-0.parquet``, already folded into it.
    """
    files = [p for p in find_files(fs, _partition_path(root, run_date)) if p.endswith(".parquet")]
    return _split_live(files)


def read_partition(
    fs: AbstractFileSystem, root: str, run_date: dt.date, columns: Sequence[str] | None = None
) -> pa.Table:
    """The ``predictions/date=<run_date>/`` rows with :data:`PIPELINE_PREDICTION_SCHEMA`.

    The hive key ``date`` is not a column here (it is the folder). Files written before a
    column was added read with that column null, since the declared schema is imposed. A
    corrupt file is skipped with an error log (see the module doc), never fatal here.
    """
    table, _ = _read_live(fs, root, run_date, columns)
    return table


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
    orphan_grace: dt.timedelta = ORPHAN_GRACE,
) -> PartitionWrite:
    """Replace the date's partition by the union of its current rows and ``table``, atomically.

    A current row survives unless ``table`` has a row with the same key (new rows win);
    a current row without an image hash (it failed to read) is also replaced by a new row
    for the same ``image_uri`` and model version. Re-running with the same rows is therefore
    a no-op in content and never duplicates. The union is written as the single object
    ``part-0.parquet`` through a staged copy (module doc): a failure at any point leaves the
    old rows in full. Afterwards files of the old layout are deleted, corrupt files are moved
    to ``quarantine/corrupt/``, and staged orphans of this date older than ``orphan_grace``
    (of other dates: older than :data:`~semclip.io.staging.STALE_GRACE`) are swept.

    One writer per date at a time: two concurrent writers of a date each keep only their own
    union (the nightly flow holds a per-date lock around read and write for this).
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
    current, read = _read_live(fs, root, run_date, None)
    for path in read.corrupt:
        quarantine_corrupt_file(fs, root, run_date, path)
    keep = _rows_to_keep(current, table, key_columns)
    merged = pa.concat_tables([current.filter(pa.array(keep, pa.bool_())), table])
    merged = merged.sort_by([("image_uri", "ascending"), ("model_version", "ascending")])
    final = f"{folder}/{PART_FILE}"
    staged = staging_path(root, "predictions", run_date, PART_FILE)
    replace_atomically(fs, staged, final, parquet_bytes(merged), merged.num_rows)
    for path in [*read.files, *read.superseded]:  # now inside part-0.parquet
        if path != final:
            fs.rm(path)
    sweep_orphans(fs, root, grace=orphan_grace, dates=[run_date])  # the date we hold
    sweep_orphans(fs, root, grace=max(orphan_grace, STALE_GRACE))  # maybe a live run's
    kept = sum(keep)
    return PartitionWrite(
        uri=fs.unstrip_protocol(folder),
        rows_new=table.num_rows,
        rows_kept=kept,
        rows_replaced=current.num_rows - kept,
        files=parquet_files(fs, folder),
    )


def quarantine_corrupt_file(fs: AbstractFileSystem, root: str, run_date: dt.date, path: str) -> str:
    """Move an unreadable partition file to ``quarantine/corrupt/date=<date>/``; its new URI.

    Logged as an error naming both places: the rows in it are gone (their images are
    predicted again by the run that found it), the bytes are kept for a post-mortem.
    """
    name = path.rsplit("/", 1)[-1]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")  # one per move, sortable
    target = f"{root}/{CORRUPT_DIR}/date={run_date.isoformat()}/{stamp}-{name}"
    fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
    fs.mv(path, target)
    fs.invalidate_cache()
    log.error(
        "corrupt Parquet file %s in partition date=%s moved to %s; its images are predicted "
        "again by this or the next run of that date",
        fs.unstrip_protocol(path),
        run_date.isoformat(),
        fs.unstrip_protocol(target),
    )
    return fs.unstrip_protocol(target)


def predictions_dataset(fs: AbstractFileSystem, root: str) -> ds.Dataset:
    """Every prediction partition as one dataset: the declared schema plus ``date`` (date32).

    Use this rather than hive discovery, which would type ``date`` as a string and guess
    the other columns from whichever file it opens first. Only the live files of each
    partition are included (see :func:`live_files`).
    """
    folder = f"{root}/predictions"
    by_partition: dict[str, list[str]] = {}
    for path in find_files(fs, folder):
        if path.endswith(".parquet"):
            by_partition.setdefault(path.rsplit("/", 1)[0], []).append(path)
    files = [p for group in by_partition.values() for p in _split_live(group)[0]]
    return ds.dataset(
        files,
        schema=pa.schema([*PIPELINE_PREDICTION_SCHEMA, PARTITION_FIELD]),
        format="parquet",
        filesystem=PyFileSystem(FSSpecHandler(fs)),
        partitioning=_hive_partitioning(),
        partition_base_dir=folder,
    )


@dataclass(frozen=True)
class _Read:
    files: list[str]  # live files read
    superseded: list[str]  # beside part-0.parquet, not read
    corrupt: list[str]  # live files that are not readable Parquet


def _split_live(files: Sequence[str]) -> tuple[list[str], list[str]]:
    fixed = [p for p in files if p.rsplit("/", 1)[-1] == PART_FILE]
    if fixed:
        return fixed, [p for p in files if p not in fixed]
    return list(files), []


def _read_live(
    fs: AbstractFileSystem, root: str, run_date: dt.date, columns: Sequence[str] | None
) -> tuple[pa.Table, _Read]:
    schema = PIPELINE_PREDICTION_SCHEMA
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)
    live, superseded = live_files(fs, root, run_date)
    tables, corrupt = _read_files(fs, live, schema)
    if corrupt and superseded and len(corrupt) == len(live):
        # part-0.parquet itself is unreadable: the files it superseded are the best left
        more, corrupt_more = _read_files(fs, superseded, schema)
        tables, corrupt, live, superseded = more, corrupt + corrupt_more, superseded, []
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    return table, _Read([p for p in live if p not in corrupt], superseded, corrupt)


def _read_files(
    fs: AbstractFileSystem, paths: Sequence[str], schema: pa.Schema
) -> tuple[list[pa.Table], list[str]]:
    tables, corrupt = [], []
    for path in paths:
        try:
            tables.append(read_parquet_file(fs, path, schema))
        except CorruptParquetError as exc:  # bad bytes, not a transient error
            log.error(
                "corrupt Parquet file skipped: %s; the next write of the date moves it to %s/",
                exc,
                CORRUPT_DIR,
            )
            corrupt.append(path)
    return tables, corrupt


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


def _partition_path(root: str, run_date: dt.date) -> str:
    return f"{root}/predictions/date={run_date.isoformat()}"
