"""Region statistics (8-connected count, area, joint box) and shape/contrast descriptors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from semclip.regions import REGION_DESCRIPTORS, RegionStats, region_descriptors, region_stats


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


def _scene() -> np.ndarray:
    rng = np.random.default_rng(0)
    return 0.5 + 0.02 * rng.standard_normal((64, 64))


def test_region_descriptors_tell_a_scratch_from_a_particle_and_a_hole() -> None:
    image = _scene()
    scratch = np.zeros((64, 64), bool)
    scratch[30:32, 4:60] = True
    particle = np.zeros((64, 64), bool)
    particle[20:26, 20:26] = True
    image[particle] = 0.9  # brighter than its surroundings
    hole = np.zeros((64, 64), bool)
    hole[40:46, 40:46] = True
    image[hole] = 0.1  # darker
    names = list(REGION_DESCRIPTORS)
    s, p, h = (region_descriptors(image, m) for m in (scratch, particle, hole))
    elong, contrast = names.index("log_elongation"), names.index("contrast")
    assert s[elong] > p[elong] + 1.5  # 56 × 2 px against 6 × 6 px
    assert p[contrast] > 2 and h[contrast] < -2
    assert s.shape == (len(REGION_DESCRIPTORS),) and np.isfinite(s).all()
    assert s[names.index("n_regions")] == 1
    assert region_descriptors(image, particle | hole)[names.index("n_regions")] == 2


def test_region_descriptors_do_not_depend_on_brightness_and_gain() -> None:
    image = _scene()
    mask = np.zeros((64, 64), bool)
    mask[10:14, 10:30] = True
    image[mask] = 0.8
    np.testing.assert_allclose(
        region_descriptors(image, mask),
        region_descriptors(3.0 * image + 0.2, mask),
        rtol=1e-4,
        atol=1e-3,
    )


def test_region_descriptors_refuse_an_empty_or_mis_sized_mask() -> None:
    image = _scene()
    with pytest.raises(ValueError, match="non-empty"):
        region_descriptors(image, np.zeros((64, 64), bool))
    with pytest.raises(ValueError, match="not the image's"):
        region_descriptors(image, np.ones((32, 64), bool))
