"""The labelled image archive pretraining learns from: a manifest folder or a synthetic one.

Every image is identified by the sha256 of its file bytes, which is what `seen_images.txt`
records and what the few-shot overlap guard compares. Classes can be left out
(`--exclude-classes`) to measure few-shot learning of defect types the backbone never saw.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from semclip.data import DatabarCrop, load_dataset, read_image, read_mask
from semclip.data.dataset import GOOD, MANIFEST, read_sample
from semclip.data.images import ImageReadError
from semclip.pretrain.config import SynthArchiveConfig
from semclip.synth import LABELS, generate_dataset
from semclip.synth.styles import heldout_only_patterns, resolve_styles

log = logging.getLogger(__name__)

SYNTH_META = "synth.json"
MIRROR_META = "mirror.json"  # written by semclip.pretrain.remote beside a mirrored manifest
# Manifest columns turned into caption words when present (SEM metadata).
METADATA_COLUMNS = ("pattern", "layer", "kv", "magnification")


@dataclass(frozen=True)
class ArchiveItem:
    """One archive image."""

    image: Path  # absolute path
    label: str
    mask: Path | None  # defect mask; None for good images and classification-only rows
    sha256: str  # of the image file's bytes
    meta: dict[str, str] = field(default_factory=dict)  # metadata columns present in the row


@dataclass(frozen=True)
class Archive:
    """The images pretraining uses, after class exclusion, with how they were obtained."""

    root: Path
    items: tuple[ArchiveItem, ...]
    classes: tuple[str, ...]  # "good" first, then defect classes sorted
    databar: DatabarCrop  # rows removed before the model sees an image
    source: dict  # for the model card: manifest folder or synthetic generator settings
    excluded: tuple[str, ...]  # classes left out on request
    dropped: dict[str, int]  # images removed per excluded class (0 if none were there)
    unreadable: tuple[str, ...] = ()  # "path: reason" of images (or masks) left out

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> np.ndarray:
        """(N,) class index of each item in `classes` order."""
        return np.array([self.classes.index(item.label) for item in self.items], dtype=np.int64)

    def counts(self, indices: np.ndarray | None = None) -> dict[str, int]:
        """Images per class (of a subset), in `classes` order."""
        items = self.items if indices is None else [self.items[i] for i in indices]
        found = Counter(item.label for item in items)
        return {c: found.get(c, 0) for c in self.classes}

    def digest(self) -> str:
        """Hash of (image hash, label) pairs: identifies the archive's content for resumes."""
        text = "\n".join(f"{item.sha256} {item.label}" for item in self.items)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def split(self, fraction: float, max_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, val) item indices: a stratified, seeded hold-out for the zero-shot check."""
        rng = np.random.default_rng([seed, 7])
        labels = self.labels
        n_val = min(int(round(fraction * len(self))), max_val)
        val: list[int] = []
        for k in range(len(self.classes)):
            members = np.flatnonzero(labels == k)
            take = int(round(n_val * len(members) / max(len(self), 1)))
            take = min(take, len(members) - 1)  # every class keeps training images
            val.extend(rng.permutation(members)[: max(take, 0)].tolist())
        val_idx = np.array(sorted(val), dtype=np.int64)
        train_idx = np.setdiff1d(np.arange(len(self)), val_idx)
        return train_idx, val_idx


def synthetic_archive(
    folder: Path, spec: SynthArchiveConfig, exclude: tuple[str, ...], progress: bool = True
) -> Path:
    """Generate (or reuse) the synthetic archive in `folder`; excluded classes are never drawn.

    The folder is reused only when its `synth.json` matches the requested settings, so an
    interrupted or differently configured generation is redone, never half-used.
    """
    counts = {label: spec.per_class for label in LABELS if label not in exclude}
    check_pretraining_styles(spec)
    styles = [style.name for style in resolve_styles(spec.style)]
    patterns = list(spec.patterns) or sorted(
        {p for s in resolve_styles(spec.style) for p in s.patterns}
    )
    meta_path = folder / SYNTH_META
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        same = (
            meta.get("seed") == spec.seed
            and meta.get("counts") == counts
            and meta.get("size") == spec.size
            and meta.get("patterns") == patterns
            and meta.get("styles") == styles
            and meta.get("databar_request", meta.get("databar")) == spec.databar
        )
        if same and (folder / MANIFEST).is_file():
            log.info("reusing synthetic archive %s", folder)
            return folder
    if folder.exists():
        shutil.rmtree(folder)
    log.info(
        "generating synthetic archive: %d images, seed %d, styles %s",
        sum(counts.values()),
        spec.seed,
        ",".join(styles),
    )
    out = generate_dataset(
        folder,
        counts=counts,
        seed=spec.seed,
        size=spec.size,
        patterns=list(spec.patterns) or None,
        databar=spec.databar,
        style=spec.style,
        progress=progress,
    )
    meta = json.loads((out / SYNTH_META).read_text())
    assert set(meta["styles"]) == set(styles), "the archive must hold the requested styles only"
    return out


def check_pretraining_styles(spec: SynthArchiveConfig) -> None:
    """Raise ValueError when the archive would show held-out styles or their pattern families.

    Held-out styles measure transfer to a tool pretraining never saw; one image of them in the
    archive would make that measurement meaningless.
    """
    held = [style.name for style in resolve_styles(spec.style) if not style.pretrain]
    if held:
        raise ValueError(
            f"style {spec.style!r} is held out of pretraining ({held}); use 'default' or one of "
            "the pretraining styles"
        )
    leaked = sorted(set(spec.patterns) & set(heldout_only_patterns()))
    if leaked:
        raise ValueError(f"pattern families {leaked} belong to held-out styles only")


def load_archive(
    root: str | Path, exclude: tuple[str, ...] = (), databar: DatabarCrop | None = None
) -> Archive:
    """Read a manifest/MVTec folder as an archive, leaving out `exclude` classes.

    `databar` None reads it from the folder's `synth.json` when there is one (synthetic data),
    else crops nothing. Raises ValueError when fewer than two classes or no "good" remain:
    the contrastive loss needs classes to tell apart and the dense loss needs the good caption.
    """
    dataset = load_dataset(root)
    meta = _metadata_columns(dataset.root)
    databar = databar if databar is not None else _synth_databar(dataset.root)
    excluded = tuple(sorted(set(exclude)))
    unknown = sorted(set(excluded) - set(dataset.classes))
    if unknown:
        log.warning("excluded classes %s are not in the archive %s", unknown, dataset.root)
    dropped = {c: sum(s.label == c for s in dataset.samples) for c in excluded}
    # Every image (and mask) decoded once here: training decodes per batch when the archive
    # does not fit in memory, and one corrupt file must not end a run hours in, nor cost the
    # rest. The decode reads the bytes the sha256 is taken of, so the file is read once.
    kept, unreadable = [], []
    for s in tqdm(
        [s for s in dataset.samples if s.label not in excluded],
        desc="check archive",
        unit="img",
        disable=len(dataset) < 500,
    ):
        try:
            loaded, _ = read_sample(s)
        except (ImageReadError, ValueError) as exc:
            log.warning("left out of the archive: %s: %s", s.image, exc)
            unreadable.append(f"{s.image}: {exc}")
            continue
        kept.append(ArchiveItem(s.image, s.label, s.mask, str(loaded.sha256), meta.get(s.row, {})))
    items = tuple(kept)
    labels = {item.label for item in items}
    if GOOD not in labels or len(labels) < 2:
        raise ValueError(
            f"pretraining needs 'good' images and at least one defect class; archive "
            f"{dataset.root} has {sorted(labels)} after excluding {list(excluded)}"
        )
    classes = (GOOD, *sorted(labels - {GOOD}))
    source = _describe_source(dataset.root)
    return Archive(
        dataset.root, items, classes, databar, source, excluded, dropped, tuple(unreadable)
    )


def load_stored(item: ArchiveItem, databar: DatabarCrop, size: int) -> tuple[torch.Tensor, ...]:
    """Decode one image (and mask) at the stored resolution, before augmentation.

    Returns ((size, size) float16 gray in [0, 1], (size, size) uint8 mask coverage x255,
    has_mask). Coverage, not a binary mask, so crops and rotations stay exact on average.
    """
    loaded = read_image(item.image)
    image = _resize(databar.apply(loaded.pixels), size, "bicubic").clamp(0, 1)
    cover = torch.zeros(size, size)
    if item.mask is not None:
        mask = read_mask(item.mask, expected_shape=loaded.pixels.shape)
        cover = _resize(databar.apply(mask).astype(np.float32), size, "area")
    return (
        image.to(torch.float16),
        (cover * 255).round().to(torch.uint8),
        torch.tensor(item.mask is not None),
    )


def _resize(array: np.ndarray, size: int, mode: str) -> torch.Tensor:
    """(H, W) array → (size, size) tensor; squashes like Preprocess does at inference."""
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    if mode == "area":
        return F.interpolate(x, size=(size, size), mode="area")[0, 0]
    return F.interpolate(x, size=(size, size), mode=mode, antialias=True, align_corners=False)[0, 0]


def _metadata_columns(root: Path) -> dict[int, dict[str, str]]:
    """Row number → SEM metadata words from optional manifest columns (pattern, kv, ...)."""
    manifest = root / MANIFEST
    if not manifest.is_file():
        return {}
    with manifest.open(newline="", encoding="utf-8-sig") as fh:
        rows = [
            {(k or "").strip().lower(): v for k, v in row.items() if isinstance(v, str)}
            for row in csv.DictReader(fh)
        ]
    return {
        number: {c: row[c].strip() for c in METADATA_COLUMNS if (row.get(c) or "").strip()}
        for number, row in enumerate(rows, start=1)
    }


def _synth_databar(root: Path) -> DatabarCrop:
    """The databar a synthetic set was rendered with; no crop for other folders."""
    path = root / SYNTH_META
    if not path.is_file():
        return DatabarCrop()
    meta = json.loads(path.read_text())
    rows = int(meta.get("databar_rows", 0))
    side = meta.get("databar", "none")
    return DatabarCrop(top=rows if side == "top" else 0, bottom=rows if side == "bottom" else 0)


def _describe_source(root: Path) -> dict:
    path = root / SYNTH_META
    source = {"kind": "manifest", "folder": str(root)}
    if path.is_file():
        source = {"kind": "synthetic", "folder": str(root), **json.loads(path.read_text())}
    mirror = root / MIRROR_META
    if mirror.is_file():  # an object-store archive: name the store, not the local copy
        source["folder"] = json.loads(mirror.read_text())["url"]
    return source
