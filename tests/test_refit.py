"""Refit rules: the content-hash split, the capped newest-first support, evaluation, the gate."""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from semclip.artifact import load_model
from semclip.backbone import BackboneError, load_backbone
from semclip.fingerprint import state_sha256
from semclip.io.bucket import open_bucket
from semclip.io.confirmed import read_confirmed
from semclip.metrics import classification_metrics
from semclip.refit.backbone import BackboneChoice, choose_backbone, load_chosen_backbone
from semclip.refit.decode import load_holdout, support_items
from semclip.refit.evaluate import HoldoutMetrics, evaluate
from semclip.refit.gate import GateConfig, gate
from semclip.refit.shots import RefitError, Shot, hash_shots, shots_from_frame
from semclip.refit.split import (
    exclude_trained,
    holdout_position,
    is_holdout,
    select_support,
    split_shots,
)

if TYPE_CHECKING:
    from conftest_pipeline import Kit

pytest_plugins = ["conftest_pipeline"]

T0 = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)


def _shot(label: str, i: int, hours: int = 0) -> Shot:
    sha = hashlib.sha256(f"{label}-{i}".encode()).hexdigest()
    return Shot(f"mem://{label}/{i}.png", label, T0 + dt.timedelta(hours=hours), sha256=sha)


def _metrics(f1: float | None, pixel: float | None = None) -> HoldoutMetrics:
    return HoldoutMetrics(10, 0, f1, f1, f1, f1, pixel, 3 if pixel is not None else 0)


# --------------------------------------------------------------------------- split


def test_split_depends_only_on_content_hash() -> None:
    shots = [_shot("good", i) for i in range(400)]
    train, holdout = split_shots(shots, 0.2)
    assert 0.14 < len(holdout) / len(shots) < 0.26
    # Same image, any other context (order, other shots, later confirmation): same side.
    again_train, again_holdout = split_shots(list(reversed(shots[:50])), 0.2)
    assert {s.sha256 for s in again_holdout} == {s.sha256 for s in holdout if s in shots[:50]}
    assert all(is_holdout(s.sha256, 0.2) for s in holdout)
    # Raising the fraction only moves images from train to hold-out.
    _, wider = split_shots(shots, 0.3)
    assert {s.sha256 for s in holdout} <= {s.sha256 for s in wider}
    assert holdout_position("0" * 64) == 0.0
    with pytest.raises(ValueError, match="no content hash"):
        split_shots([Shot("x", "good", T0)], 0.2)
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        is_holdout("a" * 64, 1.0)


def test_support_is_capped_per_class_newest_first() -> None:
    shots = [_shot("good", i, hours=i) for i in range(5)] + [
        _shot("bridge", i, i) for i in range(2)
    ]
    support = select_support(shots, cap_per_class=3)
    goods = [s for s in support if s.label == "good"]
    assert [s.image_uri for s in goods] == [f"mem://good/{i}.png" for i in (4, 3, 2)]
    assert sum(s.label == "bridge" for s in support) == 2
    with pytest.raises(RefitError, match="needs 'good'"):
        select_support([_shot("bridge", 0), _shot("hole", 0)], 5)
    with pytest.raises(RefitError, match="at least one defect class"):
        select_support([_shot("good", 0)], 5)


def test_exclude_trained_drops_images_a_model_was_fitted_on() -> None:
    holdout = [_shot("good", i) for i in range(3)]
    lineage = {"support": [{"sha256": holdout[1].sha256}, {"sha256": None}]}
    kept, dropped = exclude_trained(holdout, lineage)
    assert dropped == [holdout[1]] and kept == [holdout[0], holdout[2]]
    assert exclude_trained(holdout, None) == (holdout, [])


# --------------------------------------------------------------------------- gate


@pytest.mark.parametrize(
    ("candidate", "champion", "config", "promote", "words"),
    [
        (_metrics(0.80), _metrics(0.70), GateConfig(), True, "gain +0.1000"),
        (_metrics(0.71), _metrics(0.70), GateConfig(), True, "promoted"),  # exactly the gain
        (_metrics(0.705), _metrics(0.70), GateConfig(), False, "below the required"),
        (_metrics(0.70), _metrics(0.70), GateConfig(min_f1_gain=0.0), True, "promoted"),
        (_metrics(0.90, 0.60), _metrics(0.70, 0.65), GateConfig(), False, "pixel F1-max drops"),
        (_metrics(0.90, 0.63), _metrics(0.70, 0.65), GateConfig(), True, "pixel F1-max change"),
        (_metrics(0.90, 0.50), _metrics(0.70, None), GateConfig(), True, "promoted"),
        (
            _metrics(0.90, 0.60),
            _metrics(0.70, 0.65),
            GateConfig(max_pixel_f1_drop=0.1),
            True,
            "promoted",
        ),
        (_metrics(None), _metrics(None), GateConfig(), False, "no hold-out image"),
    ],
)
def test_gate(
    candidate: HoldoutMetrics,
    champion: HoldoutMetrics,
    config: GateConfig,
    promote: bool,
    words: str,
) -> None:
    decision = gate(candidate, champion, has_champion=True, config=config)
    assert decision.promote is promote and words in decision.reason


def test_gate_promotes_the_first_model_whatever_its_scores() -> None:
    decision = gate(_metrics(0.0), None, has_champion=False)
    assert decision.promote and "no champion yet" in decision.reason
    assert not gate(_metrics(0.9), None, has_champion=True).promote


# --------------------------------------------------------------------------- with images


def test_confirmed_shots_to_evaluation(kit: Kit, tmp_path: Path, small_model_dir: Path) -> None:
    fs, root = open_bucket(f"file://{tmp_path / 'bucket'}", create=True)
    kit.write_confirmed(fs, root, {"good": 2, "bridge": 2, "particle": 1})
    fs.pipe_file(
        f"{root}/confirmed/extra.csv",
        b"image_uri,label,mask_uri,confirmed_at,reviewer\n"
        b"confirmed/img/particle_0.png,particle,confirmed/mask/bad.png,2026-10-05,t\n",
    )
    fs.pipe_file(f"{root}/confirmed/mask/bad.png", b"\x89PNG broken")
    shots = shots_from_frame(read_confirmed(fs, root))
    assert shots[0].image_uri.endswith("particle_0.png")  # newest first (the re-review)
    hashed, problems = hash_shots(fs, shots)
    assert problems == [] and all(len(s.sha256 or "") == 64 for s in hashed)

    items, skipped = support_items(fs, hashed)
    assert len(items) == 4 and len(skipped) == 1 and "bad.png" in skipped[0]
    masks = {i.uri.rsplit("/", 1)[-1]: i.mask for i in items}
    assert masks["good_0.png"] is not None and not masks["good_0.png"].any()
    assert masks["bridge_0.png"].any()

    model = load_model(small_model_dir)
    holdout = load_holdout(fs, hashed)
    assert holdout.labels == ("good", "bridge")  # particle's only shot is unreadable
    metrics = evaluate(model, holdout)
    scores = model.score(list(holdout.images))
    predicted = [model.classes[int(np.argmax(s.probs))] for s in scores]
    expected = classification_metrics(
        [s.label for s in holdout.shots], predicted, ["good", "bridge"]
    )
    assert metrics.f1 == pytest.approx(expected["f1"])
    assert metrics.accuracy == pytest.approx(expected["accuracy"])
    assert metrics.n_images == 4 and metrics.n_masks == 2 and metrics.n_failed == 0
    assert metrics.pixel_f1_max is not None and 0.0 <= metrics.pixel_f1_max <= 1.0
    assert set(metrics.loggable("candidate")) >= {"candidate.f1", "candidate.pixel_f1_max"}

    no_masks = load_holdout(fs, [s for s in hashed if s.label == "good"])
    assert evaluate(model, no_masks).pixel_f1_max is None
    empty = evaluate(model, load_holdout(fs, []))
    assert empty.f1 is None and empty.n_images == 0


# --------------------------------------------------------------------------- backbone choice


def _choose(champion_dir: Path | None = None, **given: str) -> BackboneChoice:
    options = dict.fromkeys(
        ("param_backbone", "param_pretrained", "setting_backbone", "setting_pretrained")
    )
    return choose_backbone(**{**options, **given}, champion_dir=champion_dir, champion_version="1")


def test_refit_backbone_precedence_param_then_setting_then_champion(
    small_model_dir: Path, tmp_path: Path, tiny_checkpoint_file: Path
) -> None:
    by_param = _choose(
        small_model_dir, param_backbone="semclip-tiny", setting_backbone="ViT-B-16-plus-240"
    )
    assert (by_param.source, by_param.name, by_param.pretrained) == ("param", "semclip-tiny", None)
    lone_file = _choose(
        small_model_dir, param_pretrained=str(tiny_checkpoint_file), setting_backbone="semclip-tiny"
    )
    assert (lone_file.name, lone_file.pretrained) == ("semclip-tiny", str(tiny_checkpoint_file))
    by_setting = _choose(small_model_dir, setting_backbone="semclip-tiny")
    assert by_setting.source == "setting"
    champion = _choose(small_model_dir)
    assert champion.source == "champion" and champion.name.startswith("local-dir:")
    assert Path(champion.name.removeprefix("local-dir:")).parent == small_model_dir
    assert (champion.recorded_name, champion.random_weights) == ("semclip-tiny", True)
    assert "champion v1" in champion.describe()
    loaded = load_chosen_backbone(champion, "cpu")
    assert (loaded.name, loaded.random_weights) == ("semclip-tiny", True)
    assert state_sha256(loaded.model) == state_sha256(load_model(small_model_dir).backbone.model)


def test_refit_backbone_without_any_source_fails_naming_the_settings() -> None:
    with pytest.raises(RefitError) as info:
        _choose(None)
    for setting in ("SEMCLIP_BACKBONE", "SEMCLIP_PRETRAINED", "--param backbone"):
        assert setting in str(info.value)


def test_refit_backbone_hub_tag_fails_in_seconds_offline(unreachable_hub: str) -> None:
    start = time.monotonic()
    with pytest.raises(BackboneError, match="--param backbone=local-dir:"):
        _choose(None, setting_backbone="ViT-B-16-plus-240")  # implies the laion400m_e32 tag
    assert time.monotonic() - start < 10


@pytest.fixture
def tiny_checkpoint_file(tmp_path: Path) -> Path:
    """A checkpoint file of the tiny architecture (a lone --param pretrained names one)."""
    import torch

    path = tmp_path / "tiny.pt"
    torch.save({"state_dict": load_backbone("semclip-tiny", None, "cpu").model.state_dict()}, path)
    return path
