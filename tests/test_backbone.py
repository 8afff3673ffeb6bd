"""Backbone loading: random, checkpoint file, local-dir folder, and one clear error per failure."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from semclip.backbone import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    BackboneError,
    load_backbone,
    save_backbone_dir,
)
from semclip.fingerprint import state_sha256


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A checkpoint file the test writes itself: tiny weights, changed so they are not random."""
    backbone = load_backbone("semclip-tiny", None, "cpu")
    state = backbone.model.state_dict()
    with torch.no_grad():
        for value in state.values():
            if value.is_floating_point():
                value.add_(0.01)
    path = tmp_path_factory.mktemp("ckpt") / "tiny_open_clip.pt"
    torch.save({"state_dict": state}, path)
    backbone.model.load_state_dict(state)
    return path, state_sha256(backbone.model)


@pytest.mark.slow
def test_random_backbone_is_flagged_and_reproducible(caplog: pytest.LogCaptureFixture) -> None:
    first = load_backbone("semclip-tiny", None, "cpu")
    second = load_backbone("semclip-tiny", None, "cpu")
    assert first.random_weights and "RANDOM WEIGHTS" in first.describe()
    assert "RANDOM WEIGHTS" in caplog.text
    assert state_sha256(first.model) == state_sha256(second.model)
    assert first.image_size == 64
    assert not any(p.requires_grad for p in first.model.parameters())


@pytest.mark.slow
def test_checkpoint_file_loads_its_weights(tiny_checkpoint: tuple[Path, str]) -> None:
    path, expected = tiny_checkpoint
    backbone = load_backbone("semclip-tiny", str(path), "cpu")
    assert not backbone.random_weights
    assert backbone.pretrained == str(path)
    assert state_sha256(backbone.model) == expected


@pytest.mark.slow
def test_local_dir_round_trip(tmp_path: Path, tiny_checkpoint: tuple[Path, str]) -> None:
    path, expected = tiny_checkpoint
    source = load_backbone("semclip-tiny", str(path), "cpu")
    save_backbone_dir(source, tmp_path / "bb")
    loaded = load_backbone(f"local-dir:{tmp_path / 'bb'}", None, "cpu")
    assert state_sha256(loaded.model) == expected
    assert loaded.image_size == source.image_size
    assert loaded.mean == source.mean


@pytest.mark.slow
def test_local_dir_refuses_pretrained(tmp_path: Path) -> None:
    save_backbone_dir(load_backbone("semclip-tiny", None, "cpu"), tmp_path / "bb")
    with pytest.raises(BackboneError, match="pretrained=None"):
        load_backbone(f"local-dir:{tmp_path / 'bb'}", "laion400m_e32", "cpu")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "backbone folder not found"),
        ("no_config", "has no open_clip_config.json"),
        ("no_weights", "has no weights file"),
    ],
)
def test_local_dir_errors(tmp_path: Path, setup: str, message: str) -> None:
    folder = tmp_path / "bb"
    if setup != "missing":
        save_backbone_dir(load_backbone("semclip-tiny", None, "cpu"), folder)
        victim = "open_clip_config.json" if setup == "no_config" else "open_clip_model.safetensors"
        (folder / victim).unlink()
    with pytest.raises(BackboneError, match=message):
        load_backbone(f"local-dir:{folder}", None, "cpu")


def test_missing_checkpoint_file(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match="checkpoint file not found"):
        load_backbone("semclip-tiny", str(tmp_path / "nope.pt"), "cpu")


@pytest.mark.slow
def test_checkpoint_of_another_architecture(
    tmp_path: Path, tiny_checkpoint: tuple[Path, str]
) -> None:
    state = torch.load(tiny_checkpoint[0])["state_dict"]
    state["visual.proj"] = torch.zeros(128, 32)  # a different embedding width
    path = tmp_path / "other.pt"
    torch.save(state, path)
    with pytest.raises(BackboneError, match="does not fit architecture"):
        load_backbone("semclip-tiny", str(path), "cpu")


def test_corrupt_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError, match=str(path)):
        load_backbone("semclip-tiny", str(path), "cpu")


def test_unknown_tag_or_file() -> None:
    with pytest.raises(BackboneError, match="neither a pretrained tag"):
        load_backbone("semclip-tiny", "laion9000", "cpu")


def test_unknown_model_name() -> None:
    with pytest.raises(BackboneError, match="unknown open_clip model"):
        load_backbone("ViT-Q-99", None, "cpu")


@pytest.mark.slow
def test_default_tag_without_network_says_how_to_work_offline(tmp_path: Path) -> None:
    """A fresh interpreter, hub offline and an empty cache: the tag cannot be had."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    code = (
        "from semclip.backbone import load_backbone, BackboneError\n"
        "try:\n    load_backbone()\nexcept BackboneError as exc:\n    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    assert DEFAULT_PRETRAINED in out and DEFAULT_MODEL in out
    assert "--pretrained" in out and "local-dir:" in out and "semclip-tiny" in out


def test_hub_tag_fails_in_seconds_when_the_hub_cannot_be_reached(unreachable_hub: str) -> None:
    """huggingface_hub alone retries for about a minute; the probe answers at once."""
    start = time.monotonic()
    with pytest.raises(BackboneError) as info:
        load_backbone(DEFAULT_MODEL, DEFAULT_PRETRAINED, "cpu")
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert unreachable_hub.removeprefix("http://") in message
    for option in (
        "--pretrained",
        "--backbone local-dir:",
        "SEMCLIP_BACKBONE",
        "SEMCLIP_PRETRAINED",
    ):
        assert option in message
