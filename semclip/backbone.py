"""Loading a frozen open_clip backbone: hub tag, local checkpoint file, or `local-dir:` folder.

Fabs are air-gapped, so every path that does not need a network is a production path: a
checkpoint file (`pretrained=PATH`) or an open_clip folder (`local-dir:PATH`, config + weights).
A random-weight backbone is allowed for tests and offline demos, and is said loudly.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import shutil
import socket
import urllib.request
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import open_clip
import torch
from open_clip.transformer import VisionTransformer

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ViT-B-16-plus-240"
DEFAULT_PRETRAINED = "laion400m_e32"
TINY_MODEL = "semclip-tiny"
LOCAL_DIR_PREFIX = "local-dir:"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
# Hash lists a pretrained folder carries (semclip.pretrain.overlap writes and reads them).
IMAGE_LISTS = ("seen_images.txt", "unlabeled_images.txt")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
NONE_WORDS = frozenset({"none", "null", "random", ""})  # --pretrained values meaning random weights
OFFLINE_BACKBONE_DIR = "backbones/semclip-sem-small"  # under $SEMCLIP_HOME; `make backbone`
HUB_PROBE_TIMEOUT_S = 3.0  # how long to wait for the weights' host before failing
DEFAULT_HF_ENDPOINT = "https://huggingface.co"
OFFLINE_OPTIONS = (
    f"pass a local checkpoint file (--pretrained /path/to/open_clip_pytorch_model.bin, or "
    f"SEMCLIP_PRETRAINED=FILE), an open_clip folder (--backbone {LOCAL_DIR_PREFIX}PATH, or "
    f"SEMCLIP_BACKBONE={LOCAL_DIR_PREFIX}PATH; `make backbone` builds one), for a refit "
    f"deployment --param backbone={LOCAL_DIR_PREFIX}PATH / --param pretrained=FILE, or, for "
    f"tests and demos only, --backbone {TINY_MODEL} --pretrained none (random weights)"
)
RANDOM_WEIGHTS_WARNING = (
    "RANDOM WEIGHTS: backbone '{name}' has no pretrained weights; every score it gives is a "
    "plumbing check, not a quality figure"
)


class BackboneError(RuntimeError):
    """A backbone could not be loaded; the message says what to do instead."""


@dataclass
class Backbone:
    """A loaded open_clip model plus what is needed to use and to re-create it."""

    model: open_clip.CLIP  # frozen, eval mode
    tokenizer: Any  # open_clip tokenizer: list[str] -> LongTensor (N, context)
    name: str  # as requested: open_clip model name or `local-dir:PATH`
    pretrained: str | None  # tag, checkpoint path, or None (random init / local-dir)
    model_cfg: dict[str, Any]  # open_clip architecture config (written to local-dir folders)
    preprocess_cfg: dict[str, Any] = field(default_factory=dict)  # size, mean, std
    random_weights: bool = False  # True when no weights were loaded at all

    @property
    def image_size(self) -> int:
        """Square input resolution of the vision tower."""
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, tuple | list) else size)

    @property
    def mean(self) -> tuple[float, float, float]:
        return tuple(self.preprocess_cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))

    @property
    def std(self) -> tuple[float, float, float]:
        return tuple(self.preprocess_cfg.get("std", open_clip.OPENAI_DATASET_STD))

    def describe(self) -> str:
        """One line for logs and reports: name, weights, and a loud flag for random weights."""
        weights = (
            "RANDOM WEIGHTS (not pretrained)"
            if self.random_weights
            else (self.pretrained or "weights from folder")
        )
        return f"{self.name} [{weights}]"


def register_model_configs() -> None:
    """Register semclip's own architectures (e.g. `semclip-tiny`) with open_clip; idempotent."""
    if TINY_MODEL in open_clip.list_models():
        return
    folder = resources.files("semclip") / "model_configs"
    with resources.as_file(folder) as path:
        open_clip.add_model_config(path)


def load_backbone(
    name: str = DEFAULT_MODEL,
    pretrained: str | os.PathLike | None = DEFAULT_PRETRAINED,
    device: str | torch.device | None = None,
) -> Backbone:
    """Load a frozen open_clip model by name, with a hub tag, a checkpoint file, or none.

    `name` is an open_clip model name or `local-dir:PATH` (then `pretrained` must be None).
    `pretrained=None` means random initialisation (seeded, so it is reproducible), logged as a
    warning: scores from it say nothing about quality.
    """
    register_model_configs()
    device = torch.device(device) if device is not None else default_device()
    pretrained = os.fspath(pretrained) if pretrained is not None else None
    if name.startswith(LOCAL_DIR_PREFIX):
        backbone = _load_local_dir(name, pretrained)
    else:
        backbone = _load_named(name, pretrained)
    _check_supported(backbone.model, backbone.name)
    backbone.model.to(device).eval().requires_grad_(False)
    if backbone.random_weights:
        log.warning(RANDOM_WEIGHTS_WARNING.format(name=name))
    log.info("backbone %s on %s", backbone.describe(), device)
    return backbone


def offline_or_tiny_backbone(home: str | os.PathLike) -> str:
    """The offline SEM backbone (`make backbone`) when built under `home`, else semclip-tiny.

    What demos and defaults use offline: never a random backbone when a trained one exists.
    """
    folder = Path(home) / OFFLINE_BACKBONE_DIR
    if (folder / CONFIG_FILE).is_file():
        return f"{LOCAL_DIR_PREFIX}{folder}"
    return TINY_MODEL


def resolve_pretrained(backbone: str, pretrained: str | None) -> str | None:
    """The tag/path to load: explicit value, 'none' → None, default tag only for the default."""
    if pretrained is None:
        return DEFAULT_PRETRAINED if backbone == DEFAULT_MODEL else None
    return None if pretrained.strip().lower() in NONE_WORDS else pretrained


def default_device() -> torch.device:
    """CUDA when present, CPU otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _load_named(name: str, pretrained: str | None) -> Backbone:
    """A built-in/registered architecture with a tag, a file, or random weights."""
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        raise BackboneError(
            f"unknown open_clip model '{name}'; use one of open_clip.list_models() "
            f"(e.g. {DEFAULT_MODEL}), '{TINY_MODEL}', or '{LOCAL_DIR_PREFIX}PATH'"
        )
    if pretrained is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same random backbone every time
            model = _create(name, None)
        return Backbone(
            model,
            open_clip.get_tokenizer(name),
            name,
            None,
            model_cfg,
            _preprocess_cfg(model),
            random_weights=True,
        )
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained in tags:
        model = _create_from_tag(name, pretrained)
    else:
        _check_checkpoint_file(name, pretrained, tags)
        model = _create_from_file(name, pretrained)
    return Backbone(
        model, open_clip.get_tokenizer(name), name, pretrained, model_cfg, _preprocess_cfg(model)
    )


def _load_local_dir(name: str, pretrained: str | None) -> Backbone:
    """An open_clip folder (config + weights): the air-gapped production path."""
    if pretrained is not None:
        raise BackboneError(
            f"'{name}' carries its own weights; pass pretrained=None (no --pretrained) with it"
        )
    folder = Path(name[len(LOCAL_DIR_PREFIX) :]).expanduser()
    config_path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise BackboneError(f"backbone folder not found: {folder}")
    if not config_path.is_file():
        raise BackboneError(f"backbone folder {folder} has no {CONFIG_FILE}")
    if not any(p.suffix in _CHECKPOINT_SUFFIXES for p in folder.iterdir()):
        raise BackboneError(f"backbone folder {folder} has no weights file (e.g. {WEIGHTS_FILE})")
    config = json.loads(config_path.read_text())
    model = _create_from_file(f"{LOCAL_DIR_PREFIX}{folder}", None)
    return Backbone(
        model,
        open_clip.get_tokenizer(f"{LOCAL_DIR_PREFIX}{folder}"),
        f"{LOCAL_DIR_PREFIX}{folder}",
        None,
        config["model_cfg"],
        _preprocess_cfg(model),
    )


def _create(name: str, pretrained: str | None) -> open_clip.CLIP:
    model = open_clip.create_model(name, pretrained=pretrained, device="cpu")
    return model


def _create_from_tag(name: str, tag: str) -> open_clip.CLIP:
    check_weights_reachable(name, tag)
    try:
        return _create(name, tag)
    except Exception as exc:  # open_clip wraps every download failure in RuntimeError
        raise BackboneError(
            f"cannot get pretrained weights '{tag}' for {name} (no network or no hub access?): "
            f"{_first_line(exc)}. Offline, {OFFLINE_OPTIONS}"
        ) from exc


def check_weights_reachable(name: str, tag: str, timeout_s: float = HUB_PROBE_TIMEOUT_S) -> None:
    """Raise BackboneError within ``timeout_s`` when a hub tag's weights cannot be had.

    Weights already in the local hub cache are fine. Otherwise one TCP connection to the
    download host (or the HTTPS proxy) is tried once: huggingface_hub itself retries with
    back-off for about a minute per file before open_clip gives up, which is how a refit
    used to fail after 56 s on an air-gapped worker.
    """
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg or "file" in cfg or _weights_cached(cfg):
        return
    url = _download_url(cfg)
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        problem = "HF_HUB_OFFLINE is set and the weights are not in the local hub cache"
    else:
        problem = _unreachable(url, timeout_s)
    if problem:
        raise BackboneError(
            f"cannot get pretrained weights '{tag}' for {name}: {problem}. Offline, "
            f"{OFFLINE_OPTIONS}"
        )


def _weights_cached(cfg: dict[str, Any]) -> bool:
    """Whether open_clip would find the tag's file without a download."""
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        names = {filename or "open_clip_pytorch_model.bin", "open_clip_model.safetensors"}
        return any(isinstance(try_to_load_from_cache(repo, n), str) for n in names)
    url = cfg.get("url", "")
    return bool(url) and (Path("~/.cache/clip").expanduser() / os.path.basename(url)).is_file()


def _download_url(cfg: dict[str, Any]) -> str:
    if cfg.get("hf_hub"):
        return os.environ.get("HF_ENDPOINT", "").strip() or DEFAULT_HF_ENDPOINT
    return str(cfg.get("url", ""))


def _unreachable(url: str, timeout_s: float) -> str | None:
    """Why ``url``'s host (or the proxy for it) takes no connection, or None when it does."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme or "https")
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_parts.hostname or "", proxy_parts.port or 80
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(socket.create_connection, (host, port), timeout_s)
    try:
        future.result(timeout=timeout_s + 0.5).close()  # DNS has no timeout of its own
        return None
    except concurrent.futures.TimeoutError:
        return f"no answer from {host}:{port} within {timeout_s:g} s"
    except OSError as exc:
        return f"cannot connect to {host}:{port} ({exc})"
    finally:
        pool.shutdown(wait=False)


def _check_checkpoint_file(name: str, pretrained: str, tags: list[str]) -> None:
    path = Path(pretrained).expanduser()
    looks_like_path = os.sep in pretrained or path.suffix in _CHECKPOINT_SUFFIXES
    if path.is_file():
        return
    if looks_like_path:
        raise BackboneError(f"checkpoint file not found: {path}")
    raise BackboneError(
        f"'{pretrained}' is neither a pretrained tag of {name} (known: {', '.join(tags) or 'none'})"
        f" nor an existing checkpoint file"
    )


def _create_from_file(name: str, checkpoint: str | None) -> open_clip.CLIP:
    try:
        return _create(name, checkpoint)
    except RuntimeError as exc:
        raise BackboneError(
            f"checkpoint {checkpoint or name} does not fit architecture "
            f"'{name}' (wrong model for these weights?): {_first_line(exc)}"
        ) from exc
    except Exception as exc:  # unreadable/corrupt files surface as many exception types
        raise BackboneError(
            f"cannot read checkpoint {checkpoint or name}: {_first_line(exc)}"
        ) from exc


def _preprocess_cfg(model: torch.nn.Module) -> dict[str, Any]:
    cfg = dict(open_clip.get_model_preprocess_cfg(model))
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


def _check_supported(model: torch.nn.Module, name: str) -> None:
    """SEM-CLIP needs a class-token ViT whose blocks use nn.MultiheadAttention."""
    visual = getattr(model, "visual", None)
    ok = (
        isinstance(visual, VisionTransformer)
        and visual.attn_pool is None
        and visual.pool_type == "tok"
        and all(
            isinstance(b.attn, torch.nn.MultiheadAttention) for b in visual.transformer.resblocks
        )
    )
    if not ok:
        raise BackboneError(
            f"backbone '{name}' is not a class-token open_clip ViT with standard attention "
            f"blocks; SEM-CLIP's dual-path encoder supports ViT-B/16+, ViT-B/16, ViT-L/14 "
            f"and similar"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__


def save_backbone_dir(backbone: Backbone, folder: str | os.PathLike) -> str:
    """Write the backbone as an open_clip `local-dir:` folder; returns the weights' sha256.

    Used to make model artifacts self-contained (no hub needed to serve them). A backbone
    loaded from a `local-dir:` folder keeps that folder's image lists (`IMAGE_LISTS`), so a
    model version still knows which images its backbone was pretrained or adapted on.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": backbone.model_cfg, "preprocess_cfg": backbone.preprocess_cfg}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    if backbone.name.startswith(LOCAL_DIR_PREFIX):
        source = Path(backbone.name[len(LOCAL_DIR_PREFIX) :]).expanduser()
        for name in IMAGE_LISTS:
            if (source / name).is_file() and source.resolve() != folder.resolve():
                shutil.copyfile(source / name, folder / name)
    state = {k: v.detach().to("cpu").contiguous() for k, v in backbone.model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    return file_sha256(folder / WEIGHTS_FILE)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed (checkpoints are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


PRETRAIN_RECORD = "pretrain.json"  # written by `semclip pretrain` next to the weights


def pretrain_classes(backbone: Backbone) -> set[str] | None:
    """Classes a `local-dir:` backbone was pretrained on (its pretrain.json), else None."""
    if not backbone.name.startswith(LOCAL_DIR_PREFIX):
        return None
    record = Path(backbone.name[len(LOCAL_DIR_PREFIX) :]).expanduser() / PRETRAIN_RECORD
    try:
        data = json.loads(record.read_text())["data"]
        classes = {str(c) for c in data["classes"]}
        excluded = {str(c) for c in data.get("excluded_classes", ())}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return classes - excluded
