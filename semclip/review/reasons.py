"""Why a prediction row needs a human: four reasons, computed from the row alone.

The prediction row stores the fused class probabilities, the mask (COCO RLE, its area) and the
model's own ``needs_review`` flag, which :meth:`semclip.model.SemclipModel._to_prediction` sets
as *top probability below the model's ``review_min_probability``* **or** *mask disagrees with
the class*. The per-pixel class map is not stored (it would add a column to the declared
schema), so ``mask_disagrees`` is read back from what is:

* the class is ``good`` but the mask has defect pixels, or a defect class has none (both
  visible in ``defect_area_px``);
* otherwise the model flagged the row although its top probability clears the threshold: the
  only other cause of ``needs_review`` is the mask's majority per-pixel class differing from
  the predicted class. (A row that is *also* low-confidence keeps only ``low_confidence`` for
  that case: it is exported either way.)

``small_margin`` (top-1 minus top-2 below ``SEMCLIP_REVIEW_MARGIN``) and
``unknown_klarf_code`` (the review tool's own CLASSNUMBER is not in the class-code map) are
new: neither is part of ``needs_review``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from semclip.config import PredictConfig
from semclip.data.dataset import GOOD

__all__ = [
    "LOW_CONFIDENCE",
    "MASK_DISAGREES",
    "REASONS",
    "SMALL_MARGIN",
    "UNKNOWN_KLARF_CODE",
    "ReviewRule",
    "known_class_codes",
    "margin_of",
    "reason_counts",
    "review_reasons",
    "top_classes",
]

LOW_CONFIDENCE = "low_confidence"
SMALL_MARGIN = "small_margin"
MASK_DISAGREES = "mask_disagrees"
UNKNOWN_KLARF_CODE = "unknown_klarf_code"
# Most specific first: a row's first reason in this order is its stratum for sampling.
REASONS = (UNKNOWN_KLARF_CODE, MASK_DISAGREES, SMALL_MARGIN, LOW_CONFIDENCE)


@dataclass(frozen=True)
class ReviewRule:
    """The thresholds the reasons use."""

    margin: float = 0.1  # SEMCLIP_REVIEW_MARGIN: top-1 minus top-2 below this → small_margin
    min_probability: float = PredictConfig.review_min_probability  # the model's own threshold
    class_codes: frozenset[int] | None = None  # KLARF CLASSNUMBERs the map knows; None: no map


def top_classes(probabilities: Any, k: int = 3) -> list[tuple[str, float]]:
    """The ``k`` most probable ``(class, probability)`` pairs, best first.

    ``probabilities`` is the row's map as any reader hands it: a dict, or Arrow's list of
    ``(key, value)`` pairs (pyarrow, DuckDB).
    """
    if probabilities is None:
        return []
    pairs = probabilities.items() if isinstance(probabilities, Mapping) else probabilities
    items = [(str(c), float(p)) for c, p in pairs]
    return sorted(items, key=lambda cp: (-cp[1], cp[0]))[:k]


def margin_of(probabilities: Any) -> float | None:
    """Top-1 minus top-2 probability; None without probabilities, 1.0 with one class."""
    top = top_classes(probabilities, 2)
    if not top:
        return None
    return top[0][1] - (top[1][1] if len(top) > 1 else 0.0)


def review_reasons(row: Mapping[str, Any], rule: ReviewRule) -> list[str]:
    """The reasons (in :data:`REASONS` order) why ``row`` needs review; empty when none.

    ``row`` holds the prediction columns (``predicted_class``, ``probabilities``,
    ``needs_review``, ``defect_area_px``, optionally ``klarf_classnumber``). Error rows (no
    class) have no reasons: they are in quarantine, not up for review.
    """
    cls = row.get("predicted_class")
    top = top_classes(row.get("probabilities"), 2)
    if cls is None or not top:
        return []
    found: set[str] = set()
    top1 = top[0][1]
    low = top1 < rule.min_probability
    if low:
        found.add(LOW_CONFIDENCE)
    margin = margin_of(row.get("probabilities"))
    if margin is not None and margin < rule.margin:
        found.add(SMALL_MARGIN)
    area = row.get("defect_area_px") or 0
    if (cls == GOOD) == (area > 0) or (bool(row.get("needs_review")) and not low):
        found.add(MASK_DISAGREES)
    code = _code(row.get("klarf_classnumber"))
    if code is not None and rule.class_codes is not None and code not in rule.class_codes:
        found.add(UNKNOWN_KLARF_CODE)
    return [r for r in REASONS if r in found]


def known_class_codes(mapping: Mapping[str, int] | None) -> frozenset[int] | None:
    """The KLARF CLASSNUMBERs the class-code map names; None when no map is configured.

    The map is the one KLARF write-back uses, read once by
    :func:`semclip.io.klarf_export.load_class_codes` (prompt file + ``SEMCLIP_CLASS_CODES``), so
    review and write-back cannot disagree on which codes exist.
    """
    if not mapping:
        return None
    return frozenset(int(code) for code in mapping.values())


def _code(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or number != int(number):
        return None
    return int(number)


def reason_counts(rows: Iterable[list[str]]) -> dict[str, int]:
    """How many rows carry each reason (a row with two reasons counts for both)."""
    counts = dict.fromkeys(REASONS, 0)
    for reasons in rows:
        for r in reasons:
            counts[r] += 1
    return counts
