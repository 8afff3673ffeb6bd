"""Tasks of the backfill: check the nightly deployment exists, schedule one run per date."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from tasks.common import IO_RETRIES

__all__ = ["ScheduledRun", "read_deployment", "schedule_nightly_run"]


@dataclass(frozen=True)
class ScheduledRun:
    """One nightly run the backfill asked for."""

    run_date: dt.date
    flow_run_id: str
    idempotency_key: str


@task(name="read_deployment", cache_policy=NO_CACHE, **IO_RETRIES)
def read_deployment(name: str) -> str:
    """The id of deployment ``flow/deployment``; a clear error when it was never deployed."""
    with get_client(sync_client=True) as client:
        try:
            return str(client.read_deployment_by_name(name).id)
        except ObjectNotFound:
            raise ValueError(
                f"deployment {name!r} not found on this Prefect server; run `prefect deploy "
                "--all` from the repository root (deployments/prefect.yaml) first"
            ) from None


@task(name="schedule_nightly_run", cache_policy=NO_CACHE, **IO_RETRIES)
def schedule_nightly_run(
    deployment: str, run_date: dt.date, idempotency_key: str, model_version: str | None
) -> ScheduledRun:
    """Create (not wait for) the nightly run of ``run_date``.

    Safe to retry: the idempotency key makes Prefect hand back the run it already created.
    """
    parameters: dict[str, str] = {"run_date": run_date.isoformat()}
    if model_version is not None:
        parameters["model_version"] = model_version
    flow_run = run_deployment(
        deployment,
        parameters=parameters,
        timeout=0,
        idempotency_key=idempotency_key,
        flow_run_name=f"backfill-{run_date.isoformat()}",
        tags=["backfill"],
    )
    return ScheduledRun(run_date, str(flow_run.id), idempotency_key)
