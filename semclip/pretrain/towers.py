"""The open_clip model being pretrained: creation, locks, optimiser, and its token outputs.

Random init is seeded (the offline recipe); a tag, checkpoint or `local-dir:` folder is loaded
through `load_backbone`, so its helpful errors apply, and then unfrozen for training.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import open_clip
import torch
from torch import nn

from semclip.backbone import LOCAL_DIR_PREFIX, load_backbone, register_model_configs
from semclip.encoder import DualPathEncoder
from semclip.pretrain.config import PretrainConfig

log = logging.getLogger(__name__)


@dataclass
class Towers:
    """A trainable open_clip model and what is needed to save it as a backbone."""

    model: open_clip.CLIP
    tokenizer: Any  # list[str] -> (N, context) LongTensor
    model_cfg: dict[str, Any]  # architecture, written to the local-dir folder
    preprocess_cfg: dict[str, Any]  # size, mean, std
    init: str  # for the model card: "random (seed 0)", a tag or a checkpoint path

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, tuple | list) else size)

    @property
    def grid(self) -> int:
        return int(self.model.visual.grid_size[0])


def create_towers(config: PretrainConfig) -> Towers:
    """Build the model on CPU: random init from `config.seed`, else the given weights."""
    register_model_configs()
    if config.pretrained is None and not config.model.startswith(LOCAL_DIR_PREFIX):
        model_cfg = open_clip.get_model_config(config.model)
        if model_cfg is None:
            raise ValueError(
                f"unknown model '{config.model}': use an open_clip name, semclip-sem-small, "
                f"semclip-tiny, or {LOCAL_DIR_PREFIX}PATH"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = open_clip.create_model(config.model, pretrained=None, device="cpu")
        tokenizer = open_clip.get_tokenizer(config.model)
        init = f"random (seed {config.seed})"
    else:
        backbone = load_backbone(config.model, config.pretrained, "cpu")
        model, tokenizer, model_cfg = backbone.model, backbone.tokenizer, backbone.model_cfg
        init = config.pretrained or config.model
    model.requires_grad_(True).train()
    preprocess = {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in open_clip.get_model_preprocess_cfg(model).items()
    }
    towers = Towers(model, tokenizer, dict(model_cfg), preprocess, init)
    apply_locks(towers.model, config)
    return towers


def apply_locks(model: open_clip.CLIP, config: PretrainConfig) -> None:
    """Freeze what the recipe keeps fixed: text tower, early vision layers, token table.

    SSL-only runs (`--unlabeled` without `--data`) also freeze ln_post, proj and the logit
    scale: nothing but the labelled terms may move the image-text space.
    """
    if config.lock_text:
        model.lock_text_tower()
    if not config.train_token_embedding:
        model.token_embedding.requires_grad_(False)
    if config.ssl_only:  # no labelled term: keep the projection into the text space as it was
        model.visual.ln_post.requires_grad_(False)
        if isinstance(model.visual.proj, nn.Parameter):
            model.visual.proj.requires_grad_(False)
        model.logit_scale.requires_grad_(False)
    n = config.lock_image_layers
    if n > 0:
        visual = model.visual
        blocks = visual.transformer.resblocks
        if n > len(blocks):
            raise ValueError(f"--lock-image-layers {n} exceeds the {len(blocks)} vision layers")
        for module in (visual.conv1, visual.ln_pre, *blocks[:n]):
            module.requires_grad_(False)
        visual.class_embedding.requires_grad_(False)
        visual.positional_embedding.requires_grad_(False)


def build_optimizer(
    model: nn.Module,
    config: PretrainConfig,
    extra: list[nn.Parameter] | None = None,
    extra_lr_scale: float = 1.0,
) -> torch.optim.AdamW:
    """AdamW as open_clip trains: weight decay on matrices only, betas (0.9, 0.98).

    `extra` (the SSL heads and mask token) form a third group without weight decay whose
    learning rate is `extra_lr_scale` times the schedule's (the group's "lr_scale").
    The fused kernel: the per-parameter loop took 15 % of a CPU step for this small model.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        plain = param.ndim < 2 or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if plain else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if extra:
        groups.append({"params": extra, "weight_decay": 0.0, "lr_scale": extra_lr_scale})
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98), eps=1e-6, fused=True)


def image_tokens(model: open_clip.CLIP, images: torch.Tensor) -> torch.Tensor:
    """All final-layer tokens through ln_post/proj: (B, 3, S, S) → (B, 1+P, embed).

    Token 0 equals `model.encode_image` (class-token pooling); tokens 1.. are the patch
    embeddings the dense loss aligns with captions. Reuses the encoder's embed/project so no
    private open_clip attribute is touched.
    """
    encoder = DualPathEncoder(model, n_stages=1)  # holds references only: cheap
    x = encoder.embed(images)  # (B, 1+P, width)
    x = model.visual.transformer(x)
    return encoder.project(x)


def dual_path_tokens(
    model: open_clip.CLIP, images: torch.Tensor, n_stages: int
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Final-layer tokens (as `image_tokens`) and each stage's V-V tokens, with gradients.

    Returns ((B, 1+P, embed), m x (B, 1+P, embed)); the V-V tokens are the F_n SEM-CLIP's
    feature surgery reads (ln_post/proj of the stage's V-V sum, vanilla CLS first).
    """
    encoder = DualPathEncoder(
        model, n_stages=min(n_stages, len(model.visual.transformer.resblocks))
    )
    stages = encoder(images)
    return encoder.project(stages[-1].vanilla), [s.vv for s in stages]


def lr_at(step: int, config: PretrainConfig) -> float:
    """Linear warmup to `lr`, then cosine to `lr * min_lr_ratio` at the last step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(config.steps - config.warmup_steps, 1)
    progress = min((step - config.warmup_steps) / span, 1.0)
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
