"""Typed, frozen configs of fitting and prediction; one comment per field."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal, get_args, get_origin, get_type_hints

MembankTokens = Literal["vanilla", "vv"]  # ln_post vanilla tokens (width) or V-V tokens (embed)
ClassAlpha = Literal["global", "prompted"]  # one α, or α_c = 0 for classes CLIP cannot know
HeadInit = Literal["prototype", "random"]  # class means (Tip-Adapter style) or random weights
RegionMap = Literal["choose", "fused", "self", "both"]  # the maps the region head reads

# The largest image area decoded by default: 2**28 px (about 268 Mpx, e.g. 16384 x 16384) is
# 1 GiB of float32 output, above Pillow's own ~179 Mpx warning (full-wafer SEM mosaics are
# that large) and below a 389 KB PNG claiming 20000 x 20000 px (400 Mpx: 1.6 GiB of float32,
# several GiB in flight), which ended a nightly run. Not 400 Mpx: that very bomb would pass.
# The setting ``max_image_pixels`` (SEMCLIP_MAX_IMAGE_PIXELS) defaults to it.
DEFAULT_MAX_IMAGE_PIXELS = 2**28


@dataclass(frozen=True)
class FitConfig:
    """How the heads are fitted on a support set (backbone and text tower stay frozen)."""

    seed: int = 0  # drives augmentation order, init and batching: same seed, same model
    n_stages: int = 4  # m: stages of the dual-path encoder
    augment: bool = True  # the 8 flips / 90° rotations of each support image
    epochs: float = 40.0  # passes over the (augmented) cached features: the step budget
    min_steps: int = 100  # lower bound on optimiser steps (tiny support sets)
    max_steps: int = 1500  # upper bound on optimiser steps (large support sets)
    plateau_patience: int = 60  # stop when the smoothed loss made no new 1 % low for this long
    batch_size: int = 32  # cached feature entries per step
    train_patches: int = 96  # patch tokens sampled per step (0 = all): the cost is per token
    lr: float = 1e-3  # Adam on the transformation layers (the paper's optimiser)
    weight_decay: float = 1e-4  # Adam L2 on the transformation layers
    head_lr: float = 1e-2  # Adam on the linear classification head (a convex problem)
    head_weight_decay: float = 1e-3  # L2 on the head: bounded logits on separable shots
    head_init: HeadInit = "prototype"  # start of the classification head
    focal_gamma: float = 2.0  # focal loss focusing parameter
    dice_weight: float = 1.0  # weight of the dice loss on the defect map
    dice_per_image: bool = False  # dice per image and stage (True) or one over the batch
    focal_weight: float = 1.0  # weight of the focal loss on per-pixel classes
    ce_weight: float = 1.0  # weight of the cross-entropy on the classification head
    cv_folds: int = 3  # folds for choosing τ and α when k ≥ 2 (by image or group)
    default_alpha: float = 0.1  # α at k = 1, where nothing is held out to choose it
    class_alpha: ClassAlpha = "prompted"  # "prompted": classes without prompts use the head only
    surgery_scale: float = 1.0  # temperature of the surgery class weights softmax(s · F_cls Tᵀ)
    membank: bool = True  # kNN distance to the good shots' patches, fused into the defect map
    membank_tokens: MembankTokens = "vv"  # which patch tokens the memory bank stores
    membank_k: int = 1  # neighbours averaged for a patch's distance (cosine)
    membank_max_patches: int = 20000  # per stage; more are reduced by a greedy coreset
    membank_augmented: bool = False  # also store the flipped/rotated copies' patches (8×)
    membank_weight: float = 0.5  # β in S = (1 − β) S_clip + β S_knn where it cannot be chosen
    selfsim: bool = True  # fuse the within-image self-similarity map (semclip.selfsim)
    selfsim_weight: float = 0.5  # γ in S = (1 − γ) S_fit + γ S_self where it cannot be chosen
    region_head: bool = True  # name the map's peak region by its shape (k ≥ 2, semclip.region_head)
    region_map: RegionMap = "choose"  # region read on S, S_self, both, or "choose": CV picks
    generic_prompts: bool = False  # "w/o detailed prompt" ablation
    feature_batch_size: int = 0  # backbone batch; 0 = by device (16 CPU, by memory on CUDA)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self) -> None:
        """Raise ValueError naming the fields where two settings contradict each other.

        Why: a forced region map on S_self with the self-similarity map turned off used to fit
        no region head at all, silently (the fit log said region=0.00); a fab engineer who
        asked for it should hear why they did not get it.
        """
        if not self.selfsim and self.region_map in ("self", "both"):
            raise ValueError(
                f"fit config region_map={self.region_map} reads the self-similarity map, which "
                "selfsim=false turns off: set selfsim=true, or region_map=fused or choose"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FitConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_overrides(self, pairs: Sequence[str]) -> FitConfig:
        """This config with `KEY=VALUE` pairs applied, each value read as its field's type.

        Lets an engineer re-measure a default (α at k = 1, the surgery temperature, the pixel
        losses) on their own images without editing code; a typo fails naming the field.
        """
        changes: dict[str, Any] = {}
        for pair in pairs:
            key, sep, text = pair.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or not key:
                msg = f"fit override {pair!r}: expected KEY=VALUE, e.g. surgery_scale=10"
                raise ValueError(msg)
            changes[key] = parse_field_value(self, key, text.strip())
        changed = replace(self, **changes)
        changed.check()
        return changed


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_field_value(config: FitConfig, key: str, text: str) -> Any:
    """`text` as the type of FitConfig field `key` (its default's type); errors name the field."""
    known = {f.name for f in fields(config)}
    if key not in known:
        raise ValueError(f"fit override {key!r}: no such field; known: {', '.join(sorted(known))}")
    default = getattr(config, key)
    if isinstance(default, bool):
        if text.lower() not in _TRUE + _FALSE:
            raise ValueError(f"fit override {key}={text!r}: expected true or false")
        return text.lower() in _TRUE
    try:
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        kind = type(default).__name__
        raise ValueError(f"fit override {key}={text!r}: expected a {kind}") from None
    hint = get_type_hints(FitConfig)[key]  # the Literal fields' choices, from the annotation
    choices = get_args(hint) if get_origin(hint) is Literal else None
    if choices is not None and text not in choices:
        raise ValueError(f"fit override {key}={text!r}: expected one of {', '.join(choices)}")
    return text


@dataclass(frozen=True)
class PredictConfig:
    """Prediction-time behaviour; stored defaults can be overridden per call."""

    batch_size: int = 0  # images per backbone batch; 0 = by device
    review_min_probability: float = 0.5  # needs_review when the top class probability is below
    min_region_px: int = 0  # regions smaller than this (original pixels) are dropped
    pixel_size_nm: float | None = None  # overrides the pixel size read from the file
    tiff_page: int = 0  # page of multi-page TIFFs (detector channel) to use; TIFF only
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # larger images are refused, not decoded
    autocast: bool = True  # bf16/fp16 autocast on CUDA (ignored on CPU)
    decode_workers: int = 0  # threads decoding the next batches during this one; 0 = by CPUs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PredictConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Calibration:
    """Decision parameters chosen on the support set (cross-validated when k ≥ 2).

    Defaults are what models saved before a field existed used, so an old artifact predicts as
    it did; `fit` sets every field explicitly.
    """

    tau: float = 0.5  # defect-map threshold for the binary mask
    alpha: float = 0.1  # P = α·P_clip + (1 − α)·P_head
    pclip_source: str = "transform"  # "transform" (stage CLS via W_i) or "clip" (ln_post/proj)
    method: str = "default"  # "cross-validation" or "default", for the lineage
    details: dict[str, Any] = field(default_factory=dict)  # fold scores, for the lineage
    class_alpha: tuple[float, ...] | None = None  # per-class α_c (model order); None: all α
    membank_weight: float = 0.0  # β: weight of the memory-bank map in the defect map S
    surgery_scale: float = 1.0  # temperature of the feature-surgery class weights
    selfsim_weight: float = 0.0  # γ: weight of the self-similarity map in the defect map S
    selfsim_scale: float = 1.0  # good shots' self-similarity distance quantile (map 0.5 there)
    region_weight: float = 0.0  # w in P ∝ P_fused · P_region^w (semclip.region_head); 0: unused
    region_head: dict[str, Any] | None = None  # `RegionHead.to_dict()`, fitted in calibration
    region_map: str = "fused"  # maps its region is read on: "fused" (S), "self" (S_self), "both"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """A stored calibration; fields it predates keep the behaviour of the code that wrote it."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("class_alpha") is not None:
            values["class_alpha"] = tuple(float(a) for a in values["class_alpha"])
        return cls(**values)

    def alphas(self, n_classes: int) -> tuple[float, ...]:
        """α_c for every class: the per-class values, else the global α."""
        if self.class_alpha is None:
            return (float(self.alpha),) * n_classes
        if len(self.class_alpha) != n_classes:
            raise ValueError(f"{len(self.class_alpha)} class α for {n_classes} classes")
        return tuple(float(a) for a in self.class_alpha)
