"""Baselines on the same cached features: CLIP zero-shot, WinCLIP (zero- and few-shot), PatchCore.

All run on the backbone outputs SEM-CLIP caches, so a baseline costs no backbone pass.

CLIP zero-shot: nothing fitted. Classification is CLIP's own (the paper's eq. 10 with CLIP's
ln_post/proj): the last-stage image embedding against every class's prompt prototype; the image
anomaly score is 1 − P(good); the map is the same multi-class read of the last stage's V-V patch
tokens. It is the floor every few-shot method has to clear, for classification as well.

WinCLIP (Jeong et al., CVPR 2023), adapted: its window forward passes (the ViT re-run on
masked windows) cannot come from a feature cache, so patch-level scores use the V-V tokens of
the last stage (`Features.vv[:, -1]`: ln_post/proj applied to the V-V path, CLIP-AD's fix for
CLIP's "opposite" patch similarities; vanilla patch tokens through proj do not localise). The
image score uses CLIP's own image embedding (last CLS through ln_post/proj). Text: a binary
prompt ensemble from our prompt file (templates × states), normal = `good`, anomalous = the
mean of the defect classes' prototypes. WinCLIP has no multi-class classifier, so its
classification metrics are null. The few-shot variant (WinCLIP+) adds a memory of the good
shots' patch tokens; its map and image score average the language and the vision scores.

PatchCore (Roth et al., CVPR 2022), adapted: a memory of the good shots' patch tokens from all
stages (ln_post-normalised vanilla tokens, 3×3 neighbourhood-averaged, each stage L2-normalised,
concatenated); the map is the nearest-neighbour distance; no coreset (≤ a few thousand
patches at these k). Classification: the label of the nearest support shot by multi-stage CLS
cosine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from semclip.eval.context import EvalContext
from semclip.eval.protocol import Split
from semclip.eval.registry import MethodOutput, register
from semclip.features import Features
from semclip.maps import LOGIT_SCALE, class_logits, gaussian_smooth, patch_grid, smoothing_sigma
from semclip.maps import upsample as upsample_grid


def patch_map(values: torch.Tensor, size: int) -> torch.Tensor:
    """Patch scores (B, P) → smoothed (B, S, S) map, as SEM-CLIP's maps are finished."""
    grid = upsample_grid(patch_grid(values[..., None]), size)[:, 0]  # (B, S, S)
    return gaussian_smooth(grid, smoothing_sigma(size)).clamp(0.0, 1.0)


def binary_text(ctx: EvalContext) -> torch.Tensor:
    """(2, D) prototypes: normal (good), anomalous (mean of the defect class prototypes)."""
    text = F.normalize(ctx.text(), dim=-1)
    defects = torch.cat([text[: ctx.good_index], text[ctx.good_index + 1 :]])
    anomalous = F.normalize(defects.mean(dim=0), dim=-1)
    return torch.stack([text[ctx.good_index], anomalous])


def anomaly_prob(z: torch.Tensor, text2: torch.Tensor) -> torch.Tensor:
    """P(anomalous) of embeddings z (..., D) against binary prototypes (2, D) → (...)."""
    return class_logits(z, text2).softmax(dim=-1)[..., 1]


def support_rows(ctx: EvalContext, split: Split, label: str | None = None) -> list[int]:
    """Encoded rows of the split's support (of one label when given)."""
    rows = ctx.encoded.rows(split.support)
    if label is None:
        return rows
    return [r for r in rows if ctx.encoded.samples[r].label == label]


@dataclass
class WinclipScorer:
    """Zero-shot WinCLIP; with `memory`, WinCLIP+ (nearest good-shot patch)."""

    text2: torch.Tensor  # (2, embed)
    size: int
    memory: torch.Tensor | None = None  # (M, embed) normalised good-shot patch tokens

    @property
    def tau(self) -> float | None:
        return None

    def score(self, feats: Features) -> MethodOutput:
        device = self.text2.device
        vv = feats.vv[:, -1].to(device).float()  # (B, 1+P, embed), last stage
        image = anomaly_prob(vv[:, 0], self.text2)  # (B,)
        patches = anomaly_prob(vv[:, 1:], self.text2)  # (B, P)
        if self.memory is not None:
            sim = F.normalize(vv[:, 1:], dim=-1) @ self.memory.T  # (B, P, M)
            few = 0.5 * (1.0 - sim.amax(dim=-1))  # (B, P) in [0, 1]
            patches = 0.5 * (patches + few)
            image = 0.5 * (image + few.amax(dim=-1))
        return MethodOutput(None, image.cpu(), patch_map(patches, self.size).cpu())


@dataclass
class ClipZeroScorer:
    """CLIP zero-shot multi-class: class prototypes on the image embedding and V-V patches."""

    text: torch.Tensor  # (K, embed) class prototypes
    good_index: int
    size: int

    @property
    def tau(self) -> float | None:
        return None

    def score(self, feats: Features) -> MethodOutput:
        vv = feats.vv[:, -1].to(self.text.device).float()  # (B, 1+P, embed), last stage
        probs = class_logits(vv[:, 0], self.text).softmax(dim=-1)  # (B, K)
        patches = 1.0 - class_logits(vv[:, 1:], self.text).softmax(dim=-1)[..., self.good_index]
        anomaly = 1.0 - probs[:, self.good_index]
        return MethodOutput(probs.cpu(), anomaly.cpu(), patch_map(patches, self.size).cpu())


@register("clip-zero", "CLIP zero-shot: class prompts on CLIP's image embedding / V-V patches")
def clip_zero(ctx: EvalContext, split: Split) -> ClipZeroScorer:
    return ClipZeroScorer(ctx.text(), ctx.good_index, ctx.size)


@register("winclip-zero", "WinCLIP zero-shot: binary prompt ensemble on last-stage V-V tokens")
def winclip_zero(ctx: EvalContext, split: Split) -> WinclipScorer:
    return WinclipScorer(binary_text(ctx), ctx.size)


@register("winclip-few", "WinCLIP+: zero-shot scores averaged with a good-shot patch memory")
def winclip_few(ctx: EvalContext, split: Split) -> WinclipScorer:
    rows = support_rows(ctx, split, "good")
    vv = ctx.encoded.feats.vv[rows, -1, 1:].to(ctx.device).float()  # (k, P, embed)
    memory = F.normalize(vv.flatten(0, 1), dim=-1)
    return WinclipScorer(binary_text(ctx), ctx.size, memory)


def patchcore_features(tokens: torch.Tensor) -> torch.Tensor:
    """(B, m, 1+P, width) ln_post tokens → (B, P, m·width) unit-norm multi-stage patch features."""
    b, m = tokens.shape[:2]
    patches = F.normalize(tokens[:, :, 1:].float(), dim=-1).flatten(0, 1)  # (B·m, P, width)
    grid = patch_grid(patches)  # (B·m, width, g, g)
    pooled = F.avg_pool2d(grid, 3, stride=1, padding=1, count_include_pad=False)
    pooled = F.normalize(pooled.flatten(2).transpose(1, 2), dim=-1)  # (B·m, P, width)
    pooled = pooled.view(b, m, *pooled.shape[1:]).permute(0, 2, 1, 3)  # (B, P, m, width)
    return pooled.flatten(2) / math.sqrt(m)


def cls_features(tokens: torch.Tensor) -> torch.Tensor:
    """(B, m, 1+P, width) → (B, m·width) unit-norm concatenated stage CLS tokens."""
    cls = F.normalize(tokens[:, :, 0].float(), dim=-1)
    return cls.flatten(1) / math.sqrt(tokens.shape[1])


@dataclass
class PatchcoreScorer:
    """Nearest-neighbour patch distance to the good shots; nearest labelled shot for the class."""

    memory: torch.Tensor  # (M, m·width) good-shot patch features
    shot_cls: torch.Tensor  # (n_shots, m·width)
    shot_labels: torch.Tensor  # (n_shots,) class indices
    n_classes: int
    size: int

    @property
    def tau(self) -> float | None:
        return None

    def score(self, feats: Features) -> MethodOutput:
        device = self.memory.device
        tokens = feats.tokens.to(device)
        f = patchcore_features(tokens)  # (B, P, D)
        sq = (2.0 - 2.0 * (f @ self.memory.T).amax(dim=-1)).clamp_min(0.0)  # nearest, unit vectors
        patches = sq.sqrt() / 2.0  # (B, P) distance in [0, 1]
        score_map = patch_map(patches, self.size)
        sim = cls_features(tokens) @ self.shot_cls.T  # (B, n_shots)
        per_class = torch.full((sim.shape[0], self.n_classes), -2.0, device=device)
        per_class.scatter_reduce_(
            1, self.shot_labels.expand_as(sim), sim, reduce="amax", include_self=True
        )
        probs = (LOGIT_SCALE * per_class).softmax(dim=-1)  # only its argmax is used
        return MethodOutput(probs.cpu(), score_map.amax(dim=(1, 2)).cpu(), score_map.cpu())


@register("patchcore", "PatchCore: k-NN on multi-stage patch tokens; class of nearest shot (CLS)")
def patchcore(ctx: EvalContext, split: Split) -> PatchcoreScorer:
    device = ctx.device
    good = support_rows(ctx, split, "good")
    tokens = ctx.encoded.feats.tokens[good].to(device)
    memory = patchcore_features(tokens).flatten(0, 1)  # (k·P, D)
    rows = support_rows(ctx, split)
    shots = ctx.encoded.feats.tokens[rows].to(device)
    labels = torch.tensor(
        [ctx.classes.index(ctx.encoded.samples[r].label) for r in rows], device=device
    )
    return PatchcoreScorer(memory, cls_features(shots), labels, len(ctx.classes), ctx.size)
