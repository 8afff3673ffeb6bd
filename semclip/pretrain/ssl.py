"""Self-distillation on ViT tokens (iBOT): an EMA teacher, masked student views, K prototypes.

The teacher is an exponential moving average of the student's vision trunk and heads; it sees
clean global views. The student sees the same views with blocks of patch embeddings replaced
by a learned mask token (injected after the patch embedding, before the position embedding,
through the tower's public modules only), plus small local crops. Both heads map tokens to a
softmax over K prototypes; the student learns the teacher's centred, sharpened distribution:

- [CLS] term (DINO): every teacher global view supervises every other student view;
- patch term (iBOT): at masked positions, the student's patch output learns the teacher's
  output for the unmasked patch. This is the term that moves the patch features.

The heads read the residual stream *before* `ln_post`/`proj`, with their own LayerNorm, so the
SSL loss never trains the projection into the joint image-text space. The maths are plain
functions of tensors and one `nn.Module` holding the fitted state in parameters and buffers
(so its `state_dict` is the whole SSL state a checkpoint needs).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from semclip.pretrain.config import SSLConfig


class ProjectionHead(nn.Module):
    """LayerNorm → 3-layer MLP → L2-normalised bottleneck → cosine with K unit prototypes.

    Equivalent to DINO's head with a weight-normalised last layer whose gain is fixed at 1
    (`norm_last_layer`), written without `weight_norm` so `state_dict` is plain tensors.
    Returns cosines in [-1, 1]; the caller divides by a temperature.
    """

    def __init__(self, width: int, hidden: int, bottleneck: int, prototypes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, bottleneck),
        )
        self.prototypes = nn.Parameter(torch.randn(prototypes, bottleneck) * 0.02)
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(..., width) → (..., K) cosines."""
        z = F.normalize(self.mlp(self.norm(tokens)), dim=-1)
        return z @ F.normalize(self.prototypes, dim=-1).T


def vit_embed(
    visual: nn.Module,
    images: torch.Tensor,
    mask: torch.Tensor | None = None,
    mask_token: torch.Tensor | None = None,
) -> torch.Tensor:
    """Token embedding of an open_clip `VisionTransformer`, with optional masking. (B, 1+P, W).

    The same steps as `DualPathEncoder.embed` (conv1 → class token → position embedding →
    ln_pre) through public attributes only. `mask` (B, P) bool replaces those patch
    embeddings by `mask_token` (W,) before the position embedding, so a masked token still
    knows where it is. Images of another size (local crops) get the position embedding
    resized bicubically, as DINO does. Patch dropout is not applied: dropping tokens would
    misalign the masked positions with their targets.
    """
    x = visual.conv1(images)  # (B, W, h, w)
    h, w = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)  # (B, P, W)
    if mask is not None:
        token = mask_token.to(x.dtype).view(1, 1, -1)
        x = torch.where(mask[..., None], token, x)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, W)
    x = torch.cat([cls, x], dim=1) + resized_positions(visual, h, w).to(x.dtype)
    return visual.ln_pre(x)


def resized_positions(visual: nn.Module, h: int, w: int) -> torch.Tensor:
    """The tower's (1+g², W) position embedding for an h x w patch grid (class row kept)."""
    pos = visual.positional_embedding  # (1+g*g, W)
    if pos.shape[0] == 1 + h * w:
        return pos
    g = math.isqrt(pos.shape[0] - 1)
    grid = pos[1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)  # (1, W, g, g)
    grid = F.interpolate(grid.float(), size=(h, w), mode="bicubic", antialias=True)
    return torch.cat([pos[:1], grid.to(pos.dtype).flatten(2)[0].T], dim=0)  # (1+h*w, W)


def trunk_tokens(
    visual: nn.Module,
    images: torch.Tensor,
    mask: torch.Tensor | None = None,
    mask_token: torch.Tensor | None = None,
) -> torch.Tensor:
    """Final residual-stream tokens, before ln_post/proj: (B, 3, S, S) → (B, 1+P, W)."""
    return visual.transformer(vit_embed(visual, images, mask, mask_token))


def block_masks(n: int, grid: int, config: SSLConfig, gen: torch.Generator) -> torch.Tensor:
    """(n, grid²) bool: per view, with probability `mask_prob`, rectangles covering a share
    in [mask_ratio_min, mask_ratio_max] of the patches (iBOT's block-wise masking).

    Blocks have at least 2 patches and aspect ratios in [1/3, 3]; they are added until the
    share is reached (it may be exceeded by the last block). All draws come from `gen`.
    """
    masks = torch.zeros(n, grid, grid, dtype=torch.bool)
    total = grid * grid
    for i in range(n):
        u = torch.rand(2, generator=gen)
        if float(u[0]) >= config.mask_prob:
            continue
        ratio = config.mask_ratio_min + (config.mask_ratio_max - config.mask_ratio_min) * u[1]
        target = max(1, round(float(ratio) * total))
        for _ in range(100):  # bounded: a mask that cannot grow further stops anyway
            have = int(masks[i].sum())
            if have >= target:
                break
            r = torch.rand(4, generator=gen)
            area = 2 + float(r[0]) * max(target - have - 2, 0)
            aspect = math.exp(math.log(1 / 3) + float(r[1]) * 2 * math.log(3))
            bh = max(1, min(grid, round(math.sqrt(area * aspect))))
            bw = max(1, min(grid, round(math.sqrt(area / aspect))))
            top = int(float(r[2]) * (grid - bh + 1))
            left = int(float(r[3]) * (grid - bw + 1))
            masks[i, top : top + bh, left : left + bw] = True
    return masks.flatten(1)


def teacher_momentum(step: int, steps: int, config: SSLConfig) -> float:
    """EMA momentum at `step`: cosine from `momentum_start` to `momentum_end` (DINO)."""
    progress = min(step / max(steps - 1, 1), 1.0)
    span = config.momentum_end - config.momentum_start
    return config.momentum_end - span * 0.5 * (1 + math.cos(math.pi * progress))


def teacher_temperature(step: int, steps: int, config: SSLConfig) -> float:
    """Teacher softmax temperature: linear from `teacher_temp_start` over the warmup, then flat."""
    warmup = config.teacher_temp_warmup * steps
    if warmup <= 0 or step >= warmup:
        return config.teacher_temp
    return config.teacher_temp_start + (config.teacher_temp - config.teacher_temp_start) * (
        step / warmup
    )


def distillation_ce(teacher_probs: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy H(p_teacher, softmax(student)) along the last axis: (..., K) → (...)."""
    return -(teacher_probs * student_logits.log_softmax(dim=-1)).sum(dim=-1)


def cls_distillation(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """DINO [CLS] term over views.

    teacher: (G, B, K) probabilities of the G global views; student: (V, B, K) logits of the V
    student views, the first G being the same global views. Every (teacher view i, student
    view j) pair with j != i counts once; returns the mean over pairs and images.
    """
    terms = [
        distillation_ce(teacher[i], student[j]).mean()
        for i in range(teacher.shape[0])
        for j in range(student.shape[0])
        if j != i
    ]
    return torch.stack(terms).mean()


def masked_patch_distillation(
    teacher: torch.Tensor, student: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """iBOT patch term on the masked tokens only, gathered in row-major order of `mask`.

    teacher: (M, K) probabilities, student: (M, K) logits, mask: (N, P) bool with M True.
    Mean cross-entropy over each view's masked patches, then over the views that have any;
    0 (with a graph) when nothing is masked.
    """
    counts = mask.sum(1)  # (N,)
    if int(counts.sum()) == 0:
        return student.sum() * 0.0
    ce = distillation_ce(teacher, student)  # (M,)
    view = torch.repeat_interleave(torch.arange(mask.shape[0], device=mask.device), counts)
    per_view = torch.zeros(mask.shape[0], device=ce.device, dtype=ce.dtype).index_add(0, view, ce)
    has = counts > 0
    return (per_view[has] / counts[has]).mean()


def _mean_or_nan(values: torch.Tensor) -> float:
    return float(values.mean()) if values.numel() else float("nan")


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) along the last axis."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1)


def feature_std(tokens: torch.Tensor) -> float:
    """Mean over dimensions of the std of L2-normalised features (..., D) across samples.

    About 1/sqrt(D) for well spread features; falls towards 0 when they collapse to a point.
    """
    flat = F.normalize(tokens.float().flatten(0, -2), dim=-1)  # (N, D)
    return float(flat.std(dim=0).mean())


@dataclass(frozen=True)
class Views:
    """One step's student/teacher inputs, normalised."""

    globals_: torch.Tensor  # (G, B, 3, S, S) global views at model size
    locals_: torch.Tensor | None  # (L, B, 3, s, s) local crops, or None
    masks: torch.Tensor  # (G, B, P) bool, the student's masked patches


class SelfDistillation(nn.Module):
    """Student heads + mask token, the EMA teacher (trunk and heads) and the two centres.

    The student trunk is the model being trained and is passed to `forward`, not held here,
    so this module's `state_dict` is exactly the SSL state (heads, teacher, centres).
    """

    def __init__(self, visual: nn.Module, config: SSLConfig) -> None:
        super().__init__()
        width = int(visual.class_embedding.shape[-1])
        self.config = config
        self.mask_token = nn.Parameter(torch.zeros(width))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        dims = (width, config.head_hidden, config.head_bottleneck, config.prototypes)
        self.cls_head = ProjectionHead(*dims)
        self.patch_head = ProjectionHead(*dims)
        self.teacher = copy.deepcopy(visual).requires_grad_(False).eval()
        self.teacher_cls_head = copy.deepcopy(self.cls_head).requires_grad_(False)
        self.teacher_patch_head = copy.deepcopy(self.patch_head).requires_grad_(False)
        self.register_buffer("cls_center", torch.zeros(config.prototypes))
        self.register_buffer("patch_center", torch.zeros(config.prototypes))
        if config.objective == "features":  # predictors of the teacher's tokens (W -> W)
            self.patch_predictor = nn.Linear(width, width)
            self.cls_predictor = nn.Linear(width, width)
        elif config.objective != "distill":
            raise ValueError(f"unknown SSL objective {config.objective!r}: distill or features")

    def student_parameters(self) -> list[nn.Parameter]:
        """What the optimiser trains here (heads and mask token; the trunk is the model's)."""
        if self.config.objective == "features":
            predictors = [*self.patch_predictor.parameters(), *self.cls_predictor.parameters()]
            return [self.mask_token, *predictors]
        return [self.mask_token, *self.cls_head.parameters(), *self.patch_head.parameters()]

    def forward(
        self, visual: nn.Module, views: Views, teacher_temp: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """SSL loss of one step and its collapse indicators (teacher entropies, feature std)."""
        if self.config.objective == "features":
            return self._feature_prediction(visual, views)
        cfg = self.config
        g, b = views.globals_.shape[:2]
        flat_globals = views.globals_.flatten(0, 1)  # (G·B, 3, S, S)
        mask = views.masks.flatten(0, 1)  # (G·B, P)
        with torch.no_grad():
            t_tokens = trunk_tokens(self.teacher, flat_globals)  # (G·B, 1+P, W)
            t_cls = self.teacher_cls_head(t_tokens[:, 0]).float()  # (G·B, K) cosines
            t_patch = self.teacher_patch_head(t_tokens[:, 1:][mask]).float()  # (M, K), masked
            t_cls_p = ((t_cls - self.cls_center) / teacher_temp).softmax(-1)
            t_patch_p = ((t_patch - self.patch_center) / teacher_temp).softmax(-1)
        s_tokens = trunk_tokens(visual, flat_globals, mask, self.mask_token)  # (G·B, 1+P, W)
        s_cls = [self.cls_head(s_tokens[:, 0]).float()]  # (G·B, K)
        if views.locals_ is not None:
            local_tokens = trunk_tokens(visual, views.locals_.flatten(0, 1))  # (L·B, 1+p, W)
            s_cls.append(self.cls_head(local_tokens[:, 0]).float())
        s_cls_all = torch.cat(s_cls).view(-1, b, cfg.prototypes) / cfg.student_temp  # (V, B, K)
        # The patch heads run on masked positions only: the only ones the loss reads.
        s_patch = self.patch_head(s_tokens[:, 1:][mask]).float() / cfg.student_temp  # (M, K)
        loss_cls = cls_distillation(t_cls_p.view(g, b, -1), s_cls_all)
        loss_patch = masked_patch_distillation(t_patch_p, s_patch, mask)
        loss = cfg.cls_weight * loss_cls + cfg.patch_weight * loss_patch
        with torch.no_grad():
            self._update_centers(t_cls, t_patch)
        log_k = math.log(cfg.prototypes)
        metrics = {
            "loss_ssl_cls": float(loss_cls.detach()),
            "loss_ssl_patch": float(loss_patch.detach()),
            "teacher_entropy": float(entropy(t_cls_p).mean()) / log_k,
            "teacher_marginal_entropy": float(entropy(t_cls_p.mean(0))) / log_k,
            "patch_entropy": _mean_or_nan(entropy(t_patch_p)) / log_k,
            "patch_marginal_entropy": _mean_or_nan(entropy(t_patch_p.mean(0, keepdim=True)))
            / log_k,
            "patch_std": feature_std(t_tokens[:, 1:]),
            "masked_share": float(mask.float().mean()),
        }
        return loss, metrics

    def _feature_prediction(
        self, visual: nn.Module, views: Views
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Masked-feature prediction: dense regression targets, no prototypes to sharpen.

        The teacher's clean tokens, layer-normalised per token (data2vec's targets), are what
        the student must predict at its masked positions from the visible context: a signal
        on every masked patch from the first step, where the prototype softmax of `distill`
        stayed near uniform for the whole of a short CPU run. The [CLS] term asks each
        student view to predict the teacher's [CLS] of the other global views (cosine).
        """
        g, b = views.globals_.shape[:2]
        flat_globals = views.globals_.flatten(0, 1)  # (G·B, 3, S, S)
        mask = views.masks.flatten(0, 1)  # (G·B, P)
        with torch.no_grad():
            t_tokens = trunk_tokens(self.teacher, flat_globals).float()  # (G·B, 1+P, W)
            width = t_tokens.shape[-1]
            t_norm = F.layer_norm(t_tokens, (width,))  # (G·B, 1+P, W)
        s_tokens = trunk_tokens(visual, flat_globals, mask, self.mask_token)  # (G·B, 1+P, W)
        if int(mask.sum()):
            pred = self.patch_predictor(s_tokens[:, 1:][mask]).float()  # (M, W)
            loss_patch = (1 - F.cosine_similarity(pred, t_norm[:, 1:][mask], dim=-1)).mean()
        else:
            loss_patch = s_tokens.sum() * 0.0
        s_cls = [s_tokens[:, 0]]  # (G·B, W)
        if views.locals_ is not None:
            s_cls.append(trunk_tokens(visual, views.locals_.flatten(0, 1))[:, 0])
        s_cls_all = self.cls_predictor(torch.cat(s_cls)).float().view(-1, b, width)  # (V, B, W)
        t_cls = t_norm[:, 0].view(g, b, width)  # (G, B, W)
        terms = [
            (1 - F.cosine_similarity(s_cls_all[j], t_cls[i], dim=-1)).mean()
            for i in range(g)
            for j in range(s_cls_all.shape[0])
            if j != i
        ]
        loss_cls = torch.stack(terms).mean()
        cfg = self.config
        loss = cfg.cls_weight * loss_cls + cfg.patch_weight * loss_patch
        metrics = {  # no softmax here: the prototype-entropy indicators do not apply (absent)
            "loss_ssl_cls": float(loss_cls.detach()),
            "loss_ssl_patch": float(loss_patch.detach()),
            "patch_std": feature_std(t_tokens[:, 1:]),
            "masked_share": float(mask.float().mean()),
        }
        return loss, metrics

    @torch.no_grad()
    def _update_centers(self, cls_cos: torch.Tensor, patch_cos: torch.Tensor) -> None:
        """EMA of the teacher's mean (uncentred) outputs, per prototype."""
        m = self.config.center_momentum
        self.cls_center.mul_(m).add_((1 - m) * cls_cos.mean(0))
        if len(patch_cos):
            self.patch_center.mul_(m).add_((1 - m) * patch_cos.mean(0))

    @torch.no_grad()
    def update_teacher(self, visual: nn.Module, momentum: float) -> None:
        """teacher ← m · teacher + (1 − m) · student, trunk and heads alike."""
        pairs = (
            (self.teacher, visual),
            (self.teacher_cls_head, self.cls_head),
            (self.teacher_patch_head, self.patch_head),
        )
        if self.config.objective == "features":
            pairs = pairs[:1]  # the prototype heads are unused: only the trunk has a teacher
        for teacher, student in pairs:
            for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
                t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)

    @torch.no_grad()
    def export_trunk(self, visual: nn.Module) -> None:
        """Copy the teacher's trunk into `visual`; ln_post and proj stay the student's own."""
        keep = ("ln_post.", "proj")
        state = {
            k: v
            for k, v in self.teacher.state_dict().items()
            if not any(k.startswith(p) for p in keep)
        }
        visual.load_state_dict(state, strict=False)
