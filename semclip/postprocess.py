"""Model-resolution defect map → binary mask at the image's own resolution, RLE and statistics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from semclip import rle
from semclip.data.databar import DatabarCrop
from semclip.maps import resize_threshold
from semclip.regions import RegionStats, region_stats

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class MaskOutputs:
    """What a prediction row needs from the mask."""

    rle: str | None  # COCO counts; None when no defect pixel
    stats: RegionStats
    area_nm2: float | None
    majority_class: int | None  # most frequent per-pixel defect class inside the mask


def mask_outputs(
    score: np.ndarray,  # (S, S) overall defect map
    class_map: np.ndarray,  # (S, S) per-pixel defect class indices
    full_shape: tuple[int, int],  # (H, W) of the original image, databar included
    tau: float,
    databar: DatabarCrop,
    min_region_px: int = 0,
    pixel_size_nm: float | None = None,
) -> MaskOutputs:
    """Threshold the map at the cropped image's size, then put the databar rows back (empty)."""
    cropped = (databar.cropped_height(full_shape[0]), full_shape[1])
    mask = resize_threshold(score, cropped, tau)
    if min_region_px > 0:
        mask = drop_small_regions(mask, min_region_px)
    mask = databar.undo_mask(mask, full_shape)
    stats = region_stats(mask)
    counts = rle.encode(mask)["counts"] if stats.area_px else None
    area_nm2 = stats.area_px * pixel_size_nm**2 if pixel_size_nm else None
    inside = class_map[score > tau]
    majority = int(np.bincount(inside.ravel()).argmax()) if inside.size else None
    return MaskOutputs(counts, stats, area_nm2, majority)


def drop_small_regions(mask: np.ndarray, min_px: int) -> np.ndarray:
    """Remove 8-connected regions smaller than `min_px` pixels (speckle on noisy SEM frames)."""
    labels, n = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return keep[labels]
