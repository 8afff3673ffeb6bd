"""Heads + cached features → class probabilities and defect maps (paper eq. 9-23).

One code path serves prediction and calibration, so τ and α are chosen on exactly the maps and
probabilities that production will threshold and fuse.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from semclip.config import Calibration
from semclip.features import Features, surgery_maps
from semclip.heads import SemclipHeads, fuse_probs
from semclip.maps import class_logits, gaussian_smooth, patch_grid, smoothing_sigma, upsample
from semclip.membank import PatchMemoryBank
from semclip.region_head import fuse_region, reads_self_map, region_log_probs, region_maps
from semclip.selfsim import anomaly as selfsim_anomaly


@dataclass(frozen=True)
class HeadOutputs:
    """Per-image results at model resolution S for a batch of B images."""

    probs: torch.Tensor  # (B, K) fused P ∝ α_c P_clip + (1 − α_c) P_head
    p_clip: torch.Tensor  # (B, K) zero-shot branch (transformation layers or CLIP's proj)
    p_clip_proj: torch.Tensor  # (B, K) CLIP's own ln_post/proj on the last CLS (untrained)
    p_head: torch.Tensor  # (B, K) trained classification head
    score_map: torch.Tensor  # (B, S, S) smoothed overall defect map S in [0, 1]
    class_map: torch.Tensor  # (B, S, S) per-pixel argmax over defect classes (class indices)
    clip_map: torch.Tensor | None = None  # (B, S, S) smoothed (S_v + S_n) / 2, before the bank
    membank_map: torch.Tensor | None = None  # (B, S, S) smoothed memory-bank map, when computed
    cls_embedding: torch.Tensor | None = None  # (B, embed) unit CLS in the joint space (drift)
    selfsim_map: torch.Tensor | None = None  # (B, S, S) smoothed self-similarity map, when used
    p_region: torch.Tensor | None = None  # (B, K) the region head's probabilities, when used


@torch.no_grad()
def run_heads(
    heads: SemclipHeads,
    feats: Features,
    calibration: Calibration,
    good_index: int,
    size: int,
    *,
    surgery: torch.Tensor | None = None,
    membank: PatchMemoryBank | None = None,
    membank_exclude: torch.Tensor | None = None,
) -> HeadOutputs:
    """Fused probabilities and maps for a batch of cached features.

    `surgery` (B, m, P) may be passed when precomputed (it depends only on features and text).
    With a `membank` and β = calibration.membank_weight > 0, S = (1 − β) S_clip + β S_knn;
    `membank_exclude` (B,) names each image's own unit in the bank (leave-one-out on shots).
    With γ = calibration.selfsim_weight > 0 and features that carry `selfsim`, that S becomes
    (1 − γ) S + γ S_self (`semclip.selfsim`: what has no twin in its own image).
    With a region head and w = calibration.region_weight > 0, the probabilities become
    P ∝ P_fused · P_region^w, P_region read from the peak region (`semclip.region_head`) of S,
    of S_self alone, or of both (calibration.region_map; none on S_self without `selfsim`).
    """
    device = heads.text.device
    tokens = feats.tokens.to(device).float()  # (B, m, 1+P, width)
    vv = feats.vv.to(device).float()  # (B, m, 1+P, embed)
    if surgery is None:
        surgery = surgery_maps(vv, heads.text, good_index, calibration.surgery_scale)
    surgery = surgery.to(device)
    sigma = smoothing_sigma(size)

    class_probs = vanilla_stage_probs(heads, tokens, size)  # (B, m, K, S, S)
    s_v = 1.0 - class_probs[:, :, good_index].mean(dim=1)  # (B, S, S)
    s_n = upsample(patch_grid(surgery.mean(dim=1)[..., None]), size)[:, 0]  # (B, S, S)
    clip_map = gaussian_smooth((s_v + s_n) / 2, sigma).clamp(0.0, 1.0)
    score, knn_map = clip_map, None
    beta = float(calibration.membank_weight)
    if membank is not None and beta > 0:
        knn = membank.anomaly(membank.patch_tokens(tokens, vv), membank_exclude)  # (B, P)
        knn_map = gaussian_smooth(upsample(patch_grid(knn[..., None]), size)[:, 0], sigma)
        knn_map = knn_map.clamp(0.0, 1.0)
        score = (1.0 - beta) * clip_map + beta * knn_map
    gamma = float(calibration.selfsim_weight)
    self_map = None
    region_on_self = calibration.region_weight > 0 and reads_self_map(calibration.region_map)
    if feats.selfsim is not None and (gamma > 0 or region_on_self):
        self_map = selfsim_map(feats.selfsim.to(device), calibration.selfsim_scale, size, sigma)
    if self_map is not None and gamma > 0:
        score = (1.0 - gamma) * score + gamma * self_map

    defect_probs = class_probs.mean(dim=1).clone()  # (B, K, S, S)
    defect_probs[:, good_index] = -1.0
    class_map = defect_probs.argmax(dim=1)

    probs, p_clip, p_clip_proj, p_head = class_probabilities(heads, tokens, vv, calibration)
    on = region_maps(calibration.region_map, score, self_map)
    log_q = region_log_probs(calibration, feats.thumb, on)
    if log_q is not None:  # P ∝ P_fused · P_region^w: the found region's shape names the class
        probs = fuse_region(probs, log_q, calibration.region_weight)
    cls_embedding = torch.nn.functional.normalize(vv[:, -1, 0].float(), dim=-1)  # (B, embed)
    return HeadOutputs(
        probs,
        p_clip,
        p_clip_proj,
        p_head,
        score,
        class_map,
        clip_map,
        knn_map,
        cls_embedding,
        self_map,
        log_q.exp() if log_q is not None else None,
    )


def selfsim_map(distances: torch.Tensor, scale: float, size: int, sigma: float) -> torch.Tensor:
    """Self-similarity distances (B, g, g) → smoothed anomaly map (B, S, S) in [0, 1)."""
    a = selfsim_anomaly(distances, scale)[:, None]  # (B, 1, g, g)
    return gaussian_smooth(upsample(a, size)[:, 0], sigma).clamp(0.0, 1.0)


def class_probabilities(
    heads: SemclipHeads, tokens: torch.Tensor, vv: torch.Tensor, calibration: Calibration
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fused P, P_clip, CLIP's own P_clip, P_head), (B, K) each, from stage tokens (eq. 18-23).

    Shared by `run_heads` and the ONNX export, so both give the production probabilities.
    """
    p_clip_proj = class_logits(vv[:, -1, 0], heads.text).softmax(dim=-1)
    p_clip = (
        p_clip_proj
        if calibration.pclip_source == "clip"
        else (heads.clip_logits(tokens).softmax(dim=-1))
    )
    p_head = heads.head_logits(tokens).softmax(dim=-1)
    alphas = torch.tensor(calibration.alphas(p_head.shape[1]))
    probs = fuse_probs(p_clip, p_head, alphas)
    return probs, p_clip, p_clip_proj, p_head


def patch_clip_map(
    heads: SemclipHeads, tokens: torch.Tensor, surgery: torch.Tensor, good_index: int
) -> torch.Tensor:
    """The CLIP defect map at feature resolution (B, P): (S_v + S_n) / 2 before upsampling.

    S_v is 1 − P(good) of the per-stage patch softmax averaged over stages, S_n the stage mean
    of the surgery maps (B, m, P). `run_heads` upsamples the logits before the softmax and
    smooths at model resolution; this is the map an exported model returns, per patch.
    """
    probs = heads.patch_logits(tokens).softmax(dim=-1)  # (B, m, P, K)
    s_v = 1.0 - probs[..., good_index].mean(dim=1)
    return ((s_v + surgery.mean(dim=1)) / 2).clamp(0.0, 1.0)


def vanilla_stage_probs(heads: SemclipHeads, tokens: torch.Tensor, size: int) -> torch.Tensor:
    """Per-stage per-pixel class probabilities (B, m, K, S, S): logits upsampled, then softmax."""
    logits = heads.patch_logits(tokens)  # (B, m, P, K)
    b, m = logits.shape[:2]
    grid = patch_grid(logits.flatten(0, 1))  # (B·m, K, g, g)
    probs = upsample(grid, size).softmax(dim=1)
    return probs.view(b, m, *probs.shape[1:])
