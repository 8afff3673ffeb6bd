"""The active-learning measurement on the tiny random backbone: protocol and bookkeeping, not
quality (a random backbone's accuracy means nothing; the report says so)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semclip.backbone import Backbone
from semclip.cli import main
from semclip.config import FitConfig
from semclip.data import Dataset
from semclip.eval.active import ARMS, ActiveLearningConfig, run_active_learning

FAST = FitConfig(augment=False, min_steps=5, max_steps=5, cv_folds=2, membank=False)


@pytest.mark.slow
def test_both_arms_confirm_the_same_number_of_images(
    synth_dataset: Dataset, tiny_backbone: Backbone
) -> None:
    config = ActiveLearningConfig(seeds=(0, 1), rounds=1, budget=3, test_fraction=0.3, fit=FAST)
    result = run_active_learning(synth_dataset, tiny_backbone, config)

    assert result.random_backbone and "RANDOM-WEIGHT BACKBONE" in result.markdown()
    n_classes = len(synth_dataset.classes)
    assert result.n_test + result.n_pool == len(synth_dataset)
    for arm in ARMS:
        assert set(result.curves[arm]) == {0, 1}
        for seed in (0, 1):
            rounds = result.curves[arm][seed]
            assert len(rounds) == 2  # the first support, then 1 round
            assert all(0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["f1"] <= 1.0 for r in rounds)
            assert sum(result.picked[arm][seed].values()) == 3  # same budget per arm
    for seed in (0, 1):  # round 0 is one model, shared by both arms
        assert result.curves["review"][seed][0] == result.curves["random"][seed][0]
    summary = result.summary()
    gains = [
        a - b
        for a, b in zip(
            result.final("review", "accuracy"), result.final("random", "accuracy"), strict=True
        )
    ]
    assert summary["gain.accuracy"][0] == sum(gains) / len(gains)
    assert f"{1 * n_classes + 3} confirmed images per arm" in result.markdown()


@pytest.mark.slow
def test_eval_al_command_writes_json_and_markdown(synth_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "al"
    code = main(
        [
            "eval-al",
            "--data",
            str(synth_dir),
            "--out",
            str(out),
            "--seeds",
            "1",
            "--rounds",
            "1",
            "--budget",
            "2",
            "--no-augment",
            "--max-steps",
            "5",
            "--backbone",
            "semclip-tiny",
            "--pretrained",
            "none",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    data = json.loads((out / "active_learning.json").read_text())
    assert data["random_backbone"] is True and data["config"]["budget"] == 2
    assert set(data["curves"]) == set(ARMS)
    assert "RANDOM-WEIGHT BACKBONE" in (out / "active_learning.md").read_text()
