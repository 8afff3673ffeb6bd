"""Captions for pretraining: prompt-library sentences (templates × states), plus metadata words.

Each step samples a few sentences per class; every image gets one of its class's sentences,
sometimes extended with what the manifest knows about it (pattern family, kV, magnification).
Sampling few distinct sentences per step keeps the text tower's cost at a fraction of the
vision tower's, while the whole template × state space is covered over a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from semclip.prompts import PromptLibrary

# Words for the synthetic generator's pattern families (unknown values are used as written).
PATTERN_WORDS = {
    "line_h": "horizontal line and space pattern",
    "line_v": "vertical line and space pattern",
    "contacts": "contact array",
    "cu_grain": "polished copper grains",
    "manhattan": "metal routing layout",
}


@dataclass(frozen=True)
class CaptionBatch:
    """Distinct sentences of one step and who uses them."""

    sentences: list[str]  # (U,) distinct sentences to embed
    per_image: torch.Tensor  # (B,) index into sentences: each image's caption
    per_class: torch.Tensor  # (K, n) indices of the class-level sentences (no metadata)


class CaptionSampler:
    """Draws captions for a batch from the prompt library; deterministic given the generator."""

    def __init__(
        self, library: PromptLibrary, classes: Sequence[str], metadata_prob: float, n: int
    ) -> None:
        self.classes = tuple(classes)
        self.sentences = [library.sentences(c) for c in self.classes]
        self.metadata_prob = metadata_prob
        self.n = n

    def sample(
        self, labels: Sequence[int], metas: Sequence[dict[str, str]], gen: torch.Generator
    ) -> CaptionBatch:
        """Captions for images of class indices `labels` with their metadata dicts."""
        index: dict[str, int] = {}  # sentence -> position in CaptionBatch.sentences
        chosen: list[list[str]] = []  # (K, n) class-level sentences of this step
        for options in self.sentences:
            picks = torch.randint(len(options), (self.n,), generator=gen).tolist()
            chosen.append([options[p] for p in picks])
        per_class = [[index.setdefault(s, len(index)) for s in row] for row in chosen]
        draws = torch.rand(len(labels), 2, generator=gen).tolist()
        per_image = []
        for label, meta, (pick, coin) in zip(labels, metas, draws, strict=True):
            sentence = chosen[label][min(int(pick * self.n), self.n - 1)]
            if meta and coin < self.metadata_prob:
                sentence = with_metadata(sentence, meta)
            per_image.append(index.setdefault(sentence, len(index)))
        return CaptionBatch(list(index), torch.tensor(per_image), torch.tensor(per_class))


def with_metadata(sentence: str, meta: dict[str, str]) -> str:
    """Append SEM metadata words: 'a SEM image of X, on a contact array, at 1 kV.'"""
    words = []
    if "pattern" in meta:
        words.append(f"on a {PATTERN_WORDS.get(meta['pattern'], meta['pattern'])}")
    if "layer" in meta:
        words.append(f"in the {meta['layer']} layer")
    if "kv" in meta:
        words.append(f"at {meta['kv']} kV")
    if "magnification" in meta:
        words.append(f"at {meta['magnification']} magnification")
    return f"{sentence.rstrip('.')}, {', '.join(words)}." if words else sentence
