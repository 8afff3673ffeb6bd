"""The train/hold-out split by content hash, and the capped newest-first support."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from semclip.data.dataset import GOOD
from semclip.refit.shots import RefitError, Shot

__all__ = [
    "exclude_trained",
    "holdout_position",
    "is_holdout",
    "select_support",
    "split_shots",
]


_HASH_DIGITS = 15  # 60 bits of the SHA-256: plenty to place an image in [0, 1)


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
