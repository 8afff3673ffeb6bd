"""Patch memory bank: how far each test patch is from every normal patch of the support.

PatchCore / AnomalyDINO in the SEM-CLIP setting: the good patches of the support (per stage,
L2-normalised) are stored; at prediction a test patch's cosine distance to its nearest stored
patch (mean over the `k` nearest) is its anomaly. Distances are made scale-free by the support's
own leave-one-out distances: each stage's distances are divided by a high quantile of the
distances of the support's good patches to the patches of the *other* support images, so
z = 1 is "as far as the support's own normal variation reaches". Nothing of the test set enters.

Fitted state lives in registered buffers (`state_dict` round-trips through safetensors).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LOO_QUANTILE = 0.99  # the support's normal variation: this quantile of leave-one-out distances
QUERY_CHUNK_ELEMENTS = 2**24  # similarity entries per chunk (64 MB in fp32)
MAX_LOO_QUERIES = 4096  # good patches per stage used to measure the leave-one-out scale
COARSE_ROUNDS = 64  # a coreset is picked in this many rounds of farthest points
CORESET_DIMS = 64  # random projection used to pick the coreset (PatchCore's speed-up)


class PatchMemoryBank(nn.Module):
    """Normal patch tokens of the support, per stage, with their leave-one-out scale.

    bank: (m, M, D) unit-norm patch tokens; scale: (m,) leave-one-out distance quantile;
    units: (m, M) which support image a stored patch came from (fit time only, not saved).
    """

    def __init__(
        self,
        bank: torch.Tensor,  # (m, M, D)
        scale: torch.Tensor,  # (m,)
        k: int = 1,
        units: torch.Tensor | None = None,  # (m, M)
        source: str = "vv",  # which patch tokens: "vv" (Features.vv) or "vanilla" (.tokens)
    ) -> None:
        super().__init__()
        self.source = source
        self.register_buffer("bank", bank.float())  # unit-norm rows (as `build` makes them)
        self.register_buffer("scale", scale.float().clamp_min(1e-6))
        self.register_buffer(
            "units", units if units is not None else torch.empty(0), persistent=False
        )
        self.k = int(k)

    @property
    def n_stages(self) -> int:
        return self.bank.shape[0]

    @classmethod
    def build(
        cls,
        patches: torch.Tensor,  # (N, m, P, D) patch tokens of N support entries
        keep: torch.Tensor,  # (N, P) bool: which patches are normal
        units: torch.Tensor,  # (N,) leave-one-out unit of each entry (its support image)
        *,
        k: int = 1,
        max_patches: int = 20000,
        seed: int = 0,
        source: str = "vv",
    ) -> PatchMemoryBank:
        """Bank of the `keep` patches (a greedy coreset of `max_patches` per stage if more)."""
        if not bool(keep.any()):
            raise ValueError("the memory bank needs at least one normal support patch")
        x = F.normalize(patches.float(), dim=-1).transpose(0, 1)  # (m, N, P, D)
        x = x[:, keep]  # (m, M0, D)
        owner = units[:, None].expand_as(keep)[keep]  # (M0,)
        gen = torch.Generator().manual_seed(seed)
        banks, owners = [], []
        for stage in x:
            idx = greedy_coreset(stage, max_patches, gen)
            banks.append(stage[idx])
            owners.append(owner[idx.to(owner.device)])
        bank, bank_units = torch.stack(banks), torch.stack(owners)
        scale = loo_scale(bank, bank_units, x, owner, k, gen)
        return cls(bank, scale, k, bank_units, source)

    def distances(
        self,
        patches: torch.Tensor,  # (B, m, P, D)
        exclude: torch.Tensor | None = None,  # (B,) unit whose stored patches are ignored
    ) -> torch.Tensor:
        """Mean cosine distance of every patch to its k nearest stored patches: (B, m, P)."""
        b, m, p, _ = patches.shape
        device = self.bank.device
        q = F.normalize(patches.to(device).float(), dim=-1).transpose(0, 1).reshape(m, b * p, -1)
        q_units = exclude.to(device).repeat_interleave(p) if exclude is not None else None
        out = torch.stack(
            [knn_distance(q[i], self.bank[i], self.k, q_units, self._units(i)) for i in range(m)]
        )  # (m, B·P)
        return out.view(m, b, p).transpose(0, 1).to(patches.device)

    def anomaly(self, patches: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """Patch anomaly in [0, 1): z / (1 + z) of the scaled distance, mean over stages (B, P).

        z = d / scale is 1 at the support's own leave-one-out quantile, where the map is 0.5.
        """
        scale = self.scale.to(patches.device)[None, :, None]
        z = self.distances(patches, exclude) / scale  # (B, m, P)
        return (z / (1.0 + z)).mean(dim=1)

    def patch_tokens(self, tokens: torch.Tensor, vv: torch.Tensor) -> torch.Tensor:
        """The patch tokens this bank compares, from cached features: (B, m, P, D)."""
        return (vv if self.source == "vv" else tokens)[:, :, 1:]

    def _units(self, stage: int) -> torch.Tensor | None:
        return self.units[stage] if self.units.numel() else None


def knn_distance(
    q: torch.Tensor,  # (Q, D) unit-norm queries
    bank: torch.Tensor,  # (M, D) unit-norm stored patches
    k: int,
    q_units: torch.Tensor | None = None,  # (Q,) a query ignores stored patches of its unit
    bank_units: torch.Tensor | None = None,  # (M,)
) -> torch.Tensor:
    """Mean of the k smallest cosine distances 1 − q·b (Q,), by chunks of queries (top-k of a
    matmul: the same ops on CPU and GPU)."""
    k = min(k, bank.shape[0])
    chunk = max(1, QUERY_CHUNK_ELEMENTS // max(1, bank.shape[0]))
    out = []
    for start in range(0, q.shape[0], chunk):
        sim = q[start : start + chunk] @ bank.T  # (c, M)
        if q_units is not None and bank_units is not None:
            same = q_units[start : start + chunk, None] == bank_units[None]
            sim = sim.masked_fill(same, -2.0)  # distance 3: beyond any real neighbour
        top = sim.topk(k, dim=-1).values  # (c, k)
        out.append((1.0 - top).clamp_min(0.0).mean(dim=-1))
    return torch.cat(out) if out else q.new_zeros(0)


def greedy_coreset(x: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """Indices of ≤ n rows of x (N, D) covering it (k-center greedy, PatchCore); all if N ≤ n.

    As in PatchCore, distances are measured after a random projection to CORESET_DIMS (they
    are preserved up to a small factor), and farthest points are taken `n / COARSE_ROUNDS` at
    a time: the cost is a few thin matmuls, not n sequential steps. Deterministic for `gen`.
    """
    total = x.shape[0]
    if total <= n:
        return torch.arange(total, device=x.device)
    if x.shape[1] > CORESET_DIMS:
        proj = torch.randn(x.shape[1], CORESET_DIMS, generator=gen) / CORESET_DIMS**0.5
        x = x @ proj.to(x.device, x.dtype)  # (N, CORESET_DIMS)
    sq = (x * x).sum(dim=1)  # (N,)
    per_round = max(1, -(-n // COARSE_ROUNDS))
    first = int(torch.randint(total, (1,), generator=gen))
    chosen = [torch.tensor([first], device=x.device)]
    min_dist = sq + sq[first] - 2 * x @ x[first]  # (N,) squared distance to the chosen set
    picked = 1
    while picked < n:
        take = min(per_round, n - picked)
        new = min_dist.topk(take).indices
        chosen.append(new)
        picked += take
        dist = sq[:, None] + sq[new][None] - 2 * x @ x[new].T  # (N, take)
        min_dist = torch.minimum(min_dist, dist.amin(dim=1))
        min_dist[new] = -1.0
    return torch.cat(chosen).sort().values


def loo_scale(
    bank: torch.Tensor,  # (m, M, D)
    bank_units: torch.Tensor,  # (m, M)
    patches: torch.Tensor,  # (m, M0, D) every normal support patch
    owner: torch.Tensor,  # (M0,)
    k: int,
    gen: torch.Generator,
) -> torch.Tensor:
    """Per-stage LOO_QUANTILE of the distances of normal support patches to the bank without
    their own image (m,). With a single support image, its patches are their own reference
    (distance 0 is then excluded by dropping exact self-matches)."""
    single = bool((owner == owner[0]).all())
    pick = torch.randperm(patches.shape[1], generator=gen)[:MAX_LOO_QUERIES]
    pick = pick.to(patches.device)
    scales = []
    for i in range(bank.shape[0]):
        q = patches[i, pick]
        if single:  # one image: nearest *other* stored patch (an augmentation of it)
            d = knn_distance(q, bank[i], k + 1)
            d = (d * (k + 1)) / max(1, k)  # the self-match contributes 0 to the mean
        else:
            d = knn_distance(q, bank[i], k, owner[pick], bank_units[i])
        scales.append(torch.quantile(d.float().cpu(), LOO_QUANTILE))
    return torch.stack(scales)
