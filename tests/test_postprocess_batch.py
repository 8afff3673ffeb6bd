"""Batched device post-processing gives what the per-image host path gives, RLE byte-identical."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semclip import rle
from semclip.data.databar import DatabarCrop
from semclip.maps import bilinear_matrix
from semclip.postprocess import _pack_bits, batch_mask_outputs, mask_outputs

mask_utils = pytest.importorskip("pycocotools.mask", reason="pycocotools is a dev dependency")


def _coco(mask: np.ndarray) -> str:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()


def _edge_masks() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    masks = [
        np.zeros((1, 1), bool),
        np.ones((1, 1), bool),
        np.zeros((9, 7), bool),
        np.ones((9, 7), bool),
        np.ones((1, 257), bool),
        rng.random((1, 301)) < 0.5,
        rng.random((333, 1)) < 0.5,
        np.eye(13, dtype=bool),
    ]
    for _ in range(30):
        h, w = (int(v) for v in rng.integers(1, 90, size=2))
        masks.append(rng.random((h, w)) < rng.random())
    return masks


@pytest.mark.parametrize("mask", _edge_masks(), ids=lambda m: f"{m.shape[0]}x{m.shape[1]}")
def test_column_major_encoding_is_byte_identical_to_pycocotools(mask: np.ndarray) -> None:
    h, w = mask.shape
    got = rle.encode_column_major(np.ascontiguousarray(mask.T), h, w)
    assert got == _coco(mask) == rle.encode(mask)["counts"]


def test_column_major_encoding_rejects_the_untransposed_mask() -> None:
    with pytest.raises(ValueError, match="transpose"):
        rle.encode_column_major(np.zeros((3, 5), bool), 3, 5)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 64, 1001])
def test_pack_bits_matches_numpy(n: int) -> None:
    bits = torch.from_numpy(np.random.default_rng(n).random(n) < 0.5)
    np.testing.assert_array_equal(_pack_bits(bits).numpy(), np.packbits(bits.numpy()))


def _near_tau(score: np.ndarray, shape: tuple[int, int], tau: float) -> np.ndarray:
    """Pixels whose resized value lies within float32 rounding of τ (either path may flip)."""
    rows = bilinear_matrix(score.shape[0], shape[0]).astype(np.float64)
    cols = bilinear_matrix(score.shape[1], shape[1]).astype(np.float64)
    return np.abs(rows @ score.astype(np.float64) @ cols.T - tau) < 1e-5


@pytest.mark.parametrize("min_region_px", [0, 40])
@pytest.mark.parametrize("databar", [DatabarCrop(), DatabarCrop(top=3, bottom=5)])
def test_batch_equals_per_image_path(databar: DatabarCrop, min_region_px: int) -> None:
    rng = np.random.default_rng(7)
    s, k, tau = 24, 4, 0.55
    shapes = [(64, 64), (31, 97), (64, 64), (200, 13), (9, 1), (64, 64), (120, 121)]
    if databar.top:
        shapes[4] = (10, 1)  # one row left after the crop
    coarse = rng.random((len(shapes), 6, 6)).astype(np.float32)
    score = torch.nn.functional.interpolate(torch.from_numpy(coarse)[:, None], size=s)[:, 0]
    score[1] = 0.0  # an empty mask
    score[5] = 1.0  # a full one
    class_map = torch.from_numpy(rng.integers(1, k, size=(len(shapes), s, s)))
    pixel = [None, 2.5, None, 1.0, None, 3.0, None]
    got = batch_mask_outputs(
        score, class_map, shapes, tau, databar, k, min_region_px, pixel, device_path=True
    )
    for i, shape in enumerate(shapes):
        want = mask_outputs(
            score[i].numpy(), class_map[i].numpy(), shape, tau, databar, min_region_px, pixel[i]
        )
        cropped = (databar.cropped_height(shape[0]), shape[1])
        if _near_tau(score[i].numpy(), cropped, tau).any():
            pytest.skip("a pixel lies within rounding of τ; pick another seed")
        assert got[i] == want, i
        if got[i].rle is not None:
            full = rle.decode({"size": list(shape), "counts": got[i].rle})
            assert _coco(full) == got[i].rle
    assert got[1].rle is None and got[1].stats.area_px == 0 and got[1].majority_class is None
    assert got[5].stats.area_px == (shapes[5][0] - databar.top - databar.bottom) * shapes[5][1]


def test_batch_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="2 maps but 1 image shapes"):
        batch_mask_outputs(
            torch.zeros(2, 8, 8),
            torch.zeros(2, 8, 8, dtype=torch.long),
            [(8, 8)],
            0.5,
            DatabarCrop(),
            2,
        )


def test_column_major_rle_of_a_large_mask_equals_the_fortran_copy() -> None:
    """Old path: rle.encode on the (H, W) mask; new: the transposed bits the device packs."""
    rng = np.random.default_rng(1)
    coarse = rng.random((250, 200)) < 0.3
    mask = np.kron(coarse, np.ones((8, 8), bool))  # 2000 x 1600 with long runs
    columns = np.ascontiguousarray(mask.T)
    assert rle.encode_column_major(columns, *mask.shape) == rle.encode(mask)["counts"]
