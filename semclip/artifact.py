"""A self-contained model directory: everything needed to predict on an air-gapped worker.

Layout:
    model.json          format version, classes, prompts, τ/α, preprocessing, configs, lineage
    heads.safetensors   transformation layers, classification head, class text prototypes T
    membank.safetensors optional: the good shots' patch memory bank (bank, scale); model.json's
                        "membank" says how to read it. Older models have neither.
    backbone/           open_clip `local-dir:` folder (config + weights), unless saved as a
                        pointer (name + tag/file + weights hash) with include_backbone=False
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from semclip.backbone import (
    LOCAL_DIR_PREFIX,
    RANDOM_WEIGHTS_WARNING,
    WEIGHTS_FILE,
    Backbone,
    file_sha256,
    load_backbone,
    save_backbone_dir,
)
from semclip.config import Calibration, FitConfig, PredictConfig
from semclip.features import Preprocess
from semclip.fingerprint import state_sha256
from semclip.heads import SemclipHeads
from semclip.membank import PatchMemoryBank
from semclip.model import SemclipModel
from semclip.prompts import PromptLibrary

log = logging.getLogger(__name__)

FORMAT = "semclip-model"
FORMAT_VERSION = 1  # bump on any change old code cannot read; add a reader for the old one
MODEL_FILE = "model.json"
HEADS_FILE = "heads.safetensors"
MEMBANK_FILE = "membank.safetensors"
BACKBONE_DIR = "backbone"


class IncompatibleModelError(RuntimeError):
    """The directory holds no semclip model, or one written in a format this code cannot read."""


class CorruptModelError(IncompatibleModelError):
    """A file of the model directory is missing, unreadable, or differs from the hash that
    ``model.json`` recorded when the model was saved (a bit flip, a half copy, a deleted
    folder). Loading it anyway gave NaN probabilities that were written as class "good"."""


def save_model(
    model: SemclipModel, path: str | os.PathLike, *, include_backbone: bool = True
) -> Path:
    """Write `model` to a fresh directory (replaced if present); returns its path."""
    import semclip

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in model.heads.state_dict().items()},
        str(tmp / HEADS_FILE),
    )
    membank_info = None
    if model.membank is not None:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in model.membank.state_dict().items()},
            str(tmp / MEMBANK_FILE),
        )
        membank_info = {"file": MEMBANK_FILE, "k": model.membank.k, "source": model.membank.source}
    backbone_info = _backbone_info(model.backbone)
    if include_backbone:
        backbone_info["weights_sha256"] = save_backbone_dir(model.backbone, tmp / BACKBONE_DIR)
        backbone_info["dir"] = BACKBONE_DIR
    else:
        if model.backbone.name.startswith(LOCAL_DIR_PREFIX):
            backbone_info["name"] = model.backbone.name  # the folder is the pointer
        backbone_info["state_sha256"] = state_sha256(model.backbone.model)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "semclip_version": semclip.__version__,
        "name": model.name,
        "version": model.version,
        "classes": list(model.classes),
        "n_stages": model.heads.n_stages,
        "calibration": model.calibration.to_dict(),
        "preprocess": model.preprocess.to_dict(),
        "fit_config": model.fit_config.to_dict(),
        "predict_config": model.predict_config.to_dict(),
        "prompts": model.prompts.to_dict(),
        "backbone": backbone_info,
        "lineage": model.lineage,
    }
    if membank_info is not None:
        meta["membank"] = membank_info
    meta["heads_sha256"] = file_sha256(tmp / HEADS_FILE)  # checked on load
    (tmp / MODEL_FILE).write_text(json.dumps(meta, indent=2))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def load_model(
    path: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    verify: bool = True,
) -> SemclipModel:
    """Read a model directory; IncompatibleModelError when it is missing, foreign or too new/old.

    The weight files are checked against the hashes in ``model.json`` first
    (:func:`verify_model_dir`, :class:`CorruptModelError`); ``verify=False`` skips that for a
    caller that has just checked the same folder. A heads file that cannot be parsed is a
    :class:`CorruptModelError` too, hash or not (models saved before the heads were hashed).
    """
    path = Path(path)
    meta = verify_model_dir(path) if verify else read_meta(path)
    info = meta["backbone"]
    if info.get("dir"):
        backbone = load_backbone(f"{LOCAL_DIR_PREFIX}{path / info['dir']}", None, device)
    else:
        backbone = load_backbone(info["name"], info.get("pretrained"), device)
        if state_sha256(backbone.model) != info["state_sha256"]:
            raise IncompatibleModelError(
                f"model {path} points at backbone {info['name']} ({info.get('pretrained')}) "
                f"but the weights found there differ from those it was fitted with"
            )
    backbone.name = info["name"]
    backbone.pretrained = info.get("pretrained")
    backbone.random_weights = bool(info.get("random_weights"))  # a saved random net stays random
    if backbone.random_weights:
        log.warning("model %s: %s", path, RANDOM_WEIGHTS_WARNING.format(name=backbone.name))
    heads_path = path / HEADS_FILE
    try:
        state = load_file(str(heads_path), device=str(backbone.model.visual.proj.device))
        heads = SemclipHeads(
            meta["n_stages"],
            state["classifier.weight"].shape[1] // meta["n_stages"],
            state["text"].shape[1],
            state["text"],
        )
        heads.load_state_dict(state)
    except FileNotFoundError:
        raise CorruptModelError(_missing(path, HEADS_FILE)) from None
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CorruptModelError(
            f"{heads_path} is not a readable heads file ({type(exc).__name__}: {exc}); "
            f"the model directory is damaged: copy it again from where it came from "
            f"(a registry version is re-downloaded by deleting its cache folder) or refit"
        ) from exc
    heads.to(backbone.model.visual.proj.device).eval()
    return SemclipModel(
        backbone=backbone,
        heads=heads,
        classes=tuple(meta["classes"]),
        prompts=PromptLibrary.from_dict(meta["prompts"], source=str(path / MODEL_FILE)),
        calibration=Calibration.from_dict(meta["calibration"]),
        preprocess=Preprocess.from_dict(meta["preprocess"]),
        fit_config=FitConfig.from_dict(meta["fit_config"]),
        predict_config=PredictConfig.from_dict(meta["predict_config"]),
        name=meta["name"],
        version=str(meta["version"]),
        lineage=meta["lineage"],
        membank=_load_membank(path, meta.get("membank"), backbone.model.visual.proj.device),
    )


def _load_membank(
    path: Path, info: dict[str, Any] | None, device: torch.device
) -> PatchMemoryBank | None:
    """The memory bank a model was saved with; None for models without one (older formats)."""
    if not info:
        return None
    state = load_file(str(path / info["file"]), device=str(device))
    return PatchMemoryBank(state["bank"], state["scale"], int(info["k"]), source=info["source"])


def verify_model_dir(path: str | os.PathLike) -> dict[str, Any]:
    """``model.json`` of a directory whose files are all there and match their hashes.

    Checks ``heads.safetensors`` against ``heads_sha256`` and the bundled backbone weights
    against ``backbone.weights_sha256`` (each when recorded: models saved before the heads
    were hashed skip that one). Raises :class:`CorruptModelError` naming the file.
    """
    path = Path(path)
    meta = read_meta(path)
    files = [(HEADS_FILE, meta.get("heads_sha256"))]
    info = meta.get("backbone", {})
    if info.get("dir"):
        files.append((f"{info['dir']}/{WEIGHTS_FILE}", info.get("weights_sha256")))
    for name, expected in files:
        file = path / name
        if not file.is_file():
            raise CorruptModelError(_missing(path, name))
        if expected and file_sha256(file) != expected:
            raise CorruptModelError(
                f"{file} does not match the sha256 recorded in {path / MODEL_FILE} "
                f"(expected {expected[:12]}…): the file is corrupt (bit flip, partial copy). "
                f"Do not use this copy: fetch the model again (a registry version is "
                f"re-downloaded by deleting its cache folder) or refit"
            )
    return meta


def _missing(path: Path, name: str) -> str:
    return (
        f"model {path} lacks {name}: the directory is incomplete (deleted or half copied); "
        f"copy the whole model directory again (a registry version is re-downloaded by "
        f"deleting its cache folder) or refit"
    )


def backbone_source(path: str | os.PathLike) -> tuple[str, str | None]:
    """``(name, pretrained)`` that loads the backbone a model directory was fitted with.

    A self-contained directory gives its own ``local-dir:<path>/backbone`` folder (what
    continued pretraining starts from); a pointer gives the name and tag/file it names.
    """
    path = Path(path)
    info = read_meta(path)["backbone"]
    if info.get("dir"):
        return f"{LOCAL_DIR_PREFIX}{(path / info['dir']).resolve()}", None
    return info["name"], info.get("pretrained")


def read_meta(path: Path) -> dict[str, Any]:
    """model.json after format checks."""
    meta_path = path / MODEL_FILE
    if not meta_path.is_file():
        raise IncompatibleModelError(f"no semclip model at {path} (missing {MODEL_FILE})")
    try:
        meta = json.loads(meta_path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        # a half-written copy or bit rot: corrupt (so a cached registry copy is dropped and
        # downloaded again), not a model of another format
        raise CorruptModelError(
            f"{meta_path} is not valid JSON ({type(exc).__name__}: {exc}): the file is "
            "corrupt or cut short; copy the model directory again (a registry version is "
            "re-downloaded by itself) or refit"
        ) from exc
    if not isinstance(meta, dict):
        raise CorruptModelError(f"{meta_path} is not a JSON object: the file is corrupt")
    if meta.get("format") != FORMAT:
        raise IncompatibleModelError(
            f"{meta_path} is not a semclip model (format {meta.get('format')!r})"
        )
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise IncompatibleModelError(
            f"model {path} has format version {version} (written by semclip "
            f"{meta.get('semclip_version', '?')}); this semclip reads version {FORMAT_VERSION}. "
            f"Refit the model with this version, or load it with the semclip that wrote it."
        )
    return meta


def _backbone_info(backbone: Backbone) -> dict[str, Any]:
    return {
        "name": backbone.name,
        "pretrained": backbone.pretrained,
        "random_weights": backbone.random_weights,
        "model_cfg": backbone.model_cfg,
    }
