"""SQL over the prediction partitions with DuckDB, on any fsspec bucket (file:// or s3://).

A date's partition keeps every model version's rows as history, so a re-run after a
promotion holds two rows for one image. :func:`connect` gives a DuckDB connection with two
views, and every reader (the demo summary, the documented queries) goes through them:

* ``predictions_all``: every row of every partition (history included; ``date`` is a DATE);
* ``predictions``: one row per ``(image_uri, date)``, the *current* one. Among the rows for
  the newest bytes of that URI on that date (the ``image_sha256`` of its latest
  ``inferred_at``; rows for older bytes are history), the row of the version that is champion
  now, else the newest ``inferred_at`` (then the highest version). It is the table macro
  ``current_predictions(champion_name, champion_version)`` applied to the champion given.

DuckDB cannot download its S3 extension offline, so the bucket's own fsspec filesystem is
registered with DuckDB and the Parquet files are read through it. Queries name the files
of the dates they need (never a glob), so a damaged file of one date never breaks a query of
another, and staged or temporary files are never read.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import fsspec
import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem

from semclip.io.bucket import find_files
from semclip.io.partitions import CORRUPT_DIR, live_files
from semclip.io.pipeline_schema import PARTITION_FIELD, PIPELINE_PREDICTION_SCHEMA
from semclip.io.tables import CorruptParquetError, read_parquet_file

__all__ = [
    "CURRENT_MACRO_SQL",
    "CorruptPredictionFileError",
    "DateSummary",
    "connect",
    "prediction_files",
    "predictions_source",
    "summarize_dates",
]

log = logging.getLogger(__name__)

# The rule for "the current row", as a user can paste it after defining predictions_all.
CURRENT_MACRO_SQL = """
CREATE OR REPLACE MACRO current_predictions(champion_name, champion_version) AS TABLE
    SELECT * EXCLUDE (newest_sha256)
    FROM (
        SELECT *, first_value(image_sha256) OVER (
                   PARTITION BY image_uri, "date"
                   ORDER BY inferred_at DESC NULLS LAST, image_sha256) AS newest_sha256
        FROM predictions_all)
    WHERE image_sha256 IS NOT DISTINCT FROM newest_sha256
    QUALIFY row_number() OVER (
        PARTITION BY image_uri, "date"
        ORDER BY coalesce(model_name = champion_name AND model_version = champion_version,
                          false) DESC,
                 inferred_at DESC NULLS LAST,
                 TRY_CAST(model_version AS BIGINT) DESC NULLS LAST,
                 model_version DESC) = 1
"""


@dataclass(frozen=True)
class DateSummary:
    """What a person wants first from a night's predictions: current rows, one per image."""

    rows: int  # current rows (one per image and date)
    by_class: dict[str, int]
    by_lot_wafer: dict[str, dict[str, int]]  # "lot/wafer" -> class -> count
    needs_review: int
    model_versions: list[str]  # versions the current rows come from
    history_rows: int = 0  # every row of these dates, older versions and bytes included


class CorruptPredictionFileError(ValueError):
    """A prediction file of a date the query asked for is not readable Parquet."""


def prediction_files(
    fs: fsspec.AbstractFileSystem, root: str, dates: Sequence[dt.date] | None = None
) -> list[str]:
    """URIs of the live prediction files of ``dates`` (all dates when ``None``), checked.

    Only the requested dates' partitions are listed, so a broken file of another date never
    breaks this query. Each file is read whole once before DuckDB sees it: checking only the
    footer let a damaged data page through, and DuckDB then failed mid-query with
    ``don't know what type`` and no file named. A corrupt one raises
    :class:`CorruptPredictionFileError` naming it when its date was asked for, and is left
    out with an error log in an all-dates query.
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
                read_parquet_file(fs, path, PIPELINE_PREDICTION_SCHEMA)
            except CorruptParquetError as exc:
                message = (
                    f"prediction file {exc}; run nightly-inference for {day} again: it moves "
                    f"the file to {CORRUPT_DIR}/ and predicts its images again"
                )
                if dates is not None:
                    raise CorruptPredictionFileError(message) from exc
                log.error("%s; left out of this query", message)
                continue
            files.append(path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path))
    return files


def predictions_source(
    fs: fsspec.AbstractFileSystem, root: str, dates: Sequence[dt.date] | None = None
) -> str | None:
    """The ``read_parquet([...])`` expression of the dates' partitions; None when none exist.

    It lists the files of :func:`prediction_files` (only each partition's live file, checked).
    ``fs`` must be registered with the connection that runs it unless it is local.
    """
    files = prediction_files(fs, root, dates)
    if not files:
        return None
    listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    return (
        f"read_parquet([{listed}], hive_partitioning = true, union_by_name = true, "
        "hive_types = {'date': DATE})"
    )


def connect(
    fs: fsspec.AbstractFileSystem,
    root: str,
    dates: Sequence[dt.date] | None = None,
    *,
    champion: tuple[str, str] | None = None,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the views ``predictions_all`` and ``predictions`` (current).

    ``dates`` limits the views to those partitions (all when None). ``champion`` is
    ``(model name, version)`` of the champion now (e.g. from ``Registry.alias("champion")``);
    without it the current row is the newest. With no partition yet both views are empty,
    with the declared columns.
    """
    con = duckdb.connect()
    if not isinstance(fs, LocalFileSystem):
        con.register_filesystem(fs)
    source = predictions_source(fs, root, dates)
    if source is None:
        empty = pa.schema([*PIPELINE_PREDICTION_SCHEMA, PARTITION_FIELD]).empty_table()
        con.register("predictions_empty", empty)
        source = "predictions_empty"
    con.execute(f"CREATE VIEW predictions_all AS {_with_declared_columns(con, source)}")
    con.execute(CURRENT_MACRO_SQL)
    name, version = champion if champion is not None else (None, None)
    con.execute(
        "CREATE VIEW predictions AS SELECT * FROM current_predictions("
        f"{_literal(name)}, {_literal(version)})"
    )
    return con


def _with_declared_columns(con: duckdb.DuckDBPyConnection, source: str) -> str:
    """``SELECT`` of ``source`` plus a typed NULL for each declared column its files lack.

    ``union_by_name`` fills a column only some files have; when *none* of the files read has
    it (every partition predates it, e.g. the KLARF columns), the view still gets it, as null,
    so queries and the named views (``semclip.report.views``) work on old buckets too.
    """
    present = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
    missing = [f for f in PIPELINE_PREDICTION_SCHEMA if f.name not in present]
    if not missing:
        return f"SELECT * FROM {source}"
    con.register("declared_missing", pa.schema(missing).empty_table())
    types = dict(
        con.execute("SELECT column_name, column_type FROM (DESCRIBE declared_missing)").fetchall()
    )
    con.unregister("declared_missing")
    fills = ", ".join(f'CAST(NULL AS {types[f.name]}) AS "{f.name}"' for f in missing)
    return f"SELECT *, {fills} FROM {source}"


def _literal(value: str | None) -> str:
    """A SQL string literal (views cannot take bound parameters)."""
    return "NULL" if value is None else "'" + str(value).replace("'", "''") + "'"


def summarize_dates(
    fs: fsspec.AbstractFileSystem,
    root: str,
    dates: Sequence[dt.date],
    *,
    champion: tuple[str, str] | None = None,
) -> DateSummary:
    """Per-class and per-lot/wafer counts of the current rows of the given dates."""
    con = connect(fs, root, dates, champion=champion)
    wanted = [d.isoformat() for d in dates]
    rows = con.execute(
        """SELECT predicted_class, coalesce(lot_id, '?') AS lot, coalesce(wafer_id, '?') AS wafer,
                   count(*) AS n, count(*) FILTER (WHERE needs_review) AS review,
                   list(DISTINCT model_version) AS versions
            FROM predictions
            WHERE CAST("date" AS VARCHAR) IN (SELECT unnest(?::VARCHAR[]))
            GROUP BY ALL ORDER BY lot, wafer, predicted_class""",
        [wanted],
    ).fetchall()
    (history,) = con.execute(
        """SELECT count(*) FROM predictions_all
           WHERE CAST("date" AS VARCHAR) IN (SELECT unnest(?::VARCHAR[]))""",
        [wanted],
    ).fetchone()
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
        history_rows=int(history),
    )
