"""Options and helpers shared by several sub-commands."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from tqdm import tqdm

from semclip.backbone import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    Backbone,
    load_backbone,
    resolve_pretrained,
)
from semclip.data.databar import DatabarCrop
from semclip.settings import get_settings


def add_backbone_options(parser: argparse.ArgumentParser) -> None:
    """--backbone / --pretrained / --device, as load_backbone takes them."""
    parser.add_argument(
        "--backbone",
        default=None,
        help=f"open_clip model name or local-dir:PATH (default $SEMCLIP_BACKBONE, else "
        f"{DEFAULT_MODEL}; semclip-tiny for tests and offline demos)",
    )
    parser.add_argument(
        "--pretrained",
        default=None,
        help=f"open_clip tag, checkpoint file, or 'none' for random weights (default "
        f"$SEMCLIP_PRETRAINED, else {DEFAULT_PRETRAINED} with {DEFAULT_MODEL} (a hub download; "
        "offline, pass a file), none otherwise)",
    )
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if present)"
    )


def add_fit_options(parser: argparse.ArgumentParser) -> None:
    """--fit KEY=VALUE (repeatable): FitConfig fields, to re-measure a default on one's own data."""
    parser.add_argument(
        "--fit",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a fitting default (repeatable), e.g. --fit surgery_scale=10 "
        "--fit default_alpha=0.5; fields as in semclip.config.FitConfig",
    )


def add_databar_options(parser: argparse.ArgumentParser) -> None:
    """Rows of text databar cropped before the model sees an image (default: synth.json's)."""
    parser.add_argument(
        "--databar-top",
        type=int,
        default=None,
        help="rows cropped at the top (default: synth.json)",
    )
    parser.add_argument(
        "--databar-bottom",
        type=int,
        default=None,
        help="rows cropped at the bottom (default: synth.json's databar, else 0)",
    )


def databar_for(data: str | Path, top: int | None, bottom: int | None) -> DatabarCrop:
    """Explicit rows win; otherwise the databar a `semclip synth` set records in synth.json."""
    if top is not None or bottom is not None:
        return DatabarCrop(top=top or 0, bottom=bottom or 0)
    meta = Path(data) / "synth.json"
    if not meta.is_file():
        return DatabarCrop()
    info = json.loads(meta.read_text())
    rows, side = int(info.get("databar_rows", 0)), info.get("databar", "none")
    return DatabarCrop(top=rows if side == "top" else 0, bottom=rows if side == "bottom" else 0)


def fill_backbone_defaults(args: argparse.Namespace) -> None:
    """--backbone/--pretrained, else SEMCLIP_BACKBONE/SEMCLIP_PRETRAINED, else the default.

    A given --backbone replaces the settings' pair; a lone --pretrained keeps
    SEMCLIP_BACKBONE's architecture (the refit flow's precedence, so both read alike).
    """
    if args.backbone is not None:
        return
    settings = get_settings()
    args.backbone = settings.backbone or DEFAULT_MODEL
    if args.pretrained is None:
        args.pretrained = settings.pretrained


def backbone_from(args: argparse.Namespace) -> Backbone:
    """Load the backbone the options (or settings) name; a hub tag that cannot be had fails
    in seconds with what to pass instead (:func:`semclip.backbone.check_weights_reachable`)."""
    fill_backbone_defaults(args)
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
