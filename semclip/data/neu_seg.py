"""Convert a local copy of NEU-Seg (steel surface defects with pixel masks) into a manifest set.

NEU-Seg holds 200×200 images of hot-rolled steel (`images/<split>/*.jpg`) with one label image
each (`annotations/<split>/*.png`: 0 background, 1 inclusion, 2 patches, 3 scratches). It has no
defect-free images, and SEM-CLIP's protocol needs a `good` class. Resizing defect-free corners
would change the texture scale and hand the classifier a shortcut, so the converter cuts every
image into non-overlapping tiles at the original scale instead:

- a tile with no defect pixel is `good`;
- a tile whose defect pixels all belong to one class and cover at least `min_coverage` of it
  takes that class, with its mask;
- any other tile (mixed classes, or a sliver of a defect) is left out.

Every tile of one source image shares a `group`, so the few-shot protocol never puts two tiles of
one steel part on both sides of the support/test split. The images are never part of this
repository: fetch the data set yourself and point `convert_neu_seg` at the folder.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from semclip.data.dataset import MANIFEST

logger = logging.getLogger(__name__)

NEU_CLASSES: dict[int, str] = {1: "inclusion", 2: "patches", 3: "scratches"}
SPLITS = ("training", "test")


@dataclass(frozen=True)
class NeuTiling:
    """How source images become tiles."""

    tile: int = 100  # tile side in pixels (200 / 100 = 4 tiles an image, no resizing)
    min_coverage: float = 0.03  # a defect tile needs this share of defect pixels
    max_good_per_image: int = 1  # good tiles kept per source image (they outnumber defects)


@dataclass(frozen=True)
class NeuConversion:
    """What a conversion wrote (tiles per label) and the source images it left out, and why."""

    counts: Counter[str]
    skipped: list[str]  # "path: reason"


def convert_neu_seg(
    source: str | Path,
    out: str | Path,
    *,
    splits: tuple[str, ...] = SPLITS,
    tiling: NeuTiling | None = None,
    limit: int | None = None,
) -> NeuConversion:
    """Write `out/manifest.csv` with tiles of NEU-Seg's `splits`; returns the count per label.

    `limit` caps the source images read per split, for quick studies: an evenly spaced
    subset of the sorted names (NEU-Seg numbers its images class by class, so the first N
    would all be one class). A source image that cannot be decoded, whose label image is
    missing or unreadable, or whose label image has another size is left out, named, and the
    others are converted; nothing is written when a split has no image at all.
    """
    tiling = tiling or NeuTiling()
    source, out = Path(source), Path(out)
    listed = {split: sorted((source / "images" / split).glob("*.jpg")) for split in splits}
    for split, images in listed.items():
        if not images:
            raise FileNotFoundError(f"no NEU-Seg images under {source / 'images' / split}")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    skipped: list[str] = []
    for split, images in listed.items():
        if limit is not None and len(images) > limit:
            images = [images[i * len(images) // limit] for i in range(limit)]
        for path in images:
            label_path = source / "annotations" / split / f"{path.stem}.png"
            try:
                rows.extend(_tiles(path, label_path, split, out, tiling))
            except (OSError, ValueError) as exc:  # PIL's decode errors are OSErrors
                logger.warning("left out of the conversion: %s: %s", path, exc)
                skipped.append(f"{path}: {exc}")
    if not rows:
        raise ValueError(f"no NEU-Seg image under {source} could be converted ({skipped[:3]} …)")
    _write_manifest(out / MANIFEST, rows)
    counts = Counter(row["label"] for row in rows)
    logger.info("NEU-Seg → %s: %d tiles %s", out, len(rows), dict(counts))
    return NeuConversion(counts, skipped)


def tile_label(labels: np.ndarray, min_coverage: float) -> str | None:
    """The label of one tile's label image (H, W) of NEU codes, or None when it is left out."""
    codes = set(np.unique(labels).tolist()) - {0}
    if not codes:
        return "good"
    if len(codes) > 1 or (labels > 0).mean() < min_coverage:
        return None
    return NEU_CLASSES.get(codes.pop())


def _tiles(
    image_path: Path, label_path: Path, split: str, out: Path, tiling: NeuTiling
) -> list[dict[str, str]]:
    """The tiles of one source image, written; reads both files before writing any tile."""
    if not label_path.is_file():
        raise FileNotFoundError(f"its label image {label_path} is missing")
    image = _decode(image_path, "L")
    labels = _decode(label_path, None)
    if labels.shape != image.shape:
        raise ValueError(
            f"label image {label_path} is {labels.shape[0]}x{labels.shape[1]} (HxW), "
            f"its image {image.shape[0]}x{image.shape[1]}"
        )
    group = f"{split}-{image_path.stem}"
    rows, goods = [], 0
    t = tiling.tile
    for y in range(0, image.shape[0] - t + 1, t):
        for x in range(0, image.shape[1] - t + 1, t):
            window = labels[y : y + t, x : x + t]
            label = tile_label(window, tiling.min_coverage)
            if label is None or (label == "good" and goods >= tiling.max_good_per_image):
                continue
            goods += label == "good"
            name = f"{group}-{y:03d}-{x:03d}"
            Image.fromarray(image[y : y + t, x : x + t]).save(out / "images" / f"{name}.png")
            mask = ""
            if label != "good":
                mask = f"masks/{name}.png"
                Image.fromarray(((window > 0) * 255).astype(np.uint8)).save(out / mask)
            rows.append(
                {"image": f"images/{name}.png", "label": label, "mask": mask, "group": group}
            )
    return rows


def _decode(path: Path, mode: str | None) -> np.ndarray:
    """All pixels of `path` (a truncated file fails here, not halfway through its tiles)."""
    try:
        with Image.open(path) as image:
            image.load()
            return np.asarray(image.convert(mode) if mode else image)
    except OSError as exc:  # UnidentifiedImageError is one
        reason = str(exc) or type(exc).__name__
        raise ValueError(f"cannot read {path}: {reason}") from None


def _write_manifest(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "label", "mask", "group"])
        writer.writeheader()
        writer.writerows(rows)
