"""SQL over the prediction partitions with DuckDB, on any fsspec bucket (file:// or s3://).

DuckDB cannot download its S3 extension offline, so the bucket's own fsspec filesystem is
registered with DuckDB and the Parquet files are read through it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import fsspec
from fsspec.implementations.local import LocalFileSystem


@dataclass(frozen=True)
class DateSummary:
    """What a person wants first from a night's predictions."""

    rows: int
    by_class: dict[str, int]
    by_lot_wafer: dict[str, dict[str, int]]  # "lot/wafer" -> class -> count
    needs_review: int
    model_versions: list[str]


def connect(fs: fsspec.AbstractFileSystem, root: str) -> tuple[duckdb.DuckDBPyConnection, str]:
    """A DuckDB connection and the `read_parquet(...)` source of all prediction partitions."""
    con = duckdb.connect()
    if isinstance(fs, LocalFileSystem):
        pattern = f"{root}/predictions/*/*.parquet"
    else:
        con.register_filesystem(fs)
        pattern = fs.unstrip_protocol(f"{root}/predictions") + "/*/*.parquet"
    source = f"read_parquet('{pattern}', hive_partitioning = true, union_by_name = true)"
    return con, source


def summarize_dates(
    fs: fsspec.AbstractFileSystem, root: str, dates: Sequence[dt.date]
) -> DateSummary:
    """Per-class and per-lot/wafer counts of the given dates' partitions."""
    con, source = connect(fs, root)
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
