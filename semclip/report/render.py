"""A report's Markdown and PNGs from its figures (:class:`~semclip.report.data.ReportData`).

The Markdown links its charts by file name (they sit beside ``report.md`` in
``reports/date=<label>/``), so the folder reads as it is in any Markdown viewer. Every table
comes straight from a named macro (the section says which), so a number in the report can be
checked in SQL.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from semclip.report import plots
from semclip.report.data import ReportData

__all__ = ["REPORT_FILE", "Report", "render"]

REPORT_FILE = "report.md"
_REASONS = {
    "low_confidence": "top class probability below {min_probability}",
    "small_margin": "top-1 minus top-2 probability below {margin}",
    "mask_disagrees": "the mask disagrees with the class (a mask on good, none on a defect, "
    "or another class's majority)",
    "error": "no prediction (the row's error)",
    "unknown_klarf_code": "the review tool's CLASSNUMBER is not in the class-code map",
}


@dataclass(frozen=True)
class Report:
    """One rendered report: its Markdown and its PNGs by file name."""

    label: str  # 2026-11-01 or 2026-11-01..2026-11-07
    last_date: dt.date
    markdown: str
    images: dict[str, bytes]
    random_backbone: bool


def render(data: ReportData) -> Report:
    """The Markdown and charts of ``data``; random-backbone rows put a banner on top."""
    random = bool(data.random_versions)
    classes = [r["predicted_class"] for r in data.counts if r["predicted_class"] != "(error)"]
    colours = plots.class_colours(classes)
    images: dict[str, bytes] = {}
    lines = _header(data)
    lines += _pareto_section(data, colours, images, random)
    lines += _counts_section(data)
    lines += _wafer_section(data, colours, images, random)
    lines += _trend_section(data, colours, images, random)
    lines += _review_section(data)
    request = data.request
    return Report(request.label, request.last_date, "\n".join(lines) + "\n", images, random)


def _header(data: ReportData) -> list[str]:
    request = data.request
    models = ", ".join(f"{n} v{v}" for n, v in data.model_versions) or "none"
    lines = [f"# Yield report {request.label}", ""]
    if data.random_versions:
        lines += [
            f"> **{plots.RANDOM_BANNER}**: the rows of {', '.join(data.random_versions)} come "
            "from a model fitted on a random-weight backbone; its classes are not defects.",
            "",
        ]
    lines += [
        f"- dates: {request.first_date} to {request.last_date}",
        f"- lots: {', '.join(request.lots) or 'all'}; wafers: {', '.join(request.wafers) or 'all'}",
        f"- current rows (one per image and date): {data.rows}",
        f"- models: {models}",
        "",
    ]
    if data.unmatched:
        lines += [f"> **No rows in these dates for {', '.join(data.unmatched)}.**", ""]
    return lines


def _pareto_section(
    data: ReportData, colours: Mapping[str, Any], images: dict[str, bytes], random: bool
) -> list[str]:
    lines = [
        "## Defect Pareto",
        "",
        "Classes other than `good`, largest first (macro `defect_pareto`).",
        "",
    ]
    if not data.pareto:
        return [*lines, "No defect rows.", ""]
    images["pareto.png"] = plots.pareto_png(
        data.pareto, f"Defect Pareto {data.request.label}", colours, random=random
    )
    lines += [*_pareto_table(data.pareto), "", "![Defect Pareto](pareto.png)", ""]
    lines += ["### Per lot", "", "(macro `defect_pareto_by_lot`)", ""]
    for lot in sorted({r["lot_id"] for r in data.pareto_by_lot}):
        rows = [r for r in data.pareto_by_lot if r["lot_id"] == lot]
        name = f"pareto_lot_{_safe(lot)}.png"
        images[name] = plots.pareto_png(rows, f"Defect Pareto lot {lot}", colours, random=random)
        lines += [f"#### Lot {lot}", "", *_pareto_table(rows), "", f"![Pareto {lot}]({name})", ""]
    return lines


def _pareto_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    out = ["| class | defects | share | cumulative |", "|---|---:|---:|---:|"]
    out += [
        f"| {r['predicted_class']} | {r['n']} | {r['share']:.1%} | {r['cumulative_share']:.1%} |"
        for r in rows
    ]
    return out


def _counts_section(data: ReportData) -> list[str]:
    lines = ["## Counts per lot, wafer and class", "", "(macro `defect_counts`)", ""]
    if not data.counts:
        return [*lines, "No rows.", ""]
    classes = sorted({r["predicted_class"] for r in data.counts})
    table: dict[tuple[str, str], dict[str, int]] = {}
    for r in data.counts:
        table.setdefault((r["lot_id"], r["wafer_id"]), {})[r["predicted_class"]] = r["n"]
    lines += [
        "| lot | wafer | " + " | ".join(classes) + " | total |",
        "|---|---|" + "---:|" * (len(classes) + 1),
    ]
    for (lot, wafer), by_class in sorted(table.items()):
        cells = " | ".join(str(by_class.get(c, 0)) for c in classes)
        lines.append(f"| {lot} | {wafer} | {cells} | {sum(by_class.values())} |")
    totals = " | ".join(
        str(sum(r["n"] for r in data.counts if r["predicted_class"] == c)) for c in classes
    )
    lines += [f"| **all** | | {totals} | {sum(r['n'] for r in data.counts)} |", ""]
    return lines


def _wafer_section(
    data: ReportData, colours: Mapping[str, Any], images: dict[str, bytes], random: bool
) -> list[str]:
    lines = [
        "## Wafer maps",
        "",
        "Each defect at its KLARF die (XINDEX, YINDEX) plus XREL/YREL over DiePitch, coloured "
        "by predicted class (macro `wafer_map_points`); rows without a KLARF match are not "
        "placed.",
        "",
    ]
    wafers = sorted({(p["lot_id"], p["wafer_id"]) for p in data.wafer_points})
    if not wafers:
        return [*lines, "No row has a KLARF die position.", ""]
    for lot, wafer in wafers:
        points = [p for p in data.wafer_points if (p["lot_id"], p["wafer_id"]) == (lot, wafer)]
        name = f"wafer_{_safe(lot)}_{_safe(wafer)}.png"
        title = f"{lot} / {wafer} ({len(points)} defects)"
        images[name] = plots.wafer_map_png(points, title, colours, random=random)
        pitch = (
            "no DiePitch: die centres"
            if points[0]["die_pitch_x_um"] is None
            else (f"DiePitch {points[0]['die_pitch_x_um']:g} x {points[0]['die_pitch_y_um']:g} µm")
        )
        lines += [
            f"### {lot} / {wafer}",
            "",
            f"{len(points)} placed; {pitch}",
            "",
            f"![wafer map {lot}/{wafer}]({name})",
            "",
        ]
    return lines


def _trend_section(
    data: ReportData, colours: Mapping[str, Any], images: dict[str, bytes], random: bool
) -> list[str]:
    nights, last = data.request.nights, data.request.last_date
    lines = [
        "## Defect density trend",
        "",
        f"Defects per inspected wafer (wafers with any row that night), per class, over the "
        f"{nights} nights up to {last} (macro `defect_density_trend`).",
        "",
    ]
    if not data.trend:
        return [*lines, "No defect rows in the window.", ""]
    images["trend.png"] = plots.trend_png(
        data.trend, f"Defects per wafer, {nights} nights to {last}", colours, random=random
    )
    classes = sorted({r["predicted_class"] for r in data.trend})
    per_night: dict[Any, dict[str, Any]] = {}
    for r in data.trend:
        per_night.setdefault(r["date"], {"wafers": r["wafers"]})[r["predicted_class"]] = r
    lines += [
        "| night | wafers | " + " | ".join(classes) + " |",
        "|---|---:|" + "---:|" * len(classes),
    ]
    for night, row in sorted(per_night.items()):
        cells = " | ".join(
            f"{row[c]['defects_per_wafer']:.2f}" if c in row else "0" for c in classes
        )
        lines.append(f"| {night} | {row['wafers']} | {cells} |")
    return [*lines, "", "![density trend](trend.png)", ""]


def _review_section(data: ReportData) -> list[str]:
    request = data.request
    share = data.needs_review / data.rows if data.rows else 0.0
    lines = [
        "## Review",
        "",
        f"{data.needs_review} of {data.rows} rows ({share:.1%}) need review "
        "(macro `review_share`; each row counts once, under its first reason below).",
        "",
    ]
    if not data.review:
        return lines
    lines += ["| reason | rows | share of all rows | what it means |", "|---|---:|---:|---|"]
    for r in data.review:
        what = _REASONS.get(r["review_reason"], "").format(
            min_probability=request.min_probability, margin=request.review_margin
        )
        lines.append(f"| {r['review_reason']} | {r['n']} | {r['share']:.1%} | {what} |")
    return [*lines, ""]


def _safe(text: str) -> str:
    """A lot or wafer id as a file name part."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text) or "_"
