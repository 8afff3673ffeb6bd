"""A confirmed shot as the refit sees it: one reviewed image, its label and its content hash."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

import pandas as pd
from fsspec import AbstractFileSystem

from semclip.io.fetch import fetch_bytes
from semclip.io.paths import parse_ids

__all__ = [
    "LabelConflict",
    "RefitError",
    "Shot",
    "drop_label_conflicts",
    "hash_shots",
    "shots_from_frame",
    "wafer_group",
]

_RAW_DATE = re.compile(r"^(?:.*/)?raw/\d{4}-\d{2}-\d{2}/")  # what parse_ids is relative to


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


def wafer_group(image_uri: str, path_regex: str | re.Pattern[str]) -> str | None:
    """``"<lot_id>/<wafer_id>"`` of a shot's image by ``SEMCLIP_PATH_REGEX``, or ``None``.

    Images of one wafer share process and imaging conditions, so calibration folds keep a
    wafer together: splitting it across folds would let τ and α be chosen on near copies of
    the support and come out optimistic. The regex is searched below ``raw/<date>/`` when
    the image lies there (as nightly does); ``None`` (the image is its own fold unit) when
    it matches neither id.
    """
    match = _RAW_DATE.match(image_uri)
    ids = parse_ids(image_uri, path_regex, match.group(0) if match else "")
    lot, wafer = ids["lot_id"], ids["wafer_id"]
    if lot is None and wafer is None:
        return None
    return f"{lot or '?'}/{wafer or '?'}"


@dataclass(frozen=True)
class LabelConflict:
    """The same image bytes confirmed under several paths with different labels."""

    sha256: str
    shots: tuple[tuple[str, str], ...]  # (image_uri, label) of every copy, sorted by URI

    def __str__(self) -> str:
        copies = "; ".join(f"{uri} as {label!r}" for uri, label in self.shots)
        return (
            f"same image bytes (SHA-256 {self.sha256[:12]}…) confirmed with different labels: "
            f"{copies}; all left out until the labels agree"
        )

    def to_dict(self) -> dict[str, object]:
        """JSON-ready, for the model lineage and the refit report."""
        return {
            "sha256": self.sha256,
            "shots": [{"image_uri": u, "label": label} for u, label in self.shots],
        }


def drop_label_conflicts(shots: Sequence[Shot]) -> tuple[list[Shot], list[LabelConflict]]:
    """Shots without the images whose bytes carry two labels, and those conflicts.

    One image cannot be both a particle and a scratch: training on both copies teaches
    the heads noise, and the hash-based split puts both on the same side, so neither
    label can be checked on the hold-out. Which label is right is the engineers' call,
    so every copy leaves (order kept for the rest). Copies that agree are kept.
    """
    by_hash: dict[str, list[Shot]] = {}
    for shot in shots:
        if shot.sha256 is None:
            raise ValueError(f"shot {shot.image_uri} has no content hash; run hash_shots first")
        by_hash.setdefault(shot.sha256, []).append(shot)
    conflicts = [
        LabelConflict(sha, tuple(sorted((s.image_uri, s.label) for s in group)))
        for sha, group in by_hash.items()
        if len({s.label for s in group}) > 1
    ]
    bad = {c.sha256 for c in conflicts}
    return [s for s in shots if s.sha256 not in bad], conflicts
