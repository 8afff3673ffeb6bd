"""Tasks of the nightly inference: list, describe, predict shards, write the date partition.

Idempotency: a shard reads each image's bytes, and an image whose (content hash, model
version) already has a row in the date's partition is not predicted again; the final write
(:func:`semclip.io.partitions.write_partition`) rewrites the partition as the union of the
rows kept and the new ones. Shards hand their rows to the write step through small staged
Parquet files under ``_staging/nightly/`` in the bucket (never under ``predictions/``, where
readers would see them), so tasks pass URIs, and a failed write can be retried without
predicting again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from semclip.config import DEFAULT_MAX_IMAGE_PIXELS
from semclip.drift.embedding import EmbeddingSum, write_embedding_sum
from semclip.io import klarf_join
from semclip.io.fetch import fetch_bytes
from semclip.io.partitions import PartitionWrite, read_partition, write_partition
from semclip.io.paths import links_outside_bucket, raw_listing
from semclip.io.pipeline_schema import PIPELINE_PREDICTION_SCHEMA, pipeline_records_to_table
from semclip.io.quarantine import write_quarantine
from semclip.io.staging import is_local, parquet_bytes, replace_atomically, staging_path
from semclip.prediction import Prediction, fill_pixel_size
from semclip.registry.client import Registry
from semclip.registry.refs import ModelRef
from tasks.common import IO_RETRIES, BucketRef, is_transient, run_logger

__all__ = [
    "ShardResult",
    "WriteResult",
    "describe_images",
    "discard_staged",
    "list_images",
    "predict_shard",
    "prediction_rows",
    "read_done_hashes",
    "resolve_model",
    "write_predictions",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardResult:
    """What one shard did: counts, and where its rows wait for the partition write."""

    index: int
    staged_uri: str | None  # Parquet of new rows; None when nothing was predicted
    n_images: int
    n_predicted: int
    n_kept: int  # already in the partition for this model version: not recomputed
    n_quarantined: int
    quarantine_uri: str | None
    worker: str = ""  # who ran it: a Dask worker's address, else the host; and the pid


@dataclass(frozen=True)
class WriteResult:
    """The partition write: the partition writer's report plus duplicates sent to quarantine."""

    partition: PartitionWrite
    n_duplicates: int  # images with the same bytes as another image of the run
    quarantine_uri: str | None


@task(name="resolve_model", **IO_RETRIES)
def resolve_model(registry: Registry, reference: str | None) -> ModelRef:
    """The registered version to predict with: an alias (default champion) or a version."""
    return registry.resolve(reference)


@task(name="list_images", **IO_RETRIES)
def list_images(bucket: BucketRef, run_date: dt.date) -> list[str]:
    """URIs of the images under raw/<run_date>/ and only there (fails on a missing bucket).

    Files left alone (hidden, or not an image type) are logged as a warning with a few
    names, so a night of unsupported files does not read as an empty night.
    """
    fs, root = bucket.open()
    images, ignored = raw_listing(fs, root, run_date)
    for reason, uris in ignored.items():
        shown = ", ".join(uris[:5]) + (f", … ({len(uris) - 5} more)" if len(uris) > 5 else "")
        run_logger().warning(
            "raw/%s: %d file(s) left alone, %s: %s", run_date, len(uris), reason, shown
        )
    return images


@task(name="describe_images", **IO_RETRIES)
def describe_images(
    bucket: BucketRef, run_date: dt.date, uris: list[str], path_regex: str
) -> klarf_join.ImageDescriptions:
    """Lot/wafer/defect ids and die positions per image, from its path and a KLARF beside it."""
    fs, root = bucket.open()
    return klarf_join.describe_images(fs, root, run_date, uris, path_regex)


@task(name="read_done_hashes", **IO_RETRIES)
def read_done_hashes(bucket: BucketRef, run_date: dt.date, model_version: str) -> dict[str, str]:
    """Content hashes already predicted by ``model_version`` in the date's partition, each
    with the image URI its row carries.

    Only rows with a class count: an error row (``error`` set, e.g. non-finite probabilities
    of a corrupt model, whoever wrote it) is history, so a re-run predicts that image again.
    The URI lets a later file with the same bytes (a copy, a rename) be quarantined naming
    the row that holds them, instead of counted as kept with no row of its own.
    """
    fs, root = bucket.open()
    names = ["image_sha256", "model_version", "error", "image_uri"]
    table = read_partition(fs, root, run_date, columns=names)
    columns = (table.column(c).to_pylist() for c in names)
    done: dict[str, str] = {}
    for sha, version, error, uri in zip(*columns, strict=True):
        if sha is not None and version == model_version and error is None:
            done[sha] = min(uri, done.get(sha, uri))  # one row per key: min is a tie-break
    return dict(sorted(done.items()))


@task(name="predict_shard", cache_policy=NO_CACHE, **IO_RETRIES)
def predict_shard(
    bucket: BucketRef,
    registry: Registry,
    model: ModelRef,
    run_date: dt.date,
    index: int,
    uris: list[str],
    fields: Mapping[str, Mapping[str, Any]],
    done_hashes: Mapping[str, str],
    flow_run_id: str | None,
    tiff_page: int = 0,
    pixel_size_nm: float | None = None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> ShardResult:
    """Predict the images of one shard that the partition lacks; quarantine unreadable ones.

    Unreadable means: a link out of a local bucket (not followed), bytes that cannot be
    fetched, or an image the model cannot decode (corrupt, above ``max_image_pixels``, out
    of memory). Each gets its reason in quarantine; the other images of the shard go on.
    An image whose bytes are missing or forbidden is quarantined; a fetch that failed on
    the way (a connection reset, a 503 once s3fs's own retries are spent) is no fault of
    the image: the shard raises it before any compute, and the I/O retry policy runs the
    shard again. A second attempt adds nothing twice: the flow merges only the staged file
    that a task returned, the embedding sum is named by run and shard (replaced, not added),
    and quarantine rows already recorded for the date are not written again.
    """
    fs, root = bucket.open()
    done = dict(done_hashes)  # content hash → the URI whose row holds it
    escaped = links_outside_bucket(fs, root, uris)
    quarantine = [_quarantine_row(u, reason, flow_run_id) for u, reason in escaped.items()]
    inside = [u for u in uris if u not in escaped]
    data = fetch_bytes(fs, inside)
    failed = [value for value in data.values() if isinstance(value, Exception)]
    if transient := next((e for e in failed if is_transient(e)), None):
        raise transient
    todo: list[tuple[str, bytes]] = []
    for uri in inside:
        value = data[uri]
        if isinstance(value, Exception):
            quarantine.append(_quarantine_row(uri, f"cannot fetch: {value}", flow_run_id))
        else:
            sha = hashlib.sha256(value).hexdigest()
            holder = done.get(sha)
            if holder is None:
                todo.append((uri, value))
            elif holder != uri:  # a copy or a rename of an image the date already has
                quarantine.append(_quarantine_row(uri, _same_bytes(sha, holder), flow_run_id))
    n_kept = len(uris) - len(todo) - len(quarantine)
    predictions: list[Prediction] = []
    embeddings = EmbeddingSum()  # the drift summary's mean CLS embedding; not in the rows
    if todo:
        loaded = registry.load_cached(model)
        config = dataclasses.replace(
            loaded.predict_config, tiff_page=tiff_page, max_image_pixels=max_image_pixels
        )
        predictions = loaded.predict(
            [b for _, b in todo], uris=[u for u, _ in todo], config=config, embeddings=embeddings
        )
    # the file's own pixel size wins; SEMCLIP_PIXEL_SIZE_NM fills in where it has none
    good = [fill_pixel_size(p, pixel_size_nm, "setting") for p in predictions if p.ok]
    quarantine += [
        _quarantine_row(p.image_uri, p.error, flow_run_id) for p in predictions if not p.ok
    ]
    table = prediction_rows(good, fields, flow_run_id, dt.datetime.now(dt.UTC))
    staged = _stage(fs, root, run_date, flow_run_id, index, table) if table.num_rows else None
    write_embedding_sum(
        fs,
        root,
        run_date,
        embeddings,
        model_name=model.name,
        model_version=model.version,
        flow_run_id=flow_run_id,
        shard=index,
    )
    quarantined = write_quarantine(fs, root, run_date, quarantine)
    return ShardResult(
        index, staged, len(uris), len(good), n_kept, len(quarantine), quarantined, _worker()
    )


@task(name="write_predictions", **IO_RETRIES)
def write_predictions(
    bucket: BucketRef, run_date: dt.date, staged_uris: list[str], flow_run_id: str | None
) -> WriteResult:
    """Rewrite the date's partition as its kept rows plus the staged new rows, then clean up.

    Two images with the same bytes share a key (content hash, model version): the first by
    URI is written, the others go to quarantine as duplicates, so the write never fails on a
    repeated key.
    """
    fs, root = bucket.open()
    tables = [_read_staged(fs, uri) for uri in staged_uris]
    table = pa.concat_tables(tables) if tables else PIPELINE_PREDICTION_SCHEMA.empty_table()
    table, duplicates = _drop_duplicate_hashes(table, flow_run_id)
    if table.num_rows:
        result = write_partition(fs, root, run_date, table)
    else:  # nothing new: the partition stays as it is; report what it holds
        current = read_partition(fs, root, run_date, columns=["image_uri"]).num_rows
        empty = write_partition(fs, root, run_date, table)
        result = dataclasses.replace(empty, rows_kept=current)
    quarantined = write_quarantine(fs, root, run_date, duplicates)
    _remove_staged(fs, staged_uris)
    return WriteResult(result, len(duplicates), quarantined)


@task(name="discard_staged", cache_policy=NO_CACHE)
def discard_staged(bucket: BucketRef, staged_uris: list[str]) -> None:
    """Remove a failed run's staged shard files: no later run can use them (it predicts
    again), and leaving them would only wait for the orphan sweep."""
    fs, _ = bucket.open()
    _remove_staged(fs, staged_uris)


def prediction_rows(
    predictions: Sequence[Prediction],
    fields: Mapping[str, Mapping[str, Any]],
    flow_run_id: str | None,
    inferred_at: dt.datetime,
) -> pa.Table:
    """Pipeline rows: each prediction's record plus its ids/positions and run lineage."""
    records = []
    for p in predictions:
        extra = dict(fields.get(p.image_uri, {}))
        records.append(
            {**p.to_record(), **extra, "flow_run_id": flow_run_id, "inferred_at": inferred_at}
        )
    return pipeline_records_to_table(records)


def _quarantine_row(uri: str, reason: str | None, flow_run_id: str | None) -> dict[str, Any]:
    return {"image_uri": uri, "reason": reason or "unknown error", "flow_run_id": flow_run_id}


def _stage(
    fs: Any, root: str, run_date: dt.date, flow_run_id: str | None, index: int, table: pa.Table
) -> str:
    """Write a shard's rows to ``…-<run id>-shard-<index>.parquet``, whole or not at all.

    The name carries the run id and the shard index (and a fresh stamp and token: a retried
    shard never meets its dead attempt's file); the bytes go to a ``.partial`` copy first,
    are read back and swapped in (:func:`~semclip.io.staging.replace_atomically`), so a
    worker killed mid-write leaves only a partial orphan that the sweep removes.
    """
    run = flow_run_id or "local"
    path = staging_path(root, "nightly", run_date, f"{run}-shard-{index:05d}.parquet")
    replace_atomically(fs, f"{path}.partial", path, parquet_bytes(table), table.num_rows)
    return fs.unstrip_protocol(path)


def _worker() -> str:
    """``<Dask worker address> (pid N)`` inside a Dask worker, else ``<host> (pid N)``."""
    try:
        from distributed import get_worker

        where = get_worker().address
    except (ImportError, ValueError):  # not in a Dask worker (the sequential path)
        where = socket.gethostname()
    return f"{where} (pid {os.getpid()})"


def _read_staged(fs: Any, uri: str) -> pa.Table:
    with fs.open(fs._strip_protocol(uri), "rb") as f:
        table = pq.read_table(f, use_threads=False)
    return pa.Table.from_arrays(table.columns, schema=PIPELINE_PREDICTION_SCHEMA)


def _remove_staged(fs: Any, staged_uris: list[str]) -> None:
    """Delete this run's staged shard files (and, on a local disk, folders left empty).

    Only its own files: the date's staging folder may hold another run's shards. Files of a
    run that died before this point are swept by age (:func:`semclip.io.staging.sweep_orphans`,
    on the next partition write).
    """
    folders = {fs._strip_protocol(uri).rsplit("/", 1)[0] for uri in staged_uris}
    for uri in staged_uris:
        with contextlib.suppress(FileNotFoundError):
            fs.rm(fs._strip_protocol(uri))
    if is_local(fs):
        for folder in folders:
            with contextlib.suppress(OSError):  # only when empty
                os.rmdir(folder)


def _drop_duplicate_hashes(
    table: pa.Table, flow_run_id: str | None
) -> tuple[pa.Table, list[dict[str, Any]]]:
    table = table.sort_by([("image_uri", "ascending")])
    seen: dict[tuple[str, str], str] = {}
    keep, duplicates = [], []
    columns = ("image_uri", "image_sha256", "model_version")
    for uri, sha, version in zip(*(table.column(c).to_pylist() for c in columns), strict=True):
        first = seen.setdefault((sha, version), uri)
        keep.append(first == uri)
        if first != uri:
            duplicates.append(_quarantine_row(uri, _same_bytes(sha, first), flow_run_id))
    return table.filter(pa.array(keep, pa.bool_())), duplicates


def _same_bytes(sha: str, holder: str) -> str:
    """The quarantine reason of an image whose bytes another URI's row already holds."""
    return f"same bytes (SHA-256 {sha[:12]}…) as {holder}, predicted under that URI"
