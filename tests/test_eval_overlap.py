"""`semclip eval` refuses a backbone pretrained on the very images it would be judged on."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from semclip.backbone import save_backbone_dir
from semclip.cli import main


@pytest.fixture()
def backbone_that_saw_one_image(tmp_path: Path, tiny_backbone, synth_dir: Path) -> Path:
    folder = tmp_path / "bb"
    save_backbone_dir(tiny_backbone, folder)
    seen = sorted((synth_dir / "images").rglob("*.png"))[0]
    (folder / "seen_images.txt").write_text(hashlib.sha256(seen.read_bytes()).hexdigest() + "\n")
    return folder


def test_eval_refuses_overlap_with_the_pretraining_archive(
    backbone_that_saw_one_image: Path,
    synth_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    code = main(
        [
            "eval",
            "--data",
            str(synth_dir),
            "--out",
            str(tmp_path / "r"),
            "--backbone",
            f"local-dir:{backbone_that_saw_one_image}",
            "--shots",
            "1",
            "--seeds",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "1 of" in err and "pretraining archive" in err and "--allow-pretrain-overlap" in err
    assert not (tmp_path / "r").exists()
