"""Score one fitted method on one split's test images: the paper's metrics, per run and class.

Image level: iAUROC (defect vs good) from the method's image score (1 − P(good) of the fused
classifier for SEM-CLIP) and from max S. Pixel level: pAUROC and F1-max over all pixels of all
test images with known pixels (good ones all negative) at original resolution. Classification:
accuracy and macro P/R/F1 over all K classes, per-class rows and the confusion matrix.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from semclip.eval.context import EvalContext
from semclip.eval.pixels import EXACT_PIXEL_LIMIT, PixelPool, full_resolution
from semclip.eval.protocol import Split
from semclip.eval.registry import Scorer
from semclip.features import batches
from semclip.metrics import auroc, classification_metrics, roc_curve_points

METRICS = ("iauroc", "pauroc", "f1max_px", "accuracy", "precision", "recall", "f1")


@dataclass(frozen=True)
class Example:
    """One test image kept for the overlay grid."""

    row: int  # encoded row
    label: str
    predicted: str | None
    score_map: np.ndarray  # (S, S) float16 defect map of the databar-cropped image


@dataclass
class RunResult:
    """Metrics of one method × k × seed."""

    method: str
    shots: int
    seed: int
    metrics: dict[str, float | None]  # METRICS plus iauroc_max_s
    per_class: dict[str, dict[str, Any]]  # class → the same metrics per class, and n_test
    confusion: list[list[int]] | None  # (K, K), rows true, columns predicted
    n_support: int
    n_test: int
    pixel_exact: bool  # False: histogram pools (error bound in pixel_auroc_error)
    pixel_auroc_error: float | None
    tau: float | None
    seconds: float
    image_roc: tuple[np.ndarray, np.ndarray] | None = None
    pixel_roc: tuple[np.ndarray, np.ndarray] | None = None
    examples: list[Example] = field(default_factory=list)


@dataclass
class Collected:
    """Raw per-image outputs of one run, before metrics."""

    labels: list[str]
    anomaly: np.ndarray  # (N,) method's image score
    max_s: np.ndarray  # (N,) max of the defect map
    predicted: list[str | None]  # None everywhere: no multi-class classifier
    pools: dict[str, PixelPool]  # pixel pools per true class of the image
    examples: list[Example]


def evaluate_split(
    ctx: EvalContext,
    split: Split,
    method: str,
    scorer: Scorer,
    *,
    batch_size: int = 16,
    exact_limit: int = EXACT_PIXEL_LIMIT,
    keep: set[int] | frozenset[int] = frozenset(),
    started: float | None = None,
) -> RunResult:
    """Run `scorer` over the split's test images and compute every metric.

    `keep` names encoded rows whose maps are kept as Examples (for the overlay grid).
    """
    started = time.perf_counter() if started is None else started
    enc = ctx.encoded
    rows = enc.rows(split.test)
    known = [r for r in rows if enc.pixels_known[r]]
    exact = sum(enc.shapes[r][0] * enc.shapes[r][1] for r in known) <= exact_limit
    got = collect(ctx, rows, scorer, batch_size, exact, keep)
    everything = PixelPool.union(got.pools.values())
    cls = _classification(ctx, got)
    good = ctx.classes[ctx.good_index]
    y = np.asarray([label != good for label in got.labels])
    return RunResult(
        method=method,
        shots=split.shots,
        seed=split.seed,
        metrics=overall_metrics(got, everything, cls, y),
        per_class=per_class_metrics(ctx, got, cls, y),
        confusion=cls["confusion_matrix"] if cls else None,
        n_support=len(enc.rows(split.support)),
        n_test=len(rows),
        pixel_exact=exact,
        pixel_auroc_error=everything.auroc_error_bound(),
        tau=scorer.tau,
        seconds=time.perf_counter() - started,
        image_roc=roc_curve_points(got.anomaly, y, 256),
        pixel_roc=everything.roc(256),
        examples=got.examples,
    )


def collect(
    ctx: EvalContext,
    rows: list[int],
    scorer: Scorer,
    batch_size: int,
    exact: bool,
    keep: set[int] | frozenset[int],
) -> Collected:
    """Score the rows batch by batch; pool each map at its image's original resolution."""
    enc = ctx.encoded
    got = Collected(
        [], np.zeros(0), np.zeros(0), [], {c: PixelPool(exact) for c in ctx.classes}, []
    )
    anomaly, max_s = [], []
    for sl in batches(len(rows), batch_size):
        idx = rows[sl]
        out = scorer.score(enc.feats[idx])
        maps = out.score_map.numpy()  # (b, S, S)
        anomaly.extend(out.anomaly.tolist())
        max_s.extend(maps.reshape(len(idx), -1).max(axis=1).tolist())
        preds: list[str | None] = (
            [ctx.classes[i] for i in out.probs.argmax(dim=1).tolist()]
            if out.probs is not None
            else [None] * len(idx)
        )
        got.predicted.extend(preds)
        for j, row in enumerate(idx):
            label = enc.samples[row].label
            got.labels.append(label)
            gt = enc.gt_mask(row)
            if gt is not None:
                got.pools[label].add(full_resolution(maps[j], enc.shapes[row], ctx.databar), gt)
            if row in keep:
                got.examples.append(Example(row, label, preds[j], maps[j].astype(np.float16)))
    got.anomaly, got.max_s = np.asarray(anomaly), np.asarray(max_s)
    return got


def _classification(ctx: EvalContext, got: Collected) -> dict[str, Any] | None:
    """classification_metrics over all K classes, or None for methods without a classifier."""
    if not got.predicted or any(p is None for p in got.predicted):
        return None
    return classification_metrics(got.labels, got.predicted, ctx.classes)


def overall_metrics(
    got: Collected, everything: PixelPool, cls: dict[str, Any] | None, y: np.ndarray
) -> dict[str, float | None]:
    """The metrics.json figures of one run (fractions, or None where undefined)."""
    metrics: dict[str, float | None] = {
        "iauroc": auroc(got.anomaly, y),
        "iauroc_max_s": auroc(got.max_s, y),
        "pauroc": everything.auroc(),
        "f1max_px": everything.f1_max(),
    }
    for key in ("accuracy", "precision", "recall", "f1"):
        metrics[key] = cls[key] if cls else None
    return metrics


def per_class_metrics(
    ctx: EvalContext, got: Collected, cls: dict[str, Any] | None, y: np.ndarray
) -> dict[str, dict[str, Any]]:
    """Per class: segmentation on (this class + good) images, classification P/R/F1."""
    good = ctx.classes[ctx.good_index]
    labels = np.asarray(got.labels)
    out: dict[str, dict[str, Any]] = {}
    for c in ctx.classes:
        pick = (labels == good) | (labels == c)
        pool = PixelPool.union([got.pools[good], got.pools[c]]) if c != good else None
        row = cls["per_class"][c] if cls else {}
        out[c] = {
            "n_test": int((labels == c).sum()),
            "iauroc": auroc(got.anomaly[pick], y[pick]) if c != good else None,
            "iauroc_max_s": auroc(got.max_s[pick], y[pick]) if c != good else None,
            "pauroc": pool.auroc() if pool else None,
            "f1max_px": pool.f1_max() if pool else None,
            "precision": row.get("precision"),
            "recall": row.get("recall"),
            "f1": row.get("f1"),
        }
    return out
