"""What a yield report asks for (:class:`ReportRequest`) and the figures it gets back.

:func:`gather` opens the current rows of the dates a report needs (its range, and the trend's
last N nights) through :func:`semclip.io.query.connect`, restricts them to the lots and wafers
asked for, and reads each figure from its named macro (:mod:`semclip.report.views`), so the
report and a user's own DuckDB session agree to the row.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import fsspec

from semclip.config import PredictConfig
from semclip.io.query import connect
from semclip.report.views import register_report_views

__all__ = ["ReportData", "ReportRequest", "gather", "parse_date_range", "registry_lookup"]

MAX_RANGE_DAYS = 366


def parse_date_range(date: str | None, dates: str | None) -> tuple[dt.date, dt.date]:
    """``--date D`` or ``--dates A..B`` (both included) as ``(first, last)``; one of the two.

    Raises ``ValueError`` naming the option and what a valid value looks like.
    """
    if (date is None) == (dates is None):
        raise ValueError("give exactly one of --date YYYY-MM-DD or --dates YYYY-MM-DD..YYYY-MM-DD")
    if date is not None:
        day = _iso(date, "--date")
        return day, day
    assert dates is not None
    first_text, sep, last_text = dates.partition("..")
    if not sep:
        raise ValueError(f"--dates {dates!r}: write the range as YYYY-MM-DD..YYYY-MM-DD")
    first, last = _iso(first_text, "--dates"), _iso(last_text, "--dates")
    if first > last:
        raise ValueError(f"--dates {dates!r}: the first date is after the last")
    if (last - first).days >= MAX_RANGE_DAYS:
        raise ValueError(f"--dates {dates!r}: at most {MAX_RANGE_DAYS} days")
    return first, last


def _iso(text: str, option: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{option} {text!r} is not a date (YYYY-MM-DD)") from None


@dataclass(frozen=True)
class ReportRequest:
    """One report: a date range, optionally some lots or wafers, and the trend's window."""

    first_date: dt.date
    last_date: dt.date
    lots: tuple[str, ...] = ()  # lot ids; empty = all
    wafers: tuple[str, ...] = ()  # wafer ids, or "LOT/WAFER"; empty = all
    nights: int = 7  # the density trend covers the last `nights` nights up to last_date
    min_probability: float = PredictConfig.review_min_probability  # "low confidence" below it
    review_margin: float | None = None  # top-1 minus top-2 below it: "small margin"
    # KLARF CLASSNUMBERs the class-code map knows (known_class_codes); None: no map, no
    # "unknown_klarf_code" reason. The same map as review export, so both count alike.
    class_codes: frozenset[int] | None = None
    # The trend window of the standard report (SEMCLIP_REPORT_NIGHTS, what the nightly uses):
    # a report with another window is another report, and gets its own name.
    standard_nights: int = 7

    def __post_init__(self) -> None:
        if self.first_date > self.last_date:
            raise ValueError(f"report dates: {self.first_date} is after {self.last_date}")
        if self.nights < 1:
            raise ValueError(f"report nights: {self.nights} (must be at least 1)")

    @property
    def label(self) -> str:
        """The report's name and its folder's: ``2026-11-01`` or ``2026-11-01..2026-11-07``,
        then ``_lots=…``, ``_wafers=…``, ``_nights=N`` for what narrows or widens it.

        Only the standard report of a date (all lots and wafers, the standard trend window)
        has the bare date, the name the nightly writes, so a hand-run report for one lot or
        with a longer trend never replaces the nightly's. Ids are kept readable: characters
        outside ``[A-Za-z0-9._-]`` become ``-`` (``LOT/WAFER`` → ``LOT-WAFER``), and a list
        too long for a folder name is shortened to its first ids plus a digest of all.
        """
        if self.first_date == self.last_date:
            name = self.first_date.isoformat()
        else:
            name = f"{self.first_date.isoformat()}..{self.last_date.isoformat()}"
        if self.lots:
            name += f"_lots={_slug(self.lots)}"
        if self.wafers:
            name += f"_wafers={_slug(self.wafers)}"
        if self.nights != self.standard_nights:
            name += f"_nights={self.nights}"
        return name

    def dates_read(self) -> list[dt.date]:
        """The range and the trend's window: every partition the report reads."""
        start = min(self.first_date, self.last_date - dt.timedelta(days=self.nights - 1))
        return [start + dt.timedelta(days=i) for i in range((self.last_date - start).days + 1)]


@dataclass(frozen=True)
class ReportData:
    """The figures of one report, each as the rows its macro returned (dicts)."""

    request: ReportRequest
    rows: int  # current rows in the range (after the lot/wafer filter)
    model_versions: list[tuple[str, str]]  # (name, version) of those rows
    pareto: list[dict[str, Any]]
    pareto_by_lot: list[dict[str, Any]]
    counts: list[dict[str, Any]]
    trend: list[dict[str, Any]]
    review: list[dict[str, Any]]
    wafer_points: list[dict[str, Any]]
    random_versions: list[str] = field(default_factory=list)  # "name vN" of random backbones
    unmatched_lots: list[str] = field(default_factory=list)  # asked for, no row in the range
    unmatched_wafers: list[str] = field(default_factory=list)

    @property
    def unmatched(self) -> list[str]:
        """``lot X`` / ``wafer Y`` for every id asked for with no row in the dates."""
        return [
            *(f"lot {lot}" for lot in self.unmatched_lots),
            *(f"wafer {wafer}" for wafer in self.unmatched_wafers),
        ]

    @property
    def needs_review(self) -> int:
        return sum(r["n"] for r in self.review)


def gather(
    fs: fsspec.AbstractFileSystem,
    root: str,
    request: ReportRequest,
    *,
    champion: tuple[str, str] | None = None,
    random_backbone: Callable[[str, str], bool] | None = None,
) -> ReportData:
    """Read every figure of ``request`` from the bucket's current rows (see module doc).

    ``random_backbone(name, version)`` says whether a version was fitted on a random-weight
    backbone (the registry's ``semclip.random_backbone`` tag, :func:`registry_lookup`); the
    rows themselves do not record it. Those versions go to ``random_versions`` (the banner).
    """
    con = connect(fs, root, request.dates_read(), champion=champion)
    unmatched = _unmatched(con, request)  # each id on its own, before the filter narrows
    _restrict(con, request.lots, request.wafers)
    register_report_views(con)
    span = [request.first_date, request.last_date]
    codes = sorted(request.class_codes) if request.class_codes is not None else None
    review_args = [*span, request.min_probability, request.review_margin, codes]
    ((rows,),) = _fetch(con, "SELECT count(*) FROM report_rows(?, ?)", span, tuples=True)
    versions = _fetch(
        con,
        "SELECT DISTINCT model_name, model_version FROM report_rows(?, ?) ORDER BY ALL",
        span,
        tuples=True,
    )
    return ReportData(
        request=request,
        rows=int(rows),
        model_versions=[(str(n), str(v)) for n, v in versions],
        pareto=_fetch(con, "SELECT * FROM defect_pareto(?, ?)", span),
        pareto_by_lot=_fetch(con, "SELECT * FROM defect_pareto_by_lot(?, ?)", span),
        counts=_fetch(con, "SELECT * FROM defect_counts(?, ?)", span),
        trend=_fetch(
            con,
            "SELECT * FROM defect_density_trend(?, ?)",
            [request.last_date, request.nights],
        ),
        review=_fetch(
            con,
            "SELECT * FROM review_share(?, ?, ?, ?, class_codes := ?::BIGINT[])",
            review_args,
        ),
        wafer_points=_fetch(con, "SELECT * FROM wafer_map_points(?, ?)", span),
        random_versions=[
            f"{n} v{v}" for n, v in versions if random_backbone and random_backbone(n, v)
        ],
        unmatched_lots=unmatched[0],
        unmatched_wafers=unmatched[1],
    )


def registry_lookup(registry: Any) -> Callable[[str, str], bool]:
    """``random_backbone(name, version)`` from a :class:`semclip.registry.client.Registry`.

    A version the registry no longer has counts as random (flag loudly rather than pass a
    plumbing check off as quality): its tag cannot be read.
    """
    from semclip.registry.refs import ModelNotFoundError

    def lookup(name: str, version: str) -> bool:
        try:
            return bool(registry.resolve(f"models:/{name}/{version}").random_backbone)
        except ModelNotFoundError:
            return True

    return lookup


_SLUG_CHARS = 60  # the longest id list a folder name spells out in full


def _slug(ids: Sequence[str]) -> str:
    """Ids joined by ``+`` for a folder name (see ``ReportRequest.label``)."""
    text = "+".join(re.sub(r"[^A-Za-z0-9._-]", "-", i) for i in ids)
    if len(text) <= _SLUG_CHARS:
        return text
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:8]
    return f"{text[:_SLUG_CHARS].rstrip('+')}+{len(ids)}ids-{digest}"


def _unmatched(
    con: duckdb.DuckDBPyConnection, request: ReportRequest
) -> tuple[list[str], list[str]]:
    """The lots and wafers asked for that no current row of the range has (a typo, or a lot
    that was not scanned): said in the report, never a silent empty section."""
    in_range = 'SELECT 1 FROM predictions WHERE "date" BETWEEN ? AND ? AND '
    span = [request.first_date, request.last_date]

    def found(condition: str, *values: str) -> bool:
        return bool(_fetch(con, f"{in_range}{condition} LIMIT 1", [*span, *values], tuples=True))

    return (
        [lot for lot in request.lots if not found("lot_id = ?", lot)],
        [
            wafer
            for wafer in request.wafers
            if not found("(wafer_id = ? OR lot_id || '/' || wafer_id = ?)", wafer, wafer)
        ],
    )


def _restrict(con: duckdb.DuckDBPyConnection, lots: Sequence[str], wafers: Sequence[str]) -> None:
    """Narrow the ``predictions`` view to ``lots`` and ``wafers`` (id, or ``LOT/WAFER``)."""
    if not lots and not wafers:
        return
    con.execute("ALTER VIEW predictions RENAME TO predictions_unrestricted")
    conditions = []
    if lots:
        conditions.append(f"lot_id IN ({_list(lots)})")
    if wafers:
        conditions.append(
            f"(wafer_id IN ({_list(wafers)}) OR lot_id || '/' || wafer_id IN ({_list(wafers)}))"
        )
    con.execute(
        "CREATE VIEW predictions AS SELECT * FROM predictions_unrestricted WHERE "
        + " AND ".join(conditions)
    )


def _list(values: Sequence[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def _fetch(
    con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any], *, tuples: bool = False
) -> list[Any]:
    cursor = con.execute(sql, list(params))
    rows = cursor.fetchall()
    if tuples:
        return rows
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in rows]
