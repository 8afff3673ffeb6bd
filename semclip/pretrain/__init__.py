"""Domain pretraining of a CLIP backbone on SEM images (`semclip pretrain`).

Web image-text pairs hold few SEM images, and offline there are no pretrained weights at all;
this package adapts (or trains from scratch) an open_clip model on a labelled SEM archive,
with captions from the prompt library, and writes an open_clip `local-dir:` backbone folder
plus `seen_images.txt`, which `seen_overlap` checks few-shot test sets against.
"""

from __future__ import annotations

from semclip.pretrain.config import (
    SMALL_MODEL,
    AugmentConfig,
    PretrainConfig,
    SynthArchiveConfig,
)
from semclip.pretrain.overlap import SEEN_IMAGES, read_seen_images, seen_overlap
from semclip.pretrain.trainer import PretrainResult, pretrain

__all__ = [
    "SEEN_IMAGES",
    "SMALL_MODEL",
    "AugmentConfig",
    "PretrainConfig",
    "PretrainResult",
    "SynthArchiveConfig",
    "pretrain",
    "read_seen_images",
    "seen_overlap",
]
