"""Manifest and MVTec readers, mask validation and few-shot support draws."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semclip.data import (
    Dataset,
    DatasetError,
    Sample,
    draw_support,
    load_dataset,
    read_manifest,
    read_mvtec,
)
from semclip.labels import normalise_label


def _png(path: Path, shape: tuple[int, int] = (8, 10), value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)
    return path


def _manifest(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.csv").write_text(text, encoding="utf-8")
    return root


def test_read_manifest(tmp_path: Path) -> None:
    root = tmp_path / "set"
    _png(root / "img" / "a.png")
    _png(root / "img" / "b.png")
    _png(root / "masks" / "b.png", value=255)
    _manifest(
        root,
        "image,label,mask,group,operator\n"
        "img/a.png, good ,,w1,x\n"
        "\n"
        "img/b.png,scratch,masks/b.png,,y\n"
        ",,,,\n",
    )
    dataset = load_dataset(root)
    assert dataset.root == root.resolve()
    first, second = dataset.samples
    assert first == Sample(root.resolve() / "img/a.png", "good", None, "w1", 1)
    assert second.image.is_absolute() and second.mask == root.resolve() / "masks/b.png"
    assert second.group is None and second.row == 2
    assert dataset.classes == ("good", "scratch")
    assert [s.row for s in dataset.by_label()["scratch"]] == [2]


def test_classes_sorted_good_first() -> None:
    samples = tuple(Sample(Path(f"/d/{n}.png"), n, None, None, i) for i, n in enumerate("zag"))
    assert Dataset(Path("/d"), samples).classes == ("a", "g", "z")
    samples += (Sample(Path("/d/ok.png"), "good", None, None, 9),)
    assert Dataset(Path("/d"), samples).classes == ("good", "a", "g", "z")


def test_manifest_lists_every_bad_row(tmp_path: Path) -> None:
    root = tmp_path / "set"
    _png(root / "ok.png")
    _png(tmp_path / "outside.png")
    os.symlink(tmp_path / "outside.png", root / "link.png")
    _manifest(
        root,
        "image,label,mask\n"
        "ok.png,good,\n"  # row 1: fine
        "../outside.png,good,\n"  # row 2: escapes with ..
        f"{tmp_path / 'outside.png'},good,\n"  # row 3: absolute
        "link.png,good,\n"  # row 4: symlink out of the folder
        "missing.png,scratch,\n"  # row 5: no such file
        "ok.png,,\n"  # row 6: empty label
        ",scratch,nomask.png\n",  # row 7: empty image, missing mask
    )
    with pytest.raises(DatasetError) as info:
        read_manifest(root)
    message = str(info.value)
    for expected in (
        "row 2, column 'image', path '../outside.png': resolves to",
        "row 3, column 'image'",
        "absolute path",
        "row 4, column 'image', path 'link.png'",
        "row 5, column 'image', path 'missing.png': file not found",
        "row 6, column 'label'",
        "row 7, column 'image'",
        "row 7, column 'mask', path 'nomask.png': file not found",
    ):
        assert expected in message
    assert "row 1" not in message
    assert {p.row for p in info.value.problems} == {2, 3, 4, 5, 6, 7}


def test_manifest_missing_columns(tmp_path: Path) -> None:
    root = _manifest(tmp_path / "set", "image,class\nx.png,good\n")
    with pytest.raises(DatasetError, match="missing column 'label'") as info:
        read_manifest(root)
    assert "missing column 'mask'" in str(info.value)


def test_load_dataset_rejects_unknown_layout(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="manifest.csv.*MVTec"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope")


def test_mvtec_layout(tmp_path: Path) -> None:
    root = tmp_path / "bottle"
    for name in ("001.png", "000.png"):
        _png(root / "train" / "good" / name)
    _png(root / "test" / "good" / "000.png")
    _png(root / "test" / "crack" / "000.png")
    _png(root / "test" / "crack" / "001.png")
    _png(root / "ground_truth" / "crack" / "000_mask.png", value=255)
    _png(root / "ground_truth" / "crack" / "001_mask.png", value=255)
    (root / "test" / "crack" / ".DS_Store").write_bytes(b"x")
    dataset = load_dataset(root)
    assert dataset == read_mvtec(root)
    relative = [str(s.image.relative_to(dataset.root)) for s in dataset.samples]
    assert relative == [
        "train/good/000.png",
        "train/good/001.png",
        "test/crack/000.png",
        "test/crack/001.png",
        "test/good/000.png",
    ]
    assert [s.row for s in dataset.samples] == [1, 2, 3, 4, 5]
    assert dataset.classes == ("good", "crack")
    crack = dataset.by_label()["crack"]
    assert [s.mask.name for s in crack if s.mask] == ["000_mask.png", "001_mask.png"]
    assert all(s.mask is None for s in dataset.by_label()["good"])


def _samples(spec: list[tuple[str, str | None]]) -> tuple[Sample, ...]:
    return tuple(
        Sample(Path(f"/d/{i:03d}.png"), label, None, group, i + 1)
        for i, (label, group) in enumerate(spec)
    )


def test_draw_support_ungrouped_counts_and_determinism(caplog: pytest.LogCaptureFixture) -> None:
    samples = _samples([("good", None)] * 10 + [("hole", None)] * 6 + [("scratch", None)] * 2)
    dataset = Dataset(Path("/d"), samples)
    with caplog.at_level(logging.WARNING, logger="semclip.data.dataset"):
        support, rest = draw_support(dataset, 3, seed=7)
    assert "class 'scratch' has 2 image(s), fewer than shots=3" in caplog.text
    counts = {label: len(group) for label, group in support.by_label().items()}
    assert counts == {"good": 3, "hole": 3, "scratch": 2}
    assert len(rest) == 18 - 8
    assert not {s.image for s in support.samples} & {s.image for s in rest.samples}
    again, _ = draw_support(dataset, 3, seed=7)
    assert again == support
    shuffled = Dataset(Path("/d"), tuple(reversed(samples)))
    assert {s.image for s in draw_support(shuffled, 3, seed=7)[0].samples} == {
        s.image for s in support.samples
    }
    draws = {
        frozenset(s.image for s in draw_support(dataset, 3, seed)[0].samples) for seed in range(5)
    }
    assert len(draws) > 1
    everything, nothing = draw_support(dataset, None, seed=0)
    assert everything == dataset and len(nothing) == 0
    with pytest.raises(ValueError, match="positive"):
        draw_support(dataset, 0, seed=0)


def test_draw_support_by_group_never_leaks() -> None:
    spec: list[tuple[str, str | None]] = []
    for wafer in range(8):  # each wafer has good images and some defects
        spec += [("good", f"w{wafer}")] * 3
        spec += [("hole", f"w{wafer}")] * (wafer % 3)
        spec += [("scratch", f"w{wafer}")] * (1 if wafer < 3 else 0)
    spec += [("hole", None)] * 2  # ungrouped images are groups of one
    dataset = Dataset(Path("/d"), _samples(spec))
    for seed in range(10):
        support, rest = draw_support(dataset, 2, seed)
        support_groups = {s.group or str(s.image) for s in support.samples}
        rest_groups = {s.group or str(s.image) for s in rest.samples}
        assert not support_groups & rest_groups
        undrawn = [s for s in dataset.samples if (s.group or str(s.image)) not in support_groups]
        assert list(rest.samples) == undrawn  # the rest is exactly the undrawn groups, in order
        for chosen in support.by_label().values():
            assert len(chosen) == 2  # 2 groups per class, one image from each
            assert len({s.group or str(s.image) for s in chosen}) == 2
        assert draw_support(dataset, 2, seed) == (support, rest)
        shuffled = Dataset(Path("/d"), tuple(reversed(dataset.samples)))
        assert set(draw_support(shuffled, 2, seed)[0].samples) == set(support.samples)


@pytest.mark.parametrize(
    ("written", "label"),
    [
        (" Particle", "particle"),
        ("PARTICLE\t", "particle"),
        ("Good", "good"),
        ("Copper Residue", "copper_residue"),
        ("copper-residue", "copper_residue"),
        ("copper _-residue", "copper_residue"),
        ("_scratch_", "scratch"),
        ("type2.b", "type2.b"),
        ("Straße", "strasse"),  # casefold, not lower
    ],
)
def test_normalise_label(written: str, label: str) -> None:
    assert normalise_label(written) == label
    assert normalise_label(label) == label  # idempotent


def test_manifest_labels_are_normalised_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "set"
    for name in ("a", "b", "c", "d"):
        _png(root / f"{name}.png")
    _manifest(
        root,
        "image,label,mask\na.png,particle,\nb.png, Particle,\nc.png,GOOD,\nd.png,Copper Residue,\n",
    )
    with caplog.at_level("WARNING", logger="semclip.data.dataset"):
        dataset = read_manifest(root)
    assert [s.label for s in dataset.samples] == ["particle", "particle", "good", "copper_residue"]
    assert dataset.classes == ("good", "copper_residue", "particle")  # not a 4th class
    warned = [r.getMessage() for r in caplog.records]
    assert any("row 2" in m and "' Particle'" in m and "'particle'" in m for m in warned)
    assert any("row 4" in m and "'copper_residue'" in m for m in warned)
    assert not any("row 1" in m for m in warned)
