"""What every task module shares: the bucket reference, I/O retry policy, run ids, the GPU limit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect import Task
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from semclip.io.bucket import Bucket, open_bucket
from semclip.outage import is_connection_failure
from semclip.settings import SemclipSettings

__all__ = ["GPU_LIMIT", "IO_RETRIES", "BucketRef", "current_flow_run_id", "retry_on_transient"]

GPU_LIMIT = "semclip-gpu"  # Prefect global concurrency limit; created at set-up (flows/setup.py)

# Errors that say "this will not get better by waiting": no retry for them.
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


@dataclass(frozen=True)
class BucketRef:
    """How to open the object store: what tasks pass instead of a filesystem object."""

    url: str  # file://…, s3://bucket[/prefix]
    endpoint_url: str | None = None  # MinIO/Ceph/moto

    @classmethod
    def from_settings(cls, settings: SemclipSettings) -> BucketRef:
        assert settings.bucket is not None  # filled in by the settings validator
        return cls(settings.bucket, settings.s3_endpoint_url)

    def open(self, *, create: bool = False) -> Bucket:
        """``(fs, root)``; raises BucketNotFoundError naming the bucket if it does not exist."""
        return open_bucket(self.url, endpoint_url=self.endpoint_url, create=create)


def retry_on_transient(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry network and storage hiccups (OSError, timeouts, an endpoint refusing connections
    whatever library reports it), never a missing bucket, file or model, bad data or a bug:
    those fail the same way again, only later."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception as caught:  # noqa: BLE001 - reading the failure itself failed
            exc = caught
    if exc is None:
        return False
    if isinstance(exc, OSError) and not isinstance(exc, _PERMANENT):
        return True
    return is_connection_failure(exc)


IO_RETRIES: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": [5, 30],
    "retry_condition_fn": retry_on_transient,
}


def current_flow_run_id() -> str | None:
    """Id of the flow run we are in (for lineage columns), ``None`` outside a run."""
    from prefect.runtime import flow_run

    run_id = flow_run.id
    return str(run_id) if run_id else None
