"""A confirmed shot as the refit sees it: one reviewed image, its label and its content hash."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import pandas as pd
from fsspec import AbstractFileSystem

from semclip.io.fetch import fetch_bytes

__all__ = ["RefitError", "Shot", "hash_shots", "shots_from_frame"]


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
