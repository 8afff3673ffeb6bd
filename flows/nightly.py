"""nightly-inference(run_date): predict one date's SEM dump into its Parquet partition.

Recipe: validate → resolve the model → list raw/<date>/ → read ids and KLARF positions →
predict shard by shard (one GPU job at a time, through the strict "semclip-gpu" limit) → rewrite
predictions/date=<date>/ as the union of the rows kept and the new ones → report counts. The
per-date lock "semclip-date-<date>" is held from reading the done hashes to the write, so two
runs of one date (nightly and backfill) end with the union of their rows.

Shards run in the flow's process, or on Dask workers (:mod:`flows.shards`,
``SEMCLIP_TASK_RUNNER``): a run holds one "semclip-gpu" slot for its whole cluster (the limit
counts pipeline runs, not GPUs), and only the flow's process writes the partition, so the
per-date lock and the atomic partition swap hold however many workers predict.
Re-runs and backfills of a date are idempotent: images already predicted by the same model
version (same bytes) are kept, not recomputed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from flows.params import NightlyParams
from flows.report import after_nightly
from flows.shards import run_shards, shard_plan
from semclip.registry.client import Registry
from semclip.registry.refs import ModelRef
from semclip.settings import get_settings
from tasks.common import GPU_LIMIT, BucketRef, current_flow_run_id, date_limit, hold_slot
from tasks.drift import DriftOutcome, drift_or_error
from tasks.inference import (
    ShardResult,
    WriteResult,
    describe_images,
    discard_staged,
    list_images,
    predict_shard,
    read_done_hashes,
    resolve_model,
    write_predictions,
)

__all__ = ["NightlyReport", "nightly_inference"]

RANDOM_BACKBONE_BANNER = (
    "RANDOM-WEIGHT BACKBONE: the classes and scores of this run are a plumbing check, "
    "not quality figures"
)


class NightlyReport(BaseModel):
    """What a nightly run did, in counts: the flow's return value and its run artifact."""

    run_date: dt.date
    model_name: str
    model_version: str
    random_backbone: bool
    images: int  # found under raw/<date>/
    predicted: int  # new rows written
    kept: int  # already predicted by this model version: kept, not recomputed
    quarantined: int  # unreadable (or duplicate) inputs, see quarantine/date=<date>/
    rows_total: int  # rows in the partition after the write
    partition_uri: str | None
    klarf_errors: list[str] = []
    shard_runner: str = "sequential (in the flow's process)"  # ShardPlan.describe()
    workers: list[str] = []  # who ran the shards: Dask worker addresses (or host) and pids
    predict_s: float = 0.0  # wall time of the shards (a cluster's start-up left out)
    drift: DriftOutcome | None = None  # the drift summary's score, flag (or why it is missing)

    def markdown(self) -> str:
        """The run summary shown in the Prefect UI."""
        lines = [
            f"# nightly-inference {self.run_date}",
            "",
            f"model **{self.model_name} v{self.model_version}**",
            "",
            "| images | predicted | kept | quarantined | rows in partition |",
            "|---|---|---|---|---|",
            f"| {self.images} | {self.predicted} | {self.kept} | {self.quarantined} "
            f"| {self.rows_total} |",
            "",
            f"partition: `{self.partition_uri}`",
            "",
            f"shards: {self.shard_runner}; {len(self.workers)} worker(s) ran them in "
            f"{self.predict_s:.1f} s",
        ]
        if self.random_backbone:
            lines[:0] = [f"> **{RANDOM_BACKBONE_BANNER}**", ""]
        lines += [f"- KLARF skipped: {e}" for e in self.klarf_errors]
        if self.drift is not None:
            lines += ["", self.drift.line]
            if self.drift.flagged:
                lines[:0] = [f"> **DRIFT FLAGGED**: {self.drift.line}", ""]
        return "\n".join(lines)


@flow(name="nightly-inference")
def nightly_inference(
    run_date: str | None = None, model_version: str | int | None = None
) -> NightlyReport:
    """Predict raw/<run_date>/ (default: yesterday in SEMCLIP_TIMEZONE) with the champion,
    or with ``model_version`` (a version number or alias) when given.

    ``model_version`` also takes an int: ``--param model_version=3`` arrives parsed as JSON.
    """
    settings = get_settings()
    params = NightlyParams.build(run_date, model_version, settings.timezone)
    logger = get_run_logger()
    bucket = BucketRef.from_settings(settings)
    registry = Registry.from_settings(settings)

    model = resolve_model(registry, params.model_version)
    if model.random_backbone:
        logger.warning("%s %s", model.uri, RANDOM_BACKBONE_BANNER)
    uris = list_images(bucket, params.run_date)
    if not uris:
        logger.warning("no images under raw/%s/ in %s: nothing to do", params.run_date, bucket.url)
        return _report(params.run_date, model, 0, [], None, [])
    described = describe_images(bucket, params.run_date, uris, settings.path_regex)
    run_id = current_flow_run_id()
    slots = {
        "lease_s": settings.slot_lease_s,
        "timeout_s": settings.slot_timeout_s,
        "flow_run_id": run_id,
    }
    plan = shard_plan(settings)
    logger.info("shards: %s", plan.describe())
    shards: list[ShardResult] = []
    # One writer per date, from reading what is done to writing the union: another run of
    # this date (a backfill) waits here, then reads this run's rows. Taken before the GPU
    # slot, as every flow does, so the two locks cannot deadlock.
    try:
        with hold_slot(date_limit(params.run_date), create=True, **slots):
            done = read_done_hashes(bucket, params.run_date, model.version)
            calls = [
                {
                    "bucket": bucket,
                    "registry": registry,
                    "model": model,
                    "run_date": params.run_date,
                    "index": index,
                    "uris": shard,
                    "fields": {uri: described.fields[uri] for uri in shard},
                    "done_hashes": done,
                    "flow_run_id": run_id,
                    "tiff_page": settings.tiff_page,
                    "pixel_size_nm": settings.pixel_size_nm,
                    "max_image_pixels": settings.max_image_pixels,
                }
                for index, shard in enumerate(_batches(uris, settings.batch_size))
            ]
            with hold_slot(GPU_LIMIT, **slots):  # one slot for the run, whatever its workers
                outcome = run_shards(plan, predict_shard, calls)
            shards = outcome.results
            outcome.raise_first_error()
            # only what successful shards returned: a dead attempt's file is never merged
            staged = [s.staged_uri for s in shards if s.staged_uri]
            written = write_predictions(bucket, params.run_date, staged, run_id)
    except Exception:
        discard_staged(bucket, [s.staged_uri for s in shards if s.staged_uri])
        raise
    report = _report(params.run_date, model, len(uris), shards, written, described.klarf_errors)
    report = report.model_copy(
        update={
            "shard_runner": plan.describe(),
            "workers": sorted({s.worker for s in shards}),
            "predict_s": round(outcome.seconds, 3),
        }
    )
    report.drift = drift_or_error(
        bucket, params.run_date, model, settings.drift_window, settings.drift_threshold
    )
    logger.info(
        "%s: %d images, %d predicted, %d kept, %d quarantined, %d rows in %s",
        report.run_date,
        report.images,
        report.predicted,
        report.kept,
        report.quarantined,
        report.rows_total,
        report.partition_uri,
    )
    create_markdown_artifact(report.markdown(), key="nightly-inference-report")
    after_nightly(params.run_date, settings)  # yield report, KLARF write-back: by settings
    return report


def _batches(uris: list[str], size: int) -> list[list[str]]:
    """The shards: consecutive runs of ``size`` URIs (the inference batch size)."""
    return [uris[start : start + size] for start in range(0, len(uris), size)]


def _report(
    run_date: dt.date,
    model: ModelRef,
    images: int,
    shards: Sequence[ShardResult],
    written: WriteResult | None,
    klarf_errors: list[str],
) -> NightlyReport:
    partition = written.partition if written else None
    duplicates = written.n_duplicates if written else 0
    return NightlyReport(
        run_date=run_date,
        model_name=model.name,
        model_version=model.version,
        random_backbone=model.random_backbone,
        images=images,
        predicted=sum(s.n_predicted for s in shards) - duplicates,
        kept=sum(s.n_kept for s in shards),
        quarantined=sum(s.n_quarantined for s in shards) + duplicates,
        rows_total=partition.rows_total if partition else 0,
        partition_uri=partition.uri if partition else None,
        klarf_errors=list(klarf_errors),
    )
