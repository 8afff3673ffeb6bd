"""`semclip eval-al`: does picking by uncertainty + diversity beat random picking?

Runs :func:`semclip.eval.active.run_active_learning` on a data set folder (say one written by
`semclip synth`) and writes ``active_learning.json`` and ``active_learning.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from semclip.cli.commands import summary
from semclip.cli.common import (
    add_backbone_options,
    add_databar_options,
    backbone_from,
    databar_for,
    fill_backbone_defaults,
)
from semclip.cli.eval_cmd import check_pretrain_overlap
from semclip.cli.option_types import positive_int, unit_fraction
from semclip.config import FitConfig
from semclip.data import load_dataset
from semclip.eval.active import ActiveLearningConfig, run_active_learning

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval-al",
        help=summary("eval-al"),
        description="Review picks (the `semclip review export` order) against random picks: "
        "accuracy and macro F1 after the same number of confirmed images, per seed.",
    )
    parser.add_argument("--data", required=True, help="data set folder (manifest.csv)")
    parser.add_argument("--out", required=True, help="folder for active_learning.{json,md}")
    parser.add_argument("--seeds", type=positive_int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--rounds", type=positive_int, default=2, help="review rounds (default 2)")
    parser.add_argument(
        "--budget",
        type=positive_int,
        default=10,
        help="images confirmed per round and arm (default 10)",
    )
    parser.add_argument(
        "--initial", type=positive_int, default=1, help="first support per class (default 1)"
    )
    parser.add_argument(
        "--test-fraction", type=unit_fraction, default=0.4, help="share of each class scored (0.4)"
    )
    parser.add_argument(
        "--margin",
        type=unit_fraction,
        default=None,
        help="review margin (default SEMCLIP_REVIEW_MARGIN)",
    )
    parser.add_argument("--no-augment", action="store_true", help="fit without the 8 flips")
    parser.add_argument(
        "--max-steps", type=positive_int, default=None, help="cap on optimiser steps per fit"
    )
    add_databar_options(parser)
    add_backbone_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from semclip.settings import get_settings

    if args.seeds < 1:
        raise ValueError("--seeds must be >= 1")
    dataset = load_dataset(args.data)
    fill_backbone_defaults(args)
    check_pretrain_overlap(args.backbone, dataset, allow=False)
    backbone = backbone_from(args)
    fit = FitConfig(augment=not args.no_augment)
    if args.max_steps is not None:
        fit = FitConfig(augment=not args.no_augment, max_steps=args.max_steps)
    config = ActiveLearningConfig(
        seeds=tuple(range(args.seeds)),
        initial_per_class=args.initial,
        rounds=args.rounds,
        budget=args.budget,
        test_fraction=args.test_fraction,
        margin=get_settings().review_margin if args.margin is None else args.margin,
        fit=fit,
        databar=databar_for(args.data, args.databar_top, args.databar_bottom),
    )
    print(f"backbone: {backbone.describe()}")
    result = run_active_learning(dataset, backbone, config, progress=print)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "active_learning.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
    markdown = result.markdown()
    (out / "active_learning.md").write_text(markdown + "\n")
    print(markdown)
    return 0
