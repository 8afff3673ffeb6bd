"""Defect masks: one decoding rule for every way a fab stores them (0/1, 0/255, 16-bit, RGB).

The rule (issue 3, refining design notes §2): a pixel is a defect when its value is at least half
the mask's maximum: >= 128 in 0/255 masks, >= 1 in 0/1 masks, >= 100 in a blurred mask that
peaks at 200; an all-zero mask has no defect. RGB masks take the maximum over channels first.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from semclip.data.images import read_raw_array

logger = logging.getLogger(__name__)


class MaskError(ValueError):
    """A mask does not fit its image; names the mask path and both sizes."""

    def __init__(
        self, path: str, mask_shape: tuple[int, int], expected_shape: tuple[int, int]
    ) -> None:
        super().__init__(
            f"mask '{path}' is {_hw(mask_shape)} (HxW) but its image is {_hw(expected_shape)}; "
            "masks must have their image's size"
        )
        self.path = path
        self.mask_shape = mask_shape
        self.expected_shape = expected_shape


def decode_mask(array: np.ndarray) -> np.ndarray:
    """Return the (H, W) bool defect mask of stored samples ``array`` ((H, W) or (H, W, C)).

    The threshold follows the mask's own maximum: 0/1 and 0/255 masks are both common, and a
    0/1 mask thresholded at 128 would silently have no defects.
    """
    if array.ndim == 3:
        array = _max_over_colour(array)
    if array.ndim != 2:
        raise ValueError(f"mask must be (H, W) or (H, W, C), got shape {array.shape}")
    if array.dtype == np.bool_:
        return array
    if array.size == 0:
        return np.zeros(array.shape, dtype=bool)
    high = array.max()
    if array.dtype.kind == "f":
        if not (array.min() >= 0.0 and high <= 1.0):
            raise ValueError("float masks must lie in [0, 1]")
        return array >= 0.5
    if array.dtype.kind not in "iu":
        raise ValueError(f"unsupported mask dtype {array.dtype}")
    if array.min() < 0:
        raise ValueError("integer masks must not be negative")
    return array >= _threshold(int(high))


def read_mask(
    path: str | os.PathLike[str], expected_shape: tuple[int, int] | None = None
) -> np.ndarray:
    """Read and decode the mask at ``path``; (H, W) bool.

    Raises:
        MaskError: when ``expected_shape`` (the image's (H, W)) is given and differs.
        ImageReadError: when the file cannot be decoded.
    """
    array = read_raw_array(path)
    shape = (int(array.shape[0]), int(array.shape[1]))
    if expected_shape is not None and shape != tuple(expected_shape):
        raise MaskError(os.fspath(path), shape, (int(expected_shape[0]), int(expected_shape[1])))
    return decode_mask(array)


def _max_over_colour(array: np.ndarray) -> np.ndarray:
    """(H, W, C) → (H, W); an alpha channel (C = 2 or 4) is dropped, it is not a defect."""
    channels = array.shape[-1]
    if channels in (2, 4):
        array = array[..., : channels - 1]
    return array.max(axis=-1)


def _threshold(high: int) -> float:
    """Defect threshold: at least half the mask's own maximum value.

    0/1 masks → 1, 0/255 → 128 (127.5), 0/65535 → 32768, and a blurred or dimmed mask whose
    maximum is 200 → 100: the edge of a soft mask counts where it is at least half as strong as
    its core, whatever bit depth the annotation tool wrote.
    """
    return high / 2 if high > 1 else 1


def _hw(shape: tuple[int, int]) -> str:
    return f"{shape[0]}x{shape[1]}"
