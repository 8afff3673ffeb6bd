"""`semclip eval`: the paper's few-shot protocol on a data set folder, with baselines/ablations."""

from __future__ import annotations

import argparse
import logging
from functools import partial
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from semclip.backbone import LOCAL_DIR_PREFIX
from semclip.cli.commands import summary
from semclip.cli.common import (
    add_backbone_options,
    add_databar_options,
    add_fit_options,
    backbone_from,
    databar_for,
    fill_backbone_defaults,
)
from semclip.cli.option_types import positive_int
from semclip.config import FitConfig
from semclip.data import Dataset, load_dataset
from semclip.eval import ORDER, EvalConfig, resolve_methods, run_evaluation, write_report
from semclip.pretrain.overlap import (
    UNLABELED_IMAGES,
    seen_overlap,
    transductive_note,
    unlabeled_overlap,
)
from semclip.prompts import load_prompts

log = logging.getLogger(__name__)


def parse_shots(text: str) -> tuple[int, ...]:
    """'1,2,5,10' → (1, 2, 5, 10)."""
    try:
        shots = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        msg = f"--shots takes integers like 1,2,5,10, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not shots or min(shots) < 1:
        raise argparse.ArgumentTypeError("--shots needs positive integers, e.g. 1,2,5,10")
    return tuple(dict.fromkeys(shots))


def parse_methods(text: str) -> tuple[str, ...]:
    try:
        return resolve_methods(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help=summary("eval"),
        description="For each k and seed, draw k images (or groups) per class, good included, "
        "fit every selected method on them and score the rest. The backbone runs once per "
        "image and augmentation for the whole evaluation (feature cache under "
        "$SEMCLIP_HOME/cache/features).",
    )
    parser.add_argument("--data", required=True, help="data set folder (manifest.csv or MVTec)")
    parser.add_argument("--out", required=True, help="report folder to write")
    parser.add_argument(
        "--shots", type=parse_shots, default=(1, 2, 5, 10), help="k values (default 1,2,5,10)"
    )
    parser.add_argument("--seeds", type=positive_int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument(
        "--method",
        type=parse_methods,
        default=("semclip",),
        help=f"comma-separated methods or 'all' ({', '.join(ORDER)}); default semclip",
    )
    add_databar_options(parser)
    add_fit_options(parser)
    parser.add_argument("--prompts", default=None, help="prompt YAML (default: packaged)")
    parser.add_argument("--no-augment", action="store_true", help="fit without the 8 flips")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="images per batch (16)")
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="feature cache folder (default $SEMCLIP_HOME/cache/features)",
    )
    parser.add_argument(
        "--allow-pretrain-overlap",
        action="store_true",
        help="run even if the backbone was pretrained on some of these images (loud warning)",
    )
    add_backbone_options(parser)
    parser.set_defaults(func=run)


def check_pretrain_overlap(backbone: str, dataset: Dataset, *, allow: bool) -> None:
    """Refuse (or, when allowed, warn loudly) if the backbone was pretrained on these images.

    A few-shot figure on images the backbone already saw says nothing about new data.
    """
    if not backbone.startswith(LOCAL_DIR_PREFIX):
        return
    overlap = sorted(
        seen_overlap(backbone[len(LOCAL_DIR_PREFIX) :], (s.image for s in dataset.samples))
    )
    if not overlap:
        return
    message = (
        f"{len(overlap)} of {len(dataset)} images of {dataset.root} were in the pretraining "
        f"archive of {backbone} (seen_images.txt), e.g. {overlap[:3]}"
    )
    if not allow:
        raise ValueError(
            message + "; evaluate on separately generated data, or pass "
            "--allow-pretrain-overlap to run anyway"
        )
    log.warning("PRETRAINING OVERLAP: %s; the figures overstate few-shot quality", message)


def transductive_overlap(backbone: str, dataset: Dataset) -> dict[str, int] | None:
    """How many images of the data set the backbone adapted on without labels (allowed).

    Transductive adaptation (self-distillation on the very images later predicted) is
    legitimate for a nightly batch, but the report must say so. None when the backbone has no
    `unlabeled_images.txt`.
    """
    if not backbone.startswith(LOCAL_DIR_PREFIX):
        return None
    folder = backbone[len(LOCAL_DIR_PREFIX) :]
    if not (Path(folder).expanduser() / UNLABELED_IMAGES).is_file():
        return None
    seen = unlabeled_overlap(folder, (s.image for s in dataset.samples))
    return {"seen": len(seen), "images": len(dataset)}


def run(args: argparse.Namespace) -> int:
    if args.seeds < 1:
        raise ValueError("--seeds must be >= 1")
    fit_config = FitConfig(augment=not args.no_augment).with_overrides(args.fit)
    dataset = load_dataset(args.data)
    fill_backbone_defaults(args)
    check_pretrain_overlap(args.backbone, dataset, allow=args.allow_pretrain_overlap)
    transductive = transductive_overlap(args.backbone, dataset)
    if transductive is not None:
        log.warning(transductive_note(transductive["seen"], transductive["images"]))
    backbone = backbone_from(args)
    config = EvalConfig(
        shots=args.shots,
        seeds=args.seeds,
        methods=args.method,
        fit_config=fit_config,
        databar=databar_for(args.data, args.databar_top, args.databar_bottom),
        batch_size=args.batch_size,
    )
    print(f"backbone: {backbone.describe()}")
    progress = partial(tqdm, dynamic_ncols=True)
    with logging_redirect_tqdm():
        result = run_evaluation(
            dataset,
            backbone,
            config,
            prompts=load_prompts(args.prompts),
            cache_dir=args.cache_dir,
            progress=progress,
        )
    if transductive is not None:
        result.transductive = transductive
        result.notes.append(transductive_note(transductive["seen"], transductive["images"]))
    path = write_report(result, args.out)
    for line in result.plan.skipped:
        print(f"skipped: {line}")
    print(
        f"{len(result.runs)} runs; feature cache: {result.cache['hits']} hits, "
        f"{result.cache['misses']} misses"
    )
    print(f"report: {path}")
    return 0
