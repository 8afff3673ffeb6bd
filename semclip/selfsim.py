"""Within-image self-similarity: a defect is the part of an SEM image that has no twin in it.

Why: the patterns SEM review images show (lines, trenches, contacts, via chains) repeat with a
pitch, so every normal patch of an image has a near copy a pitch away in the same image; a
particle, a bridge or a hole does not. The distance from a patch to its most similar other
patch of the same image is therefore an anomaly score that needs no shot, no backbone and no
other image: it holds on a tool's imaging style the backbone never learnt, where the backbone's
own patch features stopped finding the defects (docs/offline-quality.md, "Finding the defect
without the backbone").

The image is area-resized to SIZE × SIZE first (it averages the SEM noise away and fixes the
scale at which "a patch" is compared); patches of PATCH × PATCH pixels are taken every STRIDE
pixels, made zero-mean (a brightness drift across the frame is not a defect), and compared by
Euclidean distance. Patches that overlap the query by more than half are not candidates: they
are the query itself, shifted. SIZE, PATCH and STRIDE were chosen by measurement on a held-out
SEM style (the docs list the grid).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from semclip.maps import map_quantile

SIZE = 64  # the image is area-resized to SIZE × SIZE before patches are compared
PATCH = 8  # patch side in pixels at SIZE
STRIDE = 4  # patch step in pixels at SIZE: neighbouring patches overlap by half


def grid_side(size: int = SIZE, patch: int = PATCH, stride: int = STRIDE) -> int:
    """Patches per side of the self-similarity grid."""
    return (size - patch) // stride + 1


@torch.no_grad()
def self_similarity(
    images: torch.Tensor, size: int = SIZE, patch: int = PATCH, stride: int = STRIDE
) -> torch.Tensor:
    """Distance of each patch to its nearest non-overlapping patch of the same image.

    images: (B, C, H, W) or (B, H, W); only the first channel is read (SEM images are grey and
    the model input repeats it). Returns (B, g, g) float32, g = `grid_side(size, patch, stride)`,
    in the input's intensity units (a normalised model input gives normalised units).
    """
    if images.dim() == 3:
        images = images[:, None]
    if images.dim() != 4:
        raise ValueError(f"self_similarity needs (B, C, H, W) or (B, H, W), got {images.shape}")
    if not patch <= size or stride < 1:
        raise ValueError(f"patch {patch} must fit in size {size} and stride {stride} be >= 1")
    x = F.interpolate(images[:, :1].float(), size=(size, size), mode="area")
    patches = F.unfold(x, kernel_size=patch, stride=stride).transpose(1, 2)  # (B, P, patch²)
    patches = patches - patches.mean(dim=-1, keepdim=True)
    g = grid_side(size, patch, stride)
    rows = torch.arange(g, device=x.device).repeat_interleave(g)
    cols = torch.arange(g, device=x.device).repeat(g)
    reach = patch // stride  # steps within which two patches overlap by more than half
    overlapping = ((rows[:, None] - rows[None]).abs() < reach) & (
        (cols[:, None] - cols[None]).abs() < reach
    )  # (P, P), the diagonal included
    sq = (patches * patches).sum(dim=-1)  # (B, P)
    dist2 = sq[:, :, None] + sq[:, None, :] - 2.0 * patches @ patches.transpose(1, 2)
    dist2 = dist2.masked_fill(overlapping[None], float("inf"))
    nearest = dist2.min(dim=-1).values.clamp_min(0.0).sqrt()  # (B, P)
    return nearest.view(-1, g, g)


def normal_scale(distances: torch.Tensor, quantile: float = 0.99) -> float:
    """How far normal patches reach from their twins: a high quantile of good images' distances.

    Dividing by it makes the map scale-free (1 = the support's own normal variation), as the
    memory bank does with its leave-one-out distances. Never below a small floor, so a
    perfectly periodic support does not divide by zero.
    """
    if distances.numel() == 0:
        raise ValueError("the self-similarity scale needs at least one good image")
    return max(map_quantile(distances, quantile), 1e-6)


def anomaly(distances: torch.Tensor, scale: float) -> torch.Tensor:
    """Distances (B, g, g) → anomaly in [0, 1): z / (1 + z), z = d / scale (0.5 at the scale)."""
    z = distances.float() / max(float(scale), 1e-6)
    return z / (1.0 + z)
