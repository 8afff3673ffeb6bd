"""`fetch_bytes` takes every name literally: a legal file name with glob characters is fetched,
never expanded as a pattern and reported missing (it was quarantined as "cannot fetch")."""

from __future__ import annotations

from conftest_storage import BucketCase

from semclip.io.fetch import fetch_bytes

pytest_plugins = ["conftest_storage"]


def test_names_with_glob_characters_are_fetched_literally(bucket: BucketCase) -> None:
    fs, root = bucket.fs, bucket.root
    names = {"plain.png": b"p", "D[2].png": b"bracket", "x*y.png": b"star", "q?.png": b"query"}
    for name, data in names.items():
        fs.pipe_file(f"{root}/raw/{name}", data)
    fs.pipe_file(f"{root}/raw/D2.png", b"what the pattern D[2] would match")
    uris = [fs.unstrip_protocol(f"{root}/raw/{name}") for name in names]
    missing = fs.unstrip_protocol(f"{root}/raw/gone[1].png")
    got = fetch_bytes(fs, [*uris, missing])
    assert [got[u] for u in uris] == list(names.values())
    assert isinstance(got[missing], FileNotFoundError)
    only = fetch_bytes(fs, [uris[1]])  # a single literal name, nothing else in the call
    assert only == {uris[1]: b"bracket"}
