"""Few-shot fitting of the heads on cached features, the patch memory bank, and calibration.

Backbone and text tower are frozen: the backbone ran once per support image and augmentation
(see features.py); here only W_1..W_m and the classification head are trained, with focal + dice
on the per-stage defect maps and cross-entropy on the head (Adam, as the paper), until the
training loss stops falling. The memory bank stores the support's normal patches. τ, α, the
bank's weight β, the self-similarity map's weight γ, and the region head with its weight w are
chosen (and fitted) on folds the heads did not see.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from semclip.config import Calibration, FitConfig
from semclip.features import Features
from semclip.heads import SemclipHeads, fuse_probs, prototype_init
from semclip.inference import run_heads
from semclip.maps import map_quantile
from semclip.membank import PatchMemoryBank
from semclip.metrics import f1_max
from semclip.region_head import (
    REGION_GRID,
    REGION_MAPS,
    RegionHead,
    fuse_region,
    reads_self_map,
    region_features,
    region_maps,
)
from semclip.selfsim import normal_scale

log = logging.getLogger(__name__)

ALPHA_GRID = tuple(round(a, 2) for a in np.linspace(0.0, 1.0, 21))
BETA_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)  # memory-bank weights tried by cross-validation
# Self-similarity weights tried by cross-validation. Never 1: S_self cannot learn from the shots,
# and at k = 2 (8 support images held out fold by fold) the folds picked γ = 1 on one NEU-Seg
# seed, dropping its pAUROC from 86 to 68 (docs/offline-quality.md); 0.75 keeps a quarter of
# what the shots taught.
GAMMA_GRID = (0.0, 0.25, 0.5, 0.75)
PROTOTYPE_SCALE = 10.0  # logit scale of the prototype-initialised head
PLATEAU_EMA = 0.9  # smoothing of the training loss for the plateau stop
PLATEAU_REL = 0.01  # a new low must beat the best smoothed loss by this fraction...
PLATEAU_ABS = 1e-3  # ...and by this much (a separable loss creeps towards 0 for ever)


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
    """Optimiser step budget: `epochs` passes over the entries, within [min_steps, max_steps]."""
    steps = math.ceil(config.epochs * n_entries / config.batch_size)
    return int(min(config.max_steps, max(config.min_steps, steps)))


class Plateau:
    """Stops training once the smoothed loss made no new low (by PLATEAU_REL and PLATEAU_ABS)
    for `patience` steps."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.ema: float | None = None
        self.best = math.inf
        self.since_best = 0

    def update(self, loss: float) -> bool:
        """Record one step's loss; True when training should stop (never with patience 0)."""
        self.ema = loss if self.ema is None else PLATEAU_EMA * self.ema + (1 - PLATEAU_EMA) * loss
        if self.ema < min(self.best * (1 - PLATEAU_REL), self.best - PLATEAU_ABS):
            self.best, self.since_best = self.ema, 0
        else:
            self.since_best += 1
        return self.patience > 0 and self.since_best >= self.patience


def fit_heads(
    support: SupportTensors,
    text: torch.Tensor,
    good_index: int,
    config: FitConfig,
    proj_init: torch.Tensor,
    device: torch.device,
    history: list[dict[str, float]] | None = None,
) -> SemclipHeads:
    """Train W_1..W_m and the head on the support entries; deterministic for a seed.

    Runs `n_steps` steps at most and stops early on a training-loss plateau (after min_steps).
    Each step's losses are appended to `history` when given.
    """
    torch.manual_seed(config.seed)
    n_stages, width = support.feats.tokens.shape[1], support.feats.tokens.shape[-1]
    heads = SemclipHeads(n_stages, width, text.shape[1], text, proj_init).to(device)
    if config.head_init == "prototype":
        cls = support.feats.tokens[:, :, 0].to(device).float().flatten(1)  # (N, m·width)
        prototype_init(heads, cls, support.labels.to(device), PROTOTYPE_SCALE)
    opt = torch.optim.Adam(
        [
            {
                "params": list(heads.transforms.parameters()),
                "lr": config.lr,
                "weight_decay": config.weight_decay,
            },
            {
                "params": list(heads.classifier.parameters()),
                "lr": config.head_lr,
                "weight_decay": config.head_weight_decay,
            },
        ]
    )
    gen = torch.Generator().manual_seed(config.seed)
    n = len(support.feats)
    plateau = Plateau(config.plateau_patience)
    order = torch.empty(0, dtype=torch.long)
    heads.train()
    for step in range(n_steps(n, config)):
        if len(order) < min(config.batch_size, n):
            order = torch.cat([order, torch.randperm(n, generator=gen)])
        idx, order = order[: config.batch_size], order[config.batch_size :]
        patches = sample_patches(support.patch_target.shape[1], config.train_patches, gen)
        loss, parts = support_loss(heads, support, idx, patches, good_index, config, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if history is not None:
            history.append({"loss": loss.item(), **parts})
        if plateau.update(loss.item()) and step + 1 >= config.min_steps:
            break
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
    target = pixel_targets(frac, labels[pix], good_index, logp.shape[-1])[:, None]  # (b, 1, p, K)
    p = logp.exp()
    focal = -(target * (1.0 - p) ** config.focal_gamma * logp).sum(-1).mean()
    p_defect = 1.0 - p[..., good_index]  # (b, m, P)
    y = frac[:, None].expand_as(p_defect)
    if config.dice_per_image:  # one dice per entry and stage, averaged
        inter, total = (p_defect * y).sum(-1), p_defect.sum(-1) + y.sum(-1)  # (b, m)
        dice = (1.0 - (2 * inter + 1.0) / (total + 1.0)).mean()
    else:  # one dice over the whole batch
        dice = 1.0 - (2 * (p_defect * y).sum() + 1.0) / (p_defect.sum() + y.sum() + 1.0)
    loss = config.focal_weight * focal + config.dice_weight * dice + config.ce_weight * ce
    return loss, {"focal": focal.item(), "dice": dice.item(), "ce": ce.item()}


def pixel_targets(
    frac: torch.Tensor, labels: torch.Tensor, good_index: int, n_classes: int
) -> torch.Tensor:
    """Soft per-patch class distributions (b, p, K): an image's class with the patch's defect
    coverage `frac` (b, p), good with the rest (a good image's patches are all good)."""
    target = frac.new_zeros(*frac.shape, n_classes)
    target[..., good_index] = 1.0 - frac
    target.scatter_add_(-1, labels[:, None, None].expand(-1, frac.shape[1], 1), frac[..., None])
    return target


def calibrate(
    support: SupportTensors,
    text: torch.Tensor,
    good_index: int,
    config: FitConfig,
    proj_init: torch.Tensor,
    size: int,
    device: torch.device,
    clip_classes: torch.Tensor | None = None,
) -> Calibration:
    """Choose τ, α, β, γ, the P_clip source and the region head (with its weight w) by
    cross-validation over support images (k ≥ 2).

    The heads fit their own support images perfectly at small k, so τ, α, β and γ are chosen on
    folds the heads (and the fold's memory bank) did not see; folds are whole groups (or
    images), a fold holding one unit of every class where it can. `clip_classes` (K,) bool
    marks the classes P_clip may vote for (class-aware fusion); the others get α_c = 0.
    """
    scale = selfsim_scale(support, good_index) if config.selfsim else None
    base = Calibration(
        alpha=config.default_alpha,
        surgery_scale=config.surgery_scale,
        membank_weight=config.membank_weight if config.membank else 0.0,
        selfsim_weight=config.selfsim_weight if scale is not None else 0.0,
        selfsim_scale=scale if scale is not None else 1.0,
    )
    base = replace(base, class_alpha=class_alphas(base.alpha, clip_classes))
    folds = assign_folds(support, config.cv_folds)
    if folds is None:
        return base
    held: list[tuple[torch.Tensor, ...]] = []
    held_thumbs: list[torch.Tensor] = []  # every fold's, or none: all entries share one origin
    for fold in range(int(folds.max()) + 1):
        test_images = torch.nonzero(folds == fold).flatten()
        in_test = torch.isin(support.image_index, test_images)
        train = support.subset(~in_test)
        heads = fit_heads(train, text, good_index, config, proj_init, device)
        bank = build_membank(train, good_index, config, device)[0] if config.membank else None
        fold_scale = selfsim_scale(train, good_index) if scale is not None else None
        probe = replace(  # every part computed, on the fold's own scales
            base,
            class_alpha=None,
            membank_weight=1.0,
            selfsim_weight=1.0 if scale is not None else 0.0,
            selfsim_scale=fold_scale or base.selfsim_scale,
        )
        test = support.subset(in_test & (support.aug_index == 0))
        out = run_heads(heads, test.feats, probe, good_index, size, membank=bank)
        knn = out.membank_map if out.membank_map is not None else out.clip_map
        own = out.selfsim_map if out.selfsim_map is not None else out.clip_map
        if test.feats.thumb is not None:
            held_thumbs.append(test.feats.thumb.cpu())
        held.append(
            (
                test.image_index,
                test.labels,
                out.p_clip.cpu(),
                out.p_clip_proj.cpu(),
                out.p_head.cpu(),
                out.clip_map.cpu(),
                knn.cpu(),
                own.cpu(),
            )
        )
    image_index, labels, p_tr, p_proj, p_head, clip_map, knn_map, self_map = (
        torch.cat(x) for x in zip(*held, strict=True)
    )
    source, p_clip = _choose_pclip(labels, p_tr, p_proj)
    alpha, acc = _choose_alpha(labels, p_clip, p_head, clip_classes)
    maps = MapParts(clip_map, knn_map, self_map)
    betas = BETA_GRID if config.membank else (0.0,)
    gammas = GAMMA_GRID if scale is not None else (0.0,)
    beta, gamma, tau, f1 = _choose_map(support, image_index, maps, betas, gammas, base)
    chosen = replace(
        base,
        tau=tau,
        alpha=alpha,
        class_alpha=class_alphas(alpha, clip_classes),
        membank_weight=beta,
        selfsim_weight=gamma,
        pclip_source=source,
        method="cross-validation",
    )
    region, region_weight, region_acc, region_map = None, 0.0, None, "fused"
    if config.region_head and held_thumbs:
        fused = fuse_probs(p_clip, p_head, torch.tensor(chosen.alphas(p_head.shape[1])))
        thumbs = torch.cat(held_thumbs)
        on_fused = region_features(thumbs, maps.fused(beta, gamma)).numpy()
        reads_self = scale is not None and reads_self_map(config.region_map)
        on_self = region_features(thumbs, maps.own).numpy() if reads_self else None
        names = REGION_MAPS if config.region_map == "choose" else (config.region_map,)
        candidates = {}
        for name in names:
            blocks = region_maps(name, on_fused, on_self)
            if blocks is not None:
                candidates[name] = np.concatenate(blocks, axis=1)
        if candidates:
            region, region_weight, region_acc, region_map = _choose_region_map(
                candidates, labels.numpy(), folds[image_index].numpy(), fused
            )
    details = {
        "folds": int(folds.max()) + 1,
        "cv_accuracy": acc,
        "cv_pixel_f1": f1,
        "cv_region_accuracy": region_acc,
        "n_held_out": len(labels),
    }
    return replace(
        chosen,
        region_weight=region_weight,
        region_head=region.to_dict() if region is not None else None,
        region_map=region_map,
        details=details,
    )


def class_alphas(alpha: float, clip_classes: torch.Tensor | None) -> tuple[float, ...] | None:
    """α_c = α for classes P_clip knows, 0 for the others; None (one α) when all are known."""
    if clip_classes is None or bool(clip_classes.all()):
        return None
    return tuple(float(alpha) if bool(known) else 0.0 for known in clip_classes)


def build_membank(
    support: SupportTensors,
    good_index: int,
    config: FitConfig,
    device: torch.device | str = "cpu",
) -> tuple[PatchMemoryBank, torch.Tensor]:
    """Memory bank of the support's normal patches, and each entry's leave-one-out unit (N,).

    Normal patches: every patch of a good image, and the patches of a defect image with a mask
    that neither touch the defect nor neighbour it (3×3); of the un-augmented entries unless
    `membank_augmented` (8× the patches, mostly redundant). The unit left out when the bank
    measures its own scale is the support image; with a single contributing image, the entry
    (the augmentations of one image are then each other's reference).
    """
    grid = support.feats.grid
    target = support.patch_target.view(-1, 1, grid, grid)
    near_defect = F.max_pool2d(target, 3, stride=1, padding=1).flatten(1) > 0  # (N, P)
    keep = support.has_mask[:, None] & ~near_defect
    keep |= (support.labels == good_index)[:, None]
    if not config.membank_augmented:
        keep &= (support.aug_index == 0)[:, None]
    contributing = support.image_index[keep.any(dim=1)].unique()
    units = support.image_index if len(contributing) > 1 else torch.arange(len(support.feats))
    tokens = support.feats.vv if config.membank_tokens == "vv" else support.feats.tokens
    bank = PatchMemoryBank.build(
        tokens[:, :, 1:].to(device),
        keep.to(device),
        units.to(device),
        k=config.membank_k,
        max_patches=config.membank_max_patches,
        seed=config.seed,
        source=config.membank_tokens,
    )
    return bank, units


def good_shot_tau(
    heads: SemclipHeads,
    support: SupportTensors,
    calibration: Calibration,
    good_index: int,
    size: int,
    membank: tuple[PatchMemoryBank, torch.Tensor] | None = None,
) -> float:
    """Default τ (k = 1): from the good shots' pixel scores (design notes); the bank part of
    those scores leaves each shot's own unit out, as a new good image would see it."""
    keep = (support.labels == good_index) & (support.aug_index == 0)
    bank, units = membank if membank is not None else (None, None)
    out = run_heads(
        heads,
        support.feats[keep],
        calibration,
        good_index,
        size,
        membank=bank,
        membank_exclude=units[keep] if units is not None else None,
    )
    return default_tau(out.score_map)


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
    labels: torch.Tensor,
    p_clip: torch.Tensor,
    p_head: torch.Tensor,
    clip_classes: torch.Tensor | None = None,
) -> tuple[float, float]:
    """α maximising held-out accuracy; ties broken by log-likelihood, then smaller α.

    Classes outside `clip_classes` (K,) bool keep α_c = 0 for every α tried.
    """

    def fused(alpha: float) -> tuple[float, torch.Tensor]:
        alphas = class_alphas(alpha, clip_classes) or (alpha,) * p_clip.shape[1]
        return alpha, fuse_probs(p_clip, p_head, torch.tensor(alphas))

    return _best_on_held_out(labels, (fused(alpha) for alpha in ALPHA_GRID))


def _best_on_held_out(
    labels: torch.Tensor, candidates: Iterable[tuple[float, torch.Tensor]]
) -> tuple[float, float]:
    """(value, accuracy) of the (value, held-out probabilities) candidate that classifies the
    held-out `labels` best; ties broken by log-likelihood, then the smaller value."""
    best = None
    for value, p in candidates:
        acc = float((p.argmax(1) == labels).float().mean())
        nll = float(-torch.log(p.gather(1, labels[:, None]).clamp_min(1e-8)).mean())
        key = (acc, -nll, -value)
        if best is None or key > best[0]:
            best = (key, value, acc)
    return best[1], best[2]


def _choose_region(
    features: np.ndarray, labels: np.ndarray, folds: np.ndarray, probs: torch.Tensor
) -> tuple[RegionHead | None, float, float | None]:
    """(region head, w, held-out accuracy at w) from held-out region features (n, D).

    Each fold's region head is fitted on the other folds' features and read on this fold's;
    the w of `REGION_GRID` whose P ∝ P_fused · P_region^w classifies best wins (ties: higher
    log-likelihood, then smaller w). The head kept is fitted on all of them. None and w = 0
    when some fold's complement has a single class.
    """
    n_classes = probs.shape[1]
    log_q = torch.zeros(len(labels), n_classes)
    for fold in np.unique(folds):
        train = folds != fold
        if len(np.unique(labels[train])) < 2:
            return None, 0.0, None
        head = RegionHead.fit(features[train], labels[train], n_classes)
        log_q[~train] = head.log_probs(torch.from_numpy(features[~train]))
    weight, acc = _best_on_held_out(
        torch.from_numpy(labels).long(),
        ((w, fuse_region(probs.float(), log_q, w)) for w in REGION_GRID),
    )
    return RegionHead.fit(features, labels, n_classes), weight, acc


def _choose_region_map(
    candidates: dict[str, np.ndarray],
    labels: np.ndarray,
    folds: np.ndarray,
    probs: torch.Tensor,
) -> tuple[RegionHead | None, float, float | None, str]:
    """(region head, w, held-out accuracy, maps' name): `_choose_region` on each candidate's
    held-out region features (n, D) (named as in `region_maps`), the best held-out accuracy
    winning (ties: the earlier candidate).

    The fused map S is where the trained parts say the defect is; S_self alone is free of a
    backbone that may not fit the images (on random weights it named tool-b's classes better).
    """
    best: tuple[tuple[float, int], tuple[RegionHead | None, float, float | None, str]] | None
    best = None
    for order, (name, features) in enumerate(candidates.items()):
        head, weight, acc = _choose_region(features, labels, folds, probs)
        key = (acc if acc is not None else -1.0, -order)
        if best is None or key > best[0]:
            best = (key, (head, weight, acc, name))
    if best is None:
        raise ValueError("no candidate map for the region head")
    return best[1]


@dataclass(frozen=True)
class MapParts:
    """Held-out defect maps (n, S, S) of the three parts the fused map S weighs."""

    clip: torch.Tensor  # S_clip, the trained heads' map
    knn: torch.Tensor  # S_knn, the memory bank's map
    own: torch.Tensor  # S_self, the within-image self-similarity map

    def fused(self, beta: float, gamma: float, keep: torch.Tensor | None = None) -> torch.Tensor:
        """S = (1 − γ) ((1 − β) S_clip + β S_knn) + γ S_self, on the `keep` images."""
        clip, knn, own = (m if keep is None else m[keep] for m in (self.clip, self.knn, self.own))
        return (1 - gamma) * ((1 - beta) * clip + beta * knn) + gamma * own


def _choose_map(
    support: SupportTensors,
    image_index: torch.Tensor,
    maps: MapParts,
    betas: tuple[float, ...],
    gammas: tuple[float, ...],
    base: Calibration,
) -> tuple[float, float, float, float | None]:
    """(β, γ, τ, F1) with the best held-out pixel F1-max of the fused map (`MapParts.fused`).

    Without held-out masks nothing can be measured: β and γ stay the defaults and τ comes from
    the held-out scores of images with known (all-good) pixels. Ties keep the earlier (smaller)
    weights.
    """
    known = support.image_has_mask[image_index]
    masks = support.masks[image_index[known]]
    if not bool(known.any()) or not bool(masks.any()):
        beta = base.membank_weight if len(betas) > 1 else 0.0
        gamma = base.selfsim_weight if len(gammas) > 1 else 0.0
        score = maps.fused(beta, gamma)
        return beta, gamma, default_tau(score[known] if bool(known.any()) else score), None
    truth = masks.flatten().numpy() > 0.5
    best: tuple[float, float, float, float] | None = None
    for gamma in gammas:
        for beta in betas:
            score = maps.fused(beta, gamma, known).flatten().numpy()
            f1, tau = f1_max(score, truth)
            if best is None or f1 > best[3] + 1e-9:
                best = (beta, gamma, float(tau), float(f1))
    return best


def selfsim_scale(support: SupportTensors, good_index: int) -> float | None:
    """The good shots' self-similarity scale (`semclip.selfsim.normal_scale`), un-augmented
    entries only; None when the features carry no self-similarity or there is no good shot."""
    if support.feats.selfsim is None:
        return None
    keep = (support.labels == good_index) & (support.aug_index == 0)
    if not bool(keep.any()):
        return None
    return normal_scale(support.feats.selfsim[keep])


def default_tau(good_scores: torch.Tensor) -> float:
    """τ without held-out masks: 0.5 (a defect class is more likely than good), raised to the
    99.9th percentile of scores on good pixels so clean background does not light up."""
    if good_scores.numel() == 0:
        return 0.5
    return float(min(0.95, max(0.5, map_quantile(good_scores, 0.999))))
