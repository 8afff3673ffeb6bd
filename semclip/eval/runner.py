"""`semclip eval` as a library call: encode once, then every method × k × seed on shared features.

The backbone runs once per image (and per augmentation of a support shot) for the whole
evaluation: all images go through one FeatureCache (on disk under $SEMCLIP_HOME, so a rerun
or a later evaluation of the same data reuses it) before any method runs, and every fit asks
the same cache for its shots.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semclip.backbone import Backbone
from semclip.config import FitConfig
from semclip.data.databar import DatabarCrop
from semclip.data.dataset import Dataset
from semclip.encoder import DualPathEncoder
from semclip.eval.context import EvalContext
from semclip.eval.encoded import EncodedSet, Progress, encode_dataset, no_progress
from semclip.eval.pixels import EXACT_PIXEL_LIMIT
from semclip.eval.protocol import ProtocolPlan, Split, check_classes, plan_splits
from semclip.eval.registry import DEFAULT_METHOD, methods, resolve_methods
from semclip.eval.scoring import RunResult, evaluate_split
from semclip.feature_cache import FeatureCache
from semclip.features import Preprocess
from semclip.prompts import PromptLibrary, load_prompts

log = logging.getLogger(__name__)

EXAMPLES_PER_CLASS = 2  # test images per class in the overlay grid


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how; one field per `semclip eval` option."""

    shots: tuple[int, ...] = (1, 2, 5, 10)  # k per class (good included)
    seeds: int = 3  # seeds 0..seeds-1
    methods: tuple[str, ...] = (DEFAULT_METHOD,)  # names from semclip.eval.registry
    fit_config: FitConfig = FitConfig()  # SEM-CLIP fits; each split sets its own seed
    databar: DatabarCrop = DatabarCrop()  # rows cropped before the model (and mapped back)
    batch_size: int = 16  # images per backbone / scoring batch
    exact_pixel_limit: int = EXACT_PIXEL_LIMIT  # above: pixel metrics from a fine histogram


@dataclass
class EvalResult:
    """Everything the report needs: runs, protocol lines, backbone, data and cache facts."""

    runs: list[RunResult]
    plan: ProtocolPlan
    config: EvalConfig
    encoded: EncodedSet
    classes: tuple[str, ...]
    data_root: Path
    backbone: dict[str, Any]  # name, pretrained, random_weights, describe
    cache: dict[str, Any]  # folder, namespace, hits, misses
    descriptions: dict[str, str]  # method → one line
    seconds: float
    showcase: tuple[str, int, int] | None = None  # (method, k, seed) of the overlay grid
    notes: list[str] = field(default_factory=list)
    # Images of the data set the backbone adapted on without labels (`unlabeled_images.txt`):
    # {"seen": N, "images": M}; None when the backbone lists none.
    transductive: dict[str, int] | None = None


def default_cache_dir() -> Path:
    """$SEMCLIP_HOME/cache/features (default ./.semclip/cache/features)."""
    from semclip.settings import get_settings

    return get_settings().home / "cache" / "features"


def run_evaluation(
    dataset: Dataset,
    backbone: Backbone,
    config: EvalConfig,
    *,
    prompts: PromptLibrary | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: Progress = no_progress,
) -> EvalResult:
    """The paper's protocol for every selected method on one data set and one backbone."""
    started = time.perf_counter()
    check_classes(dataset)
    names = resolve_methods(config.methods)
    preprocess = Preprocess(backbone.image_size, backbone.mean, backbone.std, config.databar)
    n_stages = config.fit_config.n_stages
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache = FeatureCache(backbone, preprocess, n_stages, folder=folder, memory=False)
    encoder = DualPathEncoder(backbone.model, n_stages)
    encoded = encode_dataset(
        dataset, encoder, preprocess, cache, batch_size=config.batch_size, progress=progress
    )
    readable = encoded.readable(dataset)
    plan = plan_splits(readable, config.shots, range(config.seeds))
    ctx = EvalContext(
        backbone,
        encoded,
        cache,
        config.fit_config,
        prompts or load_prompts(),
        config.databar,
        readable.classes,
    )
    showcase = _showcase(names, plan)
    runs = _run_all(ctx, plan, names, config, showcase, progress)
    return EvalResult(
        runs=runs,
        plan=plan,
        config=config,
        encoded=encoded,
        classes=readable.classes,
        data_root=dataset.root,
        backbone={
            "name": backbone.name,
            "pretrained": backbone.pretrained,
            "random_weights": backbone.random_weights,
            "describe": backbone.describe(),
        },
        cache={
            "folder": str(cache.folder),
            "namespace": cache.namespace,
            "hits": cache.hits,
            "misses": cache.misses,
        },
        descriptions={n: methods()[n].description for n in names},
        seconds=time.perf_counter() - started,
        showcase=showcase,
    )


def _run_all(
    ctx: EvalContext,
    plan: ProtocolPlan,
    names: Sequence[str],
    config: EvalConfig,
    showcase: tuple[str, int, int] | None,
    progress: Progress,
) -> list[RunResult]:
    """Every split × method; fits shared within a split are dropped after it."""
    specs = methods()
    jobs = [(split, name) for split in plan.splits for name in names]
    runs: list[RunResult] = []
    current: Split | None = None
    for split, name in progress(jobs, total=len(jobs), desc="eval", unit="run"):
        if split is not current:
            ctx.forget()
            current = split
        t0 = time.perf_counter()
        scorer = specs[name].factory(ctx, split)
        keep = _examples(ctx, split) if showcase == (name, split.shots, split.seed) else set()
        run = evaluate_split(
            ctx,
            split,
            name,
            scorer,
            batch_size=config.batch_size,
            exact_limit=config.exact_pixel_limit,
            keep=keep,
            started=t0,
        )
        log.info(
            "%s k=%d seed=%d: %s (%.1f s)",
            name,
            split.shots,
            split.seed,
            ", ".join(f"{k}={_fmt(v)}" for k, v in run.metrics.items()),
            run.seconds,
        )
        runs.append(run)
    ctx.forget()
    return runs


def _showcase(names: Sequence[str], plan: ProtocolPlan) -> tuple[str, int, int] | None:
    """The run whose test maps the overlay grid shows: SEM-CLIP (else the first method) at
    the largest k and the first seed."""
    if not plan.splits:
        return None
    method = "semclip" if "semclip" in names else names[0]
    k = max(plan.shots)
    seed = min(s.seed for s in plan.splits if s.shots == k)
    return method, k, seed


def _examples(ctx: EvalContext, split: Split) -> set[int]:
    """A few test rows per class (the first in data set order), for the overlay grid."""
    picked: dict[str, list[int]] = {}
    for row in ctx.encoded.rows(split.test):
        label = ctx.encoded.samples[row].label
        if len(picked.setdefault(label, [])) < EXAMPLES_PER_CLASS:
            picked[label].append(row)
    return {r for rows in picked.values() for r in rows}


def _fmt(value: float | None) -> str:
    return "null" if value is None else f"{value:.3f}"
