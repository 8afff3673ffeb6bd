"""The paper's few-shot protocol (§4): k shots per class, good included, by seed; the rest is test.

Draws are `semclip.data.draw_support`'s (group-aware: with a `group` column k counts groups and a
drawn group leaves the test set whole). A k that leaves some class without a test image cannot
be scored fairly, so the whole k is skipped, and the report says so in one line.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from semclip.data.dataset import GOOD, Dataset, draw_support

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    """One (k, seed) draw: the support the methods fit on and the images they are scored on."""

    shots: int  # k per class (groups when the manifest has a `group` column)
    seed: int  # the seed's value, as recorded in metrics.json
    support: Dataset
    test: Dataset


@dataclass(frozen=True)
class ProtocolPlan:
    """Every split to run, in (k, seed) order, and one line per skipped k."""

    splits: tuple[Split, ...]
    skipped: tuple[str, ...]

    @property
    def shots(self) -> tuple[int, ...]:
        """The k values that are run (skipped ones left out), ascending as given."""
        return tuple(dict.fromkeys(s.shots for s in self.splits))


def check_classes(dataset: Dataset) -> None:
    """The protocol needs the normal class and at least one defect class."""
    labels = set(dataset.classes)
    if GOOD not in labels or len(labels) < 2:
        raise ValueError(
            f"evaluation needs '{GOOD}' images and at least one defect class; "
            f"data set '{dataset.root}' has {sorted(labels)}"
        )


def plan_splits(dataset: Dataset, shots: Sequence[int], seeds: Sequence[int]) -> ProtocolPlan:
    """Draw every (k, seed) split; skip a k where any seed leaves a class without test images."""
    check_classes(dataset)
    if not seeds:
        raise ValueError("need at least one seed")
    if any(isinstance(k, bool) or int(k) != k or k < 1 for k in shots) or not shots:
        raise ValueError(f"shots must be positive integers, got {list(shots)}")
    splits: list[Split] = []
    skipped: list[str] = []
    for k in shots:
        drawn = [
            Split(int(k), int(seed), *draw_support(dataset, int(k), int(seed))) for seed in seeds
        ]
        reason = _empty_test_classes(dataset, drawn)
        if reason:
            skipped.append(f"{k}-shot skipped: {reason}")
            log.warning("%d-shot skipped: %s", k, reason)
        else:
            splits.extend(drawn)
    return ProtocolPlan(tuple(splits), tuple(skipped))


def _empty_test_classes(dataset: Dataset, drawn: Sequence[Split]) -> str | None:
    """Why a k cannot be scored (classes without a test image, per seed), or None."""
    counts = {label: len(samples) for label, samples in dataset.by_label().items()}
    problems = []
    for split in drawn:
        tested = {s.label for s in split.test.samples}
        empty = [c for c in dataset.classes if c not in tested]
        if empty:
            names = ", ".join(f"'{c}' ({counts[c]} image(s))" for c in empty)
            problems.append(f"seed {split.seed}: no test image left for {names}")
    return "; ".join(problems) or None
