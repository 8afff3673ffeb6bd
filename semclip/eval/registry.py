"""Evaluation methods as data: a name, a one-line description, and a factory.

Adding a baseline means one registered function `(context, split) -> Scorer` in its own module
(listed in METHOD_MODULES), never a new branch in the runner.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from semclip.features import Features

if TYPE_CHECKING:
    from semclip.eval.context import EvalContext
    from semclip.eval.protocol import Split

# Modules whose import registers methods; `all` runs them in ORDER.
METHOD_MODULES = ("semclip.eval.methods", "semclip.eval.baselines")
ORDER = (
    "semclip",
    "clip-zero",
    "winclip-zero",
    "winclip-few",
    "patchcore",
    "semclip-no-transform",
    "semclip-generic-prompts",
    "semclip-no-pclip",
    "semclip-no-head",
    "semclip-last-stage",
    "semclip-no-membank",
    "semclip-no-selfsim",
    "semclip-no-region",
    "semclip-global-alpha",
)
DEFAULT_METHOD = "semclip"


@dataclass(frozen=True)
class MethodOutput:
    """A method's scores for a batch of B images."""

    probs: torch.Tensor | None  # (B, K) class probabilities; None: no multi-class classifier
    anomaly: torch.Tensor  # (B,) image anomaly score (1 − P(good) for SEM-CLIP and CLIP zero-shot)
    score_map: torch.Tensor  # (B, S, S) defect map in [0, 1] of the databar-cropped image


class Scorer(Protocol):
    """A method fitted on one split's support."""

    @property
    def tau(self) -> float | None:
        """Mask threshold chosen on the support (None: the method calibrates none)."""

    def score(self, feats: Features) -> MethodOutput:
        """Scores of cached aug-0 features of B test images."""


MethodFactory = Callable[["EvalContext", "Split"], Scorer]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str  # one line for the report: what is fitted, which tokens are used
    factory: MethodFactory


_REGISTRY: dict[str, MethodSpec] = {}


def register(name: str, description: str) -> Callable[[MethodFactory], MethodFactory]:
    """Decorator adding a method factory under `name`."""

    def wrap(factory: MethodFactory) -> MethodFactory:
        _REGISTRY[name] = MethodSpec(name, description, factory)
        return factory

    return wrap


def methods() -> dict[str, MethodSpec]:
    """Every registered method, in ORDER (others after, by name)."""
    for module in METHOD_MODULES:
        importlib.import_module(module)
    rank = {name: i for i, name in enumerate(ORDER)}
    names = sorted(_REGISTRY, key=lambda n: (rank.get(n, len(ORDER)), n))
    return {name: _REGISTRY[name] for name in names}


def resolve_methods(selection: str | Sequence[str]) -> tuple[str, ...]:
    """'all', 'a,b' or a list → method names in ORDER; ValueError naming the valid ones."""
    known = methods()
    if isinstance(selection, str):
        selection = [s.strip() for s in selection.split(",") if s.strip()]
    if any(s.lower() == "all" for s in selection):
        return tuple(known)
    unknown = [s for s in selection if s not in known]
    if unknown or not selection:
        raise ValueError(f"unknown method(s) {unknown}; choose from all, {', '.join(known)}")
    return tuple(n for n in known if n in selection)
