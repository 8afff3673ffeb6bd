"""Typed, frozen configs of domain pretraining (`semclip pretrain`); one comment per field.

The defaults are the offline recipe behind `make backbone`: a small ViT from random init on a
synthetic SEM archive, sized to finish in under 45 minutes on 2 CPU cores. Recipes sized by
device (`cpu`, `gpu`) live in `recipes.yaml` beside this file: :func:`get_recipe`. Production
runs (continued training of a LAION ViT-B/16+ on a fab archive) change `model`, `pretrained`,
`lr` and the locks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

SMALL_MODEL = "semclip-sem-small"  # semclip/model_configs/semclip-sem-small.json
RECIPES_FILE = "recipes.yaml"  # packaged beside this module
RECIPE_NAMES = ("cpu", "gpu")

# Fields that do not change the training trajectory: a run may resume with other values.
_NOT_IN_FINGERPRINT = frozenset(
    {"checkpoint_every", "log_every", "num_workers", "preload_max_gb", "eval_max"}
)


@dataclass(frozen=True)
class AugmentConfig:
    """SEM augmentation: geometry applied alike to image and mask, photometry to the image.

    No colour jitter: SEM images are single-channel secondary-electron intensity.
    """

    min_crop_area: float = 0.5  # random square crops keep at least this fraction of the area
    dihedral: bool = True  # random flips and 90° rotations (SEM has no "up")
    brightness: float = 0.08  # offset drawn from ±brightness, on [0, 1] gray levels
    contrast: float = 0.25  # gain drawn from 1 ± contrast, around each image's mean
    noise_prob: float = 0.5  # share of images that get extra Gaussian shot-like noise
    noise_std: float = 0.04  # largest extra noise std (gray levels), drawn uniformly below
    blur_prob: float = 0.3  # share of images blurred (defocus)
    blur_sigma: float = 1.0  # largest blur sigma in model pixels, drawn uniformly below

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SynthArchiveConfig:
    """The synthetic archive pretraining generates when no data folder is given.

    Its seed is far from the seeds evaluation uses (0..9), and `seen_images.txt` records every
    image, so few-shot test sets never share images with it.
    """

    seed: int = 1000  # generator seed of the archive (evaluation sets use other seeds)
    per_class: int = 400  # images per class (balanced: the fab ratio matters less here)
    size: int = 256  # rendered side in pixels, databar included
    patterns: tuple[str, ...] = ()  # background families; empty = the styles' own families
    style: str = "default"  # a pretraining style or "default" (their mix); never a held-out one
    databar: str = "style"  # databar side, or "style": each image's style picks side and height

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "patterns": list(self.patterns)}


@dataclass(frozen=True)
class PretrainConfig:
    """One pretraining run: model, data handling, objective, optimiser and schedule."""

    model: str = SMALL_MODEL  # open_clip name (incl. semclip configs) or local-dir:PATH
    pretrained: str | None = None  # open_clip tag or checkpoint file; None = random init
    lock_text: bool = False  # freeze the whole text tower (continued training of LAION weights)
    lock_image_layers: int = 0  # freeze patch embedding + the first N vision blocks
    train_token_embedding: bool = False  # the 49k x width table: frozen, random is fine and
    # saves a third of the optimiser's work (only ~200 distinct tokens ever occur in captions)
    steps: int = 600  # optimiser steps in total (the LR schedule depends on it)
    batch_size: int = 48  # images per step
    lr: float = 5e-4  # peak AdamW learning rate (random init); ~1e-5 for LAION weights
    min_lr_ratio: float = 0.05  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 30  # linear warmup from 0; guards the contrastive loss against collapse
    weight_decay: float = 0.1  # AdamW, on matrices only (not gains, biases, logit scale)
    grad_clip: float = 1.0  # max global gradient norm
    contrastive_weight: float = 1.0  # CLIP loss on the image embedding (multi-positive)
    dense_weight: float = 1.0  # patch/caption alignment inside and outside masks
    dense_min_coverage: float = 0.25  # patch counts as defect from this mask coverage up
    vv_dense_weight: float = 1.0  # the same dense loss on the V-V path's stage tokens, which
    # SEM-CLIP's feature-surgery map S_n reads; untrained, that map came out inverted
    vv_stages: int = 4  # stages of the dual-path encoder (SEM-CLIP's m)
    captions_per_class: int = 2  # distinct sentences sampled per class and step
    metadata_prob: float = 0.5  # chance that a caption carries the image's SEM metadata words
    store_scale: float = 1.25  # images are kept at image_size * store_scale for random crops
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    val_fraction: float = 0.1  # held out per class for the zero-shot check on the model card
    val_max: int = 280  # at most this many validation images
    exclude_classes: tuple[str, ...] = ()  # classes left out of the archive (unseen-class study)
    databar_top: int = 0  # rows cropped at the top (read from synth.json for synthetic data)
    databar_bottom: int = 0  # rows cropped at the bottom (idem)
    cpu_bf16: bool | None = None  # bf16 autocast on CPU; None = where the CPU has native bf16
    # (AVX512-BF16/AMX: measured 2x faster than fp32 here; emulated bf16 would be slower)
    seed: int = 0  # init, batch order, augmentation and captions: same seed, same backbone
    checkpoint_every: int = 50  # steps between resumable checkpoints in the work folder
    log_every: int = 10  # steps between logged loss averages
    num_workers: int = 0  # image decoding threads when the archive is streamed
    preload_max_gb: float = 2.0  # decode the whole archive into memory when it fits in this
    eval_max: int = 0  # cap of validation images scored (0 = all of the split)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["exclude_classes"] = list(self.exclude_classes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("augment"), dict):
            values["augment"] = AugmentConfig(**values["augment"])
        if "exclude_classes" in values:
            values["exclude_classes"] = tuple(values["exclude_classes"])
        return cls(**values)

    def fingerprint(self, archive_digest: str) -> str:
        """Hash of everything that shapes the trajectory, so a resume never mixes two recipes."""
        data = {k: v for k, v in self.to_dict().items() if k not in _NOT_IN_FINGERPRINT}
        data["archive"] = archive_digest
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Recipe:
    """A named pretraining recipe from `recipes.yaml`: the run's config and its archive."""

    name: str  # "cpu" or "gpu"
    description: str  # one line for --help and the log
    pretrain: PretrainConfig
    archive: SynthArchiveConfig


def _strict(cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """``values`` after checking every key is a field of ``cls`` (typos fail loudly)."""
    unknown = sorted(set(values) - {f.name for f in fields(cls)})
    if unknown:
        raise ValueError(f"{where}: unknown {cls.__name__} fields {unknown}")
    return values


def load_recipes(path: str | Path | None = None) -> dict[str, Recipe]:
    """All recipes of a recipe file (the packaged `recipes.yaml` when None)."""
    ref = Path(path) if path else resources.files("semclip.pretrain") / RECIPES_FILE
    data = yaml.safe_load(ref.read_text())
    recipes = {}
    for name, entry in data.items():
        train = _strict(PretrainConfig, dict(entry.get("pretrain") or {}), f"{ref} {name}")
        archive = _strict(SynthArchiveConfig, dict(entry.get("archive") or {}), f"{ref} {name}")
        if "patterns" in archive:
            archive["patterns"] = tuple(archive["patterns"])
        recipes[name] = Recipe(
            name=name,
            description=" ".join(str(entry.get("description", "")).split()),
            pretrain=replace(PretrainConfig(), **train),
            archive=replace(SynthArchiveConfig(), **archive),
        )
    return recipes


def auto_recipe_name(device: str | None = None) -> str:
    """ "gpu" for a CUDA device (or, with none named, when CUDA is available), else "cpu"."""
    if device is not None:
        return "gpu" if str(device).startswith("cuda") else "cpu"
    import torch  # here: the configs stay importable without initialising torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def get_recipe(name: str | None = None, device: str | None = None) -> Recipe:
    """The recipe ``name`` (cpu, gpu), or the one for ``device`` / this machine when None."""
    recipes = load_recipes()
    name = name or auto_recipe_name(device)
    if name not in recipes:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(recipes)}")
    return recipes[name]
