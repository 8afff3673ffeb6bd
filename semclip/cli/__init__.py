"""The `semclip` command: one sub-command per module, listed in `semclip.cli.commands`.

Only the module of the sub-command being run is imported, so `semclip --help` answers without
loading torch; the others appear in the listing as their one-line summaries.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from semclip.cli.commands import COMMANDS, chosen_command

__all__ = ["COMMANDS", "build_parser", "main"]


def _version() -> str:
    """The installed distribution's version (pyproject.toml), without importing torch."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("semclip")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The top-level parser; the sub-command named in `argv` (default sys.argv) gets its full
    parser, the others a one-line entry (enough for `semclip --help`)."""
    parser = argparse.ArgumentParser(
        prog="semclip",
        description="Few-shot SEM defect classification and segmentation (SEM-CLIP).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"semclip {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    chosen = chosen_command(sys.argv[1:] if argv is None else argv)
    for name, (module, summary) in COMMANDS.items():
        if name == chosen:
            importlib.import_module(module).register(sub)
        else:
            sub.add_parser(name, help=summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # The command's module has loaded torch by now: these imports cost nothing more.
    from semclip.artifact import IncompatibleModelError
    from semclip.backbone import BackboneError
    from semclip.cli.common import quiet_third_party_logs
    from semclip.data import DatasetError
    from semclip.data.images import ImageReadError

    if not args.verbose:
        quiet_third_party_logs()
    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        # Log lines go through tqdm.write while a bar is on screen: each on a line of its
        # own, the bar redrawn below it, instead of a line glued to half a bar.
        with logging_redirect_tqdm():
            return int(args.func(args) or 0)
    except (
        BackboneError,
        DatasetError,
        ImageReadError,  # one named file the command could not leave out
        IncompatibleModelError,
        FileNotFoundError,
        PermissionError,  # S3CredentialsError, a folder the user cannot write
        ValueError,
    ) as exc:
        from semclip.settings import describe_settings_error

        print(f"error: {describe_settings_error(exc) or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
