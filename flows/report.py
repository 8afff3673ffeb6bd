"""yield-report(date | dates): the yield report of the current rows, as an artifact and a file.

Recipe: validate → build and write ``reports/date=<label>/`` (Markdown + PNGs) → the Markdown
as the Prefect artifact ``yield-report``. The nightly flow runs it for its own date as its
last step (:func:`after_nightly`, setting ``SEMCLIP_NIGHTLY_REPORT``, default on), together
with the optional KLARF write-back (``SEMCLIP_NIGHTLY_KLARF_EXPORT``, default off).
"""

from __future__ import annotations

import datetime as dt

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.params import parse_run_date, today_in
from semclip.io.klarf_export import load_class_codes
from semclip.registry.client import Registry
from semclip.report.data import ReportRequest, parse_date_range
from semclip.review.reasons import known_class_codes
from semclip.settings import SemclipSettings, get_settings
from tasks.common import BucketRef
from tasks.report import ReportResult, export_klarf, write_yield_report

__all__ = ["after_nightly", "klarf_export_flow", "yield_report"]


@flow(name="yield-report")
def yield_report(
    date: str | None = None,
    dates: str | None = None,
    lots: list[str] | None = None,
    wafers: list[str] | None = None,
    nights: int | None = None,
) -> ReportResult:
    """Report ``date`` (default: yesterday in SEMCLIP_TIMEZONE) or ``dates`` (``A..B``),
    optionally only ``lots`` / ``wafers``; the trend covers ``nights`` (SEMCLIP_REPORT_NIGHTS)."""
    settings = get_settings()
    if date is None and dates is None:
        date = (today_in(settings.timezone) - dt.timedelta(days=1)).isoformat()
    first, last = parse_date_range(date, dates)
    request = ReportRequest(
        first,
        last,
        lots=tuple(lots or ()),
        wafers=tuple(wafers or ()),
        nights=nights or settings.report_nights,
        standard_nights=settings.report_nights,
        review_margin=settings.review_margin,  # the review loop's setting
        class_codes=known_class_codes(load_class_codes(None, settings.class_codes)),
    )
    logger = get_run_logger()
    result = write_yield_report(
        BucketRef.from_settings(settings), Registry.from_settings(settings), request
    )
    if result.random_backbone:
        logger.warning("yield report %s: rows of a RANDOM-WEIGHT BACKBONE", result.label)
    for what in result.unmatched:
        logger.warning("yield report %s: no rows for %s in these dates", result.label, what)
    logger.info("yield report %s: %d rows, %s", result.label, result.rows, result.uris[-1])
    files = "\n".join(f"- `{uri}`" for uri in result.uris)
    create_markdown_artifact(
        f"{result.markdown}\n## Files\n\n{files}\n",
        key="yield-report",
        description=f"yield report {result.label}",
    )
    return result


@flow(name="klarf-export")
def klarf_export_flow(run_date: str) -> list[str]:
    """klarf_out/<run_date>/: every input KLARF with the predicted classes (CLASSNUMBER)."""
    settings = get_settings()
    day = parse_run_date(run_date)
    result = export_klarf(
        BucketRef.from_settings(settings),
        Registry.from_settings(settings),
        day,
        settings.path_regex,
        settings.class_codes,
    )
    logger = get_run_logger()
    for cls, n in sorted(result.unmapped.items()):
        logger.warning("no KLARF class code for %r: %d defect(s) keep the tool's code", cls, n)
    for error in result.errors:
        logger.error("KLARF not exported: %s", error)
    logger.info(
        "klarf-export %s: %d file(s), %d defect(s) coded",
        day,
        len(result.written),
        result.defects_coded,
    )
    return result.written


def after_nightly(run_date: dt.date, settings: SemclipSettings) -> None:
    """The nightly's optional last steps, as subflows; a failure is logged, not raised.

    The predictions are written by then: a report that fails (say, a full bucket) shows as
    its own failed subflow run, and the nightly run stays Completed.
    """
    logger = get_run_logger()
    steps = []
    if settings.nightly_report:
        steps.append(
            ("yield-report", lambda: yield_report(date=run_date.isoformat(), return_state=True))
        )
    if settings.nightly_klarf_export:
        steps.append(
            ("klarf-export", lambda: klarf_export_flow(run_date.isoformat(), return_state=True))
        )
    for name, step in steps:
        state = step()
        if state.is_failed():
            logger.error(
                "%s for %s failed (the predictions are written): %s", name, run_date, state.message
            )
