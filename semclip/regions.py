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

__all__ = ["REGION_DESCRIPTORS", "RegionStats", "region_descriptors", "region_stats"]

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)  # diagonal neighbours join a region
_RING_PX = 4  # width of the band around a region that stands for its surroundings

REGION_DESCRIPTORS = (
    "log_area",  # size
    "log_elongation",  # sqrt of the pixel covariance's eigenvalue ratio: scratch ≫ particle
    "extent",  # area / bounding-box area: compact blob ≈ 0.8, diagonal line ≪ 1
    "log_extent_px",  # longest bounding-box side
    "compactness",  # perimeter² / area
    "n_regions",
    "contrast",  # mean inside − mean of the surrounding ring, in image std units
    "contrast_to_image",  # mean inside − image mean, in image std units
    "inside_spread",  # std inside, in image std units
    "edge_ratio",  # gradient magnitude inside / over the image
)


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


def region_descriptors(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Shape and contrast of a defect region: the `REGION_DESCRIPTORS`, in that order.

    Why: the classes a reviewer names (particle, hole, scratch, bridge, residue) differ by
    what the region looks like: its size, how elongated it is, whether it is brighter or
    darker than its surroundings. `docs/offline-quality.md` measures how well these few
    numbers classify when the region is right, against the backbone's features.
    ``image`` (H, W) grey values, ``mask`` (H, W) nonzero = defect. Contrasts are in units
    of the image's std so that brightness and gain settings of the tool do not matter.
    Raises ValueError for an empty mask or a mask whose shape is not the image's.
    """
    image = np.asarray(image, dtype=np.float64)
    defect = np.asarray(mask) != 0
    if image.ndim != 2 or defect.shape != image.shape:
        raise ValueError(f"mask shape {defect.shape} is not the image's {image.shape}")
    area = int(np.count_nonzero(defect))
    if area == 0:
        raise ValueError("region descriptors need a non-empty mask")
    ys, xs = np.nonzero(defect)
    cov = np.cov(np.stack([ys, xs]).astype(np.float64)) if area > 1 else np.zeros((2, 2))
    low, high = np.linalg.eigvalsh(cov + 1e-3 * np.eye(2))
    box_h, box_w = int(np.ptp(ys)) + 1, int(np.ptp(xs)) + 1
    perimeter = int(np.count_nonzero(defect & ~ndimage.binary_erosion(defect)))
    ring = ndimage.binary_dilation(defect, iterations=_RING_PX) & ~defect
    scale = float(image.std()) + 1e-6
    inside = float(image[defect].mean())
    around = float(image[ring].mean()) if ring.any() else float(image.mean())
    gradient = np.hypot(*np.gradient(image))
    _, n_regions = ndimage.label(defect, structure=_EIGHT_CONNECTED)
    return np.array(
        [
            np.log(area),
            0.5 * np.log(high / low),
            area / (box_h * box_w),
            np.log(max(box_h, box_w)),
            perimeter**2 / area,
            float(n_regions),
            (inside - around) / scale,
            (inside - float(image.mean())) / scale,
            float(image[defect].std()) / scale,
            float(gradient[defect].mean()) / (float(gradient.mean()) + 1e-6),
        ]
    )
