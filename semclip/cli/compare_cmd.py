"""`semclip compare`: several `semclip eval` folders side by side, one column per backbone."""

from __future__ import annotations

import argparse

from semclip.cli.commands import summary


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``compare`` sub-command."""
    parser = subparsers.add_parser(
        "compare",
        help=summary("compare"),
        description="Merge the metrics.json (and per_class.json) of evaluation folders and write "
        "one Markdown table per k with a column per backbone: pretrained vs random, or vs a "
        "backbone pretrained without some classes. Runs of one backbone may be spread over "
        "several folders.",
    )
    parser.add_argument("folders", nargs="+", help="`semclip eval --out` folders")
    parser.add_argument("--out", required=True, help="Markdown file to write")
    parser.add_argument(
        "--classes",
        type=lambda text: [c.strip() for c in text.split(",") if c.strip()],
        default=[],
        help="classes to show per class as well, e.g. bridge,infilm",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from semclip.eval.compare import write_comparison

    path = write_comparison(args.folders, args.out, args.classes)
    print(f"comparison: {path}")
    return 0
