"""`semclip pretrain`: adapt (or train) a CLIP backbone on SEM images, resumably.

With no arguments it is the offline recipe behind `make backbone`: generate the synthetic
archive, pretrain `semclip-sem-small` from random init, and write the finished backbone to
`$SEMCLIP_HOME/backbones/semclip-sem-small/` (work files under `$SEMCLIP_HOME/work/pretrain/`).
Run the same command again after an interruption and it resumes from the last checkpoint.
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
from semclip.pretrain import SMALL_MODEL, PretrainConfig, SynthArchiveConfig, pretrain
from semclip.pretrain.remote import is_remote
from semclip.prompts import load_prompts
from semclip.settings import get_settings

log = logging.getLogger(__name__)
DEFAULTS = PretrainConfig()
SYNTH_DEFAULTS = SynthArchiveConfig()


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
    model = parser.add_argument_group("model")
    model.add_argument("--model", default=SMALL_MODEL, help="open_clip name or local-dir:PATH")
    model.add_argument(
        "--pretrained", default=None, help="open_clip tag or checkpoint (default: random init)"
    )
    model.add_argument("--lock-text", action="store_true", help="freeze the text tower")
    model.add_argument("--lock-image-layers", type=int, default=0, help="freeze first N blocks")
    recipe = parser.add_argument_group("recipe")
    recipe.add_argument("--steps", type=int, default=DEFAULTS.steps)
    recipe.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    recipe.add_argument("--lr", type=float, default=DEFAULTS.lr)
    recipe.add_argument("--warmup-steps", type=int, default=DEFAULTS.warmup_steps)
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
    run.add_argument("--checkpoint-every", type=int, default=DEFAULTS.checkpoint_every)
    run.add_argument("--stop-after", type=int, default=None, help="stop after N steps")
    run.add_argument("--restart", action="store_true", help="discard an existing checkpoint")
    run.add_argument("--workers", type=int, default=0, help="image decoding threads")
    run.add_argument("--device", default=None, help="cpu, cuda (default: CUDA if present)")
    parser.set_defaults(func=run_pretrain)


def _names(text: str) -> tuple[str, ...]:
    return tuple(sorted({n.strip() for n in text.split(",") if n.strip()}))


def run_name(model: str, excluded: tuple[str, ...]) -> str:
    """Folder name of a run: semclip-sem-small[-without-bridge-infilm]."""
    base = model[len(LOCAL_DIR_PREFIX) :] if model.startswith(LOCAL_DIR_PREFIX) else model
    base = SMALL_MODEL if model == SMALL_MODEL else f"{Path(base).name}-sem"
    name = f"{base}-without-{'-'.join(excluded)}" if excluded else base
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


def run_pretrain(args: argparse.Namespace) -> int:
    """Pretrain with the parsed options; prints the backbone folder (last line) when done."""
    pretrained = args.pretrained
    if pretrained is not None and pretrained.strip().lower() in NONE_WORDS:
        pretrained = None
    config = replace(
        DEFAULTS,
        model=args.model,
        pretrained=pretrained,
        lock_text=args.lock_text,
        lock_image_layers=args.lock_image_layers,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=min(args.warmup_steps, args.steps),
        dense_weight=args.dense_weight,
        vv_dense_weight=args.vv_dense_weight,
        exclude_classes=args.exclude_classes,
        databar_top=args.databar_top,
        databar_bottom=args.databar_bottom,
        cpu_bf16={"auto": None, "on": True, "off": False}[args.cpu_bf16],
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        num_workers=args.workers,
    )
    synth = SynthArchiveConfig(
        seed=args.archive_seed,
        per_class=args.archive_per_class,
        size=args.archive_size,
        patterns=tuple(args.patterns or ()),
    )
    name = run_name(args.model, config.exclude_classes)
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
        endpoint_url=get_settings().s3_endpoint_url if is_remote(args.data or "") else None,
    )
    if not result.finished:
        print(
            f"stopped at step {result.step}/{result.steps}; checkpoint in {work}. "
            "Run the same command again to resume."
        )
        return 0
    zs = result.zero_shot or {}
    print(
        f"zero-shot on the validation split: accuracy {zs.get('accuracy')}, "
        f"patch AUROC {zs.get('patch_auroc')}"
    )
    print(f"backbone: {LOCAL_DIR_PREFIX}{result.backbone_dir}")
    print(result.backbone_dir)
    return 0
