"""`semclip review export --date D` / `semclip review import FILE`: the review loop's two ends.

``export`` writes the date's rows that need review to ``review/date=<D>/`` in the bucket
(index.csv/.parquet, image copies, mask overlays), capped by ``--limit`` and ordered so the
most informative images come first (:mod:`semclip.review.sampling`). ``import`` takes the
engineers' decisions (that index with ``label`` and optionally ``mask`` filled in, or any CSV
with the columns ``image, label[, mask]``) into ``confirmed/``, where the next refit reads them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import os
import sys

from semclip.cli.commands import summary
from semclip.settings import get_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "review",
        help=summary("review"),
        description="The review loop. The bucket is SEMCLIP_BUCKET (default "
        "file://$SEMCLIP_HOME/bucket), the champion (whose rows are current) comes from the "
        "MLflow registry MLFLOW_TRACKING_URI.",
    )
    sub = parser.add_subparsers(dest="review_command", required=True)
    export = sub.add_parser(
        "export",
        help="write the rows that need review to review/date=<D>/",
        description="Reasons: low_confidence (top probability below the model's "
        "review_min_probability), small_margin (top-1 minus top-2 below SEMCLIP_REVIEW_MARGIN), "
        "mask_disagrees (mask vs class), unknown_klarf_code (KLARF CLASSNUMBER not in "
        "the class-code map of klarf-export: the prompt file's class_codes:, "
        "SEMCLIP_CLASS_CODES over it).",
    )
    export.add_argument("--date", required=True, help="the night, YYYY-MM-DD")
    export.add_argument("--limit", type=int, default=100, help="most images exported (100)")
    export.add_argument(
        "--margin", type=float, default=None, help="override SEMCLIP_REVIEW_MARGIN for this run"
    )
    export.add_argument(
        "--prompts",
        default=None,
        help="prompt file whose class_codes: is the class-code map (default: packaged; "
        "SEMCLIP_CLASS_CODES over it, as for klarf-export)",
    )
    export.set_defaults(func=run_export)
    imp = sub.add_parser(
        "import",
        help="append engineers' decisions (CSV: image, label[, mask]) to confirmed/",
    )
    imp.add_argument("file", help="the CSV: a local file, or a key/URI inside the bucket")
    imp.add_argument("--reviewer", default=None, help="who reviewed (default $USER)")
    imp.set_defaults(func=run_import)


def _bucket():  # type: ignore[no-untyped-def]
    from semclip.io.bucket import open_bucket

    settings = get_settings()
    return settings, *open_bucket(settings.bucket, endpoint_url=settings.s3_endpoint_url)


def _champion(settings) -> tuple[str, str] | None:  # type: ignore[no-untyped-def]
    """(name, version) of the champion, or None (no registry or no champion: newest rows)."""
    from semclip.registry.client import Registry
    from semclip.registry.refs import CHAMPION

    ref = Registry.from_settings(settings).alias(CHAMPION)
    return (ref.name, ref.version) if ref is not None else None


def run_export(args: argparse.Namespace) -> int:
    from semclip.review.export import export_review
    from semclip.review.reasons import ReviewRule, known_class_codes

    try:
        run_date = dt.date.fromisoformat(args.date)
    except ValueError:
        print(f"semclip review export: --date {args.date!r} is not YYYY-MM-DD", file=sys.stderr)
        return 2
    from semclip.io.klarf_export import load_class_codes
    from semclip.io.partitions import live_files

    settings, fs, root = _bucket()
    margin = settings.review_margin if args.margin is None else args.margin
    codes = known_class_codes(load_class_codes(args.prompts, settings.class_codes))
    rule = ReviewRule(margin=margin, class_codes=codes)
    result = export_review(
        fs, root, run_date, rule=rule, limit=args.limit, champion=_champion(settings)
    )
    if result.index_uri is None:
        if not live_files(fs, root, run_date)[0]:
            print(
                f"{run_date}: no predictions for this date in {fs.unstrip_protocol(root)} "
                "(no nightly run of it, or a mistyped date?): nothing to review"
            )
            return 0
        if result.problems:  # rows needed review and none could be exported
            print(
                f"{run_date}: {result.candidates} row(s) need review but none could be exported:",
                file=sys.stderr,
            )
            for problem in result.problems:
                print(f"  skipped {problem}", file=sys.stderr)
            return 1
        print(f"{run_date}: no current row needs review")
        return 0
    reasons = ", ".join(f"{k} {v}" for k, v in result.by_reason.items())
    classes = ", ".join(f"{k} {v}" for k, v in result.by_class.items())
    print(
        f"{run_date}: {result.rows} of {result.candidates} rows needing review exported to "
        f"{result.index_uri}\n  reasons: {reasons}\n  classes: {classes}"
    )
    for problem in result.problems:
        print(f"  skipped {problem}")
    return 1 if result.problems else 0  # a row left out of the queue needs someone's look


def run_import(args: argparse.Namespace) -> int:
    from semclip.review.importer import import_review

    settings, fs, root = _bucket()
    reviewer = args.reviewer or os.environ.get("USER") or getpass.getuser()
    result = import_review(fs, root, args.file, reviewer=reviewer)
    print(
        f"{result.imported} decision(s) confirmed ({result.masks} corrected mask(s)), "
        f"{result.unreviewed} row(s) without a label skipped, {len(result.rejected)} rejected"
        + (f"\n  written to {result.confirmed_uri}" if result.confirmed_uri else "")
    )
    for line in (*result.rejected, *result.relabelled):
        print(f"  {line}")
    return 1 if result.rejected and not result.imported else 0
