"""Refit on confirmed shots: a fixed train/hold-out split, a capped support set, and the gate.

The rules that keep the registry honest live here, in plain Python, so the refit flow only
strings them together:

* **Split by content hash, once and for all.** An image's side depends only on the SHA-256
  of its bytes (:func:`is_holdout`), so it never changes between refits, whatever else was
  confirmed meanwhile: no model is judged on an image it trained on, as long as the hold-out
  fraction is not changed. As a second guard, :func:`exclude_trained` drops hold-out images
  that a model's lineage says it trained on.
* **Support: newest first, capped per class** (:func:`select_support`). Re-reviews are
  corrections and the fab drifts, so the latest confirmations are the most relevant shots.
* **Same images for both.** :func:`load_holdout` reads the hold-out once; :func:`evaluate`
  scores any model on it, candidate and champion alike.
* **The gate** (:func:`gate`): the candidate replaces the champion only when macro F1 rises
  by ``min_f1_gain`` and pixel F1-max (where hold-out masks exist) drops by no more than
  ``max_pixel_f1_drop``, or when there is no champion yet.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from fsspec import AbstractFileSystem

from semclip.data.dataset import GOOD
from semclip.data.images import ImageReadError, read_image, read_raw_array
from semclip.data.masks import decode_mask
from semclip.io.fetch import fetch_bytes
from semclip.metrics import PixelScoreHistogram, classification_metrics

if TYPE_CHECKING:
    from semclip.model import SemclipModel, SupportItem

__all__ = [
    "GateConfig",
    "GateDecision",
    "HoldoutMetrics",
    "HoldoutSet",
    "RefitError",
    "Shot",
    "evaluate",
    "exclude_trained",
    "gate",
    "hash_shots",
    "holdout_position",
    "is_holdout",
    "load_holdout",
    "select_support",
    "shots_from_frame",
    "split_shots",
    "support_items",
]

log = logging.getLogger(__name__)

_HASH_DIGITS = 15  # 60 bits of the SHA-256: plenty to place an image in [0, 1)
_EPS = 1e-9  # gate comparisons: a gain of exactly the threshold passes


class RefitError(ValueError):
    """The confirmed shots cannot make a model (too few classes, nothing readable…)."""


@dataclass(frozen=True)
class Shot:
    """One engineer-confirmed image (a row of ``confirmed/``), with its content hash."""

    image_uri: str
    label: str
    confirmed_at: dt.datetime  # UTC
    mask_uri: str | None = None
    reviewer: str | None = None
    sha256: str | None = None  # of the image bytes; set by :func:`hash_shots`


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


@dataclass(frozen=True)
class HoldoutMetrics:
    """How one model did on a hold-out set; ``None`` where nothing could be measured."""

    n_images: int  # hold-out images scored
    n_failed: int  # images the model could not score (counted as wrong)
    accuracy: float | None
    f1: float | None  # macro F1 over the hold-out's classes
    precision: float | None
    recall: float | None
    pixel_f1_max: float | None  # over all pixels of images with pixel truth; None: no masks
    n_masks: int  # defect images with a mask
    labels: tuple[str, ...] = ()
    per_class_f1: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def loggable(self, prefix: str) -> dict[str, float | None]:
        """Flat numeric metrics for MLflow, names prefixed (``candidate.f1``)."""
        keys = ("accuracy", "f1", "precision", "recall", "pixel_f1_max", "n_images", "n_masks")
        return {f"{prefix}.{k}": _maybe_float(getattr(self, k)) for k in keys}


@dataclass(frozen=True)
class GateConfig:
    """What a candidate must show to replace the champion."""

    min_f1_gain: float = 0.01  # macro F1 gain over the champion, on the same hold-out
    max_pixel_f1_drop: float = 0.02  # largest pixel F1-max drop tolerated (where masks exist)


@dataclass(frozen=True)
class GateDecision:
    """Whether ``champion`` moves to the candidate, and why, in words for the run report."""

    promote: bool
    reason: str
    f1_gain: float | None = None
    pixel_f1_drop: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- the split


def holdout_position(sha256: str) -> float:
    """Where an image falls in [0, 1), from its content hash: fixed for ever."""
    if len(sha256) < _HASH_DIGITS:
        raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
    return int(sha256[:_HASH_DIGITS], 16) / 16**_HASH_DIGITS


def is_holdout(sha256: str, fraction: float) -> bool:
    """True when the image is on the hold-out side for ``fraction`` (0 < fraction < 1).

    Positions below ``fraction`` are held out, so raising the fraction only moves images
    from train to hold-out (and a model trained before may then meet its own images:
    :func:`exclude_trained` catches that).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"hold-out fraction must be in (0, 1), got {fraction}")
    return holdout_position(sha256) < fraction


def split_shots(shots: Iterable[Shot], fraction: float) -> tuple[list[Shot], list[Shot]]:
    """``(train, holdout)`` by content hash; every shot must carry its ``sha256``."""
    train: list[Shot] = []
    holdout: list[Shot] = []
    for shot in shots:
        if shot.sha256 is None:
            raise ValueError(f"shot {shot.image_uri} has no content hash; run hash_shots first")
        (holdout if is_holdout(shot.sha256, fraction) else train).append(shot)
    return train, holdout


def select_support(train: Iterable[Shot], cap_per_class: int) -> list[Shot]:
    """At most ``cap_per_class`` shots per label, newest confirmation first.

    Raises :class:`RefitError` unless the support has ``good`` and at least one defect class,
    the least a model can be fitted on.
    """
    if cap_per_class < 1:
        raise ValueError(f"cap_per_class must be >= 1, got {cap_per_class}")
    newest = sorted(train, key=lambda s: (-s.confirmed_at.timestamp(), s.image_uri))
    taken: dict[str, int] = {}
    support = []
    for shot in newest:
        if taken.get(shot.label, 0) < cap_per_class:
            taken[shot.label] = taken.get(shot.label, 0) + 1
            support.append(shot)
    labels = set(taken)
    if GOOD not in labels or len(labels) < 2:
        raise RefitError(
            f"the train side of the confirmed shots has classes {sorted(labels) or 'none'}; "
            f"a model needs '{GOOD}' and at least one defect class. Confirm more shots "
            "under confirmed/ (some may have gone to the hold-out side)."
        )
    return support


def exclude_trained(
    holdout: Sequence[Shot], lineage: Mapping[str, Any] | None
) -> tuple[list[Shot], list[Shot]]:
    """``(kept, dropped)``: hold-out shots whose image a model's lineage lists as support."""
    trained = {
        s.get("sha256") for s in (lineage or {}).get("support", []) if isinstance(s, Mapping)
    }
    trained.discard(None)
    kept = [s for s in holdout if s.sha256 not in trained]
    dropped = [s for s in holdout if s.sha256 in trained]
    return kept, dropped


# --------------------------------------------------------------------------- reading


def shots_from_frame(frame: pd.DataFrame) -> list[Shot]:
    """Shots from :func:`semclip.io.confirmed.read_confirmed` output (newest first there)."""
    shots = []
    for row in frame.itertuples(index=False):
        confirmed_at = pd.Timestamp(row.confirmed_at).to_pydatetime()
        shots.append(
            Shot(
                image_uri=str(row.image_uri),
                label=str(row.label),
                confirmed_at=confirmed_at,
                mask_uri=None if pd.isna(row.mask_uri) else str(row.mask_uri),
                reviewer=None if pd.isna(row.reviewer) else str(row.reviewer),
            )
        )
    return shots


def hash_shots(fs: AbstractFileSystem, shots: Sequence[Shot]) -> tuple[list[Shot], list[str]]:
    """Shots with their content hash, and a reason for each shot whose image is unreadable."""
    data = fetch_bytes(fs, [s.image_uri for s in shots])
    hashed, problems = [], []
    for shot in shots:
        value = data[shot.image_uri]
        if isinstance(value, Exception) or not value:
            problems.append(f"{shot.image_uri}: cannot fetch: {value or 'empty file'}")
            continue
        hashed.append(replace(shot, sha256=hashlib.sha256(value).hexdigest()))
    return hashed, problems


def support_items(
    fs: AbstractFileSystem, support: Sequence[Shot]
) -> tuple[list[SupportItem], list[str]]:
    """Model support items (image bytes, decoded mask) and the shots skipped, with reasons.

    A shot whose image or mask cannot be read, or whose mask has another size than its
    image, is skipped rather than failing the refit: one bad confirmation should not cost
    the week's model, and the report lists it.
    """
    from semclip.model import SupportItem

    held = _read_shots(fs, support)
    items = [
        SupportItem(image=image, label=shot.label, mask=mask, uri=shot.image_uri)
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
        raise ValueError(f"mask {shot.mask_uri} is {mask.shape[::-1]} px, its image {shape[::-1]}")
    return image, mask


# --------------------------------------------------------------------------- evaluation


def evaluate(model: SemclipModel, holdout: HoldoutSet) -> HoldoutMetrics:
    """Classification and pixel metrics of ``model`` on ``holdout``.

    Macro metrics run over the hold-out's own classes (so two models with different class
    lists are scored on the same terms); a class the model does not know is always wrong.
    Pixel F1-max pools all pixels of the images with pixel truth (good images all
    negative), at each image's own resolution; ``None`` when no defect image has a mask.
    """
    from semclip.model import ImageScores

    labels = holdout.labels
    if not len(holdout):
        return HoldoutMetrics(0, 0, None, None, None, None, None, 0, labels)
    scored = model.score(list(holdout.images), uris=[s.image_uri for s in holdout.shots])
    truth, predicted, failed = [], [], 0
    pixels = PixelScoreHistogram()
    n_masks = sum(
        m is not None and s.label != GOOD for s, m in zip(holdout.shots, holdout.masks, strict=True)
    )
    for shot, mask, result in zip(holdout.shots, holdout.masks, scored, strict=True):
        truth.append(shot.label)
        if not isinstance(result, ImageScores):
            failed += 1
            predicted.append("<failed>")
            continue
        predicted.append(model.classes[int(np.argmax(result.probs))])
        if n_masks and mask is not None:
            pixels.update(result.full_map(model.preprocess.databar), mask)
    cls = classification_metrics(truth, predicted, list(labels))
    return HoldoutMetrics(
        n_images=len(holdout),
        n_failed=failed,
        accuracy=cls["accuracy"],
        f1=cls["f1"],
        precision=cls["precision"],
        recall=cls["recall"],
        pixel_f1_max=pixels.f1_max()[0] if n_masks else None,
        n_masks=n_masks,
        labels=labels,
        per_class_f1={k: v["f1"] for k, v in cls["per_class"].items()},
    )


def gate(
    candidate: HoldoutMetrics | None,
    champion: HoldoutMetrics | None,
    *,
    has_champion: bool,
    config: GateConfig | None = None,
) -> GateDecision:
    """Should ``champion`` move to the candidate? See the module docstring for the rule.

    ``has_champion`` is separate from ``champion`` metrics: a champion that exists but could
    not be measured (empty hold-out) is not replaced automatically.
    """
    config = config or GateConfig()
    if not has_champion:
        return GateDecision(True, "no champion yet: the first model becomes champion")
    if candidate is None or champion is None or candidate.f1 is None or champion.f1 is None:
        return GateDecision(
            False,
            "no hold-out image to compare candidate and champion on; confirm more shots or "
            "promote by hand (semclip promote --version N)",
        )
    gain = candidate.f1 - champion.f1
    drop = None
    if candidate.pixel_f1_max is not None and champion.pixel_f1_max is not None:
        drop = champion.pixel_f1_max - candidate.pixel_f1_max
    if gain < config.min_f1_gain - _EPS:
        return GateDecision(
            False,
            f"macro F1 {candidate.f1:.4f} vs champion {champion.f1:.4f}: gain {gain:+.4f} "
            f"is below the required {config.min_f1_gain:+.4f}",
            gain,
            drop,
        )
    if drop is not None and drop > config.max_pixel_f1_drop + _EPS:
        return GateDecision(
            False,
            f"pixel F1-max drops by {drop:.4f} (more than {config.max_pixel_f1_drop:.4f}) "
            f"although macro F1 gains {gain:+.4f}",
            gain,
            drop,
        )
    pixel = "" if drop is None else f", pixel F1-max change {-drop:+.4f}"
    return GateDecision(True, f"macro F1 gain {gain:+.4f}{pixel}: promoted", gain, drop)


def _maybe_float(value: Any) -> float | None:
    return None if value is None else float(value)
