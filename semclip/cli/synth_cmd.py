"""`semclip synth`: write a synthetic SEM defect data set (images, masks, manifest)."""

from __future__ import annotations

import argparse
import logging

from semclip.cli.commands import summary
from semclip.synth import DEFAULT_COUNTS, PATTERNS, generate_dataset
from semclip.synth.dataset import STYLE_DATABAR, WAFERS_PER_LOT
from semclip.synth.styles import DEFAULT_MIX, DEFAULT_STYLES, STYLES, resolve_styles

logger = logging.getLogger(__name__)


def parse_counts(text: str) -> dict[str, int]:
    """Parse ``good=226,bridge=59`` into a dict; argparse reports the ValueError as usage."""
    counts: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        label, sep, number = item.partition("=")
        if not sep or label not in DEFAULT_COUNTS:
            raise argparse.ArgumentTypeError(
                f"bad count {item!r}: use label=N with label in {sorted(DEFAULT_COUNTS)}"
            )
        counts[label] = int(number)
    return counts


def parse_patterns(text: str) -> list[str]:
    """Parse ``line_h,contacts`` into a list of known pattern families."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(PATTERNS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown patterns {unknown}; choose from {sorted(PATTERNS)}"
        )
    return names


def parse_style(text: str) -> str:
    """A known style name or the default mix; argparse reports the error with the choices."""
    try:
        resolve_styles(text.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text.strip()


def _style_help() -> str:
    lines = [f"{DEFAULT_MIX} = mix of {', '.join(DEFAULT_STYLES)}, the pretraining styles"]
    lines += [f"{name}: {style.description}" for name, style in STYLES.items()]
    return "imaging style (default %(default)s). " + "; ".join(lines)


def scaled_counts(counts: dict[str, int], scale: float) -> dict[str, int]:
    """Multiply every count by ``scale``, keeping at least one image of each listed class."""
    if scale <= 0:
        raise ValueError(f"--scale must be positive, got {scale}")
    return {label: max(1, round(n * scale)) for label, n in counts.items()}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``synth`` sub-command."""
    parser = subparsers.add_parser(
        "synth",
        help=summary("synth"),
        description="Write seeded synthetic SEM review images with defect masks and a manifest.",
    )
    parser.add_argument(
        "--out", required=True, help="output folder: images, masks, manifest.csv, synth.json"
    )
    parser.add_argument("--seed", type=int, default=0, help="data set seed (default 0)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (256)")
    parser.add_argument(
        "--counts",
        type=parse_counts,
        default=None,
        help="images per class, e.g. good=226,bridge=59 (default: the paper's balance)",
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply all counts, e.g. 0.1 (min 1 per class)"
    )
    parser.add_argument(
        "--patterns",
        type=parse_patterns,
        default=None,
        help="background families, comma separated (default: the style's own; all: "
        f"{','.join(sorted(PATTERNS))})",
    )
    parser.add_argument("--style", type=parse_style, default=DEFAULT_MIX, help=_style_help())
    parser.add_argument(
        "--databar",
        choices=(STYLE_DATABAR, "top", "bottom", "none"),
        default=STYLE_DATABAR,
        help="databar side; 'style' (default) lets each image's style choose side and height",
    )
    parser.add_argument(
        "--bit-depth",
        type=int,
        choices=(8, 16),
        default=8,
        help="bits per pixel of the written images: 16 writes 16-bit PNG, as some tools do "
        "(default 8)",
    )
    parser.add_argument(
        "--wafers",
        type=int,
        default=WAFERS_PER_LOT,
        help=f"wafers the images spread over (group column; default {WAFERS_PER_LOT}, one lot); "
        "10-shot group-aware evaluation needs a few hundred",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate the data set described by the parsed arguments; returns the exit code."""
    counts = scaled_counts(dict(args.counts or DEFAULT_COUNTS), args.scale)
    out = generate_dataset(
        args.out,
        counts=counts,
        seed=args.seed,
        size=args.size,
        patterns=args.patterns,
        databar=args.databar,
        bit_depth=args.bit_depth,
        wafers=args.wafers,
        progress=True,
        style=args.style,
    )
    print(f"wrote {sum(counts.values())} images to {out}")
    return 0
