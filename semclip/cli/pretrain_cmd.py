"""`semclip pretrain`: adapt (or train) a CLIP backbone on SEM images, resumably.

With no arguments it runs the recipe for this machine from `semclip/pretrain/recipes.yaml`
(`cpu`, behind `make backbone`: generate the synthetic archive, pretrain `semclip-sem-small`
from random init; `gpu` where CUDA is available: `semclip-sem-base`, longer, on a larger
archive) and writes the finished backbone to `$SEMCLIP_HOME/backbones/<model>/` (work files
under `$SEMCLIP_HOME/work/pretrain/`).
Run the same command again after an interruption and it resumes from the last checkpoint.

`--unlabeled URI` adds label-free adaptation (masked-feature prediction of an EMA teacher's
patch tokens by default, iBOT/DINO distillation with `--ssl-objective distill`) on a folder,
label-free manifest or bucket prefix (`--dates A..B` for raw/<date>/); alone it needs no
labelled data (`--zeroshot-data DIR` measures zero-shot before/after), with `--data` both
objectives share every step. The text tower is locked either way.
"""

from __future__ import annotations

import argparse
import logging
import re
from dataclasses import replace
from pathlib import Path

from semclip.backbone import LOCAL_DIR_PREFIX, NONE_WORDS
from semclip.cli.commands import summary
from semclip.cli.demo_cmd import semclip_home
from semclip.cli.synth_cmd import parse_patterns
from semclip.pretrain import SMALL_MODEL, pretrain
from semclip.pretrain.config import RECIPE_NAMES, SSL_RECIPE, SSLConfig, get_recipe, load_recipes
from semclip.pretrain.remote import is_remote
from semclip.pretrain.unlabeled import DateRange
from semclip.prompts import load_prompts
from semclip.settings import get_settings
from semclip.synth.styles import DEFAULT_MIX, DEFAULT_STYLES, HELDOUT_STYLES

log = logging.getLogger(__name__)
SSL_DEFAULTS = SSLConfig()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``pretrain`` sub-command."""
    parser = subparsers.add_parser(
        "pretrain",
        help=summary("pretrain"),
        description="Image-text pretraining with prompt-library captions: multi-positive CLIP "
        "loss + dense mask alignment. Resumes from the work folder's checkpoint. Model, schedule "
        "and archive size come from a recipe in semclip/pretrain/recipes.yaml (both the cpu and "
        "the gpu recipe live in that one file); options marked (recipe) override it.",
    )
    recipes = load_recipes()
    parser.add_argument(
        "--recipe",
        choices=("auto", *RECIPE_NAMES),
        default="auto",
        help="recipe from semclip/pretrain/recipes.yaml; auto (default): gpu when CUDA is "
        "available (or --device cuda), else cpu. "
        + "; ".join(f"{n}: {r.description}" for n, r in recipes.items()),
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        default=None,
        help="manifest/MVTec folder, or the s3:// or file:// URL of a manifest archive in the "
        "object store (mirrored into the work folder; default: a synthetic archive)",
    )
    data.add_argument(
        "--exclude-classes",
        type=_names,
        default=(),
        help="classes left out of the archive, e.g. bridge,infilm",
    )
    data.add_argument(
        "--archive-seed",
        type=int,
        default=None,
        help="seed of the synthetic archive's generator: another seed, other images "
        + _recipe(recipes, "archive", "seed"),
    )
    data.add_argument(
        "--archive-per-class",
        type=int,
        default=None,
        help="synthetic images per class (recipe: cpu "
        f"{recipes['cpu'].archive.per_class}, gpu {recipes['gpu'].archive.per_class})",
    )
    data.add_argument(
        "--archive-size",
        type=int,
        default=None,
        help="side in pixels of the synthetic archive's images "
        + _recipe(recipes, "archive", "size"),
    )
    data.add_argument(
        "--archive-style",
        choices=(DEFAULT_MIX, *DEFAULT_STYLES),
        default=None,
        help=f"synthetic archive style (default: the mix of {', '.join(DEFAULT_STYLES)}); "
        f"held-out styles ({', '.join(HELDOUT_STYLES)}) are never used for pretraining",
    )
    data.add_argument(
        "--patterns",
        type=parse_patterns,
        default=None,
        help="comma-separated pattern families of the synthetic archive (default: all of the "
        "style's; `semclip synth --help` lists them)",
    )
    data.add_argument(
        "--databar-top",
        type=int,
        default=0,
        help="rows of the SEM info bar at the top of each --data/--unlabeled image, masked out "
        "before training (default 0)",
    )
    data.add_argument(
        "--databar-bottom",
        type=int,
        default=0,
        help="rows of the SEM info bar at the bottom, masked out before training (default 0)",
    )
    data.add_argument("--prompts", default=None, help="prompt YAML (default: packaged)")
    _add_unlabeled_options(parser)
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        default=None,
        help=f"open_clip name or local-dir:PATH (recipe: cpu {recipes['cpu'].pretrain.model}, "
        f"gpu {recipes['gpu'].pretrain.model})",
    )
    model.add_argument(
        "--pretrained", default=None, help="open_clip tag or checkpoint (default: random init)"
    )
    model.add_argument(
        "--init",
        default=None,
        help="weights to continue from: local-dir:PATH (sets --model), or an open_clip tag / "
        "checkpoint file for --model (sets --pretrained)",
    )
    model.add_argument("--lock-text", action="store_true", help="freeze the text tower")
    model.add_argument("--lock-image-layers", type=int, default=0, help="freeze first N blocks")
    recipe = parser.add_argument_group("recipe")
    for flag, key, kind, words in (
        ("--steps", "steps", int, "optimiser steps"),
        ("--batch-size", "batch_size", int, "images per step"),
        ("--lr", "lr", float, "peak learning rate (cosine schedule)"),
        ("--warmup-steps", "warmup_steps", int, "linear warm-up steps"),
    ):
        recipe.add_argument(
            flag,
            type=kind,
            default=None,
            help=f"{words} {_recipe(recipes, 'pretrain', key)}; {SSL_RECIPE[key]} with --unlabeled",
        )
    recipe.add_argument(
        "--dense-weight",
        type=float,
        default=None,
        help="weight of the dense mask-alignment loss on the vanilla patch tokens "
        + _recipe(recipes, "pretrain", "dense_weight"),
    )
    recipe.add_argument(
        "--vv-dense-weight",
        type=float,
        default=None,
        help="dense loss on the V-V path SEM-CLIP's S_n reads (0 = off) "
        + _recipe(recipes, "pretrain", "vv_dense_weight"),
    )
    recipe.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of initialisation, augmentation and batch order "
        + _recipe(recipes, "pretrain", "seed"),
    )
    recipe.add_argument(
        "--cpu-bf16",
        choices=("auto", "on", "off"),
        default="auto",
        help="bf16 autocast on CPU (auto: where the CPU has native bf16)",
    )
    run = parser.add_argument_group("run")
    run.add_argument(
        "--out",
        default=None,
        help="backbone folder, loadable as local-dir:PATH (default "
        "$SEMCLIP_HOME/backbones/<model>)",
    )
    run.add_argument(
        "--work-dir",
        default=None,
        help="checkpoint, archive and report folder; rerunning with the same one resumes "
        "(default $SEMCLIP_HOME/work/pretrain/<model>)",
    )
    run.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help="steps between checkpoints, the most a kill loses "
        + _recipe(recipes, "pretrain", "checkpoint_every"),
    )
    run.add_argument(
        "--log-every",
        type=int,
        default=None,
        help="steps per logged window of loss and speed "
        + _recipe(recipes, "pretrain", "log_every"),
    )
    run.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="stop (with a checkpoint) after N steps of this run; the next run resumes",
    )
    run.add_argument(
        "--restart", action="store_true", help="discard an existing checkpoint and start over"
    )
    run.add_argument(
        "--workers",
        type=int,
        default=None,
        help="image decoding threads " + _recipe(recipes, "pretrain", "num_workers"),
    )
    run.add_argument(
        "--device", default=None, help="cpu or cuda[:N] (default: CUDA when present, else cpu)"
    )
    parser.set_defaults(func=run_pretrain)


def _recipe(recipes: dict, section: str, key: str) -> str:
    """``(recipe: cpu X, gpu Y)``: an option's default in each recipe, for --help."""
    values = ", ".join(f"{name} {getattr(getattr(r, section), key)}" for name, r in recipes.items())
    return f"(recipe: {values})"


def _add_unlabeled_options(parser: argparse.ArgumentParser) -> None:
    """--unlabeled and the self-distillation recipe (SSLConfig fields)."""
    group = parser.add_argument_group("label-free adaptation (self-distillation)")
    group.add_argument(
        "--unlabeled",
        default=None,
        help="unlabelled SEM images: a folder (recursive), a folder with a label-free "
        "manifest.csv (image column), or a file:// / s3:// prefix (a bucket or its raw/)",
    )
    group.add_argument(
        "--dates",
        type=_dates,
        default=None,
        help="raw/<date>/ folders to read, YYYY-MM-DD..YYYY-MM-DD inclusive (default: all)",
    )
    group.add_argument(
        "--zeroshot-data",
        default=None,
        help="labelled manifest folder for the zero-shot check before/after when there is no "
        "--data (default: not measured)",
    )
    group.add_argument(
        "--probe-data",
        default=None,
        help="labelled manifest folder for the feature probes (kNN patch AUROC, [CLS] linear "
        "probe) before/after (default with --unlabeled: the zero-shot set)",
    )
    d = SSL_DEFAULTS
    group.add_argument(
        "--ssl-objective",
        choices=("distill", "features"),
        default=d.objective,
        help="distill: iBOT/DINO prototype self-distillation; features: masked-feature "
        f"prediction of the EMA teacher's tokens (default {d.objective})",
    )
    group.add_argument(
        "--ssl-weight",
        type=float,
        default=d.weight,
        help="weight of the self-supervised loss beside the labelled terms when --data is also "
        f"given (default {d.weight})",
    )
    group.add_argument(
        "--ssl-prototypes",
        type=int,
        default=d.prototypes,
        help="K, prototypes of each distill head's softmax (DINO uses 65k; default "
        f"{d.prototypes}, sized for CPU and a few thousand images; distill only)",
    )
    group.add_argument(
        "--ssl-local-crops",
        type=int,
        default=d.local_crops,
        help=f"small crops per image for the [CLS] term across views (0 = none; default "
        f"{d.local_crops})",
    )
    group.add_argument(
        "--ssl-teacher-temp",
        type=float,
        default=d.teacher_temp,
        help="teacher softmax temperature after warm-up: lower sharpens, too high drifts to "
        f"uniform outputs (default {d.teacher_temp}; distill only)",
    )
    group.add_argument(
        "--ssl-momentum",
        type=float,
        default=d.momentum_start,
        help="EMA momentum of the teacher at step 0, rising to "
        f"{d.momentum_end} by the last step (default {d.momentum_start})",
    )
    group.add_argument(
        "--ssl-anchor",
        type=float,
        default=d.anchor_weight,
        help="L2-SP weight: pulls the vision trunk towards its starting weights, against "
        f"forgetting (0 = off; default {d.anchor_weight})",
    )
    group.add_argument(
        "--ssl-max-images",
        type=int,
        default=d.max_images,
        help=f"read at most N unlabelled images, evenly spread (0 = all; default {d.max_images})",
    )
    group.add_argument(
        "--ssl-export",
        choices=("teacher", "student"),
        default="teacher" if d.export_teacher else "student",
        help="which trunk the backbone gets (default teacher, the EMA)",
    )


def _dates(text: str) -> DateRange:
    try:
        return DateRange.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _ssl_config(args: argparse.Namespace) -> SSLConfig | None:
    if args.unlabeled is None:
        return None
    return replace(
        SSL_DEFAULTS,
        objective=args.ssl_objective,
        weight=args.ssl_weight,
        prototypes=args.ssl_prototypes,
        local_crops=args.ssl_local_crops,
        teacher_temp=args.ssl_teacher_temp,
        momentum_start=args.ssl_momentum,
        anchor_weight=args.ssl_anchor,
        max_images=args.ssl_max_images,
        export_teacher=args.ssl_export == "teacher",
    )


def _names(text: str) -> tuple[str, ...]:
    return tuple(sorted({n.strip() for n in text.split(",") if n.strip()}))


def run_name(model: str, excluded: tuple[str, ...], ssl: bool = False) -> str:
    """Folder name of a run: semclip-sem-small[-without-bridge-infilm][-ssl]."""
    base = model[len(LOCAL_DIR_PREFIX) :] if model.startswith(LOCAL_DIR_PREFIX) else model
    packaged = model.startswith("semclip-sem")  # semclip/model_configs: already SEM names
    base = model if model == SMALL_MODEL or packaged else f"{Path(base).name}-sem"
    name = f"{base}-without-{'-'.join(excluded)}" if excluded else base
    name = f"{name}-ssl" if ssl else name
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


def run_pretrain(args: argparse.Namespace) -> int:
    """Pretrain with the parsed options; prints the backbone folder (last line) when done."""
    pretrained, model_name = args.pretrained, args.model
    if args.init is not None:
        if args.init.startswith(LOCAL_DIR_PREFIX):
            model_name, pretrained = args.init, None
        else:
            pretrained = args.init
    if pretrained is not None and pretrained.strip().lower() in NONE_WORDS:
        pretrained = None
    recipe = get_recipe(None if args.recipe == "auto" else args.recipe, args.device)
    log.info("recipe %s: %s", recipe.name, recipe.description)
    ssl = args.unlabeled is not None
    chosen = {
        "model": model_name,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "warmup_steps": args.warmup_steps,
        "log_every": args.log_every,
        "dense_weight": args.dense_weight,
        "vv_dense_weight": args.vv_dense_weight,
        "seed": args.seed,
        "checkpoint_every": args.checkpoint_every,
        "num_workers": args.workers,
    }
    # With --unlabeled the continued-training defaults replace the recipe's, option by option.
    defaults = {**SSL_RECIPE} if ssl else {}
    config = replace(
        recipe.pretrain,
        **{**defaults, **{k: v for k, v in chosen.items() if v is not None}},
        pretrained=pretrained,
        lock_text=args.lock_text or args.unlabeled is not None,
        lock_image_layers=args.lock_image_layers,
        ssl=_ssl_config(args),
        ssl_only=ssl and args.data is None,
        exclude_classes=args.exclude_classes,
        databar_top=args.databar_top,
        databar_bottom=args.databar_bottom,
        cpu_bf16={"auto": None, "on": True, "off": False}[args.cpu_bf16],
    )
    config = replace(config, warmup_steps=min(config.warmup_steps, config.steps))
    archive = {
        "seed": args.archive_seed,
        "per_class": args.archive_per_class,
        "size": args.archive_size,
        "patterns": tuple(args.patterns) if args.patterns else None,
        "style": args.archive_style,
    }
    synth = replace(recipe.archive, **{k: v for k, v in archive.items() if v is not None})
    name = run_name(config.model, config.exclude_classes, ssl)
    home = semclip_home()
    out = Path(args.out) if args.out else home / "backbones" / name
    work = Path(args.work_dir) if args.work_dir else home / "work" / "pretrain" / name
    result = pretrain(
        config,
        work_dir=work,
        out_dir=out,
        data=args.data,
        synth=synth,
        prompts=load_prompts(args.prompts) if args.prompts else None,
        device=args.device,
        stop_after=args.stop_after,
        restart=args.restart,
        endpoint_url=_endpoint(args),
        unlabeled=args.unlabeled,
        dates=args.dates,
        zeroshot_data=args.zeroshot_data,
        probe_data=args.probe_data,
    )
    if result.collapsed is not None:
        print(
            f"self-distillation collapsed at step {result.step}/{result.steps}: "
            f"{result.collapsed}. No backbone written; report in {work}."
        )
        return 1
    if not result.finished:
        print(
            f"stopped at step {result.step}/{result.steps}; checkpoint in {work}. "
            "Run the same command again to resume."
        )
        return 0
    zs = result.zero_shot
    if zs is None:
        print("zero-shot: not measured (no labelled data: pass --data or --zeroshot-data)")
    else:
        print(
            f"zero-shot: accuracy {_f3(zs.get('accuracy'))}, "
            f"patch AUROC {_f3(zs.get('patch_auroc'))}"
        )
    if result.probe:
        print(
            f"feature probes: kNN patch AUROC {_f3(result.probe['knn_patch_auroc'])}, V-V "
            f"{_f3(result.probe['knn_patch_auroc_vv'])}, [CLS] linear probe "
            f"{_f3(result.probe['cls_linear_accuracy'])}"
        )
    print(f"backbone: {LOCAL_DIR_PREFIX}{result.backbone_dir}")
    print(result.backbone_dir)
    return 0


def _f3(value: float | None) -> str:
    """A summary figure as a person reads it (the model card and pretrain.json keep all digits)."""
    return "n/a" if value is None or value != value else f"{value:.3f}"


def _endpoint(args: argparse.Namespace) -> str | None:
    """The S3 endpoint setting, when a source is in the object store."""
    remote = is_remote(args.data or "") or is_remote(args.unlabeled or "")
    return get_settings().s3_endpoint_url if remote else None
