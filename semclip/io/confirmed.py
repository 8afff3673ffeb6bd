"""Engineer-confirmed shots under ``confirmed/``: CSV or Parquet files, one row per image.

Bad input loses nothing else: a file that cannot be read as a whole (unreadable, missing
columns, empty labels or times) is an error naming the file, but a *row* whose image or mask
path leaves the bucket (an absolute path, ``file:///…``, ``s3://other-bucket/…``,
``confirmed/../../…``, a symlink out of a local bucket) is left out and reported as a
:class:`RejectedRow` naming the file and the row, and the other rows are used. Labels are
normalised (:func:`semclip.labels.normalise_label`) and every respelt one is reported.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from semclip.io.bucket import file_suffix, find_files, resolve_in_bucket
from semclip.labels import LabelChange, normalise_label
from semclip.safe_paths import OutsideRootError

__all__ = [
    "CONFIRMED_COLUMNS",
    "ConfirmedShots",
    "ConfirmedShotsError",
    "RejectedRow",
    "load_confirmed",
    "read_confirmed",
]

log = logging.getLogger(__name__)

CONFIRMED_COLUMNS = ("image_uri", "label", "mask_uri", "confirmed_at", "reviewer")
_CONFIRMED_REQUIRED = ("image_uri", "label", "confirmed_at", "reviewer")
_TEXT_COLUMNS = ("image_uri", "label", "mask_uri", "reviewer")
_PATH_COLUMNS = ("image_uri", "mask_uri")


class ConfirmedShotsError(ValueError):
    """A file under ``confirmed/`` cannot be used; the message names the file."""


@dataclass(frozen=True)
class RejectedRow:
    """A confirmed row left out of the refit: where it is, the bad value and why."""

    source_uri: str  # the CSV/Parquet file
    row: int  # 1-based data row (the header is not counted)
    column: str  # image_uri or mask_uri
    value: str  # as written
    reason: str

    def __str__(self) -> str:
        return (
            f"{self.source_uri} row {self.row}, column {self.column} {self.value!r}: "
            f"{self.reason}; row left out"
        )

    def to_dict(self) -> dict[str, str | int]:
        """JSON-ready, for the model lineage and the refit report."""
        return asdict(self)


@dataclass(frozen=True)
class ConfirmedShots:
    """What :func:`load_confirmed` found: the usable shots and what it reports about the rest."""

    frame: pd.DataFrame  # the columns of :func:`read_confirmed`
    rejected: tuple[RejectedRow, ...] = ()  # rows left out (paths outside the bucket)
    relabelled: tuple[LabelChange, ...] = ()  # labels read under their normalised spelling


def read_confirmed(fs: AbstractFileSystem, root: str) -> pd.DataFrame:
    """The usable confirmed shots (see :func:`load_confirmed`, which also says what it left out)."""
    return load_confirmed(fs, root).frame


def load_confirmed(fs: AbstractFileSystem, root: str) -> ConfirmedShots:
    """Every confirmed shot under ``confirmed/`` (CSV or Parquet, any depth), one row per image.

    Columns: ``image_uri, label, mask_uri, confirmed_at`` (UTC; naive times are taken as
    UTC), ``reviewer``, ``source_uri``. ``image_uri``/``mask_uri`` are keys relative to the
    bucket root, or full URIs inside this bucket; a row whose path leaves the bucket is left
    out and listed in ``rejected``. Labels are normalised (``" Particle"`` is ``particle``)
    and each respelling listed in ``relabelled``. An image confirmed twice keeps its latest
    review, because a re-review is a correction. Rows are newest first. Raises
    :class:`ConfirmedShotsError` naming the file on missing columns, empty labels or
    unreadable times.
    """
    parts = [
        _read_confirmed_file(fs, root, path)
        for path in find_files(fs, f"{root}/confirmed")
        if file_suffix(path) in (".csv", ".parquet", ".pq")
    ]
    rejected = tuple(r for _, rows, _ in parts for r in rows)
    relabelled = tuple(c for _, _, changes in parts for c in changes)
    for item in (*rejected, *relabelled):
        log.warning("confirmed shots: %s", item)
    frames = [frame for frame, _, _ in parts if len(frame)]
    columns = [*CONFIRMED_COLUMNS, "source_uri"]
    if not frames:
        empty = pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
        empty["confirmed_at"] = pd.Series(dtype="datetime64[ns, UTC]")
        return ConfirmedShots(empty, rejected, relabelled)
    shots = pd.concat(frames, ignore_index=True)
    shots = shots.sort_values(["confirmed_at", "image_uri"], ascending=[False, True], kind="stable")
    shots = shots.drop_duplicates("image_uri", keep="first")
    return ConfirmedShots(shots.reset_index(drop=True)[columns], rejected, relabelled)


def _read_confirmed_file(
    fs: AbstractFileSystem, root: str, path: str
) -> tuple[pd.DataFrame, list[RejectedRow], list[LabelChange]]:
    uri = fs.unstrip_protocol(path)
    try:
        with fs.open(path, "rb") as f:
            if file_suffix(path) == ".csv":
                frame = pd.read_csv(f, dtype=str, keep_default_na=False, na_values=[""])
            else:
                frame = pq.read_table(f, use_threads=False).to_pandas()
    except (ValueError, OSError, pa.ArrowException) as exc:
        raise ConfirmedShotsError(f"confirmed shots file {uri!r} cannot be read: {exc}") from None
    missing = [c for c in _CONFIRMED_REQUIRED if c not in frame.columns]
    if missing:
        raise ConfirmedShotsError(
            f"confirmed shots file {uri!r} lacks column(s) {missing}; expected "
            f"{', '.join(CONFIRMED_COLUMNS)} (mask_uri optional)"
        )
    n = len(frame)
    text = {c: _text(frame[c]) if c in frame.columns else [None] * n for c in _TEXT_COLUMNS}
    for column in ("image_uri", "label"):
        empty = [i + 1 for i, v in enumerate(text[column]) if v is None]
        if empty:
            raise ConfirmedShotsError(
                f"confirmed shots file {uri!r}: empty {column} in data row(s) {empty[:5]}"
            )
    try:
        confirmed_at = pd.to_datetime(frame["confirmed_at"], utc=True, format="mixed")
    except (ValueError, TypeError) as exc:
        raise ConfirmedShotsError(
            f"confirmed shots file {uri!r}: bad confirmed_at: {exc}"
        ) from None
    if confirmed_at.isna().any():
        raise ConfirmedShotsError(f"confirmed shots file {uri!r}: empty confirmed_at")
    changes = _normalise_labels(text, [str(v) for v in frame["label"]], uri)
    rejected = _resolve_paths(fs, root, text, uri)
    out = pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in text.items()})
    out["confirmed_at"] = confirmed_at.reset_index(drop=True).dt.as_unit("ns")
    out["source_uri"] = uri
    bad = {r.row - 1 for r in rejected}
    keep = [i for i in range(n) if i not in bad]
    return out.iloc[keep].reset_index(drop=True), rejected, changes


def _text(values: pd.Series) -> list[str | None]:
    """Plain ``str`` or ``None`` per cell, whatever missing marker the reader used."""
    return [None if pd.isna(v) or not str(v).strip() else str(v).strip() for v in values]


def _normalise_labels(
    text: dict[str, list[str | None]], written: list[str], uri: str
) -> list[LabelChange]:
    """Labels to their one spelling, in place; the respelt ones (as written), file and row."""
    changes = []
    for i, cell in enumerate(written):
        label = normalise_label(cell)
        if label != cell:
            changes.append(LabelChange(cell, label, f"{uri} row {i + 1}"))
        text["label"][i] = label
    return changes


def _resolve_paths(
    fs: AbstractFileSystem, root: str, text: dict[str, list[str | None]], uri: str
) -> list[RejectedRow]:
    """Image and mask paths to full URIs inside the bucket, in place; rows that leave it."""
    rejected: list[RejectedRow] = []
    for i in range(len(text["image_uri"])):
        for column in _PATH_COLUMNS:
            value = text[column][i]
            if value is None:
                continue
            try:
                text[column][i] = fs.unstrip_protocol(resolve_in_bucket(fs, root, value))
            except OutsideRootError as exc:
                rejected.append(RejectedRow(uri, i + 1, column, value, exc.reason))
                break  # one reason per row is enough to leave it out
    return rejected
