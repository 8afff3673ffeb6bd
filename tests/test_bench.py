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
