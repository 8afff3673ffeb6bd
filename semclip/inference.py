"""Heads + cached features → class probabilities and defect maps (paper eq. 9-23).

One code path serves prediction and calibration, so τ and α are chosen on exactly the maps and
probabilities that production will threshold and fuse.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from semclip.config import Calibration
from semclip.features import Features, surgery_maps
from semclip.heads import SemclipHeads
from semclip.maps import class_logits, gaussian_smooth, patch_grid, smoothing_sigma, upsample


@dataclass(frozen=True)
class HeadOutputs:
    """Per-image results at model resolution S for a batch of B images."""

    probs: torch.Tensor  # (B, K) fused P = α P_clip + (1 − α) P_head
    p_clip: torch.Tensor  # (B, K) zero-shot branch (transformation layers or CLIP's proj)
    p_clip_proj: torch.Tensor  # (B, K) CLIP's own ln_post/proj on the last CLS (untrained)
    p_head: torch.Tensor  # (B, K) trained classification head
    score_map: torch.Tensor  # (B, S, S) smoothed overall defect map S in [0, 1]
    class_map: torch.Tensor  # (B, S, S) per-pixel argmax over defect classes (class indices)


@torch.no_grad()
def run_heads(
    heads: SemclipHeads,
    feats: Features,
    calibration: Calibration,
    good_index: int,
    size: int,
    *,
    surgery: torch.Tensor | None = None,
) -> HeadOutputs:
    """Fused probabilities and maps for a batch of cached features.

    `surgery` (B, m, P) may be passed when precomputed (it depends only on features and text).
    """
    device = heads.text.device
    tokens = feats.tokens.to(device).float()  # (B, m, 1+P, width)
    vv = feats.vv.to(device).float()  # (B, m, 1+P, embed)
    if surgery is None:
        surgery = surgery_maps(vv, heads.text, good_index)
    surgery = surgery.to(device)

    class_probs = vanilla_stage_probs(heads, tokens, size)  # (B, m, K, S, S)
    s_v = 1.0 - class_probs[:, :, good_index].mean(dim=1)  # (B, S, S)
    s_n = upsample(patch_grid(surgery.mean(dim=1)[..., None]), size)[:, 0]  # (B, S, S)
    score = gaussian_smooth((s_v + s_n) / 2, smoothing_sigma(size)).clamp(0.0, 1.0)

    defect_probs = class_probs.mean(dim=1).clone()  # (B, K, S, S)
    defect_probs[:, good_index] = -1.0
    class_map = defect_probs.argmax(dim=1)

    p_clip_proj = class_logits(vv[:, -1, 0], heads.text).softmax(dim=-1)
    p_clip = (
        p_clip_proj
        if calibration.pclip_source == "clip"
        else (heads.clip_logits(tokens).softmax(dim=-1))
    )
    p_head = heads.head_logits(tokens).softmax(dim=-1)
    probs = calibration.alpha * p_clip + (1.0 - calibration.alpha) * p_head
    return HeadOutputs(probs, p_clip, p_clip_proj, p_head, score, class_map)


def vanilla_stage_probs(heads: SemclipHeads, tokens: torch.Tensor, size: int) -> torch.Tensor:
    """Per-stage per-pixel class probabilities (B, m, K, S, S): logits upsampled, then softmax."""
    logits = heads.patch_logits(tokens)  # (B, m, P, K)
    b, m = logits.shape[:2]
    grid = patch_grid(logits.flatten(0, 1))  # (B·m, K, g, g)
    probs = upsample(grid, size).softmax(dim=1)
    return probs.view(b, m, *probs.shape[1:])
