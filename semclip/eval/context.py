"""What every method shares within one evaluation: backbone, encoded images, cache, prompts.

Fits are memoised per split, so ablations that differ from SEM-CLIP only after fitting (α = 0,
α = 1, CLIP's projection instead of W_i) reuse the one fitted model instead of refitting it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from semclip.backbone import Backbone
from semclip.config import FitConfig
from semclip.data.databar import DatabarCrop
from semclip.eval.encoded import EncodedSet
from semclip.feature_cache import FeatureCache
from semclip.prompts import PromptLibrary, text_prototypes

T = TypeVar("T")


@dataclass
class EvalContext:
    """Shared state of one evaluation run (one backbone, one data set, one feature cache)."""

    backbone: Backbone
    encoded: EncodedSet
    cache: FeatureCache
    fit_config: FitConfig  # the base config; each fit sets its split's seed
    prompts: PromptLibrary
    databar: DatabarCrop
    classes: tuple[str, ...]  # good first, then defect labels sorted (the models' order)
    _text: dict[bool, torch.Tensor] = field(default_factory=dict, repr=False)
    _memo: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def good_index(self) -> int:
        return self.classes.index("good")

    @property
    def size(self) -> int:
        """Model resolution S of every map."""
        return self.backbone.image_size

    @property
    def device(self) -> torch.device:
        return next(self.backbone.model.parameters()).device

    def text(self, *, generic: bool = False) -> torch.Tensor:
        """Class text prototypes T (K, embed) on the device, computed once per prompt set."""
        if generic not in self._text:
            t = text_prototypes(
                self.backbone.model,
                self.backbone.tokenizer,
                self.prompts,
                self.classes,
                generic=generic,
            )
            self._text[generic] = t.to(self.device)
        return self._text[generic]

    def memo(self, key: Any, make: Callable[[], T]) -> T:
        """`make()` once per key until `forget()`: one fit shared by several methods."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def forget(self) -> None:
        """Drop memoised fits (between splits, to bound memory)."""
        self._memo.clear()
