"""Typed, frozen configs of fitting and prediction; one comment per field."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class FitConfig:
    """How the heads are fitted on a support set (backbone and text tower stay frozen)."""

    seed: int = 0  # drives augmentation order, init and batching: same seed, same model
    n_stages: int = 4  # m: stages of the dual-path encoder
    augment: bool = True  # the 8 flips / 90° rotations of each support image
    epochs: float = 6.0  # passes over the (augmented) cached features
    min_steps: int = 60  # lower bound on optimiser steps (tiny support sets)
    max_steps: int = 400  # upper bound on optimiser steps (large support sets)
    batch_size: int = 32  # cached feature entries per step
    train_patches: int = 96  # patch tokens sampled per step (0 = all): the cost is per token
    lr: float = 1e-3  # Adam (the paper's optimiser)
    weight_decay: float = 1e-4  # Adam L2; keeps the few-shot head from over-confident weights
    focal_gamma: float = 2.0  # focal loss focusing parameter
    dice_weight: float = 1.0  # weight of the dice loss on the defect map
    focal_weight: float = 1.0  # weight of the focal loss on per-pixel classes
    ce_weight: float = 1.0  # weight of the cross-entropy on the classification head
    cv_folds: int = 3  # folds for choosing τ and α when k ≥ 2 (by image or group)
    default_alpha: float = 0.1  # α at k = 1, where nothing is held out to choose it
    generic_prompts: bool = False  # "w/o detailed prompt" ablation
    feature_batch_size: int = 0  # backbone batch; 0 = by device (16 CPU, by memory on CUDA)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FitConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class PredictConfig:
    """Prediction-time behaviour; stored defaults can be overridden per call."""

    batch_size: int = 0  # images per backbone batch; 0 = by device
    review_min_probability: float = 0.5  # needs_review when the top class probability is below
    min_region_px: int = 0  # regions smaller than this (original pixels) are dropped
    pixel_size_nm: float | None = None  # overrides the pixel size read from the file
    tiff_page: int = 0  # page of multi-page TIFFs (detector channel) to use
    autocast: bool = True  # bf16/fp16 autocast on CUDA (ignored on CPU)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PredictConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Calibration:
    """Decision parameters chosen on the support set (cross-validated when k ≥ 2)."""

    tau: float = 0.5  # defect-map threshold for the binary mask
    alpha: float = 0.1  # P = α·P_clip + (1 − α)·P_head
    pclip_source: str = "transform"  # "transform" (stage CLS via W_i) or "clip" (ln_post/proj)
    method: str = "default"  # "cross-validation" or "default", for the lineage
    details: dict[str, Any] = field(default_factory=dict)  # fold scores, for the lineage

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
