"""The CLS embeddings of a batch of predictions, kept as a running sum.

The drift summary needs the mean image embedding of a night, but the prediction schema does
not change, so the embedding never reaches a row: :meth:`SemclipModel.predict` adds each
predicted image's L2-normalised CLS embedding (the vanilla last-stage CLS through CLIP's own
``ln_post``/``proj``, the joint image-text space) to an :class:`EmbeddingSum` it is handed,
and the nightly shard stages that sum (:func:`write_embedding_sum`). Sums of shards add up
to the night's mean whatever the sharding.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from fsspec import AbstractFileSystem

from semclip.io.bucket import find_files
from semclip.io.staging import parquet_bytes, replace_atomically, staging_path
from semclip.io.tables import CorruptParquetError, read_parquet_file

log = logging.getLogger(__name__)

__all__ = [
    "EMBEDDING_SCHEMA",
    "EmbeddingSum",
    "embeddings_folder",
    "read_embedding_sums",
    "write_embedding_sum",
]

EMBEDDING_SCHEMA = pa.schema(
    [
        pa.field("model_name", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("flow_run_id", pa.string()),
        pa.field("count", pa.int64()),
        pa.field("sum", pa.list_(pa.float64())),
    ]
)


@dataclass
class EmbeddingSum:
    """Sum and count of unit CLS embeddings; ``mean()`` is the night's mean embedding."""

    total: np.ndarray | None = field(default=None, repr=False)  # (D,) float64
    count: int = 0

    def add(self, vectors: np.ndarray) -> None:
        """Add (N, D) embeddings."""
        vectors = np.asarray(vectors, dtype=np.float64).reshape(-1, np.shape(vectors)[-1])
        if not len(vectors):
            return
        part = vectors.sum(axis=0)
        self.total = part if self.total is None else self.total + part
        self.count += len(vectors)

    def merge(self, other: EmbeddingSum) -> None:
        """Add another sum (another shard's)."""
        if other.count and other.total is not None:
            self.total = other.total.copy() if self.total is None else self.total + other.total
            self.count += other.count

    def mean(self) -> np.ndarray | None:
        """(D,) mean embedding; None when nothing was added."""
        return None if self.total is None or not self.count else self.total / self.count


def embeddings_folder(root: str, run_date: dt.date) -> str:
    """``<root>/drift/date=<D>/embeddings``."""
    return f"{root}/drift/date={run_date.isoformat()}/embeddings"


def write_embedding_sum(
    fs: AbstractFileSystem,
    root: str,
    run_date: dt.date,
    sums: EmbeddingSum,
    *,
    model_name: str,
    model_version: str,
    flow_run_id: str | None,
    shard: int,
) -> str | None:
    """Stage one shard's sum as ``embeddings/<run>-shard-<i>.parquet``; its URI.

    Nothing is written for an empty sum. The write is atomic (``_staging/`` then a swap).
    The name is fixed per flow run and shard, so a shard that runs again (a retry, a Dask
    worker lost after writing it) replaces its sum instead of adding it a second time.
    Outside a flow run (no id) each call gets a fresh token: nothing identifies a rerun.
    """
    if not sums.count or sums.total is None:
        return None
    table = pa.Table.from_pylist(
        [
            {
                "model_name": model_name,
                "model_version": model_version,
                "flow_run_id": flow_run_id,
                "count": sums.count,
                "sum": sums.total.tolist(),
            }
        ],
        schema=EMBEDDING_SCHEMA,
    )
    token = "" if flow_run_id else f"-{uuid.uuid4().hex[:8]}"
    name = f"{flow_run_id or 'local'}-shard-{shard:05d}{token}.parquet"
    final = f"{embeddings_folder(root, run_date)}/{name}"
    staged = staging_path(root, "drift", run_date, name)
    replace_atomically(fs, staged, final, parquet_bytes(table), 1)
    return fs.unstrip_protocol(final)


def read_embedding_sums(
    fs: AbstractFileSystem,
    root: str,
    run_date: dt.date,
    *,
    model_name: str,
    model_version: str,
    flow_run_ids: set[str | None],
) -> EmbeddingSum:
    """The date's staged sums of one model version, from the runs that wrote current rows.

    A run whose shards were staged but whose partition write failed wrote no current row, so
    its sums are left out (its images are predicted, and summed, again by the re-run).
    """
    total = EmbeddingSum()
    for path in find_files(fs, embeddings_folder(root, run_date)):
        try:
            rows = read_parquet_file(fs, path, EMBEDDING_SCHEMA).to_pylist()
        except CorruptParquetError as exc:  # one damaged file must not stop every re-run
            log.error("embedding sum %s; left out of the date's drift mean", exc)
            continue
        for row in rows:
            if (row["model_name"], row["model_version"]) != (model_name, model_version):
                continue
            if row["flow_run_id"] not in flow_run_ids:
                continue
            total.merge(EmbeddingSum(np.asarray(row["sum"], dtype=np.float64), row["count"]))
    return total
