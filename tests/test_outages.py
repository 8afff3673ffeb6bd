"""Outages are not configuration errors (issue 10, item 7).

A real endpoint that refuses connections (a closed port on 127.0.0.1) stands for S3 or
MLflow being down. The task's library call must fail with an error naming the endpoint that
the I/O retry policy (:func:`tasks.common.retry_on_transient`, Prefect's
``retry_condition_fn`` of every I/O task) retries; a bucket or model that really does not
exist stays a permanent "does not exist" error that it does not retry.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import time

import pytest
from prefect.states import Failed

from semclip.io.bucket import BucketNotFoundError
from semclip.outage import EndpointUnreachableError, is_connection_failure
from semclip.registry.client import Registry
from semclip.registry.refs import ModelNotFoundError
from tasks.common import BucketRef, retry_on_transient

pytest_plugins = ["conftest_pipeline", "conftest_storage"]

RUN_DATE = dt.date(2026, 3, 1)


def _closed_port() -> int:
    """A port nothing listens on: connecting to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _retried(exc: BaseException) -> bool:
    """What the I/O tasks' Prefect retry condition decides for a task that raised ``exc``."""
    return retry_on_transient(None, None, Failed(data=exc))  # type: ignore[arg-type]


@pytest.fixture
def fast_failing_s3(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials, one attempt per S3 call (the outage is certain, waiting is not)."""
    import s3fs

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_CONFIG_FILE": "/nonexistent/semclip-test-aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/semclip-test-aws-credentials",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)


@pytest.mark.slow
def test_s3_endpoint_down_is_a_retried_outage_naming_the_endpoint(fast_failing_s3: None) -> None:
    """Before: "bucket 's3://…' does not exist", not retried."""
    from tasks.inference import list_images

    endpoint = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(EndpointUnreachableError, match=f"cannot reach S3 at {endpoint}") as err:
        list_images.fn(BucketRef("s3://semclip-down", endpoint), RUN_DATE)
    assert "does not exist" not in str(err.value) and isinstance(err.value, OSError)
    assert _retried(err.value)


@pytest.mark.slow
def test_missing_s3_bucket_stays_a_permanent_error(s3_endpoint: str) -> None:
    from tasks.inference import list_images

    with pytest.raises(BucketNotFoundError, match="does not exist") as err:
        list_images.fn(BucketRef("s3://semclip-never-created", s3_endpoint), RUN_DATE)
    assert not isinstance(err.value, EndpointUnreachableError)
    assert not _retried(err.value)


@pytest.mark.slow
def test_mlflow_down_is_a_retried_outage_not_no_registered_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: "no registered model 'semclip-sem' in http://…; run the refit flow first"."""
    from tasks.inference import resolve_model

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the outage is certain
    uri = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(EndpointUnreachableError, match=f"MLflow registry at {uri}") as err:
        resolve_model.fn(Registry(tracking_uri=uri), None)
    assert "no registered model" not in str(err.value)
    assert _retried(err.value)


@pytest.mark.slow
def test_missing_registered_model_stays_a_permanent_error(empty_registry: Registry) -> None:
    from tasks.inference import resolve_model

    with pytest.raises(ModelNotFoundError, match="no registered model") as err:
        resolve_model.fn(empty_registry, None)
    assert not _retried(err.value)


def _chained(outer: Exception, inner: BaseException) -> Exception:
    outer.__cause__ = inner
    return outer


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ConnectionRefusedError(111, "Connection refused"), True),
        # what MLflow's REST client raises: its own error, a requests error underneath
        (_chained(RuntimeError("API request failed"), ConnectionRefusedError()), True),
        (_chained(ValueError("no such model"), KeyError("x")), False),
        (FileNotFoundError("no bucket"), False),
    ],
)
def test_connection_failures_are_found_down_the_exception_chain(
    error: BaseException, transient: bool
) -> None:
    assert is_connection_failure(error) is transient
    assert _retried(error) is transient


def test_botocore_connection_error_is_retried_though_not_an_oserror() -> None:
    """botocore's EndpointConnectionError is no OSError: the old policy never retried it."""
    from botocore.exceptions import EndpointConnectionError

    error = EndpointConnectionError(endpoint_url="http://127.0.0.1:1/bucket")
    assert not isinstance(error, OSError) and _retried(error)


def test_error_rows_are_never_done_hashes(tmp_path: object) -> None:
    """An error row in the partition (e.g. non-finite probabilities) is history: the next
    run predicts that image again; a row with a class is done (issue 10, item 5)."""
    from semclip.io.bucket import open_bucket
    from semclip.io.partitions import write_partition
    from semclip.prediction import Prediction
    from tasks.inference import prediction_rows, read_done_hashes

    url = f"file://{tmp_path}/bucket"
    fs, root = open_bucket(url, create=True)
    ok = Prediction("raw/a.png", "a" * 64, "good", {"good": 1.0}, 0.0, False,
                    None, 4, 4, 0, 0, None, None, "m", "3")  # fmt: skip
    bad = Prediction.failed("raw/b.png", "model output is not finite", "m", "3", "b" * 64)
    ids = ("lot_id", "wafer_id", "defect_id", "die_x_index", "die_y_index", "x_rel_um", "y_rel_um")
    fields = {p.image_uri: dict.fromkeys(ids) for p in (ok, bad)}
    rows = prediction_rows([ok, bad], fields, None, dt.datetime.now(dt.UTC))
    write_partition(fs, root, RUN_DATE, rows)
    assert read_done_hashes.fn(BucketRef(url), RUN_DATE, "3") == {"a" * 64: "raw/a.png"}
    assert read_done_hashes.fn(BucketRef(url), RUN_DATE, "4") == {}


def test_mlflow_down_fails_in_seconds_with_mlflow_s_own_http_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With MLflow's defaults (7 retries, back-off doubling from 2 s) a dead server held a task
    some 13 minutes before any error; the registry client bounds them unless the user set
    their own, and the task's retries (IO_RETRIES) handle the outage."""
    from semclip.registry.client import HTTP_BOUNDS
    from tasks.inference import resolve_model

    for name in HTTP_BOUNDS:
        monkeypatch.setenv(name, "unset by the test")
        monkeypatch.delenv(name)  # absent now, and absent again after the test
    uri = f"http://127.0.0.1:{_closed_port()}"
    started = time.perf_counter()
    with pytest.raises(EndpointUnreachableError, match=f"MLflow registry at {uri}"):
        resolve_model.fn(Registry(tracking_uri=uri), None)
    assert time.perf_counter() - started < 60  # a hang guard, not a speed target
    assert {name: os.environ[name] for name in HTTP_BOUNDS} == HTTP_BOUNDS
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the user's value wins
    with pytest.raises(EndpointUnreachableError):
        resolve_model.fn(Registry(tracking_uri=uri), None)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"


def test_s3_without_credentials_says_so_not_that_the_bucket_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Before: "bucket 's3://…' does not exist (or these credentials cannot see it)", which sent
    an operator to create a bucket. Not retried either: waiting brings no credentials."""
    from semclip.cli import main
    from semclip.io.bucket import S3CredentialsError, open_bucket

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/semclip-test-aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/semclip-test-aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(S3CredentialsError, match="no AWS credentials found for bucket 's3://nope'"):
        open_bucket("s3://nope", endpoint_url=endpoint)
    try:
        open_bucket("s3://nope", endpoint_url=endpoint)
    except S3CredentialsError as exc:
        assert not _retried(exc)
    monkeypatch.setenv("SEMCLIP_BUCKET", "s3://nope")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    assert main(["report", "--date", "2026-11-01"]) == 2
    assert "error: no AWS credentials found" in capsys.readouterr().err


class _FailingMlflowServer:
    """A real HTTP endpoint that answers every MLflow REST call with one status: a registry
    that is up but failing (503 behind a load balancer) or refusing the credentials (403)."""

    def __init__(self, status: int, body: str) -> None:
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                payload = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = do_DELETE = _answer

            def log_message(self, *args: object) -> None:  # quiet test output
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> str:
        self.thread.start()
        return self.uri

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("status", "body"),
    [
        (503, "<html>Service Unavailable</html>"),  # a proxy's page, not MLflow JSON
        (500, '{"error_code": "INTERNAL_ERROR", "message": "database is locked"}'),
    ],
)
def test_mlflow_server_errors_are_an_outage_never_no_champion(
    monkeypatch: pytest.MonkeyPatch, status: int, body: str
) -> None:
    """Before: a failing server read as "no registered model", ``alias()`` returned None, and
    a refit promoted its challenger as ``first-champion`` without the gate."""
    from tasks.inference import resolve_model

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with _FailingMlflowServer(status, body) as uri:
        registry = Registry(tracking_uri=uri)
        with pytest.raises(EndpointUnreachableError, match=f"MLflow registry at {uri}") as err:
            resolve_model.fn(registry, None)
        assert "no registered model" not in str(err.value)
        assert _retried(err.value)
        with pytest.raises(EndpointUnreachableError):
            registry.alias("champion")  # never None: None means "no champion, promote"


@pytest.mark.slow
def test_mlflow_refusing_credentials_is_named_and_not_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from semclip.registry.refs import RegistryAccessError

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    body = '{"error_code": "PERMISSION_DENIED", "message": "token lacks READ on models"}'
    with (
        _FailingMlflowServer(403, body) as uri,
        pytest.raises(RegistryAccessError, match="registry at http://127.0.0.1:.* refused") as err,
    ):
        Registry(tracking_uri=uri).resolve(None)
    assert "MLFLOW_TRACKING_TOKEN" in str(err.value)
    assert not isinstance(err.value, ModelNotFoundError) and not _retried(err.value)
