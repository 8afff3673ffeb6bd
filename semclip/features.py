"""From decoded images to cached backbone features: preprocessing, augmentation, extraction.

The backbone is frozen, so it runs once per image and augmentation; everything trained or
calibrated afterwards works on these cached tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from semclip.data.databar import DatabarCrop
from semclip.encoder import DualPathEncoder
from semclip.maps import surgery_defect_map, surgery_similarity
from semclip.region_head import thumbnail
from semclip.selfsim import self_similarity

N_DIHEDRAL = 8  # identity, 3 rotations, and the 4 flipped versions


@dataclass(frozen=True)
class Preprocess:
    """How a decoded grayscale image becomes a model input."""

    image_size: int  # square model resolution S
    mean: tuple[float, float, float]  # open_clip normalisation
    std: tuple[float, float, float]
    databar: DatabarCrop = DatabarCrop()  # rows removed before the model sees the image

    def to_dict(self) -> dict:
        return {
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "databar": self.databar.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Preprocess:
        return cls(
            int(data["image_size"]),
            tuple(data["mean"]),
            tuple(data["std"]),
            DatabarCrop.from_dict(data.get("databar", {})),
        )

    def image_tensor(self, pixels: np.ndarray) -> torch.Tensor:
        """(H, W) gray in [0, 1] → (3, S, S) normalised; the databar is cropped first."""
        x = torch.from_numpy(np.ascontiguousarray(self.databar.apply(pixels), dtype=np.float32))
        x = F.interpolate(
            x[None, None],
            size=(self.image_size, self.image_size),
            mode="bicubic",
            antialias=True,
            align_corners=False,
        )[0]
        x = x.clamp(0.0, 1.0).expand(3, -1, -1)  # gray replicated to the 3 RGB channels
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std

    def mask_tensor(self, mask: np.ndarray) -> torch.Tensor:
        """(H, W) bool → (S, S) float {0, 1}, cropped like the image.

        Area-resized and thresholded at half coverage; a defect smaller than half a model pixel
        keeps its pixels (any coverage), so tiny particles do not vanish from the target.
        """
        m = torch.from_numpy(np.ascontiguousarray(self.databar.apply(mask), dtype=np.float32))
        cover = F.interpolate(m[None, None], size=(self.image_size, self.image_size), mode="area")[
            0, 0
        ]
        out = cover >= 0.5
        if not out.any() and bool(m.any()):
            out = cover > 0
        return out.float()


def dihedral(x: torch.Tensor, index: int) -> torch.Tensor:
    """One of the 8 flips/90° rotations of (..., H, W): natural symmetries of SEM images."""
    x = torch.rot90(x, index % 4, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if index >= 4 else x


@dataclass
class Features:
    """Cached backbone outputs for N images (or augmented copies).

    tokens: (N, m, 1+P, width) ln_post-normalised vanilla stage tokens, CLS first (fp16).
    vv: (N, m, 1+P, embed) V-V stage tokens through ln_post/proj, vanilla CLS first (fp16).
    selfsim: (N, g, g) within-image self-similarity distances of the model input
    (`semclip.selfsim`, fp16); None where features were made without it.
    thumb: (N, t, t) grey thumbnail of the model input (`semclip.region_head.thumbnail`, fp16),
    what the region head measures the found defect on; None where made without it.
    """

    tokens: torch.Tensor
    vv: torch.Tensor
    selfsim: torch.Tensor | None = None
    thumb: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, idx: torch.Tensor | slice | list[int]) -> Features:
        selfsim = self.selfsim[idx] if self.selfsim is not None else None
        thumb = self.thumb[idx] if self.thumb is not None else None
        return Features(self.tokens[idx], self.vv[idx], selfsim, thumb)

    @staticmethod
    def cat(parts: list[Features]) -> Features:
        """Entries of all parts in order; `selfsim` and `thumb` only when every part has it."""

        def joined(name: str) -> torch.Tensor | None:
            values = [getattr(p, name) for p in parts]
            if not values or any(v is None for v in values):
                return None
            return torch.cat(values)

        return Features(
            torch.cat([p.tokens for p in parts]),
            torch.cat([p.vv for p in parts]),
            joined("selfsim"),
            joined("thumb"),
        )

    @property
    def grid(self) -> int:
        return math.isqrt(self.tokens.shape[2] - 1)


def autocast_context(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA (fp16 where bf16 is unsupported); nothing on CPU."""
    if device.type != "cuda" or not enabled:
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


@torch.inference_mode()
def extract_features(
    encoder: DualPathEncoder,
    images: torch.Tensor,
    *,
    autocast: bool = True,
    keep_on_device: bool = False,
    forward: Callable[[torch.Tensor], list] | None = None,
) -> Features:
    """Run the dual-path encoder on (B, 3, S, S) and keep what heads and maps need (fp16).

    On CPU by default (what caches and training keep); `keep_on_device` leaves them where the
    heads will run (prediction without a cache: no round trip through host memory). A pinned
    input is copied asynchronously. `forward` replaces `encoder.__call__` (a compiled one).
    """
    device = next(encoder.parameters()).device
    out = device if keep_on_device else torch.device("cpu")
    with autocast_context(device, autocast):
        x = images.to(device, non_blocking=images.is_pinned())
        stages = (encoder if forward is None else forward)(x)
        ln_post = encoder.visual.ln_post
        tokens = torch.stack([ln_post(s.vanilla) for s in stages], dim=1)
        vv = torch.stack([s.vv for s in stages], dim=1)
    selfsim = self_similarity(x)  # outside autocast: float32 distances
    half = torch.float16
    return Features(
        tokens.to(out, half),
        vv.to(out, half),
        selfsim.to(out, half),
        thumbnail(x).to(out, half),
    )


def surgery_maps(
    vv: torch.Tensor, text: torch.Tensor, good_index: int, weight_scale: float = 1.0
) -> torch.Tensor:
    """Per-stage patch-level feature-surgery defect maps M_n^i: (N, m, 1+P, D) → (N, m, P)."""
    n, m = vv.shape[:2]
    vv = vv.float().flatten(0, 1)  # (N·m, 1+P, D)
    sim = surgery_similarity(vv[:, 1:], vv[:, 0], text.to(vv.device), weight_scale)
    return surgery_defect_map(sim, good_index).view(n, m, -1)


def batches(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most `size` covering range(n)."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


MAX_AUTO_BATCH = 256  # past this a larger batch no longer raises GPU throughput


def auto_batch_size(
    device: torch.device, requested: int, image_size: int, per_image_bytes: int | None = None
) -> int:
    """Requested size, else 16 on CPU and a size from free memory on CUDA.

    `per_image_bytes` is the caller's estimate of one image's working memory (see
    `inference_bytes_per_image`); without it, ~64 MB per image at 240 px with half the free
    memory kept back (fine-tuning keeps more alive).
    """
    if requested > 0:
        return requested
    if device.type != "cuda":
        return 16
    free, _ = torch.cuda.mem_get_info(device)
    if per_image_bytes is None:
        per_image = 64 * (image_size / 240) ** 2 * 2**20
        return batch_for_memory(int(free * 0.5), int(per_image))
    return batch_for_memory(int(free * 0.8), per_image_bytes)


def batch_for_memory(budget_bytes: int, per_image_bytes: int, cap: int = MAX_AUTO_BATCH) -> int:
    """The largest batch whose working memory fits `budget_bytes` (1 at least, `cap` at most)."""
    if per_image_bytes <= 0:
        raise ValueError(f"per-image memory must be positive, got {per_image_bytes}")
    return int(max(1, min(cap, budget_bytes // per_image_bytes)))


def inference_bytes_per_image(
    encoder: DualPathEncoder, n_classes: int, image_size: int, safety: float = 1.5
) -> int:
    """Working memory of one image through prediction (no gradients), counted from the shapes.

    Per block at most ~20 (N, width) tensors live (residual, ln, q/k/v, both attentions and the
    fused copies, the 4× MLP) plus two (heads, N, N) score matrices should SDPA fall back to
    its math kernel; the m stages keep vanilla and V-V tokens; the heads build (m, K, S, S)
    probabilities and a few (S, S) maps, fp32 throughout to stay on the safe side.
    """
    n = 1 + encoder.grid**2
    width, embed, m = encoder.width, encoder.embed_dim, encoder.n_stages
    heads = int(encoder.blocks[0].attn.num_heads)
    elements = 20 * n * width + 2 * heads * n * n + 2 * m * n * (width + embed)
    elements += 3 * m * n_classes * image_size**2 + 16 * image_size**2
    return int(4 * elements * safety)
