"""`semclip bench`: images/s and peak memory of encoder, predict and fine-tuning, one run."""

from __future__ import annotations

import argparse
from functools import partial

from tqdm import tqdm

from semclip.backbone import NONE_WORDS, TINY_MODEL
from semclip.cli.commands import summary
from semclip.eval.bench import format_bench, run_bench


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help=summary("bench"),
        description="Measure, in one run on in-memory synthetic SEM images: (a) open_clip "
        "encode_image, (b) the dual-path encoder, (c) SemclipModel.predict, (d) fine-tuning on "
        "shots × classes with and without augmentation beside the bare dual-path forward over "
        "the same shots. Model loading is timed apart. CUDA (with bf16 autocast) when present; "
        "the targets are printed beside the ratios.",
    )
    parser.add_argument(
        "--backbone", default=TINY_MODEL, help=f"open_clip model name (default {TINY_MODEL})"
    )
    parser.add_argument(
        "--pretrained",
        default="none",
        help="tag or checkpoint file; default none (random weights: speed does not depend "
        "on the weights' values)",
    )
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if present)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="images per batch (8); 0: by free memory on CUDA (16 on CPU), as predict does",
    )
    parser.add_argument("--n-images", type=int, default=64, help="images for (a)-(c) (64)")
    parser.add_argument("--shots", type=int, default=10, help="shots per class for (d) (10)")
    parser.add_argument("--classes", type=int, default=7, help="classes for (d), 2-7 (7)")
    parser.add_argument("--image-size", type=int, default=256, help="synthetic image side (256)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also measure (b) and (c) with the dual-path encoder through torch.compile",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (default: torch's own)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for name in ("n_images", "shots", "image_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if args.batch_size < 0:
        raise ValueError("--batch-size must be >= 0 (0: by free memory)")
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    pretrained = None if args.pretrained.strip().lower() in NONE_WORDS else args.pretrained
    result = run_bench(
        args.backbone,
        pretrained,
        args.device,
        batch_size=args.batch_size,
        n_images=args.n_images,
        shots=args.shots,
        n_classes=args.classes,
        image_size=args.image_size,
        progress=partial(tqdm, dynamic_ncols=True),
        compile=args.compile,
    )
    print(format_bench(result))
    return 0
