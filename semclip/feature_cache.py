"""Backbone features cached by image content, augmentation and preprocessing.

The backbone is frozen, so its output for an image never changes: an evaluation over many
methods, shots and seeds, or a refit that sees old shots again, runs it once per image and
augmentation. Entries live in memory and, when a folder is given, on disk (fp16).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from safetensors.torch import load_file, save_file

from semclip.backbone import Backbone
from semclip.features import Features, Preprocess
from semclip.fingerprint import state_sha256

log = logging.getLogger(__name__)


def backbone_fingerprint(backbone: Backbone, n_stages: int) -> str:
    """Identity of what produces features: the weights' hash, architecture and stage split."""
    payload = {
        "weights": state_sha256(backbone.model),
        "cfg": backbone.model_cfg,
        "n_stages": n_stages,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


class FeatureCache:
    """Features keyed by (image sha256, augmentation) for one backbone + preprocessing."""

    def __init__(
        self,
        backbone: Backbone,
        preprocess: Preprocess,
        n_stages: int = 4,
        *,
        folder: str | os.PathLike | None = None,
        memory: bool = True,
    ) -> None:
        prep = hashlib.sha256(json.dumps(preprocess.to_dict(), sort_keys=True).encode())
        self.namespace = f"{backbone_fingerprint(backbone, n_stages)}-{prep.hexdigest()[:8]}"
        self.folder = Path(folder) / self.namespace if folder is not None else None
        self.memory: dict[str, Features] | None = {} if memory else None
        self.hits = 0
        self.misses = 0

    def get(
        self,
        keys: Sequence[str | None],
        compute: Callable[[list[int]], Features],
    ) -> Features:
        """Features for every key, computing (in one call) only those not cached.

        A None key (e.g. an in-memory array without a content hash) is always computed.
        """
        found: dict[int, Features] = {}
        for i, key in enumerate(keys):
            entry = self._lookup(key) if key is not None else None
            if entry is not None:
                found[i] = entry
        missing = [i for i in range(len(keys)) if i not in found]
        self.hits += len(found)
        self.misses += len(missing)
        if missing:
            computed = compute(missing)
            for j, i in enumerate(missing):
                entry = computed[j : j + 1]
                found[i] = entry
                if keys[i] is not None:
                    self._store(keys[i], entry)
        return Features.cat([found[i] for i in range(len(keys))])

    def _lookup(self, key: str) -> Features | None:
        if self.memory is not None and key in self.memory:
            return self.memory[key]
        if self.folder is not None:
            path = self.folder / f"{key}.safetensors"
            if path.is_file():
                try:
                    data = load_file(str(path))
                    if "selfsim" not in data or "thumb" not in data:  # older entry: recompute
                        return None
                    entry = Features(data["tokens"], data["vv"], data["selfsim"], data["thumb"])
                except Exception as exc:  # a torn write from a killed run: recompute it
                    log.warning("ignoring unreadable cache entry %s: %s", path, exc)
                    return None
                if self.memory is not None:
                    self.memory[key] = entry
                return entry
        return None

    def _store(self, key: str, entry: Features) -> None:
        tensors = {"tokens": entry.tokens, "vv": entry.vv}
        for name in ("selfsim", "thumb"):
            if getattr(entry, name) is not None:
                tensors[name] = getattr(entry, name)
        tensors = {name: t.contiguous().clone() for name, t in tensors.items()}
        entry = Features(
            tensors["tokens"], tensors["vv"], tensors.get("selfsim"), tensors.get("thumb")
        )
        if self.memory is not None:
            self.memory[key] = entry
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f"{key}.tmp"
            save_file(tensors, str(tmp))
            tmp.replace(self.folder / f"{key}.safetensors")


def entry_key(image_sha256: str | None, augmentation: int, page: int = 0) -> str | None:
    """Cache key of one image (one TIFF page of it) under one of the 8 dihedral augmentations.

    The bytes' hash alone does not name the pixels: pages of one multi-page TIFF (detector
    channels) share it, so the page is part of the key. Page 0 keeps the key it always had,
    so existing cache folders stay valid.
    """
    if image_sha256 is None:
        return None
    return f"{image_sha256}-a{augmentation}" + (f"-p{page}" if page else "")
