"""Compose samples (pattern -> defect -> SEM imaging -> databar) and write them as a data set.

Every image is drawn from its own generator seeded by (seed, label, index), so an image does not
depend on how many images of other classes, or before it, were generated.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from semclip.synth import databar as databar_mod
from semclip.synth.defects import DEFECTS, MASK_SMOOTHING, apply_defect, measure_mask
from semclip.synth.effects import (
    acquire,
    draw_params,
    quantize,
    surface_signal,
    surface_signal_update,
)
from semclip.synth.patterns import PATTERNS, make_pattern

logger = logging.getLogger(__name__)

LABELS: tuple[str, ...] = ("good", *DEFECTS)
# Class balance of the SEM-CLIP paper's data set.
DEFAULT_COUNTS: dict[str, int] = {
    "good": 226,
    "bridge": 59,
    "copper_residue": 141,
    "hole": 230,
    "infilm": 77,
    "particle": 455,
    "scratch": 144,
}
WAFERS_PER_LOT = 25  # default group ids W{seed}-{k} with k < 25, like the slots of one FOUP
MANIFEST_COLUMNS = ("image", "label", "mask", "group", "pattern")


@dataclass(frozen=True)
class SynthSample:
    """One synthetic review image and its ground truth."""

    image: np.ndarray  # (H, W) uint8 (uint16 when rendered with bit_depth=16)
    mask: np.ndarray  # (H, W) bool, True on the defect; all False for "good"
    label: str  # one of LABELS
    pattern: str  # background pattern family, one of PATTERNS
    databar_rows: int  # height of the text band in pixels (0 when there is none)
    databar_side: str  # "top", "bottom" or "none"


def sample_rng(seed: int, label: str, index: int) -> np.random.Generator:
    """The generator for image ``index`` of class ``label``: depends on nothing else."""
    return np.random.default_rng([seed, LABELS.index(label), index])


def _child_rngs(rng: np.random.Generator, n: int) -> list[np.random.Generator]:
    """Independent streams per stage, so a defect's draws never shift the noise or the pattern."""
    return [np.random.default_rng(s) for s in rng.integers(0, 2**63 - 1, size=n)]


def render_sample(
    label: str,
    rng: np.random.Generator,
    *,
    size: int = 256,
    pattern: str | None = None,
    databar: str = "bottom",
    databar_frac: float = 0.08,
    bit_depth: int = 8,
    with_defect: bool = True,
) -> SynthSample:
    """Render one square SEM review image of class ``label`` with its defect mask.

    ``pattern`` None picks a family at random. ``with_defect=False`` renders the identical scene,
    imaging conditions and noise without the defect (the mask still marks where it would be),
    which lets tests and ablations compare the two pixel by pixel.
    """
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r}; choose one of {LABELS}")
    name = pattern if pattern is not None else str(rng.choice(sorted(PATTERNS)))
    rows = databar_mod.databar_rows(size, databar, databar_frac)
    h, scale = size - rows, size / 256.0
    rng_pattern, rng_defect, rng_imaging, rng_noise, rng_bar = _child_rngs(rng, 5)
    params = draw_params(rng_imaging, scale)
    scene = make_pattern(name, rng_pattern, h, size, scale)
    clean = surface_signal(scene, params)  # (h, size)
    mask = np.zeros((h, size), bool)
    signal = clean
    if label != "good":
        defective = apply_defect(label, scene, rng_defect, scale, params.detector_angle)
        signal = surface_signal_update(clean, scene, defective, params)
        mask = measure_mask(clean, signal, smoothing=MASK_SMOOTHING.get(label, 1.0) * scale)
    image = acquire(signal if with_defect else clean, params, rng_noise)
    band = databar_mod.render_databar(rng_bar, size, rows)
    band_mask = np.zeros((rows, size), bool)
    if databar == "top":
        image, mask = np.vstack([band, image]), np.vstack([band_mask, mask])
    else:
        image, mask = np.vstack([image, band]), np.vstack([mask, band_mask])
    return SynthSample(
        image=quantize(image, bit_depth),
        mask=mask,
        label=label,
        pattern=name,
        databar_rows=rows,
        databar_side=databar if rows else "none",
    )


def _checked_counts(counts: Mapping[str, int] | None) -> dict[str, int]:
    """Counts in LABELS order, rejecting unknown classes and negative numbers."""
    counts = dict(DEFAULT_COUNTS if counts is None else counts)
    unknown = sorted(set(counts) - set(LABELS))
    if unknown:
        raise ValueError(f"unknown classes {unknown}; choose from {LABELS}")
    if any(int(n) < 0 for n in counts.values()):
        raise ValueError(f"counts must be >= 0, got {counts}")
    return {label: int(counts[label]) for label in LABELS if label in counts}


def _save_png(path: Path, array: np.ndarray) -> None:
    """Write a grey PNG (8- or 16-bit) with light compression: speed matters more than bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, compress_level=1)


def generate_dataset(
    out_dir: str | Path,
    *,
    counts: Mapping[str, int] | None = None,
    seed: int = 0,
    size: int = 256,
    patterns: Sequence[str] | None = None,
    databar: str = "bottom",
    databar_frac: float = 0.08,
    bit_depth: int = 8,
    wafers: int = WAFERS_PER_LOT,
    progress: bool = False,
) -> Path:
    """Write a synthetic SEM defect data set and return ``out_dir``.

    Layout: ``images/<label>/<label>_<i>.png``, ``masks/<label>/<label>_<i>.png`` (0/255, none
    for good), ``manifest.csv`` (image,label,mask,group,pattern; paths relative to out_dir) and
    ``synth.json`` (the settings, so the set can be regenerated).

    Each image lands on one of ``wafers`` wafers (the ``group`` column). Group-aware few-shot
    draws take whole wafers out of the test set, so a 10-shot evaluation over 7 classes needs
    far more than one lot's 25 wafers.
    """
    counts = _checked_counts(counts)
    if wafers < 1:
        raise ValueError(f"wafers must be >= 1, got {wafers}")
    width = max(2, len(str(wafers - 1)))
    families = tuple(patterns) if patterns else tuple(sorted(PATTERNS))
    for name in families:
        if name not in PATTERNS:
            raise ValueError(f"unknown pattern {name!r}; choose from {sorted(PATTERNS)}")
    rows = databar_mod.databar_rows(size, databar, databar_frac)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(label, i) for label, n in counts.items() for i in range(n)]
    records = []
    for label, i in tqdm(jobs, disable=not progress, unit="img", desc="synth"):
        rng = sample_rng(seed, label, i)
        wafer = int(rng.integers(wafers))
        family = families[int(rng.integers(len(families)))]
        sample = render_sample(
            label,
            rng,
            size=size,
            pattern=family,
            databar=databar,
            databar_frac=databar_frac,
            bit_depth=bit_depth,
        )
        image_rel = f"images/{label}/{label}_{i:05d}.png"
        _save_png(out / image_rel, sample.image)
        mask_rel = ""
        if label != "good":
            mask_rel = f"masks/{label}/{label}_{i:05d}.png"
            _save_png(out / mask_rel, sample.mask.astype(np.uint8) * 255)
        records.append((image_rel, label, mask_rel, f"W{seed}-{wafer:0{width}d}", family))
    with (out / "manifest.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(records)
    meta = {
        "seed": seed,
        "counts": counts,
        "size": size,
        "patterns": list(families),
        "databar": databar if rows else "none",
        "databar_rows": rows,
        "bit_depth": bit_depth,
        "wafers": wafers,
    }
    (out / "synth.json").write_text(json.dumps(meta, indent=2) + "\n")
    logger.info("wrote %d synthetic images to %s", len(records), out)
    return out
