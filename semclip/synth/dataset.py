"""Compose samples (pattern -> defect -> SEM imaging -> databar) and write them as a data set.

Every image is drawn from its own generator seeded by (seed, label, index), so an image does not
depend on how many images of other classes, or before it, were generated.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from semclip.synth import databar as databar_mod
from semclip.synth.databar import SIDES
from semclip.synth.defects import (
    DEFECTS,
    MASK_SMOOTHING,
    Variant,
    apply_defect,
    measure_mask,
)
from semclip.synth.effects import (
    SemParams,
    detect,
    draw_params,
    optics,
    quantize,
    surface_signal,
    surface_signal_update,
)
from semclip.synth.patterns import PATTERNS, Scene, make_pattern
from semclip.synth.styles import DEFAULT_MIX, Style, resolve_styles

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
MANIFEST_COLUMNS = ("image", "label", "mask", "group", "pattern", "style")
STYLE_DATABAR = "style"  # databar value that lets each image's style pick side and height
_DEFECT_TRIES = 4  # redraws of a defect that happened to stay invisible (tiny, low contrast)


@dataclass(frozen=True)
class SynthSample:
    """One synthetic review image and its ground truth."""

    image: np.ndarray  # (H, W) uint8 (uint16 when rendered with bit_depth=16)
    mask: np.ndarray  # (H, W) bool, True on the defect; all False for "good"
    label: str  # one of LABELS
    pattern: str  # background pattern family, one of PATTERNS
    databar_rows: int  # height of the text band in pixels (0 when there is none)
    databar_side: str  # "top", "bottom" or "none"
    style: str = "classic"  # the style it was drawn in, one of STYLES


def sample_rng(seed: int, label: str, index: int) -> np.random.Generator:
    """The generator for image ``index`` of class ``label``: depends on nothing else."""
    return np.random.default_rng([seed, LABELS.index(label), index])


def _child_rngs(rng: np.random.Generator, n: int) -> list[np.random.Generator]:
    """Independent streams per stage, so a defect's draws never shift the noise or the pattern."""
    return [np.random.default_rng(s) for s in rng.integers(0, 2**63 - 1, size=n)]


def _pick_style(style: str | Style | None, rng: np.random.Generator) -> Style:
    """A Style object for a name, an object or None (one drawn from the default mix)."""
    if isinstance(style, Style):
        return style
    options = resolve_styles(style)
    return options[int(rng.integers(len(options)))] if len(options) > 1 else options[0]


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
    style: str | Style | None = "classic",
) -> SynthSample:
    """Render one square SEM review image of class ``label`` with its defect mask.

    ``style`` is a name in STYLES, a Style, "default" or None for one drawn from the default
    (pretraining) mix; the default "classic" renders exactly what the original generator did.
    ``pattern`` None picks one of the style's families. ``databar="style"`` lets the style pick
    the databar's side and height (else ``databar``/``databar_frac``); its look (layout,
    colours) always comes from the style. ``with_defect=False`` renders the
    identical scene, imaging conditions and noise without the defect (the mask still marks where
    it would be), which lets tests and ablations compare the two pixel by pixel.
    """
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r}; choose one of {LABELS}")
    look = _pick_style(style, rng)
    name = pattern if pattern is not None else str(rng.choice(sorted(look.patterns)))
    rng_pattern, rng_defect, rng_imaging, rng_noise, rng_bar = _child_rngs(rng, 5)
    side, frac = databar, databar_frac
    if databar == STYLE_DATABAR:
        side, frac = databar_mod.draw_side(rng_bar, look.databar)
    rows = databar_mod.databar_rows(size, side, frac)
    h, scale = size - rows, size / 256.0
    params = draw_params(rng_imaging, scale, look.imaging)
    scene = make_pattern(name, rng_pattern, h, size, scale * params.zoom)
    clean = surface_signal(scene, params)  # (h, size)
    mask = np.zeros((h, size), bool)
    signal = clean
    if label != "good":
        signal, mask = _draw_defect(label, scene, clean, params, look, rng_defect, scale)
    image = detect(optics(signal if with_defect else clean, params), params, rng_noise)
    band = databar_mod.render_databar(
        rng_bar, size, rows, databar_mod.draw_look(rng_bar, look.databar)
    )
    band_mask = np.zeros((rows, size), bool)
    if side == "top":
        image, mask = np.vstack([band, image]), np.vstack([band_mask, mask])
    else:
        image, mask = np.vstack([image, band]), np.vstack([mask, band_mask])
    return SynthSample(
        image=quantize(image, bit_depth),
        mask=mask,
        label=label,
        pattern=name,
        databar_rows=rows,
        databar_side=side if rows else "none",
        style=look.name,
    )


def _draw_defect(
    label: str,
    scene: Scene,
    clean: np.ndarray,
    params: SemParams,
    look: Style,
    rng: np.random.Generator,
    scale: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(noise-free signal, mask) with one visible defect of type ``label``.

    The mask is measured after the scan's smear and shifts (not the blur), so it sits where the
    defect shows. A defect that stays invisible (tiny, off-frame, no contrast in this imaging)
    is redrawn with the usual size and margin; the last resort marks every changed pixel.
    Styles without size, placement or appearance variation draw no random numbers for them,
    so the classic style reproduces the original generator's images.
    """
    spec = look.defects
    smoothing = MASK_SMOOTHING.get(label, 1.0) * scale
    seen_clean = optics(clean, params, blur=False)
    for attempt in range(_DEFECT_TRIES):
        size, variant = 1.0, Variant()
        if attempt == 0 and spec.size[0] != spec.size[1]:
            size = float(np.exp(rng.uniform(*np.log(spec.size))))
        if attempt == 0 and spec.edge_prob > 0 and rng.random() < spec.edge_prob:
            variant = replace(variant, margin=0.0)
        if spec.variant_prob > 0 and rng.random() < spec.variant_prob:
            variant = replace(variant, alt=True)
        defective = apply_defect(label, scene, rng, scale * size, params.detector_angle, variant)
        signal = surface_signal_update(clean, scene, defective, params)
        seen = optics(signal, params, blur=False)
        mask = measure_mask(seen_clean, seen, smoothing=smoothing)
        if mask.any():
            return signal, mask
    return signal, measure_mask(seen_clean, seen, smoothing=smoothing, min_change=1e-4)


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
    style: str | None = "classic",
) -> Path:
    """Write a synthetic SEM defect data set and return ``out_dir``.

    Layout: ``images/<label>/<label>_<i>.png``, ``masks/<label>/<label>_<i>.png`` (0/255, none
    for good), ``manifest.csv`` (image,label,mask,group,pattern; paths relative to out_dir) and
    ``synth.json`` (the settings, so the set can be regenerated).

    ``style`` is a name in STYLES or None / "default" for the mix of the pretraining styles
    (each image draws one); the default "classic" is the original generator (`semclip synth`
    and pretraining default to the mix). ``patterns`` None uses the styles' own families.
    ``databar="style"`` lets each image's style pick the databar side and height; synth.json
    then records one side and height only when all images share them ("mixed", 0 rows else).

    Each image lands on one of ``wafers`` wafers (the ``group`` column). Group-aware few-shot
    draws take whole wafers out of the test set, so a 10-shot evaluation over 7 classes needs
    far more than one lot's 25 wafers.
    """
    counts = _checked_counts(counts)
    if wafers < 1:
        raise ValueError(f"wafers must be >= 1, got {wafers}")
    width = max(2, len(str(wafers - 1)))
    styles = resolve_styles(style)
    style_name = style or DEFAULT_MIX
    families = tuple(patterns) if patterns else ()
    for name in families:
        if name not in PATTERNS:
            raise ValueError(f"unknown pattern {name!r}; choose from {sorted(PATTERNS)}")
    if databar != STYLE_DATABAR:
        databar_mod.databar_rows(size, databar, databar_frac)  # validate before writing
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(label, i) for label, n in counts.items() for i in range(n)]
    records, bars = [], set()
    for label, i in tqdm(jobs, disable=not progress, unit="img", desc="synth"):
        rng = sample_rng(seed, label, i)
        wafer = int(rng.integers(wafers))
        look = styles[int(rng.integers(len(styles)))] if len(styles) > 1 else styles[0]
        options = families or tuple(sorted(look.patterns))
        family = options[int(rng.integers(len(options)))]
        sample = render_sample(
            label,
            rng,
            size=size,
            pattern=family,
            databar=databar,
            databar_frac=databar_frac,
            bit_depth=bit_depth,
            style=look,
        )
        bars.add((sample.databar_side, sample.databar_rows))
        image_rel = f"images/{label}/{label}_{i:05d}.png"
        _save_png(out / image_rel, sample.image)
        mask_rel = ""
        if label != "good":
            mask_rel = f"masks/{label}/{label}_{i:05d}.png"
            _save_png(out / mask_rel, sample.mask.astype(np.uint8) * 255)
        group = f"W{seed}-{wafer:0{width}d}"
        records.append((image_rel, label, mask_rel, group, family, look.name))
    with (out / "manifest.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(records)
    side, rows = bars.pop() if len(bars) == 1 else ("mixed", 0)
    if not bars and not records:  # nothing rendered: record what was asked for
        side = databar if databar != STYLE_DATABAR else "mixed"
        rows = databar_mod.databar_rows(size, side, databar_frac) if side in SIDES else 0
    meta = {
        "seed": seed,
        "counts": counts,
        "size": size,
        "style": style_name,
        "styles": [s.name for s in styles],
        "patterns": list(families) or sorted({p for s in styles for p in s.patterns}),
        "databar": side if rows else "none",
        "databar_rows": rows,
        "databar_request": databar,
        "bit_depth": bit_depth,
        "wafers": wafers,
    }
    (out / "synth.json").write_text(json.dumps(meta, indent=2) + "\n")
    logger.info("wrote %d synthetic images to %s", len(records), out)
    return out
