"""Direct measures of a backbone's features on a labelled manifest: did adaptation help?

- kNN patch AUROC: every test patch is scored by 1 − its highest cosine similarity to the patch
  bank of a few good support images (PatchCore with k = 1, no coreset); AUROC against the
  masks. Run on the final-layer patch tokens (through ln_post/proj, what the dense maps read)
  and on the V-V stage tokens SEM-CLIP's feature surgery reads (score averaged over stages).
- Linear probe on [CLS]: a logistic regression on the projected class token, fitted on half of
  each class and scored on the other half (accuracy).

Neither trains the backbone; both are cheap (one forward per image), so the model card shows
them before and after pretraining beside the zero-shot figures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from semclip.data import read_image, read_mask
from semclip.features import Preprocess, autocast_context, batches
from semclip.metrics import auroc
from semclip.pretrain.archive import Archive
from semclip.pretrain.augment import patch_coverage
from semclip.pretrain.towers import Towers, dual_path_tokens

PATCH_POSITIVE = 0.5  # a patch is a defect patch from this mask coverage up (as zeroshot.py)
SUPPORT_GOOD = 8  # good images whose patches form the kNN bank
PROBE_STEPS = 100  # L-BFGS iterations of the linear probe
PROBE_L2 = 1e-3  # its weight decay


@dataclass(frozen=True)
class ProbeResult:
    """Feature probes on a labelled set (None where undefined)."""

    knn_patch_auroc: float | None  # final-layer patch tokens vs the good patch bank
    knn_patch_auroc_vv: float | None  # V-V stage tokens, score averaged over stages
    cls_linear_accuracy: float | None  # logistic regression on [CLS], held-out half
    n_support: int  # good images in the patch bank
    n_test: int  # images whose patches were scored

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Encoded:
    cls: torch.Tensor  # (N, D) normalised
    final: torch.Tensor  # (N, P, D) normalised
    vv: torch.Tensor  # (m, N, P, D) normalised
    cover: list[torch.Tensor | None]  # (P,) mask coverage per image; None: defect, no mask


@torch.no_grad()
def probe_features(
    towers: Towers,
    archive: Archive,
    device: torch.device,
    *,
    indices: np.ndarray | None = None,
    n_stages: int = 4,
    max_images: int = 200,
    seed: int = 0,
    batch_size: int = 32,
) -> ProbeResult:
    """kNN patch AUROC and [CLS] linear-probe accuracy of `towers` on (a subset of) `archive`.

    `indices` restricts it to those items (default all); at most `max_images` are used.
    """
    pool = np.arange(len(archive)) if indices is None else np.asarray(indices)
    rng = np.random.default_rng([seed, 23])
    order = rng.permutation(pool)[:max_images]
    labels = archive.labels[order]
    good = order[labels == 0]
    n_bank = min(SUPPORT_GOOD, len(good) // 2)  # good test images remain for the AUROC
    support, rest = good[:n_bank], np.setdiff1d(order, good[:n_bank])
    if len(support) == 0 or len(rest) == 0:
        return ProbeResult(None, None, None, len(support), len(rest))
    model = towers.model
    was_training = model.training
    model.eval()
    try:
        enc = _encode(
            towers, archive, np.concatenate([support, rest]), device, n_stages, batch_size
        )
    finally:
        model.train(was_training)
    ns = len(support)
    final_auc = _knn_auroc(enc.final[:ns], enc.final[ns:], enc.cover[ns:])
    vv_scores = [_knn_scores(stage[:ns], stage[ns:]) for stage in enc.vv]
    vv_auc = _auroc(torch.stack(vv_scores).mean(0), enc.cover[ns:])
    accuracy = linear_probe_accuracy(enc.cls[ns:], torch.as_tensor(archive.labels[rest]), seed)
    return ProbeResult(final_auc, vv_auc, accuracy, ns, len(rest))


def _encode(
    towers: Towers,
    archive: Archive,
    indices: np.ndarray,
    device: torch.device,
    n_stages: int,
    batch_size: int,
) -> _Encoded:
    pre = Preprocess(
        towers.image_size,
        tuple(towers.preprocess_cfg["mean"]),
        tuple(towers.preprocess_cfg["std"]),
        archive.databar,
    )
    cls, final, vv, covers = [], [], [], []
    for sl in batches(len(indices), batch_size):
        images = []
        for i in indices[sl]:
            item = archive.items[int(i)]
            loaded = read_image(item.image)
            images.append(pre.image_tensor(loaded.pixels))
            if item.label == archive.classes[0]:
                covers.append(torch.zeros(towers.grid**2))
            elif item.mask is None:
                covers.append(None)
            else:
                mask = pre.mask_tensor(read_mask(item.mask, loaded.pixels.shape))
                covers.append(patch_coverage(mask[None], towers.grid)[0])
        with autocast_context(device):
            tokens, stages = dual_path_tokens(
                towers.model, torch.stack(images).to(device), n_stages
            )
        tokens = F.normalize(tokens.float(), dim=-1).cpu()  # (b, 1+P, D)
        cls.append(tokens[:, 0])
        final.append(tokens[:, 1:])
        vv.append(torch.stack([F.normalize(s[:, 1:].float(), dim=-1).cpu() for s in stages]))
    return _Encoded(torch.cat(cls), torch.cat(final), torch.cat(vv, dim=1), covers)


def _knn_scores(bank_images: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """(S, P, D) support, (T, P, D) test → (T, P) anomaly score 1 − max cosine to the bank."""
    bank = bank_images.flatten(0, 1)  # (S·P, D)
    best = torch.stack([(t @ bank.T).amax(dim=1) for t in test])  # (T, P)
    return 1 - best


def _knn_auroc(
    support: torch.Tensor, test: torch.Tensor, covers: list[torch.Tensor | None]
) -> float | None:
    if len(support) == 0 or len(test) == 0:
        return None
    return _auroc(_knn_scores(support, test), covers)


def _auroc(scores: torch.Tensor, covers: list[torch.Tensor | None]) -> float | None:
    """AUROC of patch scores (T, P) against coverage: defect >= PATCH_POSITIVE, good = 0."""
    values, truth = [], []
    for score, cover in zip(scores, covers, strict=True):
        if cover is None:
            continue  # defect without a mask: where it is, is unknown
        keep = (cover >= PATCH_POSITIVE) | (cover == 0)
        values.append(score[keep].numpy())
        truth.append((cover[keep] >= PATCH_POSITIVE).numpy())
    if not values:
        return None
    return auroc(np.concatenate(values), np.concatenate(truth))


def linear_probe_accuracy(features: torch.Tensor, labels: torch.Tensor, seed: int) -> float | None:
    """Logistic regression (L-BFGS, L2) on half of each class; accuracy on the other half.

    features: (N, D); labels: (N,) class ids. None when no class has two images.
    """
    rng = np.random.default_rng([seed, 29])
    train, test = [], []
    for k in labels.unique().tolist():
        members = rng.permutation(np.flatnonzero(labels.numpy() == k))
        half = len(members) // 2
        if half == 0:
            continue
        train.extend(members[:half].tolist())
        test.extend(members[half:].tolist())
    if not test or len(set(labels[train].tolist())) < 2:
        return None
    classes = int(labels.max()) + 1
    x, y = features[train].float(), labels[train]
    weight = torch.zeros(features.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=PROBE_STEPS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + PROBE_L2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        pred = (features[test].float() @ weight + bias).argmax(1)
    return float((pred == labels[test]).float().mean())
