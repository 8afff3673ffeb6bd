"""Data: image decoding, defect masks, databar crops, data sets and few-shot support draws."""

from __future__ import annotations

from semclip.data.databar import DatabarCrop
from semclip.data.dataset import (
    Dataset,
    DatasetError,
    DatasetProblem,
    Sample,
    draw_support,
    load_dataset,
    read_manifest,
    read_mvtec,
)
from semclip.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    LoadedImage,
    read_image,
    read_image_shape,
    read_raw_array,
)
from semclip.data.masks import MaskError, decode_mask, read_mask

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DatabarCrop",
    "Dataset",
    "DatasetError",
    "DatasetProblem",
    "ImageReadError",
    "LoadedImage",
    "MaskError",
    "Sample",
    "decode_mask",
    "draw_support",
    "load_dataset",
    "read_image",
    "read_image_shape",
    "read_manifest",
    "read_mask",
    "read_mvtec",
    "read_raw_array",
]
