"""Write a finished pretraining run as an open_clip `local-dir:` backbone folder.

The folder holds exactly what a consumer needs: `open_clip_config.json` + weights (loadable
with `load_backbone("local-dir:DIR", None)`, and the weights file alone with
`load_backbone(<model>, pretrained=FILE)`), `seen_images.txt` for the overlap guard, and the
model card with its loss curve. It is built beside the target and renamed into place, so a
crash never leaves a half-written backbone where the demo or a flow would pick it up.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shutil
from pathlib import Path
from typing import Any

import torch

from semclip.backbone import (
    CONFIG_FILE,
    LOCAL_DIR_PREFIX,
    WEIGHTS_FILE,
    Backbone,
    save_backbone_dir,
)
from semclip.pretrain.archive import Archive
from semclip.pretrain.config import PretrainConfig
from semclip.pretrain.overlap import SEEN_IMAGES, write_seen_images
from semclip.pretrain.towers import Towers

log = logging.getLogger(__name__)

MODEL_CARD = "MODEL_CARD.md"
RECORD = "pretrain.json"
LOSS_CURVE = "loss_curve.png"


def export_backbone(
    out_dir: Path,
    towers: Towers,
    archive: Archive,
    config: PretrainConfig,
    state: dict[str, Any],
    zero_shot: dict[str, Any],
    split_counts: dict[str, dict[str, int]],
    device: str,
) -> Path:
    """Write the backbone folder (replacing an older one at `out_dir`); returns its path."""
    out_dir = out_dir.resolve()
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    backbone = Backbone(
        towers.model, towers.tokenizer, config.model, None, towers.model_cfg, towers.preprocess_cfg
    )
    weights_sha = save_backbone_dir(backbone, tmp)
    write_seen_images(tmp, (item.sha256 for item in archive.items))
    record = _record(out_dir, towers, archive, config, state, zero_shot, split_counts, device)
    record["weights_sha256"] = weights_sha
    (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    plot_losses(state["history"], tmp / LOSS_CURVE, config.batch_size)
    (tmp / MODEL_CARD).write_text(model_card(record))
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
        shutil.rmtree(old)
    os.replace(tmp, out_dir)
    log.info("wrote backbone %s", out_dir)
    return out_dir


def _record(
    out_dir: Path,
    towers: Towers,
    archive: Archive,
    config: PretrainConfig,
    state: dict[str, Any],
    zero_shot: dict[str, Any],
    split_counts: dict[str, dict[str, int]],
    device: str,
) -> dict[str, Any]:
    """Everything the model card says, as data (pretrain.json)."""
    history = state["history"]
    elapsed = state["elapsed_s"]
    return {
        "name": out_dir.name,
        "model": config.model,
        "init": towers.init,
        "model_cfg": towers.model_cfg,
        "config": config.to_dict(),
        "data": {
            "source": archive.source,
            "classes": list(archive.classes),
            "excluded_classes": list(archive.excluded),
            "excluded_images": archive.dropped,
            "images": len(archive),
            "train": split_counts["train"],
            "val": split_counts["val"],
            "archive_digest": archive.digest(),
            "seen_images": SEEN_IMAGES,
        },
        "training": {
            "steps": state["step"],
            "images_seen": state["images_seen"],
            "train_seconds": round(elapsed, 1),
            "images_per_s": round(state["images_seen"] / elapsed, 2) if elapsed else None,
            "device": device,
            "torch_threads": torch.get_num_threads(),
            "host": platform.node(),
            "first": history[0] if history else None,
            "last": history[-1] if history else None,
            "chance_clip_loss": math.log(config.batch_size),
        },
        "zero_shot": {"before": state.get("initial_eval"), "after": zero_shot},
        "load": {
            "local_dir": f"{LOCAL_DIR_PREFIX}{out_dir}",
            "checkpoint": str(out_dir / WEIGHTS_FILE),
            "config": str(out_dir / CONFIG_FILE),
        },
    }


def plot_losses(history: list[dict[str, float]], path: Path, batch_size: int) -> None:
    """Both losses per logged window, with the contrastive chance level ln(B) and its floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), constrained_layout=True)
    clip_ax, dense_ax = axes
    clip_ax.plot(steps, [h["loss_clip"] for h in history], label="contrastive")
    clip_ax.axhline(math.log(batch_size), color="grey", ls="--", label="chance ln(B)")
    clip_ax.plot(steps, [h["clip_floor"] for h in history], color="grey", ls=":", label="floor")
    clip_ax.set(xlabel="step", ylabel="loss", title="multi-positive CLIP loss")
    clip_ax.legend()
    dense_ax.plot(steps, [h["loss_dense"] for h in history], color="C1", label="final layer")
    if any(h.get("loss_vv", 0) for h in history):
        dense_ax.plot(steps, [h["loss_vv"] for h in history], color="C2", label="V-V stages")
    dense_ax.set(xlabel="step", ylabel="loss", title="dense alignment loss")
    dense_ax.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def model_card(record: dict[str, Any]) -> str:
    """The MODEL_CARD.md text: what it is, what it saw, how it trained, how well, how to load."""
    data, train, zs, cfg = record["data"], record["training"], record["zero_shot"], record["config"]
    source = data["source"]
    if source.get("kind") == "synthetic":
        origin = (
            f"synthetic SEM archive (semclip.synth), seed {source.get('seed')}, "
            f"{source.get('size')} px, pattern families {', '.join(source.get('patterns', []))}"
            f", in `{source.get('folder')}`"
        )
    else:
        origin = f"manifest folder `{source.get('folder')}`"
    excluded = ", ".join(data["excluded_classes"]) or "none"
    first, last = train["first"] or {}, train["last"] or {}
    lines = [
        f"# {record['name']}",
        "",
        f"open_clip `{record['model']}` pretrained on SEM images by `semclip pretrain` "
        f"(init: {record['init']}).",
        "",
        "## Load",
        "",
        "```python",
        "from semclip import load_backbone",
        f'load_backbone("{record["load"]["local_dir"]}", None)',
        *(
            []
            if record["model"].startswith(LOCAL_DIR_PREFIX)
            else [
                f'load_backbone("{record["model"]}", pretrained="{record["load"]["checkpoint"]}")'
            ]
        ),
        "```",
        "",
        "## Data",
        "",
        f"- {origin}",
        f"- {data['images']} images, classes: {', '.join(data['classes'])}; "
        f"excluded classes: {excluded}",
        f"- train per class: {_counts(data['train'])}",
        f"- validation per class (held out, zero-shot only): {_counts(data['val'])}",
        f"- `{data['seen_images']}`: sha256 of every archive image file (train and validation); "
        "evaluation must not test on these",
        "",
        "## Training",
        "",
        f"- {train['steps']} steps x batch {cfg['batch_size']} = {train['images_seen']} images, "
        f"lr {cfg['lr']} (warmup {cfg['warmup_steps']}, cosine), weight decay "
        f"{cfg['weight_decay']}, grad clip {cfg['grad_clip']}, seed {cfg['seed']}",
        f"- losses: multi-positive CLIP x{cfg['contrastive_weight']} + dense alignment "
        f"x{cfg['dense_weight']} (final layer) + x{cfg['vv_dense_weight']} (V-V stage tokens); "
        "captions from the prompt library (templates x states), metadata words where the "
        "manifest has them",
        f"- locks: text tower {'locked' if cfg['lock_text'] else 'trained'}, first "
        f"{cfg['lock_image_layers']} vision layers locked, token embedding "
        f"{'trained' if cfg['train_token_embedding'] else 'frozen'}",
        f"- {train['train_seconds']} s of training on {train['device']} "
        f"({train['torch_threads']} threads), {train['images_per_s']} images/s",
        f"- contrastive loss {_f(first.get('loss_clip'))} → {_f(last.get('loss_clip'))} "
        f"(chance ln(B) = {_f(train['chance_clip_loss'])}, floor {_f(last.get('clip_floor'))}); "
        f"dense loss {_f(first.get('loss_dense'))} → {_f(last.get('loss_dense'))}, V-V "
        f"{_f(first.get('loss_vv'))} → {_f(last.get('loss_vv'))}",
        "",
        f"![loss curve]({LOSS_CURVE})",
        "",
        "## Zero-shot on the validation split",
        "",
        "| | accuracy | patch AUROC |",
        "|---|---|---|",
        f"| before pretraining | {_f((zs['before'] or {}).get('accuracy'))} | "
        f"{_f((zs['before'] or {}).get('patch_auroc'))} |",
        f"| after pretraining | {_f(zs['after'].get('accuracy'))} | "
        f"{_f(zs['after'].get('patch_auroc'))} |",
        "",
        f"Per-class accuracy after: {_counts(zs['after'].get('per_class_accuracy', {}))}",
        "",
        "## Limits",
        "",
        "Trained on the data above only. A backbone pretrained on synthetic images measures the "
        "method offline; it is not a substitute for pretraining on a fab's own archive.",
        "",
    ]
    return "\n".join(lines)


def _counts(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k} {_f(v) if isinstance(v, float) else v}" for k, v in counts.items())


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
