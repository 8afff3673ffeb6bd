"""`semclip report --date D` (or `--dates A..B`): the yield report of the bucket's current rows.

Reads ``predictions/`` of the bucket (``SEMCLIP_BUCKET``, file:// or s3://) with DuckDB through
the bucket's own filesystem, and writes Markdown and PNGs to ``reports/date=<D>/`` (a range:
``reports/date=<A>..<B>/``). ``--copy-to DIR`` also puts the files in a local folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from semclip.cli.commands import summary
from semclip.cli.option_types import positive_int, unit_fraction
from semclip.settings import get_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help=summary("report"),
        description="Defect Pareto (overall, per lot), counts per lot/wafer/class, wafer maps, "
        "defect density trend and review share of the current prediction rows, as Markdown "
        "and PNGs in reports/date=<label>/ of SEMCLIP_BUCKET.",
    )
    parser.add_argument("--date", default=None, help="one night, YYYY-MM-DD")
    parser.add_argument("--dates", default=None, help="a range YYYY-MM-DD..YYYY-MM-DD (both in)")
    parser.add_argument("--lots", default="", help="comma-separated lot ids (default: all)")
    parser.add_argument(
        "--wafers", default="", help="comma-separated wafer ids or LOT/WAFER (default: all)"
    )
    parser.add_argument(
        "--nights",
        type=positive_int,
        default=None,
        help="nights in the density trend (default SEMCLIP_REPORT_NIGHTS, 7: the nightly's; "
        "another value writes a report of its own, reports/date=<D>_nights=N/)",
    )
    parser.add_argument(
        "--review-margin",
        type=unit_fraction,
        default=None,
        help="count rows whose top-1 minus top-2 probability is below this as 'small_margin' "
        "(default SEMCLIP_REVIEW_MARGIN when set, else not counted)",
    )
    parser.add_argument("--copy-to", default=None, help="also write the files into this folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from semclip.io.bucket import open_bucket
    from semclip.io.klarf_export import load_class_codes
    from semclip.registry.client import Registry
    from semclip.report.build import make_report
    from semclip.report.data import ReportRequest, parse_date_range
    from semclip.review.reasons import known_class_codes

    settings = get_settings()
    first, last = parse_date_range(args.date, args.dates)
    margin = args.review_margin
    if margin is None:  # the review loop's setting (SEMCLIP_REVIEW_MARGIN)
        margin = settings.review_margin
    request = ReportRequest(
        first,
        last,
        lots=_split(args.lots),
        wafers=_split(args.wafers),
        nights=args.nights or settings.report_nights,
        standard_nights=settings.report_nights,
        review_margin=margin,
        class_codes=known_class_codes(load_class_codes(None, settings.class_codes)),
    )
    fs, root = open_bucket(settings.bucket, endpoint_url=settings.s3_endpoint_url)
    written = make_report(fs, root, request, Registry.from_settings(settings))
    if written.report.random_backbone:
        print("WARNING: RANDOM-WEIGHT BACKBONE rows: this report is a plumbing check")
    if written.rows == 0:
        print(
            f"WARNING: no current rows in {first}..{last} (no nightly run of these dates, or "
            "a mistyped date?): the report is empty"
        )
    for what in written.unmatched:
        print(f"WARNING: no rows for {what} in {first}..{last} (a typo, or not scanned?)")
    print(f"report {request.label}: {written.rows} current rows, {len(written.uris)} files")
    print(f"  {written.markdown_uri}")
    if args.copy_to:
        out = Path(args.copy_to)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(written.report.markdown)
        for name, data in written.report.images.items():
            (out / name).write_bytes(data)
        print(f"  copied to {out}")
    return 0


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())
