"""Options and helpers shared by several sub-commands."""

from __future__ import annotations

import argparse
import logging

from tqdm import tqdm

from semclip.backbone import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    Backbone,
    load_backbone,
    resolve_pretrained,
)
from semclip.data.databar import DatabarCrop


def add_backbone_options(parser: argparse.ArgumentParser) -> None:
    """--backbone / --pretrained / --device, as load_backbone takes them."""
    parser.add_argument(
        "--backbone",
        default=DEFAULT_MODEL,
        help=f"open_clip model name or local-dir:PATH (default {DEFAULT_MODEL}; "
        "semclip-tiny for tests and offline demos)",
    )
    parser.add_argument(
        "--pretrained",
        default=None,
        help=f"open_clip tag, checkpoint file, or 'none' for random weights (default "
        f"{DEFAULT_PRETRAINED} with {DEFAULT_MODEL}, none otherwise)",
    )
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if present)"
    )


def add_databar_options(parser: argparse.ArgumentParser) -> None:
    """Rows of text databar cropped before the model sees an image."""
    parser.add_argument("--databar-top", type=int, default=0, help="rows cropped at the top")
    parser.add_argument("--databar-bottom", type=int, default=0, help="rows cropped at the bottom")


def databar_from(args: argparse.Namespace) -> DatabarCrop:
    return DatabarCrop(top=args.databar_top, bottom=args.databar_bottom)


def backbone_from(args: argparse.Namespace) -> Backbone:
    return load_backbone(
        args.backbone, resolve_pretrained(args.backbone, args.pretrained), args.device
    )


def progress_bar(total: int, desc: str, unit: str = "img") -> tqdm:
    """A tqdm bar on stderr; quiet when not a terminal is fine too (tqdm handles it)."""
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)


def quiet_third_party_logs() -> None:
    """open_clip logs every load step on the root logger at INFO; keep semclip's own lines."""
    root = logging.getLogger()
    if root.level < logging.WARNING:
        for handler in root.handlers:
            handler.addFilter(
                lambda record: (
                    record.name.startswith("semclip") or record.levelno >= logging.WARNING
                )
            )
