"""Tasks of adapt-backbone: find the champion's backbone, adapt it label-free, record lineage.

The backbone is passed on as a ``local-dir:`` path, the champion by its registry ref, never
as a model. Pretraining checkpoints into a work folder keyed by the flow run, so a retried
run resumes where it stopped; the folder is removed once the backbone is written.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from semclip.registry.client import Registry
from semclip.registry.refs import CHAMPION, ModelRef
from tasks.common import IO_RETRIES, BucketRef

__all__ = [
    "AdaptError",
    "AdaptedBackbone",
    "ParentBackbone",
    "adapt_backbone",
    "record_adapt_lineage",
    "resolve_parent_backbone",
]

LINEAGE_PREFIX = "semclip.adapt."  # MLflow tag prefix of the lineage (params: "adapt.")


class AdaptError(RuntimeError):
    """adapt-backbone cannot go on: no champion, or pretraining stopped (collapse)."""


@dataclass(frozen=True)
class ParentBackbone:
    """The champion version and the backbone it was fitted with, ready to continue from."""

    version: str  # registry version of the champion
    model_dir: str  # its model directory on this machine (the registry's download cache)
    backbone: str  # what pretraining starts from: local-dir:<model_dir>/backbone, or a name
    pretrained: str | None  # open_clip tag/file for a named backbone; None for local-dir:
    name: str  # the backbone as model.json names it (the champion's own lineage)
    random_weights: bool  # the champion's backbone was a random net (tests, demos)


@dataclass(frozen=True)
class AdaptedBackbone:
    """A finished, adapted ``local-dir:`` backbone and what it was adapted on."""

    backbone: str  # local-dir:PATH, what the refit loads
    folder: str  # PATH: config, weights, unlabeled_images.txt, MODEL_CARD.md, pretrain.json
    weights_sha256: str
    n_unlabeled: int  # images used
    n_excluded: int  # images left out because they are hold-out images (by sha256)
    n_skipped: int  # unreadable, empty or duplicate files
    uri: str  # the raw/ prefix read
    dates: str  # inclusive range of raw/<date>/ folders, A..B
    steps: int


@task(name="resolve_parent_backbone", **IO_RETRIES)
def resolve_parent_backbone(registry: Registry) -> ParentBackbone:
    """The champion and its backbone: the model directory's own copy when it has one."""
    from semclip.artifact import backbone_source, read_meta

    champion: ModelRef | None = registry.alias(CHAMPION)
    if champion is None:
        raise AdaptError(
            f"no {CHAMPION} of '{registry.model_name}' in {registry.where()}: adapt-backbone "
            "continues from the champion's backbone; run the refit flow first"
        )
    model_dir = registry.local_dir(champion)
    name, pretrained = backbone_source(model_dir)
    info = read_meta(model_dir)["backbone"]
    return ParentBackbone(
        version=champion.version,
        model_dir=str(model_dir),
        backbone=name,
        pretrained=pretrained,
        name=str(info["name"]),
        random_weights=bool(info.get("random_weights")),
    )


def adapt_config(
    parent: ParentBackbone,
    recipe: dict[str, Any],
    ssl: dict[str, Any],
    databar: dict[str, int],
    device: str | None,
) -> Any:  # PretrainConfig (imported lazily: torch at import time)
    """The `semclip pretrain --unlabeled` config, as the CLI builds it, from the parent.

    The device's recipe, the continued-training defaults (SSL_RECIPE) over it, then
    ``recipe`` (PretrainConfig fields) and ``ssl`` (SSLConfig fields) from the run.
    """
    from semclip.pretrain.config import SSL_RECIPE, PretrainConfig, SSLConfig, get_recipe

    base: PretrainConfig = get_recipe(None, device).pretrain
    config = replace(
        base,
        **{**SSL_RECIPE, **recipe},
        model=parent.backbone,
        pretrained=parent.pretrained,
        lock_text=True,
        ssl=replace(SSLConfig(), **ssl),
        ssl_only=True,
        databar_top=databar.get("top", 0),
        databar_bottom=databar.get("bottom", 0),
    )
    return replace(config, warmup_steps=min(config.warmup_steps, config.steps))


@task(name="adapt_backbone", cache_policy=NO_CACHE)
def adapt_backbone(
    bucket: BucketRef,
    parent: ParentBackbone,
    *,
    first: dt.date,
    last: dt.date,
    exclude_hashes: list[str],
    out_dir: str,
    work_dir: str,
    recipe: dict[str, Any],
    ssl: dict[str, Any],
    databar: dict[str, int],
    device: str | None = None,
) -> AdaptedBackbone:
    """Self-distil the parent backbone on raw/<first..last>/, never on ``exclude_hashes``."""
    from semclip.backbone import LOCAL_DIR_PREFIX
    from semclip.pretrain import pretrain
    from semclip.pretrain.export import RECORD
    from semclip.pretrain.unlabeled import DateRange

    config = adapt_config(parent, recipe, ssl, databar, device)
    uri = f"{bucket.url.rstrip('/')}/raw"
    result = pretrain(
        config,
        work_dir=work_dir,
        out_dir=out_dir,
        unlabeled=uri,
        dates=DateRange(first, last),
        endpoint_url=bucket.endpoint_url,
        exclude_hashes=frozenset(exclude_hashes),
        device=device,
        progress=False,
    )
    if result.collapsed is not None:
        raise AdaptError(
            f"self-distillation collapsed at step {result.step}/{result.steps}: "
            f"{result.collapsed}. No backbone written (report in {work_dir}); lower the "
            "recipe's lr or raise ssl.teacher_temp and run again"
        )
    if not result.finished or result.backbone_dir is None:
        raise AdaptError(
            f"pretraining stopped at step {result.step}/{result.steps} (interrupted); the "
            f"checkpoint in {work_dir} resumes when this flow run is retried"
        )
    written = json.loads((result.backbone_dir / RECORD).read_text())
    record = written["ssl"]
    shutil.rmtree(work_dir, ignore_errors=True)  # checkpoint + mirror of raw/: large
    return AdaptedBackbone(
        backbone=f"{LOCAL_DIR_PREFIX}{result.backbone_dir}",
        folder=str(result.backbone_dir),
        weights_sha256=str(written["weights_sha256"]),
        n_unlabeled=int(record["images_used"]),
        n_excluded=int(record["source"].get("excluded", 0)),
        n_skipped=int(record["skipped_total"]),
        uri=str(record["source"]["uri"]),
        dates=str(DateRange(first, last)),
        steps=result.steps,
    )


@task(name="record_adapt_lineage", **IO_RETRIES)
def record_adapt_lineage(
    registry: Registry, version: str, lineage: dict[str, Any], backbone_folder: str
) -> ModelRef:
    """Tag the registered version with where its backbone came from; attach its image list.

    Tags (run and version) ``semclip.adapt.<key>``, params ``adapt.<key>``, and the adapted
    backbone's MODEL_CARD.md, pretrain.json and unlabeled_images.txt under ``adapt/``.
    Safe to retry: tags overwrite, params are logged again with the same values.
    """
    from semclip.pretrain.export import MODEL_CARD, RECORD
    from semclip.pretrain.overlap import UNLABELED_IMAGES

    folder = Path(backbone_folder)
    texts = {
        f"adapt/{name}": (folder / name).read_text()
        for name in (MODEL_CARD, UNLABELED_IMAGES)
        if (folder / name).is_file()
    }
    return registry.annotate(
        registry.resolve(version),
        params={"adapt": lineage},
        tags={f"{LINEAGE_PREFIX}{k}": str(v) for k, v in lineage.items()},
        documents={"adapt/pretrain.json": json.loads((folder / RECORD).read_text())},
        texts=texts,
    )
