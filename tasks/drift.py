"""Task of the nightly's last step: the drift summary, and the Prefect event when it drifts.

The library (:mod:`semclip.drift.summary`) summarises and scores the night; this task adds
what only the orchestration layer knows: the run's model as the current-row rule's champion,
and a Prefect event ``semclip.drift.flagged`` (resource ``semclip.drift.<date>``) that the
automation in ``deployments/automations/drift-flagged.yaml`` reacts to. It never fails the
nightly: the partition is written by then, and a drift summary that cannot be made is logged
and reported, not a reason to re-run the night.
"""

from __future__ import annotations

import datetime as dt
import logging

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from pydantic import BaseModel

from semclip.drift.summary import describe, record_drift, summary_path
from semclip.registry.refs import ModelRef
from tasks.common import BucketRef

__all__ = ["DRIFT_EVENT", "DriftOutcome", "summarize_drift"]

log = logging.getLogger(__name__)

DRIFT_EVENT = "semclip.drift.flagged"


class DriftOutcome(BaseModel):
    """What the drift step found, for the run report."""

    summary_uri: str | None = None
    score: float | None = None
    threshold: float | None = None
    flagged: bool = False
    line: str = ""  # one line for the report
    error: str | None = None


@task(name="summarize_drift", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def summarize_drift(
    bucket: BucketRef, run_date: dt.date, model: ModelRef, window: int, threshold: float
) -> DriftOutcome:
    """Write drift/date=<run_date>/summary.parquet, score it, emit the event when flagged."""
    fs, root = bucket.open()
    summary = record_drift(
        fs, root, run_date, window=window, threshold=threshold, champion=(model.name, model.version)
    )
    outcome = DriftOutcome(
        summary_uri=fs.unstrip_protocol(summary_path(root, run_date)),
        score=summary.drift.score,
        threshold=threshold,
        flagged=summary.flagged,
        line=describe(summary),
    )
    if summary.flagged:
        emit_event(
            event=DRIFT_EVENT,
            resource={
                "prefect.resource.id": f"semclip.drift.{run_date.isoformat()}",
                "prefect.resource.name": f"drift {run_date.isoformat()}",
                "semclip.bucket": bucket.url,
            },
            payload={
                "date": run_date.isoformat(),
                "score": summary.drift.score,
                "threshold": threshold,
                "class": summary.drift.class_js,
                "score_quantiles": summary.drift.score_shift,
                "embedding": summary.drift.embedding_distance,
                "reference_dates": [d.isoformat() for d in summary.drift.reference_dates],
                "summary_uri": outcome.summary_uri,
                "model": f"{model.name} v{model.version}",
            },
        )
    return outcome


def drift_or_error(
    bucket: BucketRef, run_date: dt.date, model: ModelRef, window: int, threshold: float
) -> DriftOutcome:
    """:func:`summarize_drift`, or an outcome naming why it could not be made (logged)."""
    state = summarize_drift(bucket, run_date, model, window, threshold, return_state=True)
    if state.is_completed():
        return state.result()
    message = f"drift summary not written: {state.message}"
    log.error("%s %s", run_date, message)
    return DriftOutcome(threshold=threshold, line=message, error=str(state.message))
