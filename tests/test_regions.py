"""Region statistics: 8-connected counting, total area and the joint bounding box."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from semclip.regions import RegionStats, region_stats


def test_empty_mask_has_no_regions_and_no_box() -> None:
    assert region_stats(np.zeros((5, 4), bool)) == RegionStats(n_regions=0, area_px=0, bbox=None)
    assert region_stats(np.zeros((0, 3), np.uint8)) == RegionStats(0, 0, None)


def test_diagonal_pixels_are_one_region() -> None:
    mask = np.eye(5, dtype=bool)  # 4-connectivity would count 5 regions
    stats = region_stats(mask)
    assert stats == RegionStats(n_regions=1, area_px=5, bbox=(0, 0, 5, 5))
    anti = np.fliplr(mask)
    assert region_stats(anti).n_regions == 1


def test_separate_blobs_counted_with_joint_box() -> None:
    mask = np.zeros((10, 12), np.uint8)
    mask[1:3, 2:5] = 1  # 2x3 = 6 px, rows 1-2, cols 2-4
    mask[6:9, 8:10] = 255  # 3x2 = 6 px, rows 6-8, cols 8-9; any nonzero is a defect
    mask[4, 11] = 1  # lone pixel two columns away from the second blob
    stats = region_stats(mask)
    assert stats.n_regions == 3
    assert stats.area_px == 13
    assert stats.bbox == (2, 1, 10, 8)  # x 2..11, y 1..8


def test_box_is_x_column_y_row() -> None:
    mask = np.zeros((4, 9), bool)
    mask[2, 7] = True
    assert region_stats(mask).bbox == (7, 2, 1, 1)
    corner = np.zeros((3, 3), bool)
    corner[0, 0] = True
    assert region_stats(corner) == RegionStats(1, 1, (0, 0, 1, 1))


def test_full_mask() -> None:
    assert region_stats(np.ones((3, 7), np.float32)) == RegionStats(1, 21, (0, 0, 7, 3))


def test_fields_are_plain_ints_and_frozen() -> None:
    stats = region_stats(np.ones((2, 2), bool))
    assert type(stats.n_regions) is int and type(stats.area_px) is int
    assert stats.bbox is not None and all(type(v) is int for v in stats.bbox)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.n_regions = 3  # type: ignore[misc]


def test_rejects_non_2d() -> None:
    with pytest.raises(ValueError, match="2-D"):
        region_stats(np.zeros((2, 2, 2), bool))
