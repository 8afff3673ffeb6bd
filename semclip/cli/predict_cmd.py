"""`semclip predict`: class, confidence and mask for every image, into one Parquet file."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pyarrow.parquet as pq

from semclip.artifact import load_model
from semclip.cli.commands import summary
from semclip.cli.common import progress_bar
from semclip.cli.option_types import non_negative_int, positive_float, positive_int
from semclip.config import PredictConfig
from semclip.data.images import IMAGE_SUFFIXES
from semclip.io.schema import records_to_table
from semclip.model import SemclipModel

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help=summary("predict"),
        description="Predict every image (folders are searched recursively) and write one "
        "Parquet file in the declared prediction schema. Exits 0 when the batch ran, "
        "even if some images failed (their rows carry the error); non-zero when "
        "nothing could run.",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="model directory (semclip fit --out), or a registered model: "
        "models:/semclip-sem@champion, models:/semclip-sem/3",
    )
    parser.add_argument("--out", required=True, help="Parquet file to write")
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="images per batch (default: the model's)",
    )
    parser.add_argument(
        "--pixel-size-nm",
        type=positive_float,
        default=None,
        help="pixel size, overriding what the files (and the model's defaults) say",
    )
    parser.add_argument(
        "--tiff-page",
        type=non_negative_int,
        default=None,
        help="page of multi-page TIFFs (default 0)",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=positive_int,
        default=None,
        help="largest image area decoded; larger images get an error row "
        "(default: the setting max_image_pixels, SEMCLIP_MAX_IMAGE_PIXELS)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda (default: CUDA if present)")
    parser.add_argument("images", nargs="+", help="image files and/or folders")
    parser.set_defaults(func=run)


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files as given (even unreadable ones: they get an error row), folders searched for images."""
    found: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.extend(
                sorted(
                    str(p)
                    for p in path.rglob("*")
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                )
            )
        else:
            found.append(item)
    return found


def _load(model: str, device: str | None) -> SemclipModel:
    """A model directory, or a models:/ URI resolved in the MLflow registry (offline-safe)."""
    if model.startswith("models:/"):
        from semclip.registry.client import Registry
        from semclip.settings import get_settings

        return Registry.from_settings(get_settings()).load(model, device=device)
    return load_model(model, device=device)


def run(args: argparse.Namespace) -> int:
    from semclip.settings import get_settings

    settings = get_settings()  # a bad SEMCLIP_* setting is refused before the model loads
    images = expand_inputs(args.images)
    if not images:
        log.error("no images found in %s", args.images)
        return 2
    model = _load(args.model, args.device)
    if model.backbone.random_weights:
        print(
            "WARNING: this model's backbone has RANDOM WEIGHTS; its scores are a plumbing "
            "check, not quality figures"
        )
    given = {
        "batch_size": args.batch_size,
        "pixel_size_nm": args.pixel_size_nm,
        "tiff_page": args.tiff_page,
        "max_image_pixels": args.max_image_pixels or settings.max_image_pixels,
    }  # options left out keep the model's stored predict_config; the pixel limit is the
    # worker's to set (memory), not the model's, so it always comes from here
    config = PredictConfig(
        **{
            **model.predict_config.to_dict(),
            **{k: v for k, v in given.items() if v is not None},
        }
    )
    with progress_bar(len(images), "predict") as bar:
        predictions = model.predict(images, config=config, progress=bar.update)
    table = records_to_table(p.to_record() for p in predictions)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, args.out)
    failed = [p for p in predictions if not p.ok]
    print(f"{len(predictions) - len(failed)} images predicted, {len(failed)} failed -> {args.out}")
    for p in failed[:20]:
        print(f"  failed: {p.image_uri}: {p.error}")
    return 0 if len(failed) < len(predictions) else 1
