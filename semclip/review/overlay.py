"""An overlay PNG: the SEM image in gray, the predicted mask tinted and outlined on top."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from semclip import rle

__all__ = ["decode_row_mask", "overlay_png"]

_TINT = np.array([255, 40, 40], dtype=np.float32)  # red: visible on any gray level
_ALPHA = 0.4


def decode_row_mask(mask_rle: str | None, height: int, width: int) -> np.ndarray:
    """The (H, W) bool mask of a prediction row (COCO RLE; None: no defect pixel)."""
    if mask_rle is None:
        return np.zeros((height, width), dtype=bool)
    return rle.decode({"size": [height, width], "counts": mask_rle}).astype(bool)


def overlay_png(pixels: np.ndarray, mask: np.ndarray, caption: str = "") -> bytes:
    """PNG bytes of ``pixels`` ((H, W) gray in [0, 1]) with ``mask`` ((H, W) bool) tinted
    and its boundary drawn, and ``caption`` (class and probability) in the top-left corner.

    Raises ValueError when the mask's size is not the image's (a row of another image).
    """
    if mask.shape != pixels.shape:
        raise ValueError(f"mask of size {mask.shape} does not fit an image of size {pixels.shape}")
    gray = np.clip(pixels, 0.0, 1.0)[..., None] * 255.0  # (H, W, 1)
    rgb = np.repeat(gray, 3, axis=2)  # (H, W, 3)
    rgb[mask] = (1 - _ALPHA) * rgb[mask] + _ALPHA * _TINT
    edge = mask & ~ndimage.binary_erosion(mask)
    rgb[edge] = _TINT
    image = Image.fromarray(rgb.astype(np.uint8), mode="RGB")
    if caption:
        draw = ImageDraw.Draw(image)
        draw.rectangle((0, 0, 6 * len(caption) + 4, 12), fill=(0, 0, 0))
        draw.text((2, 1), caption, fill=(255, 255, 0))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
