"""backfill(start, end): one nightly-inference run per date, through the nightly deployment.

Every date is validated before anything is scheduled; each run gets the idempotency key
``semclip-backfill/<request id>/<date>`` (Prefect keeps keys for ever: the request id lets a
later backfill of the same date run again, while a retried backfill reuses its own runs).
The runs queue on the work pool and take the "semclip-gpu" limit one at a time.
"""

from __future__ import annotations

import datetime as dt
import uuid

from prefect import flow, get_run_logger
from pydantic import BaseModel

from flows.params import BackfillParams
from semclip.settings import get_settings
from tasks.backfill import read_deployment, schedule_nightly_run
from tasks.common import current_flow_run_id

__all__ = ["BackfillReport", "backfill"]


class BackfillReport(BaseModel):
    """The runs a backfill created (or found, for a retried request)."""

    request_id: str
    deployment: str
    dates: list[dt.date]
    flow_run_ids: list[str]


@flow(name="backfill")
def backfill(
    start: str,
    end: str,
    request_id: str | int | None = None,
    model_version: str | int | None = None,
    deployment: str = "nightly-inference/nightly",
) -> BackfillReport:
    """Schedule nightly-inference for every date from ``start`` to ``end`` (YYYY-MM-DD, both
    included). Pass the same ``request_id`` to resume a backfill without duplicate runs."""
    settings = get_settings()
    params = BackfillParams.build(
        start,
        end,
        str(request_id or current_flow_run_id() or uuid.uuid4().hex),
        None if model_version is None else str(model_version),
        deployment,
        settings.timezone,
    )
    logger = get_run_logger()
    read_deployment(params.deployment)
    runs = [
        schedule_nightly_run(
            params.deployment, date, params.idempotency_key(date), params.model_version
        )
        for date in params.dates()
    ]
    logger.info(
        "backfill %s: %d nightly runs of %s from %s to %s",
        params.request_id,
        len(runs),
        params.deployment,
        params.start,
        params.end,
    )
    return BackfillReport(
        request_id=params.request_id,
        deployment=params.deployment,
        dates=[r.run_date for r in runs],
        flow_run_ids=[r.flow_run_id for r in runs],
    )
