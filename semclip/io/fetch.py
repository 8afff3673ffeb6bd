"""Bytes of many URIs at once: what the nightly shards and the refit read images with."""

from __future__ import annotations

from collections.abc import Sequence

from fsspec import AbstractFileSystem

__all__ = ["fetch_bytes"]


def fetch_bytes(fs: AbstractFileSystem, uris: Sequence[str]) -> dict[str, bytes | Exception]:
    """File bytes per URI, fetched together (s3fs does it concurrently); errors as values."""
    if not uris:
        return {}
    paths = [fs._strip_protocol(u) for u in uris]
    fetched = fs.cat(paths, on_error="return")
    out: dict[str, bytes | Exception] = {}
    for uri, path in zip(uris, paths, strict=True):
        value = fetched.get(path, FileNotFoundError(path)) if isinstance(fetched, dict) else fetched
        out[uri] = value if isinstance(value, bytes | Exception) else bytes(value)
    return out
