"""`semclip demo`: the main job on embedded defaults, end to end, with nothing to configure.

For now: generate a small synthetic SEM data set under $SEMCLIP_HOME, fit on a few shots per
class, predict the rest into Parquet, and print what came out. The backbone is the offline
domain-pretrained one when `make backbone` has built it, else the random-weight tiny config
(said loudly: its scores are a plumbing check).
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from semclip.artifact import save_model
from semclip.backbone import load_backbone, offline_or_tiny_backbone
from semclip.cli.commands import summary
from semclip.cli.common import progress_bar
from semclip.config import FitConfig
from semclip.data import DatabarCrop, draw_support, load_dataset
from semclip.io.schema import records_to_table
from semclip.model import SemclipModel
from semclip.synth import generate_dataset

DEMO_COUNTS = {
    "good": 12,
    "bridge": 8,
    "copper_residue": 8,
    "hole": 8,
    "infilm": 8,
    "particle": 8,
    "scratch": 8,
}


def semclip_home() -> Path:
    """$SEMCLIP_HOME, default ./.semclip: all local state lives there."""
    return Path(os.environ.get("SEMCLIP_HOME", ".semclip")).resolve()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help=summary("demo"),
        description="Synthetic SEM data → few-shot fit → predictions, under $SEMCLIP_HOME.",
    )
    parser.add_argument("--shots", type=int, default=3, help="shots per class (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    home = semclip_home()
    data_dir = home / "demo" / "data"
    if not (data_dir / "manifest.csv").is_file():
        generate_dataset(data_dir, counts=DEMO_COUNTS, seed=args.seed, size=256, progress=True)
    synth = json.loads((data_dir / "synth.json").read_text())
    databar = DatabarCrop(
        top=synth["databar_rows"] if synth["databar"] == "top" else 0,
        bottom=synth["databar_rows"] if synth["databar"] == "bottom" else 0,
    )
    dataset = load_dataset(data_dir)
    support, rest = draw_support(dataset, args.shots, args.seed)
    backbone = load_backbone(offline_or_tiny_backbone(home), None)
    banner(backbone.describe(), backbone.random_weights)
    with progress_bar(len(support), "fit: backbone features") as bar:
        model = SemclipModel.fit(
            backbone,
            support,
            config=FitConfig(seed=args.seed),
            databar=databar,
            progress=bar.update,
        )
    model_dir = save_model(model, home / "demo" / "model")
    images = [s.image for s in rest.samples]
    with progress_bar(len(images), "predict") as bar:
        predictions = model.predict(images, progress=bar.update)
    out = home / "demo" / "predictions.parquet"
    pq.write_table(records_to_table(p.to_record() for p in predictions), out)
    truth = [s.label for s in rest.samples]
    correct = sum(p.predicted_class == t for p, t in zip(predictions, truth, strict=True))
    print(
        f"\nmodel:       {model_dir}  (tau={model.calibration.tau:.3f}, "
        f"alpha={model.calibration.alpha:.2f}, {model.calibration.method})"
    )
    print(
        f"predictions: {out}  ({len(predictions)} rows, "
        f"{sum(not p.ok for p in predictions)} errors, "
        f"{sum(bool(p.needs_review) for p in predictions)} flagged for review)"
    )
    print(f"classes predicted: {dict(Counter(p.predicted_class for p in predictions))}")
    print(
        f"accuracy on the {len(truth)} held-out images: {correct / len(truth):.3f}"
        + ("  <- RANDOM BACKBONE: plumbing check, not quality" if backbone.random_weights else "")
    )
    banner(backbone.describe(), backbone.random_weights)
    return 0


def banner(description: str, random_weights: bool) -> None:
    print(f"\nbackbone: {description}")
    if random_weights:
        print("!" * 78)
        print("!! RANDOM-WEIGHT BACKBONE: scores below are a plumbing check, not quality.   !!")
        print("!! Build the offline SEM backbone (make backbone) or pass pretrained weights. !!")
        print("!" * 78)
