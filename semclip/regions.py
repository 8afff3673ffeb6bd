"""Connected-region statistics of a binary defect mask.

The prediction table reports how many separate defects an image has, how many pixels
they cover, and where they are. Components are 8-connected: SEM defects (particles,
scratches, bridges) are often thin and run diagonally across the pixel grid, and a
4-connected labelling would split one such defect into many one-pixel "regions".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["RegionStats", "region_stats"]

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)  # diagonal neighbours join a region


@dataclass(frozen=True)
class RegionStats:
    """Summary of the defect pixels of one mask."""

    n_regions: int  # 8-connected components of defect pixels; 0 for an empty mask
    area_px: int  # defect pixels in all regions together
    bbox: tuple[int, int, int, int] | None  # (x, y, w, h) around all defect pixels; None if empty


def region_stats(mask: np.ndarray) -> RegionStats:
    """Count 8-connected defect regions, their total area and joint bounding box.

    ``mask`` is (H, W), nonzero = defect. The box covers all regions together (not one per
    region) because reviewers crop one window per image; x is the column, y the row.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    defect = mask != 0
    area = int(np.count_nonzero(defect))
    if area == 0:
        return RegionStats(n_regions=0, area_px=0, bbox=None)
    _, n_regions = ndimage.label(defect, structure=_EIGHT_CONNECTED)
    rows = np.flatnonzero(defect.any(axis=1))
    cols = np.flatnonzero(defect.any(axis=0))
    y0, y1 = int(rows[0]), int(rows[-1])
    x0, x1 = int(cols[0]), int(cols[-1])
    return RegionStats(
        n_regions=int(n_regions),
        area_px=area,
        bbox=(x0, y0, x1 - x0 + 1, y1 - y0 + 1),
    )
