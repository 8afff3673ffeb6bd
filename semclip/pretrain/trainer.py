"""The pretraining loop: deterministic batches, two losses, checkpoints, resume, export.

A step's batch, augmentation and captions depend only on (seed, step), and model, optimiser
and scaler state are checkpointed together, so a run interrupted at any point and resumed from
its last checkpoint ends bit-identical to an uninterrupted one (on the same device). Work
files (archive, checkpoint) live in the work folder; the backbone folder is written once, at
the end, and only ever holds a finished backbone.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections.abc import Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from semclip.backbone import default_device
from semclip.data import DatabarCrop
from semclip.features import autocast_context
from semclip.pretrain.archive import Archive, load_archive, load_stored, synthetic_archive
from semclip.pretrain.augment import augment_batch, normalize, patch_coverage
from semclip.pretrain.captions import CaptionSampler
from semclip.pretrain.config import PretrainConfig, SSLConfig, SynthArchiveConfig
from semclip.pretrain.export import export_backbone, write_collapse_report
from semclip.pretrain.losses import (
    contrastive_floor,
    dense_alignment,
    multi_positive_contrastive,
    patch_targets,
)
from semclip.pretrain.overlap import inherited_images
from semclip.pretrain.probe import probe_features
from semclip.pretrain.remote import is_remote, mirror_archive
from semclip.pretrain.ssl import SelfDistillation
from semclip.pretrain.ssl_step import SSL_STREAM, SSLStep, collapse_reason, describe_indicators
from semclip.pretrain.towers import (
    Towers,
    build_optimizer,
    create_towers,
    dual_path_tokens,
    image_tokens,
    lr_at,
)
from semclip.pretrain.unlabeled import DateRange, load_unlabeled
from semclip.pretrain.zeroshot import zero_shot
from semclip.prompts import PromptLibrary, load_prompts

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
GOOD_INDEX = 0  # archive classes put "good" first
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp of the learned temperature
# Progress-bar names of the losses a step may report.
_SHORT = {
    "loss_clip": "clip",
    "loss_dense": "dense",
    "loss_ssl_cls": "cls",
    "loss_ssl_patch": "mim",
}


@dataclass
class RunState:
    """What a checkpoint carries besides weights: progress, loss log, timings."""

    step: int = 0  # optimiser steps done
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per log window
    elapsed_s: float = 0.0  # training wall-clock over all sessions (no eval, no export)
    images_seen: int = 0
    initial_eval: dict[str, Any] | None = None  # zero-shot before the first step
    initial_probe: dict[str, Any] | None = None  # feature probes before the first step
    reference_std: float | None = None  # SSL: patch feature std of the first log window
    collapse_strikes: int = 0  # SSL: consecutive log windows that looked collapsed
    collapsed: str | None = None  # SSL: why the run stopped as collapsed (None: it did not)


@dataclass(frozen=True)
class PretrainResult:
    """How a `pretrain` call ended."""

    finished: bool  # all steps done and the backbone folder written
    step: int
    steps: int
    work_dir: Path
    backbone_dir: Path | None  # the finished backbone (None when stopped early)
    history: list[dict[str, float]]
    zero_shot: dict[str, Any] | None  # final zero-shot figures on the validation split
    collapsed: str | None = None  # SSL runs stopped for collapse: why (see the work folder)
    probe: dict[str, Any] | None = None  # final feature probes, when measured


def pretrain(
    config: PretrainConfig,
    *,
    work_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    data: str | os.PathLike | None = None,
    synth: SynthArchiveConfig | None = None,
    prompts: PromptLibrary | None = None,
    device: str | torch.device | None = None,
    stop_after: int | None = None,
    restart: bool = False,
    progress: bool = True,
    endpoint_url: str | None = None,
    unlabeled: str | os.PathLike | None = None,
    dates: DateRange | None = None,
    zeroshot_data: str | os.PathLike | None = None,
    probe_data: str | os.PathLike | None = None,
    exclude_hashes: Collection[str] = frozenset(),
) -> PretrainResult:
    """Pretrain (or resume pretraining) and write the backbone folder when all steps are done.

    `data` is a manifest/MVTec folder, or the URL of a manifest archive in the object store
    (``s3://…``, ``file://…``; `endpoint_url` for MinIO/Ceph), mirrored into
    `work_dir/archive-mirror`; None generates the synthetic archive `synth` in
    `work_dir/archive`. `stop_after` ends this call after that many steps (checkpointed), as an
    interruption would; calling again resumes. `restart` discards an existing checkpoint.

    `unlabeled` (a folder, label-free manifest or bucket prefix; `dates` selects raw/<date>/
    folders) adds the self-distillation term of `config.ssl` (default `SSLConfig()`) and locks
    the text tower. Without `data` it is the only term: no labelled or synthetic archive, and
    the zero-shot check runs on `zeroshot_data` (a labelled manifest folder) when given, else
    is not measured. `probe_data` (default: the zero-shot set, in SSL runs) gets the kNN patch
    AUROC and [CLS] linear probe before and after. `exclude_hashes` (sha256 of image bytes)
    are never used as unlabelled images: pass the hold-out of the evaluation that will judge
    the backbone (the refit's hold-out lives in raw/ too).
    """
    device = torch.device(device) if device is not None else default_device()
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    config = _ssl_recipe(config, unlabeled, data)
    archive, train_idx, val_idx = None, np.zeros(0, np.int64), np.zeros(0, np.int64)
    if not config.ssl_only:
        archive = _archive(
            config, work, data, synth or SynthArchiveConfig(), progress, endpoint_url
        )
        train_idx, val_idx = archive.split(config.val_fraction, config.val_max, config.seed)
    library = prompts or load_prompts()
    towers = create_towers(config)
    towers.model.to(device)
    pool = None
    if unlabeled is not None:
        pool = load_unlabeled(
            os.fspath(unlabeled),
            size=round(towers.image_size * config.store_scale),
            dates=dates,
            work_dir=work,
            endpoint_url=endpoint_url,
            databar=_explicit_databar(config),
            max_images=config.ssl.max_images,
            seed=config.seed,
            preload_max_gb=config.preload_max_gb,
            workers=config.num_workers,
            progress=progress,
            exclude_hashes=exclude_hashes,
        )
    ssl = _self_distillation(towers, config, device) if pool else None
    optimizer = build_optimizer(
        towers.model,
        config,
        ssl.student_parameters() if ssl else None,
        config.ssl.head_lr_scale if ssl else 1.0,
    )
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype(device, config) == torch.float16)
    digest = archive.digest() if archive is not None else "no-labelled-archive"
    fingerprint = config.fingerprint(digest + (f"+unlabeled:{pool.digest()}" if pool else ""))
    eval_archive, eval_idx = _eval_set(config, archive, val_idx, zeroshot_data)
    probe_archive, probe_idx = _probe_set(config, eval_archive, eval_idx, probe_data)
    ckpt = work / CHECKPOINT
    if restart and ckpt.exists():
        ckpt.unlink()
    if ckpt.exists():
        state = load_checkpoint(ckpt, towers, optimizer, scaler, fingerprint, ssl)
        log.info("resuming %s at step %d/%d", work, state.step, config.steps)
    else:
        state = RunState()
        state.initial_eval = _zero_shot(towers, eval_archive, eval_idx, library, device)
        log.info("zero-shot before pretraining: %s", _brief(state.initial_eval))
        state.initial_probe = _probe(towers, probe_archive, probe_idx, device, config)
        if state.initial_probe:
            log.info("feature probes before pretraining: %s", state.initial_probe)
    log.info(
        "pretraining %s (%s) on %d labelled images (%d held out)%s, classes %s, %s (autocast %s)",
        config.model,
        towers.init,
        len(train_idx),
        len(val_idx),
        f" + {len(pool)} unlabelled ({pool.source['uri']})" if pool else "",
        list(archive.classes) if archive is not None else [],
        device,
        amp_dtype(device, config),
    )
    target = config.steps if stop_after is None else min(config.steps, state.step + stop_after)
    if state.step < target and state.collapsed is None:
        ssl_step = (
            SSLStep(config, towers, ssl, pool, device, partial(_autocast, device, config))
            if ssl is not None
            else None
        )
        loop = TrainLoop(
            config, towers, optimizer, scaler, archive, train_idx, library, device, ssl_step
        )
        loop.run(state, target, ckpt, fingerprint, progress)
    if state.collapsed is not None:
        report = write_collapse_report(work, config, asdict(state), pool, towers.init)
        log.error(
            "self-distillation COLLAPSED at step %d: %s. No backbone written; see %s. Change "
            "the recipe (e.g. lower --lr, raise --ssl-teacher-temp) and pass --restart.",
            state.step,
            state.collapsed,
            report,
        )
        return PretrainResult(
            False, state.step, config.steps, work, None, state.history, None, state.collapsed
        )
    if state.step < config.steps:
        return PretrainResult(False, state.step, config.steps, work, None, state.history, None)
    if ssl is not None and config.ssl.export_teacher:
        ssl.export_trunk(towers.model.visual)
    final = _zero_shot(towers, eval_archive, eval_idx, library, device)
    log.info("zero-shot after pretraining: %s", _brief(final))
    final_probe = _probe(towers, probe_archive, probe_idx, device, config)
    out = export_backbone(
        Path(out_dir),
        towers,
        archive,
        config,
        asdict(state),
        final,
        {"train": archive.counts(train_idx), "val": archive.counts(val_idx)} if archive else None,
        f"{device} (autocast {amp_dtype(device, config) or 'off'})",
        unlabeled=pool,
        probe={"before": state.initial_probe, "after": final_probe} if final_probe else None,
        inherited=inherited_images(config.model, config.pretrained),
        zero_shot_source=_eval_source(archive, eval_archive, zeroshot_data),
    )
    return PretrainResult(
        True, state.step, config.steps, work, out, state.history, final, None, final_probe
    )


def _ssl_recipe(
    config: PretrainConfig, unlabeled: str | os.PathLike | None, data: object
) -> PretrainConfig:
    """With `unlabeled`: an SSL config (default one if unset), text tower locked, SSL-only flag."""
    if unlabeled is None:
        if config.ssl is not None:
            raise ValueError("config.ssl is set but no unlabeled source was given (--unlabeled)")
        return config
    if not config.lock_text:
        log.info("--unlabeled: locking the text tower (the image-text space is kept)")
    return replace(config, ssl=config.ssl or SSLConfig(), lock_text=True, ssl_only=data is None)


def _self_distillation(
    towers: Towers, config: PretrainConfig, device: torch.device
) -> SelfDistillation:
    """The SSL heads and teacher, initialised from `config.seed` (same seed, same heads)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + 1)
        return SelfDistillation(towers.model.visual, config.ssl).to(device)


def _explicit_databar(config: PretrainConfig) -> DatabarCrop | None:
    if config.databar_top or config.databar_bottom:
        return DatabarCrop(config.databar_top, config.databar_bottom)
    return None


def _eval_set(
    config: PretrainConfig,
    archive: Archive | None,
    val_idx: np.ndarray,
    zeroshot_data: str | os.PathLike | None,
) -> tuple[Archive | None, np.ndarray]:
    """The zero-shot set: the labelled archive's held-out split, else `zeroshot_data`, else none."""
    if archive is not None and zeroshot_data is None:
        return archive, (val_idx[: config.eval_max] if config.eval_max else val_idx)
    if zeroshot_data is None:
        return None, np.zeros(0, np.int64)
    labelled = load_archive(zeroshot_data, (), _explicit_databar(config))
    cap = config.eval_max or config.val_max
    order = np.random.default_rng([config.seed, 7]).permutation(len(labelled))[:cap]
    return labelled, np.sort(order)


def _probe_set(
    config: PretrainConfig,
    eval_archive: Archive | None,
    eval_idx: np.ndarray,
    probe_data: str | os.PathLike | None,
) -> tuple[Archive | None, np.ndarray | None]:
    """Where the feature probes run: `probe_data`, else (SSL runs) the zero-shot set."""
    if probe_data is not None:
        return load_archive(probe_data, (), _explicit_databar(config)), None
    if config.ssl is not None and eval_archive is not None:
        return eval_archive, eval_idx
    return None, None


def _eval_source(
    archive: Archive | None, eval_archive: Archive | None, zeroshot_data: object
) -> str:
    if eval_archive is None:
        return "not measured (no labelled data: pass --data or --zeroshot-data)"
    if eval_archive is archive:
        return "the labelled archive's held-out split"
    return f"--zeroshot-data `{eval_archive.source.get('folder', zeroshot_data)}`"


def _zero_shot(
    towers: Towers,
    archive: Archive | None,
    indices: np.ndarray,
    library: PromptLibrary,
    device: torch.device,
) -> dict[str, Any] | None:
    if archive is None:
        return None
    return zero_shot(towers, archive, indices, library, device).to_dict()


def _probe(
    towers: Towers,
    archive: Archive | None,
    indices: np.ndarray | None,
    device: torch.device,
    config: PretrainConfig,
) -> dict[str, Any] | None:
    if archive is None:
        return None
    stages = min(config.vv_stages, len(towers.model.visual.transformer.resblocks))
    return probe_features(
        towers, archive, device, indices=indices, n_stages=stages, seed=config.seed
    ).to_dict()


def _archive(
    config: PretrainConfig,
    work: Path,
    data: str | os.PathLike | None,
    synth: SynthArchiveConfig,
    progress: bool,
    endpoint_url: str | None = None,
) -> Archive:
    if data is None:
        root = synthetic_archive(work / "archive", synth, config.exclude_classes, progress)
    elif is_remote(data):
        root = mirror_archive(
            str(data), work / "archive-mirror", endpoint_url=endpoint_url, progress=progress
        )
    else:
        root = Path(data)
    explicit = config.databar_top or config.databar_bottom
    databar = DatabarCrop(config.databar_top, config.databar_bottom) if explicit else None
    return load_archive(root, config.exclude_classes, databar)


class TrainLoop:
    """One optimiser step at a time, with logging windows and checkpoints.

    A step's loss is the labelled objective (when there is an archive) plus the SSL term of
    `ssl_step` (when set), with one backward and one optimiser step for both.
    """

    def __init__(
        self,
        config: PretrainConfig,
        towers: Towers,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        archive: Archive | None,
        train_idx: np.ndarray,
        library: PromptLibrary,
        device: torch.device,
        ssl_step: SSLStep | None = None,
    ) -> None:
        self.config, self.towers, self.optimizer, self.scaler = config, towers, optimizer, scaler
        self.archive, self.train_idx, self.device = archive, train_idx, device
        self.ssl_step = ssl_step
        if archive is not None:
            self.labels = archive.labels
            self.store_size = round(towers.image_size * config.store_scale)
            self.images = StoredImages(archive, train_idx, self.store_size, config)
            self.captions = CaptionSampler(
                library, archive.classes, config.metadata_prob, config.captions_per_class
            )
        self.params = [p for p in towers.model.parameters() if p.requires_grad]
        if ssl_step is not None:
            self.params += ssl_step.ssl.student_parameters()

    def run(
        self, state: RunState, target: int, ckpt: Path, fingerprint: str, progress: bool
    ) -> None:
        """Train until `target` steps (or SIGINT/SIGTERM, or SSL collapse), checkpointing."""
        cfg = self.config
        window: list[dict[str, float]] = []
        bar = tqdm(
            total=cfg.steps, initial=state.step, disable=not progress, unit="step", desc="pretrain"
        )
        ssl_module = self.ssl_step.ssl if self.ssl_step else None
        with _stop_signals() as stop, bar:
            while state.step < target and not stop.is_set():
                started = time.perf_counter()
                metrics = self.step(state.step)
                seconds = time.perf_counter() - started
                state.step += 1
                state.images_seen += cfg.batch_size
                state.elapsed_s += seconds
                window.append({**metrics, "seconds": seconds})
                bar.update(1)
                bar.set_postfix(
                    **{_SHORT[k]: f"{metrics[k]:.3f}" for k in _SHORT if k in metrics},
                    img_s=f"{cfg.batch_size / seconds:.1f}",
                )
                if state.step % cfg.log_every == 0 or state.step in (1, target):
                    state.history.append(_summary(window, state.step, cfg.batch_size))
                    log.debug("step %d: %s", state.step, state.history[-1])
                    window = []
                    if self.ssl_step is not None and self._collapsed(state):
                        break
                if state.step % cfg.checkpoint_every == 0 or state.step == target:
                    save_checkpoint(
                        ckpt, self.towers, self.optimizer, self.scaler, state, cfg, fingerprint,
                        ssl_module,
                    )  # fmt: skip
        if stop.is_set() or state.collapsed is not None:
            save_checkpoint(
                ckpt, self.towers, self.optimizer, self.scaler, state, cfg, fingerprint, ssl_module
            )
        if stop.is_set():
            log.warning("interrupted: checkpoint at step %d saved to %s", state.step, ckpt)

    def _collapsed(self, state: RunState) -> bool:
        """Log the SSL indicators of the window just closed; True when the run must stop."""
        ssl_cfg = self.config.ssl
        summary = state.history[-1]
        log.info("step %d: %s", state.step, describe_indicators(summary, ssl_cfg.prototypes))
        if state.reference_std is None:
            state.reference_std = summary["patch_std"]
        if state.step < ssl_cfg.collapse_after * self.config.steps:
            return False
        reason = collapse_reason(summary, state.reference_std, ssl_cfg)
        state.collapse_strikes = state.collapse_strikes + 1 if reason else 0
        if reason and state.collapse_strikes >= ssl_cfg.collapse_patience:
            state.collapsed = reason
            log.error("collapse at step %d: %s; stopping", state.step, reason)
            return True
        return False

    def step(self, step: int) -> dict[str, float]:
        """One optimiser step; returns the losses and diagnostics of this batch."""
        cfg, device = self.config, self.device
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, cfg) * group.get("lr_scale", 1.0)
        loss = torch.zeros((), device=device)
        metrics: dict[str, float] = {}
        if self.archive is not None:
            loss, metrics = self.labelled_loss(step)
        if self.ssl_step is not None:
            gen = torch.Generator().manual_seed(step_seed(cfg.seed, step, SSL_STREAM))
            idx = batch_indices(step, self.ssl_step.indices, cfg.batch_size, cfg.seed)
            loss_ssl, ssl_metrics = self.ssl_step.loss(step, idx, gen)
            loss = loss + loss_ssl
            metrics.update(ssl_metrics)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss at step {step} ({metrics}): lower --lr or raise --warmup-steps"
            )
        grad_norm = self._update(loss)
        if self.ssl_step is not None:
            self.ssl_step.after_update(step)
        return {
            "loss": float(loss.detach()),
            **metrics,
            "grad_norm": grad_norm,
            "lr": self.optimizer.param_groups[0]["lr"],
        }

    def labelled_loss(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The labelled objective of step `step`: contrastive + dense (+ V-V dense) terms."""
        cfg, model, device = self.config, self.towers.model, self.device
        gen = torch.Generator().manual_seed(step_seed(cfg.seed, step))
        idx = batch_indices(step, self.train_idx, cfg.batch_size, cfg.seed)
        stored, cover, has_mask = self.images.batch(idx)
        gray, cover = augment_batch(
            stored.to(device), cover.to(device).float() / 255, self.towers.image_size,
            cfg.augment, gen,
        )  # fmt: skip
        mean, std = self.towers.preprocess_cfg["mean"], self.towers.preprocess_cfg["std"]
        images = normalize(gray, mean, std)  # (B, 3, S, S)
        labels = torch.as_tensor(self.labels[idx], device=device)  # (B,)
        caps = self.captions.sample(
            self.labels[idx].tolist(), [self.archive.items[i].meta for i in idx], gen
        )
        text_tokens = self.towers.tokenizer(caps.sentences).to(device)  # (U, context)
        with _autocast(device, cfg):
            if cfg.vv_dense_weight > 0:
                tokens, vv = dual_path_tokens(model, images, cfg.vv_stages)  # (B, 1+P, D), m x
            else:
                tokens, vv = image_tokens(model, images), []  # (B, 1+P, D)
            text = model.encode_text(text_tokens)  # (U, D)
        tokens = F.normalize(tokens.float(), dim=-1)
        text = F.normalize(text.float(), dim=-1)
        scale = model.logit_scale.exp()
        loss_clip = multi_positive_contrastive(
            tokens[:, 0], text[caps.per_image.to(device)], labels, scale
        )
        class_text = F.normalize(text[caps.per_class.to(device)].mean(1), dim=-1)  # (K, D)
        target = patch_targets(
            patch_coverage(cover, self.towers.grid),
            labels,
            has_mask.to(device),
            GOOD_INDEX,
            cfg.dense_min_coverage,
        )
        loss_dense = dense_alignment(tokens[:, 1:], class_text, target, scale, GOOD_INDEX)
        loss_vv = torch.zeros((), device=device)
        for stage in vv:  # mean over stages
            patches = F.normalize(stage[:, 1:].float(), dim=-1)
            loss_vv = loss_vv + dense_alignment(patches, class_text, target, scale, GOOD_INDEX)
        loss_vv = loss_vv / max(len(vv), 1)
        loss = (
            cfg.contrastive_weight * loss_clip
            + cfg.dense_weight * loss_dense
            + cfg.vv_dense_weight * loss_vv
        )
        return loss, {
            "loss_clip": float(loss_clip.detach()),
            "loss_dense": float(loss_dense.detach()),
            "loss_vv": float(loss_vv.detach()),
            "clip_floor": contrastive_floor(labels),
            "logit_scale": float(scale.detach()),
        }

    def _update(self, loss: torch.Tensor) -> float:
        """Backward, unscale, clip, step; keeps the logit scale in CLIP's range."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with torch.no_grad():
            self.towers.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        return float(norm)


class StoredImages:
    """Training images at the stored resolution: preloaded when they fit, else decoded per batch."""

    def __init__(
        self, archive: Archive, indices: np.ndarray, size: int, config: PretrainConfig
    ) -> None:
        self.archive, self.size = archive, size
        self.databar = archive.databar
        self.workers = config.num_workers
        self.cache: dict[int, tuple[torch.Tensor, ...]] = {}
        need = len(indices) * size * size * 3  # float16 image + uint8 coverage
        if need <= config.preload_max_gb * 2**30:
            for i, row in zip(indices, self._decode(indices, progress=True), strict=True):
                self.cache[int(i)] = row

    def batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """((b, R, R) float16 gray, (b, R, R) uint8 coverage x255, (b,) has_mask)."""
        missing = [i for i in indices if int(i) not in self.cache]
        decoded = dict(zip(missing, self._decode(np.array(missing)), strict=True))
        rows = [self.cache.get(int(i)) or decoded[i] for i in indices]
        return tuple(torch.stack(column) for column in zip(*rows, strict=True))  # type: ignore[return-value]

    def _decode(
        self, indices: np.ndarray, progress: bool = False
    ) -> list[tuple[torch.Tensor, ...]]:
        items = [self.archive.items[int(i)] for i in indices]

        def one(item):  # noqa: ANN001, ANN202 - local helper
            return load_stored(item, self.databar, self.size)

        if self.workers > 0 and len(items) > 1:
            with ThreadPoolExecutor(self.workers) as pool:
                return list(pool.map(one, items))
        it = tqdm(items, desc="decode archive", unit="img", disable=not progress or len(items) < 50)
        return [one(item) for item in it]


def batch_indices(step: int, train_idx: np.ndarray, batch: int, seed: int) -> np.ndarray:
    """Archive indices of step `step`: consecutive slices of a seeded permutation per epoch."""
    n = len(train_idx)
    out: list[int] = []
    position = step * batch
    while len(out) < batch:
        epoch, offset = divmod(position, n)
        perm = np.random.default_rng([seed, 11, epoch]).permutation(n)
        take = min(batch - len(out), n - offset)
        out.extend(perm[offset : offset + take].tolist())
        position += take
    return train_idx[np.array(out)]


def step_seed(seed: int, step: int, stream: int = 13) -> int:
    """Seed of a step's augmentation and caption draws: independent of earlier steps.

    `stream` separates independent draws of one step (13: labelled batch, 19: SSL views).
    """
    return int(np.random.SeedSequence([seed, stream, step]).generate_state(1, np.uint64)[0] >> 1)


def save_checkpoint(
    path: Path,
    towers: Towers,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    state: RunState,
    config: PretrainConfig,
    fingerprint: str,
    ssl: SelfDistillation | None = None,
) -> None:
    """Write model + optimiser + scaler + progress atomically (a crash never leaves half a file).

    SSL runs add the self-distillation state (heads, mask token, EMA teacher, centres).
    """
    payload = {
        "format": 1,
        "fingerprint": fingerprint,
        "config": config.to_dict(),
        "model": towers.model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "state": asdict(state),
    }
    if ssl is not None:
        payload["ssl"] = ssl.state_dict()
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(
    path: Path,
    towers: Towers,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    fingerprint: str,
    ssl: SelfDistillation | None = None,
) -> RunState:
    """Restore a checkpoint into the given objects; refuses one written for another recipe."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("fingerprint") != fingerprint:
        raise ValueError(
            f"{path} belongs to a run with another recipe or archive (fingerprint "
            f"{payload.get('fingerprint')} vs {fingerprint}); pass --restart to discard it or "
            f"choose another --work-dir"
        )
    towers.model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scaler.load_state_dict(payload["scaler"])
    if ssl is not None:
        ssl.load_state_dict(payload["ssl"])
    return RunState(**payload["state"])


def _summary(window: list[dict[str, float]], step: int, batch: int) -> dict[str, float]:
    """Mean of a log window's metrics, plus throughput over it.

    A metric is averaged over the steps that reported it: one that does not apply to the run
    (the prototype entropies of masked-feature prediction) is absent, never NaN.
    """
    keys = dict.fromkeys(k for m in window for k in m if k != "seconds")
    out = {k: float(np.mean([m[k] for m in window if k in m])) for k in keys}
    seconds = sum(m["seconds"] for m in window)
    out.update(step=step, images_per_s=len(window) * batch / seconds, chance=math.log(batch))
    return out


def amp_dtype(device: torch.device, config: PretrainConfig) -> torch.dtype | None:
    """Autocast dtype: bf16 (fp16 on old GPUs) on CUDA; bf16 on CPUs with native bf16."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    use = native_cpu_bf16() if config.cpu_bf16 is None else config.cpu_bf16
    return torch.bfloat16 if use else None


def native_cpu_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX); Linux flags, else False."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _autocast(device: torch.device, config: PretrainConfig):  # noqa: ANN202 - context manager
    """The model library's CUDA autocast; on CPU, bf16 autocast where `amp_dtype` says so."""
    if device.type == "cuda":
        return autocast_context(device)
    if amp_dtype(device, config) is not None:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


@contextmanager
def _stop_signals() -> Iterator[threading.Event]:
    """SIGINT/SIGTERM set a flag the loop checks between steps, so the checkpoint is whole."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        log.warning("signal %d: stopping after this step (again to abort)", signum)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _brief(result: dict[str, Any] | None) -> str:
    if not result:
        return "n/a"
    acc, pa = result.get("accuracy"), result.get("patch_auroc")
    return (f"accuracy {acc:.3f}" if acc is not None else "accuracy n/a") + (
        f", patch AUROC {pa:.3f}" if pa is not None else ", patch AUROC n/a"
    )
