"""Shots' images and masks fetched and decoded once: the support items and the hold-out set."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from fsspec import AbstractFileSystem

from semclip.data.dataset import GOOD
from semclip.data.images import ImageReadError, read_image, read_raw_array
from semclip.data.masks import MaskError, decode_mask
from semclip.io.fetch import fetch_bytes
from semclip.model import SupportItem
from semclip.refit.shots import Shot, wafer_group

__all__ = ["HoldoutSet", "load_holdout", "support_items"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HoldoutSet:
    """The hold-out images, read once, that every model in a refit is judged on."""

    shots: tuple[Shot, ...]
    images: tuple[bytes, ...]  # encoded file bytes, one per shot
    masks: tuple[np.ndarray | None, ...]  # (H, W) bool; None: no pixel truth for the image
    problems: tuple[str, ...] = ()  # shots left out, with the reason

    def __len__(self) -> int:
        return len(self.shots)

    @property
    def labels(self) -> tuple[str, ...]:
        """Classes present, ``good`` first: the label set both models are scored over."""
        present = {s.label for s in self.shots}
        return tuple(([GOOD] if GOOD in present else []) + sorted(present - {GOOD}))


def support_items(
    fs: AbstractFileSystem, support: Sequence[Shot], path_regex: str | None = None
) -> tuple[list[SupportItem], list[str]]:
    """Model support items (image bytes, decoded mask, wafer group) and the shots skipped.

    A shot whose image or mask cannot be read, or whose mask has another size than its
    image, is skipped rather than failing the refit: one bad confirmation should not cost
    the week's model, and the report lists it. With ``path_regex`` (SEMCLIP_PATH_REGEX)
    each item's group is its lot/wafer (:func:`~semclip.refit.shots.wafer_group`), so
    calibration folds keep wafers whole; without it every image is its own unit.
    """
    held = _read_shots(fs, support)
    items = [
        SupportItem(
            image=image,
            label=shot.label,
            mask=mask,
            group=wafer_group(shot.image_uri, path_regex) if path_regex else None,
            uri=shot.image_uri,
        )
        for shot, image, mask in zip(held.shots, held.images, held.masks, strict=True)
    ]
    return items, list(held.problems)


def load_holdout(fs: AbstractFileSystem, holdout: Sequence[Shot]) -> HoldoutSet:
    """Read hold-out images and masks once; unreadable shots are listed in ``problems``."""
    return _read_shots(fs, holdout)


def _read_shots(fs: AbstractFileSystem, shots: Sequence[Shot]) -> HoldoutSet:
    uris = [s.image_uri for s in shots] + [s.mask_uri for s in shots if s.mask_uri]
    data = fetch_bytes(fs, list(dict.fromkeys(uris)))
    kept, images, masks, problems = [], [], [], []
    for shot in shots:
        try:
            image, mask = _decode_shot(shot, data)
        except (ImageReadError, ValueError, OSError) as exc:
            problems.append(f"{shot.image_uri}: {exc}")
            log.warning("leaving out confirmed shot %s: %s", shot.image_uri, exc)
            continue
        kept.append(shot)
        images.append(image)
        masks.append(mask)
    return HoldoutSet(tuple(kept), tuple(images), tuple(masks), tuple(problems))


def _decode_shot(
    shot: Shot, data: Mapping[str, bytes | Exception]
) -> tuple[bytes, np.ndarray | None]:
    image = data[shot.image_uri]
    if isinstance(image, Exception):
        raise OSError(f"cannot fetch image: {image}")
    shape = read_image(image, name=shot.image_uri).pixels.shape
    if shot.mask_uri is None:
        return image, (np.zeros(shape, dtype=bool) if shot.label == GOOD else None)
    raw = data[shot.mask_uri]
    if isinstance(raw, Exception):
        raise OSError(f"cannot fetch mask {shot.mask_uri}: {raw}")
    mask = decode_mask(read_raw_array(raw, name=shot.mask_uri))
    if mask.shape != shape:
        raise MaskError(shot.mask_uri, mask.shape[:2], shape[:2])  # the one wording: HxW
    return image, mask
