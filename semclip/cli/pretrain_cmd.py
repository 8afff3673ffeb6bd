"""`semclip pretrain`: adapt (or train) a CLIP backbone on SEM images, resumably.

With no arguments it is the offline recipe behind `make backbone`: generate the synthetic
archive, pretrain `semclip-sem-small` from random init, and write the finished backbone to
`$SEMCLIP_HOME/backbones/semclip-sem-small/` (work files under `$SEMCLIP_HOME/work/pretrain/`).
Run the same command again after an interruption and it resumes from the last checkpoint.

`--unlabeled URI` adds label-free adaptation (iBOT-style self-distillation on the patch
tokens) on a folder, label-free manifest or bucket prefix (`--dates A..B` for raw/<date>/);
alone it needs no labelled data (`--zeroshot-data DIR` measures zero-shot before/after), with
`--data` both objectives share every step. The text tower is locked either way.
"""

from __future__ import annotations

import argparse
import logging
import re
from dataclasses import replace
from pathlib import Path

from semclip.backbone import LOCAL_DIR_PREFIX
from semclip.cli.commands import summary
from semclip.cli.common import NONE_WORDS
from semclip.cli.demo_cmd import semclip_home
from semclip.cli.synth_cmd import parse_patterns
from semclip.pretrain import SMALL_MODEL, PretrainConfig, SynthArchiveConfig, pretrain
from semclip.pretrain.config import SSL_RECIPE, SSLConfig
from semclip.pretrain.remote import is_remote
from semclip.pretrain.unlabeled import DateRange
from semclip.prompts import load_prompts
from semclip.settings import get_settings

log = logging.getLogger(__name__)
DEFAULTS = PretrainConfig()
SYNTH_DEFAULTS = SynthArchiveConfig()
SSL_DEFAULTS = SSLConfig()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``pretrain`` sub-command."""
    parser = subparsers.add_parser(
        "pretrain",
        help=summary("pretrain"),
        description="Image-text pretraining with prompt-library captions: multi-positive CLIP "
        "loss + dense mask alignment. Resumes from the work folder's checkpoint.",
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
    data.add_argument("--archive-seed", type=int, default=SYNTH_DEFAULTS.seed)
    data.add_argument(
        "--archive-per-class",
        type=int,
        default=SYNTH_DEFAULTS.per_class,
        help=f"synthetic images per class (default {SYNTH_DEFAULTS.per_class})",
    )
    data.add_argument("--archive-size", type=int, default=SYNTH_DEFAULTS.size)
    data.add_argument("--patterns", type=parse_patterns, default=None)
    data.add_argument("--databar-top", type=int, default=0)
    data.add_argument("--databar-bottom", type=int, default=0)
    data.add_argument("--prompts", default=None, help="prompt YAML (default: packaged)")
    _add_unlabeled_options(parser)
    model = parser.add_argument_group("model")
    model.add_argument("--model", default=SMALL_MODEL, help="open_clip name or local-dir:PATH")
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
    for flag, key in (("--steps", "steps"), ("--batch-size", "batch_size")):
        recipe.add_argument(
            flag,
            type=int,
            default=None,
            help=f"default {getattr(DEFAULTS, key)}; {SSL_RECIPE[key]} with --unlabeled",
        )
    recipe.add_argument(
        "--lr", type=float, default=None, help=f"default {DEFAULTS.lr}; {SSL_RECIPE['lr']} "
        "with --unlabeled (heads x head_lr_scale)",
    )  # fmt: skip
    recipe.add_argument(
        "--warmup-steps",
        type=int,
        default=None,
        help=f"default {DEFAULTS.warmup_steps}; {SSL_RECIPE['warmup_steps']} with --unlabeled",
    )
    recipe.add_argument("--dense-weight", type=float, default=DEFAULTS.dense_weight)
    recipe.add_argument(
        "--vv-dense-weight",
        type=float,
        default=DEFAULTS.vv_dense_weight,
        help="dense loss on the V-V path SEM-CLIP's S_n reads (0 = off)",
    )
    recipe.add_argument("--seed", type=int, default=DEFAULTS.seed)
    recipe.add_argument(
        "--cpu-bf16",
        choices=("auto", "on", "off"),
        default="auto",
        help="bf16 autocast on CPU (auto: where the CPU has native bf16)",
    )
    run = parser.add_argument_group("run")
    run.add_argument("--out", default=None, help="backbone folder (default under $SEMCLIP_HOME)")
    run.add_argument("--work-dir", default=None, help="checkpoint/archive folder")
    run.add_argument("--checkpoint-every", type=int, default=None)
    run.add_argument("--log-every", type=int, default=None, help="steps per logged window")
    run.add_argument("--stop-after", type=int, default=None, help="stop after N steps")
    run.add_argument("--restart", action="store_true", help="discard an existing checkpoint")
    run.add_argument("--workers", type=int, default=0, help="image decoding threads")
    run.add_argument("--device", default=None, help="cpu, cuda (default: CUDA if present)")
    parser.set_defaults(func=run_pretrain)


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
    group.add_argument("--ssl-weight", type=float, default=d.weight, help="SSL loss weight")
    group.add_argument("--ssl-prototypes", type=int, default=d.prototypes, help="K")
    group.add_argument("--ssl-local-crops", type=int, default=d.local_crops)
    group.add_argument("--ssl-teacher-temp", type=float, default=d.teacher_temp)
    group.add_argument("--ssl-momentum", type=float, default=d.momentum_start)
    group.add_argument(
        "--ssl-anchor", type=float, default=d.anchor_weight, help="L2-SP weight (0 = off)"
    )
    group.add_argument("--ssl-max-images", type=int, default=d.max_images, help="0 = all")
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
        weight=args.ssl_weight,
        prototypes=args.ssl_prototypes,
        local_crops=args.ssl_local_crops,
        teacher_temp=args.ssl_teacher_temp,
        momentum_start=args.ssl_momentum,
        anchor_weight=args.ssl_anchor,
        max_images=args.ssl_max_images,
        export_teacher=args.ssl_export == "teacher",
    )


def _recipe_value(args: argparse.Namespace, key: str) -> int | float:
    """The option's value, else the --unlabeled recipe's default, else PretrainConfig's."""
    value = getattr(args, key)
    if value is not None:
        return value
    return SSL_RECIPE[key] if args.unlabeled is not None else getattr(DEFAULTS, key)


def _names(text: str) -> tuple[str, ...]:
    return tuple(sorted({n.strip() for n in text.split(",") if n.strip()}))


def run_name(model: str, excluded: tuple[str, ...], ssl: bool = False) -> str:
    """Folder name of a run: semclip-sem-small[-without-bridge-infilm][-ssl]."""
    base = model[len(LOCAL_DIR_PREFIX) :] if model.startswith(LOCAL_DIR_PREFIX) else model
    base = SMALL_MODEL if model == SMALL_MODEL else f"{Path(base).name}-sem"
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
    steps = int(_recipe_value(args, "steps"))
    config = replace(
        DEFAULTS,
        model=model_name,
        pretrained=pretrained,
        lock_text=args.lock_text or args.unlabeled is not None,
        lock_image_layers=args.lock_image_layers,
        steps=steps,
        batch_size=int(_recipe_value(args, "batch_size")),
        lr=float(_recipe_value(args, "lr")),
        warmup_steps=min(int(_recipe_value(args, "warmup_steps")), steps),
        log_every=int(_recipe_value(args, "log_every")),
        ssl=_ssl_config(args),
        ssl_only=args.unlabeled is not None and args.data is None,
        dense_weight=args.dense_weight,
        vv_dense_weight=args.vv_dense_weight,
        exclude_classes=args.exclude_classes,
        databar_top=args.databar_top,
        databar_bottom=args.databar_bottom,
        cpu_bf16={"auto": None, "on": True, "off": False}[args.cpu_bf16],
        seed=args.seed,
        checkpoint_every=int(_recipe_value(args, "checkpoint_every")),
        num_workers=args.workers,
    )
    synth = SynthArchiveConfig(
        seed=args.archive_seed,
        per_class=args.archive_per_class,
        size=args.archive_size,
        patterns=tuple(args.patterns or ()),
    )
    name = run_name(model_name, config.exclude_classes, args.unlabeled is not None)
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
        print(f"zero-shot: accuracy {zs.get('accuracy')}, patch AUROC {zs.get('patch_auroc')}")
    if result.probe:
        print(
            f"feature probes: kNN patch AUROC {result.probe['knn_patch_auroc']}, V-V "
            f"{result.probe['knn_patch_auroc_vv']}, [CLS] linear probe "
            f"{result.probe['cls_linear_accuracy']}"
        )
    print(f"backbone: {LOCAL_DIR_PREFIX}{result.backbone_dir}")
    print(result.backbone_dir)
    return 0


def _endpoint(args: argparse.Namespace) -> str | None:
    """The S3 endpoint setting, when a source is in the object store."""
    remote = is_remote(args.data or "") or is_remote(args.unlabeled or "")
    return get_settings().s3_endpoint_url if remote else None
