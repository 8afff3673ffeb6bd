"""Tasks of the yield-report flow: build and write a report; write a date's KLARFs back."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from semclip.io.klarf_export import KlarfExport, export_date, load_class_codes
from semclip.registry.client import Registry
from semclip.registry.refs import CHAMPION
from semclip.report.build import make_report
from semclip.report.data import ReportRequest
from tasks.common import IO_RETRIES, BucketRef

__all__ = ["ReportResult", "export_klarf", "write_yield_report"]


@dataclass(frozen=True)
class ReportResult:
    """A written report: its Markdown (for the artifact) and where its files are."""

    label: str
    markdown: str
    uris: list[str]
    rows: int
    random_backbone: bool
    unmatched: list[str]  # "lot X" / "wafer Y" asked for with no row in the dates


@task(name="write_yield_report", cache_policy=NO_CACHE, **IO_RETRIES)
def write_yield_report(
    bucket: BucketRef, registry: Registry, request: ReportRequest
) -> ReportResult:
    """Gather, render and write the report of ``request`` to reports/date=<label>/."""
    fs, root = bucket.open()
    written = make_report(fs, root, request, registry)
    report = written.report
    return ReportResult(
        report.label,
        report.markdown,
        written.uris,
        written.rows,
        report.random_backbone,
        written.unmatched,
    )


@task(name="export_klarf", cache_policy=NO_CACHE, **IO_RETRIES)
def export_klarf(
    bucket: BucketRef,
    registry: Registry,
    run_date: dt.date,
    path_regex: str,
    class_codes: str | None,
) -> KlarfExport:
    """klarf_out/<date>/: each input KLARF with the predicted classes as CLASSNUMBER."""
    fs, root = bucket.open()
    ref = registry.alias(CHAMPION)
    return export_date(
        fs,
        root,
        run_date,
        load_class_codes(setting=class_codes),
        path_regex=path_regex,
        champion=(ref.name, ref.version) if ref else None,
    )
