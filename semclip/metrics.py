"""Evaluation metrics: AUROC, F1-max and classification metrics, as pure functions.

The paper's protocol (§4) scores segmentation over *all* pixels of all test images at their
original resolution, which is tens of millions of pixels with heavy ties (smoothed maps,
quantised scores, and every good image contributing only negatives). So the pixel metrics
here are exact and tie-correct (equal scores switch together at a threshold, as in
scikit-learn), cost one sort per class, and never build per-pixel index arrays.
:class:`PixelScoreHistogram` streams the same metrics image by image in fixed memory.

Every metric is a Python ``float`` fraction in [0, 1], or ``None`` where it is undefined
(one class absent), so results drop straight into JSON / Parquet reports. Inputs may be
numpy arrays or torch tensors (any device); they are flattened, so (H, W) maps work as-is.
Labels are binary: nonzero (or ``True``) is the positive (defect) class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

__all__ = [
    "PixelScoreHistogram",
    "auroc",
    "classification_metrics",
    "f1_max",
    "roc_curve_points",
]


def auroc(scores: Any, labels: Any) -> float | None:
    """Exact area under the ROC curve; ``None`` when only one class is present.

    Computed as the Mann-Whitney statistic: for each positive, the negatives scored below it
    plus half the negatives tied with it, over ``P * N``. Equal to
    ``sklearn.metrics.roc_auc_score`` (ties count 1/2), but costs two sorts of float32 data
    and no (n,) int64 index array, so 50M pixels take seconds and ~1x the input's memory.
    """
    pos, neg = _split_sorted(scores, labels)
    if pos.size == 0 or neg.size == 0:
        return None
    below = np.searchsorted(neg, pos, side="left").sum(dtype=np.int64)  # negatives < each pos
    below_or_tied = np.searchsorted(neg, pos, side="right").sum(dtype=np.int64)  # <=
    # (below + below_or_tied) / 2 counts ties as 1/2; ints are exact up to 2**63 pairs.
    return float((int(below) + int(below_or_tied)) / (2.0 * pos.size * neg.size))


def f1_max(scores: Any, labels: Any) -> tuple[float | None, float | None]:
    """The best F1 over all thresholds ``score >= t``, and that ``t``; ``(None, None)`` with no
    positives.

    Pixel F1-max (paper §4) picks the threshold after the fact, so it measures how separable
    the map is rather than how well a threshold was tuned. Only thresholds equal to a positive
    score can be optimal (between two positive scores, raising ``t`` drops only negatives), so
    those are the candidates; all pixels with an equal score switch together. On a tie in F1
    the highest threshold wins (the fewest predicted defect pixels).
    """
    pos, neg = _split_sorted(scores, labels)
    if pos.size == 0:
        return None, None
    first = np.flatnonzero(np.r_[True, pos[1:] != pos[:-1]])  # first index of each distinct
    thresholds = pos[first]  # (T,) ascending distinct positive scores
    tp = pos.size - first  # positives >= t
    fp = neg.size - np.searchsorted(neg, thresholds, side="left")  # negatives >= t
    f1 = 2.0 * tp / (tp + fp + pos.size)  # 2TP / (2TP + FP + FN), FN = P - TP
    best = f1.size - 1 - int(np.argmax(f1[::-1]))  # last (highest-threshold) maximum
    return float(f1[best]), float(thresholds[best])


def roc_curve_points(
    scores: Any, labels: Any, max_points: int = 512
) -> tuple[np.ndarray, np.ndarray] | None:
    """ROC curve ``(fpr, tpr)`` for plotting, at most ``max_points`` points; ``None`` when one
    class is absent.

    The exact curve has a vertex per distinct score (millions for pixel maps), far more than a
    plot can show, so vertices are kept evenly spaced along the curve's length (which keeps
    both long straight runs and sharp corners visible); (0, 0) and (1, 1) are always kept.
    Both arrays are float64 of the same length, ``fpr`` non-decreasing.
    """
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points}")
    pos, neg = _split_sorted(scores, labels)
    if pos.size == 0 or neg.size == 0:
        return None
    values = np.sort(np.concatenate([_distinct(pos), _distinct(neg)]), kind="stable")
    thresholds = _distinct(values)  # (T,) ascending; sorted keys make searchsorted fast
    tpr = (pos.size - np.searchsorted(pos, thresholds, side="left"))[::-1] / pos.size
    fpr = (neg.size - np.searchsorted(neg, thresholds, side="left"))[::-1] / neg.size
    fpr, tpr = np.r_[0.0, fpr], np.r_[0.0, tpr]  # (T+1,) from (0, 0) to (1, 1)
    if fpr.size > max_points:
        length = np.r_[0.0, np.cumsum(np.hypot(np.diff(fpr), np.diff(tpr)))]
        keep = np.searchsorted(length, np.linspace(0.0, length[-1], max_points))
        keep = np.unique(np.r_[0, np.clip(keep, 0, fpr.size - 1), fpr.size - 1])
        fpr, tpr = fpr[keep], tpr[keep]
    return fpr, tpr


class PixelScoreHistogram:
    """Streaming pixel AUROC / F1-max: per-class score histograms over ``[lo, hi]``.

    Evaluation feeds one image at a time (``update``) so that all pixels of a test set never
    sit in memory together; partial histograms from parallel workers combine with
    ``merge``. Memory is ``2 * bins`` int64 counts whatever the number of pixels.

    Bin ``b`` holds scores in ``[lo + b*w, lo + (b+1)*w)``, ``w = (hi - lo) / bins``; scores
    outside ``[lo, hi]`` are clipped into the first / last bin (their count is kept in
    ``n_clipped``, so a caller can check that ``lo, hi`` fit its scores).

    Exactness: the results equal :func:`auroc` / :func:`f1_max` whenever no bin holds two
    different scores, e.g. uint8-quantised maps ``k / 255`` with ``bins >= 256``. Otherwise
    scores sharing a bin are treated as tied, and:

    * AUROC is off by at most half the fraction of (positive, negative) pairs sharing a bin,
      ``sum_b pos[b] * neg[b] / (2 P N)`` (:meth:`auroc_error_bound`); for scores spread
      over the range that is about ``1 / (2 * bins)``, 1.2e-4 at 4096 bins.
    * F1-max is a lower bound (it is the exact F1 at threshold ``t = lo + b*w``, a bin edge),
      below the exact value by at most :meth:`f1_max_error_bound`, which bounds F1 at any
      threshold inside a bin by that bin's edge counts (of order ``1 / bins`` too).
    """

    def __init__(self, bins: int = 4096, lo: float = 0.0, hi: float = 1.0) -> None:
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        if not hi > lo:
            raise ValueError(f"need hi > lo, got lo={lo}, hi={hi}")
        self.bins = int(bins)
        self.lo = float(lo)
        self.hi = float(hi)
        self.pos = np.zeros(self.bins, dtype=np.int64)  # (bins,) positive count per bin
        self.neg = np.zeros(self.bins, dtype=np.int64)  # (bins,) negative count per bin
        self.n_clipped = 0  # scores that fell outside [lo, hi]

    def __repr__(self) -> str:
        return (
            f"PixelScoreHistogram(bins={self.bins}, lo={self.lo}, hi={self.hi}, "
            f"n_pos={self.n_pos}, n_neg={self.n_neg})"
        )

    @property
    def n_pos(self) -> int:
        """Positive (defect) pixels seen so far."""
        return int(self.pos.sum())

    @property
    def n_neg(self) -> int:
        """Negative (good) pixels seen so far."""
        return int(self.neg.sum())

    def update(self, scores: Any, labels: Any) -> PixelScoreHistogram:
        """Add one batch (e.g. one image's (H, W) map and mask); returns ``self``."""
        s, y = _flat_pair(scores, labels)
        width = (self.hi - self.lo) / self.bins
        idx = np.floor((s.astype(np.float64) - self.lo) / width)  # float64: exact bin edges
        self.n_clipped += int(np.count_nonzero((s < self.lo) | (s > self.hi)))
        idx = np.clip(idx, 0, self.bins - 1).astype(np.intp)
        pos = np.bincount(idx[y], minlength=self.bins)
        self.pos += pos
        self.neg += np.bincount(idx, minlength=self.bins) - pos
        return self

    def merge(self, other: PixelScoreHistogram) -> PixelScoreHistogram:
        """Add another histogram's counts in place (same bins / range); returns ``self``."""
        if (other.bins, other.lo, other.hi) != (self.bins, self.lo, self.hi):
            raise ValueError(
                f"cannot merge histograms with different binning: "
                f"{(self.bins, self.lo, self.hi)} vs {(other.bins, other.lo, other.hi)}"
            )
        self.pos += other.pos
        self.neg += other.neg
        self.n_clipped += other.n_clipped
        return self

    def auroc(self) -> float | None:
        """AUROC with scores in one bin counted as tied; ``None`` when one class is absent."""
        p, n = self.n_pos, self.n_neg
        if p == 0 or n == 0:
            return None
        pos, neg = self.pos.astype(np.float64), self.neg.astype(np.float64)  # no int64 overflow
        neg_below = np.cumsum(neg) - neg  # (bins,) negatives in lower bins
        twice_u = (pos * (2.0 * neg_below + neg)).sum()  # ties inside a bin count 1/2
        return float(twice_u / (2.0 * p * n))

    def auroc_error_bound(self) -> float | None:
        """Largest possible ``|auroc() - exact AUROC|``: half the within-bin pair fraction."""
        p, n = self.n_pos, self.n_neg
        if p == 0 or n == 0:
            return None
        shared = (self.pos.astype(np.float64) * self.neg).sum()  # pairs sharing a bin
        return float(shared / (2.0 * p * n))

    def f1_max(self) -> tuple[float | None, float | None]:
        """Best F1 over bin-edge thresholds ``score >= lo + b*w``, and that threshold.

        ``(None, None)`` without positives. On a tie the highest threshold wins, as in
        :func:`f1_max`.
        """
        p = self.n_pos
        if p == 0:
            return None, None
        tp, fp = self._at_or_above()
        f1 = 2.0 * tp / (tp + fp + p)  # (bins,) F1 at each bin's lower edge
        best = self.bins - 1 - int(np.argmax(f1[::-1]))
        width = (self.hi - self.lo) / self.bins
        return float(f1[best]), self.lo + best * width

    def f1_max_error_bound(self) -> float | None:
        """Largest possible ``exact F1-max - f1_max()``, from edge counts of each bin.

        Within bin ``b`` a threshold keeps at most ``TP(b)`` positives and at least
        ``TP(b+1) + FP(b+1)`` predictions, so F1 there is at most
        ``2 TP(b) / (TP(b+1) + FP(b+1) + P)``.
        """
        p = self.n_pos
        if p == 0:
            return None
        tp, fp = self._at_or_above()
        tp_next, fp_next = np.r_[tp[1:], 0], np.r_[fp[1:], 0]
        upper = np.minimum(2.0 * tp / (tp_next + fp_next + p), 1.0)
        return float(upper.max() - self.f1_max()[0])

    def _at_or_above(self) -> tuple[np.ndarray, np.ndarray]:
        """(bins,) counts of positives and negatives in bin ``b`` or above (TP, FP at edge b)."""
        tp = np.cumsum(self.pos[::-1])[::-1]
        fp = np.cumsum(self.neg[::-1])[::-1]
        return tp, fp


def classification_metrics(
    y_true: Sequence[Any] | np.ndarray, y_pred: Sequence[Any] | np.ndarray, labels: Sequence[Any]
) -> dict[str, Any]:
    """Accuracy, macro precision / recall / F1 over all K ``labels``, per-class metrics and the
    confusion matrix, via scikit-learn.

    Macro averages run over every class in ``labels`` (paper §4), also classes missing from
    ``y_true`` or ``y_pred``, whose undefined precision / recall count as 0 (sklearn's
    ``zero_division=0``), so a method is not rewarded for never predicting a rare class.
    Predictions outside ``labels`` count as wrong. Returns::

        {"accuracy", "precision", "recall", "f1": float | None,   # None when no samples
         "per_class": {str(label): {"precision", "recall", "f1": float | None,
                                    "support": int}},
         "confusion_matrix": list[list[int]],  # (K, K), rows = true, columns = predicted,
         "labels": list[str]}                  # both in ``labels`` order
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(
            f"y_true, y_pred must be 1-D, equal length: {y_true.shape}, {y_pred.shape}"
        )
    labels = list(labels)
    if len(set(labels)) != len(labels) or not labels:
        raise ValueError(f"labels must be non-empty and distinct, got {labels}")
    names = [str(label) for label in labels]
    if y_true.size == 0:
        return _no_samples(names)
    kw = {"labels": labels, "zero_division": 0}
    macro = precision_recall_fscore_support(y_true, y_pred, average="macro", **kw)
    per = precision_recall_fscore_support(y_true, y_pred, average=None, **kw)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision": float(macro[0]),
        "recall": float(macro[1]),
        "f1": float(macro[2]),
        "per_class": {
            name: {
                "precision": float(per[0][i]),
                "recall": float(per[1][i]),
                "f1": float(per[2][i]),
                "support": int(per[3][i]),
            }
            for i, name in enumerate(names)
        },
        "confusion_matrix": cm.astype(int).tolist(),
        "labels": names,
    }


def _no_samples(names: list[str]) -> dict[str, Any]:
    """:func:`classification_metrics` of an empty test set: ``None`` rates, zero counts."""
    undefined = {"precision": None, "recall": None, "f1": None, "support": 0}
    return {
        **dict.fromkeys(("accuracy", "precision", "recall", "f1")),
        "per_class": {name: dict(undefined) for name in names},
        "confusion_matrix": [[0] * len(names) for _ in names],
        "labels": names,
    }


def _to_numpy(x: Any) -> np.ndarray:
    """A numpy view of ``x``; torch tensors are detached and moved to CPU first."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu()
        if str(x.dtype) in ("torch.bfloat16", "torch.float16"):  # no float16 sort fast path
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def _flat_pair(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Flattened (n,) scores and (n,) bool labels, validated (equal size, finite scores)."""
    s = _to_numpy(scores).ravel()
    y = _to_numpy(labels).ravel()
    if s.size != y.size:
        raise ValueError(f"scores and labels differ in size: {s.size} vs {y.size}")
    if s.dtype.kind not in "fiub":
        raise TypeError(f"scores must be numeric, got dtype {s.dtype}")
    if s.dtype.kind == "f" and not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf")
    return s, (y if y.dtype == np.bool_ else y != 0)


def _split_sorted(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Ascending-sorted positive scores and negative scores (copies, input dtype kept)."""
    s, y = _flat_pair(scores, labels)
    pos, neg = s[y], s[~y]
    pos.sort()
    neg.sort()
    return pos, neg


def _distinct(sorted_values: np.ndarray) -> np.ndarray:
    """Distinct values of an ascending array, in one pass (``np.unique`` would sort again)."""
    if sorted_values.size == 0:
        return sorted_values
    return sorted_values[np.r_[True, sorted_values[1:] != sorted_values[:-1]]]
