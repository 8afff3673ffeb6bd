"""The one inside-the-root check shared by the manifest reader and the confirmed/ reader."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from semclip.safe_paths import OutsideRootError, resolve_inside

S3 = ("s3", "s3a")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("raw/2026-11-01/a.png", "fab/prefix/raw/2026-11-01/a.png"),
        ("./raw//a.png", "fab/prefix/raw/a.png"),
        ("raw\\2026-11-01\\a.png", "fab/prefix/raw/2026-11-01/a.png"),  # written on Windows
        ("confirmed/../raw/a.png", "fab/prefix/raw/a.png"),  # .. that stays inside
        ("s3://fab/prefix/raw/a.png", "fab/prefix/raw/a.png"),  # a full URI of this bucket
        ("S3A://fab/prefix/raw/a.png", "fab/prefix/raw/a.png"),
    ],
)
def test_object_keys_inside_the_bucket(value: str, expected: str) -> None:
    assert resolve_inside("fab/prefix", value, protocols=S3) == expected


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("/etc/passwd", "absolute path"),
        ("C:\\data\\a.png", "absolute path"),
        ("file:///etc/passwd", "a 'file://' URI, outside"),
        ("https://example.com/a.png", "a 'https://' URI, outside"),
        ("confirmed/../../etc/passwd", "resolves to 'fab/etc/passwd', outside"),
        ("../prefix2/a.png", "outside"),
        ("s3://other-bucket/a.png", "resolves to 'other-bucket/a.png', outside"),
        ("s3://fab/prefix/../secret/a.png", "outside"),
        ("s3://fab/prefix2/a.png", "outside"),  # a sibling prefix is not inside
        (".", "outside"),  # the root itself is not a file in it
    ],
)
def test_object_keys_that_leave_the_bucket(value: str, words: str) -> None:
    with pytest.raises(OutsideRootError) as info:
        resolve_inside("fab/prefix", value, protocols=S3)
    assert words in info.value.reason and info.value.value == value


def test_local_paths_follow_links_and_refuse_those_out(tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    (root / "raw").mkdir(parents=True)
    (root / "raw" / "a.png").write_bytes(b"x")
    (tmp_path / "secret.png").write_bytes(b"x")
    os.symlink(tmp_path / "secret.png", root / "raw" / "out.png")
    os.symlink(root / "raw" / "a.png", root / "raw" / "in.png")
    os.symlink(tmp_path, root / "raw" / "outdir")
    protocols = ("file", "local")
    assert resolve_inside(str(root), "raw/a.png", local=True) == f"{root}/raw/a.png"
    assert resolve_inside(str(root), "raw/in.png", local=True) == f"{root}/raw/in.png"
    uri = f"file://{root}/raw/a.png"
    assert resolve_inside(str(root), uri, protocols=protocols, local=True) == f"{root}/raw/a.png"
    for value in ("raw/out.png", "raw/outdir/secret.png", f"file://{root}/raw/out.png"):
        with pytest.raises(OutsideRootError, match="is a link to .*secret.png.*not followed"):
            resolve_inside(str(root), value, protocols=protocols, local=True)
    with pytest.raises(OutsideRootError, match="outside"):
        resolve_inside(str(root), f"file://{tmp_path}/secret.png", protocols=protocols, local=True)
    with pytest.raises(OutsideRootError, match="absolute path"):
        resolve_inside(str(root), f"{root}/raw/a.png", protocols=protocols, local=True)
