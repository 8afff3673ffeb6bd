"""The order in which rows go to review: uncertainty first, interleaved over strata.

Active learning in one rule (the review sampler and the active-learning measurement use this
same function, so what is measured is what ships):

* **uncertainty**: within a stratum, the smallest top-1 minus top-2 margin first (the image
  the model is least sure between two classes);
* **diversity**: strata are ``(first reason, predicted class)``; picks go round-robin over
  them, best stratum first, so a capped batch holds every kind of doubt and every class
  before it holds a second image of any one (Roboflow and Geti sample by confidence and
  class alike).

Rows without a reason form the last stratum group (used only when the batch must be filled,
as in the measurement).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Candidate", "rank_for_review"]


@dataclass(frozen=True)
class Candidate:
    """What the sampler needs of one row."""

    key: str  # image URI (ties are broken by it, so the order is deterministic)
    predicted_class: str
    margin: float  # top-1 minus top-2 probability; smaller is more uncertain
    reasons: tuple[str, ...] = ()  # from semclip.review.reasons.review_reasons


def rank_for_review(candidates: Sequence[Candidate], limit: int | None = None) -> list[Candidate]:
    """``candidates`` in review order, at most ``limit`` (all when None).

    Rows with reasons come before rows without; inside each group, one pick per stratum per
    round, strata ordered by their most uncertain row, each stratum by margin.
    """
    flagged = [c for c in candidates if c.reasons]
    rest = [c for c in candidates if not c.reasons]
    ranked = _round_robin(flagged) + _round_robin(rest)
    return ranked if limit is None else ranked[: max(limit, 0)]


def _round_robin(candidates: Sequence[Candidate]) -> list[Candidate]:
    strata: dict[tuple[str, str], list[Candidate]] = defaultdict(list)
    for c in candidates:
        strata[(c.reasons[0] if c.reasons else "", c.predicted_class)].append(c)
    queues = [sorted(rows, key=lambda c: (c.margin, c.key)) for rows in strata.values()]
    queues.sort(key=lambda q: (q[0].margin, q[0].key))
    ranked: list[Candidate] = []
    depth = 0
    while len(ranked) < len(candidates):
        ranked += [q[depth] for q in queues if depth < len(q)]
        depth += 1
    return ranked
