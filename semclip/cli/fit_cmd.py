"""`semclip fit`: fit a model on k shots per class of a labelled data set folder."""

from __future__ import annotations

import argparse
import logging

from semclip.artifact import save_model
from semclip.cli.commands import summary
from semclip.cli.common import (
    add_backbone_options,
    add_databar_options,
    add_fit_options,
    backbone_from,
    databar_for,
    progress_bar,
)
from semclip.config import FitConfig
from semclip.data import draw_support, load_dataset
from semclip.model import SemclipModel
from semclip.prompts import load_prompts

log = logging.getLogger(__name__)


def parse_shots(text: str) -> int | None:
    """'all' → None (every image), else a positive integer."""
    if text.strip().lower() == "all":
        return None
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("--shots must be >= 1 or 'all'")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fit",
        help=summary("fit"),
        description="Draw k images per class (group-aware, by seed) from a data set folder "
        "(manifest.csv or MVTec-AD layout), fit SEM-CLIP's heads on them, and save "
        "a self-contained model directory.",
    )
    parser.add_argument("--data", required=True, help="data set folder")
    parser.add_argument(
        "--shots",
        type=parse_shots,
        default=None,
        help="images (or groups) per class, or 'all' (default all)",
    )
    parser.add_argument("--seed", type=int, default=0, help="draw and training seed (default 0)")
    parser.add_argument("--out", required=True, help="model directory to write")
    parser.add_argument("--name", default="semclip-sem", help="model name (default semclip-sem)")
    parser.add_argument("--prompts", default=None, help="prompt YAML (default: packaged)")
    parser.add_argument(
        "--no-augment", action="store_true", help="skip the 8 flips/rotations of each shot"
    )
    parser.add_argument(
        "--generic-prompts",
        action="store_true",
        help="ablation: generic prompts instead of expert ones",
    )
    add_backbone_options(parser)
    add_databar_options(parser)
    add_fit_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = FitConfig(
        seed=args.seed, augment=not args.no_augment, generic_prompts=args.generic_prompts
    ).with_overrides(args.fit)
    dataset = load_dataset(args.data)
    support, _ = draw_support(dataset, args.shots, args.seed)
    backbone = backbone_from(args)
    with progress_bar(len(support), "fit: backbone features") as bar:
        model = SemclipModel.fit(
            backbone,
            support,
            config=config,
            prompts=load_prompts(args.prompts),
            databar=databar_for(args.data, args.databar_top, args.databar_bottom),
            name=args.name,
            progress=bar.update,
        )
    path = save_model(model, args.out)
    counts = ", ".join(f"{k}={v}" for k, v in model.lineage["shots_per_class"].items())
    print(f"model saved to {path}")
    print(f"  backbone: {backbone.describe()}")
    print(
        f"  support: {counts}; tau={model.calibration.tau:.3f} "
        f"alpha={model.calibration.alpha:.2f} ({model.calibration.method})"
    )
    skipped = model.lineage.get("skipped_shots") or []
    if skipped:
        print(f"WARNING: {len(skipped)} support image(s) left out of the fit (see the lineage):")
        for shot in skipped:
            print(f"  {shot['uri']}: {shot['reason']}")
    return 0
