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
class SSLConfig:
    """Label-free adaptation (`--unlabeled`): iBOT-style self-distillation on the ViT's tokens.

    An EMA teacher sees two clean global views; the student sees the same views with blocks of
    patches replaced by a learned mask token, plus small local crops. Both project tokens onto
    K prototypes; the student's softmax (temperature `student_temp`) learns the teacher's
    centred, sharpened one: a [CLS] term across views (DINO) and a patch term on the masked
    tokens (iBOT), which is what moves the patch features segmentation reads. Sized for CPU.
    """

    objective: str = "features"  # "features": masked-feature prediction (the student's masked
    # patch tokens regress the EMA teacher's layer-normalised clean tokens, data2vec-style;
    # [CLS] across views by cosine); "distill": iBOT/DINO prototypes. Measured on 2,100 tool-b
    # images, 150 CPU steps: distill stayed at uniform outputs (entropy 0.98-0.999 log K) the
    # whole run; features learnt (loss 0.97 -> 0.08), kept zero-shot better (offline-quality.md)
    weight: float = 1.0  # weight of the whole SSL loss (mixed runs add the labelled terms)
    cls_weight: float = 1.0  # DINO [CLS] term across views, inside the SSL loss
    patch_weight: float = 1.0  # iBOT masked-patch term, inside the SSL loss
    prototypes: int = 1024  # K of each head's softmax (DINO uses 65k; 1k fits CPU and ~2k images)
    head_hidden: int = 512  # hidden width of the projection MLPs (3 layers, as DINO)
    head_bottleneck: int = 128  # L2-normalised bottleneck before the cosine prototypes
    student_temp: float = 0.1  # student softmax temperature
    teacher_temp: float = 0.05  # teacher temperature after warmup (sharpening; DINO's 0.07 is
    # for long runs: on ~100 CPU steps a softer teacher drifted towards uniform outputs)
    teacher_temp_start: float = 0.04  # teacher temperature at step 0 (sharper: avoids uniform)
    teacher_temp_warmup: float = 0.3  # share of the steps over which it rises linearly
    center_momentum: float = 0.9  # EMA of the teacher's mean output subtracted before softmax
    momentum_start: float = 0.996  # teacher EMA momentum at step 0, cosine to momentum_end
    momentum_end: float = 1.0  # at the last step
    mask_prob: float = 0.5  # share of the student's global views that get masked (iBOT)
    mask_ratio_min: float = 0.3  # masked share of a masked view's patches, drawn uniformly ...
    mask_ratio_max: float = 0.5  # ... in [min, max], as rectangular blocks (block-wise masking)
    global_crop_min: float = 0.4  # global views: random square crops of >= this area, model size
    local_crops: int = 2  # small crops per image for the [CLS] term (0 = none)
    local_crop_min: float = 0.05  # local crops cover [local_crop_min, local_crop_max] of the area
    local_crop_max: float = 0.4
    local_size: int = 0  # local crop side in pixels; 0 = 2/5 of the model size, whole patches
    head_lr_scale: float = 5.0  # the randomly initialised heads and mask token learn this much
    # faster than the backbone (whose lr is small when it continues from trained weights)
    anchor_weight: float = 0.0  # L2-SP: weight x mean squared drift of the vision trunk from its
    # start (0 = off; the text tower is locked and ln_post/proj get no SSL gradient regardless)
    export_teacher: bool = True  # export the EMA teacher's trunk (smoother; DINO/iBOT evaluate it)
    max_images: int = 0  # cap of unlabelled images used, a seeded subset (0 = all)
    collapse_after: float = 0.25  # share of the steps before collapse checks start
    collapse_patience: int = 3  # consecutive collapsed log windows before the run stops
    collapse_uniform: float = 0.995  # collapse: teacher per-sample entropy above this x log K
    # (a random-init sem-small run plateaued at 0.96: not collapsed, just slow to sharpen)
    collapse_dominant: float = 0.1  # collapse: entropy of the teacher's batch-mean output below
    # this x log K (every sample picks the same few prototypes)
    collapse_std: float = 0.2  # collapse: per-dimension std of the normalised patch features
    # below this x its value at step 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    ssl: SSLConfig | None = None  # self-distillation on unlabelled images (`--unlabeled`)
    ssl_only: bool = False  # no labelled data: ln_post/proj frozen, labelled terms off

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["exclude_classes"] = list(self.exclude_classes)
        if self.ssl is None:  # keeps fingerprints of runs from before SSL unchanged
            del data["ssl"], data["ssl_only"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("augment"), dict):
            values["augment"] = AugmentConfig(**values["augment"])
        if isinstance(values.get("ssl"), dict):
            values["ssl"] = SSLConfig(**values["ssl"])
        if "exclude_classes" in values:
            values["exclude_classes"] = tuple(values["exclude_classes"])
        return cls(**values)

    def fingerprint(self, archive_digest: str) -> str:
        """Hash of everything that shapes the trajectory, so a resume never mixes two recipes.

        `archive_digest` names the data: the labelled archive's digest, plus the unlabelled
        set's when there is one.
        """
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


# `--unlabeled` defaults where the command line does not say otherwise: continued training of a
# trained backbone on ~2,000 unlabelled images on 2 CPU cores. semclip-sem-small measured
# 2.3 images/s (batch 32, 2 global + 2 local views: 13.8 s a step) on 2 cores shared with
# another training run, so 80 steps take ~18 min (plus ~1 min decoding 2,000 images).
SSL_RECIPE = {
    "steps": 80,  # ~1.3 epochs of 2,000 images at batch 32
    "batch_size": 32,  # images per step (2 global views each, so 64 student/teacher passes)
    "lr": 5e-5,  # backbone peak lr (heads x head_lr_scale): gentle on trained weights
    "warmup_steps": 10,
    "log_every": 5,  # collapse indicators are logged (and checked) every log window
    "checkpoint_every": 10,
}
