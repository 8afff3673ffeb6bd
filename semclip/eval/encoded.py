"""Every image of a data set through the backbone once (no augmentation), kept for all methods.

An evaluation scores the same test images for every method, k and seed; their backbone features
never change, so they are computed (or read from the shared FeatureCache) once and held here,
together with what the metrics need per image: content hash, original size, ground-truth mask.
Augmented support features are not held: the fits fetch them through the same cache.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from semclip.data.dataset import GOOD, Dataset, Sample, read_sample
from semclip.data.images import ImageReadError
from semclip.encoder import DualPathEncoder
from semclip.feature_cache import FeatureCache, entry_key
from semclip.features import Features, Preprocess, batches, extract_features

log = logging.getLogger(__name__)

Progress = Callable[..., Iterable]  # tqdm-like: progress(iterable, total=..., desc=...)


def no_progress(iterable: Iterable, **_: object) -> Iterable:
    """The default progress wrapper: none."""
    return iterable


@dataclass(frozen=True)
class PackedMask:
    """A bool (H, W) mask stored as bits: the test masks of a large set stay in memory cheaply."""

    bits: np.ndarray  # (ceil(H·W / 8),) uint8
    shape: tuple[int, int]

    @classmethod
    def pack(cls, mask: np.ndarray) -> PackedMask:
        return cls(np.packbits(mask.ravel()), (int(mask.shape[0]), int(mask.shape[1])))

    def unpack(self) -> np.ndarray:
        count = self.shape[0] * self.shape[1]
        return np.unpackbits(self.bits, count=count).reshape(self.shape).astype(bool)


@dataclass
class EncodedSet:
    """Readable samples of a data set with their aug-0 features, hashes, sizes and masks."""

    samples: tuple[Sample, ...]  # readable samples, data set order
    feats: Features  # (N, m, 1+P, ·) fp16 on CPU
    sha256: tuple[str, ...]
    shapes: tuple[tuple[int, int], ...]  # (H, W) of each image, databar included
    masks: tuple[PackedMask | None, ...]  # ground truth; None: pixels unknown or all good
    pixels_known: np.ndarray  # (N,) bool: good image, or defect image with a mask
    unreadable: tuple[str, ...]  # "path: reason" for images left out

    def __post_init__(self) -> None:
        self._row = {sample: i for i, sample in enumerate(self.samples)}

    def __len__(self) -> int:
        return len(self.samples)

    def rows(self, dataset: Dataset) -> list[int]:
        """Row of each sample of `dataset` (a split of the encoded set), unreadable ones dropped."""
        return [self._row[s] for s in dataset.samples if s in self._row]

    def readable(self, dataset: Dataset) -> Dataset:
        """`dataset` without the samples that could not be read."""
        return Dataset(dataset.root, tuple(s for s in dataset.samples if s in self._row))

    def gt_mask(self, row: int) -> np.ndarray | None:
        """Ground-truth (H, W) bool mask; all False for good images; None when unknown."""
        if not self.pixels_known[row]:
            return None
        packed = self.masks[row]
        return packed.unpack() if packed is not None else np.zeros(self.shapes[row], dtype=bool)


def encode_dataset(
    dataset: Dataset,
    encoder: DualPathEncoder,
    preprocess: Preprocess,
    cache: FeatureCache,
    *,
    batch_size: int = 16,
    progress: Progress = no_progress,
) -> EncodedSet:
    """Read every image, run the backbone where the cache misses, read every mask.

    An image that cannot be decoded (or that the databar crop would empty), or whose mask
    cannot be decoded or has another size than its image, is left out with its reason: one
    labelling error must not cost the evaluation of every other image.
    """
    samples: list[Sample] = []
    parts: list[Features] = []
    hashes: list[str] = []
    shapes: list[tuple[int, int]] = []
    masks: list[PackedMask | None] = []
    known: list[bool] = []
    unreadable: list[str] = []
    n_batches = -(-len(dataset) // batch_size)
    for sl in progress(batches(len(dataset), batch_size), total=n_batches, desc="encode"):
        tensors, keys = [], []
        for sample in dataset.samples[sl]:
            try:
                image, mask = read_sample(sample)
                tensor = preprocess.image_tensor(image.pixels)
            except (ImageReadError, ValueError) as exc:
                log.warning("left out of the evaluation: %s", exc)
                unreadable.append(f"{sample.image}: {exc}")
                continue
            tensors.append(tensor)
            samples.append(sample)
            keys.append(entry_key(image.sha256, 0, image.page))
            hashes.append(str(image.sha256))
            shapes.append((int(image.pixels.shape[0]), int(image.pixels.shape[1])))
            masks.append(PackedMask.pack(mask) if mask is not None and mask.any() else None)
            known.append(mask is not None or sample.label == GOOD)
        if tensors:
            x = torch.stack(tensors)  # (b, 3, S, S)
            parts.append(
                cache.get(keys, lambda missing, x=x: extract_features(encoder, x[missing]))
            )
    if not parts:
        raise ValueError(f"no readable image in data set '{dataset.root}'")
    return EncodedSet(
        tuple(samples),
        Features.cat(parts),
        tuple(hashes),
        tuple(shapes),
        tuple(masks),
        np.asarray(known, dtype=bool),
        tuple(unreadable),
    )
