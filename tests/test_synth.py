"""Synthetic SEM data: determinism, ground-truth masks, data set layout and the CLI."""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from semclip.cli import synth_cmd
from semclip.synth import (
    DEFAULT_COUNTS,
    DEFAULT_STYLES,
    HELDOUT_STYLES,
    LABELS,
    PATTERNS,
    STYLES,
    generate_dataset,
    render_sample,
    sample_rng,
)
from semclip.synth.patterns import CLASSIC_PATTERNS
from semclip.synth.styles import heldout_only_patterns, pretraining_patterns

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


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize("label", DEFECT_LABELS)
def test_masks_hold_over_many_samples(label: str) -> None:
    for i in range(12):
        s = render_sample(label, sample_rng(11, label, i), size=128)
        assert 10 <= s.mask.sum() < 0.5 * s.mask.size, f"{label} #{i}: mask area {s.mask.sum()}"


@pytest.mark.slow
@pytest.mark.parametrize("label", DEFECT_LABELS)
@pytest.mark.parametrize("style", ["classic", "default"])
def test_defect_is_visible_inside_mask_and_not_outside(label: str, style: str) -> None:
    """Same scene, imaging and noise with and without the defect: compare pixel by pixel."""
    for i in range(4):
        with_defect = render_sample(label, sample_rng(5, label, i), style=style)
        without = render_sample(label, sample_rng(5, label, i), with_defect=False, style=style)
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


@pytest.mark.slow
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
        assert f.readline().strip() == "image,label,mask,group,pattern,style"
    assert len(rows) == sum(SMALL.values())
    assert {r["label"] for r in rows} == set(LABELS)
    for r in rows:
        assert r["image"] == f"images/{r['label']}/{Path(r['image']).name}"
        image = np.asarray(Image.open(out / r["image"]))
        assert image.shape == (64, 64) and image.dtype == np.uint8
        assert r["group"].startswith("W4-") and r["pattern"] in PATTERNS
        assert r["style"] == "classic", "the library's default: the original generator"
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
    assert meta["style"] == "classic" and meta["styles"] == ["classic"]
    assert meta["patterns"] == sorted(CLASSIC_PATTERNS)


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


@pytest.mark.slow
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


# --- styles -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("style", sorted(STYLES))
def test_every_style_renders_every_class_with_a_true_mask(style: str) -> None:
    for label in LABELS:
        for i in range(3):
            s = render_sample(label, sample_rng(4, label, i), size=96, style=style, databar="style")
            assert s.style == style and s.pattern in STYLES[style].patterns
            assert s.mask.any() == (label != "good"), f"{style}/{label} #{i}"
            assert s.mask.sum() < 0.5 * s.mask.size
            if s.databar_rows:
                band = (
                    slice(0, s.databar_rows)
                    if s.databar_side == "top"
                    else slice(-s.databar_rows, None)
                )
                assert not s.mask[band].any()


@pytest.mark.parametrize("style", sorted(STYLES))
def test_style_render_is_deterministic_per_seed(style: str) -> None:
    a = render_sample("hole", sample_rng(1, "hole", 3), size=64, style=style, databar="style")
    b = render_sample("hole", sample_rng(1, "hole", 3), size=64, style=style, databar="style")
    c = render_sample("hole", sample_rng(2, "hole", 3), size=64, style=style, databar="style")
    assert a.image.tobytes() == b.image.tobytes() and np.array_equal(a.mask, b.mask)
    assert a.image.tobytes() != c.image.tobytes()


def test_heldout_style_is_apart_from_the_pretraining_styles() -> None:
    assert HELDOUT_STYLES == ("tool-b",) and "tool-b" not in DEFAULT_STYLES
    held = STYLES["tool-b"]
    assert not set(held.patterns) & set(pretraining_patterns()), "other pattern families"
    assert set(held.patterns) <= set(heldout_only_patterns())
    assert held.defects.variant_prob > 0, "defect appearance variants"
    assert all(STYLES[n].defects.variant_prob == 0 for n in DEFAULT_STYLES)


def _spectral_slope(noise: np.ndarray) -> float:
    """Log-log slope of the radially averaged power spectrum of a noise image."""
    power = np.abs(np.fft.fft2(noise - noise.mean())) ** 2
    fy, fx = np.meshgrid(*(np.fft.fftfreq(n) for n in noise.shape), indexing="ij")
    f = np.hypot(fy, fx)
    keep = (f > 0.02) & (f < 0.45)
    return float(np.polyfit(np.log(f[keep]), np.log(power[keep] + 1e-12), 1)[0])


def _noise_only(style: str, seed: int) -> np.ndarray:
    """What a style's detector adds to a flat signal: pixel noise, no charging or line offsets."""
    from dataclasses import replace

    from semclip.synth.effects import detect, draw_params

    rng = np.random.default_rng(seed)
    params = draw_params(rng, 1.0, STYLES[style].imaging)
    params = replace(params, charge_ramp=0.0, charge_blob=0.0, line_noise=0.0, dose=50.0)
    return detect(np.full((128, 128), 0.3, np.float32), params, rng)


def test_styles_differ_in_noise_spectrum_and_edge_polarity() -> None:
    """tool-b's noise is 1/f (steep spectrum), classic's white; tool-b inverts polarity."""
    classic = np.median([_spectral_slope(_noise_only("classic", k)) for k in range(6)])
    held = np.median([_spectral_slope(_noise_only("tool-b", k)) for k in range(6)])
    assert abs(classic) < 0.3, f"white noise has a flat spectrum, slope {classic:.2f}"
    assert held < -1.0, f"1/f noise falls off, slope {held:.2f}"

    def feature_minus_space(style: str) -> float:
        """Mean grey of features minus space, on the noise-free signal of line scenes."""
        from semclip.synth.effects import draw_params, surface_signal
        from semclip.synth.patterns import make_pattern

        gaps = []
        for k in range(20):
            rng = np.random.default_rng(k)
            params = draw_params(rng, 0.5, STYLES[style].imaging)
            scene = make_pattern("line_h", rng, 96, 96, 0.5)
            signal = surface_signal(scene, params)
            gaps.append(signal[scene.material > 0.9].mean() - signal[scene.material < 0.1].mean())
        return float(np.mean(np.array(gaps) > 0))

    assert feature_minus_space("classic") == 1.0, "classic features are always brighter"
    assert feature_minus_space("tool-b") < 0.5, "tool-b mostly images features darker"


def test_unknown_style_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="choose one of .*tool-b"):
        render_sample("good", np.random.default_rng(0), style="tool-c")
    with pytest.raises(ValueError, match="unknown style"):
        generate_dataset(tmp_path, counts={"good": 1}, style="tool-c")
    parser = argparse.ArgumentParser()
    synth_cmd.register(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["synth", "--out", "x", "--style", "tool-c"])
    assert "tool-b" in parser._subparsers._group_actions[0].choices["synth"].format_help()


def test_cli_style_selects_the_style_and_records_it(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    synth_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["synth", "--out", str(tmp_path), "--counts", "good=2,hole=2", "--size", "64"]
        + ["--style", "tool-b"]
    )
    assert args.func(args) == 0
    rows = _manifest(tmp_path)
    assert {r["style"] for r in rows} == {"tool-b"}
    assert {r["pattern"] for r in rows} <= set(STYLES["tool-b"].patterns)
    meta = json.loads((tmp_path / "synth.json").read_text())
    assert meta["style"] == "tool-b" and meta["styles"] == ["tool-b"]
    assert meta["databar"] == "top" and meta["databar_rows"] == 6, "tool-b's one databar"
    mixed = _manifest(
        generate_dataset(
            tmp_path / "mix", counts={"good": 12}, size=64, databar="style", style="default"
        )
    )
    assert {r["style"] for r in mixed} <= set(DEFAULT_STYLES) and len(
        {r["style"] for r in mixed}
    ) > 1


@pytest.mark.slow
def test_pretraining_archive_never_holds_the_heldout_style(tmp_path: Path) -> None:
    from semclip.pretrain.archive import synthetic_archive
    from semclip.pretrain.config import SynthArchiveConfig

    spec = SynthArchiveConfig(seed=5, per_class=6, size=48)
    folder = synthetic_archive(tmp_path / "archive", spec, exclude=(), progress=False)
    rows = _manifest(folder)
    assert len(rows) == 6 * len(LABELS)
    assert {r["style"] for r in rows} <= set(DEFAULT_STYLES)
    assert not {r["style"] for r in rows} & set(HELDOUT_STYLES)
    assert not {r["pattern"] for r in rows} & set(heldout_only_patterns())
    meta = json.loads((folder / "synth.json").read_text())
    assert meta["styles"] == list(DEFAULT_STYLES)
    with pytest.raises(ValueError, match="held out"):
        synthetic_archive(tmp_path / "b", SynthArchiveConfig(style="tool-b"), exclude=())
    with pytest.raises(ValueError, match="held-out styles only"):
        synthetic_archive(tmp_path / "c", SynthArchiveConfig(patterns=("trench",)), exclude=())
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    ("label", "index", "size", "side", "digest"),
    [
        ("particle", 0, 256, "bottom", "5c4e5d9a64719eb7"),
        ("good", 1, 128, "top", "13c1858de805dd5e"),
    ],
)
def test_classic_style_is_the_original_generator(
    label: str, index: int, size: int, side: str, digest: str
) -> None:
    """Digests taken from the generator before styles existed: classic renders identical bytes."""
    s = render_sample(label, sample_rng(3, label, index), size=size, databar=side)
    assert hashlib.sha256(s.image.tobytes() + s.mask.tobytes()).hexdigest()[:16] == digest
