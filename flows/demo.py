"""demo-pipeline: the whole loop on local defaults, with nothing to configure.

Seed a local bucket under $SEMCLIP_HOME with synthetic SEM dumps for a few dates and a set
of confirmed shots → refit (registers version 1 and makes it champion; a second demo run
registers version 2 and the gate decides) → nightly inference for each date → a summary read
back from the Parquet partitions. Everything runs as real Prefect flows (an ephemeral local
server when no PREFECT_API_URL is set) and a real MLflow registry on SQLite.

The backbone is the tiny random-weight config unless SEMCLIP_BACKBONE names another (or
`make backbone` has built the offline SEM backbone): a random backbone's numbers are a
plumbing check, and the summary says so loudly.

Run it with ``python -m flows`` (sets PREFECT_HOME under $SEMCLIP_HOME first), or call
:func:`demo_pipeline` from code that has set up Prefect.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from prefect import flow, get_run_logger
from pydantic import BaseModel

from flows.nightly import NightlyReport, nightly_inference
from flows.params import today_in
from flows.refit import RefitReport, refit
from flows.setup import ensure_gpu_limit
from semclip.backbone import offline_or_tiny_backbone
from semclip.registry.client import Registry
from semclip.settings import get_settings
from tasks.common import BucketRef
from tasks.demo import PredictionSummary, seed_demo_bucket, summarize_predictions

__all__ = ["DemoSummary", "demo_pipeline", "format_summary"]

# A quick fit: the demo shows the loop, it is not a benchmark.
DEMO_FIT = {"augment": False}


class DemoSummary(BaseModel):
    """Everything the demo prints."""

    bucket: str
    tracking_uri: str
    dates: list[dt.date]
    refit: RefitReport
    nightly: list[NightlyReport]
    predictions: dict[str, Any]  # PredictionSummary as a dict


@flow(name="demo-pipeline")
def demo_pipeline(
    n_dates: int = 2,
    images_per_date: int = 14,
    confirmed_per_class: int = 6,
    image_size: int = 128,
    seed: int = 0,
) -> DemoSummary:
    """Seed → refit → nightly for ``n_dates`` dates ending yesterday → summary.

    ``confirmed_per_class`` shots per class land on the train side; seeding adds shots
    until each class also has SEMCLIP_GATE_MIN_HOLDOUT_PER_CLASS on the hold-out side (at
    SEMCLIP_HOLDOUT_FRACTION), so a second demo run's version is judged by the gate.
    """
    settings = get_settings()
    logger = get_run_logger()
    bucket = BucketRef.from_settings(settings)
    bucket.open(create=True)
    ensure_gpu_limit()
    yesterday = today_in(settings.timezone) - dt.timedelta(days=1)
    dates = [yesterday - dt.timedelta(days=n_dates - 1 - i) for i in range(n_dates)]
    seeded = seed_demo_bucket(
        bucket,
        dates,
        images_per_date,
        confirmed_per_class,
        image_size,
        seed,
        holdout_fraction=settings.holdout_fraction,
        min_holdout_per_class=settings.gate_min_holdout_per_class,
    )
    backbone = settings.backbone or offline_or_tiny_backbone(settings.home)
    refit_report = refit(
        backbone=backbone,
        pretrained=settings.pretrained,
        databar_bottom=seeded.databar_bottom,
        fit={**DEMO_FIT, "seed": seed},
    )
    nightly = [nightly_inference(run_date=d.isoformat()) for d in dates]
    registry = Registry.from_settings(settings)
    summary: PredictionSummary = summarize_predictions(bucket, dates, registry)
    logger.info("demo done: %d prediction rows for %s", summary.rows, dates)
    return DemoSummary(
        bucket=bucket.url,
        tracking_uri=settings.mlflow_tracking_uri or "",
        dates=dates,
        refit=refit_report,
        nightly=nightly,
        predictions=dataclasses.asdict(summary),
    )


def format_summary(summary: DemoSummary) -> str:
    """The demo's printed report: refit, nightly counts, class and lot/wafer tables, where to
    look next. A random backbone is flagged above and below the numbers."""
    r = summary.refit
    p = summary.predictions
    random = r.random_backbone or any(n.random_backbone for n in summary.nightly)
    banner = _banner() if random else []
    lines = [*banner, f"backbone: {r.backbone}", ""]
    lines.append(
        f"refit: registered version {r.version} "
        f"({'PROMOTED to champion' if r.promoted else 'held as challenger'}): {r.reason}"
    )
    lines.append(
        f"  confirmed {r.n_confirmed}, support {r.n_support}, hold-out {r.n_holdout}; "
        f"candidate macro F1 {_num(r.candidate_metrics.get('f1'))}, "
        f"pixel F1-max {_num(r.candidate_metrics.get('pixel_f1_max'))}"
        + (
            f"; champion macro F1 {_num(r.champion_metrics.get('f1'))}"
            if r.champion_metrics
            else ""
        )
    )
    lines.append("")
    for n in summary.nightly:
        lines.append(
            f"nightly {n.run_date}: model v{n.model_version}, {n.images} images, "
            f"{n.predicted} predicted, {n.kept} kept from earlier runs, "
            f"{n.quarantined} quarantined, {n.rows_total} rows"
        )
    older = p.get("history_rows", p["rows"]) - p["rows"]
    lines += [
        "",
        f"predicted classes ({p['rows']} images, one current row each; "
        f"{p['needs_review']} need review):",
    ]
    if older:
        lines.append(f"  ({older} older rows of other versions or bytes kept as history)")
    lines += [f"  {label:<16} {count:>5}" for label, count in sorted(p["by_class"].items())]
    lines.append("by lot/wafer:")
    for key, counts in sorted(p["by_lot_wafer"].items()):
        text = ", ".join(f"{c} {label}" for label, c in sorted(counts.items()))
        lines.append(f"  {key:<16} {text}")
    lines += [
        f"quarantined inputs: {p['quarantined']} (a deliberately truncated file in the dump)",
        "",
        f"Parquet:  {p['parquet_uri']}/date=YYYY-MM-DD/*.parquet",
        f"Reports:  {p['parquet_uri'].rsplit('/', 1)[0]}/reports/date=YYYY-MM-DD/report.md "
        "(semclip report --dates A..B for a range)",
        f"MLflow:   mlflow ui --backend-store-uri {summary.tracking_uri}",
        "Prefect:  prefect server start   (same PREFECT_HOME), then open the flow runs",
        *banner,
    ]
    return "\n".join(lines)


def _banner() -> list[str]:
    return [
        "!" * 78,
        "!! RANDOM-WEIGHT BACKBONE: classes and scores below are a plumbing check,    !!",
        "!! not quality. Set SEMCLIP_BACKBONE / SEMCLIP_PRETRAINED for real weights.   !!",
        "!" * 78,
    ]


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
