"""Remove the text databar of production SEM images, and map outputs back to full size.

SEM tools burn a strip of text (magnification, kV, scale bar) into the top or bottom rows.
The model must not see it (text looks like defects to CLIP), but masks, boxes and maps that
leave the pipeline must be in the coordinates of the original image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np


@dataclass(frozen=True)
class DatabarCrop:
    """Rows removed from the top and bottom of every image (and mask) before the model."""

    top: int = 0  # rows removed at the top
    bottom: int = 0  # rows removed at the bottom

    def __post_init__(self) -> None:
        for field in ("top", "bottom"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise ValueError(f"DatabarCrop.{field} must be an integer >= 0, got {value!r}")

    def cropped_height(self, height: int) -> int:
        """Rows left of an image ``height`` rows tall; ValueError if none would be left."""
        left = height - self.top - self.bottom
        if left <= 0:
            raise ValueError(
                f"databar crop (top={self.top}, bottom={self.bottom}) leaves no rows "
                f"of an image {height} rows tall"
            )
        return left

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Crop rows of an (H, W) or (H, W, C) array; returns a view, (H - top - bottom, ...)."""
        height = array.shape[0]
        return array[self.top : self.top + self.cropped_height(height)]

    def undo_mask(self, mask: np.ndarray, full_shape: tuple[int, int]) -> np.ndarray:
        """Pad a cropped (h, W, ...) mask or map back to ``full_shape`` (H, W) with zeros/False.

        The databar rows cannot contain defects, so they are filled with the "no defect" value
        of the mask's dtype.
        """
        height, width = int(full_shape[0]), int(full_shape[1])
        expected = (self.cropped_height(height), width)
        if tuple(mask.shape[:2]) != expected:
            raise ValueError(
                f"cropped mask is {mask.shape[0]}x{mask.shape[1]} but a {height}x{width} image "
                f"cropped by (top={self.top}, bottom={self.bottom}) is {expected[0]}x{width}"
            )
        full = np.zeros((height, width, *mask.shape[2:]), dtype=mask.dtype)
        full[self.top : self.top + expected[0]] = mask
        return full

    def undo_bbox(
        self, bbox: Sequence[float], fmt: Literal["xywh", "xyxy"] = "xywh"
    ) -> tuple[float, ...]:
        """Shift a box found on the cropped image to full-image coordinates (y += top).

        ``fmt`` is COCO ``(x, y, w, h)`` by default, or ``(x0, y0, x1, y1)``.
        """
        if len(bbox) != 4:
            raise ValueError(f"bbox must have 4 numbers, got {len(bbox)}")
        x0, y0, a, b = bbox
        if fmt == "xywh":
            return (x0, y0 + self.top, a, b)
        if fmt == "xyxy":
            return (x0, y0 + self.top, a, b + self.top)
        raise ValueError(f"fmt must be 'xywh' or 'xyxy', got {fmt!r}")

    def to_dict(self) -> dict[str, int]:
        """Plain dict for model metadata (JSON/YAML)."""
        return {"top": int(self.top), "bottom": int(self.bottom)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> DatabarCrop:
        """Inverse of :meth:`to_dict`; missing keys mean 0, unknown keys are an error."""
        data = dict(data or {})
        unknown = sorted(set(data) - {"top", "bottom"})
        if unknown:
            raise ValueError(f"unknown databar keys {unknown}; expected 'top' and 'bottom'")
        return cls(top=data.get("top", 0), bottom=data.get("bottom", 0))
