"""DualPathEncoder: open_clip's ViT with a second, V-V attention path per block (paper eq. 3-7).

Every block computes q, k, v once from `in_proj`; the vanilla path is open_clip's own block
(attention + FFN), the V-V path attends values to values with the same heads and `out_proj`,
skips the FFN, and restarts at each stage (CLIP-AD's staged dual path). Both attentions run as
`scaled_dot_product_attention` (flash / memory-efficient kernels on CUDA, bf16 under
autocast); the extra cost is one attention product and one `out_proj` per layer.

Two layouts of the same arithmetic: `fused=True` stacks the vanilla and V-V problems along the
batch axis, so each block makes one SDPA call and one `out_proj` GEMM instead of two each (on a
GPU at small batches the dual path is launch-bound, and the kernel count is its cost);
`fused=False` makes separate calls, which measured faster on CPU (no concatenation copy). The
default picks fused on CUDA, separate on CPU; both give the same numbers (tests check it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class StageFeatures:
    """Tokens at the end of one stage.

    vanilla: (B, 1+P, width) residual stream (CLS first), as open_clip computes it.
    vv: (B, 1+P, embed) V-V stage sum through ln_post/proj, CLS replaced by the vanilla CLS.
    """

    vanilla: torch.Tensor
    vv: torch.Tensor


def stage_ends(n_layers: int, n_stages: int) -> list[int]:
    """0-based index of the last layer of each stage: e_i = ceil((i+1)·L/m) − 1."""
    if not 1 <= n_stages <= n_layers:
        raise ValueError(f"n_stages must be in 1..{n_layers} for a {n_layers}-layer ViT")
    return [math.ceil((i + 1) * n_layers / n_stages) - 1 for i in range(n_stages)]


class DualPathEncoder(nn.Module):
    """Frozen open_clip vision tower run as m stages of dual-path blocks.

    Call it on a normalised image batch (B, 3, S, S); it returns one StageFeatures per stage.
    """

    def __init__(self, clip_model: nn.Module, n_stages: int = 4, fused: bool | None = None) -> None:
        super().__init__()
        self.visual = clip_model.visual
        self.blocks = self.visual.transformer.resblocks
        self.ends = stage_ends(len(self.blocks), n_stages)
        self.n_stages = n_stages
        self.fused = fused  # None: by device (fused on CUDA), see the module docstring

    @property
    def width(self) -> int:
        return int(self.visual.ln_post.normalized_shape[0])

    @property
    def embed_dim(self) -> int:
        return int(self.visual.proj.shape[1])

    @property
    def grid(self) -> int:
        """Patches per side."""
        return int(self.visual.grid_size[0])

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch + class + position embeddings and ln_pre, as open_clip does. (B, 1+P, width)."""
        v = self.visual
        x = v.conv1(images)  # (B, width, g, g)
        x = x.flatten(2).transpose(1, 2)  # (B, P, width)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, width)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        return v.ln_pre(v.patch_dropout(x))

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """ln_post then proj: residual-stream tokens into the joint embedding space."""
        return self.visual.ln_post(tokens) @ self.visual.proj

    def forward(self, images: torch.Tensor) -> list[StageFeatures]:
        x = self.embed(images)
        fused = images.device.type == "cuda" if self.fused is None else self.fused
        stages: list[StageFeatures] = []
        vv_sum: torch.Tensor | None = None  # the stage's V-V sum; restarts at each stage
        for j, block in enumerate(self.blocks):
            x, vv = dual_path_block(block, x, fused=fused)
            vv_sum = vv if vv_sum is None else vv_sum + vv
            if j in self.ends:
                vv_tokens = self.project(vv_sum)  # (B, 1+P, embed)
                vv_tokens[:, 0] = self.project(x[:, 0])
                # No copy of x: every block returns a new tensor, nothing writes into it.
                stages.append(StageFeatures(vanilla=x, vv=vv_tokens))
                vv_sum = None
        return stages


def dual_path_block(
    block: nn.Module, x: torch.Tensor, *, fused: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """One open_clip ResidualAttentionBlock with shared q/k/v; returns (vanilla out, V-V a_j).

    vanilla: x + ls_1(attn(ln_1 x)), then + ls_2(mlp(ln_2 x)), exactly open_clip's block.
    V-V: a_j = ls_1(out_proj(softmax(v vᵀ/√d) v)), no residual, no FFN.
    `fused`: both attentions in one SDPA call and one `out_proj` over a 2B batch.
    """
    attn: nn.MultiheadAttention = block.attn
    b, n, c = x.shape
    heads = attn.num_heads
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)  # (B, N, 3C)
    qkv = qkv.view(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)  # (3, B, H, N, d)
    q, k, v = qkv.unbind(0)
    if fused:
        # [vanilla; V-V] as one 2B batch: one SDPA kernel, one out_proj GEMM, one ls_1.
        both = F.scaled_dot_product_attention(
            torch.cat([q, v]), torch.cat([k, v]), torch.cat([v, v])
        )  # (2B, H, N, d)
        both = block.ls_1(attn.out_proj(both.transpose(1, 2).reshape(2 * b, n, c)))
        attn_a, vv = both[:b], both[b:]  # (B, N, C) each
    else:
        # Two SDPA calls measured faster on CPU than one call on concatenated [q; v] batches.
        attn_out = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, d)
        vv_out = F.scaled_dot_product_attention(v, v, v)  # (B, H, N, d)
        attn_a = block.ls_1(attn.out_proj(attn_out.transpose(1, 2).reshape(b, n, c)))
        vv = block.ls_1(attn.out_proj(vv_out.transpose(1, 2).reshape(b, n, c)))  # (B, N, C)
    x = x + attn_a
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, vv
