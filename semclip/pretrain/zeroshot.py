"""Zero-shot check of a pretraining run on its held-out split, for logs and the model card.

Image level: class-token embedding vs the prompt library's class prototypes (eq. 8), argmax.
Patch level: final-layer patch embeddings vs the same prototypes, 1 − p(good) against the
mask (AUROC). Neither trains anything, so the numbers measure the backbone itself.
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
from semclip.pretrain.towers import Towers, image_tokens
from semclip.prompts import PromptLibrary, text_prototypes

PATCH_POSITIVE = 0.5  # a patch is a defect patch from this mask coverage up
PATCH_SCALE = 100.0  # CLIP's logit scale for the per-patch softmax over classes


@dataclass(frozen=True)
class ZeroShotResult:
    """Zero-shot figures on the validation split (None where undefined)."""

    accuracy: float | None  # image-level K-class accuracy
    per_class_accuracy: dict[str, float | None]  # recall of each class
    patch_auroc: float | None  # defect vs good patches (masked and good images)
    n_images: int

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def zero_shot(
    towers: Towers,
    archive: Archive,
    indices: np.ndarray,
    library: PromptLibrary,
    device: torch.device,
    batch_size: int = 32,
) -> ZeroShotResult:
    """Score the archive images at `indices` without any training (model left as it was)."""
    if len(indices) == 0:
        return ZeroShotResult(None, dict.fromkeys(archive.classes), None, 0)
    model = towers.model
    was_training = model.training
    model.eval()
    try:
        text = text_prototypes(model, towers.tokenizer, library, archive.classes).to(device)
        truth, preds, scores, patch_labels = _score(
            towers, archive, indices, text, device, batch_size
        )
    finally:
        model.train(was_training)
    return _summarise(archive.classes, truth, preds, scores, patch_labels)


def _score(
    towers: Towers,
    archive: Archive,
    indices: np.ndarray,
    text: torch.Tensor,
    device: torch.device,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    pre = Preprocess(
        towers.image_size,
        tuple(towers.preprocess_cfg["mean"]),
        tuple(towers.preprocess_cfg["std"]),
        archive.databar,
    )
    labels = archive.labels
    truth, preds, scores, patch_labels = [], [], [], []
    for sl in batches(len(indices), batch_size):
        items = [archive.items[i] for i in indices[sl]]
        images, covers = [], []
        for item in items:
            loaded = read_image(item.image)
            images.append(pre.image_tensor(loaded.pixels))
            mask = read_mask(item.mask, loaded.pixels.shape) if item.mask else None
            covers.append(pre.mask_tensor(mask) if mask is not None else None)
        with autocast_context(device):
            tokens = image_tokens(towers.model, torch.stack(images).to(device)).float()
        tokens = F.normalize(tokens, dim=-1)  # (b, 1+P, D)
        preds.append((tokens[:, 0] @ text.T).argmax(1).cpu().numpy())
        truth.append(labels[indices[sl]])
        p_good = (PATCH_SCALE * tokens[:, 1:] @ text.T).softmax(-1)[..., 0]  # (b, P), good first
        for item, cover, score in zip(items, covers, 1 - p_good.cpu(), strict=True):
            if item.label == archive.classes[0]:
                cover = torch.zeros(pre.image_size, pre.image_size)
            if cover is None:
                continue  # defect without a mask: where it is, is unknown
            cov = patch_coverage(cover[None], towers.grid)[0]
            keep = (cov >= PATCH_POSITIVE) | (cov == 0)
            scores.append(score[keep].numpy())
            patch_labels.append((cov[keep] >= PATCH_POSITIVE).numpy())
    return (
        np.concatenate(truth),
        np.concatenate(preds),
        np.concatenate(scores) if scores else np.zeros(0),
        np.concatenate(patch_labels) if patch_labels else np.zeros(0, bool),
    )


def _summarise(
    classes: tuple[str, ...],
    truth: np.ndarray,
    preds: np.ndarray,
    scores: np.ndarray,
    patch_labels: np.ndarray,
) -> ZeroShotResult:
    per_class = {
        c: (float((preds[truth == k] == k).mean()) if (truth == k).any() else None)
        for k, c in enumerate(classes)
    }
    accuracy = float((truth == preds).mean()) if len(truth) else None
    return ZeroShotResult(accuracy, per_class, auroc(scores, patch_labels), int(len(truth)))
