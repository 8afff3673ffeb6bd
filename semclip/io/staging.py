"""Temporary objects under ``_staging/`` at the bucket root, and replacing an object atomically.

Nothing temporary is ever written under ``predictions/``: readers (``read_partition``, DuckDB's
``predictions/*/*.parquet`` glob) would see it. A writer stages its bytes under
``_staging/<area>/date=<date>/<stamp>-<token>…``, where ``<stamp>`` is the creation time in
milliseconds since the epoch, so an orphan left by a killed process can be recognised and
swept by age on any backend without trusting the store's modification times
(:func:`sweep_orphans`).

:func:`replace_atomically` is the one way a final object is replaced: write the staged copy,
make it durable, check it reads back as Parquet with the expected row count, then swap it in
with one operation: ``os.replace`` on a local filesystem (same filesystem as the bucket, so a
rename), one server-side copy (a single PUT with ``x-amz-copy-source``) on S3. A reader sees
the old object or the new one in full, never a part of either; a full disk or a kill leaves
the old object untouched and at worst a staged orphan.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import logging
import os
import re
import uuid
from collections.abc import Callable, Collection

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from semclip.io.bucket import find_files

__all__ = [
    "ORPHAN_GRACE",
    "STAGING_DIR",
    "STALE_GRACE",
    "StagedFileError",
    "is_local",
    "parquet_bytes",
    "replace_atomically",
    "replace_bytes_atomically",
    "staging_path",
    "sweep_orphans",
]

log = logging.getLogger(__name__)

STAGING_DIR = "_staging"  # at the bucket root, outside predictions/ and quarantine/
# A staged file older than this belongs to no live writer (a partition write takes seconds to
# minutes, a nightly's shards live for the run): it is an orphan of a killed or failed run.
ORPHAN_GRACE = dt.timedelta(hours=6)
# Staged files of *other* dates may belong to a live run of that date, and a night of 100k
# images on one CPU machine can run past ORPHAN_GRACE: they are swept only past this age.
STALE_GRACE = dt.timedelta(days=7)
_STAMPED = re.compile(r"^(?P<ms>\d{13})-")


class StagedFileError(OSError):
    """A staged file did not read back as what was written: it was not swapped in."""


def is_local(fs: AbstractFileSystem) -> bool:
    """A local filesystem, where a rename is atomic (else: an object store)."""
    return isinstance(fs, LocalFileSystem)


def staging_path(
    root: str, area: str, run_date: dt.date, name: str, *, now: dt.datetime | None = None
) -> str:
    """``<root>/_staging/<area>/date=<date>/<stamp>-<uuid>-<name>``: a fresh, sweepable path."""
    stamp = int((now or dt.datetime.now(dt.UTC)).timestamp() * 1000)
    token = f"{stamp:013d}-{uuid.uuid4().hex}"
    return f"{root}/{STAGING_DIR}/{area}/date={run_date.isoformat()}/{token}-{name}"


def parquet_bytes(table: pa.Table) -> bytes:
    """The table as one Parquet file, in memory (so a write is one buffer, one request)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def replace_atomically(
    fs: AbstractFileSystem, staged: str, final: str, data: bytes, expected_rows: int
) -> None:
    """Make ``final`` hold ``data`` (a Parquet file of ``expected_rows`` rows) in one step.

    ``staged`` (from :func:`staging_path`) is written, fsync'ed on a local disk, and read back
    (footer and row count) before the swap, so a short write (full disk) never replaces the
    old object. The staged file is removed afterwards, whether the swap happened or not; a
    kill leaves it for :func:`sweep_orphans`. Raises the write's own ``OSError`` (say ENOSPC)
    or :class:`StagedFileError` when the staged copy is not what was written.
    """
    _swap_in(fs, staged, final, data, lambda: _check_staged(fs, staged, len(data), expected_rows))


def replace_bytes_atomically(fs: AbstractFileSystem, staged: str, final: str, data: bytes) -> None:
    """Make ``final`` hold ``data`` (any bytes: a CSV, a PNG) in one step, as
    :func:`replace_atomically` does for Parquet; the staged copy's size is checked."""
    _swap_in(fs, staged, final, data, lambda: _check_size(fs, staged, len(data)))


def _swap_in(
    fs: AbstractFileSystem, staged: str, final: str, data: bytes, check: Callable[[], None]
) -> None:
    """Write ``staged``, make it durable, ``check`` it, swap it in as ``final``; clean up."""
    try:
        fs.makedirs(staged.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(staged, "wb") as f:
            f.write(data)
            if is_local(fs):
                f.flush()
                os.fsync(f.fileno())
        check()
        if is_local(fs):
            folder = final.rsplit("/", 1)[0]
            os.makedirs(folder, exist_ok=True)
            os.replace(staged, final)  # atomic on POSIX: same filesystem (the bucket folder)
            _fsync_dir(folder)
        else:
            fs.copy(staged, final)  # one CopyObject: the object is swapped whole
    finally:
        _discard(fs, staged)


def sweep_orphans(
    fs: AbstractFileSystem,
    root: str,
    *,
    grace: dt.timedelta = ORPHAN_GRACE,
    now: dt.datetime | None = None,
    dates: Collection[dt.date] | None = None,
) -> list[str]:
    """Delete staged files under ``_staging/`` older than ``grace``; returns their URIs.

    Age comes from the stamp in the path (see module doc); a path without one is not ours and
    is left alone. Only files under a ``date=<d>`` folder of ``dates`` are considered when it
    is given. Safe beside live writers as long as ``grace`` exceeds the longest write; the
    partition writer therefore sweeps its own date (whose other writers its date lock keeps
    out) at :data:`ORPHAN_GRACE` and every other date only at :data:`STALE_GRACE`.
    """
    now_ms = int((now or dt.datetime.now(dt.UTC)).timestamp() * 1000)
    limit_ms = grace.total_seconds() * 1000
    base = f"{root}/{STAGING_DIR}"
    wanted = None if dates is None else {f"date={d.isoformat()}" for d in dates}
    removed = []
    for path in find_files(fs, base):
        parts = path[len(base) :].split("/")
        if wanted is not None and not wanted.intersection(parts):
            continue
        stamps = [m for part in parts if (m := _STAMPED.match(part))]
        if not stamps or now_ms - int(stamps[0]["ms"]) <= limit_ms:
            continue
        with contextlib.suppress(FileNotFoundError):
            fs.rm(path)
            removed.append(fs.unstrip_protocol(path))
    if removed:
        log.info("removed %d orphan staged file(s) older than %s: %s", len(removed), grace, removed)
        if is_local(fs):  # drop the empty folders too (an object store has none)
            _remove_empty_folders(base)
    return removed


def _discard(fs: AbstractFileSystem, staged: str) -> None:
    """Remove a staged file if it is still there; never hide the write's own error."""
    try:
        fs.rm(staged)
    except FileNotFoundError:
        pass  # renamed into place, or never written
    except OSError as exc:  # the sweep removes it later
        log.warning("could not remove staged file %s (%s)", fs.unstrip_protocol(staged), exc)
    fs.invalidate_cache()


def _check_size(fs: AbstractFileSystem, staged: str, size: int) -> None:
    fs.invalidate_cache()
    actual = fs.size(staged)
    if actual != size:
        uri = fs.unstrip_protocol(staged)
        raise StagedFileError(f"staged file {uri} has {actual} bytes, {size} were written")


def _check_staged(fs: AbstractFileSystem, staged: str, size: int, expected_rows: int) -> None:
    uri = fs.unstrip_protocol(staged)
    _check_size(fs, staged, size)
    with fs.open(staged, "rb") as f:
        try:
            rows = pq.ParquetFile(f).metadata.num_rows
        except pa.ArrowInvalid as exc:
            raise StagedFileError(f"staged file {uri} is not valid Parquet: {exc}") from exc
    if rows != expected_rows:
        raise StagedFileError(f"staged file {uri} holds {rows} rows, {expected_rows} expected")


def _fsync_dir(folder: str) -> None:
    """Persist the rename itself (the directory entry), not only the file's bytes."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_empty_folders(base: str) -> None:
    for folder, _, _ in sorted(os.walk(base), key=lambda w: -len(w[0])):
        if folder != base:
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only succeeds when empty
