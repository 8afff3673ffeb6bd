"""The text databar that review SEMs burn into every image (kV, magnification, lot, scale bar).

Real review images carry it, so models must learn to ignore or crop it; the generator records its
height so that cropping can be tested. It is drawn digitally (no noise, no blur) as tools do.
"""

from __future__ import annotations

import functools
import string

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SIDES = ("top", "bottom", "none")
_SCALE_BARS_NM = (50, 100, 200, 500, 1000, 2000)
_DISPLAY_WIDTH_MM = 127.0  # the magnification convention: field of view = 127 mm / mag


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font at ``size`` px (bitmap fallback without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError):  # pragma: no cover - Pillow built without FreeType
        return ImageFont.load_default()


def databar_rows(size: int, side: str, frac: float) -> int:
    """Height in pixels of the databar for an image of ``size`` rows (0 when ``side`` is none)."""
    if side not in SIDES:
        raise ValueError(f"databar must be one of {SIDES}, got {side!r}")
    if side == "none" or frac <= 0:
        return 0
    if not frac < 0.5:
        raise ValueError(f"databar_frac must be below 0.5, got {frac}")
    return max(1, round(frac * size))


def _lot_id(rng: np.random.Generator) -> str:
    """A made-up lot id in the common 'AB12345.1' style."""
    letters = "".join(rng.choice(list(string.ascii_uppercase), 2))
    return f"{letters}{rng.integers(10000, 99999)}.{rng.integers(1, 9)}"


def _fields(rng: np.random.Generator, mag_k: float) -> list[str]:
    """Databar text fields, most important first (later ones are dropped if space runs out)."""
    return [
        f"x{mag_k:.0f}k",
        f"{rng.choice([0.5, 0.8, 1.0, 1.5, 2.0]):.1f}kV",
        _lot_id(rng),
        f"W{rng.integers(1, 26):02d}",
        f"D{rng.integers(1, 999):03d}",
        f"FOV {_DISPLAY_WIDTH_MM / mag_k:.2f}um",
    ]


def render_databar(rng: np.random.Generator, width: int, rows: int) -> np.ndarray:
    """Dark band with white acquisition text and a scale bar, (rows, width) float32 in [0, 1]."""
    background = int(rng.uniform(0.02, 0.12) * 255)
    band = Image.new("L", (width, rows), background)
    if rows < 5:
        return np.asarray(band, np.float32) / 255.0
    draw = ImageDraw.Draw(band)
    font = _font(max(6, int(rows * 0.6)))
    mag_k = float(rng.choice([30, 50, 60, 80, 100, 120, 150, 200]))
    nm_per_px = _DISPLAY_WIDTH_MM * 1e3 / mag_k / width
    bar_nm = max((nm for nm in _SCALE_BARS_NM if nm / nm_per_px <= 0.2 * width), default=50)
    bar_px = max(2, round(bar_nm / nm_per_px))
    label = f"{bar_nm // 1000}um" if bar_nm >= 1000 else f"{bar_nm}nm"
    right = width - 3 - bar_px
    label_w = draw.textlength(label, font=font)
    text = ""
    for field in _fields(rng, mag_k):
        candidate = f"{text}  {field}" if text else field
        if draw.textlength(candidate, font=font) > right - label_w - 10:
            break
        text = candidate
    mid = rows / 2
    draw.text((3, mid), text, fill=255, font=font, anchor="lm")
    draw.text((right - 3, mid), label, fill=255, font=font, anchor="rm")
    bar_h = max(1, rows // 8)
    draw.rectangle([right, mid - bar_h / 2, right + bar_px, mid + bar_h / 2], fill=255)
    return np.asarray(band, np.float32) / 255.0
