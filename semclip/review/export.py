"""``review/date=<D>/`` in the bucket: the rows of a night that need an engineer's eye.

Layout::

    review/date=<D>/index.csv        one row per exported image, in review order; the columns
    review/date=<D>/index.parquet    image, label, mask are the import format (fill label, and
                                     mask for a corrected mask, then `semclip review import`)
    review/date=<D>/images/<sha12>-<name>       a copy of the image (the engineer's tools
                                                 need not reach raw/)
    review/date=<D>/overlays/<sha12>-<stem>.png the predicted mask over the image

Rows come from the ``predictions`` view (the current row per image, see
:mod:`semclip.io.query`); their reasons from :mod:`semclip.review.reasons`; their order and
the cap from :mod:`semclip.review.sampling`. Every object is written through ``_staging/``
and swapped in whole (:mod:`semclip.io.staging`), the index last, so a reader never sees an
index naming an image that is not there yet; files of an earlier export of the date that the
new index no longer names are removed after it.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa
from fsspec import AbstractFileSystem

from semclip.data.images import ImageReadError, read_image
from semclip.io.bucket import find_files
from semclip.io.fetch import fetch_bytes
from semclip.io.query import connect
from semclip.io.staging import (
    parquet_bytes,
    replace_atomically,
    replace_bytes_atomically,
    staging_path,
)
from semclip.outage import is_transient
from semclip.review.overlay import decode_row_mask, overlay_png
from semclip.review.reasons import (
    ReviewRule,
    margin_of,
    reason_counts,
    review_reasons,
    top_classes,
)
from semclip.review.sampling import Candidate, rank_for_review

__all__ = ["INDEX_COLUMNS", "ReviewExport", "export_review", "review_folder"]

log = logging.getLogger(__name__)

# image, label, mask first: the engineer fills label (and mask) and imports the same file.
INDEX_COLUMNS = (
    "image",
    "label",
    "mask",
    "rank",
    "reasons",
    "predicted_class",
    "probability",
    "margin",
    "top3",
    "review_image",
    "overlay",
    "lot_id",
    "wafer_id",
    "defect_id",
    "klarf_classnumber",
    "model_name",
    "model_version",
)


@dataclass(frozen=True)
class ReviewExport:
    """What an export wrote."""

    run_date: dt.date
    index_uri: str | None  # the CSV index; None when no row needed review
    rows: int  # images exported
    candidates: int  # current rows of the date that had a reason (before the cap)
    by_reason: dict[str, int] = field(default_factory=dict)  # among the exported rows
    by_class: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # rows skipped, with why


def review_folder(root: str, run_date: dt.date) -> str:
    """``<root>/review/date=<D>``."""
    return f"{root}/review/date={run_date.isoformat()}"


def export_review(
    fs: AbstractFileSystem,
    root: str,
    run_date: dt.date,
    *,
    rule: ReviewRule,
    limit: int,
    champion: tuple[str, str] | None = None,
) -> ReviewExport:
    """Write the date's rows that need review, at most ``limit``, most informative first."""
    if limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    rows = _current_rows(fs, root, run_date, champion)
    flagged = {r["image_uri"]: (r, tuple(review_reasons(r, rule))) for r in rows}
    flagged = {uri: rr for uri, rr in flagged.items() if rr[1]}
    ranked = rank_for_review(
        [
            Candidate(uri, r["predicted_class"], margin_of(r["probabilities"]) or 0.0, reasons)
            for uri, (r, reasons) in flagged.items()
        ],
        limit,
    )
    folder = review_folder(root, run_date)
    data = fetch_bytes(fs, [c.key for c in ranked])
    records, problems = [], []
    for rank, cand in enumerate(ranked, start=1):
        row, reasons = flagged[cand.key]
        try:
            records.append(_export_one(fs, root, folder, run_date, rank, row, reasons, data))
        except (ImageReadError, OSError, ValueError) as exc:
            if is_transient(exc):
                # a full disk or an outage is no fault of this row: the export fails whole
                # (the previous index and its files stay), rather than dropping rows from
                # the review queue and deleting their earlier copies as stale
                raise
            problems.append(f"{cand.key}: {exc}")
            log.warning("review export %s: %s skipped: %s", run_date, cand.key, exc)
    if not records:
        return ReviewExport(run_date, None, 0, len(flagged), problems=problems)
    index = pd.DataFrame.from_records(records, columns=list(INDEX_COLUMNS))
    index_uri = _write_index(fs, root, folder, run_date, index)
    _remove_stale(fs, folder, index)
    counts = reason_counts([r.split(";") for r in index["reasons"]])
    return ReviewExport(
        run_date,
        index_uri,
        len(index),
        len(flagged),
        {k: v for k, v in counts.items() if v},
        index["predicted_class"].value_counts().sort_index().to_dict(),
        problems,
    )


def _current_rows(
    fs: AbstractFileSystem, root: str, run_date: dt.date, champion: tuple[str, str] | None
) -> list[dict[str, Any]]:
    """The date's current rows with a class (error rows are quarantined, not reviewed)."""
    con = connect(fs, root, [run_date], champion=champion)
    table: pa.Table = con.sql(
        "SELECT * FROM predictions WHERE predicted_class IS NOT NULL AND error IS NULL "
        "ORDER BY image_uri"
    ).to_arrow_table()
    return table.to_pylist()


def _export_one(
    fs: AbstractFileSystem,
    root: str,
    folder: str,
    run_date: dt.date,
    rank: int,
    row: Mapping[str, Any],
    reasons: Sequence[str],
    data: Mapping[str, bytes | Exception],
) -> dict[str, Any]:
    uri = row["image_uri"]
    value = data[uri]
    if isinstance(value, Exception):
        if is_transient(value):
            raise value
        raise FileNotFoundError(f"cannot fetch the image: {value}")
    image = read_image(value, name=uri)
    mask = decode_row_mask(row.get("mask_rle"), *image.pixels.shape)
    top = top_classes(row["probabilities"], 3)
    name = posixpath.basename(uri)
    stem = f"{(row.get('image_sha256') or '')[:12]}-{name}"
    copy = f"{folder}/images/{stem}"
    overlay = f"{folder}/overlays/{stem.rsplit('.', 1)[0]}.png"
    caption = f"{top[0][0]} {top[0][1]:.2f}"
    _put(fs, root, run_date, copy, value)
    _put(fs, root, run_date, overlay, overlay_png(image.pixels, mask, caption))
    return {
        "image": uri,
        "label": None,
        "mask": None,
        "rank": rank,
        "reasons": ";".join(reasons),
        "predicted_class": row["predicted_class"],
        "probability": round(top[0][1], 4),
        "margin": round(margin_of(row["probabilities"]) or 0.0, 4),
        "top3": json.dumps([[c, round(p, 4)] for c, p in top]),
        "review_image": fs.unstrip_protocol(copy),
        "overlay": fs.unstrip_protocol(overlay),
        **{k: row.get(k) for k in ("lot_id", "wafer_id", "defect_id", "klarf_classnumber")},
        "model_name": row.get("model_name"),
        "model_version": row.get("model_version"),
    }


def _put(fs: AbstractFileSystem, root: str, run_date: dt.date, final: str, data: bytes) -> None:
    staged = staging_path(root, "review", run_date, posixpath.basename(final))
    replace_bytes_atomically(fs, staged, final, data)


def _write_index(
    fs: AbstractFileSystem, root: str, folder: str, run_date: dt.date, index: pd.DataFrame
) -> str:
    frame = index.astype({"klarf_classnumber": "Int64"}) if len(index) else index
    table = pa.Table.from_pandas(frame, preserve_index=False)
    parquet = f"{folder}/index.parquet"
    staged = staging_path(root, "review", run_date, "index.parquet")
    replace_atomically(fs, staged, parquet, parquet_bytes(table), table.num_rows)
    text = io.StringIO()
    frame.to_csv(text, index=False)
    csv = f"{folder}/index.csv"
    _put(fs, root, run_date, csv, text.getvalue().encode())
    return fs.unstrip_protocol(csv)


def _remove_stale(fs: AbstractFileSystem, folder: str, index: pd.DataFrame) -> None:
    """Delete images and overlays of an earlier export of the date that the index dropped."""
    named = {fs._strip_protocol(u) for col in ("review_image", "overlay") for u in index[col]}
    for sub in ("images", "overlays"):
        for path in find_files(fs, f"{folder}/{sub}"):
            if path not in named:
                fs.rm(path)
