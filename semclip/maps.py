"""Pure tensor operations for SEM-CLIP's maps (paper eq. 9-17); no parameters, no state.

Shapes: B images, K classes, P = g·g patch tokens, D embedding channels, S model resolution.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

LOGIT_SCALE = 100.0  # CLIP's trained temperature; used for every text-image cosine here
SMOOTH_SIGMA_AT_240 = 4.0  # Gaussian σ in pixels at 240 px, scaled with resolution


def class_logits(z: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Scaled cosine of normalised embeddings z (..., D) with text prototypes (K, D) → (..., K)."""
    return LOGIT_SCALE * F.normalize(z, dim=-1) @ F.normalize(text, dim=-1).T


def patch_grid(x: torch.Tensor) -> torch.Tensor:
    """(B, P, C) patch values → (B, C, g, g) image-shaped grid."""
    b, p, c = x.shape
    g = math.isqrt(p)
    if g * g != p:
        raise ValueError(f"{p} patch tokens do not form a square grid")
    return x.transpose(1, 2).reshape(b, c, g, g)


def upsample(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of (B, C, h, w) maps, CLIP-AD/APRIL-GAN style."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def vanilla_class_probs(z: torch.Tensor, text: torch.Tensor, size: int) -> torch.Tensor:
    """Per-pixel class probabilities from transformed patch tokens z (B, P, D) → (B, K, S, S).

    Logits are upsampled before the softmax (eq. 11-12), so class boundaries stay sharp.
    """
    logits = patch_grid(class_logits(z, text))  # (B, K, g, g)
    return upsample(logits, size).softmax(dim=1)


def surgery_similarity(
    f: torch.Tensor, f_cls: torch.Tensor, text: torch.Tensor, weight_scale: float = 1.0
) -> torch.Tensor:
    """Feature-surgery similarity (eq. 13-16) in closed form: (B, P, D), (B, D), (K, D) → (B, P, K).

    Class weights w = softmax(s · cos(F_cls, T)) / mean: with s = 1 (the paper's form) cosines
    of ±0.3 give w ≈ 1 ± 0.03, nearly uniform; s = LOGIT_SCALE makes them CLIP's probabilities.

    Explicit form: multiplied = F ⊙ T_k · w_k (B, P, K, D); redundant = mean_k multiplied;
    sim = Σ_D (multiplied − redundant). Summing over D first gives (F Tᵀ)·w − mean_k, which never
    builds the (B, P, K, D) tensor.
    """
    f = F.normalize(f, dim=-1)
    t = F.normalize(text, dim=-1)
    w = (weight_scale * F.normalize(f_cls, dim=-1) @ t.T).softmax(dim=-1)  # (B, K)
    w = w / w.mean(dim=-1, keepdim=True)
    s = (f @ t.T) * w[:, None, :]  # (B, P, K)
    return s - s.mean(dim=-1, keepdim=True)


def surgery_defect_map(sim: torch.Tensor, good_index: int) -> torch.Tensor:
    """Patch-level defect map from surgery similarity (B, P, K) → (B, P), in [0, 1].

    Raw similarities are about ±0.05, so they get CLIP's logit scale before the softmax to sit
    on the same scale as the vanilla map.
    """
    return 1.0 - (LOGIT_SCALE * sim).softmax(dim=-1)[..., good_index]


QUANTILE_SAMPLE = 2**20  # a map quantile reads 1-2 × this many values (torch.quantile caps input)


def map_quantile(values: torch.Tensor, q: float) -> float:
    """The q-quantile of a map's values, from every n-th value, n = numel // QUANTILE_SAMPLE.

    torch.quantile refuses inputs above 2**24 elements, and the support's maps at model
    resolution can reach that; a strided sample of one to two million values moves a high
    quantile by far less than the thresholds it sets.
    """
    flat = values.flatten().float()
    return float(torch.quantile(flat[:: max(1, flat.numel() // QUANTILE_SAMPLE)], q))


def smoothing_sigma(size: int) -> float:
    """σ of the final Gaussian smoothing at model resolution `size`."""
    return SMOOTH_SIGMA_AT_240 * size / 240.0


def gaussian_smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) maps with reflect padding; identity when σ ≤ 0."""
    if sigma <= 0:
        return maps
    radius = max(1, int(math.ceil(3 * sigma)))
    radius = min(radius, maps.shape[-1] - 1, maps.shape[-2] - 1)
    xs = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (xs / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = maps[:, None]  # (B, 1, H, W)
    x = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x[:, 0]


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of 1-D bilinear resizing, as F.interpolate(align_corners=False)."""
    scale = n_in / n_out
    src = np.clip((np.arange(n_out) + 0.5) * scale - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = (src - lo).astype(np.float32)
    m = np.zeros((n_out, n_in), dtype=np.float32)
    rows = np.arange(n_out)
    np.add.at(m, (rows, lo), 1.0 - frac)
    np.add.at(m, (rows, hi), frac)
    return m


def resize_threshold(
    score: np.ndarray, out_shape: tuple[int, int], tau: float, chunk_rows: int = 1024
) -> np.ndarray:
    """Bilinear-resize a (h, w) map to `out_shape` and threshold at τ, row block by row block.

    A 20k × 20k SEM image would need 1.6 GB for the resized float map; blocks keep the peak at
    chunk_rows × width floats and give the same result.
    """
    rows_m = bilinear_matrix(score.shape[0], out_shape[0])  # (H, h)
    cols_m = bilinear_matrix(score.shape[1], out_shape[1])  # (W, w)
    tmp = score.astype(np.float32) @ cols_m.T  # (h, W)
    out = np.empty(out_shape, dtype=bool)
    for start in range(0, out_shape[0], chunk_rows):
        block = rows_m[start : start + chunk_rows] @ tmp  # (rows, W)
        out[start : start + chunk_rows] = block > tau
    return out
