"""Prompt library (paper §3.1): template-level × state-level sentences → class text prototypes.

Classes, states and templates live in a YAML data file so a fab can add its own classes without
touching code. A label with no entry gets generic states built from its name (not an error).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

log = logging.getLogger(__name__)

NORMAL_CLASS = "good"


@dataclass(frozen=True)
class PromptLibrary:
    """Templates, per-class states and the generic set, as read from the prompt file."""

    templates: tuple[str, ...]  # each holds one "{}" for the state phrase
    states: dict[str, tuple[str, ...]]  # class -> detailed state phrases
    generic_normal: tuple[str, ...]  # "w/o detailed prompt" states for the normal class
    generic_defect: tuple[str, ...]  # same for defects; "{label}" is the label's words
    normal_class: str = NORMAL_CLASS
    source: str = field(default="<memory>", compare=False)

    def class_states(self, label: str, *, generic: bool = False) -> tuple[str, ...]:
        """State phrases for one class; generic ones when asked or when the label is unknown."""
        if not generic and label in self.states:
            return self.states[label]
        if label == self.normal_class:
            return self.generic_normal
        words = label.replace("_", " ").replace("-", " ").strip()
        return tuple(s.format(label=words) for s in self.generic_defect)

    def clip_knows(self, label: str, backbone_classes: set[str] | None = None) -> bool:
        """Whether zero-shot P_clip can know `label`: it has states of its own in the prompt
        file (and, when the backbone's pretraining classes are known, is one of them)."""
        if label == self.normal_class:
            return True
        return label in self.states and (backbone_classes is None or label in backbone_classes)

    def sentences(self, label: str, *, generic: bool = False) -> list[str]:
        """Every template filled with every state of `label`."""
        return [
            t.format(s) for t in self.templates for s in self.class_states(label, generic=generic)
        ]

    def to_dict(self) -> dict:
        """Plain data, stored with each model so its prompts travel with it."""
        return {
            "normal_class": self.normal_class,
            "templates": list(self.templates),
            "states": {k: list(v) for k, v in self.states.items()},
            "generic": {"normal": list(self.generic_normal), "defect": list(self.generic_defect)},
        }

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "<memory>") -> PromptLibrary:
        """Build from the YAML structure; raises ValueError naming what is missing."""
        try:
            templates = tuple(data["templates"])
            states = {str(k): tuple(v) for k, v in (data.get("states") or {}).items()}
            generic = data["generic"]
            lib = cls(
                templates,
                states,
                tuple(generic["normal"]),
                tuple(generic["defect"]),
                str(data.get("normal_class", NORMAL_CLASS)),
                source,
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"prompt file {source} is missing or malforms {exc}") from exc
        bad = [t for t in templates if t.count("{}") != 1]
        if bad or not templates:
            raise ValueError(
                f"prompt file {source}: every template needs exactly one '{{}}': {bad}"
            )
        return lib


def load_prompts(path: str | os.PathLike | None = None) -> PromptLibrary:
    """Read a prompt file; the packaged default (`semclip/prompts/default.yaml`) when None."""
    if path is None:
        ref = resources.files("semclip") / "prompts" / "default.yaml"
        return PromptLibrary.from_dict(yaml.safe_load(ref.read_text()), source=str(ref))
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    return PromptLibrary.from_dict(yaml.safe_load(path.read_text()), source=str(path))


@torch.no_grad()
def text_prototypes(
    clip_model: torch.nn.Module,
    tokenizer,
    library: PromptLibrary,
    classes: list[str] | tuple[str, ...],
    *,
    generic: bool = False,
    batch_size: int = 256,
) -> torch.Tensor:
    """Class text prototypes T (K, embed) (paper eq. 8).

    Each sentence is embedded by the frozen text tower and L2-normalised; a class is the mean of
    its sentences, renormalised, so long and short state lists weigh the same.
    """
    device = next(clip_model.parameters()).device
    unknown = [c for c in classes if c not in library.states and c != library.normal_class]
    if unknown and not generic:
        log.info("no prompts for %s: using generic prompts built from the label", unknown)
    protos = []
    for label in classes:
        sentences = library.sentences(label, generic=generic)
        embs = []
        for i in range(0, len(sentences), batch_size):
            tokens = tokenizer(sentences[i : i + batch_size]).to(device)
            embs.append(F.normalize(clip_model.encode_text(tokens).float(), dim=-1))
        protos.append(F.normalize(torch.cat(embs).mean(0), dim=-1))
    return torch.stack(protos).cpu()  # (K, embed)
