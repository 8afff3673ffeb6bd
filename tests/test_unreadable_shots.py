"""One unreadable file (empty, truncated, a mask that cannot be decoded, a mask of another size
than its image) in a labelled set is left out and named by every command that reads labelled
images: fit, eval, eval-al and pretrain --data. It never costs the other images their fit,
evaluation or training run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semclip.backbone import Backbone
from semclip.cli import main
from semclip.config import FitConfig
from semclip.data import load_dataset
from semclip.eval.active import ActiveLearningConfig, run_active_learning
from semclip.model import SemclipModel
from semclip.pretrain.archive import load_archive

HEADING = "3 image(s) left out (an unreadable image or mask, or a mask of another size):"

FAST = FitConfig(augment=False, min_steps=5, max_steps=5, cv_folds=2, membank=False)


@pytest.fixture
def damaged(synth_dir: Path, tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """A copy of the synthetic set with one empty good image, one half-written defect mask and
    one defect mask of another size than its image (a labelling tool's resize)."""
    root = tmp_path / "damaged"
    shutil.copytree(synth_dir, root)
    dataset = load_dataset(root)
    empty = next(s.image for s in dataset.samples if s.label == "good")
    empty.write_bytes(b"")
    masked = [s for s in dataset.samples if s.mask is not None]
    data = masked[0].mask.read_bytes()
    masked[0].mask.write_bytes(data[: len(data) // 2])
    resized = next(s for s in masked[1:] if s.label != masked[0].label)
    Image.fromarray(np.full((10, 64), 255, dtype=np.uint8)).save(resized.mask)
    return root, empty, masked[0].image, resized.image


@pytest.mark.slow
def test_fit_leaves_out_unreadable_shots_and_names_them(
    damaged: tuple[Path, Path, Path, Path], tiny_backbone: Backbone, capsys: pytest.CaptureFixture
) -> None:
    root, empty, truncated_mask_image, resized_mask_image = damaged
    dataset = load_dataset(root)
    done: list[int] = []
    model = SemclipModel.fit(tiny_backbone, dataset, config=FAST, progress=done.append)
    assert sum(done) == len(dataset)  # the progress bar ends full, left-out shots included
    skipped = {entry["uri"]: entry["reason"] for entry in model.lineage["skipped_shots"]}
    assert set(skipped) == {str(empty), str(truncated_mask_image), str(resized_mask_image)}
    assert "empty file" in skipped[str(empty)] and "truncated" in skipped[str(truncated_mask_image)]
    assert "is 10x64 (HxW) but its image is" in skipped[str(resized_mask_image)]
    counts = {c: sum(s.label == c for s in dataset.samples) for c in dataset.classes}
    shots = model.lineage["shots_per_class"]
    assert sum(shots.values()) == len(dataset) - 3 and shots["good"] == counts["good"] - 1
    # the command line says so after saving the model
    code = main(
        ["fit", "--data", str(root), "--shots", "all", "--out", str(root.parent / "m"),
         "--backbone", "semclip-tiny", "--pretrained", "none", "--no-augment",
         "--fit", "max_steps=5", "--fit", "min_steps=5"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "WARNING: 3 support image(s) left out of the fit" in out
    assert str(empty) in out and str(resized_mask_image) in out


@pytest.mark.slow
def test_a_class_whose_every_shot_is_unreadable_is_an_error_naming_it(
    damaged: tuple[Path, Path, Path, Path], tiny_backbone: Backbone
) -> None:
    root, _, _, _ = damaged
    dataset = load_dataset(root)
    for sample in dataset.samples:
        if sample.label == "particle":
            sample.image.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="every support image of class 'particle' is unreadable"):
        SemclipModel.fit(tiny_backbone, dataset, config=FAST)


@pytest.mark.slow
def test_eval_and_active_learning_leave_out_a_mask_that_cannot_be_decoded(
    damaged: tuple[Path, Path, Path, Path], tiny_backbone: Backbone, tmp_path: Path
) -> None:
    root, empty, truncated_mask_image, resized_mask_image = damaged
    out = tmp_path / "r"
    code = main(
        ["eval", "--data", str(root), "--out", str(out), "--shots", "1", "--seeds", "1",
         "--method", "clip-zero", "--backbone", "semclip-tiny", "--pretrained", "none",
         "--cache-dir", str(tmp_path / "cache")]
    )  # fmt: skip
    assert code == 0
    report = (out / "report.md").read_text()
    assert HEADING in report and str(truncated_mask_image) in report
    assert f"{resized_mask_image}: mask" in report and "is 10x64 (HxW)" in report
    n_test = json.loads((out / "metrics.json").read_text())[0]["n_test"]
    assert n_test > 0
    config = ActiveLearningConfig(seeds=(0,), rounds=1, budget=2, test_fraction=0.3, fit=FAST)
    result = run_active_learning(load_dataset(root), tiny_backbone, config)
    assert sorted(entry.split(": ")[0] for entry in result.unreadable) == sorted(
        [str(empty), str(truncated_mask_image), str(resized_mask_image)]
    )
    assert result.n_test + result.n_pool == len(load_dataset(root)) - 3
    assert HEADING in result.markdown()


def test_a_pretraining_archive_leaves_out_unreadable_images(
    damaged: tuple[Path, Path, Path, Path],
) -> None:
    root, empty, truncated_mask_image, resized_mask_image = damaged
    archive = load_archive(root)
    assert len(archive) == len(load_dataset(root)) - 3
    damaged_images = {str(empty), str(truncated_mask_image), str(resized_mask_image)}
    assert {entry.split(": ")[0] for entry in archive.unreadable} == damaged_images
    assert all(str(item.image) not in damaged_images for item in archive.items)
