"""Write a finished pretraining run as an open_clip `local-dir:` backbone folder.

The folder holds exactly what a consumer needs: `open_clip_config.json` + weights (loadable
with `load_backbone("local-dir:DIR", None)`, and the weights file alone with
`load_backbone(<model>, pretrained=FILE)`), `seen_images.txt` for the overlap guard, and the
model card with its loss curve. It is built beside the target and renamed into place, so a
crash never leaves a half-written backbone where the demo or a flow would pick it up.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import shutil
from pathlib import Path
from typing import Any

import torch

from semclip import strict_json
from semclip.backbone import (
    CONFIG_FILE,
    LOCAL_DIR_PREFIX,
    WEIGHTS_FILE,
    Backbone,
    save_backbone_dir,
)
from semclip.data.dataset import left_out_heading
from semclip.pretrain.archive import Archive
from semclip.pretrain.config import PretrainConfig
from semclip.pretrain.overlap import SEEN_IMAGES, UNLABELED_IMAGES, write_seen_images
from semclip.pretrain.ssl_step import indicator_reported
from semclip.pretrain.towers import Towers
from semclip.pretrain.unlabeled import UnlabeledSet

log = logging.getLogger(__name__)

MODEL_CARD = "MODEL_CARD.md"
RECORD = "pretrain.json"
LOSS_CURVE = "loss_curve.png"
COLLAPSE_REPORT = "COLLAPSED.md"  # in the work folder of an SSL run stopped for collapse


def export_backbone(
    out_dir: Path,
    towers: Towers,
    archive: Archive | None,
    config: PretrainConfig,
    state: dict[str, Any],
    zero_shot: dict[str, Any] | None,
    split_counts: dict[str, dict[str, int]] | None,
    device: str,
    *,
    unlabeled: UnlabeledSet | None = None,
    probe: dict[str, Any] | None = None,
    inherited: dict[str, set[str]] | None = None,
    zero_shot_source: str = "the labelled archive's held-out split",
) -> Path:
    """Write the backbone folder (replacing an older one at `out_dir`); returns its path.

    `seen_images.txt` lists the labelled archive's images, `unlabeled_images.txt` (SSL runs)
    the unlabelled ones; both include what the starting weights' folder listed (`inherited`).
    """
    out_dir = out_dir.resolve()
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    backbone = Backbone(
        towers.model, towers.tokenizer, config.model, None, towers.model_cfg, towers.preprocess_cfg
    )
    weights_sha = save_backbone_dir(backbone, tmp)
    inherited = inherited or {}
    labelled = {item.sha256 for item in archive.items} if archive is not None else set()
    write_seen_images(tmp, labelled | inherited.get(SEEN_IMAGES, set()))
    used = {image.sha256 for image in unlabeled.images} if unlabeled is not None else set()
    if used or inherited.get(UNLABELED_IMAGES):
        write_seen_images(tmp, used | inherited.get(UNLABELED_IMAGES, set()), UNLABELED_IMAGES)
    record = _record(out_dir, towers, archive, config, state, zero_shot, split_counts, device)
    record["zero_shot"]["source"] = zero_shot_source
    record["probe"] = probe
    record["inherited"] = {name: len(v) for name, v in inherited.items()}
    record["ssl"] = ssl_record(unlabeled, state, config) if unlabeled is not None else None
    record["weights_sha256"] = weights_sha
    (tmp / RECORD).write_text(strict_json.dumps(record, indent=2) + "\n")
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
        "data": None
        if archive is None
        else {
            "source": archive.source,
            "classes": list(archive.classes),
            "excluded_classes": list(archive.excluded),
            "excluded_images": archive.dropped,
            "unreadable_images": list(archive.unreadable),
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


def ssl_record(
    unlabeled: UnlabeledSet, state: dict[str, Any], config: PretrainConfig
) -> dict[str, Any]:
    """The self-distillation facts of the card: unlabelled data, skips, indicators, collapse."""
    history = state["history"]
    keys = (
        "loss_ssl_cls",
        "loss_ssl_patch",
        "teacher_entropy",
        "teacher_marginal_entropy",
        "patch_entropy",
        "patch_std",
    )

    def pick(entry: dict[str, float] | None) -> dict[str, float] | None:
        return {k: entry[k] for k in keys if k in entry} if entry else None

    return {
        "source": unlabeled.source,
        "images_used": len(unlabeled),
        "skipped": unlabeled.skipped,
        "skipped_total": sum(unlabeled.skipped.values()),
        "skipped_examples": unlabeled.skipped_examples,
        "unlabeled_images": UNLABELED_IMAGES,
        "mode": "ssl only" if config.ssl_only else "mixed with the labelled archive",
        "first": pick(history[0] if history else None),
        "last": pick(history[-1] if history else None),
        "reference_patch_std": state.get("reference_std"),
        "collapsed": state.get("collapsed"),
    }


def write_collapse_report(
    work: Path,
    config: PretrainConfig,
    state: dict[str, Any],
    unlabeled: UnlabeledSet | None,
    init: str,
) -> Path:
    """A stopped-for-collapse run's card, in the work folder (no backbone is written)."""
    lines = [
        "# Self-distillation COLLAPSED: no backbone written",
        "",
        f"- init: {init}; stopped at step {state['step']}/{config.steps}",
        f"- why: {state['collapsed']}",
    ]
    if unlabeled is not None:
        rec = ssl_record(unlabeled, state, config)
        lines += [
            f"- unlabelled: {rec['images_used']} images from `{rec['source']['uri']}` "
            f"(dates {rec['source']['dates'] or 'all'}), skipped {rec['skipped_total']}",
            f"- indicators at the start: {rec['first']}",
            f"- indicators at the stop: {rec['last']}",
        ]
    lines += [
        "",
        "Change the recipe (lower --lr, a higher teacher temperature, more prototypes) and "
        "rerun with --restart.",
        "",
    ]
    path = work / COLLAPSE_REPORT
    path.write_text("\n".join(lines))
    (work / RECORD).write_text(
        strict_json.dumps({"config": config.to_dict(), "state": state}) + "\n"
    )
    return path


def plot_losses(history: list[dict[str, float]], path: Path, batch_size: int) -> None:
    """Losses per logged window: contrastive (with chance ln(B) and floor), dense, and SSL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    labelled = bool(history) and "loss_clip" in history[0]
    ssl = bool(history) and "loss_ssl_cls" in history[0]
    panels = 2 * labelled + 2 * ssl
    fig, axes = plt.subplots(1, max(panels, 1), figsize=(5 * max(panels, 1), 3.6), squeeze=False)
    axes = list(axes[0])
    if labelled:
        clip_ax, dense_ax = axes.pop(0), axes.pop(0)
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
    if ssl:
        loss_ax, ind_ax = axes.pop(0), axes.pop(0)
        entropies = [
            (key, label)
            for key, label in (
                ("teacher_entropy", "teacher entropy / log K"),
                ("teacher_marginal_entropy", "batch-mean entropy / log K"),
                ("patch_entropy", "patch entropy / log K"),
            )
            if any(not _missing(h.get(key)) for h in history)
        ]
        names = ("(DINO)", "(iBOT)", "self-distillation")
        if not entropies:  # masked-feature prediction: cosine regression, no prototypes
            names = ("(cosine)", "(cosine)", "masked-feature prediction")
        loss_ax.plot(steps, [h["loss_ssl_cls"] for h in history], label=f"[CLS] {names[0]}")
        loss_ax.plot(
            steps, [h["loss_ssl_patch"] for h in history], label=f"masked patches {names[1]}"
        )
        loss_ax.set(xlabel="step", ylabel="loss", title=names[2])
        loss_ax.legend()
        for key, label in entropies:
            ind_ax.plot(steps, [_or_nan(h.get(key)) for h in history], label=label)
        if entropies:
            ind_ax.set(xlabel="step", ylim=(0, 1.05), title="collapse indicators")
        else:  # the one collapse indicator that applies: the patch features' spread
            ind_ax.plot(steps, [h["patch_std"] for h in history], label="teacher patch std")
            ind_ax.set(xlabel="step", ylim=(0, None), title="collapse indicator")
        ind_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def model_card(record: dict[str, Any]) -> str:
    """The MODEL_CARD.md text: what it is, what it saw, how it trained, how well, how to load."""
    train, zs, cfg = record["training"], record["zero_shot"], record["config"]
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
        *_data_lines(record),
        *_ssl_lines(record),
        "## Training",
        "",
        f"- {train['steps']} steps x batch {cfg['batch_size']} = {train['images_seen']} images, "
        f"lr {cfg['lr']} (warmup {cfg['warmup_steps']}, cosine), weight decay "
        f"{cfg['weight_decay']}, grad clip {cfg['grad_clip']}, seed {cfg['seed']}",
        *_loss_lines(record),
        f"- locks: text tower {'locked' if cfg['lock_text'] else 'trained'}, first "
        f"{cfg['lock_image_layers']} vision layers locked, token embedding "
        f"{'trained' if cfg['train_token_embedding'] else 'frozen'}"
        + ("; ln_post, proj and logit scale frozen (SSL only)" if cfg.get("ssl_only") else ""),
        f"- {train['train_seconds']} s of training on {train['device']} "
        f"({train['torch_threads']} threads), {train['images_per_s']} images/s",
        "",
        f"![loss curve]({LOSS_CURVE})",
        "",
        f"## Zero-shot: {zs.get('source', 'the validation split')}",
        "",
        *_zero_shot_lines(zs),
        *_probe_lines(record.get("probe")),
        "## Limits",
        "",
        "Trained on the data above only. A backbone pretrained on synthetic images measures the "
        "method offline; it is not a substitute for pretraining on a fab's own archive.",
        "",
    ]
    return "\n".join(lines)


def _data_lines(record: dict[str, Any]) -> list[str]:
    data = record["data"]
    inherited = record.get("inherited") or {}
    carried = (
        [
            f"- inherited from the starting weights' folder: {inherited.get(SEEN_IMAGES, 0)} "
            f"labelled and {inherited.get(UNLABELED_IMAGES, 0)} unlabelled image hashes "
            "(kept in the lists below)"
        ]
        if any(inherited.values())
        else []
    )
    if data is None:
        return [
            "- no labelled data: self-distillation on unlabelled images only (below)",
            f"- `{SEEN_IMAGES}`: the labelled images behind the starting weights, if known",
            *carried,
            "",
        ]
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
    unreadable = data.get("unreadable_images") or []
    return [
        f"- {origin}",
        f"- {data['images']} images, classes: {', '.join(data['classes'])}; "
        f"excluded classes: {excluded}",
        *(
            [f"- {left_out_heading(len(unreadable))}:"]
            + [f"  - {entry}" for entry in unreadable[:20]]
            + (
                [f"  - … and {len(unreadable) - 20} more (pretrain.json)"]
                if len(unreadable) > 20
                else []
            )
            if unreadable
            else []
        ),
        f"- train per class: {_counts(data['train'])}",
        f"- validation per class (held out, zero-shot only): {_counts(data['val'])}",
        f"- `{data['seen_images']}`: sha256 of every archive image file (train and validation); "
        "evaluation must not test on these",
        *carried,
        "",
    ]


def _ssl_lines(record: dict[str, Any]) -> list[str]:
    ssl = record.get("ssl")
    if not ssl:
        return []
    cfg = record["config"]["ssl"]
    src = ssl["source"]
    skipped = ", ".join(f"{k} {v}" for k, v in ssl["skipped"].items()) or "none"
    first, last = ssl["first"] or {}, ssl["last"] or {}
    lines = [
        "## Unlabelled adaptation (self-supervised)",
        "",
        f"- source: `{src['uri']}` ({src['kind']}), dates: {src['dates'] or 'all'}; "
        f"{src.get('files_listed')} image files listed",
        f"- {ssl['images_used']} unlabelled images used; {ssl['skipped_total']} skipped "
        f"({skipped})",
        *[f"  - skipped: {e}" for e in ssl["skipped_examples"]],
        f"- `{ssl['unlabeled_images']}`: sha256 of every unlabelled image used; evaluation on "
        "these is transductive (allowed, and reported by `semclip eval`)",
        f"- mode: {ssl['mode']}; objective: {_objective_text(cfg)}; SSL weight {cfg['weight']}",
        f"- exported trunk: {'EMA teacher' if cfg['export_teacher'] else 'student'}",
        f"- SSL losses: [CLS] {_f(first.get('loss_ssl_cls'))} → {_f(last.get('loss_ssl_cls'))}, "
        f"patch {_f(first.get('loss_ssl_patch'))} → {_f(last.get('loss_ssl_patch'))}",
        f"- collapse indicators (first → last): {_entropy_text(first, last)}patch feature std "
        f"{_f4(first.get('patch_std'))} → {_f4(last.get('patch_std'))}; "
        + (f"**COLLAPSED: {ssl['collapsed']}**" if ssl["collapsed"] else "no collapse detected"),
        "",
    ]
    return lines


def _loss_lines(record: dict[str, Any]) -> list[str]:
    train, cfg = record["training"], record["config"]
    if record["data"] is None:
        return ["- losses: self-distillation only (see above)"]
    first, last = train["first"] or {}, train["last"] or {}
    return [
        f"- losses: multi-positive CLIP x{cfg['contrastive_weight']} + dense alignment "
        f"x{cfg['dense_weight']} (final layer) + x{cfg['vv_dense_weight']} (V-V stage tokens); "
        "captions from the prompt library (templates x states), metadata words where the "
        "manifest has them" + (" ; plus the self-distillation term" if record.get("ssl") else ""),
        f"- contrastive loss {_f(first.get('loss_clip'))} → {_f(last.get('loss_clip'))} "
        f"(chance ln(B) = {_f(train['chance_clip_loss'])}, floor {_f(last.get('clip_floor'))}); "
        f"dense loss {_f(first.get('loss_dense'))} → {_f(last.get('loss_dense'))}, V-V "
        f"{_f(first.get('loss_vv'))} → {_f(last.get('loss_vv'))}",
    ]


def _zero_shot_lines(zs: dict[str, Any]) -> list[str]:
    before, after = zs.get("before"), zs.get("after")
    if after is None:
        return ["Not measured: no labelled images (pass --data or --zeroshot-data).", ""]
    before = before or {}
    return [
        "| | accuracy | patch AUROC |",
        "|---|---|---|",
        f"| before pretraining | {_f(before.get('accuracy'))} | {_f(before.get('patch_auroc'))} |",
        f"| after pretraining | {_f(after.get('accuracy'))} | {_f(after.get('patch_auroc'))} |",
        "",
        f"Per-class accuracy after: {_counts(after.get('per_class_accuracy', {}))}",
        "",
    ]


def _probe_lines(probe: dict[str, Any] | None) -> list[str]:
    if not probe:
        return []
    before, after = probe.get("before") or {}, probe.get("after") or {}
    rows = (
        ("kNN patch AUROC (final layer)", "knn_patch_auroc"),
        ("kNN patch AUROC (V-V stages)", "knn_patch_auroc_vv"),
        ("[CLS] linear probe accuracy", "cls_linear_accuracy"),
    )
    return [
        "## Feature probes",
        "",
        f"Good support patches of {after.get('n_support')} images; {after.get('n_test')} test "
        "images (kNN: 1 − max cosine to the bank; probe: logistic regression, half per class).",
        "",
        "| | before | after |",
        "|---|---|---|",
        *[f"| {name} | {_f(before.get(k))} | {_f(after.get(k))} |" for name, k in rows],
        "",
    ]


def _counts(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k} {_f(v) if isinstance(v, float) else v}" for k, v in counts.items())


def _objective_text(cfg: dict[str, Any]) -> str:
    """What the SSL objective of the run was, in the card's words: the two objectives share
    the EMA teacher, views and masks, and differ in what the student predicts."""
    views = (
        f"[CLS] term on 2 global views + {cfg['local_crops']} local crops (x{cfg['cls_weight']}), "
        f"masked-patch term ({cfg['mask_ratio_min']}-{cfg['mask_ratio_max']} of the patches of "
        f"{cfg['mask_prob']} of the views, x{cfg['patch_weight']})"
    )
    teacher = f"EMA teacher (momentum {cfg['momentum_start']} → {cfg['momentum_end']})"
    if cfg.get("objective", "distill") == "features":
        return (
            "masked-feature prediction (data2vec-style: the student predicts the "
            f"{teacher}'s layer-normalised clean tokens at its masked patches, by cosine; "
            f"[CLS] from the other global views); {views}"
        )
    return (
        f"iBOT-style self-distillation, {teacher}, K = {cfg['prototypes']} prototypes, teacher "
        f"temperature {cfg['teacher_temp_start']} → {cfg['teacher_temp']}, student "
        f"{cfg['student_temp']}; {views}"
    )


def _entropy_text(first: dict[str, Any], last: dict[str, Any]) -> str:
    """The prototype-entropy indicators, or nothing where the objective has no softmax
    (masked-feature prediction does not record them: not applicable, not a failure)."""
    if _missing(first.get("teacher_entropy")) and _missing(last.get("teacher_entropy")):
        return ""
    return (
        f"teacher entropy {_f(first.get('teacher_entropy'))} → "
        f"{_f(last.get('teacher_entropy'))} x log K, batch-mean entropy "
        f"{_f(first.get('teacher_marginal_entropy'))} → "
        f"{_f(last.get('teacher_marginal_entropy'))} x log K, "
    )


def _or_nan(value: float | None) -> float:
    """A plotted value: NaN leaves a gap where the window did not report it."""
    return math.nan if value is None else value


def _missing(value: float | None) -> bool:
    return not indicator_reported(value)


def _f(value: float | None) -> str:
    return "n/a" if _missing(value) else f"{value:.3f}"


def _f4(value: float | None) -> str:
    return "n/a" if _missing(value) else f"{value:.4f}"
