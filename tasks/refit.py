"""Tasks of the refit: gather confirmed shots, split, fit, evaluate both models, register, alias.

The candidate is written to a local staging folder and passed on by path; the champion by
its registry ref. Only the registry calls and the bucket reads retry (on transient errors).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from semclip.io.confirmed import load_confirmed
from semclip.refit.backbone import BackboneChoice, choose_backbone
from semclip.refit.decode import load_holdout, support_items
from semclip.refit.evaluate import HoldoutMetrics, evaluate
from semclip.refit.gate import GateConfig, GateDecision, gate, recheck_champion
from semclip.refit.provenance import UNKNOWN_COMMIT, git_commit
from semclip.refit.shots import (
    LabelConflict,
    RefitError,
    Shot,
    drop_label_conflicts,
    hash_shots,
    shots_from_frame,
)
from semclip.refit.split import exclude_trained, select_support, split_shots
from semclip.registry.client import GATE_TAG, Registry
from semclip.registry.refs import CHALLENGER, CHAMPION, ModelRef
from tasks.common import IO_RETRIES, BucketRef

__all__ = [
    "Candidate",
    "ConfirmedInput",
    "Evaluation",
    "SplitResult",
    "choose_refit_backbone",
    "count_unlabeled_overlap",
    "decide_promotion",
    "drop_conflicting_shots",
    "evaluate_models",
    "fit_candidate",
    "hash_confirmed_shots",
    "load_confirmed_shots",
    "register_candidate",
    "remove_staging",
    "resolve_champion",
    "resolve_code_commit",
    "split_confirmed_shots",
    "update_aliases",
]


@dataclass(frozen=True)
class ConfirmedInput:
    """The confirmed shots a refit may use, and the rows and labels it must report."""

    shots: list[Shot]  # latest review per image, newest first
    rejected_rows: list[dict[str, Any]]  # RejectedRow.to_dict(): file, row, column, value, why
    rejected: list[str] = field(default_factory=list)  # the same, one readable line each
    normalised_labels: list[str] = field(default_factory=list)  # "file row n: ' X' read as 'x'"


@dataclass(frozen=True)
class SplitResult:
    """The support (capped, newest first) and the hold-out of this refit."""

    support: list[Shot]
    holdout: list[Shot]
    n_train: int  # train-side shots before the cap


@dataclass(frozen=True)
class Candidate:
    """A fitted, saved candidate: its folder and what it was fitted on."""

    model_dir: str
    backbone: str  # as Backbone.describe() says it, random weights flagged
    random_backbone: bool
    shots_per_class: dict[str, int]
    skipped: list[str] = field(default_factory=list)  # support shots left out, with reasons
    support: list[dict[str, Any]] = field(default_factory=list)  # lineage rows: uri, hash, …
    classes: list[str] = field(default_factory=list)  # the candidate's, good first


@dataclass(frozen=True)
class Evaluation:
    """Candidate and champion on the same hold-out images."""

    candidate: HoldoutMetrics
    champion: HoldoutMetrics | None
    n_holdout: int  # images both were scored on
    dropped: list[str] = field(default_factory=list)  # hold-out images a model trained on
    problems: list[str] = field(default_factory=list)  # hold-out shots that could not be read
    scored: list[Shot] = field(default_factory=list)  # the hold-out shots both were scored on


@task(name="load_confirmed_shots", **IO_RETRIES)
def load_confirmed_shots(bucket: BucketRef) -> ConfirmedInput:
    """Confirmed shots (latest review per image, newest first), minus rows that leave the
    bucket, which are listed with file, row and reason; respelt labels are listed too."""
    fs, root = bucket.open()
    found = load_confirmed(fs, root)
    return ConfirmedInput(
        shots=shots_from_frame(found.frame),
        rejected_rows=[r.to_dict() for r in found.rejected],
        rejected=[str(r) for r in found.rejected],
        normalised_labels=[str(c) for c in found.relabelled],
    )


@task(name="hash_confirmed_shots", **IO_RETRIES)
def hash_confirmed_shots(bucket: BucketRef, shots: list[Shot]) -> tuple[list[Shot], list[str]]:
    """Content hash of each shot's image (what the split uses); unreadable ones listed."""
    fs, _ = bucket.open()
    return hash_shots(fs, shots)


@task(name="drop_conflicting_shots", cache_policy=NO_CACHE)
def drop_conflicting_shots(shots: list[Shot]) -> tuple[list[Shot], list[LabelConflict]]:
    """Leave out every copy of image bytes confirmed with two labels; list the conflicts."""
    return drop_label_conflicts(shots)


@task(name="split_confirmed_shots", cache_policy=NO_CACHE)
def split_confirmed_shots(
    shots: list[Shot], holdout_fraction: float, cap_per_class: int
) -> SplitResult:
    """Train/hold-out by content hash, then the capped newest-first support from train."""
    train, holdout = split_shots(shots, holdout_fraction)
    return SplitResult(select_support(train, cap_per_class), holdout, len(train))


@task(name="choose_refit_backbone", cache_policy=NO_CACHE, **IO_RETRIES)
def choose_refit_backbone(
    registry: Registry,
    champion: ModelRef | None,
    backbone: str | None,
    pretrained: str | None,
    setting_backbone: str | None,
    setting_pretrained: str | None,
) -> BackboneChoice:
    """Parameters > settings > the champion's own backbone > an error (never a silent hub).

    The champion's model version is only downloaded when it is the one chosen.
    """
    explicit = any((backbone, pretrained, setting_backbone, setting_pretrained))
    champion_dir = None
    if champion is not None and not explicit:
        champion_dir = str(registry.local_dir(champion))
    return choose_backbone(
        param_backbone=backbone,
        param_pretrained=pretrained,
        setting_backbone=setting_backbone,
        setting_pretrained=setting_pretrained,
        champion_dir=champion_dir,
        champion_version=champion.version if champion is not None else None,
    )


@task(name="fit_candidate", cache_policy=NO_CACHE)
def fit_candidate(
    bucket: BucketRef,
    support: list[Shot],
    *,
    backbone: BackboneChoice,
    fit_config: dict[str, Any],
    databar: dict[str, int],
    model_name: str,
    out_dir: str,
    lineage: dict[str, Any],
    device: str | None = None,
    path_regex: str | None = None,
) -> Candidate:
    """Fit the heads on the support shots and save the model directory to ``out_dir``.

    ``path_regex`` (SEMCLIP_PATH_REGEX) gives each shot its lot/wafer group, so the
    cross-validation that picks τ and α keeps each wafer in one fold.
    """
    from semclip.artifact import save_model
    from semclip.config import FitConfig
    from semclip.data.databar import DatabarCrop
    from semclip.model import SemclipModel, shots_per_class
    from semclip.refit.backbone import load_chosen_backbone

    fs, _ = bucket.open()
    items, skipped = support_items(fs, support, path_regex)
    if not items:
        raise RefitError("none of the support shots could be read: " + "; ".join(skipped[:5]))
    loaded = load_chosen_backbone(backbone, device)
    model = SemclipModel.fit(
        loaded,
        items,
        config=FitConfig.from_dict(fit_config),
        databar=DatabarCrop.from_dict(databar),
        name=model_name,
    )
    model.version = "candidate"
    model.lineage["refit"] = {**lineage, "support_skipped": skipped}
    save_model(model, out_dir)
    return Candidate(
        model_dir=out_dir,
        backbone=loaded.describe(),
        random_backbone=loaded.random_weights,
        shots_per_class=shots_per_class(items),
        skipped=skipped,
        support=list(model.lineage.get("support", [])),
        classes=list(model.classes),
    )


@task(name="count_unlabeled_overlap", cache_policy=NO_CACHE)
def count_unlabeled_overlap(holdout: list[Shot], backbone: str) -> int:
    """Hold-out images the backbone adapted on without labels (its unlabeled_images.txt).

    Should be 0: the adapt-backbone flow leaves the hold-out out of the unlabelled set.
    """
    from semclip.pretrain.overlap import unlabeled_hash_overlap

    return len(unlabeled_hash_overlap([s.sha256 for s in holdout if s.sha256], backbone))


@task(name="resolve_champion", **IO_RETRIES)
def resolve_champion(registry: Registry) -> ModelRef | None:
    """The current champion, or ``None`` when there is none yet (first refit)."""
    return registry.alias(CHAMPION)


@task(name="evaluate_models", cache_policy=NO_CACHE)
def evaluate_models(
    bucket: BucketRef,
    holdout: list[Shot],
    candidate_dir: str,
    registry: Registry,
    champion: ModelRef | None,
) -> Evaluation:
    """Score the candidate and the champion on the same hold-out images.

    Images either model trained on (its lineage lists their hash) are dropped for both,
    so neither is judged on its own support.
    """
    from semclip.artifact import load_model

    candidate = load_model(candidate_dir)
    champion_model = registry.load(champion) if champion is not None else None
    kept, dropped = exclude_trained(holdout, candidate.lineage)
    if champion_model is not None:
        kept, dropped_champion = exclude_trained(kept, champion_model.lineage)
        dropped += dropped_champion
    fs, _ = bucket.open()
    images = load_holdout(fs, kept)
    return Evaluation(
        candidate=evaluate(candidate, images),
        champion=evaluate(champion_model, images) if champion_model is not None else None,
        n_holdout=len(images),
        dropped=[s.image_uri for s in dropped],
        problems=list(images.problems),
        scored=list(images.shots),
    )


@task(name="decide_promotion", cache_policy=NO_CACHE)
def decide_promotion(
    evaluation: Evaluation, has_champion: bool, config: GateConfig
) -> GateDecision:
    """The gate: does champion move to the candidate?"""
    return gate(evaluation.candidate, evaluation.champion, has_champion=has_champion, config=config)


@task(name="resolve_code_commit", cache_policy=NO_CACHE)
def resolve_code_commit(fallback: str | None = None) -> str:
    """The git commit of the checkout this task's code runs from (a worker's pull, too);
    ``fallback`` (SEMCLIP_GIT_COMMIT) when that is no git checkout, else ``"unknown"``."""
    return git_commit(Path(__file__).resolve().parent, fallback)


@task(name="register_candidate")
def register_candidate(
    registry: Registry,
    candidate: Candidate,
    evaluation: Evaluation,
    decision: GateDecision,
    params: dict[str, Any],
    champion: ModelRef | None,
    flow_run_id: str | None,
    git_commit: str = UNKNOWN_COMMIT,
    holdout_unlabeled_overlap: int = 0,
) -> ModelRef:
    """Log params, hold-out metrics of both models, lineage, the decision and the support
    and hold-out sets as datasets; register with a description.

    ``holdout_unlabeled_overlap``: hold-out images the backbone adapted on (metric and tag).
    No retries: a retry after a half-done registration would register a second version.
    """
    metrics: dict[str, float | None] = {
        **evaluation.candidate.loggable("candidate"),
        "holdout.n_images": float(evaluation.n_holdout),
        **{f"holdout.n_{k}": float(v) for k, v in decision.holdout_per_class.items()},
        "gate.f1_gain": decision.f1_gain,
        "gate.f1_gain_lower": decision.f1_gain_lower,
        "gate.n_resamples": float(decision.n_resamples),
        "gate.pixel_f1_drop": decision.pixel_f1_drop,
        "holdout.unlabeled_overlap": float(holdout_unlabeled_overlap),
    }
    if evaluation.champion is not None:
        metrics.update(evaluation.champion.loggable("champion"))
    tags = {
        GATE_TAG: decision.decision,
        "semclip.backbone": candidate.backbone,
        "semclip.champion_before": champion.version if champion else "none",
        "semclip.flow_run_id": flow_run_id or "none",
        "semclip.git_commit": git_commit,
        "mlflow.source.git.commit": git_commit,  # what the MLflow UI shows as the source
        "semclip.holdout_unlabeled_overlap": str(holdout_unlabeled_overlap),
    }
    documents = {
        "gate.json": decision.to_dict(),
        "holdout_metrics.json": {
            "candidate": evaluation.candidate.to_dict(),
            "champion": evaluation.champion.to_dict() if evaluation.champion else None,
            "dropped": evaluation.dropped,
            "problems": evaluation.problems,
        },
        "support.json": {
            "shots_per_class": candidate.shots_per_class,
            "skipped": candidate.skipped,
        },
    }
    return registry.log_version(
        candidate.model_dir,
        run_name=f"refit-{flow_run_id or 'local'}",
        params=params,
        metrics=metrics,
        tags=tags,
        documents=documents,
        datasets={
            "training": support_frame(candidate.support),
            "holdout": holdout_frame(evaluation.scored),
        },
        description=version_description(candidate, decision, git_commit),
    )


def support_frame(support: list[dict[str, Any]]) -> pd.DataFrame:
    """The support the candidate was fitted on, one row per image (as its lineage says)."""
    rows = [
        {
            "image_uri": s.get("uri"),
            "sha256": s.get("sha256"),
            "label": s.get("label"),
            "group": s.get("group"),
        }
        for s in support
    ]
    return pd.DataFrame(rows, columns=["image_uri", "sha256", "label", "group"])


def holdout_frame(shots: list[Shot]) -> pd.DataFrame:
    """The hold-out images both models were scored on, one row per image."""
    rows = [
        {
            "image_uri": s.image_uri,
            "sha256": s.sha256,
            "label": s.label,
            "mask_uri": s.mask_uri,
            "confirmed_at": s.confirmed_at.isoformat(),
        }
        for s in shots
    ]
    columns = ["image_uri", "sha256", "label", "mask_uri", "confirmed_at"]
    return pd.DataFrame(rows, columns=columns)


def version_description(candidate: Candidate, decision: GateDecision, git_commit: str) -> str:
    """What a registry browser shows for the version: classes, backbone, shots, the gate."""
    order = [*candidate.classes, *sorted(set(candidate.shots_per_class) - set(candidate.classes))]
    shots = ", ".join(
        f"{label} {candidate.shots_per_class[label]}"
        for label in order
        if label in candidate.shots_per_class
    )
    lower = "n/a" if decision.f1_gain_lower is None else f"{decision.f1_gain_lower:+.4f}"
    holdout = ", ".join(f"{label} {n}" for label, n in decision.holdout_per_class.items())
    return "\n".join(
        [
            f"classes: {', '.join(candidate.classes)}",
            f"backbone: {candidate.backbone}",
            f"support shots: {shots}",
            f"hold-out images: {holdout or 'none'}",
            f"gate: {decision.decision} (macro F1 gain lower bound {lower}): {decision.reason}",
            f"git commit: {git_commit}",
        ]
    )


@task(name="update_aliases")
def update_aliases(
    registry: Registry, version: ModelRef, decision: GateDecision, judged: ModelRef | None
) -> tuple[ModelRef | None, GateDecision]:
    """``challenger`` → the new version always; ``champion`` only when the gate said so *and*
    the champion is still the one the gate judged (``judged``): ``(champion now, decision)``.

    The champion is read again right before the move (:func:`recheck_champion`): two refits
    that overlap (the weekly one and an adapt-backbone run) both judged v1, and the second
    used to move the champion from the first's new version to its own, which no gate had
    compared. Such a candidate is held instead, its ``semclip.gate`` tag saying why.
    MLflow has no compare-and-set on aliases, so a move in the milliseconds between this
    read and the write is still possible; minutes of fitting no longer are.
    """
    registry.set_alias(CHALLENGER, version.version)
    if decision.promote:
        current = registry.alias(CHAMPION)
        decision = recheck_champion(
            decision,
            judged.version if judged else None,
            current.version if current else None,
        )
        if decision.promote:
            registry.promote(version.version, CHAMPION)
        else:
            registry.annotate(version, tags={GATE_TAG: decision.decision})
    return registry.alias(CHAMPION), decision


@task(name="remove_staging", cache_policy=NO_CACHE)
def remove_staging(folder: str) -> None:
    """Delete the candidate's local staging folder once MLflow holds a copy."""
    shutil.rmtree(Path(folder), ignore_errors=True)
