"""Pretraining recipes sized by device: one packaged file, both recipes valid, CLI selection."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import open_clip
import pytest

from semclip.backbone import register_model_configs
from semclip.cli import pretrain_cmd
from semclip.pretrain.config import (
    PretrainConfig,
    SynthArchiveConfig,
    auto_recipe_name,
    get_recipe,
    load_recipes,
)
from semclip.synth import HELDOUT_STYLES


def test_recipe_file_holds_a_cpu_and_a_gpu_recipe() -> None:
    recipes = load_recipes()
    assert set(recipes) == {"cpu", "gpu"}
    for recipe in recipes.values():
        assert recipe.description
        assert recipe.pretrain.warmup_steps < recipe.pretrain.steps
        assert recipe.archive.style not in HELDOUT_STYLES
        assert PretrainConfig.from_dict(recipe.pretrain.to_dict()) == recipe.pretrain


def test_cpu_recipe_is_make_backbone_and_gpu_is_larger() -> None:
    cpu, gpu = get_recipe("cpu"), get_recipe("gpu")
    assert cpu.pretrain == PretrainConfig() and cpu.archive == SynthArchiveConfig()
    register_model_configs()
    small = open_clip.get_model_config(cpu.pretrain.model)
    base = open_clip.get_model_config(gpu.pretrain.model)
    assert small is not None and base is not None, "both models are packaged configs"
    for key in ("width", "layers", "image_size"):
        assert base["vision_cfg"][key] > small["vision_cfg"][key]
    assert gpu.pretrain.steps > cpu.pretrain.steps
    assert (
        gpu.pretrain.steps * gpu.pretrain.batch_size > cpu.pretrain.steps * cpu.pretrain.batch_size
    )
    assert gpu.archive.per_class > cpu.archive.per_class


def test_auto_recipe_follows_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert auto_recipe_name("cuda:0") == "gpu" and auto_recipe_name("cpu") == "cpu"
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert get_recipe().name == "gpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert get_recipe().name == "cpu"
    with pytest.raises(ValueError, match="choose one of"):
        get_recipe("tpu")


def test_recipe_file_rejects_unknown_fields(tmp_path: Path) -> None:
    path = tmp_path / "recipes.yaml"
    path.write_text("cpu:\n  pretrain:\n    stepz: 3\n")
    with pytest.raises(ValueError, match="stepz"):
        load_recipes(path)


def test_cli_recipe_choice_and_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen = {}

    class Captured(Exception):
        """Raised by the stand-in trainer once it has seen the configs."""

    def fake_pretrain(config: PretrainConfig, **kwargs: object) -> None:
        seen.update(config=config, synth=kwargs["synth"])
        raise Captured

    monkeypatch.setattr(pretrain_cmd, "pretrain", fake_pretrain)
    parser = argparse.ArgumentParser()
    pretrain_cmd.register(parser.add_subparsers(dest="command"))
    assert "recipes.yaml" in parser._subparsers._group_actions[0].choices["pretrain"].format_help()
    base = ["pretrain", "--work-dir", str(tmp_path), "--out", str(tmp_path / "b")]
    with pytest.raises(Captured):
        args = parser.parse_args([*base, "--recipe", "gpu", "--steps", "7"])
        args.func(args)
    gpu = get_recipe("gpu")
    assert seen["config"] == replace(gpu.pretrain, steps=7, warmup_steps=7)
    assert seen["synth"] == gpu.archive
    with pytest.raises(Captured):
        args = parser.parse_args([*base, "--device", "cpu", "--archive-per-class", "3"])
        args.func(args)
    assert seen["config"] == get_recipe("cpu").pretrain
    assert seen["synth"] == replace(SynthArchiveConfig(), per_class=3)
