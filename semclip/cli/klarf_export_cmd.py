"""`semclip klarf-export --date D`: each input KLARF of D, with the predicted classes.

Writes ``klarf_out/<D>/<same path as under raw/<D>/>`` in ``SEMCLIP_BUCKET``; CLASSNUMBER
carries the code of each defect's predicted class (``class_codes:`` of the prompt file,
``SEMCLIP_CLASS_CODES`` over it). See :mod:`semclip.io.klarf_export`.
"""

from __future__ import annotations

import argparse

from semclip.cli.commands import summary
from semclip.settings import get_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "klarf-export",
        help=summary("klarf-export"),
        description="Copy every KLARF under raw/<date>/ to klarf_out/<date>/ with CLASSNUMBER "
        "set to the code of semclip's predicted class (current rows: the champion's).",
    )
    parser.add_argument("--date", required=True, help="the night, YYYY-MM-DD")
    parser.add_argument(
        "--prompts", default=None, help="prompt file with class_codes: (default: packaged)"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="fail when a predicted class has no code (default: keep the tool's code there)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import datetime as dt

    from semclip.io.bucket import open_bucket
    from semclip.io.klarf_export import export_date, load_class_codes
    from semclip.registry.client import Registry
    from semclip.registry.refs import CHAMPION

    try:
        day = dt.date.fromisoformat(args.date)
    except ValueError:
        raise ValueError(f"--date {args.date!r} is not a date (YYYY-MM-DD)") from None
    settings = get_settings()
    codes = load_class_codes(args.prompts, settings.class_codes)
    fs, root = open_bucket(settings.bucket, endpoint_url=settings.s3_endpoint_url)
    ref = Registry.from_settings(settings).alias(CHAMPION)
    result = export_date(
        fs,
        root,
        day,
        codes,
        path_regex=settings.path_regex,
        champion=(ref.name, ref.version) if ref else None,
        strict=args.strict,
    )
    print(
        f"klarf-export {day}: {len(result.written)} file(s), {result.defects_coded} defect(s) coded"
    )
    for uri in result.written:
        print(f"  {uri}")
    for cls, n in sorted(result.unmapped.items()):
        print(f"  no class code for {cls!r}: {n} defect(s) keep the tool's code")
    for error in result.errors:
        print(f"  not exported: {error}")
    return 1 if result.errors else 0
