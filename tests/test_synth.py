"""Synthetic SEM data: determinism, ground-truth masks, data set layout and the CLI."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from semclip.cli import synth_cmd
from semclip.synth import (
    DEFAULT_COUNTS,
    LABELS,
    PATTERNS,
    generate_dataset,
    render_sample,
    sample_rng,
)

DEFECT_LABELS = [label for label in LABELS if label != "good"]
SMALL = {label: 2 for label in LABELS}


def _files(root: Path) -> dict[str, bytes]:
    """Every file under root, by relative path, with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _manifest(root: Path) -> list[dict[str, str]]:
    with (root / "manifest.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_default_counts_are_the_papers_balance() -> None:
    assert DEFAULT_COUNTS == {
        "good": 226,
        "bridge": 59,
        "copper_residue": 141,
        "hole": 230,
        "infilm": 77,
        "particle": 455,
        "scratch": 144,
    }
    assert set(LABELS) == set(DEFAULT_COUNTS)


@pytest.mark.parametrize("label", LABELS)
def test_render_is_deterministic_per_seed(label: str) -> None:
    a = render_sample(label, np.random.default_rng(7))
    b = render_sample(label, np.random.default_rng(7))
    c = render_sample(label, np.random.default_rng(8))
    assert a.image.tobytes() == b.image.tobytes()
    assert np.array_equal(a.mask, b.mask)
    assert a.image.tobytes() != c.image.tobytes()


@pytest.mark.parametrize("label", LABELS)
@pytest.mark.parametrize("side", ["top", "bottom"])
def test_sample_shapes_masks_and_databar(label: str, side: str) -> None:
    s = render_sample(label, sample_rng(3, label, 0), size=128, databar=side, databar_frac=0.1)
    assert s.image.shape == s.mask.shape == (128, 128)
    assert s.image.dtype == np.uint8 and s.mask.dtype == bool
    assert s.databar_rows == 13 and s.databar_side == side and s.label == label
    band = slice(0, 13) if side == "top" else slice(128 - 13, 128)
    assert not s.mask[band].any(), "the defect must stay off the databar"
    assert s.image[band].mean() < s.image.mean(), "the databar is a dark band"
    assert s.image[band].max() >= 250, "with white text"
    assert s.mask.any() == (label != "good")


def test_no_databar() -> None:
    s = render_sample("particle", sample_rng(0, "particle", 0), databar="none")
    assert s.databar_rows == 0 and s.databar_side == "none"
    assert s.image.shape == (256, 256)


@pytest.mark.parametrize("label", DEFECT_LABELS)
def test_masks_hold_over_many_samples(label: str) -> None:
    for i in range(12):
        s = render_sample(label, sample_rng(11, label, i), size=128)
        assert 10 <= s.mask.sum() < 0.5 * s.mask.size, f"{label} #{i}: mask area {s.mask.sum()}"


@pytest.mark.parametrize("label", DEFECT_LABELS)
def test_defect_is_visible_inside_mask_and_not_outside(label: str) -> None:
    """Same scene, imaging and noise with and without the defect: compare pixel by pixel."""
    for i in range(4):
        with_defect = render_sample(label, sample_rng(5, label, i))
        without = render_sample(label, sample_rng(5, label, i), with_defect=False)
        assert np.array_equal(with_defect.mask, without.mask)
        diff = np.abs(with_defect.image.astype(int) - without.image.astype(int))
        mask = with_defect.mask
        assert diff[mask].mean() > 5.0, f"{label} #{i}: defect barely changes its mask"
        far = ~ndimage.binary_dilation(mask, iterations=3)  # past blur and outline tolerance
        assert diff[far].mean() < 0.3, f"{label} #{i}: defect visible outside its mask"
        assert np.percentile(diff[far], 99.9) <= 12


def test_good_has_no_defect() -> None:
    s = render_sample("good", sample_rng(0, "good", 1))
    clean = render_sample("good", sample_rng(0, "good", 1), with_defect=False)
    assert not s.mask.any()
    assert np.array_equal(s.image, clean.image)


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_every_pattern_renders_with_every_defect(pattern: str) -> None:
    for label in LABELS:
        s = render_sample(label, sample_rng(2, label, 0), size=96, pattern=pattern)
        assert s.pattern == pattern
        assert s.mask.any() == (label != "good")
        assert s.image.std() > 5, "a patterned, not flat, background"


def test_bad_arguments_say_what_to_use() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="choose one of"):
        render_sample("crack", rng)
    with pytest.raises(ValueError, match="unknown pattern"):
        render_sample("good", rng, pattern="hexagons")
    with pytest.raises(ValueError, match="databar"):
        render_sample("good", rng, databar="left")


def test_dataset_layout_manifest_and_metadata(tmp_path: Path) -> None:
    out = generate_dataset(tmp_path / "ds", counts=SMALL, seed=4, size=64)
    rows = _manifest(out)
    with (out / "manifest.csv").open() as f:
        assert f.readline().strip() == "image,label,mask,group,pattern"
    assert len(rows) == sum(SMALL.values())
    assert {r["label"] for r in rows} == set(LABELS)
    for r in rows:
        assert r["image"] == f"images/{r['label']}/{Path(r['image']).name}"
        image = np.asarray(Image.open(out / r["image"]))
        assert image.shape == (64, 64) and image.dtype == np.uint8
        assert r["group"].startswith("W4-") and r["pattern"] in PATTERNS
        if r["label"] == "good":
            assert r["mask"] == ""
            continue
        mask = np.asarray(Image.open(out / r["mask"]))
        assert r["mask"] == r["image"].replace("images/", "masks/", 1)
        assert set(np.unique(mask)) == {0, 255}
        assert not mask[-5:].any(), "databar rows (8 % of 64 = 5) stay clear"
    assert not (out / "masks" / "good").exists()
    meta = json.loads((out / "synth.json").read_text())
    assert meta["seed"] == 4 and meta["size"] == 64 and meta["counts"] == SMALL
    assert meta["databar"] == "bottom" and meta["databar_rows"] == 5
    assert sorted(meta["patterns"]) == sorted(PATTERNS)


def test_dataset_is_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    counts = {"good": 2, "hole": 2}
    a = _files(generate_dataset(tmp_path / "a", counts=counts, seed=1, size=64))
    b = _files(generate_dataset(tmp_path / "b", counts=counts, seed=1, size=64))
    c = _files(generate_dataset(tmp_path / "c", counts=counts, seed=2, size=64))
    assert a == b
    assert a["images/hole/hole_00001.png"] != c["images/hole/hole_00001.png"]


def test_each_image_depends_only_on_seed_label_and_index(tmp_path: Path) -> None:
    full = _files(generate_dataset(tmp_path / "full", counts=SMALL, seed=9, size=64))
    subset = _files(generate_dataset(tmp_path / "sub", counts={"particle": 1}, seed=9, size=64))
    for name in ("images/particle/particle_00000.png", "masks/particle/particle_00000.png"):
        assert subset[name] == full[name]


def test_sixteen_bit_output(tmp_path: Path) -> None:
    out = generate_dataset(tmp_path, counts={"scratch": 1}, size=64, bit_depth=16)
    image = np.asarray(Image.open(out / "images/scratch/scratch_00000.png"))
    assert image.dtype == np.uint16 and image.max() > 255
    eight = render_sample("scratch", sample_rng(0, "scratch", 0), size=64)
    assert eight.image.dtype == np.uint8
    assert json.loads((out / "synth.json").read_text())["bit_depth"] == 16


def test_cli_scale_run(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    synth_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["synth", "--out", str(tmp_path), "--scale", "0.005", "--size", "48", "--seed", "3"]
        + ["--wafers", "300"]
    )
    assert args.func(args) == 0
    expected = {label: max(1, round(n * 0.005)) for label, n in DEFAULT_COUNTS.items()}
    rows = _manifest(tmp_path)
    assert {label: sum(r["label"] == label for r in rows) for label in LABELS} == expected
    meta = json.loads((tmp_path / "synth.json").read_text())
    assert meta["seed"] == 3 and meta["wafers"] == 300


def test_cli_parses_counts_patterns_and_rejects_typos(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    synth_cmd.register(parser.add_subparsers(dest="command"))
    argv = ["synth", "--out", str(tmp_path), "--counts", "good=2,bridge=1"]
    argv += ["--patterns", "line_h,contacts", "--databar", "top", "--bit-depth", "16"]
    args = parser.parse_args(argv)
    assert args.counts == {"good": 2, "bridge": 1}
    assert args.patterns == ["line_h", "contacts"]
    assert args.databar == "top" and args.bit_depth == 16
    with pytest.raises(SystemExit):
        parser.parse_args(["synth", "--out", "x", "--counts", "goood=2"])
    with pytest.raises(SystemExit):
        parser.parse_args(["synth", "--out", "x", "--patterns", "line_d"])


@pytest.mark.parametrize("label", DEFECT_LABELS)
def test_local_signal_update_matches_full_render(label: str) -> None:
    """The speed-up that re-renders only around the defect must not change a pixel."""
    from semclip.synth.defects import apply_defect
    from semclip.synth.effects import draw_params, surface_signal, surface_signal_update
    from semclip.synth.patterns import make_pattern

    rng = np.random.default_rng(21)
    scene = make_pattern("manhattan", rng, 120, 128, 0.5)
    params = draw_params(rng, 0.5)
    after = apply_defect(label, scene, rng, 0.5, params.detector_angle)
    clean = surface_signal(scene, params)
    np.testing.assert_allclose(
        surface_signal_update(clean, scene, after, params), surface_signal(after, params), atol=1e-6
    )


def test_wafers_spread_the_groups_for_group_aware_draws(tmp_path: Path) -> None:
    counts = {"good": 40, "bridge": 40}
    one_lot = _manifest(generate_dataset(tmp_path / "lot", counts=counts, seed=3, size=32))
    assert {r["group"] for r in one_lot} <= {f"W3-{w:02d}" for w in range(25)}
    many = generate_dataset(tmp_path / "many", counts=counts, seed=3, size=32, wafers=400)
    groups = {r["group"] for r in _manifest(many)}
    assert len(groups) > 25, "80 images over 400 wafers land on far more than one lot's 25"
    assert all(g.startswith("W3-") and len(g) == len("W3-000") for g in groups)
    assert json.loads((many / "synth.json").read_text())["wafers"] == 400
    with pytest.raises(ValueError, match="wafers"):
        generate_dataset(tmp_path / "none", counts=counts, wafers=0)
