"""Tasks of the local demo: seed a bucket with a synthetic fab dump, summarise the Parquet.

The dump looks like a review tool's: ``raw/<date>/<lot>/<wafer>/D<nnnn>.png`` with a KLARF per
wafer folder (die index and position of each defect), one deliberately truncated image (so
the quarantine shows up), and engineer-confirmed shots under ``confirmed/`` with masks.
Every image is drawn by :mod:`semclip.synth` from (seed, label, index), so reseeding writes
the same bytes and a re-run of the demo is a re-run of the same night.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from prefect import task
from prefect.cache_policies import NO_CACHE

from semclip.io.quarantine import read_quarantine
from semclip.io.query import summarize_dates
from semclip.refit.split import is_holdout
from semclip.registry.client import Registry
from semclip.registry.refs import CHAMPION
from semclip.synth import LABELS, render_sample, sample_rng
from semclip.synth.databar import databar_rows
from tasks.common import IO_RETRIES, BucketRef

__all__ = ["DemoSeed", "PredictionSummary", "seed_demo_bucket", "summarize_predictions"]

LOTS = ("LOT-A17", "LOT-B03")
WAFERS = ("W01", "W02")
TRUNCATED_NAME = "D9999.png"  # the one broken file of the first date
DATABAR_FRAC = 0.08  # render_sample's default databar height
_CONFIRMED_SEED_OFFSET = 1000  # confirmed shots are other images than the nightly dumps
_MAX_CONFIRMED_DRAWS = 5000  # per class: a hold-out fraction this small is a mistake


@dataclass(frozen=True)
class DemoSeed:
    """What the seeding wrote."""

    dates: list[dt.date]
    raw_images: int
    confirmed_shots: int
    databar_bottom: int  # rows of databar the synthetic images carry at the bottom


@dataclass(frozen=True)
class PredictionSummary:
    """Counts of the current rows (one per image and date) of the given dates' Parquet."""

    rows: int
    by_class: dict[str, int]
    by_lot_wafer: dict[str, dict[str, int]]  # "lot/wafer" -> class -> count
    needs_review: int
    model_versions: list[str]
    quarantined: int  # distinct inputs in quarantine for these dates
    parquet_uri: str
    history_rows: int = 0  # all rows, older versions' included (kept as history)
    champion: str | None = None  # the version whose rows are current where it has one
    extra: dict[str, Any] = field(default_factory=dict)


@task(name="seed_demo_bucket", cache_policy=NO_CACHE, **IO_RETRIES)
def seed_demo_bucket(
    bucket: BucketRef,
    dates: list[dt.date],
    images_per_date: int,
    confirmed_per_class: int,
    size: int,
    seed: int,
    holdout_fraction: float = 0.2,
    min_holdout_per_class: int = 0,
) -> DemoSeed:
    """Write the synthetic dumps and confirmed shots (idempotent: same bytes each time).

    Confirmed shots are drawn per class until ``confirmed_per_class`` fall on the train
    side and ``min_holdout_per_class`` on the hold-out side of the content-hash split at
    ``holdout_fraction`` (SEMCLIP_HOLDOUT_FRACTION, SEMCLIP_GATE_MIN_HOLDOUT_PER_CLASS), so
    the gate judges the demo's second version instead of calling its hold-out insufficient.
    """
    fs, root = bucket.open(create=True)
    rows = databar_rows(size, "bottom", DATABAR_FRAC)
    for day, date in enumerate(dates):
        for i in range(images_per_date):
            label = LABELS[i % len(LABELS)]
            sample = render_sample(label, sample_rng(seed + day, label, i), size=size)
            lot, wafer = LOTS[i % len(LOTS)], WAFERS[(i // len(LOTS)) % len(WAFERS)]
            path = f"{root}/raw/{date.isoformat()}/{lot}/{wafer}/D{i + 1:04d}.png"
            fs.pipe_file(path, _png(sample.image))
        for lot in LOTS:
            for wafer in WAFERS:
                klarf = _klarf(lot, wafer, [i for i in range(images_per_date)], len(LOTS))
                fs.pipe_file(f"{root}/raw/{date.isoformat()}/{lot}/{wafer}/{wafer}.klarf", klarf)
    if dates:
        good = _png(render_sample("good", sample_rng(seed, "good", 0), size=size).image)
        broken = f"{root}/raw/{dates[0].isoformat()}/{LOTS[0]}/{WAFERS[0]}/{TRUNCATED_NAME}"
        fs.pipe_file(broken, good[: len(good) // 3])
    lines = ["image_uri,label,mask_uri,confirmed_at,reviewer"]
    for label in LABELS:
        lines += _seed_confirmed(
            fs,
            root,
            label,
            (confirmed_per_class, min_holdout_per_class),
            holdout_fraction,
            size,
            seed,
        )
    fs.pipe_file(f"{root}/confirmed/shots.csv", ("\n".join(lines) + "\n").encode())
    fs.invalidate_cache()
    return DemoSeed(
        dates=list(dates),
        raw_images=len(dates) * images_per_date + (1 if dates else 0),
        confirmed_shots=len(lines) - 1,
        databar_bottom=rows,
    )


def _seed_confirmed(
    fs: Any,
    root: str,
    label: str,
    wanted: tuple[int, int],
    holdout_fraction: float,
    size: int,
    seed: int,
) -> list[str]:
    """CSV rows of one class's confirmed shots: ``wanted`` = (train, hold-out) counts.

    Images lie in lot/wafer folders (``confirmed/images/<lot>/<wafer>/``), round robin, so
    the refit's calibration folds have wafers to keep whole, as a fab's shots would.
    """
    n_train, n_holdout = wanted
    stamp = dt.datetime(2026, 10, 1, 8, 0, tzinfo=dt.UTC)
    wafers = [(lot, wafer) for lot in LOTS for wafer in WAFERS]
    rows, train, held, i = [], 0, 0, 0
    while train < n_train or held < n_holdout:
        if i >= _MAX_CONFIRMED_DRAWS:
            raise ValueError(
                f"demo seeding: {i} {label} shots drawn and only {held} on the hold-out side "
                f"at SEMCLIP_HOLDOUT_FRACTION={holdout_fraction}; raise the fraction or lower "
                "SEMCLIP_GATE_MIN_HOLDOUT_PER_CLASS"
            )
        sample = render_sample(
            label, sample_rng(seed + _CONFIRMED_SEED_OFFSET, label, i), size=size
        )
        png = _png(sample.image)
        side = is_holdout(hashlib.sha256(png).hexdigest(), holdout_fraction)
        i += 1
        if (held >= n_holdout) if side else (train >= n_train):
            continue  # that side is full: the shot would only make the refit slower
        held, train = held + side, train + (not side)
        lot, wafer = wafers[len(rows) % len(wafers)]
        name = f"{lot}/{wafer}/{label}_{i - 1:03d}.png"
        fs.pipe_file(f"{root}/confirmed/images/{name}", png)
        mask = ""
        if label != "good":
            mask = f"confirmed/masks/{name}"
            fs.pipe_file(f"{root}/{mask}", _png(sample.mask.astype(np.uint8) * 255))
        when = (stamp + dt.timedelta(hours=len(rows))).isoformat()
        rows.append(f"confirmed/images/{name},{label},{mask},{when},demo-engineer")
    return rows


@task(name="summarize_predictions", cache_policy=NO_CACHE, **IO_RETRIES)
def summarize_predictions(
    bucket: BucketRef, dates: list[dt.date], registry: Registry | None = None
) -> PredictionSummary:
    """Per-class and per-lot/wafer counts of the dates' current rows, read back with DuckDB
    through the ``predictions`` view (champion's row per image, else the newest)."""
    fs, root = bucket.open()
    ref = registry.alias(CHAMPION) if registry is not None else None
    champion = (ref.name, ref.version) if ref is not None else None
    summary = summarize_dates(fs, root, dates, champion=champion)
    quarantined = len(  # distinct inputs: a re-run quarantines the same file again
        {uri for d in dates for uri in read_quarantine(fs, root, d)["image_uri"].to_pylist()}
    )
    return PredictionSummary(
        rows=summary.rows,
        by_class=summary.by_class,
        by_lot_wafer=summary.by_lot_wafer,
        needs_review=summary.needs_review,
        model_versions=summary.model_versions,
        quarantined=quarantined,
        parquet_uri=fs.unstrip_protocol(f"{root}/predictions"),
        history_rows=summary.history_rows,
        champion=ref.version if ref is not None else None,
    )


def _png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _klarf(lot: str, wafer: str, indices: list[int], n_lots: int) -> bytes:
    """A minimal KLARF 1.2 for one wafer folder: step, tool, die pitch, and per defect its die
    index, position and the inspection tool's own class code (CLASSNUMBER, 0 = unclassified
    for every third defect)."""
    rows = []
    for i in indices:
        lot_i, wafer_i = i % n_lots, (i // n_lots) % len(WAFERS)
        if LOTS[lot_i] != lot or WAFERS[wafer_i] != wafer:
            continue
        code = 0 if i % 3 == 0 else 80 + i % 4
        rows.append(
            f" {i + 1} {100.0 + 7.5 * i:.1f} {250.0 - 3.25 * i:.2f} {i % 5} {-(i % 3)} {code}"
        )
    body = "\n".join(rows) if rows else ""
    text = (
        "FileVersion 1 2;\n"
        f'LotID "{lot}";\n'
        'StepID "M1_CMP";\n'
        'InspectionStationID "DEMO" "SEM-REVIEW" "RT01";\n'
        "DiePitch 1000.0 1000.0;\n"
        f'WaferID "{wafer}";\n'
        "DefectRecordSpec 6 DEFECTID XREL YREL XINDEX YINDEX CLASSNUMBER;\n"
        f"DefectList\n{body};\n"
        "EndOfFile;\n"
    )
    return text.encode()
