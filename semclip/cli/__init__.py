"""The `semclip` command: one sub-command per module, registered in COMMANDS."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from semclip.artifact import IncompatibleModelError
from semclip.backbone import BackboneError
from semclip.cli.common import quiet_third_party_logs
from semclip.data import DatasetError

# Each module exposes `register(subparsers) -> None`; the parser it adds sets `func`.
COMMANDS: tuple[str, ...] = (
    "semclip.cli.fit_cmd",
    "semclip.cli.predict_cmd",
    "semclip.cli.synth_cmd",
    "semclip.cli.demo_cmd",
    "semclip.cli.eval_cmd",
    "semclip.cli.bench_cmd",
    "semclip.cli.pretrain_cmd",
    "semclip.cli.promote_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered sub-command."""
    parser = argparse.ArgumentParser(
        prog="semclip",
        description="Few-shot SEM defect classification and segmentation (SEM-CLIP).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        quiet_third_party_logs()
    try:
        return int(args.func(args) or 0)
    except (
        BackboneError,
        DatasetError,
        IncompatibleModelError,
        FileNotFoundError,
        ValueError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
