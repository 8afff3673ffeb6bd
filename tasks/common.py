"""What every task module shares: the bucket reference, I/O retry policy, run ids, the limits.

Concurrency slots (the GPU, the per-date lock) are taken with :func:`hold_slot`: a short lease
that Prefect renews while the slot is held (a thread renews it every 3/4 of
``SEMCLIP_SLOT_LEASE_S``), so a killed run's slot is freed by the server soon after it died,
and a bounded wait (``SEMCLIP_SLOT_TIMEOUT_S``) that fails the run with a message naming the
limit and how to free it, instead of waiting in silence.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from prefect import Task
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.objects import ConcurrencyLeaseHolder, TaskRun
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.states import State

from semclip.io.bucket import Bucket, open_bucket
from semclip.outage import is_transient
from semclip.settings import SemclipSettings

__all__ = [
    "GPU_LIMIT",
    "IO_RETRIES",
    "BucketRef",
    "SlotTimeoutError",
    "current_flow_run_id",
    "date_limit",
    "ensure_limit",
    "hold_slot",
    "is_transient",
    "retry_on_transient",
    "run_logger",
]

log = logging.getLogger(__name__)

GPU_LIMIT = "semclip-gpu"  # Prefect global concurrency limit; created at set-up (flows/setup.py)
DATE_LIMIT_PREFIX = "semclip-date-"  # one limit of 1 per date: one writer per partition


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
    return exc is not None and is_transient(exc)


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


def date_limit(run_date: dt.date) -> str:
    """The per-date lock's limit name, ``semclip-date-YYYY-MM-DD``."""
    return f"{DATE_LIMIT_PREFIX}{run_date.isoformat()}"


def ensure_limit(name: str, limit: int = 1) -> bool:
    """Create the global concurrency limit ``name`` if it is missing; True when created.

    Two runs racing to create it is fine (the loser finds it). An existing limit is left as
    it is, so an operator's change (say, disabling it) stands.
    """
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return False
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=limit)
            )
        except ObjectAlreadyExists:
            return False
    log.info("created global concurrency limit %r (limit %d)", name, limit)
    return True


class SlotTimeoutError(TimeoutError):
    """No slot of a concurrency limit within ``SEMCLIP_SLOT_TIMEOUT_S``; says how to free it."""


def slot_timeout_message(name: str, timeout_s: float, lease_s: float) -> str:
    """What the operator reads when a run gave up waiting for ``name``."""
    return (
        f"no slot of Prefect global concurrency limit {name!r} within {timeout_s:g} s "
        f"(SEMCLIP_SLOT_TIMEOUT_S): another run holds it, or a killed run left it held. "
        f"See who holds it with `prefect gcl inspect {name}` and the runs in the UI; if none "
        f"of them is still running, free it with `prefect gcl update {name} --active-slots 0` "
        f"and run again. A long-lived `prefect server start` frees a dead run's slot by itself "
        f"about {lease_s:g} s (SEMCLIP_SLOT_LEASE_S) after it died; a temporary server never does."
    )


@contextmanager
def hold_slot(
    name: str,
    *,
    lease_s: float,
    timeout_s: float,
    create: bool = False,
    flow_run_id: str | None = None,
) -> Iterator[None]:
    """Hold one slot of the strict global concurrency limit ``name`` for the ``with`` body.

    Logs what it waits for before waiting. The lease is ``lease_s`` and Prefect renews it
    while the body runs (a renewal failure stops the run: the slot is no longer ours).
    ``create`` makes the limit (limit 1) if missing, as the per-date locks need; otherwise a
    missing limit is an error (``strict``), never a silent "no limit". Raises
    :class:`SlotTimeoutError` naming the limit and the reset commands after ``timeout_s``;
    an error inside the body is never turned into one.
    """
    logger = run_logger()
    if create:
        ensure_limit(name)
    logger.info(
        "waiting for a slot of concurrency limit %r (at most %g s, SEMCLIP_SLOT_TIMEOUT_S; "
        "lease %g s, renewed while held)",
        name,
        timeout_s,
        lease_s,
    )
    holder = ConcurrencyLeaseHolder(type="flow_run", id=UUID(flow_run_id)) if flow_run_id else None
    started = time.monotonic()
    with ExitStack() as stack:
        try:
            stack.enter_context(
                concurrency(
                    name,
                    occupy=1,
                    strict=True,
                    lease_duration=lease_s,
                    timeout_seconds=timeout_s,
                    holder=holder,
                )
            )
        except TimeoutError as exc:
            raise SlotTimeoutError(slot_timeout_message(name, timeout_s, lease_s)) from exc
        logger.info("holding %r (waited %.1f s)", name, time.monotonic() - started)
        yield


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The flow run's logger (its lines reach the Prefect UI), else this module's."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return log
