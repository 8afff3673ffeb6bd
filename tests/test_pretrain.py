"""Domain pretraining (`semclip pretrain`): losses, augmentation, resume, export, overlap guard.

Everything runs on CPU with the tiny config and a tiny synthetic archive (64 px), a few steps
per run, so the whole file takes seconds. Runs are seeded, so "resumed equals uninterrupted"
is asserted exactly.
"""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from semclip import DualPathEncoder, load_backbone, load_prompts
from semclip.cli import main
from semclip.pretrain import PretrainConfig, SynthArchiveConfig, pretrain, seen_overlap
from semclip.pretrain.archive import load_archive, synthetic_archive
from semclip.pretrain.augment import augment_batch
from semclip.pretrain.config import AugmentConfig
from semclip.pretrain.losses import (
    IGNORE,
    contrastive_floor,
    dense_alignment,
    multi_positive_contrastive,
    patch_targets,
)
from semclip.pretrain.towers import create_towers, dual_path_tokens, image_tokens, lr_at
from semclip.synth import generate_dataset

ARCHIVE_COUNTS = {"good": 6, "bridge": 4, "particle": 5, "scratch": 5}
TINY = PretrainConfig(
    model="semclip-tiny",
    steps=6,
    batch_size=8,
    lr=1e-3,
    warmup_steps=2,
    log_every=1,
    checkpoint_every=2,
    val_fraction=0.2,
    cpu_bf16=False,  # fp32: the same numbers on every CPU
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a busy machine 2 threads ran 5x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def archive_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny manifest folder with masks; seed 77 is used nowhere else."""
    out = tmp_path_factory.mktemp("pretrain") / "archive"
    return generate_dataset(out, counts=ARCHIVE_COUNTS, seed=77, size=64)


@pytest.fixture(scope="module")
def finished(archive_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One uninterrupted tiny run, exported."""
    root = tmp_path_factory.mktemp("run")
    return pretrain(
        TINY, work_dir=root / "work", out_dir=root / "bb", data=archive_dir, progress=False
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_losses_are_finite_logged_and_the_run_finishes(finished) -> None:
    assert finished.finished and finished.step == TINY.steps
    steps = [h["step"] for h in finished.history]
    assert steps == list(range(1, TINY.steps + 1))  # log_every=1
    for entry in finished.history:
        assert math.isfinite(entry["loss_clip"]) and math.isfinite(entry["loss_dense"])
        assert math.isfinite(entry["loss_vv"]) and entry["loss_vv"] > 0  # V-V term on
        assert entry["images_per_s"] > 0
    assert finished.zero_shot["n_images"] > 0


@pytest.mark.slow
def test_backbone_loads_as_local_dir_and_as_checkpoint_file(finished) -> None:
    folder = finished.backbone_dir
    for name in ("MODEL_CARD.md", "loss_curve.png", "pretrain.json", "seen_images.txt"):
        assert (folder / name).is_file()
    as_dir = load_backbone(f"local-dir:{folder}", None, "cpu")
    as_file = load_backbone(
        "semclip-tiny", pretrained=folder / "open_clip_model.safetensors", device="cpu"
    )
    trained = load_file(str(folder / "open_clip_model.safetensors"))
    for name, value in as_file.model.state_dict().items():
        assert torch.equal(value, as_dir.model.state_dict()[name])
        assert torch.equal(value, trained[name])
    random = load_backbone("semclip-tiny", None, "cpu").model.state_dict()
    assert not torch.equal(random["visual.proj"], trained["visual.proj"])  # it did train
    assert "steps" in (folder / "MODEL_CARD.md").read_text()


@pytest.mark.slow
def test_seen_images_are_the_sha256_of_the_archive_files(finished, archive_dir: Path) -> None:
    images = sorted(archive_dir.glob("images/*/*.png"))
    expected = sorted({_sha256(p) for p in images})
    lines = (finished.backbone_dir / "seen_images.txt").read_text().splitlines()
    assert lines == expected


@pytest.mark.slow
def test_seen_overlap_flags_only_seen_images(finished, archive_dir: Path, tmp_path: Path) -> None:
    seen = sorted(archive_dir.glob("images/particle/*.png"))[:2]
    fresh = generate_dataset(tmp_path / "fresh", counts={"good": 2}, seed=78, size=64)
    unseen = sorted(fresh.glob("images/*/*.png"))
    copy = tmp_path / "renamed.png"
    copy.write_bytes(seen[0].read_bytes())  # same bytes, other name: still seen
    paths = [*seen, *unseen, copy]
    expected = {str(seen[0]), str(seen[1]), str(copy)}
    assert seen_overlap(finished.backbone_dir, paths) == expected
    assert seen_overlap(f"local-dir:{finished.backbone_dir}", paths) == expected
    assert seen_overlap(tmp_path, paths) == set()  # no seen_images.txt: nothing known


@pytest.mark.slow
def test_resume_after_a_stop_ends_identical_to_an_uninterrupted_run(
    finished, archive_dir: Path, tmp_path: Path
) -> None:
    kw = dict(work_dir=tmp_path / "work", out_dir=tmp_path / "bb", data=archive_dir)
    first = pretrain(TINY, stop_after=3, progress=False, **kw)  # checkpoints at 2 and 3
    assert not first.finished and first.step == 3 and first.backbone_dir is None
    assert not (tmp_path / "bb").exists()  # the backbone folder only holds finished work
    second = pretrain(TINY, progress=False, **kw)
    assert second.finished and second.step == TINY.steps
    assert [h["step"] for h in second.history] == [h["step"] for h in finished.history]
    resumed = load_file(str(second.backbone_dir / "open_clip_model.safetensors"))
    straight = load_file(str(finished.backbone_dir / "open_clip_model.safetensors"))
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name


@pytest.mark.slow
def test_resume_refuses_a_checkpoint_of_another_recipe(archive_dir: Path, tmp_path: Path) -> None:
    kw = dict(work_dir=tmp_path / "work", out_dir=tmp_path / "bb", data=archive_dir)
    pretrain(TINY, stop_after=2, progress=False, **kw)
    with pytest.raises(ValueError, match="--restart"):
        pretrain(replace(TINY, lr=2e-3), stop_after=1, progress=False, **kw)
    again = pretrain(replace(TINY, lr=2e-3), stop_after=1, restart=True, progress=False, **kw)
    assert again.step == 1


@pytest.mark.slow
def test_bf16_autocast_on_cpu_trains(archive_dir: Path, tmp_path: Path) -> None:
    config = replace(TINY, steps=2, cpu_bf16=True)
    result = pretrain(
        config, work_dir=tmp_path / "w", out_dir=tmp_path / "b", data=archive_dir, progress=False
    )
    assert result.finished
    assert all(math.isfinite(h["loss"]) for h in result.history)
    assert "bfloat16" in (result.backbone_dir / "MODEL_CARD.md").read_text()


@pytest.mark.slow
def test_loss_decreases_over_a_short_run(archive_dir: Path, tmp_path: Path) -> None:
    config = replace(TINY, steps=24, batch_size=16, lr=2e-3, warmup_steps=3, checkpoint_every=24)
    result = pretrain(
        config, work_dir=tmp_path / "w", out_dir=tmp_path / "b", data=archive_dir, progress=False
    )
    total = [h["loss"] for h in result.history]
    assert np.mean(total[-4:]) < np.mean(total[:4])


def test_exclude_classes_removes_them_from_the_archive(tmp_path: Path) -> None:
    spec = SynthArchiveConfig(seed=79, per_class=2, size=64)
    folder = synthetic_archive(tmp_path / "a", spec, ("bridge", "infilm"), progress=False)
    with (folder / "manifest.csv").open() as fh:
        labels = {row["label"] for row in csv.DictReader(fh)}
    assert "bridge" not in labels and "infilm" not in labels and "particle" in labels
    archive = load_archive(folder, ("particle",))
    assert "particle" not in archive.classes and archive.dropped == {"particle": 2}
    assert all(item.label != "particle" for item in archive.items)


@pytest.mark.slow
def test_cli_exclude_classes_and_stop(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(
        [
            "pretrain",
            "--model",
            "semclip-tiny",
            "--archive-per-class",
            "2",
            "--archive-size",
            "64",
            "--exclude-classes",
            "bridge,infilm",
            "--steps",
            "4",
            "--batch-size",
            "4",
            "--stop-after",
            "1",
            "--work-dir",
            str(tmp_path / "work"),
            "--out",
            str(tmp_path / "bb"),
        ]
    )
    assert code == 0
    assert "stopped at step 1/4" in capsys.readouterr().out
    with (tmp_path / "work" / "archive" / "manifest.csv").open() as fh:
        labels = {row["label"] for row in csv.DictReader(fh)}
    assert labels == {"good", "copper_residue", "hole", "particle", "scratch"}


def test_multi_positive_contrastive_has_chance_and_floor() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    same = torch.zeros(6, 4)
    same[:, 0] = 1
    chance = multi_positive_contrastive(same, same, labels, torch.tensor(10.0))
    assert chance.item() == pytest.approx(math.log(6))  # all logits equal: ln(B)
    onehot = torch.nn.functional.one_hot(labels, 4).float()
    separated = multi_positive_contrastive(onehot, onehot, labels, torch.tensor(100.0))
    assert separated.item() == pytest.approx(contrastive_floor(labels), abs=1e-4)
    assert contrastive_floor(labels) == pytest.approx(math.log(2))


def test_patch_targets_and_dense_loss_weigh_defect_and_good_alike() -> None:
    coverage = torch.tensor([[0.0, 0.1, 0.6, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.1, 0.05, 0.0]])
    labels = torch.tensor([2, 0, 1])  # defect with mask, good, defect smaller than a patch
    has_mask = torch.tensor([True, False, True])
    target = patch_targets(coverage, labels, has_mask, good_index=0, min_coverage=0.25)
    assert target.tolist() == [[0, IGNORE, 2, 0], [0, 0, 0, 0], [0, 1, IGNORE, 0]]
    no_mask = patch_targets(coverage, labels, torch.tensor([False, False, False]), 0, 0.25)
    assert (no_mask[0] == IGNORE).all() and (no_mask[1] == 0).all()
    text = torch.eye(3, 4)
    patches = text[target.clamp(min=0)]  # every patch on its target's caption
    low = dense_alignment(patches, text, target, torch.tensor(50.0), 0)
    high = dense_alignment(patches.flip(-2), text, target, torch.tensor(50.0), 0)
    assert low.item() < 1e-6 < high.item()


def test_augmentation_moves_masks_with_images() -> None:
    gen = torch.Generator().manual_seed(0)
    stored = torch.rand(4, 40, 40)
    geometry_only = AugmentConfig(brightness=0, contrast=0, noise_prob=0, blur_prob=0)
    image, mask = augment_batch(stored, stored.clone(), 32, geometry_only, gen)
    assert image.shape == (4, 32, 32)
    assert torch.allclose(image, mask, atol=1e-6)  # same warp on both
    image, _ = augment_batch(stored, stored, 32, AugmentConfig(), torch.Generator().manual_seed(0))
    assert image.min() >= 0 and image.max() <= 1


def test_class_token_of_image_tokens_is_encode_image_and_lr_schedule() -> None:
    towers = create_towers(TINY)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = image_tokens(towers.model, x)
        assert tokens.shape == (2, 1 + towers.grid**2, 64)
        assert torch.allclose(tokens[:, 0], towers.model.encode_image(x), atol=1e-5)
        final, vv = dual_path_tokens(towers.model, x, 4)
        assert torch.allclose(final, tokens, atol=1e-5) and len(vv) == 4
    assert not towers.model.token_embedding.weight.requires_grad
    assert lr_at(0, TINY) == pytest.approx(TINY.lr / 2)
    assert lr_at(TINY.steps, TINY) == pytest.approx(TINY.lr * TINY.min_lr_ratio)


@pytest.mark.slow
def test_sem_small_config_loads_and_fits_the_default_prompts() -> None:
    backbone = load_backbone("semclip-sem-small", None, "cpu")
    assert backbone.image_size == 160 and backbone.model.visual.grid_size[0] == 10
    library = load_prompts()
    sentences = [s for c in library.states for s in library.sentences(c)]
    tokens = backbone.tokenizer(sentences)  # (N, 32): the config's short text context
    last = (tokens != 0).sum(1).max().item()
    assert last < tokens.shape[1]  # no default prompt is truncated (EOT still inside)
    with torch.no_grad():
        stages = DualPathEncoder(backbone.model, 4)(torch.randn(1, 3, 160, 160))
    assert len(stages) == 4 and stages[-1].vv.shape == (1, 101, 256)
