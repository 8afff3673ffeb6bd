"""Active learning measured: review picks (uncertainty + diversity) against random picks.

The question the review loop has to answer: if engineers confirm the images
:func:`semclip.review.sampling.rank_for_review` puts first, is the next model better than if
they had confirmed as many images drawn at random? The protocol, per seed:

1. split the set into a test part (``test_fraction`` of each class, never picked, never fitted
   on) and a pool; draw ``initial_per_class`` images per class from the pool as the first
   support (the same for both arms);
2. for each of ``rounds`` rounds and each arm: fit on the arm's confirmed images, predict the
   arm's unconfirmed pool, confirm ``budget`` more (their true label and mask join the
   support): the *review* arm takes the first of ``rank_for_review`` over each row's review
   reasons (``semclip.review.reasons``, the very rule of ``semclip review export``), the
   *random* arm a uniform draw;
3. fit once more and score both arms on the test part: accuracy and macro F1 after the same
   number of confirmed images.

Backbone features are cached by image content, so the backbone runs once per image (and
augmentation) whatever the number of fits.
"""

from __future__ import annotations

import logging
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from semclip.backbone import Backbone
from semclip.config import FitConfig
from semclip.data.databar import DatabarCrop
from semclip.data.dataset import Dataset, Sample, left_out_heading, read_sample
from semclip.data.images import ImageReadError
from semclip.feature_cache import FeatureCache
from semclip.features import Preprocess
from semclip.metrics import classification_metrics
from semclip.model import SemclipModel, SupportItem
from semclip.prompts import PromptLibrary, load_prompts
from semclip.review.reasons import ReviewRule, margin_of, review_reasons
from semclip.review.sampling import Candidate, rank_for_review

__all__ = ["ARMS", "ActiveLearningConfig", "ActiveLearningResult", "run_active_learning"]

log = logging.getLogger(__name__)

ARMS = ("review", "random")


@dataclass(frozen=True)
class ActiveLearningConfig:
    """The measurement's budget: the same for both arms."""

    seeds: tuple[int, ...] = (0, 1, 2)
    initial_per_class: int = 1  # the first support, per class (good included)
    rounds: int = 2  # review rounds (fit → predict pool → confirm)
    budget: int = 10  # images confirmed per round and arm
    test_fraction: float = 0.4  # of each class, held out of the pool for scoring
    margin: float = 0.1  # SEMCLIP_REVIEW_MARGIN for the review arm's reasons
    fit: FitConfig = field(default_factory=FitConfig)
    databar: DatabarCrop = field(default_factory=DatabarCrop)


@dataclass
class ActiveLearningResult:
    """Per seed and arm: accuracy and macro F1 after each round (round 0: the first support)."""

    config: dict[str, Any]
    backbone: str
    random_backbone: bool
    classes: tuple[str, ...]
    n_test: int
    n_pool: int
    curves: dict[str, dict[int, list[dict[str, float]]]]  # arm → seed → per-round metrics
    picked: dict[str, dict[int, dict[str, int]]]  # arm → seed → labels confirmed (counts)
    unreadable: list[str] = field(default_factory=list)  # "path: reason" of images left out

    def final(self, arm: str, metric: str) -> list[float]:
        """``metric`` after the last round, one value per seed."""
        return [rounds[-1][metric] for rounds in self.curves[arm].values()]

    def summary(self) -> dict[str, Any]:
        """Mean ± std over seeds of the final accuracy and F1 per arm, and the paired gain."""
        out: dict[str, Any] = {}
        for metric in ("accuracy", "f1"):
            for arm in ARMS:
                values = self.final(arm, metric)
                out[f"{arm}.{metric}"] = _mean_std(values)
            gains = [
                a - b
                for a, b in zip(
                    self.final("review", metric), self.final("random", metric), strict=True
                )
            ]
            out[f"gain.{metric}"] = _mean_std(gains)
        return out

    def markdown(self) -> str:
        """The comparison as a table, flagged loudly on a random-weight backbone."""
        lines = []
        if self.random_backbone:
            lines += [
                "> **RANDOM-WEIGHT BACKBONE: these figures are a plumbing check, not a result**",
                "",
            ]
        c = self.config
        confirmed = c["initial_per_class"] * len(self.classes) + c["rounds"] * c["budget"]
        lines += [
            f"# Active learning: review picks vs random picks ({self.backbone})",
            "",
            f"{len(c['seeds'])} seeds; {confirmed} confirmed images per arm "
            f"({c['initial_per_class']}/class to start, then {c['rounds']} rounds of "
            f"{c['budget']}); pool {self.n_pool}, test {self.n_test} images.",
            "",
            *(
                [f"{left_out_heading(len(self.unreadable))}:"]
                + [f"- {entry}" for entry in self.unreadable]
                + [""]
                if self.unreadable
                else []
            ),
            "| round | confirmed | review acc | random acc | review F1 | random F1 |",
            "|---|---|---|---|---|---|",
        ]
        for r in range(c["rounds"] + 1):
            cells = [str(r), str(c["initial_per_class"] * len(self.classes) + r * c["budget"])]
            for metric in ("accuracy", "f1"):
                for arm in ARMS:
                    values = [rounds[r][metric] for rounds in self.curves[arm].values()]
                    mean, std = _mean_std(values)
                    cells.append(f"{mean:.3f} ± {std:.3f}")
            lines.append("| " + " | ".join(cells) + " |")
        summary = self.summary()
        lines += [
            "",
            "Paired gain (review − random) after the last round: accuracy "
            f"{summary['gain.accuracy'][0]:+.3f} ± {summary['gain.accuracy'][1]:.3f}, "
            f"macro F1 {summary['gain.f1'][0]:+.3f} ± {summary['gain.f1'][1]:.3f}.",
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        data = asdict(self)
        data["summary"] = self.summary()
        return data


def run_active_learning(
    dataset: Dataset,
    backbone: Backbone,
    config: ActiveLearningConfig,
    *,
    prompts: PromptLibrary | None = None,
    progress: Callable[[str], None] | None = None,
) -> ActiveLearningResult:
    """Both arms on every seed (see the module docstring)."""
    if config.rounds < 1 or config.budget < 1 or config.initial_per_class < 1:
        raise ValueError("rounds, budget and initial_per_class must be at least 1")
    prompts = prompts or load_prompts()
    preprocess = Preprocess(backbone.image_size, backbone.mean, backbone.std, config.databar)
    cache = FeatureCache(backbone, preprocess, config.fit.n_stages)
    dataset, unreadable = _readable(dataset)
    classes = dataset.classes
    curves: dict[str, dict[int, list[dict[str, float]]]] = {arm: {} for arm in ARMS}
    picked: dict[str, dict[int, dict[str, int]]] = {arm: {} for arm in ARMS}
    n_test = n_pool = 0
    for seed in config.seeds:
        test, pool = _split(dataset, config.test_fraction, seed)
        n_test, n_pool = len(test), len(pool)
        start = _initial(pool, config.initial_per_class, seed)
        fit = _fitter(backbone, config, prompts, cache)
        first_model = fit(start)
        first = _score(first_model, test, cache)
        for arm in ARMS:
            rng = random.Random(f"{seed}-{arm}")
            confirmed, model, rounds = list(start), first_model, [first]
            for r in range(config.rounds):
                taken = set(confirmed)
                rest = [s for s in pool if s not in taken]
                confirmed += _pick(arm, model, rest, config, cache, rng)
                model = fit(confirmed)  # the refit on what the engineers confirmed
                rounds.append(_score(model, test, cache))
                if progress:
                    progress(f"seed {seed} {arm} round {r + 1}: {rounds[-1]['accuracy']:.3f}")
            curves[arm][seed] = rounds
            extra = confirmed[len(start) :]
            picked[arm][seed] = {c: sum(s.label == c for s in extra) for c in classes}
    return ActiveLearningResult(
        config=_config_dict(config),
        backbone=backbone.describe(),
        random_backbone=backbone.random_weights,
        classes=classes,
        n_test=n_test,
        n_pool=n_pool,
        curves=curves,
        picked=picked,
        unreadable=unreadable,
    )


def _readable(dataset: Dataset) -> tuple[Dataset, list[str]]:
    """`dataset` without the images (or masks) that cannot be decoded, and why each went.

    Screened once before any split: an unreadable image drawn as a shot would end the run,
    and one in the test part would count as a wrong prediction of every arm.
    """
    kept, unreadable = [], []
    for sample in dataset.samples:
        try:
            read_sample(sample)
        except (ImageReadError, ValueError) as exc:
            log.warning("left out of the active-learning run: %s", exc)
            unreadable.append(f"{sample.image}: {exc}")
            continue
        kept.append(sample)
    if not kept:
        raise ValueError(f"no readable image in data set '{dataset.root}'")
    return Dataset(dataset.root, tuple(kept)), unreadable


def _fitter(
    backbone: Backbone, config: ActiveLearningConfig, prompts: PromptLibrary, cache: FeatureCache
) -> Callable[[Sequence[Sample]], SemclipModel]:
    def fit(samples: Sequence[Sample]) -> SemclipModel:
        items = [SupportItem(s.image, s.label, s.mask, s.group, str(s.image)) for s in samples]
        return SemclipModel.fit(
            backbone, items, config=config.fit, prompts=prompts, databar=config.databar, cache=cache
        )

    return fit


def _split(dataset: Dataset, fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(test, pool): ``fraction`` of each class to the test part, by a seeded shuffle."""
    test, pool = [], []
    for label, samples in dataset.by_label().items():
        order = sorted(samples, key=lambda s: str(s.image))
        random.Random(f"split-{seed}-{label}").shuffle(order)
        n = max(1, round(fraction * len(order)))
        test += order[:n]
        pool += order[n:]
    return test, pool


def _initial(pool: Sequence[Sample], per_class: int, seed: int) -> list[Sample]:
    start = []
    for label in sorted({s.label for s in pool}):
        of_class = sorted((s for s in pool if s.label == label), key=lambda s: str(s.image))
        random.Random(f"start-{seed}-{label}").shuffle(of_class)
        start += of_class[:per_class]
    return start


def _pick(
    arm: str,
    model: SemclipModel,
    rest: Sequence[Sample],
    config: ActiveLearningConfig,
    cache: FeatureCache,
    rng: random.Random,
) -> list[Sample]:
    if arm == "random":
        return rng.sample(list(rest), min(config.budget, len(rest)))
    predictions = model.predict(
        [s.image for s in rest], uris=[str(s.image) for s in rest], cache=cache
    )
    rule = ReviewRule(
        margin=config.margin, min_probability=model.predict_config.review_min_probability
    )
    by_uri = {str(s.image): s for s in rest}
    candidates = []
    for p in predictions:
        if not p.ok:
            continue
        record = p.to_record()
        reasons = tuple(review_reasons(record, rule))
        candidates.append(
            Candidate(
                p.image_uri, p.predicted_class or "", margin_of(p.probabilities) or 0.0, reasons
            )
        )
    return [by_uri[c.key] for c in rank_for_review(candidates, config.budget)]


def _score(model: SemclipModel, test: Sequence[Sample], cache: FeatureCache) -> dict[str, float]:
    predictions = model.predict(
        [s.image for s in test], uris=[str(s.image) for s in test], cache=cache
    )
    y_true = [s.label for s in test]
    y_pred = [p.predicted_class or "(error)" for p in predictions]
    metrics = classification_metrics(y_true, y_pred, list(model.classes))
    return {"accuracy": metrics["accuracy"], "f1": metrics["f1"]}


def _config_dict(config: ActiveLearningConfig) -> dict[str, Any]:
    data = asdict(config)
    data["seeds"] = list(config.seeds)
    return data


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return (float("nan"), float("nan"))
    return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
