"""Fixtures for object-store tests: the same test runs on a local folder and on real S3.

S3 is moto's server on 127.0.0.1 (an actual HTTP endpoint, so s3fs, botocore and the
listing cache behave as against MinIO), started once per session with dummy credentials.
Load with ``pytest_plugins = ["conftest_storage"]`` at the top of a test module (pytest puts
tests/ on sys.path for its modules, so this works with `pytest` and `python -m pytest`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import fsspec
import pytest
from fsspec import AbstractFileSystem

from semclip.io.bucket import open_bucket

_DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/semclip-test-aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/semclip-test-aws-credentials",
}
_UNSET_AWS_ENV = ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


@dataclass(frozen=True)
class BucketCase:
    """One opened test bucket and what is needed to open it again."""

    kind: str  # "file" or "s3"
    url: str  # what SEMCLIP_BUCKET would say
    endpoint_url: str | None  # the moto endpoint for s3, else None
    fs: AbstractFileSystem
    root: str  # path inside fs

    def other_client(self) -> AbstractFileSystem:
        """A second, independent client, as another process dropping files would be."""
        if self.kind == "s3":
            return fsspec.filesystem("s3", endpoint_url=self.endpoint_url, skip_instance_cache=True)
        return fsspec.filesystem("file", auto_mkdir=True)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """URL of a moto S3 server shared by the session (buckets are unique per test)."""
    from moto.server import ThreadedMotoServer

    patch = pytest.MonkeyPatch()
    for name, value in _DUMMY_AWS_ENV.items():
        patch.setenv(name, value)
    for name in _UNSET_AWS_ENV:
        patch.delenv(name, raising=False)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        patch.undo()


def _new_bucket_url(kind: str, tmp_path: Path) -> str:
    if kind == "s3":
        return f"s3://semclip-test-{uuid.uuid4().hex[:12]}"
    return f"file://{tmp_path / 'bucket'}"


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.slow)])  # s3: moto
def bucket(request: pytest.FixtureRequest, tmp_path: Path) -> BucketCase:
    """An empty, existing bucket on each backend."""
    endpoint = request.getfixturevalue("s3_endpoint") if request.param == "s3" else None
    url = _new_bucket_url(request.param, tmp_path)
    fs, root = open_bucket(url, endpoint_url=endpoint, create=True)
    return BucketCase(request.param, url, endpoint, fs, root)


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.slow)])  # s3: moto
def missing_bucket(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str | None]:
    """``(url, endpoint_url)`` of a bucket that does not exist, on each backend."""
    endpoint = request.getfixturevalue("s3_endpoint") if request.param == "s3" else None
    return _new_bucket_url(request.param, tmp_path), endpoint
