"""Engineer-confirmed shots under ``confirmed/``: CSV or Parquet files, one row per image."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from semclip.io.bucket import file_suffix, find_files

__all__ = ["CONFIRMED_COLUMNS", "ConfirmedShotsError", "read_confirmed"]


CONFIRMED_COLUMNS = ("image_uri", "label", "mask_uri", "confirmed_at", "reviewer")
_CONFIRMED_REQUIRED = ("image_uri", "label", "confirmed_at", "reviewer")
_TEXT_COLUMNS = ("image_uri", "label", "mask_uri", "reviewer")


class ConfirmedShotsError(ValueError):
    """A file under ``confirmed/`` cannot be used; the message names the file."""


def read_confirmed(fs: AbstractFileSystem, root: str) -> pd.DataFrame:
    """Every confirmed shot under ``confirmed/`` (CSV or Parquet, any depth), one row per image.

    Columns: ``image_uri, label, mask_uri, confirmed_at`` (UTC; naive times are taken as
    UTC), ``reviewer``, ``source_uri``. A relative ``image_uri``/``mask_uri`` is taken
    relative to the bucket root. An image confirmed twice keeps its latest review, because
    a re-review is a correction. Rows are newest first. Raises :class:`ConfirmedShotsError`
    naming the file on missing columns, empty labels or unreadable times.
    """
    frames = [
        _read_confirmed_file(fs, root, path)
        for path in find_files(fs, f"{root}/confirmed")
        if file_suffix(path) in (".csv", ".parquet", ".pq")
    ]
    columns = [*CONFIRMED_COLUMNS, "source_uri"]
    if not frames:
        empty = pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
        empty["confirmed_at"] = pd.Series(dtype="datetime64[ns, UTC]")
        return empty
    shots = pd.concat(frames, ignore_index=True)
    shots = shots.sort_values(["confirmed_at", "image_uri"], ascending=[False, True], kind="stable")
    shots = shots.drop_duplicates("image_uri", keep="first")
    return shots.reset_index(drop=True)[columns]


def _read_confirmed_file(fs: AbstractFileSystem, root: str, path: str) -> pd.DataFrame:
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
    for column in ("image_uri", "mask_uri"):
        text[column] = [_resolve_uri(fs, root, v) for v in text[column]]
    out = pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in text.items()})
    out["confirmed_at"] = confirmed_at.reset_index(drop=True).dt.as_unit("ns")
    out["source_uri"] = uri
    return out


def _text(values: pd.Series) -> list[str | None]:
    """Plain ``str`` or ``None`` per cell, whatever missing marker the reader used."""
    return [None if pd.isna(v) or not str(v).strip() else str(v).strip() for v in values]


def _resolve_uri(fs: AbstractFileSystem, root: str, value: str | None) -> str | None:
    if value is None or "://" in value or value.startswith("/"):
        return value
    return fs.unstrip_protocol(f"{root}/{value.lstrip('./')}")
