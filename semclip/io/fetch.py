"""Bytes of many URIs at once: what the nightly shards and the refit read images with."""

from __future__ import annotations

from collections.abc import Sequence

from fsspec import AbstractFileSystem

__all__ = ["fetch_bytes"]


_GLOB_CHARS = frozenset("*?[")  # fsspec's `cat` expands these as patterns


def fetch_bytes(fs: AbstractFileSystem, uris: Sequence[str]) -> dict[str, bytes | Exception]:
    """File bytes per URI, fetched together (s3fs does it concurrently); errors as values.

    A name with glob characters (``D[2].png``, ``x*.tif``: legal file names) is fetched on
    its own with ``cat_file``, which takes the path literally; `cat` would expand it as a
    pattern and report the file missing.
    """
    if not uris:
        return {}
    paths = [fs._strip_protocol(u) for u in uris]
    literal = {p for p in paths if _GLOB_CHARS & set(p)}
    plain = [p for p in paths if p not in literal]
    fetched = fs.cat(plain, on_error="return") if plain else {}
    if not isinstance(fetched, dict):  # one path: fsspec returns its bytes
        fetched = {plain[0]: fetched}
    for path in literal:
        try:
            fetched[path] = fs.cat_file(path)
        except Exception as exc:  # noqa: BLE001 - errors are values here, as for `cat`
            fetched[path] = exc
    out: dict[str, bytes | Exception] = {}
    for uri, path in zip(uris, paths, strict=True):
        value = fetched.get(path, FileNotFoundError(path))
        out[uri] = value if isinstance(value, bytes | Exception) else bytes(value)
    return out
