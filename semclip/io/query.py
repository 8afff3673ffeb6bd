"""SQL over the prediction partitions with DuckDB, on any fsspec bucket (file:// or s3://).

DuckDB cannot download its S3 extension offline, so the bucket's own fsspec filesystem is
registered with DuckDB and the Parquet files are read through it. Queries name the files
of the dates they need, so a damaged file of one date never breaks a query of another.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from semclip.io.bucket import find_files
from semclip.io.partitions import CORRUPT_DIR, live_files

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DateSummary:
    """What a person wants first from a night's predictions."""

    rows: int
    by_class: dict[str, int]
    by_lot_wafer: dict[str, dict[str, int]]  # "lot/wafer" -> class -> count
    needs_review: int
    model_versions: list[str]


class CorruptPredictionFileError(ValueError):
    """A prediction file of a date the query asked for is not readable Parquet."""


def prediction_files(
    fs: fsspec.AbstractFileSystem, root: str, dates: Sequence[dt.date] | None = None
) -> list[str]:
    """URIs of the live prediction files of ``dates`` (all dates when ``None``), checked.

    Only the requested dates' partitions are listed, so a broken file of another date never
    breaks this query. Each file's Parquet footer is read (one small read): a corrupt one
    raises :class:`CorruptPredictionFileError` naming it when its date was asked for, and is
    left out with an error log in an all-dates query.
    """
    if dates is None:
        folders = sorted({p.rsplit("/", 1)[0] for p in find_files(fs, f"{root}/predictions")})
        wanted = [dt.date.fromisoformat(f.rsplit("date=", 1)[-1]) for f in folders if "date=" in f]
    else:
        wanted = sorted(set(dates))
    files = []
    for day in wanted:
        for path in live_files(fs, root, day)[0]:
            try:
                with fs.open(path, "rb") as f:
                    pq.read_metadata(f)
            except pa.ArrowInvalid as exc:
                message = (
                    f"prediction file {fs.unstrip_protocol(path)} is not readable Parquet "
                    f"({exc}); run nightly-inference for {day} again: it moves the file to "
                    f"{CORRUPT_DIR}/ and predicts its images again"
                )
                if dates is not None:
                    raise CorruptPredictionFileError(message) from exc
                log.error("%s; left out of this query", message)
                continue
            files.append(path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path))
    return files


def connect(
    fs: fsspec.AbstractFileSystem, root: str, dates: Sequence[dt.date] | None = None
) -> tuple[duckdb.DuckDBPyConnection, str | None]:
    """A DuckDB connection and the ``read_parquet([...])`` source of the dates' partitions.

    The source lists the files of :func:`prediction_files` (never a glob: only the live file of
    each partition counts, and other dates' files are not opened); ``None`` when there is none.
    """
    con = duckdb.connect()
    if not isinstance(fs, LocalFileSystem):
        con.register_filesystem(fs)
    files = prediction_files(fs, root, dates)
    if not files:
        return con, None
    quoted = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    source = f"read_parquet([{quoted}], hive_partitioning = true, union_by_name = true)"
    return con, source


def summarize_dates(
    fs: fsspec.AbstractFileSystem, root: str, dates: Sequence[dt.date]
) -> DateSummary:
    """Per-class and per-lot/wafer counts of the given dates' partitions."""
    con, source = connect(fs, root, dates)
    if source is None:
        return DateSummary(0, {}, {}, 0, [])
    wanted = [d.isoformat() for d in dates]
    rows = con.execute(
        f"""SELECT predicted_class, coalesce(lot_id, '?') AS lot, coalesce(wafer_id, '?') AS wafer,
                   count(*) AS n, count(*) FILTER (WHERE needs_review) AS review,
                   list(DISTINCT model_version) AS versions
            FROM {source}
            WHERE CAST("date" AS VARCHAR) IN (SELECT unnest(?::VARCHAR[]))
            GROUP BY ALL ORDER BY lot, wafer, predicted_class""",
        [wanted],
    ).fetchall()
    by_class: dict[str, int] = {}
    by_lot_wafer: dict[str, dict[str, int]] = {}
    versions: set[str] = set()
    for cls, lot, wafer, n, _, vs in rows:
        name = cls if cls is not None else "(error)"
        by_class[name] = by_class.get(name, 0) + n
        by_lot_wafer.setdefault(f"{lot}/{wafer}", {})[name] = n
        versions.update(vs)
    return DateSummary(
        rows=sum(r[3] for r in rows),
        by_class=by_class,
        by_lot_wafer=by_lot_wafer,
        needs_review=sum(r[4] for r in rows),
        model_versions=sorted(versions),
    )
