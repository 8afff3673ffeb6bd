"""The object store the pipeline reads and writes: one fsspec code path for file:// and s3://.

Layout under the bucket root::

    raw/<YYYY-MM-DD>/…/<image>.{png,tif,tiff,jpg,jpeg}   (+ a KLARF beside the images)
    confirmed/…/*.{csv,parquet}                           engineer-reviewed labels
    predictions/date=<YYYY-MM-DD>/*.parquet               one hive partition per raw date
    quarantine/date=<YYYY-MM-DD>/<uuid>.parquet           inputs that could not be used

Functions take ``(fs, root)`` from :func:`open_bucket` (``root`` is a path inside ``fs``,
without protocol) and hand back full URIs (``s3://…``, ``file:///…``), which is what the
prediction rows store and what any fsspec reader opens. Listings start with
``fs.invalidate_cache()`` because s3fs caches them and a nightly run must see today's files.

Parquet is read with ``use_threads=False``: this pyarrow build can abort at interpreter exit
after threaded reads, and partitions are small enough not to need threads.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, NamedTuple

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem
from pyarrow.fs import FSSpecHandler, PyFileSystem

from semclip.io.klarf import Klarf, KlarfDefect, KlarfError, parse_klarf
from semclip.io.pipeline_schema import (
    PARTITION_FIELD,
    PIPELINE_PREDICTION_SCHEMA,
    QUARANTINE_SCHEMA,
    quarantine_records_to_table,
)
from semclip.io.schema import validate_table

__all__ = [
    "CONFIRMED_COLUMNS",
    "IMAGE_SUFFIXES",
    "Bucket",
    "BucketNotFoundError",
    "ConfirmedShotsError",
    "ImageDescriptions",
    "PartitionWrite",
    "date_prefix",
    "describe_images",
    "existing_keys",
    "find_klarf",
    "join_klarf",
    "list_raw_images",
    "open_bucket",
    "parse_ids",
    "predictions_dataset",
    "read_confirmed",
    "read_klarf",
    "read_partition",
    "read_quarantine",
    "write_partition",
    "write_quarantine",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".tif", ".tiff", ".jpg", ".jpeg"})
KLARF_SUFFIXES = frozenset({".klarf", ".klf", ".kla", ".klr"})
_KLARF_NUMBERED = re.compile(r"\.\d{3}")  # tools also write <lot>.000, <lot>.001, …
CONFIRMED_COLUMNS = ("image_uri", "label", "mask_uri", "confirmed_at", "reviewer")
_CONFIRMED_REQUIRED = ("image_uri", "label", "confirmed_at", "reviewer")
_TEXT_COLUMNS = ("image_uri", "label", "mask_uri", "reviewer")
_ID_FIELDS = ("lot_id", "wafer_id", "defect_id")
_KEY_COLUMNS = ("image_sha256", "model_version")


class BucketNotFoundError(FileNotFoundError):
    """The configured bucket (or local bucket folder) does not exist."""


class ConfirmedShotsError(ValueError):
    """A file under ``confirmed/`` cannot be used; the message names the file."""


class Bucket(NamedTuple):
    """An opened bucket: unpacks as ``fs, root = open_bucket(url)``."""

    fs: AbstractFileSystem
    root: str  # path inside fs, no protocol, no trailing slash


@dataclass(frozen=True)
class PartitionWrite:
    """What :func:`write_partition` did, for the flow's run report."""

    uri: str  # the partition folder
    rows_new: int  # rows of the new table
    rows_kept: int  # earlier rows carried over (their key is not in the new table)
    rows_replaced: int  # earlier rows superseded by a new row with the same key
    files: tuple[str, ...] = ()  # Parquet files now in the partition

    @property
    def rows_total(self) -> int:
        return self.rows_new + self.rows_kept


@dataclass(frozen=True)
class ImageDescriptions:
    """Ids and wafer positions per image URI, plus the KLARFs that could not be read."""

    fields: dict[str, dict[str, Any]]  # uri -> lot/wafer/defect ids, die index, x/y in µm
    klarf_errors: list[str] = field(default_factory=list)  # one "source:line: why" each


# --------------------------------------------------------------------------- the bucket


def open_bucket(url: str, *, endpoint_url: str | None = None, create: bool = False) -> Bucket:
    """Open ``url`` (``file://…``, ``s3://bucket[/prefix]`` or a local path) with fsspec.

    Raises :class:`BucketNotFoundError` naming the bucket when it does not exist, unless
    ``create`` (the local demo) makes it; failing here beats failing on the first write
    after a night of inference. ``endpoint_url`` points s3fs at MinIO/Ceph/moto. A local
    bucket is its folder; on S3 the bucket must exist, a prefix inside it need not.
    """
    protocol = fsspec.utils.get_protocol(url)
    options: dict[str, Any] = {}
    if protocol == "s3" and endpoint_url:
        options["endpoint_url"] = endpoint_url
    elif protocol in ("file", "local"):
        options["auto_mkdir"] = True  # behave like an object store: writing makes the folders
    fs, root = fsspec.core.url_to_fs(url, **options)
    root = root.rstrip("/")
    is_s3 = protocol == "s3"
    container = root.split("/", 1)[0] if is_s3 else root
    fs.invalidate_cache()
    if fs.exists(container):
        return Bucket(fs, root)
    if not create:
        where = f" at {endpoint_url}" if is_s3 and endpoint_url else ""
        hint = " (or these credentials cannot see it)" if is_s3 else ""
        raise BucketNotFoundError(
            f"bucket {fs.unstrip_protocol(container)!r}{where} does not exist{hint}; "
            "create it or point SEMCLIP_BUCKET at an existing one"
        )
    if is_s3:
        fs.mkdir(container)
    else:
        fs.makedirs(container, exist_ok=True)
    return Bucket(fs, root)


def date_prefix(fs: AbstractFileSystem, root: str, run_date: dt.date) -> str:
    """URI of ``raw/<date>/`` with a trailing slash: what :func:`parse_ids` strips."""
    return fs.unstrip_protocol(f"{root}/raw/{run_date.isoformat()}") + "/"


def list_raw_images(fs: AbstractFileSystem, root: str, run_date: dt.date) -> list[str]:
    """Sorted URIs of the images under ``raw/<date>/`` (and only that date), any depth."""
    folder = f"{root}/raw/{run_date.isoformat()}"
    return [fs.unstrip_protocol(p) for p in _find(fs, folder) if _suffix(p) in IMAGE_SUFFIXES]


def parse_ids(
    uri: str, regex: str | re.Pattern[str], date_prefix: str = ""
) -> dict[str, str | None]:
    """``lot_id``, ``wafer_id``, ``defect_id`` from the path of ``uri`` below ``date_prefix``.

    The regex is *searched*, so a pattern anchored with ``$`` matches the last folders of a
    deeper layout. A group the regex lacks, or a path it does not match, gives ``None``.
    """
    pattern = re.compile(regex) if isinstance(regex, str) else regex
    prefix = date_prefix.rstrip("/") + "/" if date_prefix else ""
    relative = uri[len(prefix) :] if prefix and uri.startswith(prefix) else uri
    match = pattern.search(relative)
    groups = match.groupdict() if match else {}
    return {name: groups.get(name) or None for name in _ID_FIELDS}


# --------------------------------------------------------------------------- KLARF


def find_klarf(fs: AbstractFileSystem, folder: str) -> list[str]:
    """Sorted paths of the KLARF files directly in ``folder`` (path or URI)."""
    folder = fs._strip_protocol(folder).rstrip("/")
    fs.invalidate_cache(folder)
    try:
        entries = fs.ls(folder, detail=True)
    except FileNotFoundError:
        return []
    return sorted(e["name"] for e in entries if e["type"] == "file" and _is_klarf(e["name"]))


def read_klarf(fs: AbstractFileSystem, path: str) -> Klarf:
    """Read and parse one KLARF; old tools write Latin-1, so that is the fallback."""
    raw = fs.cat_file(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return parse_klarf(text, source=fs.unstrip_protocol(path))


def join_klarf(
    image_uri: str, path_ids: Mapping[str, str | None], klarfs: Sequence[Klarf]
) -> tuple[Klarf, KlarfDefect] | None:
    """The KLARF defect an image shows, or ``None`` when no unique match exists.

    First by file name (the image is the ``TiffFileName`` of exactly one defect), then by
    defect id: the trailing digits of the path's ``defect_id`` equal ``DEFECTID`` for
    exactly one defect (of the path's wafer, when the path gives one). Ambiguity gives
    ``None`` rather than a guess, because a wrong die position is worse than none.
    """
    name = PurePosixPath(image_uri).name
    candidates = [(k, d) for k in klarfs for d in k.defects]
    by_file = [(k, d) for k, d in candidates if name in d.image_files]
    if len(by_file) == 1:
        return by_file[0]
    number = _trailing_int(path_ids.get("defect_id"))
    if number is None:
        return None
    wafer = path_ids.get("wafer_id")
    by_id = [
        (k, d)
        for k, d in candidates
        if d.defect_id == number and (wafer is None or (d.wafer_id or k.wafer_id) in (None, wafer))
    ]
    return by_id[0] if len(by_id) == 1 else None


def describe_images(
    fs: AbstractFileSystem,
    root: str,
    run_date: dt.date,
    image_uris: Iterable[str],
    regex: str | re.Pattern[str],
) -> ImageDescriptions:
    """Pipeline id and position columns for each image, from its path and a KLARF beside it.

    Path ids win (they are what the fab configured); the KLARF fills the gaps and is the
    only source of die index and position. A KLARF that fails to parse is reported in
    ``klarf_errors`` and ignored, so one bad file never stops a night's predictions.
    """
    prefix = date_prefix(fs, root, run_date)
    folder_path = f"{root}/raw/{run_date.isoformat()}"
    klarfs: dict[str, list[Klarf]] = {}
    errors: list[str] = []
    for path in (p for p in _find(fs, folder_path) if _is_klarf(p)):
        try:
            klarf = read_klarf(fs, path)
        except (KlarfError, OSError) as exc:
            logger.warning("skipping KLARF: %s", exc)
            errors.append(str(exc))
            continue
        klarfs.setdefault(str(PurePosixPath(path).parent), []).append(klarf)
    fields = {}
    for uri in image_uris:
        ids = parse_ids(uri, regex, prefix)
        folder = str(PurePosixPath(fs._strip_protocol(uri)).parent)
        match = join_klarf(uri, ids, klarfs.get(folder, []))
        fields[uri] = _image_fields(ids, match)
    return ImageDescriptions(fields=fields, klarf_errors=errors)


def _image_fields(
    ids: Mapping[str, str | None], match: tuple[Klarf, KlarfDefect] | None
) -> dict[str, Any]:
    out: dict[str, Any] = {**ids, "die_x_index": None, "die_y_index": None}
    out.update(x_rel_um=None, y_rel_um=None)
    if match is None:
        return out
    klarf, defect = match
    out["lot_id"] = out["lot_id"] or klarf.lot_id
    out["wafer_id"] = out["wafer_id"] or defect.wafer_id or klarf.wafer_id
    out["defect_id"] = out["defect_id"] or str(defect.defect_id)
    out.update(die_x_index=defect.xindex, die_y_index=defect.yindex)
    out.update(x_rel_um=defect.x_rel_um, y_rel_um=defect.y_rel_um)
    return out


# --------------------------------------------------------------------------- confirmed shots


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
        for path in _find(fs, f"{root}/confirmed")
        if _suffix(path) in (".csv", ".parquet", ".pq")
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
            if _suffix(path) == ".csv":
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


# --------------------------------------------------------------------------- quarantine

QUARANTINE_KEY = ("image_uri", "reason")  # one row per broken input and reason, per date


def write_quarantine(
    fs: AbstractFileSystem, root: str, run_date: dt.date, rows: Iterable[Mapping[str, Any]]
) -> str | None:
    """Append ``rows`` (image_uri, reason, flow_run_id, quarantined_at) as a new file.

    One new file per call, so concurrent shards never overwrite each other. Rows the date
    already records (same image_uri and reason) are not written again: a re-run or backfill
    of the date leaves one row per broken input, stamped by the run that first met it, and
    a count over the folder stays a count of inputs. Returns the new file's URI, or ``None``
    when there was nothing new to write. ``quarantined_at`` defaults to now.
    """
    table = quarantine_records_to_table(rows)
    if table.num_rows == 0:
        return None
    folder = f"{root}/quarantine/date={run_date.isoformat()}"
    known = _read_parquet_files(fs, folder, QUARANTINE_SCHEMA, QUARANTINE_KEY)
    if known.num_rows:
        seen = set(_keys(known, QUARANTINE_KEY))
        fresh = [key not in seen for key in _keys(table, QUARANTINE_KEY)]
        table = table.filter(pa.array(fresh, type=pa.bool_()))
        if table.num_rows == 0:
            return None
    path = f"{folder}/{uuid.uuid4().hex}.parquet"
    fs.makedirs(folder, exist_ok=True)
    with fs.open(path, "wb") as f:
        pq.write_table(table, f)
    return fs.unstrip_protocol(path)


def read_quarantine(fs: AbstractFileSystem, root: str, run_date: dt.date) -> pa.Table:
    """All quarantine rows of ``run_date`` (empty table with the schema if none)."""
    return _read_parquet_files(
        fs, f"{root}/quarantine/date={run_date.isoformat()}", QUARANTINE_SCHEMA
    )


# --------------------------------------------------------------------------- predictions


def read_partition(
    fs: AbstractFileSystem, root: str, run_date: dt.date, columns: Sequence[str] | None = None
) -> pa.Table:
    """The ``predictions/date=<run_date>/`` rows with :data:`PIPELINE_PREDICTION_SCHEMA`.

    The hive key ``date`` is not a column here (it is the folder). Files written before a
    column was added read with that column null, since the declared schema is imposed.
    """
    return _read_parquet_files(
        fs, _partition_path(root, run_date), PIPELINE_PREDICTION_SCHEMA, columns
    )


def existing_keys(fs: AbstractFileSystem, root: str, run_date: dt.date) -> set[tuple[str, str]]:
    """``(image_sha256, model_version)`` already predicted for ``run_date``: skip these."""
    table = read_partition(fs, root, run_date, columns=list(_KEY_COLUMNS))
    return {
        (sha, version)
        for sha, version in zip(*(table.column(c).to_pylist() for c in _KEY_COLUMNS), strict=True)
        if sha is not None
    }


def write_partition(
    fs: AbstractFileSystem,
    root: str,
    run_date: dt.date,
    table: pa.Table,
    *,
    key_columns: Sequence[str] = _KEY_COLUMNS,
) -> PartitionWrite:
    """Rewrite the date's partition as the union of its current rows and ``table``.

    A current row survives unless ``table`` has a row with the same key (new rows win);
    a current row without an image hash (it failed to read) is also replaced by a new row
    for the same ``image_uri`` and model version. The partition is then written with
    ``existing_data_behavior="delete_matching"``, so no file of an earlier run remains.
    Re-running with the same rows is therefore a no-op in content and never duplicates.

    One writer per date at a time: two concurrent writers each keep only their own union.
    Raises ``ValueError`` if ``table`` does not match the schema or repeats a key.
    """
    validate_table(table, schema=PIPELINE_PREDICTION_SCHEMA)
    table = pa.Table.from_arrays(table.columns, schema=PIPELINE_PREDICTION_SCHEMA)
    new_keys = _keys(table, key_columns)
    if len(set(new_keys)) != len(new_keys):
        dupes = sorted({k for k in new_keys if new_keys.count(k) > 1}, key=str)[:3]
        raise ValueError(f"new predictions repeat key(s) {dupes} of {tuple(key_columns)}")
    folder = _partition_path(root, run_date)
    if table.num_rows == 0:
        return PartitionWrite(fs.unstrip_protocol(folder), 0, 0, 0, _parquet_files(fs, folder))
    current = read_partition(fs, root, run_date)
    keep = _rows_to_keep(current, table, key_columns)
    merged = pa.concat_tables([current.filter(pa.array(keep, pa.bool_())), table])
    merged = merged.sort_by([("image_uri", "ascending"), ("model_version", "ascending")])
    _write_hive(fs, root, run_date, merged)
    kept = sum(keep)
    return PartitionWrite(
        uri=fs.unstrip_protocol(folder),
        rows_new=table.num_rows,
        rows_kept=kept,
        rows_replaced=current.num_rows - kept,
        files=_parquet_files(fs, folder),
    )


def predictions_dataset(fs: AbstractFileSystem, root: str) -> ds.Dataset:
    """Every prediction partition as one dataset: the declared schema plus ``date`` (date32).

    Use this rather than hive discovery, which would type ``date`` as a string and guess
    the other columns from whichever file it opens first.
    """
    folder = f"{root}/predictions"
    files = [p for p in _find(fs, folder) if p.endswith(".parquet")]
    return ds.dataset(
        files,
        schema=pa.schema([*PIPELINE_PREDICTION_SCHEMA, PARTITION_FIELD]),
        format="parquet",
        filesystem=PyFileSystem(FSSpecHandler(fs)),
        partitioning=_hive_partitioning(),
        partition_base_dir=folder,
    )


def _hive_partitioning() -> ds.Partitioning:
    return ds.partitioning(pa.schema([PARTITION_FIELD]), flavor="hive")


def _rows_to_keep(current: pa.Table, new: pa.Table, key_columns: Sequence[str]) -> list[bool]:
    new_keys = set(_keys(new, key_columns))
    new_uris = set(_keys(new, ("image_uri", "model_version")))
    current_uris = _keys(current, ("image_uri", "model_version"))
    hashes = current.column("image_sha256").to_pylist()
    return [
        key not in new_keys and not (sha is None and uri_key in new_uris)
        for key, uri_key, sha in zip(_keys(current, key_columns), current_uris, hashes, strict=True)
    ]


def _keys(table: pa.Table, columns: Sequence[str]) -> list[tuple[Any, ...]]:
    return list(zip(*(table.column(c).to_pylist() for c in columns), strict=True))


def _write_hive(fs: AbstractFileSystem, root: str, run_date: dt.date, table: pa.Table) -> None:
    dates = pa.array([run_date] * table.num_rows, type=PARTITION_FIELD.type)
    with_date = table.append_column(PARTITION_FIELD, dates)
    ds.write_dataset(
        with_date,
        base_dir=f"{root}/predictions",
        filesystem=PyFileSystem(FSSpecHandler(fs)),
        format="parquet",
        partitioning=_hive_partitioning(),
        existing_data_behavior="delete_matching",
        basename_template=f"part-{uuid.uuid4().hex}-{{i}}.parquet",
        use_threads=False,
    )
    fs.invalidate_cache()


# --------------------------------------------------------------------------- helpers


def _partition_path(root: str, run_date: dt.date) -> str:
    return f"{root}/predictions/date={run_date.isoformat()}"


def _find(fs: AbstractFileSystem, folder: str) -> list[str]:
    """Sorted file paths below ``folder`` (fresh listing; missing folder → empty)."""
    fs.invalidate_cache()
    try:
        paths = fs.find(folder)
    except FileNotFoundError:
        return []
    inside = folder.rstrip("/") + "/"
    return sorted(p for p in paths if p.startswith(inside))


def _parquet_files(fs: AbstractFileSystem, folder: str) -> tuple[str, ...]:
    return tuple(fs.unstrip_protocol(p) for p in _find(fs, folder) if p.endswith(".parquet"))


def _read_parquet_files(
    fs: AbstractFileSystem,
    folder: str,
    schema: pa.Schema,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    files = [p for p in _find(fs, folder) if p.endswith(".parquet")]
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)
    if not files:
        return schema.empty_table()
    dataset = ds.dataset(
        files, schema=schema, format="parquet", filesystem=PyFileSystem(FSSpecHandler(fs))
    )
    return dataset.to_table(use_threads=False)


def _suffix(path: str) -> str:
    return PurePosixPath(path).suffix.lower()


def _is_klarf(path: str) -> bool:
    suffix = _suffix(path)
    return suffix in KLARF_SUFFIXES or bool(_KLARF_NUMBERED.fullmatch(suffix))


def _trailing_int(value: str | None) -> int | None:
    match = re.search(r"(\d+)$", value or "")
    return int(match.group(1)) if match else None
