"""Few-shot fitting of the heads on cached features, and calibration of τ and α.

Backbone and text tower are frozen: the backbone ran once per support image and augmentation
(see features.py); here only W_1..W_m and the classification head are trained, with focal + dice
on the per-stage defect maps and cross-entropy on the head (Adam, as the paper).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from semclip.config import Calibration, FitConfig
from semclip.features import Features
from semclip.heads import SemclipHeads
from semclip.inference import run_heads
from semclip.metrics import f1_max

log = logging.getLogger(__name__)

ALPHA_GRID = tuple(round(a, 2) for a in np.linspace(0.0, 1.0, 21))


@dataclass
class SupportTensors:
    """Cached features of the support set, one entry per image × augmentation."""

    feats: Features  # N entries
    labels: torch.Tensor  # (N,) class index
    patch_target: torch.Tensor  # (N, P) defect coverage of each patch in [0, 1]
    has_mask: torch.Tensor  # (N,) bool: pixel supervision known (good, or defect with mask)
    image_index: torch.Tensor  # (N,) which support image an entry came from
    aug_index: torch.Tensor  # (N,) augmentation; 0 is the image itself
    masks: torch.Tensor  # (n_images, S, S) model-resolution masks of the un-augmented images
    image_has_mask: torch.Tensor  # (n_images,) bool
    groups: list[str]  # per support image: fold unit (its group, or its own id)

    def subset(self, keep: torch.Tensor) -> SupportTensors:
        """Entries whose mask `keep` (N,) is True; per-image tensors are kept whole."""
        return SupportTensors(
            self.feats[keep],
            self.labels[keep],
            self.patch_target[keep],
            self.has_mask[keep],
            self.image_index[keep],
            self.aug_index[keep],
            self.masks,
            self.image_has_mask,
            self.groups,
        )


def n_steps(n_entries: int, config: FitConfig) -> int:
    """Optimiser steps: `epochs` passes over the entries, within [min_steps, max_steps]."""
    steps = math.ceil(config.epochs * n_entries / config.batch_size)
    return int(min(config.max_steps, max(config.min_steps, steps)))


def fit_heads(
    support: SupportTensors,
    text: torch.Tensor,
    good_index: int,
    config: FitConfig,
    proj_init: torch.Tensor,
    device: torch.device,
) -> SemclipHeads:
    """Train W_1..W_m and the head on the support entries; deterministic for a seed."""
    torch.manual_seed(config.seed)
    n_stages, width = support.feats.tokens.shape[1], support.feats.tokens.shape[-1]
    heads = SemclipHeads(n_stages, width, text.shape[1], text, proj_init).to(device)
    opt = torch.optim.Adam(heads.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    n = len(support.feats)
    steps = n_steps(n, config)
    order = torch.empty(0, dtype=torch.long)
    heads.train()
    for _ in range(steps):
        if len(order) < min(config.batch_size, n):
            order = torch.cat([order, torch.randperm(n, generator=gen)])
        idx, order = order[: config.batch_size], order[config.batch_size :]
        patches = sample_patches(support.patch_target.shape[1], config.train_patches, gen)
        loss, _ = support_loss(heads, support, idx, patches, good_index, config, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    heads.eval()
    return heads


def sample_patches(n_patches: int, n_sample: int, gen: torch.Generator) -> torch.Tensor:
    """Random patch indices for one step (all when n_sample is 0 or ≥ P), sorted."""
    if n_sample <= 0 or n_sample >= n_patches:
        return torch.arange(n_patches)
    return torch.randperm(n_patches, generator=gen)[:n_sample].sort().values


def support_loss(
    heads: SemclipHeads,
    support: SupportTensors,
    idx: torch.Tensor,
    patches: torch.Tensor,
    good_index: int,
    config: FitConfig,
    device: torch.device,
) -> tuple[torch.Tensor, dict[str, float]]:
    """focal + dice on per-stage patch class maps (entries with known pixels), CE on the head.

    Only the sampled `patches` enter the pixel losses: the transformation layers' cost is per
    token, and a random subset each step sees every patch over the epochs.
    """
    tokens = support.feats.tokens[idx][
        :, :, torch.cat([torch.zeros(1, dtype=torch.long), patches + 1])
    ]
    tokens = tokens.to(device).float()  # (B, m, 1+p, width), CLS first
    labels = support.labels[idx].to(device)
    ce = F.cross_entropy(heads.head_logits(tokens), labels)
    pix = support.has_mask[idx].to(device)
    if not bool(pix.any()):
        return config.ce_weight * ce, {"ce": ce.item()}
    logp = heads.patch_logits(tokens[pix]).log_softmax(dim=-1)  # (b, m, P, K)
    frac = support.patch_target[idx][:, patches].to(device)[pix]  # (b, p)
    target = torch.zeros_like(logp[:, 0])  # (b, P, K) soft per-patch class distribution
    target[..., good_index] = 1.0 - frac
    target.scatter_add_(
        -1, labels[pix][:, None, None].expand(-1, frac.shape[1], 1), frac[..., None]
    )
    target = target[:, None]  # broadcast over stages
    p = logp.exp()
    focal = -(target * (1.0 - p) ** config.focal_gamma * logp).sum(-1).mean()
    p_defect = 1.0 - p[..., good_index]  # (b, m, P)
    y = frac[:, None].expand_as(p_defect)
    dice = 1.0 - (2 * (p_defect * y).sum() + 1.0) / (p_defect.sum() + y.sum() + 1.0)
    loss = config.focal_weight * focal + config.dice_weight * dice + config.ce_weight * ce
    return loss, {"focal": focal.item(), "dice": dice.item(), "ce": ce.item()}


def calibrate(
    support: SupportTensors,
    text: torch.Tensor,
    good_index: int,
    config: FitConfig,
    proj_init: torch.Tensor,
    size: int,
    device: torch.device,
) -> Calibration:
    """Choose τ, α and the P_clip source by cross-validation over support images (k ≥ 2).

    The heads fit their own support images perfectly at small k, so τ and α are chosen on
    folds the heads did not see; folds are whole groups (or images), a fold holding one unit
    of every class where it can.
    """
    folds = assign_folds(support, config.cv_folds)
    if folds is None:
        return Calibration(alpha=config.default_alpha, method="default")
    held: list[tuple[torch.Tensor, ...]] = []
    for fold in range(int(folds.max()) + 1):
        test_images = torch.nonzero(folds == fold).flatten()
        in_test = torch.isin(support.image_index, test_images)
        heads = fit_heads(support.subset(~in_test), text, good_index, config, proj_init, device)
        test = support.subset(in_test & (support.aug_index == 0))
        out = run_heads(heads, test.feats, Calibration(), good_index, size)
        held.append(
            (
                test.image_index,
                test.labels,
                out.p_clip,
                out.p_clip_proj,
                out.p_head,
                out.score_map.cpu(),
            )
        )
    image_index, labels, p_tr, p_proj, p_head, score = (
        torch.cat(x) for x in zip(*held, strict=True)
    )
    source, p_clip = _choose_pclip(labels, p_tr.cpu(), p_proj.cpu())
    alpha, acc = _choose_alpha(labels, p_clip, p_head.cpu())
    tau, f1 = _choose_tau(support, image_index, score)
    details = {
        "folds": int(folds.max()) + 1,
        "cv_accuracy": acc,
        "cv_pixel_f1": f1,
        "n_held_out": len(labels),
    }
    return Calibration(
        tau=tau, alpha=alpha, pclip_source=source, method="cross-validation", details=details
    )


def assign_folds(support: SupportTensors, n_folds: int) -> torch.Tensor | None:
    """Fold of each support image (by group), or None when some class has a single unit."""
    image_labels = torch.zeros(len(support.groups), dtype=torch.long)
    image_labels[support.image_index] = support.labels
    folds = torch.full((len(support.groups),), -1, dtype=torch.long)
    for label in image_labels.unique():
        units = sorted({support.groups[i] for i in torch.nonzero(image_labels == label).flatten()})
        if len(units) < 2:
            return None
        k = min(n_folds, len(units))
        for j, unit in enumerate(units):
            for i in range(len(support.groups)):
                if support.groups[i] == unit and folds[i] < 0:
                    folds[i] = j % k
    return folds


def _choose_pclip(
    labels: torch.Tensor, p_transform: torch.Tensor, p_proj: torch.Tensor
) -> tuple[str, torch.Tensor]:
    """Keep whichever P_clip variant classifies the held-out images better (ties: transform)."""
    acc_t = float((p_transform.argmax(1) == labels).float().mean())
    acc_p = float((p_proj.argmax(1) == labels).float().mean())
    return ("clip", p_proj) if acc_p > acc_t else ("transform", p_transform)


def _choose_alpha(
    labels: torch.Tensor, p_clip: torch.Tensor, p_head: torch.Tensor
) -> tuple[float, float]:
    """α maximising held-out accuracy; ties broken by log-likelihood, then smaller α."""
    best = None
    for alpha in ALPHA_GRID:
        p = alpha * p_clip + (1 - alpha) * p_head
        acc = float((p.argmax(1) == labels).float().mean())
        nll = float(-torch.log(p.gather(1, labels[:, None]).clamp_min(1e-8)).mean())
        key = (acc, -nll, -alpha)
        if best is None or key > best[0]:
            best = (key, alpha, acc)
    return best[1], best[2]


def _choose_tau(
    support: SupportTensors, image_index: torch.Tensor, score: torch.Tensor
) -> tuple[float, float | None]:
    """τ with the best held-out pixel F1 over images with known masks (good ones included)."""
    known = support.image_has_mask[image_index]
    masks = support.masks[image_index[known]]
    if not bool(known.any()) or not bool(masks.any()):
        return default_tau(score[known] if bool(known.any()) else score), None
    f1, tau = f1_max(score[known].flatten().numpy(), masks.flatten().numpy() > 0.5)
    return float(tau), f1


def default_tau(good_scores: torch.Tensor) -> float:
    """τ without held-out masks: 0.5 (a defect class is more likely than good), raised to the
    99.9th percentile of scores on good pixels so clean background does not light up."""
    if good_scores.numel() == 0:
        return 0.5
    q = float(
        torch.quantile(
            good_scores.flatten().float()[:: max(1, good_scores.numel() // 2**20)], 0.999
        )
    )
    return float(min(0.95, max(0.5, q)))
