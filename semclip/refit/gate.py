"""The gate: whether ``champion`` moves to the candidate, by their hold-out metrics.

The candidate replaces the champion only when macro F1 rises by ``min_f1_gain`` and pixel
F1-max (where hold-out masks exist) drops by no more than ``max_pixel_f1_drop``, or when
there is no champion yet.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from semclip.refit.evaluate import HoldoutMetrics

__all__ = ["GateConfig", "GateDecision", "gate"]


_EPS = 1e-9  # gate comparisons: a gain of exactly the threshold passes


@dataclass(frozen=True)
class GateConfig:
    """What a candidate must show to replace the champion."""

    min_f1_gain: float = 0.01  # macro F1 gain over the champion, on the same hold-out
    max_pixel_f1_drop: float = 0.02  # largest pixel F1-max drop tolerated (where masks exist)


@dataclass(frozen=True)
class GateDecision:
    """Whether ``champion`` moves to the candidate, and why, in words for the run report."""

    promote: bool
    reason: str
    f1_gain: float | None = None
    pixel_f1_drop: float | None = None

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
    if not has_champion:
        return GateDecision(True, "no champion yet: the first model becomes champion")
    if candidate is None or champion is None or candidate.f1 is None or champion.f1 is None:
        return GateDecision(
            False,
            "no hold-out image to compare candidate and champion on; confirm more shots or "
            "promote by hand (semclip promote --version N)",
        )
    gain = candidate.f1 - champion.f1
    drop = None
    if candidate.pixel_f1_max is not None and champion.pixel_f1_max is not None:
        drop = champion.pixel_f1_max - candidate.pixel_f1_max
    if gain < config.min_f1_gain - _EPS:
        return GateDecision(
            False,
            f"macro F1 {candidate.f1:.4f} vs champion {champion.f1:.4f}: gain {gain:+.4f} "
            f"is below the required {config.min_f1_gain:+.4f}",
            gain,
            drop,
        )
    if drop is not None and drop > config.max_pixel_f1_drop + _EPS:
        return GateDecision(
            False,
            f"pixel F1-max drops by {drop:.4f} (more than {config.max_pixel_f1_drop:.4f}) "
            f"although macro F1 gains {gain:+.4f}",
            gain,
            drop,
        )
    pixel = "" if drop is None else f", pixel F1-max change {-drop:+.4f}"
    return GateDecision(True, f"macro F1 gain {gain:+.4f}{pixel}: promoted", gain, drop)
