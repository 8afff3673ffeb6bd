"""The yield engineer's morning report: Pareto, counts, wafer maps, trend, review share.

``gather`` reads the figures from the bucket's current rows through the named DuckDB macros
(:mod:`semclip.report.views`), ``render`` makes Markdown and PNGs, ``write_report`` puts them
in ``reports/date=<label>/``. No Prefect here: the CLI (``semclip report``) and the
``yield-report`` flow both call these.
"""

from semclip.report.data import ReportData, ReportRequest, gather, parse_date_range
from semclip.report.publish import report_folder, write_report
from semclip.report.render import Report, render
from semclip.report.views import REPORT_MACROS, REPORT_VIEWS_SQL, register_report_views

__all__ = [
    "REPORT_MACROS",
    "REPORT_VIEWS_SQL",
    "Report",
    "ReportData",
    "ReportRequest",
    "gather",
    "parse_date_range",
    "register_report_views",
    "render",
    "report_folder",
    "write_report",
]
