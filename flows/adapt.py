"""adapt-backbone: adapt the champion's backbone to the last nights' raw images, then refit.

Recipe: champion → its backbone (the model directory's own copy) → the refit's hold-out
(confirmed shots split by content hash, as the refit splits them) → self-distillation on
raw/<last N nights>/ with the hold-out images left out (GPU slot) → the refit flow as a
subflow with the adapted backbone (same tasks, same gate, alias ``challenger``) → lineage
on the new version (parent version, backbone path and hash, images, nights, URI).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, ConfigDict, Field

from flows.params import parse_run_date, today_in
from flows.refit import RefitReport, refit
from semclip.refit.shots import RefitError
from semclip.registry.client import Registry
from semclip.settings import get_settings
from tasks.adapt import adapt_backbone, record_adapt_lineage, resolve_parent_backbone
from tasks.common import GPU_LIMIT, BucketRef, current_flow_run_id, hold_slot
from tasks.refit import (
    drop_conflicting_shots,
    hash_confirmed_shots,
    load_confirmed_shots,
    split_confirmed_shots,
)

__all__ = ["MAX_NIGHTS", "AdaptParams", "AdaptReport", "adapt_backbone_flow"]

MAX_NIGHTS = 366  # a longer window is almost surely a typo
# PretrainConfig fields the flow sets itself (from the champion, or its own parameters).
_SET_BY_THE_FLOW = frozenset(
    {"model", "pretrained", "ssl", "ssl_only", "lock_text", "databar_top", "databar_bottom"}
)


class AdaptParams(BaseModel):
    """adapt-backbone: which nights to adapt on; recipe overrides for pretraining."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    first: dt.date = Field(description="First raw/<date>/ folder read (included).")
    last: dt.date = Field(description="Last raw/<date>/ folder read (included).")
    nights: int = Field(ge=1, le=MAX_NIGHTS, description="Nights in the window.")
    recipe: dict[str, Any] = Field(
        default_factory=dict, description="PretrainConfig fields over the SSL recipe."
    )
    ssl: dict[str, Any] = Field(default_factory=dict, description="SSLConfig fields.")

    @classmethod
    def build(
        cls,
        nights: int,
        end_date: str | dt.date | None,
        timezone: str,
        recipe: dict[str, Any] | None,
        ssl: dict[str, Any] | None,
    ) -> AdaptParams:
        """The window of ``nights`` nights ending ``end_date`` (default: yesterday at the fab).

        ``recipe``/``ssl`` keys are checked against PretrainConfig/SSLConfig here, so a typo
        fails before any download or GPU time.
        """
        from dataclasses import fields

        from semclip.pretrain.config import PretrainConfig, SSLConfig

        if not isinstance(nights, int) or not 1 <= nights <= MAX_NIGHTS:
            raise ValueError(f"nights must be a whole number in 1..{MAX_NIGHTS}, got {nights!r}")
        last = (
            today_in(timezone) - dt.timedelta(days=1)
            if end_date in (None, "")
            else parse_run_date(end_date, "end_date")
        )
        for given, config, locked in (
            (recipe or {}, PretrainConfig, _SET_BY_THE_FLOW),
            (ssl or {}, SSLConfig, set()),
        ):
            unknown = (set(given) - {f.name for f in fields(config)}) | (set(given) & locked)
            if unknown:
                raise ValueError(
                    f"{config.__name__} has no settable field(s) {sorted(unknown)} "
                    "(model and pretrained come from the champion, the databar from "
                    "databar_top/databar_bottom)"
                )
        return cls(
            first=last - dt.timedelta(days=nights - 1),
            last=last,
            nights=nights,
            recipe=recipe or {},
            ssl=ssl or {},
        )


class AdaptReport(BaseModel):
    """What an adapt-backbone run did: the parent, the adapted backbone, the refit's report."""

    parent_version: str
    version: str  # the version the refit registered (alias challenger)
    backbone: str  # local-dir:PATH of the adapted backbone
    backbone_sha256: str
    n_unlabeled: int
    n_excluded: int  # hold-out images left out of the unlabelled set
    nights: int
    dates: str
    unlabeled_uri: str
    holdout_unlabeled_overlap: int  # from the refit's gate report: should be 0
    refit: RefitReport

    def markdown(self) -> str:
        """The run summary shown in the Prefect UI (the refit's own report follows it)."""
        return "\n".join(
            [
                f"# adapt-backbone: version {self.version} from champion {self.parent_version}",
                "",
                f"- adapted on {self.n_unlabeled} unlabelled images of {self.nights} nights "
                f"({self.dates}) at {self.unlabeled_uri}",
                f"- hold-out images left out: {self.n_excluded}; hold-out images the backbone "
                f"saw: {self.holdout_unlabeled_overlap}",
                f"- backbone {self.backbone} (weights sha256 {self.backbone_sha256[:12]}…)",
                "",
                self.refit.markdown(),
            ]
        )


@flow(name="adapt-backbone")
def adapt_backbone_flow(
    nights: int = 30,
    end_date: str | None = None,
    recipe: dict[str, Any] | None = None,
    ssl: dict[str, Any] | None = None,
    fit: dict[str, Any] | None = None,
    databar_top: int = 0,
    databar_bottom: int = 0,
    device: str | None = None,
    gate_min_f1_gain: float | None = None,
    gate_max_pixel_f1_drop: float | None = None,
) -> AdaptReport:
    """Adapt the champion's backbone on the last ``nights`` raw/ dumps and refit with it.

    The new version always becomes ``challenger``; ``champion`` moves only through the
    refit's gate. ``recipe`` / ``ssl`` override the continued-training recipe (e.g.
    ``{"steps": 40}``), ``fit`` and the gate thresholds are the refit's.
    """
    settings = get_settings()
    params = AdaptParams.build(nights, end_date, settings.timezone, recipe, ssl)
    logger = get_run_logger()
    bucket = BucketRef.from_settings(settings)
    registry = Registry.from_settings(settings)
    databar = {"top": databar_top, "bottom": databar_bottom}

    parent = resolve_parent_backbone(registry)
    if parent.random_weights:
        logger.warning(
            "champion %s has a RANDOM-WEIGHT backbone: the adapted one starts from noise, and "
            "its figures are a plumbing check (tag semclip.adapt.parent_random_weights)",
            parent.version,
        )
    shots = load_confirmed_shots(bucket).shots
    if not shots:
        raise RefitError(f"no confirmed shots under {bucket.url}/confirmed/: nothing to fit on")
    hashed, _ = hash_confirmed_shots(bucket, shots)
    hashed, _ = drop_conflicting_shots(hashed)  # as the refit does: the same hold-out
    split = split_confirmed_shots(hashed, settings.holdout_fraction, settings.support_cap_per_class)
    holdout = sorted({s.sha256 for s in split.holdout if s.sha256})
    run_id = current_flow_run_id() or "local"
    with hold_slot(
        GPU_LIMIT,
        lease_s=settings.slot_lease_s,
        timeout_s=settings.slot_timeout_s,
        flow_run_id=current_flow_run_id(),
    ):
        adapted = adapt_backbone(
            bucket,
            parent,
            first=params.first,
            last=params.last,
            exclude_hashes=holdout,
            out_dir=str(settings.home / "backbones" / "adapted" / f"v{parent.version}-{run_id}"),
            work_dir=str(settings.home / "work" / "adapt" / run_id),
            recipe=params.recipe,
            ssl=params.ssl,
            databar=databar,
            device=device,
        )
    logger.info(
        "adapted %s on %d images (%d hold-out images left out)",
        parent.name,
        adapted.n_unlabeled,
        adapted.n_excluded,
    )
    refitted = refit(
        backbone=adapted.backbone,
        pretrained="none",  # the folder carries its weights, whatever SEMCLIP_PRETRAINED says
        databar_top=databar_top,
        databar_bottom=databar_bottom,
        fit=fit,
        device=device,
        gate_min_f1_gain=gate_min_f1_gain,
        gate_max_pixel_f1_drop=gate_max_pixel_f1_drop,
    )
    lineage = {
        "parent_version": parent.version,
        "parent_backbone": parent.name,
        "parent_random_weights": parent.random_weights,
        "backbone": adapted.backbone,
        "backbone_sha256": adapted.weights_sha256,
        "n_unlabeled": adapted.n_unlabeled,
        "n_excluded_holdout": adapted.n_excluded,
        "nights": params.nights,
        "dates": adapted.dates,
        "unlabeled_uri": adapted.uri,
        "steps": adapted.steps,
        "flow_run_id": run_id,
    }
    record_adapt_lineage(registry, refitted.version, lineage, adapted.folder)
    report = AdaptReport(
        parent_version=parent.version,
        version=refitted.version,
        backbone=adapted.backbone,
        backbone_sha256=adapted.weights_sha256,
        n_unlabeled=adapted.n_unlabeled,
        n_excluded=adapted.n_excluded,
        nights=params.nights,
        dates=adapted.dates,
        unlabeled_uri=adapted.uri,
        holdout_unlabeled_overlap=refitted.holdout_unlabeled_overlap,
        refit=refitted,
    )
    create_markdown_artifact(report.markdown(), key="adapt-report")
    return report
