"""The RLE codec must be byte-identical to pycocotools, which is a test-only dependency."""

from __future__ import annotations

import numpy as np
import pytest

from semclip import rle

mask_utils = pytest.importorskip("pycocotools.mask", reason="pycocotools is a dev dependency")


def _coco_counts(mask: np.ndarray) -> str:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()


def _blobs(rng: np.random.Generator, h: int, w: int, density: float) -> np.ndarray:
    """Random mask with long runs: threshold a coarse noise image upsampled 4x."""
    coarse = rng.random(((h + 3) // 4, (w + 3) // 4)) < density
    return np.kron(coarse, np.ones((4, 4), dtype=bool))[:h, :w]


def _random_masks() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    masks = [
        np.zeros((1, 1), bool),
        np.ones((1, 1), bool),
        np.zeros((7, 5), bool),
        np.ones((7, 5), bool),
        np.eye(6, dtype=bool),
        np.ones((1, 300), bool),
        rng.random((300, 1)) < 0.5,
    ]
    for _ in range(40):
        h, w = rng.integers(1, 80, size=2)
        masks.append(rng.random((h, w)) < rng.random())
        masks.append(_blobs(rng, int(h), int(w), float(rng.random())))
    single = np.zeros((1500, 1700), bool)  # huge runs: counts need 5+ characters
    single[1200, 900] = True
    masks.append(single)
    growing = np.zeros((1, 5000), bool)  # runs that shrink and grow: negative deltas
    pos = np.cumsum(np.r_[3, 40, 1, 2000, 7, 33, 900, 1])
    growing[0, pos[pos < 5000]] = True
    masks.append(growing)
    return masks


@pytest.mark.parametrize("mask", _random_masks(), ids=lambda m: f"{m.shape[0]}x{m.shape[1]}")
def test_encode_is_byte_identical_to_pycocotools(mask: np.ndarray) -> None:
    encoded = rle.encode(mask)
    assert encoded["size"] == list(mask.shape)
    assert encoded["counts"] == _coco_counts(mask)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools
@pytest.mark.parametrize("mask", _random_masks()[::5], ids=lambda m: f"{m.shape[0]}x{m.shape[1]}")
def test_decode_and_area_agree_with_pycocotools(mask: np.ndarray) -> None:
    coco = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    decoded = rle.decode(coco)  # counts as bytes, as pycocotools returns them
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, mask_utils.decode(coco))
    assert rle.area(coco) == int(mask_utils.area(coco)) == int(mask.sum())


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 0)])
def test_empty_shapes_round_trip(shape: tuple[int, int]) -> None:
    encoded = rle.encode(np.zeros(shape, bool))
    assert encoded == {"size": list(shape), "counts": "0"}  # pycocotools writes one 0 run
    assert rle.decode(encoded).shape == shape
    assert rle.area(encoded) == 0


def test_known_strings() -> None:
    # column-major: [[0,1],[1,1],[0,1]] -> 0 1 0 1 1 1 -> runs 1,1,1,3; the 4th is
    # stored as the delta to the 2nd (3 - 1 = 2)
    mask = np.array([[0, 1], [1, 1], [0, 1]], np.uint8)
    assert rle.encode(mask)["counts"] == "1112"
    assert rle.encode(np.ones((2, 2), bool))["counts"] == "04"  # leading empty zero run
    assert rle.encode(np.zeros((10, 10), bool))["counts"] == "T3"  # 100 = 0b11_00100


def test_extreme_counts_use_seven_characters() -> None:
    # uint32-sized runs and big swings between them (large negative deltas), without
    # building the 10-gigapixel mask: compare against pycocotools' own list -> string path.
    counts = [0, 2**32 - 1, 1, 2**32 - 2, 2**31, 3, 17, 2**20, 0, 5]
    w = sum(counts)
    coco = mask_utils.frPyObjects({"size": [1, w], "counts": counts}, 1, w)
    assert coco["counts"] == b"0oooooo31Ooooooo1UPPPPPLaPPPPPNmooo0_OUPPPO"
    assert rle._counts_to_string(np.array(counts)) == coco["counts"].decode()
    assert rle._string_to_counts(coco["counts"]).tolist() == counts
    assert rle.area(coco) == 2**32 - 1 + 2**32 - 2 + 3 + 2**20 + 5  # int64, no uint32 wrap


def test_round_trip_random_dtypes() -> None:
    rng = np.random.default_rng(1)
    for dtype in (bool, np.uint8, np.int32, np.float32):
        mask = (rng.random((37, 53)) < 0.3).astype(dtype) * 5  # any nonzero is a defect
        decoded = rle.decode(rle.encode(mask))
        np.testing.assert_array_equal(decoded, (mask != 0).astype(np.uint8))


def test_decode_uncompressed_list_counts() -> None:
    decoded = rle.decode({"size": [2, 3], "counts": [1, 2, 3]})  # column-major 0 1 1 0 0 0
    np.testing.assert_array_equal(decoded, [[0, 1, 0], [1, 0, 0]])
    assert rle.area({"size": [2, 3], "counts": [1, 2, 3]}) == 2
    assert rle.decode({"size": [2, 3], "counts": np.array([0, 6])}).sum() == 6


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"size": [2, 2], "counts": "0 4"}, "invalid character at position 1"),
        ({"size": [2, 2], "counts": "04\x7f"}, "invalid character at position 2"),
        ({"size": [2, 2], "counts": "0é"}, "ASCII"),
        ({"size": [2, 2], "counts": "0P"}, "ends in the middle"),  # 'P' has the 0x20 bit
        ({"size": [2, 2], "counts": "05"}, "sum to 5, expected h\\*w = 2\\*2 = 4"),
        ({"size": [2, 2], "counts": [1, 2]}, "sum to 3"),
        ({"size": [2, 2], "counts": [5, -1]}, "negative"),
        ({"size": [2, 2], "counts": [1.0, 3.0]}, "list of integers"),
        ({"size": [2, 2], "counts": "0" + "P" * 7 + "0"}, "longer than 7"),
        ({"size": [2], "counts": "4"}, "'size' must be"),
        ({"size": [-1, -4], "counts": "4"}, "non-negative"),
        ({"counts": "4"}, "'size' and 'counts'"),
    ],
)
def test_malformed_rle_raises(bad: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rle.decode(bad)
    with pytest.raises(ValueError, match=message):
        rle.area(bad)


def test_encode_rejects_non_2d() -> None:
    with pytest.raises(ValueError, match="2-D"):
        rle.encode(np.zeros((2, 2, 3), bool))


@pytest.mark.slow
def test_large_mask_is_identical() -> None:
    """A 4000 x 3000 mask with ~1.5M runs (speed is the bench's job, not a timed test)."""
    rng = np.random.default_rng(2)
    mask = _blobs(rng, 4000, 3000, 0.5)
    encoded = rle.encode(mask)
    assert encoded["counts"] == _coco_counts(mask)
    np.testing.assert_array_equal(rle.decode(encoded), mask)
