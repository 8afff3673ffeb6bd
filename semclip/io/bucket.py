"""The object store the pipeline reads and writes: one fsspec code path for file:// and s3://.

Layout under the bucket root::

    raw/<YYYY-MM-DD>/…/<image>.{png,tif,tiff,jpg,jpeg}   (+ a KLARF beside the images)
    confirmed/…/*.{csv,parquet}                           engineer-reviewed labels
    predictions/date=<YYYY-MM-DD>/part-0.parquet          one hive partition (one object) per date
    quarantine/date=<YYYY-MM-DD>/<uuid>.parquet           inputs that could not be used
    quarantine/corrupt/date=<YYYY-MM-DD>/…                unreadable prediction files, moved aside
    _staging/…                                            temporary files (see semclip.io.staging)

One module per part: :mod:`~semclip.io.paths` (raw images, path ids),
:mod:`~semclip.io.klarf_join` (ids and positions from a KLARF), :mod:`~semclip.io.confirmed`,
:mod:`~semclip.io.quarantine`, :mod:`~semclip.io.partitions` (predictions),
:mod:`~semclip.io.fetch` (bytes of many URIs at once), :mod:`~semclip.io.staging` (atomic
replacement through ``_staging/``).

Functions take ``(fs, root)`` from :func:`open_bucket` (``root`` is a path inside ``fs``,
without protocol) and hand back full URIs (``s3://…``, ``file:///…``), which is what the
prediction rows store and what any fsspec reader opens. Listings start with
``fs.invalidate_cache()`` because s3fs caches them and a nightly run must see today's files.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any, NamedTuple

import fsspec
from fsspec import AbstractFileSystem

from semclip.outage import EndpointUnreachableError, is_connection_failure
from semclip.safe_paths import resolve_inside

__all__ = [
    "Bucket",
    "BucketNotFoundError",
    "file_suffix",
    "find_files",
    "is_local",
    "open_bucket",
    "resolve_in_bucket",
]


class BucketNotFoundError(FileNotFoundError):
    """The configured bucket (or local bucket folder) does not exist."""


class S3CredentialsError(PermissionError):
    """No AWS credentials were found for an ``s3://`` bucket: a configuration to fix, not a
    missing bucket (nothing to create) and not an outage (nothing to wait for)."""


class Bucket(NamedTuple):
    """An opened bucket: unpacks as ``fs, root = open_bucket(url)``."""

    fs: AbstractFileSystem
    root: str  # path inside fs, no protocol, no trailing slash


def open_bucket(url: str, *, endpoint_url: str | None = None, create: bool = False) -> Bucket:
    """Open ``url`` (``file://…``, ``s3://bucket[/prefix]`` or a local path) with fsspec.

    Raises :class:`~semclip.outage.EndpointUnreachableError` naming the endpoint when S3
    cannot be reached (an outage: retried), and :class:`BucketNotFoundError` naming the
    bucket when the store answers that it does not exist, unless
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
    if _container_exists(fs, container, is_s3, endpoint_url):
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


def _container_exists(
    fs: AbstractFileSystem, container: str, is_s3: bool, endpoint_url: str | None
) -> bool:
    """Whether the bucket (local folder) exists; :class:`EndpointUnreachableError` when S3
    cannot be asked.

    s3fs's ``exists`` swallows every error of its bucket probes and answers False, so an
    endpoint that refuses connections read as "bucket does not exist" and was not retried.
    ``head_bucket`` tells the cases apart: an answer (found / 404) or no connection.
    """
    if not is_s3:
        return bool(fs.exists(container))
    try:
        fs.call_s3("head_bucket", Bucket=container)
        return True
    except FileNotFoundError:
        return False
    except Exception as exc:  # noqa: BLE001 - classified below, re-raised unless an answer
        if type(exc).__name__ == "NoCredentialsError":  # botocore's; s3fs would answer False
            raise S3CredentialsError(
                f"no AWS credentials found for bucket 's3://{container}' (set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run where an "
                "instance or pod role provides them)"
            ) from exc
        if is_connection_failure(exc):
            where = endpoint_url or "the default AWS S3 endpoint"
            raise EndpointUnreachableError("S3", where, exc) from exc
    # Any other answer (403 on HEAD for a bucket we may list, …): s3fs's own probes decide.
    return bool(fs.exists(container))


def find_files(fs: AbstractFileSystem, folder: str) -> list[str]:
    """Sorted file paths below ``folder`` (fresh listing; missing folder → empty)."""
    fs.invalidate_cache()
    try:
        paths = fs.find(folder)
    except FileNotFoundError:
        return []
    inside = folder.rstrip("/") + "/"
    return sorted(p for p in paths if p.startswith(inside))


def file_suffix(path: str) -> str:
    """Lower-case suffix of a path (``.tif``), what file types are told apart by."""
    return PurePosixPath(path).suffix.lower()


def is_local(fs: AbstractFileSystem) -> bool:
    """Whether ``fs`` is the local disk, where a path can be a symlink to anywhere."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return "file" in protocols or "local" in protocols


def resolve_in_bucket(fs: AbstractFileSystem, root: str, value: str) -> str:
    """The path inside ``fs`` that ``value`` (a key relative to the bucket root, or a full
    URI of this bucket) names, refused when it leaves the bucket.

    The check is :func:`semclip.safe_paths.resolve_inside`, shared with the data-set manifest
    reader; on a local bucket symlinks are resolved too, so a link out is not followed.

    Raises:
        semclip.safe_paths.OutsideRootError: naming the value and how it leaves the bucket.
    """
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return resolve_inside(root, value, protocols=protocols, local=is_local(fs))
