"""Which backbone a refit fits with, decided in seconds and never a silent hub download.

Precedence, strongest first:

1. the run's parameters (``--param backbone=…`` / ``--param pretrained=…``);
2. the settings ``SEMCLIP_BACKBONE`` / ``SEMCLIP_PRETRAINED``;
3. the champion's backbone, as its model version recorded it: a version is self-contained
   (its ``backbone/`` folder holds the weights), so the weekly refit of a deployed pipeline
   keeps fitting on what is serving, with no hub and nothing to configure;
4. otherwise :class:`~semclip.refit.shots.RefitError` at once, naming what to set.

A hub tag (named explicitly, or implied by ``ViT-B-16-plus-240`` without weights) is probed
first (:func:`~semclip.backbone.check_weights_reachable`), so an air-gapped worker fails in
seconds, not after the hub client's minute of retries.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import open_clip
import torch

from semclip.artifact import read_meta
from semclip.backbone import (
    DEFAULT_MODEL,
    LOCAL_DIR_PREFIX,
    RANDOM_WEIGHTS_WARNING,
    Backbone,
    check_weights_reachable,
    load_backbone,
    register_model_configs,
    resolve_pretrained,
)
from semclip.refit.shots import RefitError

log = logging.getLogger(__name__)

__all__ = ["BackboneChoice", "BackboneSource", "choose_backbone", "load_chosen_backbone"]

BackboneSource = Literal["param", "setting", "champion"]

NO_BACKBONE_HELP = (
    "set SEMCLIP_BACKBONE=local-dir:PATH (an open_clip folder; `make backbone` builds "
    "$SEMCLIP_HOME/backbones/semclip-sem-small), or SEMCLIP_BACKBONE=ViT-B-16-plus-240 with "
    "SEMCLIP_PRETRAINED=/path/to/open_clip_pytorch_model.bin, in the worker's environment, or "
    "pass --param backbone=local-dir:PATH (and --param pretrained=FILE for a named "
    "architecture) to `prefect deployment run 'refit/weekly'`. Once a champion exists, later "
    "refits reuse its backbone"
)


@dataclass(frozen=True)
class BackboneChoice:
    """What to load (``name``, ``pretrained``) and what to call it in the new version."""

    name: str  # what load_backbone gets: open_clip model name or local-dir:PATH
    pretrained: str | None  # tag or checkpoint file; None for local-dir or random weights
    source: BackboneSource
    recorded_name: str | None = None  # the champion's own name for it (e.g. semclip-tiny)
    recorded_pretrained: str | None = None
    random_weights: bool = False  # the champion's backbone was a random-weight one
    champion_version: str | None = None  # the version it came from (source "champion")

    def describe(self) -> str:
        """One line for logs and MLflow params: what, and where the choice came from."""
        what = self.recorded_name or self.name
        weights = self.recorded_pretrained if self.source == "champion" else self.pretrained
        origin = f"champion v{self.champion_version}" if self.champion_version else self.source
        return f"{what} [{weights or 'no tag/file'}] from {origin}"


def choose_backbone(
    *,
    param_backbone: str | None,
    param_pretrained: str | None,
    setting_backbone: str | None,
    setting_pretrained: str | None,
    champion_dir: str | os.PathLike[str] | None,
    champion_version: str | None = None,
) -> BackboneChoice:
    """The refit's backbone by the module's precedence; raises at once when there is none.

    Raises :class:`~semclip.backbone.BackboneError` when a hub tag is chosen and the hub
    cannot be reached, and :class:`RefitError` when nothing names a backbone.
    """
    if param_backbone or param_pretrained:
        # a --param backbone replaces the settings' pair; a lone --param pretrained keeps
        # SEMCLIP_BACKBONE's architecture
        return _explicit(
            param_backbone or setting_backbone or DEFAULT_MODEL, param_pretrained, "param"
        )
    if setting_backbone or setting_pretrained:
        return _explicit(setting_backbone or DEFAULT_MODEL, setting_pretrained, "setting")
    if champion_dir is not None:
        return _from_champion(Path(champion_dir), champion_version)
    raise RefitError(
        "refit has no backbone to fit with: no --param backbone, SEMCLIP_BACKBONE and "
        "SEMCLIP_PRETRAINED are unset, and there is no champion version to take it from. "
        + NO_BACKBONE_HELP
    )


def load_chosen_backbone(
    choice: BackboneChoice, device: str | torch.device | None = None
) -> Backbone:
    """Load ``choice``; a champion's backbone keeps the name and flags it was recorded with.

    Loaded from the champion's ``backbone/`` folder it would otherwise be called by that
    cache path, and a random-weight champion would pass for a pretrained one.
    """
    backbone = load_backbone(choice.name, choice.pretrained, device)
    if choice.source == "champion":
        backbone.name = choice.recorded_name or backbone.name
        backbone.pretrained = choice.recorded_pretrained
        backbone.random_weights = choice.random_weights
    return backbone


def _explicit(name: str, pretrained: str | None, source: BackboneSource) -> BackboneChoice:
    weights = resolve_pretrained(name, pretrained)  # ViT-B-16-plus-240 alone: its hub tag
    _probe(name, weights)
    return BackboneChoice(name=name, pretrained=weights, source=source)


def _from_champion(folder: Path, version: str | None) -> BackboneChoice:
    info = read_meta(folder)["backbone"]
    random_weights = bool(info.get("random_weights"))
    if info.get("dir"):
        name, pretrained = f"{LOCAL_DIR_PREFIX}{folder / info['dir']}", None
    else:  # saved as a pointer: name + tag/file, checked by weights hash when loaded
        name, pretrained = info["name"], info.get("pretrained")
        _probe(name, pretrained)
    if random_weights:
        log.warning(RANDOM_WEIGHTS_WARNING.format(name=info.get("name", name)))
    return BackboneChoice(
        name=name,
        pretrained=pretrained,
        source="champion",
        recorded_name=info.get("name"),
        recorded_pretrained=info.get("pretrained"),
        random_weights=random_weights,
        champion_version=version,
    )


def _probe(name: str, pretrained: str | None) -> None:
    """Fail now, not an hour into the run, when a hub tag cannot be downloaded."""
    if pretrained is None or name.startswith(LOCAL_DIR_PREFIX):
        return
    register_model_configs()
    if pretrained in open_clip.list_pretrained_tags_by_model(name):
        check_weights_reachable(name, pretrained)
