"""Identities of weights: one hash of a module's state, shared by the model directory (which
records what a model was fitted with) and the feature cache (which keys features by it).

It lives apart from both so neither imports the other: ``artifact`` imports ``model``, which
imports ``feature_cache``; with the hash in ``artifact`` that made a cycle.
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["state_sha256"]


def state_sha256(model: torch.nn.Module) -> str:
    """Hash of every tensor of a model's state, in key order: identifies the weights."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(
            value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()
