"""Labelled data sets: a manifest folder or an MVTec-AD category, and few-shot support draws.

A data set is validated as a whole: every bad row is reported at once, because a fab engineer
fixing a 2,000-row manifest should not need one run per typo.
"""

from __future__ import annotations

import csv
import logging
import os
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semclip.data.images import (
    IMAGE_SUFFIXES,
    LoadedImage,
    read_image,
)
from semclip.data.masks import read_mask
from semclip.labels import normalise_label
from semclip.safe_paths import OutsideRootError, resolve_inside

logger = logging.getLogger(__name__)

GOOD = "good"  # the normal class; every other label is a defect class
MANIFEST = "manifest.csv"
REQUIRED_COLUMNS = ("image", "label", "mask")


@dataclass(frozen=True)
class Sample:
    """One labelled image."""

    image: Path  # absolute, symlinks resolved, inside the data set folder
    label: str  # "good" or a defect class, normalised (semclip.labels: " Particle" → particle)
    mask: Path | None  # absolute path of the defect mask; None = no mask (classification only)
    group: str | None  # images sharing a group (wafer, site) never straddle support and test
    row: int  # 1-based data row of manifest.csv, or 1-based position in an MVTec listing


@dataclass(frozen=True)
class Dataset:
    """Samples of one data set folder, in manifest (or sorted MVTec) order."""

    root: Path  # absolute data set folder
    samples: tuple[Sample, ...]

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def classes(self) -> tuple[str, ...]:
        """Labels present: "good" first when present, then the defect labels sorted."""
        labels = {sample.label for sample in self.samples}
        return ((GOOD,) if GOOD in labels else ()) + tuple(sorted(labels - {GOOD}))

    def by_label(self) -> dict[str, tuple[Sample, ...]]:
        """Samples grouped by label, keys in :attr:`classes` order."""
        return {label: tuple(s for s in self.samples if s.label == label) for label in self.classes}


@dataclass(frozen=True)
class DatasetProblem:
    """One thing wrong with one row; ``row``/``column``/``path`` are None when not applicable."""

    row: int | None  # 1-based data row; None for problems of the whole file (header)
    column: str | None  # manifest column, e.g. "image" or "mask"
    path: str | None  # the path as written in the manifest (or relative to the root)
    reason: str

    def __str__(self) -> str:
        where = [f"row {self.row}"] if self.row is not None else []
        if self.column is not None:
            where.append(f"column '{self.column}'")
        if self.path is not None:
            where.append(f"path '{self.path}'")
        return f"{', '.join(where)}: {self.reason}" if where else self.reason


class DatasetError(ValueError):
    """A data set is unusable; the message lists every problem found, one per line."""

    def __init__(self, summary: str, problems: Sequence[DatasetProblem] = ()) -> None:
        self.summary = summary
        self.problems = tuple(problems)
        lines = [summary, *(f"  {problem}" for problem in self.problems)]
        super().__init__("\n".join(lines))


def load_dataset(root: str | os.PathLike[str]) -> Dataset:
    """Read ``root`` as a manifest folder if it has ``manifest.csv``, else as MVTec-AD."""
    folder = Path(root)
    if not folder.is_dir():
        raise DatasetError(f"data set folder '{folder}' does not exist or is not a folder")
    if (folder / MANIFEST).is_file():
        return read_manifest(folder)
    if (folder / "train").is_dir() or (folder / "test").is_dir():
        return read_mvtec(folder)
    raise DatasetError(
        f"'{folder}' is not a data set: expected either '{MANIFEST}' (columns image,label,mask "
        "and optional group) or an MVTec-AD category (train/good, test/<label>, ground_truth)"
    )


def read_manifest(root: str | os.PathLike[str]) -> Dataset:
    """Read ``root/manifest.csv`` (columns image,label,mask[,group]; paths relative to root).

    Raises:
        DatasetError: listing every bad row (empty field, missing file, path outside root).
    """
    folder = Path(root).resolve()
    manifest = folder / MANIFEST
    rows = _read_csv(manifest)
    samples: list[Sample] = []
    problems: list[DatasetProblem] = []
    for number, row in enumerate(rows, start=1):
        if not any((value or "").strip() for value in row.values() if isinstance(value, str)):
            continue  # blank lines and ",,," rows left by spreadsheet exports
        sample = _parse_row(folder, number, row, problems)
        if sample is not None:
            samples.append(sample)
    if problems:
        bad_rows = len({p.row for p in problems})
        raise DatasetError(
            f"manifest '{manifest}' has {len(problems)} problem(s) in {bad_rows} row(s):", problems
        )
    if not samples:
        raise DatasetError(f"manifest '{manifest}' has no data rows")
    _warn_duplicates(samples)
    return Dataset(folder, tuple(samples))


def read_mvtec(root: str | os.PathLike[str]) -> Dataset:
    """Read one MVTec-AD category: train/good, test/<label>, ground_truth/<label>/<x>_mask.png.

    Train and test images are both returned (the split is redrawn by :func:`draw_support`).
    A defect image without its ground-truth mask is kept for classification, with a warning.
    """
    folder = Path(root).resolve()
    found = [item for split in ("train", "test") for item in _listing(folder / split)]
    if not found:
        raise DatasetError(
            f"'{folder}' has no images under train/<label>/ or test/<label>/ (MVTec-AD layout)"
        )
    samples = []
    for number, (label, path) in enumerate(found, start=1):
        mask = None
        if label != GOOD:
            candidate = folder / "ground_truth" / label / f"{path.stem}_mask.png"
            mask = candidate if candidate.is_file() else None
            if mask is None:
                logger.warning("MVTec image %s has no mask %s", path, candidate)
        samples.append(Sample(path, label, mask, None, number))
    return Dataset(folder, tuple(samples))


def left_out_heading(count: int) -> str:
    """The one heading of the samples a reader left out, in every report that lists them."""
    return f"{count} image(s) left out (an unreadable image or mask, or a mask of another size)"


def read_sample(sample: Sample) -> tuple[LoadedImage, np.ndarray | None]:
    """Decode a sample's image and its mask (bool, checked against the image's size).

    The one place the readers that leave unreadable samples out (evaluation, active
    learning, a pretraining archive) decode a labelled sample: each catches
    ``ImageReadError`` and ``ValueError`` (``MaskError`` is one) and names the sample.
    """
    image = read_image(sample.image, name=str(sample.image))
    mask = read_mask(sample.mask, image.pixels.shape) if sample.mask is not None else None
    return image, mask


def draw_support(dataset: Dataset, shots: int | None, seed: int) -> tuple[Dataset, Dataset]:
    """Split ``dataset`` into (support, rest) with ``shots`` images per class.

    ``shots=None`` makes every image support. When any sample has a ``group``, ``shots`` counts
    groups: per class, ``shots`` groups holding that class are drawn, one image of the class
    from each goes to the support, and *all* images of drawn groups leave the rest, so no
    group straddles support and test. Ungrouped samples in a grouped set are groups of one.
    Each class has its own generator seeded by (seed, class name), so the draw is reproducible,
    independent of listing order, and unchanged for one class when another class is added.
    Both returned data sets keep the input's sample order.
    """
    if shots is None:
        return dataset, Dataset(dataset.root, ())
    if isinstance(shots, bool) or not isinstance(shots, int | np.integer) or shots < 1:
        raise ValueError(f"shots must be a positive integer or None, got {shots!r}")
    grouped = any(sample.group is not None for sample in dataset.samples)
    support: set[int] = set()
    drawn_units: set[tuple[str, ...]] = set()
    for label in dataset.classes:
        units = _units(dataset.samples, label, grouped)
        if len(units) < shots:
            logger.warning(
                "class '%s' has %d %s, fewer than shots=%d: all go to the support",
                label,
                len(units),
                "group(s)" if grouped else "image(s)",
                shots,
            )
        rng = np.random.default_rng([seed, zlib.crc32(label.encode("utf-8"))])
        for pick in rng.choice(len(units), size=min(shots, len(units)), replace=False):
            key, members = units[int(pick)]
            support.add(members[int(rng.integers(len(members)))])
            drawn_units.add(key)
    support_samples = tuple(s for i, s in enumerate(dataset.samples) if i in support)
    rest_samples = tuple(
        s
        for i, s in enumerate(dataset.samples)
        if i not in support and not (grouped and _unit_key(s) in drawn_units)
    )
    return Dataset(dataset.root, support_samples), Dataset(dataset.root, rest_samples)


def _units(
    samples: Sequence[Sample], label: str, grouped: bool
) -> list[tuple[tuple[str, ...], list[int]]]:
    """Drawable units of one class, sorted: (key, sample indices of this class, sorted)."""
    units: dict[tuple[str, ...], list[int]] = {}
    for index, sample in enumerate(samples):
        if sample.label == label:
            key = _unit_key(sample) if grouped else _image_key(sample)
            units.setdefault(key, []).append(index)
    order = {index: _image_key(samples[index]) for members in units.values() for index in members}
    return [(key, sorted(units[key], key=order.__getitem__)) for key in sorted(units)]


def _unit_key(sample: Sample) -> tuple[str, ...]:
    return ("group", sample.group) if sample.group is not None else _image_key(sample)


def _image_key(sample: Sample) -> tuple[str, ...]:
    return ("image", str(sample.image), f"{sample.row:012d}")


def _read_csv(manifest: Path) -> list[dict[str, str | None]]:
    """Rows of the manifest with lower-cased, stripped column names; checks required columns."""
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as fh:  # -sig: Excel writes a BOM
            reader = csv.DictReader(fh)
            header = [(name or "").strip().lower() for name in (reader.fieldnames or [])]
            reader.fieldnames = header
            rows = list(reader)
    except FileNotFoundError:
        raise DatasetError(f"manifest '{manifest}' not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"manifest '{manifest}' cannot be read: {exc}") from exc
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    duplicated = sorted({name for name in header if name and header.count(name) > 1})
    problems = [DatasetProblem(None, name, None, f"missing column '{name}'") for name in missing]
    problems += [
        DatasetProblem(None, name, None, f"column '{name}' appears twice") for name in duplicated
    ]
    if problems:
        raise DatasetError(
            f"manifest '{manifest}' header {header} is invalid (needs image,label,mask; "
            "leave mask cells empty for classification-only data; group is optional):",
            problems,
        )
    return rows


def _parse_row(
    folder: Path, number: int, row: dict[str, str | None], problems: list[DatasetProblem]
) -> Sample | None:
    """One manifest row → Sample, or None after appending its problems."""
    before = len(problems)
    image_value = _cell(row, "image")
    written = row.get("label") if isinstance(row.get("label"), str) else ""
    label = normalise_label(written or "")
    mask_value = _cell(row, "mask")
    if not image_value:
        problems.append(DatasetProblem(number, "image", None, "empty image path"))
    if not label:
        problems.append(DatasetProblem(number, "label", None, "empty label"))
    elif label != (written or "").strip():
        logger.warning(
            "manifest row %d: label %r read as %r (labels are case- and space-insensitive)",
            number,
            written,
            label,
        )
    image = _resolve(folder, image_value, number, "image", problems) if image_value else None
    mask = _resolve(folder, mask_value, number, "mask", problems) if mask_value else None
    if len(problems) > before or image is None:
        return None
    return Sample(image, label, mask, _cell(row, "group") or None, number)


def _cell(row: dict[str, str | None], column: str) -> str:
    value = row.get(column)
    return value.strip() if isinstance(value, str) else ""


def _resolve(
    folder: Path, value: str, number: int, column: str, problems: list[DatasetProblem]
) -> Path | None:
    """Resolve a manifest path inside ``folder``; None (and a problem) if unsafe or missing.

    The inside-the-folder check is :func:`semclip.safe_paths.resolve_inside`, the one the
    pipeline's ``confirmed/`` reader uses too (absolute paths, URIs, ``..`` and symlinks out
    of the folder are refused).
    """
    try:
        inside = resolve_inside(str(folder), value, local=True, root_name="the data set")
    except OutsideRootError as exc:
        problems.append(DatasetProblem(number, column, value, exc.reason))
        return None
    path = Path(inside).resolve()
    if not path.exists():
        problems.append(DatasetProblem(number, column, value, "file not found"))
        return None
    if not path.is_file():
        problems.append(DatasetProblem(number, column, value, "not a file"))
        return None
    return path


def _listing(split_dir: Path) -> Iterable[tuple[str, Path]]:
    """(label, image path) under ``split_dir/<label>/``, sorted, hidden files skipped."""
    if not split_dir.is_dir():
        return []
    return [
        (label_dir.name, path)
        for label_dir in sorted(p for p in split_dir.iterdir() if p.is_dir())
        for path in sorted(label_dir.iterdir())
        if path.is_file()
        and not path.name.startswith(".")
        and path.suffix.lower() in IMAGE_SUFFIXES
    ]


def _warn_duplicates(samples: Sequence[Sample]) -> None:
    seen: dict[Path, int] = {}
    for sample in samples:
        if sample.image in seen:
            logger.warning(
                "manifest rows %d and %d list the same image %s: it may land in both support "
                "and test; give them the same group",
                seen[sample.image],
                sample.row,
                sample.image,
            )
        else:
            seen[sample.image] = sample.row
