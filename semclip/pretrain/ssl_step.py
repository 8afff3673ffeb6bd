"""One step's self-distillation term: views of an unlabelled batch, the loss, the EMA, collapse.

The training loop (`trainer.TrainLoop`) adds this term to the labelled one (if any) before its
single backward and optimiser step, then calls `after_update` for the teacher's EMA. Every
random draw comes from a generator seeded by (seed, step), on its own stream, so a resumed run
draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace

import numpy as np
import torch

from semclip.pretrain.augment import augment_batch, normalize
from semclip.pretrain.config import PretrainConfig, SSLConfig
from semclip.pretrain.ssl import (
    SelfDistillation,
    Views,
    block_masks,
    teacher_momentum,
    teacher_temperature,
)
from semclip.pretrain.towers import Towers
from semclip.pretrain.unlabeled import UnlabeledSet

log = logging.getLogger(__name__)

SSL_STREAM = 19  # seed stream of the SSL draws (the labelled batch uses 13)
INDICATORS = ("teacher_entropy", "teacher_marginal_entropy", "patch_std")


def local_crop_size(image_size: int, patch: int, config: SSLConfig) -> int:
    """Side of the local crops: `local_size`, else 2/5 of the model's, in whole patches (>= 2)."""
    if config.local_size:
        return config.local_size
    return max(2, round(0.4 * image_size / patch)) * patch


class SSLStep:
    """Draws a step's unlabelled views and computes the SSL loss on the towers' vision trunk."""

    def __init__(
        self,
        config: PretrainConfig,
        towers: Towers,
        ssl: SelfDistillation,
        unlabeled: UnlabeledSet,
        device: torch.device,
        autocast: Callable[[], AbstractContextManager] = nullcontext,
    ) -> None:
        assert config.ssl is not None
        self.config, self.cfg, self.towers, self.ssl = config, config.ssl, towers, ssl
        self.unlabeled, self.device, self.autocast = unlabeled, device, autocast
        self.indices = np.arange(len(unlabeled))
        self.patch = towers.image_size // towers.grid
        self.local_size = local_crop_size(towers.image_size, self.patch, self.cfg)
        visual = towers.model.visual
        self.anchor = (
            [(p, p.detach().clone()) for p in visual.parameters() if p.requires_grad]
            if self.cfg.anchor_weight > 0
            else []
        )

    def loss(
        self, step: int, indices: np.ndarray, gen: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted SSL loss (with the L2 anchor) and its metrics for the images `indices`."""
        cfg = self.cfg
        views = self.views(self.unlabeled.batch(indices).to(self.device), gen)
        temp = teacher_temperature(step, self.config.steps, cfg)
        with self.autocast():  # the views are built outside: augmentation stays fp32
            loss, metrics = self.ssl(self.towers.model.visual, views, temp)
        if self.anchor:
            drift = sum((p - p0).square().sum() for p, p0 in self.anchor)
            metrics["anchor_drift"] = float(drift.detach())
            loss = loss + cfg.anchor_weight * drift
        metrics["loss_ssl"] = float(loss.detach())
        metrics["teacher_temp"] = temp
        return cfg.weight * loss, metrics

    def views(self, stored: torch.Tensor, gen: torch.Generator) -> Views:
        """Two global views at model size (+ local crops) and the students' block masks."""
        cfg, aug = self.cfg, self.config.augment
        mean, std = self.towers.preprocess_cfg["mean"], self.towers.preprocess_cfg["std"]
        size = self.towers.image_size
        blank = torch.zeros_like(stored)
        g_aug = replace(aug, min_crop_area=cfg.global_crop_min)
        l_aug = replace(aug, min_crop_area=cfg.local_crop_min)
        globals_ = torch.stack(
            [normalize(augment_batch(stored, blank, size, g_aug, gen)[0], mean, std) for _ in "gg"]
        )  # (2, B, 3, S, S)
        locals_ = [
            normalize(
                augment_batch(stored, blank, self.local_size, l_aug, gen, cfg.local_crop_max)[0],
                mean,
                std,
            )
            for _ in range(cfg.local_crops)
        ]
        b = stored.shape[0]
        masks = block_masks(2 * b, self.towers.grid, cfg, gen).view(2, b, -1)
        return Views(globals_, torch.stack(locals_) if locals_ else None, masks.to(stored.device))

    def after_update(self, step: int) -> None:
        """EMA of the teacher with this step's momentum."""
        m = teacher_momentum(step, self.config.steps, self.cfg)
        self.ssl.update_teacher(self.towers.model.visual, m)


def collapse_reason(
    summary: dict[str, float], reference_std: float | None, config: SSLConfig
) -> str | None:
    """Why a log window's indicators look collapsed, or None.

    Entropies are in units of log K. Uniform collapse: the teacher's per-sample output is
    (nearly) uniform. Dominant collapse: its batch-mean output concentrates on a few
    prototypes. Feature collapse: the normalised patch features lose their spread. An
    indicator the objective does not report (no softmax in masked-feature prediction) is not
    checked.
    """
    reasons = []
    if (
        _present(summary, "teacher_entropy")
        and summary["teacher_entropy"] > config.collapse_uniform
    ):
        reasons.append(
            f"teacher entropy {summary['teacher_entropy']:.3f} log K > {config.collapse_uniform}"
            " (uniform outputs)"
        )
    if (
        _present(summary, "teacher_marginal_entropy")
        and summary["teacher_marginal_entropy"] < config.collapse_dominant
    ):
        reasons.append(
            f"teacher batch-mean entropy {summary['teacher_marginal_entropy']:.3f} log K < "
            f"{config.collapse_dominant} (one prototype for every image)"
        )
    if reference_std and summary["patch_std"] < config.collapse_std * reference_std:
        reasons.append(
            f"patch feature std {summary['patch_std']:.4f} < {config.collapse_std} x its start "
            f"{reference_std:.4f}"
        )
    return "; ".join(reasons) or None


def describe_indicators(summary: dict[str, float], prototypes: int) -> str:
    """One log line of the SSL losses and collapse indicators."""
    losses = f"ssl cls {summary['loss_ssl_cls']:.3f}, patch {summary['loss_ssl_patch']:.3f} | "
    if not _present(summary, "teacher_entropy"):  # masked-feature prediction: no softmax
        return f"{losses}patch std {summary['patch_std']:.4f}"
    return (
        f"{losses}teacher entropy {summary['teacher_entropy']:.3f} (batch-mean "
        f"{summary['teacher_marginal_entropy']:.3f}) x log K={math.log(prototypes):.2f}, "
        f"patch entropy {summary['patch_entropy']:.3f}, patch std {summary['patch_std']:.4f}"
    )


def _present(summary: dict[str, float], key: str) -> bool:
    """Whether the window reported `key`."""
    return indicator_reported(summary.get(key))


def indicator_reported(value: float | None) -> bool:
    """Whether an SSL indicator has a value: one that does not apply to the objective is
    absent (None once read back), and older records wrote it as NaN."""
    return value is not None and not math.isnan(value)
