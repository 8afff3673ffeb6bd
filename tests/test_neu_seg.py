"""NEU-Seg conversion: tiles at the original scale, good tiles without defects, grouped."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semclip.cli import main
from semclip.data import load_dataset
from semclip.data.neu_seg import NeuTiling, convert_neu_seg, tile_label


def _neu(root: Path, split: str, name: str, labels: np.ndarray) -> None:
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, size=(*labels.shape, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "images" / split / f"{name}.jpg")
    Image.fromarray(labels.astype(np.uint8)).save(root / "annotations" / split / f"{name}.png")


def test_tile_label_rules() -> None:
    assert tile_label(np.zeros((4, 4)), 0.1) == "good"
    one = np.zeros((10, 10))
    one[:5] = 3
    assert tile_label(one, 0.1) == "scratches"
    sliver = np.zeros((10, 10))
    sliver[0, 0] = 1
    assert tile_label(sliver, 0.1) is None  # 1 % < 10 %: left out, neither good nor defect
    mixed = one.copy()
    mixed[9] = 2
    assert tile_label(mixed, 0.1) is None


def test_convert_writes_a_loadable_grouped_manifest(tmp_path: Path) -> None:
    labels = np.zeros((200, 200), np.uint8)
    labels[:100, :100] = 1  # top-left tile: inclusion everywhere
    labels[150:, 150:] = 2  # bottom-right tile: patches on a quarter
    _neu(tmp_path / "neu", "training", "000001", labels)
    _neu(tmp_path / "neu", "test", "000002", np.zeros((200, 200), np.uint8))
    counts = convert_neu_seg(tmp_path / "neu", tmp_path / "out", tiling=NeuTiling()).counts
    # 2 good tiles in image 1 but one kept per image; image 2 gives one good tile.
    assert counts == {"inclusion": 1, "patches": 1, "good": 2}
    rows = list(csv.DictReader((tmp_path / "out" / "manifest.csv").open()))
    assert {r["group"] for r in rows} == {"training-000001", "test-000002"}
    patches = next(r for r in rows if r["label"] == "patches")
    mask = np.asarray(Image.open(tmp_path / "out" / patches["mask"]))
    assert mask.shape == (100, 100) and (mask > 0).mean() == pytest.approx(0.25)
    image = np.asarray(Image.open(tmp_path / "out" / patches["image"]))
    assert image.shape == (100, 100)  # original scale: cut, never resized
    data = load_dataset(tmp_path / "out")
    assert data.classes == ("good", "inclusion", "patches")


def test_cli_names_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["convert", "neu-seg", str(tmp_path / "nope"), str(tmp_path / "out")])
    assert code == 2
    assert "no NEU-Seg images under" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written before the sources are found


def test_bad_source_files_are_left_out_named_and_the_rest_converted(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    labels = np.zeros((200, 200), np.uint8)
    labels[:100, :100] = 1
    for stem in ("000001", "000002", "000003", "000004", "000005"):
        _neu(tmp_path / "neu", "training", stem, labels)
    images = tmp_path / "neu" / "images" / "training"
    (images / "000002.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    whole = (images / "000003.jpg").read_bytes()
    (images / "000003.jpg").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "neu" / "annotations" / "training" / "000004.png").unlink()
    Image.fromarray(np.zeros((100, 200), np.uint8)).save(
        tmp_path / "neu" / "annotations" / "training" / "000005.png"
    )
    code = main(["convert", "neu-seg", str(tmp_path / "neu"), str(tmp_path / "out"),
                 "--split", "training"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "WARNING: 4 source image(s) left out" in out
    for stem, why in (("000002", "cannot read"), ("000003", "cannot read"),
                      ("000004", "is missing"), ("000005", "100x200 (HxW)")):  # fmt: skip
        line = next(line for line in out.splitlines() if f"{stem}.jpg" in line)
        assert why in line, line
    rows = list(csv.DictReader((tmp_path / "out" / "manifest.csv").open()))
    assert {r["group"] for r in rows} == {"training-000001"}
    assert len(list((tmp_path / "out" / "images").iterdir())) == len(rows)  # no stray tiles


def test_limit_takes_an_evenly_spaced_subset(tmp_path: Path) -> None:
    """NEU-Seg numbers images class by class: a cap must not keep only the first class."""
    for i in range(4):
        labels = np.zeros((200, 200), np.uint8)
        labels[:100, :100] = 1 + i // 2  # images 0, 1: inclusion; 2, 3: patches
        _neu(tmp_path / "neu", "test", f"{i:06d}", labels)
    counts = convert_neu_seg(tmp_path / "neu", tmp_path / "out", splits=("test",), limit=2).counts
    assert counts["inclusion"] == 1 and counts["patches"] == 1
