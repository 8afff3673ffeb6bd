"""refit: fit a candidate on confirmed shots, judge it against the champion, register it.

Recipe: gather confirmed shots → hash → split train/hold-out by content hash → support
(newest first, capped per class) → fine-tune → evaluate candidate and champion on the same
hold-out → log to MLflow and register a version → ``challenger`` = it; ``champion`` = it only
through the gate, or when there is no champion yet.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from flows.params import RefitParams
from semclip.refit.gate import GateConfig
from semclip.refit.shots import RefitError
from semclip.registry.client import Registry
from semclip.settings import get_settings
from tasks.common import GPU_LIMIT, BucketRef, current_flow_run_id, hold_slot
from tasks.refit import (
    choose_refit_backbone,
    count_unlabeled_overlap,
    decide_promotion,
    drop_conflicting_shots,
    evaluate_models,
    fit_candidate,
    hash_confirmed_shots,
    load_confirmed_shots,
    register_candidate,
    remove_staging,
    resolve_champion,
    resolve_code_commit,
    split_confirmed_shots,
    update_aliases,
)

__all__ = ["RefitReport", "refit"]

RANDOM_BACKBONE_BANNER = (
    "RANDOM-WEIGHT BACKBONE: the hold-out metrics of this refit are a plumbing check, "
    "not quality figures"
)


class RefitReport(BaseModel):
    """What a refit did: the version it registered, the gate's decision, the numbers."""

    version: str
    promoted: bool
    reason: str
    champion_version: str | None  # after this refit
    previous_champion: str | None
    random_backbone: bool
    backbone: str
    n_confirmed: int
    n_support: int
    n_holdout: int
    holdout_unlabeled_overlap: int = 0  # hold-out images in the backbone's unlabeled_images.txt
    candidate_metrics: dict[str, Any]
    champion_metrics: dict[str, Any] | None
    problems: list[str] = []
    gate_decision: str = ""  # first-champion, promote, hold or insufficient
    f1_gain: float | None = None  # point estimate on the whole hold-out
    f1_gain_lower: float | None = None  # bootstrap lower bound the gate used
    n_resamples: int = 0
    holdout_per_class: dict[str, int] = {}
    git_commit: str = "unknown"
    rejected_rows: list[str] = []  # confirmed rows left out: file, row, bad path and why
    normalised_labels: list[str] = []  # labels read under their one spelling (" X" → x)
    label_conflicts: list[str] = []  # same bytes, different labels: every copy left out

    def markdown(self) -> str:
        """The run summary shown in the Prefect UI."""

        def fmt(metrics: dict[str, Any] | None, key: str) -> str:
            value = (metrics or {}).get(key)
            return "n/a" if value is None else f"{value:.4f}"

        lines = [
            f"# refit: version {self.version} ({'promoted' if self.promoted else 'held'})",
            "",
            f"{self.reason}",
            "",
            f"backbone: {self.backbone}",
            "",
            "| model | macro F1 | accuracy | pixel F1-max |",
            "|---|---|---|---|",
        ]
        for name, metrics in (
            ("candidate", self.candidate_metrics),
            ("champion", self.champion_metrics),
        ):
            if metrics is not None:
                lines.append(
                    f"| {name} | {fmt(metrics, 'f1')} | {fmt(metrics, 'accuracy')} "
                    f"| {fmt(metrics, 'pixel_f1_max')} |"
                )
        lines.append(
            f"\nconfirmed {self.n_confirmed}, support {self.n_support}, hold-out {self.n_holdout}"
            f", hold-out images the backbone adapted on: {self.holdout_unlabeled_overlap}"
        )
        lines += [
            "",
            f"gate: **{self.gate_decision}**; macro F1 gain {_opt(self.f1_gain)} (point), "
            f"{_opt(self.f1_gain_lower)} (95 % lower bound, {self.n_resamples} paired "
            "bootstrap resamples)",
            "",
            "hold-out per class: "
            + (", ".join(f"{k} {v}" for k, v in self.holdout_per_class.items()) or "none"),
            "",
            f"git commit: {self.git_commit}",
        ]
        if self.random_backbone:
            lines[:0] = [f"> **{RANDOM_BACKBONE_BANNER}**", ""]
        lines += [f"- {p}" for p in self.problems]
        for title, items in (
            ("Rejected confirmed rows", self.rejected_rows),
            ("Label conflicts (left out)", self.label_conflicts),
            ("Normalised labels", self.normalised_labels),
        ):
            if items:
                lines += ["", f"## {title} ({len(items)})", *(f"- {item}" for item in items)]
        return "\n".join(lines)


@flow(name="refit")
def refit(
    backbone: str | None = None,
    pretrained: str | None = None,
    databar_top: int = 0,
    databar_bottom: int = 0,
    fit: dict[str, Any] | None = None,
    device: str | None = None,
    gate_min_f1_gain: float | None = None,
    gate_max_pixel_f1_drop: float | None = None,
) -> RefitReport:
    """Fit a candidate on confirmed/ shots and register it; move champion only via the gate.

    The hold-out fraction and support cap are settings only (SEMCLIP_HOLDOUT_FRACTION,
    SEMCLIP_SUPPORT_CAP_PER_CLASS): the split must not change from one run to the next.
    The gate thresholds default to their settings and may be tightened per run.
    """
    settings = get_settings()
    params = RefitParams(
        backbone=backbone,
        pretrained=pretrained,
        databar_top=databar_top,
        databar_bottom=databar_bottom,
        fit=fit or {},
        device=device,
        gate_min_f1_gain=gate_min_f1_gain,
        gate_max_pixel_f1_drop=gate_max_pixel_f1_drop,
    )
    logger = get_run_logger()
    bucket = BucketRef.from_settings(settings)
    registry = Registry.from_settings(settings)
    # first, so a worker that cannot get its weights fails in seconds, before any reading
    champion = resolve_champion(registry)
    chosen = choose_refit_backbone(
        registry,
        champion,
        params.backbone,
        params.pretrained,
        settings.backbone,
        settings.pretrained,
    )
    logger.info("backbone: %s", chosen.describe())
    fraction, cap = settings.holdout_fraction, settings.support_cap_per_class
    gate_config = GateConfig(
        min_f1_gain=_pick(params.gate_min_f1_gain, settings.gate_min_f1_gain),
        max_pixel_f1_drop=_pick(params.gate_max_pixel_f1_drop, settings.gate_max_pixel_f1_drop),
        min_holdout_per_class=settings.gate_min_holdout_per_class,
    )

    confirmed = load_confirmed_shots(bucket)
    shots = confirmed.shots
    if not shots:
        rejected = f" ({len(confirmed.rejected)} row(s) rejected)" if confirmed.rejected else ""
        raise RefitError(
            f"no confirmed shots under {bucket.url}/confirmed/{rejected}: nothing to fit on"
            + "".join(f"\n  {r}" for r in confirmed.rejected[:10])
        )
    hashed, unreadable = hash_confirmed_shots(bucket, shots)
    hashed, conflicts = drop_conflicting_shots(hashed)
    split = split_confirmed_shots(hashed, fraction, cap)
    overlap = count_unlabeled_overlap(split.holdout, chosen.name)
    if overlap:
        logger.warning(
            "%d hold-out images are in %s's unlabeled_images.txt: hold-out figures lean "
            "optimistic (adapt the backbone with the hold-out excluded)",
            overlap,
            chosen.name,
        )
    run_id = current_flow_run_id() or "local"
    staging = settings.home / "staging" / "refit" / run_id
    commit = resolve_code_commit(settings.git_commit)
    lineage = {
        "holdout_fraction": fraction,
        "support_cap_per_class": cap,
        "n_confirmed": len(shots),
        "n_train": split.n_train,
        "n_holdout": len(split.holdout),
        "flow_run_id": run_id,
        "git_commit": commit,
    }
    inputs = {  # in the model's lineage, not in the MLflow params (lists can be long)
        "rejected_rows": confirmed.rejected_rows,
        "normalised_labels": confirmed.normalised_labels,
        "label_conflicts": [c.to_dict() for c in conflicts],
    }
    # The candidate's local copy goes whatever happens: MLflow holds it once registered,
    # and a failed run (a fit error, an MLflow outage at registration) must not leave
    # a model folder behind in the worker's home for every retry.
    try:
        with hold_slot(
            GPU_LIMIT,
            lease_s=settings.slot_lease_s,
            timeout_s=settings.slot_timeout_s,
            flow_run_id=current_flow_run_id(),
        ):
            candidate = fit_candidate(
                bucket,
                split.support,
                backbone=chosen,
                fit_config=params.fit_config().to_dict(),
                databar={"top": params.databar_top, "bottom": params.databar_bottom},
                model_name=registry.model_name,
                out_dir=str(staging / "model"),
                lineage={**lineage, **inputs},
                device=params.device,
                path_regex=settings.path_regex,
            )
            evaluation = evaluate_models(
                bucket, split.holdout, candidate.model_dir, registry, champion
            )
        if candidate.random_backbone:
            logger.warning(RANDOM_BACKBONE_BANNER)
        decision = decide_promotion(evaluation, champion is not None, gate_config)
        logged_params = {
            "backbone": chosen.recorded_name or chosen.name,
            "pretrained": chosen.recorded_pretrained
            if chosen.source == "champion"
            else chosen.pretrained,
            "backbone_source": chosen.describe(),
            "fit": params.fit_config().to_dict(),
            "databar": {"top": params.databar_top, "bottom": params.databar_bottom},
            "gate": {
                "min_f1_gain": gate_config.min_f1_gain,
                "max_pixel_f1_drop": gate_config.max_pixel_f1_drop,
                "min_holdout_per_class": gate_config.min_holdout_per_class,
                "n_resamples": gate_config.n_resamples,
                "confidence": gate_config.confidence,
                "seed": gate_config.seed,
            },
            **lineage,
        }
        version = register_candidate(
            registry,
            candidate,
            evaluation,
            decision,
            logged_params,
            champion,
            run_id,
            git_commit=commit,
            holdout_unlabeled_overlap=overlap,
        )
        champion_after, decision = update_aliases(registry, version, decision, champion)
    finally:
        remove_staging(str(staging))
    report = RefitReport(
        version=version.version,
        promoted=decision.promote,
        reason=decision.reason,
        champion_version=champion_after.version if champion_after else None,
        previous_champion=champion.version if champion else None,
        random_backbone=candidate.random_backbone,
        backbone=candidate.backbone,
        n_confirmed=len(shots),
        n_support=sum(candidate.shots_per_class.values()),  # shots fitted on, not selected
        n_holdout=evaluation.n_holdout,
        holdout_unlabeled_overlap=overlap,
        candidate_metrics=evaluation.candidate.to_dict(),
        champion_metrics=evaluation.champion.to_dict() if evaluation.champion else None,
        problems=[*unreadable, *candidate.skipped, *evaluation.problems],
        gate_decision=decision.decision,
        f1_gain=decision.f1_gain,
        f1_gain_lower=decision.f1_gain_lower,
        n_resamples=decision.n_resamples,
        holdout_per_class=decision.holdout_per_class,
        git_commit=commit,
        rejected_rows=confirmed.rejected,
        normalised_labels=confirmed.normalised_labels,
        label_conflicts=[str(c) for c in conflicts],
    )
    for line in (*report.rejected_rows, *report.label_conflicts):
        logger.warning("%s", line)
    logger.info("version %s: %s", report.version, report.reason)
    create_markdown_artifact(report.markdown(), key="refit-report")
    return report


def _opt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.4f}"


def _pick(value: float | None, default: float) -> float:
    """The parameter when given (0.0 included), else the setting."""
    return default if value is None else value
