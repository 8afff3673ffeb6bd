"""The gate: whether ``champion`` moves to the candidate, by their hold-out metrics.

A hold-out of a dozen images gives a macro F1 that moves by 0.1 when one image flips, so a
point estimate of the gain says little. The gate therefore:

1. promotes the first model when there is no champion yet (there is nothing to protect);
2. says **insufficient** (champion stays) when any class the candidate knows, ``good``
   included, has fewer than ``min_holdout_per_class`` hold-out images;
3. resamples the hold-out images ``n_resamples`` times with replacement (seeded, and
   *paired*: candidate and champion are scored on the same resample) and promotes only when
   the lower bound of the ``confidence`` interval of the macro-F1 gain reaches
   ``min_f1_gain``;
4. holds the promotion when pixel F1-max (where hold-out masks exist) drops by more than
   ``max_pixel_f1_drop``.

The point gain, the lower bound, the resample count and the per-class hold-out counts are in
every :class:`GateDecision`, for the refit report and MLflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from semclip.data.dataset import GOOD
from semclip.refit.evaluate import HoldoutMetrics

__all__ = [
    "CHAMPION_MOVED",
    "FIRST",
    "HOLD",
    "INSUFFICIENT",
    "PROMOTE",
    "GateConfig",
    "GateDecision",
    "bootstrap_f1_gain",
    "gate",
    "recheck_champion",
]


_EPS = 1e-9  # gate comparisons: a gain of exactly the threshold passes
# The decision words, as the ``semclip.gate`` tag and the report carry them.
FIRST, PROMOTE, HOLD, INSUFFICIENT = "first-champion", "promote", "hold", "insufficient"
CHAMPION_MOVED = "hold-champion-moved"  # the gate judged a champion that is no longer current


@dataclass(frozen=True)
class GateConfig:
    """What a candidate must show to replace the champion."""

    min_f1_gain: float = 0.01  # required lower bound of the macro F1 gain, same hold-out
    max_pixel_f1_drop: float = 0.02  # largest pixel F1-max drop tolerated (where masks exist)
    min_holdout_per_class: int = 5  # hold-out images per known class (good too) to judge at all
    n_resamples: int = 1000  # paired bootstrap resamples of the hold-out images
    confidence: float = 0.95  # two-sided; the gate uses the interval's lower end
    seed: int = 0  # of the bootstrap: the same hold-out always gives the same bound


@dataclass(frozen=True)
class GateDecision:
    """Whether ``champion`` moves to the candidate, and why, in words for the run report."""

    promote: bool
    reason: str
    f1_gain: float | None = None  # point estimate on the whole hold-out
    pixel_f1_drop: float | None = None
    decision: str = HOLD  # FIRST, PROMOTE, HOLD or INSUFFICIENT
    f1_gain_lower: float | None = None  # bootstrap lower bound of the gain
    n_resamples: int = 0  # 0: no bootstrap was run
    holdout_per_class: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gate(
    candidate: HoldoutMetrics | None,
    champion: HoldoutMetrics | None,
    *,
    has_champion: bool,
    config: GateConfig | None = None,
) -> GateDecision:
    """Should ``champion`` move to the candidate? See the module docstring for the rule.

    ``has_champion`` is separate from ``champion`` metrics: a champion that exists but could
    not be measured (empty hold-out) is not replaced automatically.
    """
    config = config or GateConfig()
    counts = _holdout_counts(candidate)
    if not has_champion:
        reason = "no champion yet: the first model becomes champion"
        return GateDecision(True, reason, decision=FIRST, holdout_per_class=counts)
    if candidate is None or champion is None or candidate.f1 is None or champion.f1 is None:
        return GateDecision(
            False,
            "no hold-out image to compare candidate and champion on; confirm more shots or "
            "promote by hand (semclip promote --version N)",
            holdout_per_class=counts,
        )
    gain = candidate.f1 - champion.f1
    drop = None
    if candidate.pixel_f1_max is not None and champion.pixel_f1_max is not None:
        drop = champion.pixel_f1_max - candidate.pixel_f1_max
    lower = _lower_bound(candidate, champion, config)
    found = {"f1_gain": gain, "pixel_f1_drop": drop, "holdout_per_class": counts}
    found |= {"f1_gain_lower": lower, "n_resamples": config.n_resamples if lower is not None else 0}
    short = _short_classes(counts, config.min_holdout_per_class)
    if short:
        return GateDecision(
            False,
            f"insufficient hold-out to judge: {short} (at least "
            f"{config.min_holdout_per_class} per class, SEMCLIP_GATE_MIN_HOLDOUT_PER_CLASS); "
            "confirm more shots, or promote by hand (semclip promote --version N)",
            decision=INSUFFICIENT,
            **found,
        )
    bound = f"{config.confidence:.0%} lower bound {lower:+.4f} of the macro F1 gain"
    point = f"(point {gain:+.4f}: {candidate.f1:.4f} vs champion {champion.f1:.4f})"
    if lower is None or lower < config.min_f1_gain - _EPS:
        return GateDecision(
            False,
            f"{bound} {point} is below the required {config.min_f1_gain:+.4f}",
            decision=HOLD,
            **found,
        )
    if drop is not None and drop > config.max_pixel_f1_drop + _EPS:
        return GateDecision(
            False,
            f"pixel F1-max drops by {drop:.4f} (more than {config.max_pixel_f1_drop:.4f}) "
            f"although the {bound} {point} passes",
            decision=HOLD,
            **found,
        )
    pixel = "" if drop is None else f", pixel F1-max change {-drop:+.4f}"
    return GateDecision(True, f"{bound} {point}{pixel}: promoted", decision=PROMOTE, **found)


def bootstrap_f1_gain(
    truth: Sequence[str],
    candidate: Sequence[str],
    champion: Sequence[str],
    labels: Sequence[str],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """``(n_resamples,)`` macro-F1 gains (candidate − champion) on paired resamples.

    Each resample draws the hold-out images with replacement; both models are scored on
    that same draw, so the spread is the gain's, not the sum of two independent spreads.
    Macro F1 is over ``labels`` with F1 = 0 where a class has neither truth nor prediction,
    as :func:`semclip.metrics.classification_metrics` (sklearn, ``zero_division=0``).
    """
    t, a, b = (np.asarray(x, dtype=object) for x in (truth, candidate, champion))
    if not (len(t) == len(a) == len(b)) or not len(t):
        raise ValueError(f"need equal, non-empty per-image lists, got {len(t)}, {len(a)}, {len(b)}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(t), size=(n_resamples, len(t)))  # (R, n)
    weights = np.zeros((n_resamples, len(t)))
    np.add.at(weights, (np.arange(n_resamples)[:, None], draws), 1.0)  # (R, n) counts
    return _macro_f1(weights, t, a, labels) - _macro_f1(weights, t, b, labels)


def _macro_f1(
    weights: np.ndarray, truth: np.ndarray, predicted: np.ndarray, labels: Sequence[str]
) -> np.ndarray:
    """``(R,)`` macro F1 of each weighting ``(R, n)`` of the images."""
    per_class = []
    for label in labels:
        is_true, is_pred = truth == label, predicted == label
        tp = weights @ (is_true & is_pred).astype(float)
        denominator = weights @ is_true.astype(float) + weights @ is_pred.astype(float)
        per_class.append(
            np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
        )
    return np.mean(per_class, axis=0)


def _lower_bound(
    candidate: HoldoutMetrics, champion: HoldoutMetrics, config: GateConfig
) -> float | None:
    """The bootstrap lower bound of the gain; ``None`` when the per-image lists are missing
    or the two models were not scored on the same images (then nothing can be paired)."""
    if not candidate.truth or candidate.truth != champion.truth:
        return None
    gains = bootstrap_f1_gain(
        candidate.truth,
        candidate.predicted,
        champion.predicted,
        candidate.labels,
        n_resamples=config.n_resamples,
        seed=config.seed,
    )
    return float(np.quantile(gains, (1.0 - config.confidence) / 2))


def _holdout_counts(metrics: HoldoutMetrics | None) -> dict[str, int]:
    """Hold-out images per class the candidate knows (0 where none), good first."""
    if metrics is None:
        return {}
    counts = metrics.holdout_counts()
    known = dict.fromkeys([GOOD, *metrics.model_classes, *metrics.labels])
    return {label: counts.get(label, 0) for label in known}


def _short_classes(counts: dict[str, int], minimum: int) -> str:
    """``"good 0, scratch 2"``: the classes below the minimum, or ``""``."""
    return ", ".join(f"{label} {n}" for label, n in counts.items() if n < minimum)


def recheck_champion(
    decision: GateDecision, judged: str | None, current: str | None
) -> GateDecision:
    """The decision to act on once the champion is read again just before promoting.

    The gate compared the candidate with champion ``judged`` (a version, ``None``: there was
    none); ``current`` is the champion now. When another refit, an adapt-backbone run or a
    person moved the champion in between, promoting would put in place a version no gate
    ever compared with the champion it replaces: the decision becomes a hold naming both
    versions. Otherwise it is returned unchanged.
    """
    if not decision.promote or judged == current:
        return decision

    def named(version: str | None) -> str:
        return "none" if version is None else f"v{version}"

    return replace(
        decision,
        promote=False,
        decision=CHAMPION_MOVED,
        reason=(
            f"not promoted: the gate judged this candidate against champion {named(judged)}, "
            f"but the champion is {named(current)} now (another refit or a manual promotion "
            f"moved it meanwhile); run the refit again to judge it against {named(current)}. "
            f"The gate had said: {decision.reason}"
        ),
    )
