"""`semclip promote --version N`: move the champion alias by hand (and so roll back).

The refit flow moves ``champion`` only through its gate; a person overrides it here. A
rollback is promoting the older version; the command prints the one it replaced, so the way
back is always one line.

Overriding the gate is an audited act: ``--reason`` is required (no default: "manual" says
nothing to the next person), ``--by`` defaults to ``$USER``; both, the time and the version
replaced are written as tags on the promoted version, whose ``semclip.gate`` tag becomes
``manual-promote``.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from semclip.cli.commands import summary
from semclip.cli.option_types import version_number
from semclip.registry.refs import CHAMPION  # refs imports no MLflow: `semclip --help` stays fast
from semclip.settings import get_settings

_SHOWN = ("f1", "accuracy", "pixel_f1_max")  # hold-out metrics printed after a promotion


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "promote",
        help=summary("promote"),
        description="Move an alias (default: champion) of the registered model to --version. "
        "The MLflow registry is MLFLOW_TRACKING_URI (default sqlite:///$SEMCLIP_HOME/mlflow.db); "
        "the model name SEMCLIP_MODEL_NAME (default semclip-sem).",
    )
    parser.add_argument(
        "--version",
        required=True,
        type=version_number,
        help="registered version number to promote (3, or v3)",
    )
    parser.add_argument("--alias", default=CHAMPION, help=f"alias to move (default {CHAMPION})")
    parser.add_argument("--name", default=None, help="registered model name (default: setting)")
    parser.add_argument(
        "--reason",
        required=True,
        help="why the gate is overridden (recorded on the version, e.g. 'rollback: v4 misses "
        "bridges on L12')",
    )
    parser.add_argument(
        "--by",
        default=None,
        help="who promotes (recorded on the version; default $USER)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from semclip.registry.client import Registry

    registry = Registry.from_settings(get_settings(), model_name=args.name)
    reason = args.reason.strip()
    if not reason:
        print("semclip promote: --reason must say why (it is recorded)", file=sys.stderr)
        return 2
    by = args.by or os.environ.get("USER") or getpass.getuser()
    previous, new = registry.promote(args.version, args.alias, by=by, reason=reason)
    before = f"v{previous.version}" if previous else "none"
    print(f"{args.alias} of {registry.model_name}: {before} -> v{new.version} ({registry.where()})")
    metrics = registry.run_metrics(new)
    shown = [(k, metrics[f"candidate.{k}"]) for k in _SHOWN if f"candidate.{k}" in metrics]
    if shown:
        print("  hold-out at its refit: " + ", ".join(f"{k} {v:.4f}" for k, v in shown))
    if new.random_backbone:
        print(
            "  WARNING: this version was fitted on a RANDOM-WEIGHT backbone: its scores are a "
            "plumbing check, not quality figures"
        )
    if previous and previous.version != new.version:
        print(
            f"  roll back with: semclip promote --version {previous.version} --alias {args.alias} "
            '--reason "rollback"'
        )
    return 0
