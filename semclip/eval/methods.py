"""SEM-CLIP and its ablations (paper Table 3) as evaluation methods.

One fit per split serves `semclip`, `-no-transform`, `-no-pclip`, `-no-head`, `-no-membank`,
`-no-selfsim`, `-no-region` and `-global-alpha`: they differ from the fitted model only after
fitting (training is deterministic for a seed, and the classification head's loss never reaches
W_i), so refitting would give the same weights.
`-generic-prompts` and `-last-stage` need fits of their own.

Last stage: the paper's "w/o multi-layer" uses only the last encoding block's outputs. We take
stage m of the cached 4-stage features (its vanilla tokens and its V-V sum over layers
e_{m-1}+1..e_m), not a 1-stage encoder: that is the paper's definition, and it needs no extra
backbone pass (the cache is keyed by the stage split).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from semclip.config import Calibration
from semclip.eval.context import EvalContext
from semclip.eval.protocol import Split
from semclip.eval.registry import MethodOutput, register
from semclip.feature_cache import FeatureCache
from semclip.features import Features
from semclip.heads import SemclipHeads
from semclip.inference import run_heads
from semclip.membank import PatchMemoryBank
from semclip.model import SemclipModel


def last_stage(feats: Features) -> Features:
    """Only the last stage of cached features: (N, m, ...) → (N, 1, ...)."""
    return Features(feats.tokens[:, -1:], feats.vv[:, -1:], feats.selfsim, feats.thumb)


class LastStageCache:
    """A view of a FeatureCache that hands out last-stage features (hits/misses stay counted)."""

    def __init__(self, inner: FeatureCache) -> None:
        self.inner = inner

    def get(self, keys: Sequence[str | None], compute: Callable[[list[int]], Features]) -> Features:
        return last_stage(self.inner.get(keys, compute))


@dataclass
class SemclipScorer:
    """Fitted heads + calibration applied to cached features, exactly as prediction does."""

    heads: SemclipHeads
    calibration: Calibration
    good_index: int
    size: int
    only_last_stage: bool = False
    membank: PatchMemoryBank | None = None

    @property
    def tau(self) -> float | None:
        return float(self.calibration.tau)

    def score(self, feats: Features) -> MethodOutput:
        feats = last_stage(feats) if self.only_last_stage else feats
        out = run_heads(
            self.heads, feats, self.calibration, self.good_index, self.size, membank=self.membank
        )
        probs = out.probs.float().cpu()
        return MethodOutput(probs, 1.0 - probs[:, self.good_index], out.score_map.float().cpu())


def fitted(ctx: EvalContext, split: Split, variant: str = "base") -> SemclipModel:
    """SEM-CLIP fitted on the split's support (memoised per split and variant)."""

    def make() -> SemclipModel:
        config = replace(
            ctx.fit_config, seed=split.seed, generic_prompts=variant == "generic-prompts"
        )
        cache = LastStageCache(ctx.cache) if variant == "last-stage" else ctx.cache
        return SemclipModel.fit(
            ctx.backbone,
            split.support,
            config=config,
            prompts=ctx.prompts,
            databar=ctx.databar,
            cache=cache,  # type: ignore[arg-type]  # LastStageCache quacks like FeatureCache
        )

    return ctx.memo((split.shots, split.seed, variant), make)


def _scorer(ctx: EvalContext, model: SemclipModel, **changes: object) -> SemclipScorer:
    calibration = replace(model.calibration, **changes) if changes else model.calibration
    only_last = model.heads.n_stages == 1 and ctx.encoded.feats.tokens.shape[1] > 1
    return SemclipScorer(
        model.heads, calibration, model.good_index, ctx.size, only_last, model.membank
    )


@register("semclip", "SEM-CLIP: W_i + head fitted on the shots (×8 flips/rotations), τ/α by CV")
def semclip(ctx: EvalContext, split: Split) -> SemclipScorer:
    return _scorer(ctx, fitted(ctx, split))


@register(
    "semclip-no-transform",
    "w/o transformation layer: CLIP's ln_post/proj in place of every W_i (head kept)",
)
def semclip_no_transform(ctx: EvalContext, split: Split) -> SemclipScorer:
    model = fitted(ctx, split)
    heads = copy.deepcopy(model.heads)
    proj = ctx.backbone.model.visual.proj.detach().float()  # (width, embed)
    with torch.no_grad():
        for layer in heads.transforms:
            layer.weight.copy_(proj.T)
            layer.bias.zero_()
    scorer = _scorer(ctx, model)
    scorer.heads = heads
    return scorer


@register("semclip-generic-prompts", "w/o detailed prompts: generic defect/damage/flaw states")
def semclip_generic_prompts(ctx: EvalContext, split: Split) -> SemclipScorer:
    return _scorer(ctx, fitted(ctx, split, "generic-prompts"))


@register("semclip-no-pclip", "w/o P_clip: α = 0, classification by the trained head only")
def semclip_no_pclip(ctx: EvalContext, split: Split) -> SemclipScorer:
    # class_alpha None: a per-class α (class-aware fusion) would otherwise win over α = 0
    return _scorer(ctx, fitted(ctx, split), alpha=0.0, class_alpha=None)


@register("semclip-no-head", "w/o P_head: α = 1, classification by text prototypes only")
def semclip_no_head(ctx: EvalContext, split: Split) -> SemclipScorer:
    # every class on P_clip, unprompted ones too (their generic prompts): the ablation's meaning
    return _scorer(ctx, fitted(ctx, split), alpha=1.0, class_alpha=None)


@register(
    "semclip-last-stage",
    "w/o multi-layer: fitted on the last stage's vanilla/V-V tokens and CLS only",
)
def semclip_last_stage(ctx: EvalContext, split: Split) -> SemclipScorer:
    return _scorer(ctx, fitted(ctx, split, "last-stage"))


@register(
    "semclip-no-membank",
    "w/o memory bank: defect map from the CLIP maps alone (β = 0; α, τ as fitted)",
)
def semclip_no_membank(ctx: EvalContext, split: Split) -> SemclipScorer:
    return _scorer(ctx, fitted(ctx, split), membank_weight=0.0)


@register(
    "semclip-no-selfsim",
    "w/o self-similarity: defect map without the within-image twin distance (γ = 0)",
)
def semclip_no_selfsim(ctx: EvalContext, split: Split) -> SemclipScorer:
    return _scorer(ctx, fitted(ctx, split), selfsim_weight=0.0)


@register(
    "semclip-no-region",
    "w/o region head: classes from P_fused alone, not the found region's shape (w = 0)",
)
def semclip_no_region(ctx: EvalContext, split: Split) -> SemclipScorer:
    return _scorer(ctx, fitted(ctx, split), region_weight=0.0)


@register(
    "semclip-global-alpha",
    "w/o class-aware fusion: the fitted α for every class, prompted or not",
)
def semclip_global_alpha(ctx: EvalContext, split: Split) -> SemclipScorer:
    return _scorer(ctx, fitted(ctx, split), class_alpha=None)
