"""The two pretraining objectives: multi-positive CLIP loss and dense patch/caption alignment.

The contrastive loss alone collapses on SEM images (measured: it never leaves ln(batch)): a
defect is small and local, and the image-level caption barely sees it. The dense loss gives
every patch a target where masks exist: its image's class caption inside the mask, the good
caption outside. Both are plain functions of tensors, so they are tested in isolation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -1  # patch target of patches not used by the dense loss


def multi_positive_contrastive(
    image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric CLIP loss where every same-class pair in the batch is a positive.

    image, text: (B, D) L2-normalised, text[j] the caption of image j; labels: (B,) class ids.
    Targets spread uniformly over the positives, so two images of one class are never pushed
    apart as CLIP's one-hot targets would. Chance level is ln(B); the floor (perfect
    separation of classes) is mean ln(#positives), see `contrastive_floor`.
    """
    logits = scale * image @ text.T  # (B, B)
    positive = (labels[:, None] == labels[None, :]).float()  # (B, B), symmetric
    targets = positive / positive.sum(1, keepdim=True)
    image_to_text = -(targets * logits.log_softmax(dim=1)).sum(1).mean()
    text_to_image = -(targets * logits.T.log_softmax(dim=1)).sum(1).mean()
    return (image_to_text + text_to_image) / 2


def contrastive_floor(labels: torch.Tensor) -> float:
    """Lowest reachable multi-positive loss for these labels: mean ln(#same-class in batch)."""
    same = (labels[:, None] == labels[None, :]).sum(1).float()
    return float(same.log().mean())


def patch_targets(
    coverage: torch.Tensor,
    labels: torch.Tensor,
    has_mask: torch.Tensor,
    good_index: int,
    min_coverage: float,
) -> torch.Tensor:
    """Per-patch class targets (B, P) from mask coverage (B, P) in [0, 1].

    Defect images with a mask: their class on patches covered >= min_coverage (and on the most
    covered patch, so a defect smaller than a patch still has one), good on uncovered patches,
    IGNORE on the thin rim in between. Good images: good everywhere. Defect images without a
    mask: IGNORE (where the defect is, is unknown).
    """
    target = torch.full_like(coverage, IGNORE, dtype=torch.long)
    is_good = labels == good_index
    peak = coverage.amax(dim=1, keepdim=True)  # (B, 1)
    inside = (coverage >= min_coverage) | ((coverage >= peak) & (peak > 0))
    masked = has_mask & ~is_good
    target[masked[:, None] & (coverage == 0)] = good_index
    target[masked[:, None] & inside] = labels[:, None].expand_as(target)[masked[:, None] & inside]
    target[is_good] = good_index
    return target


def dense_alignment(
    patches: torch.Tensor,
    class_text: torch.Tensor,
    target: torch.Tensor,
    scale: torch.Tensor,
    good_index: int,
) -> torch.Tensor:
    """Cross-entropy of each patch over the class captions, defect and good patches weighed 1:1.

    patches: (B, P, D) L2-normalised final-layer tokens through ln_post/proj; class_text: (K, D)
    normalised caption embeddings; target: (B, P) from `patch_targets`. Defect patches are a
    few percent of all patches; without the 1:1 weighting "all good" would be a fine answer.
    Returns 0 (with a graph) when no patch has a target.
    """
    logits = scale * patches @ class_text.T  # (B, P, K)
    ce = F.cross_entropy(
        logits.flatten(0, 1), target.flatten().clamp(min=0), reduction="none"
    )  # (B·P,)
    flat = target.flatten()
    groups = (flat == good_index, (flat != good_index) & (flat >= 0))  # good, defect patches
    terms = [ce[sel].mean() for sel in groups if bool(sel.any())]
    return torch.stack(terms).mean() if terms else logits.sum() * 0.0
