"""Model-resolution defect map → binary mask at the image's own resolution, RLE and statistics.

`mask_outputs` does one image on the host (numpy); `batch_mask_outputs` does a batch with the
pixel work on the maps' device (the GPU in production) and gives the same results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from semclip import rle
from semclip.data.databar import DatabarCrop
from semclip.maps import bilinear_matrix, resize_threshold
from semclip.regions import RegionStats, region_stats

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class MaskOutputs:
    """What a prediction row needs from the mask."""

    rle: str | None  # COCO counts; None when no defect pixel
    stats: RegionStats
    area_nm2: float | None
    majority_class: int | None  # most frequent per-pixel defect class inside the mask


def mask_outputs(
    score: np.ndarray,  # (S, S) overall defect map
    class_map: np.ndarray,  # (S, S) per-pixel defect class indices
    full_shape: tuple[int, int],  # (H, W) of the original image, databar included
    tau: float,
    databar: DatabarCrop,
    min_region_px: int = 0,
    pixel_size_nm: float | None = None,
) -> MaskOutputs:
    """Threshold the map at the cropped image's size, then put the databar rows back (empty)."""
    cropped = (databar.cropped_height(full_shape[0]), full_shape[1])
    mask = resize_threshold(score, cropped, tau)
    if min_region_px > 0:
        mask = drop_small_regions(mask, min_region_px)
    mask = databar.undo_mask(mask, full_shape)
    stats = region_stats(mask)
    counts = rle.encode(mask)["counts"] if stats.area_px else None
    area_nm2 = stats.area_px * pixel_size_nm**2 if pixel_size_nm else None
    inside = class_map[score > tau]
    majority = int(np.bincount(inside.ravel()).argmax()) if inside.size else None
    return MaskOutputs(counts, stats, area_nm2, majority)


def drop_small_regions(mask: np.ndarray, min_px: int) -> np.ndarray:
    """Remove 8-connected regions smaller than `min_px` pixels (speckle on noisy SEM frames)."""
    labels, n = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return keep[labels]


def batch_mask_outputs(
    score: torch.Tensor,  # (B, S, S) overall defect maps, on the model's device
    class_map: torch.Tensor,  # (B, S, S) per-pixel defect class indices, same device
    full_shapes: Sequence[tuple[int, int]],  # (H, W) of each original image, databar included
    tau: float,
    databar: DatabarCrop,
    n_classes: int,
    min_region_px: int = 0,
    pixel_sizes_nm: Sequence[float | None] | None = None,
    device_path: bool | None = None,
) -> list[MaskOutputs]:
    """`mask_outputs` for a whole batch, with the pixel work on the maps' device.

    `device_path` None: on an accelerator only. Maps already on the CPU take the per-image
    numpy path, which measured faster there (the host is the device: nothing to copy, and
    numpy's threshold and scipy's labelling beat torch's CPU kernels for this work).

    Images are grouped by size; each group is resized (the same separable bilinear matrices as
    `resize_threshold`), thresholded, measured (area, box) and bit-packed in column-major order
    on the device; the packed masks of the batch and their statistics then come to the host in
    one copy each. The host only counts 8-connected regions (scipy; a labelling is sequential
    work) and writes the RLE straight from the column-major bits (`rle.encode_column_major`).
    """
    b = score.shape[0]
    if len(full_shapes) != b:
        raise ValueError(f"{b} maps but {len(full_shapes)} image shapes")
    pixel_sizes = list(pixel_sizes_nm) if pixel_sizes_nm is not None else [None] * b
    if not (score.device.type != "cpu" if device_path is None else device_path):
        return [
            mask_outputs(
                score[i].float().numpy(),
                class_map[i].numpy(),
                full_shapes[i],
                tau,
                databar,
                min_region_px,
                pixel_sizes[i],
            )
            for i in range(b)
        ]
    majority = _majority_classes(score, class_map, tau, n_classes)  # (B,) -1: none
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (h, w) in enumerate(full_shapes):
        groups.setdefault((databar.cropped_height(h), int(w)), []).append(i)
    packed_parts: list[torch.Tensor] = []
    stats_parts: list[torch.Tensor] = []
    order: list[int] = []
    for (h, w), idx in groups.items():
        cropped = _resize_threshold_batch(score[idx], (h, w), tau)  # (G, h, W) bool
        stats_parts.append(_area_and_box(cropped, databar.top))
        cols_first = cropped.transpose(1, 2)  # (G, W, h): column-major rows of the cropped mask
        packed_parts.extend(_pack_bits(cols_first[g]) for g in range(len(idx)))
        order.extend(idx)
    packed = torch.cat(packed_parts).cpu().numpy() if packed_parts else np.zeros(0, np.uint8)
    stats = torch.cat(stats_parts).cpu().numpy()  # (B, 5): area, x0, y0, x1, y1 (full image)
    majority_np = majority.cpu().numpy()
    out: list[MaskOutputs | None] = [None] * b
    offset = 0
    for row, i in enumerate(order):
        height, width = (int(v) for v in full_shapes[i])
        h = databar.cropped_height(height)
        n_bytes = -(-(h * width) // 8)
        bits = np.unpackbits(packed[offset : offset + n_bytes], count=h * width)
        offset += n_bytes
        cols_first = bits.view(bool).reshape(width, h)  # the cropped mask, transposed
        out[i] = _host_outputs(
            cols_first,
            stats[row],
            (height, width),
            databar,
            min_region_px,
            pixel_sizes[i],
            int(majority_np[i]),
        )
    return out  # type: ignore[return-value]


def _majority_classes(
    score: torch.Tensor, class_map: torch.Tensor, tau: float, n_classes: int
) -> torch.Tensor:
    """(B,) most frequent class of `class_map` where score > τ (ties: the lowest), -1 if none."""
    inside = (score > tau).flatten(1).to(torch.int64)  # (B, S·S)
    counts = torch.zeros(score.shape[0], n_classes, dtype=torch.int64, device=score.device)
    counts.scatter_add_(1, class_map.flatten(1).to(torch.int64), inside)
    return torch.where(counts.sum(dim=1) > 0, counts.argmax(dim=1), -1)


def _resize_threshold_batch(
    score: torch.Tensor, out_shape: tuple[int, int], tau: float, chunk_elements: int = 2**26
) -> torch.Tensor:
    """(G, s, s) maps → (G, H, W) bool masks: `resize_threshold` for a group on its device.

    Row blocks keep the float intermediate at `chunk_elements` (256 MB) for huge images.
    """
    g = score.shape[0]
    device = score.device
    rows_m = torch.from_numpy(bilinear_matrix(score.shape[1], out_shape[0])).to(device)  # (H, s)
    cols_m = torch.from_numpy(bilinear_matrix(score.shape[2], out_shape[1])).to(device)  # (W, s)
    tmp = score.float() @ cols_m.T  # (G, s, W)
    out = torch.empty((g, *out_shape), dtype=torch.bool, device=device)
    rows = max(1, chunk_elements // max(1, g * out_shape[1]))
    for start in range(0, out_shape[0], rows):
        out[:, start : start + rows] = (rows_m[start : start + rows] @ tmp) > tau
    return out


def _area_and_box(masks: torch.Tensor, top: int) -> torch.Tensor:
    """(G, h, W) bool → (G, 5) int64: area, then x0, y0, x1, y1 of all defect pixels (inclusive,
    in full-image rows: + top); zeros where the mask is empty."""
    g, h, w = masks.shape
    rows = masks.any(dim=2)  # (G, h)
    cols = masks.any(dim=1)  # (G, W)
    area = masks.flatten(1).sum(dim=1)
    r_idx = torch.arange(h, device=masks.device)
    c_idx = torch.arange(w, device=masks.device)
    y0 = torch.where(rows, r_idx, h).amin(dim=1)
    y1 = torch.where(rows, r_idx, -1).amax(dim=1)
    x0 = torch.where(cols, c_idx, w).amin(dim=1)
    x1 = torch.where(cols, c_idx, -1).amax(dim=1)
    box = torch.stack([x0, y0 + top, x1, y1 + top], dim=1)
    box = torch.where(area[:, None] > 0, box, 0)
    return torch.cat([area[:, None], box], dim=1).to(torch.int64)


_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)  # np.packbits order: first pixel in the high bit


def _pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Flatten a bool tensor (C order) into bytes of 8 pixels, as `np.packbits` would."""
    flat = mask.reshape(-1)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=mask.device)
    return (flat.view(-1, 8).to(torch.uint8) * weights).sum(dim=1, dtype=torch.uint8)


def _host_outputs(
    cols_first: np.ndarray,  # (W, h) bool: the cropped mask, transposed
    stats: np.ndarray,  # (5,) area, x0, y0, x1, y1 from the device
    full_shape: tuple[int, int],
    databar: DatabarCrop,
    min_region_px: int,
    pixel_size_nm: float | None,
    majority: int,
) -> MaskOutputs:
    """Region count and RLE on the host, from the transposed cropped mask."""
    height, width = full_shape
    if min_region_px > 0:  # speckle removal changes area and box: measure the result here
        mask = databar.undo_mask(drop_small_regions(cols_first.T, min_region_px), full_shape)
        region = region_stats(mask)
        counts = rle.encode(mask)["counts"] if region.area_px else None
    else:
        area = int(stats[0])
        counts = None
        region = RegionStats(0, 0, None)
        if area:
            # 8-connectivity is symmetric: the transposed mask has the same number of regions.
            _, n_regions = ndimage.label(cols_first, structure=_EIGHT_CONNECTED)
            x0, y0, x1, y1 = (int(v) for v in stats[1:])
            region = RegionStats(int(n_regions), area, (x0, y0, x1 - x0 + 1, y1 - y0 + 1))
            counts = rle.encode_column_major(
                _pad_columns(cols_first, databar.top, height), height, width
            )
    area_nm2 = region.area_px * pixel_size_nm**2 if pixel_size_nm else None
    return MaskOutputs(counts, region, area_nm2, majority if majority >= 0 else None)


def _pad_columns(cols_first: np.ndarray, top: int, height: int) -> np.ndarray:
    """(W, h) cropped columns → (W, H) full columns with the databar rows empty."""
    if cols_first.shape[1] == height:
        return cols_first
    full = np.zeros((cols_first.shape[0], height), dtype=bool)
    full[:, top : top + cols_first.shape[1]] = cols_first
    return full
