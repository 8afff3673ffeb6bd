"""The text databar that review SEMs burn into every image (kV, magnification, lot, scale bar).

Real review images carry it, so models must learn to ignore or crop it; the generator records its
height so that cropping can be tested. It is drawn digitally (no noise, no blur) as tools do.
"""

from __future__ import annotations

import functools
import string
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SIDES = ("top", "bottom", "none")
LAYOUTS = ("classic", "centred", "right", "two-line")


@dataclass(frozen=True)
class DatabarSpec:
    """Which databars one style's tool burns in (used when the side is left to the style)."""

    sides: tuple[tuple[str, float], ...] = (("bottom", 1.0),)  # (side, weight)
    frac: tuple[float, float] = (0.08, 0.08)  # height as a fraction of the image side
    inverted_prob: float = 0.0  # chance of a light band with dark text
    layouts: tuple[str, ...] = ("classic",)  # text arrangements, see LAYOUTS
    font_scale: tuple[float, float] = (0.6, 0.6)  # glyph height / band height


@dataclass(frozen=True)
class DatabarLook:
    """One image's databar appearance."""

    inverted: bool = False  # light band, dark text
    layout: str = "classic"  # one of LAYOUTS
    font_scale: float = 0.6  # glyph height / band height


def draw_look(rng: np.random.Generator, spec: DatabarSpec) -> DatabarLook:
    """Draw one image's databar appearance from ``spec`` (no draws for what does not vary)."""
    lo, hi = spec.font_scale
    return DatabarLook(
        inverted=bool(spec.inverted_prob > 0 and rng.random() < spec.inverted_prob),
        layout=str(spec.layouts[int(rng.integers(len(spec.layouts)))])
        if len(spec.layouts) > 1
        else spec.layouts[0],
        font_scale=float(rng.uniform(lo, hi)) if hi > lo else lo,
    )


def draw_side(rng: np.random.Generator, spec: DatabarSpec) -> tuple[str, float]:
    """Draw one image's databar (side, height fraction) from ``spec``."""
    names, weights = zip(*spec.sides, strict=True)
    p = np.asarray(weights, float) / sum(weights)
    return str(names[int(rng.choice(len(names), p=p))]), float(rng.uniform(*spec.frac))


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


def render_databar(
    rng: np.random.Generator, width: int, rows: int, look: DatabarLook | None = None
) -> np.ndarray:
    """Band with acquisition text and a scale bar, (rows, width) float32 in [0, 1].

    Default look: a dark band with white text on one line, fields left and scale bar right.
    """
    look = look or DatabarLook()
    background = int(rng.uniform(0.02, 0.12) * 255)
    ink = 255
    if look.inverted:
        background, ink = 255 - background, int(rng.uniform(0.0, 0.1) * 255)
    band = Image.new("L", (width, rows), background)
    if rows < 5:
        return np.asarray(band, np.float32) / 255.0
    draw = ImageDraw.Draw(band)
    lines = 2 if look.layout == "two-line" and rows >= 14 else 1
    font = _font(max(6, int(rows * look.font_scale / lines)))
    mag_k = float(rng.choice([30, 50, 60, 80, 100, 120, 150, 200]))
    nm_per_px = _DISPLAY_WIDTH_MM * 1e3 / mag_k / width
    bar_nm = max((nm for nm in _SCALE_BARS_NM if nm / nm_per_px <= 0.2 * width), default=50)
    bar_px = max(2, round(bar_nm / nm_per_px))
    label = f"{bar_nm // 1000}um" if bar_nm >= 1000 else f"{bar_nm}nm"
    label_w = draw.textlength(label, font=font)
    bar_left = look.layout == "right"  # scale bar on the left, text right-aligned
    right = 3 + bar_px + int(label_w) + 6 if bar_left else width - 3 - bar_px
    room = (width - right - 6) if bar_left else right - label_w - 10
    texts = [""] * lines
    fields = _fields(rng, mag_k)
    for k in range(lines):
        while fields:
            candidate = f"{texts[k]}  {fields[0]}" if texts[k] else fields[0]
            if draw.textlength(candidate, font=font) > room:
                break
            texts[k] = candidate
            fields.pop(0)
    for k, text in enumerate(texts):
        mid_k = rows * (k + 0.5) / lines
        if look.layout == "centred":
            draw.text(((right - label_w) / 2, mid_k), text, fill=ink, font=font, anchor="mm")
        elif bar_left:
            draw.text((width - 3, mid_k), text, fill=ink, font=font, anchor="rm")
        else:
            draw.text((3, mid_k), text, fill=ink, font=font, anchor="lm")
    mid = rows / 2
    bar_x = 3 if bar_left else right
    label_x = bar_x + bar_px + 3 if bar_left else right - 3
    draw.text((label_x, mid), label, fill=ink, font=font, anchor="lm" if bar_left else "rm")
    bar_h = max(1, rows // 8)
    draw.rectangle([bar_x, mid - bar_h / 2, bar_x + bar_px, mid + bar_h / 2], fill=ink)
    return np.asarray(band, np.float32) / 255.0
