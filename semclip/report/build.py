"""One call from a request to a written report, shared by ``semclip report`` and the flow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fsspec import AbstractFileSystem

from semclip.registry.refs import CHAMPION
from semclip.report.data import ReportRequest, gather, registry_lookup
from semclip.report.publish import write_report
from semclip.report.render import Report, render

__all__ = ["WrittenReport", "make_report"]


@dataclass(frozen=True)
class WrittenReport:
    """A report and where it went."""

    report: Report
    uris: list[str]  # every file written, report.md last
    rows: int  # current rows the report covers
    unmatched: list[str]  # "lot X" / "wafer Y" asked for with no row in the dates

    @property
    def markdown_uri(self) -> str:
        return self.uris[-1]


def make_report(
    fs: AbstractFileSystem, root: str, request: ReportRequest, registry: Any
) -> WrittenReport:
    """Gather, render and write ``request``'s report to ``reports/date=<label>/``.

    ``registry`` (a :class:`semclip.registry.client.Registry`) names the champion, whose row
    is the current one per image, and says which versions were fitted on a random-weight
    backbone (the banner).
    """
    ref = registry.alias(CHAMPION)
    champion = (ref.name, ref.version) if ref is not None else None
    data = gather(fs, root, request, champion=champion, random_backbone=registry_lookup(registry))
    report = render(data)
    return WrittenReport(report, write_report(fs, root, report), data.rows, data.unmatched)
