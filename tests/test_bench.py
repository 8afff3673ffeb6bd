"""`semclip bench`: every phase measured and printed (tiny config and counts; no targets)."""

from __future__ import annotations

import math

import pytest

from semclip import FitConfig
from semclip.cli import main
from semclip.eval.bench import format_bench, run_bench

LABELS = (
    "(a) open_clip encode_image",
    "(b) DualPathEncoder",
    "(c) SemclipModel.predict",
    "(d) fine-tune, 8× augmented shots",
    "bare dual-path forward, same shots ×8",
    "(d) fine-tune, no augmentation",
    "model load",
    "b/a =",
    "c/a =",
    "d/backbone, augmented",
    "d/backbone, plain",
    "RANDOM WEIGHTS",
    "PNG bytes → rows",
    "target ≤ 1.2",
    "target ≤ 1.35",
    "no GPU in this run: no GPU figure",
)


@pytest.mark.slow
def test_run_bench_measures_every_phase() -> None:
    result = run_bench(
        "semclip-tiny",
        None,
        "cpu",
        batch_size=4,
        n_images=6,
        shots=1,
        n_classes=3,
        image_size=96,
        fit_config=FitConfig(min_steps=4, max_steps=4),
    )
    p = result.phases
    assert set(p) == {
        "encode_image",
        "dual_path",
        "predict",
        "finetune_aug",
        "forward_aug",
        "finetune_plain",
        "forward_plain",
    }
    assert p["encode_image"].items == p["dual_path"].items == p["predict"].items == 6
    assert p["finetune_aug"].items == p["forward_aug"].items == 3 * 8
    assert p["finetune_plain"].items == p["forward_plain"].items == 3
    for phase in p.values():
        assert phase.seconds > 0 and phase.peak_mb > 0 and phase.delta_mb >= 0
    assert result.load_seconds > 0 and result.device == "cpu" and not result.autocast
    assert all(math.isfinite(v) and v > 0 for v in result.ratios().values())
    text = format_bench(result)
    for label in LABELS:
        assert label in text, label


@pytest.mark.slow
def test_cli_bench_prints_all_figures(capsys: pytest.CaptureFixture) -> None:
    args = ["bench", "--backbone", "semclip-tiny", "--device", "cpu", "--batch-size", "4"]
    args += ["--n-images", "4", "--shots", "1", "--classes", "2", "--image-size", "96"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    for label in LABELS:
        assert label in printed, label


def test_cli_bench_rejects_bad_counts(capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "--n-images", "0"]) == 2
    assert "--n-images must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_compiled_phases_and_targets() -> None:
    """--compile measures (b) and (c) again through torch.compile, its compile time apart."""
    result = run_bench(
        "semclip-tiny",
        None,
        "cpu",
        batch_size=4,
        n_images=5,
        shots=1,
        n_classes=2,
        image_size=96,
        fit_config=FitConfig(min_steps=2, max_steps=2),
        compile=True,
    )
    p = result.phases
    assert p["dual_path_compiled"].items == p["predict_compiled"].items == 5
    assert result.compile_seconds is not None and result.compile_seconds > 0
    ratios = result.ratios()
    assert ratios["b_compiled/a"] > 0 and ratios["c_compiled/a"] > 0
    text = format_bench(result)
    assert "(b) DualPathEncoder, torch.compile" in text and "torch.compile:" in text
    assert "b(compiled)/a" in text


def test_cli_bench_refuses_cuda_without_a_gpu(capsys: pytest.CaptureFixture) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["bench", "--device", "cuda", "--n-images", "1"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_cli_bench_rejects_a_negative_batch(capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "--batch-size", "-1"]) == 2
    assert "--batch-size must be >= 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("backbone", "applies"),
    [("ViT-B-16-plus-240 [RANDOM WEIGHTS (not pretrained)]", True), ("semclip-tiny [x]", False)],
)
def test_bench_judges_only_the_backbone_its_targets_are_for(backbone: str, applies: bool) -> None:
    """Issue 11: the targets are ViT-B-16-plus-240's; another backbone gets no verdict."""
    from semclip.eval.bench import BenchResult, Phase

    names = ("encode_image", "dual_path", "predict", "finetune_aug", "forward_aug")
    phases = {n: Phase(n, 8, 1.0 + i, 100.0, 1.0) for i, n in enumerate(names)}
    phases |= {n: Phase(n, 8, 1.0, 100.0, 1.0) for n in ("finetune_plain", "forward_plain")}
    result = BenchResult(backbone, "cpu", False, 8, 240, 240, 2, 1.0, phases)

    text = format_bench(result)

    # b/a = 2.0 and c/a = 3.0: both over the CPU targets
    assert ("NOT met" in text) is applies
    assert ("target not applicable: set for ViT-B-16-plus-240" in text) is not applies
