"""Trained parts of SEM-CLIP: per-stage transformation layers and the classification head.

All fitted state (weights and the class text prototypes T) lives in parameters and registered
buffers, so `state_dict()` round-trips the whole head.
"""

from __future__ import annotations

import torch
from torch import nn

from semclip.maps import class_logits


class SemclipHeads(nn.Module):
    """W_1..W_m (width → embed) on ln_post-normalised tokens, and a linear head on stage CLS.

    Inputs are ln_post-normalised vanilla tokens `tokens` (B, m, 1+P, width), CLS first.
    """

    def __init__(
        self,
        n_stages: int,
        width: int,
        embed_dim: int,
        text: torch.Tensor,  # (K, embed) class prototypes
        proj_init: torch.Tensor | None = None,  # (width, embed) CLIP's proj, the starting point
    ) -> None:
        super().__init__()
        n_classes = text.shape[0]
        self.transforms = nn.ModuleList(nn.Linear(width, embed_dim) for _ in range(n_stages))
        if proj_init is not None:  # start from CLIP's own projection: the zero-shot solution
            for layer in self.transforms:
                layer.weight.data.copy_(proj_init.T)
                layer.bias.data.zero_()
        self.classifier = nn.Linear(n_stages * width, n_classes)
        self.register_buffer("text", text.clone().float())  # (K, embed)

    @property
    def n_stages(self) -> int:
        return len(self.transforms)

    def stage_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """Z_i = W_i ln_post(F_v^i) for every stage: (B, m, N, width) → (B, m, N, embed).

        One batched matmul over the stages instead of m separate linear layers.
        """
        b, m, n, width = tokens.shape
        weight = torch.stack([w.weight for w in self.transforms])  # (m, embed, width)
        bias = torch.stack([w.bias for w in self.transforms])  # (m, embed)
        x = tokens.transpose(0, 1).reshape(m, b * n, width)  # (m, B·N, width)
        z = torch.baddbmm(bias[:, None, :], x, weight.transpose(1, 2))  # (m, B·N, embed)
        return z.view(m, b, n, -1).transpose(0, 1)

    def patch_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-stage patch class logits (B, m, P, K) (eq. 9-10), CLS dropped."""
        return class_logits(self.stage_embeddings(tokens[:, :, 1:]), self.text)

    def clip_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """P_clip logits (B, K) (eq. 18-19): stage CLS via W_i, cosine ×100, max over stages."""
        cls = self.stage_embeddings(tokens[:, :, :1])[:, :, 0]  # (B, m, embed)
        return class_logits(cls, self.text).amax(dim=1)

    def head_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """P_head logits (B, K) (eq. 20-22) on concatenated stage CLS tokens."""
        return self.classifier(tokens[:, :, 0].flatten(1))


def fuse_probs(p_clip: torch.Tensor, p_head: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """Class-aware fusion (eq. 23): P_c ∝ α_c P_clip,c + (1 − α_c) P_head,c, (B, K) each.

    With one α for every class the sum is already 1; per-class α_c is renormalised so P stays a
    distribution. α_c = 0 hands class c to the head alone.
    """
    alphas = alphas.to(p_clip.device, p_clip.dtype)  # (K,)
    p = alphas * p_clip + (1.0 - alphas) * p_head
    return p / p.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def prototype_init(
    heads: SemclipHeads, cls: torch.Tensor, labels: torch.Tensor, scale: float
) -> None:
    """Start the head at the nearest class mean (Tip-Adapter style) instead of random weights.

    cls (N, m·width) concatenated stage CLS tokens, labels (N,). Logits become
    scale · cos(x − μ, μ_c − μ) for a typical ‖x − μ‖, μ the mean of all entries: a working
    classifier at step 0 that training refines. Classes without entries keep zero weights.
    """
    mean = cls.mean(dim=0)
    centred = cls - mean
    radius = centred.norm(dim=-1).mean().clamp_min(1e-6)
    weight = torch.zeros_like(heads.classifier.weight)  # (K, m·width)
    for c in labels.unique():
        proto = centred[labels == c].mean(dim=0)
        weight[c] = scale * proto / proto.norm().clamp_min(1e-6) / radius
    with torch.no_grad():
        heads.classifier.weight.copy_(weight)
        heads.classifier.bias.copy_(-(weight @ mean))
