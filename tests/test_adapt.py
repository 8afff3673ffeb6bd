"""adapt-backbone: the hold-out is left out of the unlabelled set, and the flow end to end.

The flow test runs the real flow under the session Prefect server with MLflow on SQLite: the
champion is the tiny-backbone template model, the bucket holds three nights of raw/ dumps
whose images are also the confirmed shots (as in the fab, where engineers confirm raw
images), so the refit's hold-out images are in raw/ and must not reach the SSL set.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from semclip.backbone import IMAGE_LISTS
from semclip.pretrain.overlap import (
    SEEN_IMAGES,
    UNLABELED_IMAGES,
    unlabeled_hash_overlap,
    write_seen_images,
)
from semclip.pretrain.unlabeled import load_unlabeled
from semclip.refit.split import is_holdout
from semclip.synth import render_sample, sample_rng

if TYPE_CHECKING:
    from conftest_pipeline import Kit, PipelineEnv

pytest_plugins = ["conftest_pipeline"]

LABELS = ("good", "bridge", "particle")
SSL_FAST = {"prototypes": 32, "head_hidden": 32, "head_bottleneck": 16, "local_crops": 0}
RECIPE_FAST = {
    "steps": 2,
    "batch_size": 2,
    "warmup_steps": 1,
    "log_every": 1,
    "checkpoint_every": 2,
    "cpu_bf16": False,
}


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    """One torch thread: the SSL steps are tiny, and the test machine's cores are shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_load_unlabeled_leaves_out_the_excluded_hashes(kit: Kit, tmp_path: Path) -> None:
    folder = tmp_path / "unl"
    folder.mkdir()
    blobs = {f"img{i}.png": kit.synth_png(LABELS[i % 3], i, seed=41) for i in range(6)}
    for name, data in blobs.items():
        (folder / name).write_bytes(data)
    excluded = {_sha(blobs["img1.png"]).upper(), _sha(blobs["img4.png"]), "ab" * 32}

    pool = load_unlabeled(str(folder), size=32, exclude_hashes=excluded, progress=False)

    used = {image.sha256 for image in pool.images}
    assert used == {_sha(d) for n, d in blobs.items() if n not in ("img1.png", "img4.png")}
    assert pool.source["excluded"] == 2 and pool.skipped == {}
    with pytest.raises(ValueError, match="6 excluded by hash"):
        load_unlabeled(
            str(folder), size=32, exclude_hashes={_sha(d) for d in blobs.values()}, progress=False
        )


def test_unlabeled_overlap_counts_hashes_in_the_backbone_list(tmp_path: Path) -> None:
    listed = ["a" * 64, "b" * 64]
    write_seen_images(tmp_path, listed, "unlabeled_images.txt")
    assert unlabeled_hash_overlap(["A" * 64, "c" * 64], f"local-dir:{tmp_path}") == {"a" * 64}
    assert unlabeled_hash_overlap(listed, "semclip-tiny") == set()  # a name: nothing known
    assert IMAGE_LISTS == (SEEN_IMAGES, UNLABELED_IMAGES)  # what model directories keep


def _seed_nights(
    kit: Kit, env: PipelineEnv, nights: list[dt.date], per_night: int
) -> dict[str, bytes]:
    """raw/<date>/LOT7/W03/D<n>.png with masks, all confirmed; returns {bucket path: bytes}."""
    lines = ["image_uri,label,mask_uri,confirmed_at,reviewer"]
    stamp = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
    images: dict[str, bytes] = {}
    for day, night in enumerate(nights):
        for i in range(per_night):
            label = LABELS[i % 3]
            sample = render_sample(label, sample_rng(50 + day, label, i), size=kit.IMAGE_SIZE)
            image = f"raw/{night.isoformat()}/LOT7/W03/D{i + 1:04d}.png"
            images[image] = kit.png_bytes(sample.image)
            env.fs.pipe_file(f"{env.root}/{image}", images[image])
            mask = ""
            if label != "good":
                mask = f"confirmed/mask/{night.isoformat()}-{i}.png"
                env.fs.pipe_file(
                    f"{env.root}/{mask}", kit.png_bytes(sample.mask.astype(np.uint8) * 255)
                )
            when = (stamp + dt.timedelta(minutes=len(lines))).isoformat()
            lines.append(f"{image},{label},{mask},{when},tester")
    env.fs.pipe_file(f"{env.root}/confirmed/shots.csv", ("\n".join(lines) + "\n").encode())
    env.fs.invalidate_cache()
    return images


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_adapt_backbone_registers_a_challenger_with_lineage_and_no_holdout_in_ssl(
    kit: Kit, pipeline_env: PipelineEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.adapt import adapt_backbone_flow
    from semclip.backbone import WEIGHTS_FILE, file_sha256
    from semclip.registry.refs import CHALLENGER

    monkeypatch.setenv("SEMCLIP_SUPPORT_CAP_PER_CLASS", "1")  # one cheap fit
    last = kit.RUN_DATE
    window = [last - dt.timedelta(days=d) for d in (2, 1, 0)]
    images = _seed_nights(kit, pipeline_env, window, per_night=6)
    old = kit.synth_png("good", 0, seed=77)  # a night outside the window: never read
    pipeline_env.fs.pipe_file(f"{pipeline_env.root}/raw/2026-10-01/LOT7/W03/D0001.png", old)
    hashes = {_sha(data) for data in images.values()}
    holdout = {h for h in hashes if is_holdout(h, 0.2)}  # the refit's split rule, by hash
    assert holdout and hashes - holdout  # the fixture exercises both sides

    report = adapt_backbone_flow(
        nights=3,
        end_date=last.isoformat(),
        recipe=RECIPE_FAST,
        ssl=SSL_FAST,
        fit=kit.FAST_FIT,
        device="cpu",
    )

    registry = pipeline_env.registry
    assert report.parent_version == "1" and report.version == "2"
    assert registry.resolve(CHALLENGER).version == "2"
    folder = Path(report.backbone.removeprefix("local-dir:"))
    used = set((folder / "unlabeled_images.txt").read_text().split())
    assert used == hashes - holdout  # every window image but the hold-out, nothing older
    assert report.n_excluded == len(holdout) and report.n_unlabeled == len(used)
    assert report.holdout_unlabeled_overlap == 0 == report.refit.holdout_unlabeled_overlap
    assert report.refit.n_holdout == len(holdout)
    tags: dict[str, Any] = registry.resolve("2").tags
    assert tags["semclip.adapt.parent_version"] == "1"
    assert tags["semclip.adapt.backbone"] == report.backbone
    assert tags["semclip.adapt.backbone_sha256"] == file_sha256(folder / WEIGHTS_FILE)
    assert tags["semclip.adapt.n_unlabeled"] == str(len(used))
    assert tags["semclip.adapt.nights"] == "3"
    assert tags["semclip.adapt.dates"] == "2026-10-30..2026-11-01"
    assert tags["semclip.adapt.unlabeled_uri"].endswith("/bucket/raw")
    assert tags["semclip.holdout_unlabeled_overlap"] == "0"
    metrics = registry.run_metrics(registry.resolve("2"))
    assert metrics["holdout.unlabeled_overlap"] == 0.0
    run = registry.client().get_run(registry.resolve("2").run_id)
    assert run.data.params["adapt.parent_version"] == "1"
    listed = {a.path for a in registry.client().list_artifacts(run.info.run_id, "adapt")}
    assert "adapt/unlabeled_images.txt" in listed
    assert tags["semclip.adapt.parent_random_weights"] == "True"  # the template is random
    kept = registry.local_dir(registry.resolve("2")) / "backbone" / "unlabeled_images.txt"
    assert set(kept.read_text().split()) == used  # the version itself keeps the list


def test_adapt_params_window_and_rejected_overrides() -> None:
    from flows.adapt import AdaptParams

    params = AdaptParams.build(30, "2026-11-30", "UTC", {"steps": 40}, {"max_images": 9})
    assert (params.first, params.last, params.nights) == (
        dt.date(2026, 11, 1),
        dt.date(2026, 11, 30),
        30,
    )
    with pytest.raises(ValueError, match="'model'"):
        AdaptParams.build(3, "2026-11-30", "UTC", {"model": "ViT-B-16"}, None)
    with pytest.raises(ValueError, match="'stepz'"):
        AdaptParams.build(3, "2026-11-30", "UTC", {"stepz": 1}, None)
    with pytest.raises(ValueError, match="nights"):
        AdaptParams.build(0, None, "UTC", None, None)
