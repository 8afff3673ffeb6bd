"""The engineers' decisions (CSV: image, label, optional mask) into ``confirmed/``.

Each decided row becomes a row of the confirmed schema (``image_uri, label, mask_uri,
confirmed_at, reviewer``) in one new file ``confirmed/review/<stamp>-<token>.csv`` (a new
file per import: appending never rewrites what earlier imports confirmed), so the next refit
(:func:`semclip.io.confirmed.load_confirmed`) reads them like any confirmed shot. A corrected
mask is checked and copied to ``confirmed/masks/``, so the row never depends on the
engineer's own disk.

The checks are those of any confirmed row, and a bad row loses nothing else:

* ``image`` must name an image inside the bucket (``semclip.io.bucket.resolve_in_bucket``, the
  check of ``confirmed/`` and of data-set manifests) that can be read;
* ``label`` is normalised (``semclip.labels.normalise_label``), and each respelling reported;
  a row with an empty label was not reviewed and is skipped (counted, not an error);
* ``mask`` is a PNG (or any mask image) of the image's own size, inside the bucket when the
  CSV is a bucket object, inside the CSV's folder when it is a local file; a ``good`` row's
  mask must have no defect pixel.

Objects are written through ``_staging/`` and swapped in whole (:mod:`semclip.io.staging`):
masks first, the CSV last, so a confirmed row never names a mask that is not there.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
import os
import posixpath
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from fsspec import AbstractFileSystem
from PIL import Image

from semclip.data.dataset import GOOD
from semclip.data.images import ImageReadError, read_image, read_raw_array
from semclip.data.masks import MaskError, decode_mask
from semclip.io.bucket import resolve_in_bucket
from semclip.io.confirmed import CONFIRMED_COLUMNS
from semclip.io.staging import replace_bytes_atomically, staging_path
from semclip.labels import normalise_label
from semclip.safe_paths import OutsideRootError, resolve_inside

__all__ = ["ReviewImport", "ReviewImportError", "import_review"]

log = logging.getLogger(__name__)

_REQUIRED = ("image", "label")


class ReviewImportError(ValueError):
    """The decisions file as a whole cannot be read; the message names it."""


@dataclass(frozen=True)
class ReviewImport:
    """What an import did."""

    confirmed_uri: str | None  # the new confirmed/ file; None when no row was usable
    imported: int
    masks: int  # corrected masks copied under confirmed/masks/
    unreviewed: int  # rows with an empty label, skipped
    rejected: list[str] = field(default_factory=list)  # "FILE row N: why"
    relabelled: list[str] = field(default_factory=list)  # labels read under their spelling


def import_review(
    fs: AbstractFileSystem,
    root: str,
    source: str,
    *,
    reviewer: str,
    now: dt.datetime | None = None,
) -> ReviewImport:
    """Check the decisions in ``source`` and append the good rows to ``confirmed/``.

    ``source`` is a local CSV path or a key/URI inside the bucket. Raises
    :class:`ReviewImportError` when it cannot be read or lacks the ``image``/``label`` columns.
    """
    now = now or dt.datetime.now(dt.UTC)
    frame, mask_base = _read_decisions(fs, root, source)
    rows, masks, rejected, relabelled, unreviewed = [], [], [], [], 0
    for i, cells in enumerate(frame.to_dict("records"), start=1):
        where = f"{source} row {i}"
        label_cell = _cell(cells.get("label"))
        if label_cell is None:
            unreviewed += 1
            continue
        try:
            row, mask = _check_row(fs, root, mask_base, cells, label_cell, reviewer, now)
        except (OutsideRootError, ImageReadError, OSError, ValueError) as exc:
            rejected.append(f"{where}: {exc}; row left out")
            continue
        written = str(cells["label"])
        if row["label"] != written:
            relabelled.append(f"{where}: label {written!r} read as {row['label']!r}")
        rows.append(row)
        if mask is not None:
            masks.append(mask)
    for message in (*rejected, *relabelled):
        log.warning("review import: %s", message)
    if not rows:
        return ReviewImport(None, 0, 0, unreviewed, rejected, relabelled)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    for final, data in masks:
        _put(fs, root, now, final, data)
    out = f"{root}/confirmed/review/{stamp}-{uuid.uuid4().hex[:8]}.csv"
    text = io.StringIO()
    pd.DataFrame(rows, columns=list(CONFIRMED_COLUMNS)).to_csv(text, index=False)
    _put(fs, root, now, out, text.getvalue().encode())
    return ReviewImport(
        fs.unstrip_protocol(out), len(rows), len(masks), unreviewed, rejected, relabelled
    )


def _read_decisions(
    fs: AbstractFileSystem, root: str, source: str
) -> tuple[pd.DataFrame, tuple[AbstractFileSystem, str, bool]]:
    """The CSV, and where its mask paths are resolved: (file system, folder, local?)."""
    local = Path(source)
    try:
        if "://" not in source and local.is_file():
            with local.open("rb") as f:
                frame = pd.read_csv(f, dtype=str, keep_default_na=False, na_values=[""])
            base = (fs, str(local.resolve().parent), True)
        else:
            path = resolve_in_bucket(fs, root, source)
            with fs.open(path, "rb") as f:
                frame = pd.read_csv(f, dtype=str, keep_default_na=False, na_values=[""])
            base = (fs, root, False)
    except FileNotFoundError:
        where = "not in the bucket"
        if "://" not in source:  # a bare path: the local file was looked for first
            where = f"neither a local file ({str(local.resolve())!r}) nor in the bucket"
        raise ReviewImportError(f"review decisions {source!r} cannot be read: {where}") from None
    except (OutsideRootError, OSError, ValueError) as exc:
        raise ReviewImportError(f"review decisions {source!r} cannot be read: {exc}") from None
    missing = [c for c in _REQUIRED if c not in frame.columns]
    if missing:
        raise ReviewImportError(
            f"review decisions {source!r} lack column(s) {missing}; expected image, label and "
            "optionally mask (the index.csv of `semclip review export`, filled in)"
        )
    return frame, base


def _check_row(
    fs: AbstractFileSystem,
    root: str,
    mask_base: tuple[AbstractFileSystem, str, bool],
    cells: dict[str, object],
    label_cell: str,
    reviewer: str,
    now: dt.datetime,
) -> tuple[dict[str, object], tuple[str, bytes] | None]:
    image_cell = _cell(cells.get("image"))
    if image_cell is None:
        raise ValueError("empty image")
    label = normalise_label(label_cell)
    if not label:
        raise ValueError(f"label {label_cell!r} is empty once normalised")
    image_path = resolve_in_bucket(fs, root, image_cell)
    try:
        with fs.open(image_path, "rb") as f:
            image_bytes = f.read()
    except FileNotFoundError:
        raise ValueError(f"column 'image': {image_cell!r} is not in the bucket") from None
    shape = read_image(image_bytes, name=image_cell).pixels.shape
    mask_cell = _cell(cells.get("mask"))
    mask = None
    if mask_cell is not None:
        mask = _corrected_mask(fs, root, mask_base, mask_cell, shape, label, image_bytes)
    row = {
        "image_uri": fs.unstrip_protocol(image_path),
        "label": label,
        "mask_uri": fs.unstrip_protocol(mask[0]) if mask else None,
        "confirmed_at": now.isoformat(),
        "reviewer": _cell(cells.get("reviewer")) or reviewer,
    }
    return row, mask


def _corrected_mask(
    fs: AbstractFileSystem,
    root: str,
    base: tuple[AbstractFileSystem, str, bool],
    value: str,
    shape: tuple[int, int],
    label: str,
    image_bytes: bytes,
) -> tuple[str, bytes]:
    """``(confirmed/masks/<path>, PNG bytes)`` of a checked corrected mask."""
    _, folder, local = base
    if local:
        path = resolve_inside(folder, value, local=True, root_name="the CSV's folder")
        data = Path(path).read_bytes()
    else:
        path = resolve_in_bucket(fs, root, value)
        with fs.open(path, "rb") as f:
            data = f.read()
    array = read_raw_array(data, name=value)
    found = (int(array.shape[0]), int(array.shape[1]))
    if found != tuple(shape):
        raise MaskError(value, found, (int(shape[0]), int(shape[1])))  # the one wording: HxW
    mask = decode_mask(array)
    if label == GOOD and mask.any():
        raise ValueError(f"label good but mask {value!r} has {int(mask.sum())} defect pixels")
    png = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(png, format="PNG")
    digest = hashlib.sha256(image_bytes).hexdigest()[:16]
    name = os.path.splitext(posixpath.basename(value))[0]
    return f"{root}/confirmed/masks/{digest}-{name}.png", png.getvalue()


def _cell(value: object) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    text = str(value).strip()
    return text or None


def _put(fs: AbstractFileSystem, root: str, now: dt.datetime, final: str, data: bytes) -> None:
    staged = staging_path(root, "review-import", now.date(), posixpath.basename(final))
    replace_bytes_atomically(fs, staged, final, data)
