"""``drift/date=<D>/summary.parquet``: what a night's predictions look like, and how far that is
from the nights before.

A summary holds the night's **class histogram** (current rows, one per image, through the
``predictions`` view of :mod:`semclip.io.query`), **score quantiles** (anomaly score and top
class probability at :data:`QUANTILES`), and the **mean CLS embedding** of the images that
night's runs predicted (:mod:`semclip.drift.embedding`). Its drift score compares it with the
summaries of the previous ``window`` nights that exist (the reference), as the largest of:

* ``class``: Jensen-Shannon divergence (base 2, in [0, 1]) between the night's class
  fractions and the reference's mean fractions: the mix of defects moved;
* ``score``: mean absolute difference of the anomaly-score and top-probability quantiles to
  the reference's mean quantiles (in [0, 1]): the model became more or less sure;
* ``embedding``: cosine distance (1 − cos, in [0, 2]) between the night's mean embedding and
  the reference's mean, over reference nights of the same model version only (another
  backbone's space is not comparable): the images themselves changed (tool, recipe, focus).

Above the threshold (``SEMCLIP_DRIFT_THRESHOLD``) the summary is ``flagged``. With no
reference night yet the score is null, never flagged.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from semclip.drift.embedding import read_embedding_sums
from semclip.io.query import connect
from semclip.io.staging import parquet_bytes, replace_atomically, staging_path

__all__ = [
    "QUANTILES",
    "SUMMARY_SCHEMA",
    "DriftScore",
    "NightSummary",
    "describe",
    "drift_score",
    "read_summary",
    "record_drift",
    "summarize_night",
    "summary_json",
    "summary_path",
]

log = logging.getLogger(__name__)

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)

SUMMARY_SCHEMA = pa.schema(
    [
        pa.field("date", pa.date32()),
        pa.field("n_images", pa.int64()),
        pa.field("model_name", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("class_counts", pa.map_(pa.string(), pa.int64())),
        pa.field("quantile_levels", pa.list_(pa.float64())),
        pa.field("anomaly_quantiles", pa.list_(pa.float64())),
        pa.field("confidence_quantiles", pa.list_(pa.float64())),
        pa.field("cls_embedding", pa.list_(pa.float64())),
        pa.field("n_embedded", pa.int64()),
        pa.field("reference_dates", pa.list_(pa.date32())),
        pa.field("drift_class", pa.float64()),
        pa.field("drift_score_quantiles", pa.float64()),
        pa.field("drift_embedding", pa.float64()),
        pa.field("drift_score", pa.float64()),
        pa.field("threshold", pa.float64()),
        pa.field("flagged", pa.bool_()),
    ],
    metadata={"semclip.schema": "drift-summary", "semclip.schema_version": "1"},
)


@dataclass(frozen=True)
class DriftScore:
    """The components and the score (their max); None where not computable."""

    class_js: float | None = None
    score_shift: float | None = None
    embedding_distance: float | None = None
    reference_dates: tuple[dt.date, ...] = ()

    @property
    def score(self) -> float | None:
        parts = [
            v for v in (self.class_js, self.score_shift, self.embedding_distance) if v is not None
        ]
        return max(parts) if parts else None


@dataclass(frozen=True)
class NightSummary:
    """One night's summary (a row of :data:`SUMMARY_SCHEMA`)."""

    date: dt.date
    n_images: int
    model_name: str | None
    model_version: str | None
    class_counts: dict[str, int]
    anomaly_quantiles: tuple[float, ...]
    confidence_quantiles: tuple[float, ...]
    cls_embedding: tuple[float, ...] | None
    n_embedded: int
    drift: DriftScore = field(default_factory=DriftScore)
    threshold: float | None = None

    @property
    def flagged(self) -> bool:
        score = self.drift.score
        return bool(score is not None and self.threshold is not None and score > self.threshold)

    def fractions(self) -> dict[str, float]:
        total = sum(self.class_counts.values())
        return {c: n / total for c, n in self.class_counts.items()} if total else {}

    def to_row(self) -> dict[str, Any]:
        return {
            "date": self.date,
            "n_images": self.n_images,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "class_counts": self.class_counts,
            "quantile_levels": list(QUANTILES),
            "anomaly_quantiles": list(self.anomaly_quantiles),
            "confidence_quantiles": list(self.confidence_quantiles),
            "cls_embedding": list(self.cls_embedding) if self.cls_embedding else None,
            "n_embedded": self.n_embedded,
            "reference_dates": list(self.drift.reference_dates),
            "drift_class": self.drift.class_js,
            "drift_score_quantiles": self.drift.score_shift,
            "drift_embedding": self.drift.embedding_distance,
            "drift_score": self.drift.score,
            "threshold": self.threshold,
            "flagged": self.flagged,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> NightSummary:
        counts = row["class_counts"]
        counts = dict(counts) if not isinstance(counts, dict) else counts
        return cls(
            date=row["date"],
            n_images=int(row["n_images"]),
            model_name=row["model_name"],
            model_version=row["model_version"],
            class_counts={str(k): int(v) for k, v in counts.items()},
            anomaly_quantiles=tuple(row["anomaly_quantiles"] or ()),
            confidence_quantiles=tuple(row["confidence_quantiles"] or ()),
            cls_embedding=tuple(row["cls_embedding"]) if row["cls_embedding"] else None,
            n_embedded=int(row["n_embedded"] or 0),
            drift=DriftScore(
                row["drift_class"],
                row["drift_score_quantiles"],
                row["drift_embedding"],
                tuple(row["reference_dates"] or ()),
            ),
            threshold=row["threshold"],
        )


def summary_path(root: str, run_date: dt.date) -> str:
    """``<root>/drift/date=<D>/summary.parquet``."""
    return f"{root}/drift/date={run_date.isoformat()}/summary.parquet"


def summarize_night(
    fs: AbstractFileSystem,
    root: str,
    run_date: dt.date,
    *,
    champion: tuple[str, str] | None = None,
) -> NightSummary:
    """The night's histogram, quantiles and mean embedding (no drift score yet)."""
    con = connect(fs, root, [run_date], champion=champion)
    rows = (
        con.sql(
            "SELECT predicted_class, anomaly_score, probabilities, model_name, model_version, "
            "flow_run_id FROM predictions WHERE predicted_class IS NOT NULL AND error IS NULL"
        )
        .to_arrow_table()
        .to_pylist()
    )
    counts = Counter(r["predicted_class"] for r in rows)
    versions = Counter((r["model_name"], r["model_version"]) for r in rows)
    name, version = versions.most_common(1)[0][0] if versions else (None, None)
    anomaly = [float(r["anomaly_score"]) for r in rows if r["anomaly_score"] is not None]
    confidence = [max(_values(r["probabilities"])) for r in rows if r["probabilities"]]
    runs = {
        r["flow_run_id"] for r in rows if (r["model_name"], r["model_version"]) == (name, version)
    }
    sums = (
        read_embedding_sums(
            fs, root, run_date, model_name=name, model_version=version, flow_run_ids=runs
        )
        if name is not None and version is not None
        else None
    )
    mean = sums.mean() if sums is not None else None
    return NightSummary(
        date=run_date,
        n_images=len(rows),
        model_name=name,
        model_version=version,
        class_counts=dict(sorted(counts.items())),
        anomaly_quantiles=_quantiles(anomaly),
        confidence_quantiles=_quantiles(confidence),
        cls_embedding=tuple(float(v) for v in mean) if mean is not None else None,
        n_embedded=sums.count if sums is not None else 0,
    )


def drift_score(night: NightSummary, references: list[NightSummary]) -> DriftScore:
    """The night against the reference nights (see the module docstring)."""
    refs = [r for r in references if r.n_images]
    if not night.n_images or not refs:
        return DriftScore(reference_dates=tuple(r.date for r in refs))
    classes = sorted({c for r in (night, *refs) for c in r.class_counts})
    today = np.array([night.fractions().get(c, 0.0) for c in classes])
    ref = np.mean([[r.fractions().get(c, 0.0) for c in classes] for r in refs], axis=0)
    shifts = []
    for attr in ("anomaly_quantiles", "confidence_quantiles"):
        mine = np.asarray(getattr(night, attr))
        theirs = [np.asarray(getattr(r, attr)) for r in refs if len(getattr(r, attr)) == len(mine)]
        if len(mine) and theirs:
            shifts.append(float(np.mean(np.abs(mine - np.mean(theirs, axis=0)))))
    same = [
        np.asarray(r.cls_embedding)
        for r in refs
        if r.cls_embedding is not None
        and (r.model_name, r.model_version) == (night.model_name, night.model_version)
    ]
    embedding = None
    if night.cls_embedding is not None and same:
        a, b = np.asarray(night.cls_embedding), np.mean(same, axis=0)
        embedding = float(1.0 - a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
    return DriftScore(
        class_js=_js_divergence(today, ref),
        score_shift=max(shifts) if shifts else None,
        embedding_distance=embedding,
        reference_dates=tuple(r.date for r in refs),
    )


def record_drift(
    fs: AbstractFileSystem,
    root: str,
    run_date: dt.date,
    *,
    window: int,
    threshold: float,
    champion: tuple[str, str] | None = None,
) -> NightSummary:
    """Summarise the night, score it against the previous ``window`` nights, write it.

    The summary is (re)written atomically at :func:`summary_path`, so a re-run of the night
    replaces it. Nights without a summary (no nightly run, or one before drift existed) are
    simply not in the reference.
    """
    night = summarize_night(fs, root, run_date, champion=champion)
    references = [
        s
        for day in (run_date - dt.timedelta(days=n) for n in range(1, window + 1))
        if (s := read_summary(fs, root, day)) is not None
    ]
    scored = NightSummary(
        **{**night.__dict__, "drift": drift_score(night, references), "threshold": threshold}
    )
    table = pa.Table.from_pylist([scored.to_row()], schema=SUMMARY_SCHEMA)
    staged = staging_path(root, "drift", run_date, "summary.parquet")
    replace_atomically(fs, staged, summary_path(root, run_date), parquet_bytes(table), 1)
    log.info(
        "drift %s: score %s (class %s, score %s, embedding %s) over %d reference night(s)%s",
        run_date,
        _fmt(scored.drift.score),
        _fmt(scored.drift.class_js),
        _fmt(scored.drift.score_shift),
        _fmt(scored.drift.embedding_distance),
        len(scored.drift.reference_dates),
        " FLAGGED" if scored.flagged else "",
    )
    return scored


def read_summary(fs: AbstractFileSystem, root: str, run_date: dt.date) -> NightSummary | None:
    """The night's summary, or None when there is none (or it cannot be read: logged)."""
    path = summary_path(root, run_date)
    try:
        with fs.open(path, "rb") as f:
            rows = pq.read_table(f, schema=SUMMARY_SCHEMA).to_pylist()
    except FileNotFoundError:
        return None
    except (OSError, pa.ArrowException) as exc:
        log.error("drift summary %s unreadable (%s): left out of the reference", path, exc)
        return None
    return NightSummary.from_row(rows[0]) if rows else None


def describe(summary: NightSummary) -> str:
    """One line for a run report."""
    drift = summary.drift
    if drift.score is None:
        return f"drift {summary.date}: no reference night yet (score not computed)"
    parts = {
        "class": drift.class_js,
        "score": drift.score_shift,
        "embedding": drift.embedding_distance,
    }
    detail = ", ".join(f"{k} {_fmt(v)}" for k, v in parts.items())
    flag = "**DRIFT FLAGGED**" if summary.flagged else "ok"
    return (
        f"drift score {drift.score:.3f} ({detail}) vs {len(drift.reference_dates)} night(s); "
        f"threshold {summary.threshold}: {flag}"
    )


def _values(probabilities: Any) -> list[float]:
    pairs = probabilities.items() if isinstance(probabilities, dict) else probabilities
    return [float(v) for _, v in pairs]


def _quantiles(values: list[float]) -> tuple[float, ...]:
    if not values:
        return ()
    return tuple(float(q) for q in np.quantile(np.asarray(values), QUANTILES))


def _js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence, base 2: 0 for equal, 1 for disjoint distributions."""
    m = (p + q) / 2

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / b[mask])))

    return max(0.0, min(1.0, (kl(p, m) + kl(q, m)) / 2))


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def summary_json(summary: NightSummary) -> str:
    """The summary as JSON (the event payload, the flow's artifact)."""
    row = summary.to_row()
    row.pop("cls_embedding")
    return json.dumps(row, default=str)
