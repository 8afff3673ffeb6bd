"""SEM augmentation on whole batches: crops, flips, 90° rotations, brightness/contrast/noise/blur.

Geometry is one affine sampling grid per image (crop + dihedral), applied to the image and to
its mask coverage alike, so the dense loss's targets stay aligned. Every random number comes
from the generator passed in, drawn on the CPU in a fixed order: a step's batch depends only on
(seed, step), which is what makes a resumed run identical to an uninterrupted one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from semclip.pretrain.config import AugmentConfig

# The 8 symmetries of the square as 2x2 matrices on (x, y): 4 rotations, then mirrored.
_ROT = [((1, 0), (0, 1)), ((0, -1), (1, 0)), ((-1, 0), (0, -1)), ((0, 1), (-1, 0))]
DIHEDRAL = torch.tensor(
    [r for r in _ROT] + [((-a, b), (-c, d)) for (a, b), (c, d) in _ROT], dtype=torch.float32
)  # (8, 2, 2)
BLUR_RADIUS = 3  # kernel 7: enough for sigma <= 1.2


def augment_batch(
    images: torch.Tensor,
    cover: torch.Tensor,
    size: int,
    config: AugmentConfig,
    gen: torch.Generator,
    max_crop_area: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment stored images (B, R, R) in [0, 1] and mask coverage (B, R, R) in [0, 1].

    Crops cover [config.min_crop_area, max_crop_area] of the image (below 1: the small local
    crops of self-distillation). Returns ((B, size, size) gray in [0, 1], (B, size, size)
    coverage). Tensors may live on any device; the random draws do not.
    """
    theta = _random_affine(images.shape[0], config, gen, max_crop_area).to(images.device)
    grid = F.affine_grid(theta, [images.shape[0], 1, size, size], align_corners=False)
    both = torch.stack([images, cover], dim=1).float()  # (B, 2, R, R)
    warped = F.grid_sample(both, grid, mode="bilinear", padding_mode="border", align_corners=False)
    image, mask = warped[:, 0], warped[:, 1]  # (B, S, S) each
    return _photometric(image, config, gen).clamp(0.0, 1.0), mask.clamp(0.0, 1.0)


def _random_affine(
    n: int, config: AugmentConfig, gen: torch.Generator, max_area: float = 1.0
) -> torch.Tensor:
    """(n, 2, 3) grids: output [-1, 1]² → a random square window of the input, maybe rotated."""
    u = torch.rand(n, 4, generator=gen)
    side = torch.sqrt(config.min_crop_area + (max_area - config.min_crop_area) * u[:, 0])  # (n,)
    offset = (1 - side)[:, None] * (2 * u[:, 1:3] - 1)  # (n, 2) window centre, inside image
    which = (u[:, 3] * 8).long().clamp(max=7) if config.dihedral else torch.zeros(n, dtype=int)
    theta = torch.zeros(n, 2, 3)
    theta[:, :, :2] = DIHEDRAL[which] * side[:, None, None]
    theta[:, :, 2] = offset
    return theta


def _photometric(image: torch.Tensor, config: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Contrast/brightness, defocus blur and extra noise, each with its own per-image draw."""
    n = image.shape[0]
    u = torch.rand(n, 6, generator=gen).to(image.device)
    noise = torch.randn(image.shape, generator=gen).to(image.device)
    gain = 1 + config.contrast * (2 * u[:, 0] - 1)  # (n,)
    shift = config.brightness * (2 * u[:, 1] - 1)
    mean = image.mean(dim=(1, 2))
    image = (image - mean[:, None, None]) * gain[:, None, None] + (mean + shift)[:, None, None]
    sigma = torch.where(u[:, 2] < config.blur_prob, config.blur_sigma * u[:, 3], 0.0)
    image = gaussian_blur(image, sigma)
    std = torch.where(u[:, 4] < config.noise_prob, config.noise_std * u[:, 5], 0.0)
    return image + std[:, None, None] * noise


def gaussian_blur(image: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image (B, H, W) with its own sigma (B,); sigma 0 leaves the image unchanged."""
    taps = torch.arange(-BLUR_RADIUS, BLUR_RADIUS + 1, device=image.device, dtype=image.dtype)
    safe = sigma.clamp(min=1e-3)[:, None]
    kernel = torch.exp(-0.5 * (taps[None] / safe) ** 2)  # (B, k)
    kernel = kernel / kernel.sum(1, keepdim=True)
    n = image.shape[0]
    x = F.pad(image[None], (BLUR_RADIUS,) * 4, mode="reflect")  # (1, B, H+2r, W+2r)
    x = F.conv2d(x, kernel.view(n, 1, 1, -1), groups=n)  # one group per image: (1, B, H+2r, W)
    x = F.conv2d(x, kernel.view(n, 1, -1, 1), groups=n)  # (1, B, H, W)
    return x[0]


def normalize(image: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(B, S, S) gray → (B, 3, S, S) with open_clip's per-channel mean/std (gray replicated)."""
    m = torch.tensor(mean, device=image.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=image.device).view(1, 3, 1, 1)
    return (image[:, None].expand(-1, 3, -1, -1) - m) / s


def patch_coverage(cover: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, S, S) pixel coverage → (B, grid·grid) mean coverage of each ViT patch."""
    patch = cover.shape[-1] // grid
    pooled = F.avg_pool2d(cover[:, None], kernel_size=patch)  # (B, 1, grid, grid)
    return pooled.flatten(1)


assert math.isclose(float(DIHEDRAL.det().abs().min()), 1.0)  # sanity of the table
