"""Naming a found defect by what its region looks like: the shape and contrast of the map's peak.

Why: on a tool's imaging style the backbone never learnt, its features barely separate the
defect classes, yet the defect map (with its self-similarity part) finds the defect in two
images of three, and once found, the region's size, elongation and contrast tell a particle
from a scratch or a hole far better than the backbone does (docs/offline-quality.md, "Naming
the found defect"). These numbers read no backbone feature, so they carry across styles.

`region_features` measures the 8-connected region around the fused defect map's maximum on a
small grey thumbnail of the model input (`Features.thumb`), plus how high the map rises there
(which separates good from defect images). `RegionHead` is a multinomial logistic regression
on them; `train.calibrate` fits it on maps of folds the heads did not see (a region found on
an image the heads were fitted to is cleaner than one found on a new image) and chooses the
weight w of P ∝ P_fused · P_region^w by cross-validation. w = 0 is the model without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from semclip.config import Calibration

# Side of the grey thumbnail the region is measured on (smaller inputs keep theirs): the map is
# smoothed at σ = 4 px of 240, so 64 px keeps its regions' shape at a quarter of 128 px's cost.
THUMB = 64
RING_PX = 2  # width of the band around the region that stands for its surroundings
REGION_C = 1.0  # inverse L2 strength of the logistic regression: ten-odd shots per class
REGION_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)  # weights w tried by cross-validation
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)  # thin diagonal defects stay one region

REGION_FEATURES = (
    "log_area",  # pixels of the peak region (at the thumbnail's resolution)
    "log_elongation",  # sqrt of the pixel covariance's eigenvalue ratio: scratch ≫ particle
    "extent",  # area / bounding-box area: a compact blob ≈ 0.8, a diagonal line ≪ 1
    "log_extent_px",  # the bounding box's longer side
    "compactness",  # perimeter² / area
    "peak_share",  # the peak region's share of all pixels above the threshold
    "contrast",  # mean inside − mean of the surrounding ring, in image std units
    "contrast_to_image",  # mean inside − image mean, in image std units
    "inside_spread",  # std inside, in image std units
    "edge_ratio",  # gradient magnitude inside / over the image
    "map_peak",  # the map's maximum: how sure it is that there is a defect at all
    "map_rise",  # maximum − median of the map
    "map_top",  # mean of the map's top 1 %
)


def thumbnail(images: torch.Tensor) -> torch.Tensor:
    """(B, C, S, S) model input → (B, t, t) float32 grey thumbnail, t = min(S, THUMB).

    Area-resized from the first channel (SEM images are grey; the model input repeats it). The
    model's normalisation is an affine map of the grey values, and every contrast here is in
    units of the image's own std, so it cancels.
    """
    side = min(int(images.shape[-1]), THUMB)
    return F.interpolate(images[:, :1].float(), size=(side, side), mode="area")[:, 0]


def peak_region(
    maps: torch.Tensor, fill_steps: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(peak region, above-threshold pixels), (B, h, w) float {0, 1} each, of maps (B, h, w).

    Above threshold: at least half-way from the map's median to its maximum. The peak region is
    the 8-connected set of such pixels that holds the maximum: scipy's labelling on the host by
    default (a 3 × 3 dilation loop until it stopped took about 80 ms an image on 2 CPU cores
    shared with another job), or, with `fill_steps`,
    that many 3 × 3 dilations grown from the maximum inside the above-threshold pixels (a traced
    ONNX graph has no labelling operator); both give the same region once the steps reach it.
    """
    return _peak_region(maps, maps.flatten(1).sort(dim=1).values, fill_steps)


def _peak_region(
    maps: torch.Tensor, ordered: torch.Tensor, fill_steps: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`peak_region` with each map's values sorted ascending (B, h·w) already at hand."""
    b, h, w = maps.shape
    peak, median = ordered[:, -1], ordered[:, ordered.shape[1] // 2]
    above = (maps >= (peak - 0.5 * (peak - median))[:, None, None]).to(maps.dtype)
    top = maps.flatten(1).argmax(dim=1)  # (B,)
    if fill_steps is None:
        return _labelled_peak(above, top), above
    cells = torch.arange(h * w, device=maps.device)
    region = (cells[None] == top[:, None]).to(maps.dtype).view(b, h, w)
    for _ in range(fill_steps):
        region = F.max_pool2d(region[:, None], 3, stride=1, padding=1)[:, 0] * above
    return region, above


def _labelled_peak(above: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """The 8-connected component of `above` (B, h, w) that holds flat index `top` (B,)."""
    from scipy import ndimage

    mask = above.detach().cpu().numpy() > 0
    width = mask.shape[2]
    out = np.zeros_like(mask)
    for i, cell in enumerate(top.tolist()):
        labelled, _ = ndimage.label(mask[i], structure=_EIGHT_CONNECTED)
        out[i] = labelled == labelled[cell // width, cell % width]
    return torch.from_numpy(out).to(above.device, above.dtype)


def _side_lengths(region: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounding-box height and width (B,) of non-empty regions (B, h, w)."""

    def span(line: torch.Tensor) -> torch.Tensor:  # (B, n) occupancy → extent
        idx = torch.arange(line.shape[1], device=line.device, dtype=line.dtype)[None]
        first = torch.where(line > 0, idx, torch.full_like(line, line.shape[1])).amin(dim=1)
        last = torch.where(line > 0, idx, torch.full_like(line, -1.0)).amax(dim=1)
        return last - first + 1

    return span(region.amax(dim=2)), span(region.amax(dim=1))


def region_features(
    thumbs: torch.Tensor, maps: torch.Tensor, fill_steps: int | None = None
) -> torch.Tensor:
    """`REGION_FEATURES` of each image: thumbnails (B, t, t) and defect maps (B, S, S) → (B, D).

    The map is area-resized to the thumbnail first. Batched tensor code that runs where the
    heads run (GPU included); only the peak's labelling goes to the host, unless `fill_steps`
    is given, and then the whole function exports to ONNX.
    """
    img = thumbs.float()
    side = img.shape[-1]
    m = maps.float()
    if m.shape[-1] != side or m.shape[-2] != side:
        m = F.interpolate(m[:, None], size=(side, side), mode="area")[:, 0]
    ordered = m.flatten(1).sort(dim=1).values  # (B, t·t): median, top 1 % and peak
    region, above = _peak_region(m, ordered, fill_steps)
    area = region.sum(dim=(1, 2))  # ≥ 1: the maximum itself is in it
    coords = torch.arange(side, device=img.device, dtype=img.dtype)
    ys, xs = coords.view(1, -1, 1), coords.view(1, 1, -1)

    def mean_in(values: torch.Tensor, weight: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        return (weight * values).sum(dim=(1, 2)) / n

    my, mx = mean_in(ys, region, area), mean_in(xs, region, area)
    dy, dx = ys - my[:, None, None], xs - mx[:, None, None]
    vyy = mean_in(dy * dy, region, area) + 1e-3
    vxx = mean_in(dx * dx, region, area) + 1e-3
    vxy = mean_in(dy * dx, region, area)
    half_trace = (vyy + vxx) / 2
    disc = (half_trace**2 - (vyy * vxx - vxy**2)).clamp_min(0.0).sqrt()
    elongation = 0.5 * torch.log((half_trace + disc) / (half_trace - disc).clamp_min(1e-6))
    height, width = _side_lengths(region)
    padded = F.pad(region[:, None], (1, 1, 1, 1), value=0.0)  # outside the frame is background
    eroded = -F.max_pool2d(-padded, 3, stride=1)[:, 0]
    perimeter = (region - eroded).sum(dim=(1, 2))
    ring = F.max_pool2d(region[:, None], 2 * RING_PX + 1, stride=1, padding=RING_PX)[:, 0]
    ring = ring - region
    image_mean = img.mean(dim=(1, 2))
    scale = ((img - image_mean[:, None, None]) ** 2).mean(dim=(1, 2)).sqrt() + 1e-6
    inside = mean_in(img, region, area)
    ring_n = ring.sum(dim=(1, 2))
    around = torch.where(ring_n > 0, mean_in(img, ring, ring_n.clamp_min(1.0)), image_mean)
    spread = mean_in((img - inside[:, None, None]) ** 2, region, area).sqrt()
    edges = F.pad(img[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    grad_y = (edges[:, 2:, 1:-1] - edges[:, :-2, 1:-1]) / 2
    grad_x = (edges[:, 1:-1, 2:] - edges[:, 1:-1, :-2]) / 2
    grad = (grad_y**2 + grad_x**2).sqrt()
    n = ordered.shape[1]
    peak, median = ordered[:, -1], ordered[:, n // 2]
    top = ordered[:, n - max(1, n // 100) :].mean(dim=1)
    return torch.stack(
        [
            torch.log(area),
            elongation,
            area / (height * width),
            torch.log(torch.maximum(height, width)),
            perimeter**2 / area,
            area / above.sum(dim=(1, 2)),
            (inside - around) / scale,
            (inside - image_mean) / scale,
            spread / scale,
            mean_in(grad, region, area) / (grad.mean(dim=(1, 2)) + 1e-6),
            peak,
            peak - median,
            top,
        ],
        dim=1,
    )


@dataclass(frozen=True)
class RegionHead:
    """Multinomial logistic regression on standardised `REGION_FEATURES`: log P(class | region).

    Kept as plain numbers (model class order) so the calibration stores it in JSON.
    """

    mean: tuple[float, ...]  # (D,) standardisation of the features it was fitted on
    scale: tuple[float, ...]  # (D,)
    weight: tuple[tuple[float, ...], ...]  # (K, D)
    bias: tuple[float, ...]  # (K,)

    @classmethod
    def fit(
        cls, features: np.ndarray, labels: np.ndarray, n_classes: int, c: float = REGION_C
    ) -> RegionHead:
        """Fit on (n, D) features and (n,) class indices; a class without samples is never
        chosen (bias −30). Needs two classes at least."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(labels)
        if len(np.unique(y)) < 2:
            raise ValueError("a region head needs samples of two classes at least")
        scaler = StandardScaler().fit(x)
        clf = LogisticRegression(C=c, max_iter=5000).fit(scaler.transform(x), y)
        weight = np.zeros((n_classes, x.shape[1]))
        bias = np.full(n_classes, -30.0)
        coef, intercept = clf.coef_, clf.intercept_
        if len(clf.classes_) == 2:  # sklearn keeps one row for two classes: logits (0, z)
            coef = np.vstack([np.zeros_like(coef), coef])
            intercept = np.concatenate([[0.0], intercept])
        weight[clf.classes_] = coef
        bias[clf.classes_] = intercept
        return cls(
            tuple(float(v) for v in scaler.mean_),
            tuple(float(v) for v in scaler.scale_),
            tuple(tuple(float(v) for v in row) for row in weight),
            tuple(float(v) for v in bias),
        )

    def log_probs(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D) region features → (B, K) log-probabilities."""
        x = features.float()
        mean = torch.tensor(self.mean, device=x.device)
        scale = torch.tensor(self.scale, device=x.device)
        weight = torch.tensor(self.weight, device=x.device)
        bias = torch.tensor(self.bias, device=x.device)
        return (((x - mean) / scale) @ weight.T + bias).log_softmax(dim=-1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": list(self.mean),
            "scale": list(self.scale),
            "weight": [list(r) for r in self.weight],
            "bias": list(self.bias),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RegionHead:
        return cls(
            tuple(float(v) for v in data["mean"]),
            tuple(float(v) for v in data["scale"]),
            tuple(tuple(float(v) for v in row) for row in data["weight"]),
            tuple(float(v) for v in data["bias"]),
        )


REGION_MAPS = ("fused", "self", "both")  # `Calibration.region_map`'s values, in tie order
T = TypeVar("T")


def reads_self_map(region_map: str) -> bool:
    """Whether a region head with this `region_map` (or `FitConfig.region_map`, where "choose"
    tries S_self among the rest) needs the self-similarity map S_self: every value but "fused".
    Inference, the ONNX graph and calibration compute S_self for the region by this one rule,
    even where γ = 0 keeps S_self out of the defect map."""
    return region_map != "fused"


def region_maps(region_map: str, fused: T, own: T | None) -> list[T] | None:
    """What a region head reads (`Calibration.region_map`): the fused map S ("fused"), the
    self-similarity map S_self ("self"), or both, their features side by side ("both"); None
    where S_self is needed and missing. Given the two maps' region features instead of the
    maps, it picks those (calibration scores each map's regions once for all three)."""
    if region_map == "fused":
        return [fused]
    if region_map not in REGION_MAPS:
        raise ValueError(f"region map {region_map!r}: expected fused, self or both")
    if own is None:
        return None
    return [own] if region_map == "self" else [fused, own]


def region_features_on(
    thumbs: torch.Tensor, maps: Sequence[torch.Tensor], fill_steps: int | None = None
) -> torch.Tensor:
    """`region_features` of each map's peak region, concatenated: (B, D · len(maps))."""
    return torch.cat([region_features(thumbs, m, fill_steps) for m in maps], dim=1)


def region_log_probs(
    calibration: Calibration,
    thumbs: torch.Tensor | None,
    maps: Sequence[torch.Tensor] | None,
    fill_steps: int | None = None,
) -> torch.Tensor | None:
    """The calibration's region head on thumbnails (B, t, t) and the defect maps (B, S, S) it
    reads (`region_maps`): (B, K) log-probabilities, or None when the model has no region head,
    w = 0, or no thumbnails or maps."""
    if calibration.region_head is None or calibration.region_weight <= 0:
        return None
    if thumbs is None or not maps:
        return None
    head = RegionHead.from_dict(calibration.region_head)
    return head.log_probs(region_features_on(thumbs.to(maps[0].device), maps, fill_steps))


def fuse_region(probs: torch.Tensor, log_q: torch.Tensor, weight: float) -> torch.Tensor:
    """P ∝ P_fused · P_region^w: (B, K) probabilities and region log-probabilities → (B, K)."""
    logits = torch.log(probs.float().clamp_min(1e-12)) + float(weight) * log_q.float()
    return logits.softmax(dim=-1).to(probs.dtype)
