"""`semclip convert neu-seg SRC OUT`: a public defect set on disk → a manifest folder."""

from __future__ import annotations

import argparse
import logging

from semclip.cli.commands import summary

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``convert`` sub-command."""
    parser = subparsers.add_parser(
        "convert",
        help=summary("convert"),
        description="Convert a local copy of a public defect data set into a manifest folder "
        "(images are read from disk; nothing is downloaded).",
    )
    formats = parser.add_subparsers(dest="format", required=True)
    neu = formats.add_parser(
        "neu-seg",
        help="NEU-Seg steel surfaces (images/, annotations/): tiles at the original scale, "
        "defect-free tiles as 'good', grouped by source image",
    )
    neu.add_argument("source", help="NEU-Seg folder holding images/ and annotations/")
    neu.add_argument("out", help="output data set folder (manifest.csv, images/, masks/)")
    neu.add_argument(
        "--split",
        action="append",
        choices=("training", "test"),
        help="split(s) to convert (repeat; default both)",
    )
    neu.add_argument("--tile", type=int, default=100, help="tile side in pixels (100)")
    neu.add_argument(
        "--min-coverage",
        type=float,
        default=0.03,
        help="share of defect pixels a defect tile needs (0.03)",
    )
    neu.add_argument("--limit", type=int, default=None, help="source images per split at most")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    return {"neu-seg": _run_neu}[args.format](args)


def _run_neu(args: argparse.Namespace) -> int:
    from semclip.data.neu_seg import NeuTiling, convert_neu_seg

    tiling = NeuTiling(tile=args.tile, min_coverage=args.min_coverage)
    splits = tuple(args.split) if args.split else ("training", "test")
    result = convert_neu_seg(args.source, args.out, splits=splits, tiling=tiling, limit=args.limit)
    counts = result.counts
    print(
        f"wrote {sum(counts.values())} tiles to {args.out}: "
        + ", ".join(f"{label} {n}" for label, n in sorted(counts.items()))
    )
    if result.skipped:
        print(f"WARNING: {len(result.skipped)} source image(s) left out:")
        for entry in result.skipped:
            print(f"  {entry}")
    return 0
