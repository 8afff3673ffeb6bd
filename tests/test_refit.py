"""Refit rules: the content-hash split, the capped newest-first support, evaluation, the gate."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import fsspec
import numpy as np
import pytest
from PIL import Image

from semclip.artifact import load_model
from semclip.backbone import BackboneError, load_backbone
from semclip.fingerprint import state_sha256
from semclip.io.bucket import open_bucket
from semclip.io.confirmed import read_confirmed
from semclip.metrics import classification_metrics
from semclip.refit.backbone import BackboneChoice, choose_backbone, load_chosen_backbone
from semclip.refit.decode import load_holdout, support_items
from semclip.refit.evaluate import HoldoutMetrics, evaluate
from semclip.refit.gate import (
    FIRST,
    HOLD,
    PROMOTE,
    GateConfig,
    GateDecision,
    _macro_f1,
    bootstrap_f1_gain,
    gate,
)
from semclip.refit.provenance import git_commit
from semclip.refit.shots import (
    RefitError,
    Shot,
    drop_label_conflicts,
    hash_shots,
    shots_from_frame,
    wafer_group,
)
from semclip.refit.split import (
    exclude_trained,
    holdout_position,
    is_holdout,
    select_support,
    split_shots,
)
from semclip.settings import DEFAULT_PATH_REGEX

if TYPE_CHECKING:
    from conftest_pipeline import Kit

    from semclip.registry.client import Registry

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


def test_same_bytes_with_two_labels_leave_the_support_together() -> None:
    a, b, c = _shot("particle", 0), _shot("good", 1), _shot("bridge", 2)
    copy = Shot("mem://elsewhere/copy.png", "scratch", T0, sha256=a.sha256)  # a's bytes
    agree = Shot("mem://elsewhere/same.png", "good", T0, sha256=b.sha256)  # b's, same label
    kept, conflicts = drop_label_conflicts([a, b, copy, c, agree])
    assert kept == [b, c, agree]
    (conflict,) = conflicts
    assert conflict.shots == (("mem://elsewhere/copy.png", "scratch"), (a.image_uri, "particle"))
    text = str(conflict)
    assert "mem://elsewhere/copy.png as 'scratch'" in text and "'particle'" in text
    assert conflict.to_dict()["sha256"] == a.sha256
    with pytest.raises(ValueError, match="no content hash"):
        drop_label_conflicts([Shot("x", "good", T0)])


# --------------------------------------------------------------------------- gate

CLASSES = ("good", "bridge", "scratch")


def _scored(
    truth: list[str],
    predicted: list[str],
    pixel: float | None = None,
    classes: tuple[str, ...] = CLASSES,
) -> HoldoutMetrics:
    """Hold-out metrics of per-image predictions, computed as ``evaluate`` does."""
    labels = tuple((["good"] if "good" in truth else []) + sorted(set(truth) - {"good"}))
    cls = classification_metrics(truth, predicted, list(labels))
    return HoldoutMetrics(
        len(truth),
        0,
        cls["accuracy"],
        cls["f1"],
        cls["precision"],
        cls["recall"],
        pixel,
        3 if pixel is not None else 0,
        labels,
        truth=tuple(truth),
        predicted=tuple(predicted),
        model_classes=classes,
    )


def _wrong(truth: list[str], n: int) -> list[str]:
    """``truth`` with its first ``n`` images predicted as the next class."""
    return [CLASSES[(CLASSES.index(t) + 1) % 3] if i < n else t for i, t in enumerate(truth)]


TRUTH = [label for label in CLASSES for _ in range(8)]  # 24 images, 8 per class


@pytest.mark.parametrize(
    ("candidate", "champion", "config", "decision", "words"),
    [
        # 12 images fixed: the whole interval lies well above the required gain.
        (
            _scored(TRUTH, TRUTH),
            _scored(TRUTH, _wrong(TRUTH, 12)),
            GateConfig(),
            "promote",
            "promoted",
        ),
        # One image fixed: +0.04 point gain, but the lower bound is at or below 0.
        (
            _scored(TRUTH, TRUTH),
            _scored(TRUTH, _wrong(TRUTH, 1)),
            GateConfig(),
            "hold",
            "lower bound",
        ),
        (_scored(TRUTH, TRUTH), _scored(TRUTH, TRUTH), GateConfig(), "hold", "below the required"),
        (
            _scored(TRUTH, TRUTH),
            _scored(TRUTH, TRUTH),
            GateConfig(min_f1_gain=0.0),
            "promote",
            "promoted",
        ),
        (
            _scored(TRUTH, TRUTH, 0.60),
            _scored(TRUTH, _wrong(TRUTH, 12), 0.65),
            GateConfig(),
            "hold",
            "pixel F1-max drops",
        ),
        (
            _scored(TRUTH, TRUTH, 0.63),
            _scored(TRUTH, _wrong(TRUTH, 12), 0.65),
            GateConfig(),
            "promote",
            "pixel F1-max change",
        ),
        (
            _scored(TRUTH, TRUTH, 0.60),
            _scored(TRUTH, _wrong(TRUTH, 12), 0.65),
            GateConfig(max_pixel_f1_drop=0.1),
            "promote",
            "promoted",
        ),
        (_metrics(None), _metrics(None), GateConfig(), "hold", "no hold-out image"),
    ],
)
def test_gate(
    candidate: HoldoutMetrics,
    champion: HoldoutMetrics,
    config: GateConfig,
    decision: str,
    words: str,
) -> None:
    result = gate(candidate, champion, has_champion=True, config=config)
    assert result.decision == decision and result.promote is (decision == "promote")
    assert words in result.reason


def test_gate_judges_the_bootstrap_lower_bound_not_the_point_gain() -> None:
    champion = _scored(TRUTH, _wrong(TRUTH, 1))
    decision = gate(_scored(TRUTH, TRUTH), champion, has_champion=True)
    assert decision.f1_gain is not None and decision.f1_gain > 0.01  # the old gate promoted
    assert decision.f1_gain_lower is not None and decision.f1_gain_lower <= 0.0
    assert not decision.promote and decision.n_resamples == 1000
    assert decision.holdout_per_class == {"good": 8, "bridge": 8, "scratch": 8}
    again = gate(_scored(TRUTH, TRUTH), champion, has_champion=True)
    assert again.f1_gain_lower == decision.f1_gain_lower  # seeded


def test_bootstrap_is_paired_and_its_full_sample_is_the_macro_f1() -> None:
    predicted = _wrong(TRUTH, 5)
    same = bootstrap_f1_gain(TRUTH, predicted, predicted, CLASSES, n_resamples=200, seed=1)
    assert same.shape == (200,) and not same.any()  # paired: identical models never differ
    gains = bootstrap_f1_gain(TRUTH, TRUTH, predicted, CLASSES, n_resamples=2000, seed=1)
    point = 1.0 - classification_metrics(TRUTH, predicted, list(CLASSES))["f1"]
    assert abs(float(np.mean(gains)) - point) < 0.02 and gains.std() > 0
    again = bootstrap_f1_gain(TRUTH, TRUTH, predicted, CLASSES, n_resamples=2000, seed=1)
    assert (gains == again).all()  # seeded
    whole = np.ones((1, len(TRUTH)))  # every image once: the hold-out itself
    f1 = _macro_f1(whole, np.asarray(TRUTH), np.asarray(predicted), CLASSES)
    assert f1[0] == pytest.approx(1.0 - point)
    with pytest.raises(ValueError, match="equal, non-empty"):
        bootstrap_f1_gain(TRUTH, TRUTH[:3], TRUTH, CLASSES)


def test_gate_says_insufficient_below_the_minimum_hold_out_per_class() -> None:
    """The hold-out of issue 11: 14 images, none good. A far better candidate still waits."""
    truth = ["bridge"] * 7 + ["scratch"] * 7
    candidate, champion = _scored(truth, truth), _scored(truth, ["bridge"] * 14)
    decision = gate(candidate, champion, has_champion=True)
    assert decision.decision == "insufficient" and not decision.promote
    assert "good 0" in decision.reason and "SEMCLIP_GATE_MIN_HOLDOUT_PER_CLASS" in decision.reason
    assert decision.holdout_per_class == {"good": 0, "bridge": 7, "scratch": 7}
    assert decision.f1_gain is not None and decision.f1_gain > 0.3  # reported all the same
    assert decision.f1_gain_lower is not None
    enough = gate(
        candidate, champion, has_champion=True, config=GateConfig(min_holdout_per_class=0)
    )
    assert enough.decision == "promote"
    # A class the candidate knows but the hold-out lacks entirely counts as 0.
    four = _scored(TRUTH, TRUTH, classes=(*CLASSES, "hole"))
    assert gate(four, _scored(TRUTH, TRUTH), has_champion=True).holdout_per_class["hole"] == 0


def test_gate_promotes_the_first_model_whatever_its_scores() -> None:
    decision = gate(_metrics(0.0), None, has_champion=False)
    assert decision.promote and "no champion yet" in decision.reason
    assert decision.decision == "first-champion"
    assert not gate(_metrics(0.9), None, has_champion=True).promote


# --------------------------------------------------------------------------- with images


@pytest.mark.slow
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


@pytest.mark.slow
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


# --------------------------------------------------------------------------- wafer groups


@pytest.mark.parametrize(
    ("uri", "regex", "group"),
    [
        ("s3://fab/raw/2026-10-01/L12/W07/D0003.png", DEFAULT_PATH_REGEX, "L12/W07"),
        # An anchored regex is searched below raw/<date>/, as the nightly flow does.
        (
            "s3://fab/raw/2026-10-01/L12/W07/D0003.png",
            r"^(?P<lot_id>[^/]+)/(?P<wafer_id>[^/]+)/",
            "L12/W07",
        ),
        ("file:///b/confirmed/img/x.png", r"^(?P<lot_id>L\d+)/(?P<wafer_id>W\d+)/", None),
        ("s3://fab/raw/2026-10-01/L12/D3.png", r"(?P<lot_id>L\d+)/", "L12/?"),
    ],
)
def test_wafer_group_from_the_path_regex(uri: str, regex: str, group: str | None) -> None:
    assert wafer_group(uri, regex) == group


@pytest.mark.slow
def test_calibration_folds_keep_each_wafer_whole(kit: Kit, tmp_path: Path) -> None:
    """Issue 11: refit CV folded by image, so τ/α were picked on a wafer's near copies."""
    from semclip import FitConfig, SemclipModel, load_backbone

    fs, root = open_bucket(f"file://{tmp_path / 'bucket'}", create=True)
    kit.write_confirmed(fs, root, {"good": 3, "bridge": 3}, wafers=2)
    shots, _ = hash_shots(fs, shots_from_frame(read_confirmed(fs, root)))
    items, _ = support_items(fs, shots, DEFAULT_PATH_REGEX)
    assert sorted({i.group or "" for i in items}) == ["LOT1/W01", "LOT1/W02"]
    assert all(i.group is None for i in support_items(fs, shots)[0])  # no regex: by image
    backbone = load_backbone("semclip-tiny", None, "cpu")
    config = FitConfig.from_dict({**kit.FAST_FIT, "cv_folds": 3})
    model = SemclipModel.fit(backbone, items, config=config)
    assert model.calibration.method == "cross-validation"
    assert model.calibration.details["folds"] == 2  # by image it would be 3
    assert {s["group"] for s in model.lineage["support"]} == {"LOT1/W01", "LOT1/W02"}


def test_git_commit_of_the_code_folder_else_setting_else_unknown(tmp_path: Path) -> None:
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True)
    assert git_commit(repo / "tasks", "ignored") == head.stdout.strip()
    assert git_commit(tmp_path, " abc123 ") == "abc123"  # not a checkout: the setting
    assert git_commit(tmp_path) == "unknown"
    assert git_commit(tmp_path / "missing") == "unknown"  # never an error


# --------------------------------------------------------------------------- demo sizing


@pytest.mark.slow
def test_demo_seed_gives_each_class_the_gate_minimum_on_the_hold_out(tmp_path: Path) -> None:
    """Issue 11: the demo's 6 shots per class left ~1 per class held out: v2 was never judged."""
    from semclip.settings import get_settings
    from tasks.common import BucketRef
    from tasks.demo import seed_demo_bucket

    settings = get_settings(home=tmp_path / "home", bucket=str(tmp_path / "bucket"))
    seeded = seed_demo_bucket.fn(
        BucketRef.from_settings(settings),
        [],
        0,
        6,
        64,
        0,
        holdout_fraction=settings.holdout_fraction,
        min_holdout_per_class=settings.gate_min_holdout_per_class,
    )
    fs, root = open_bucket(settings.bucket or "")
    shots, problems = hash_shots(fs, shots_from_frame(read_confirmed(fs, root)))
    assert problems == [] and seeded.confirmed_shots == len(shots)
    train, holdout = split_shots(shots, settings.holdout_fraction)
    for label in {s.label for s in shots}:
        assert sum(s.label == label for s in train) == 6
        assert sum(s.label == label for s in holdout) == settings.gate_min_holdout_per_class
    groups = {wafer_group(s.image_uri, settings.path_regex) for s in shots}
    assert len(groups) == 4 and None not in groups  # 2 lots x 2 wafers


def test_a_confirmed_mask_of_another_size_is_left_out_in_the_common_wording() -> None:
    """Height x width, as `fit` and `review import` say it (the refit used to say (W, H))."""
    fs = fsspec.filesystem("memory")
    root = f"/refit-mask-{uuid.uuid4().hex[:8]}"

    def png(array: np.ndarray) -> bytes:
        out = io.BytesIO()
        Image.fromarray(array).save(out, format="PNG")
        return out.getvalue()

    fs.pipe_file(f"{root}/a.png", png(np.zeros((128, 128), np.uint8)))
    fs.pipe_file(f"{root}/a_mask.png", png(np.zeros((64, 200), np.uint8)))
    fs.pipe_file(f"{root}/b.png", png(np.zeros((128, 128), np.uint8)))
    when = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    held = load_holdout(
        fs,
        [
            Shot(f"{root}/a.png", "particle", when, f"{root}/a_mask.png"),
            Shot(f"{root}/b.png", "good", when),
        ],
    )
    assert [s.image_uri for s in held.shots] == [f"{root}/b.png"]
    (problem,) = held.problems
    assert "is 64x200 (HxW) but its image is 128x128" in problem


# --------------------------------------------------------------------------- two refits


@pytest.mark.slow  # a real MLflow registry
def test_overlapping_refits_never_promote_past_a_champion_no_gate_judged(
    champion_registry: Registry, small_model_dir: Path
) -> None:
    """Refit A and refit B both judged champion v1 (the weekly refit beside an adapt-backbone
    run). A promotes v2. Before: B then moved the champion v2 → v3, a version no gate ever
    compared with v2. Now B is held, saying why, and its version's gate tag records it."""
    from semclip.refit.gate import CHAMPION_MOVED
    from semclip.registry.client import GATE_TAG
    from semclip.registry.refs import CHAMPION
    from tasks.refit import update_aliases

    registry = champion_registry
    judged = registry.alias(CHAMPION)  # what both refits' resolve_champion returned
    assert judged is not None and judged.version == "1"
    passed = GateDecision(True, "macro F1 gain +0.30 (lower bound +0.12)", decision=PROMOTE)
    v2 = registry.log_version(small_model_dir, run_name="refit-A")
    v3 = registry.log_version(small_model_dir, run_name="refit-B")

    after_a, decision_a = update_aliases.fn(registry, v2, passed, judged)
    assert after_a is not None and after_a.version == v2.version and decision_a.promote

    after_b, decision_b = update_aliases.fn(registry, v3, passed, judged)
    assert after_b is not None and after_b.version == v2.version  # not moved past v2
    assert not decision_b.promote and decision_b.decision == CHAMPION_MOVED
    assert f"v{v2.version} now" in decision_b.reason and "against champion v1" in decision_b.reason
    assert registry.resolve(v3.version).tags[GATE_TAG] == CHAMPION_MOVED
    assert registry.alias("challenger").version == v3.version  # still there to judge again


def test_a_champion_that_stayed_put_is_promoted_past_as_the_gate_said() -> None:
    from semclip.refit.gate import recheck_champion

    passed = GateDecision(True, "macro F1 gain +0.30", decision=PROMOTE)
    assert recheck_champion(passed, "1", "1") is passed
    held = GateDecision(False, "no gain", decision=HOLD)
    assert recheck_champion(held, "1", "2") is held  # a hold stays the gate's own hold
    first = GateDecision(True, "no champion yet", decision=FIRST)
    moved = recheck_champion(first, None, "4")  # a champion appeared meanwhile
    assert not moved.promote and "against champion none" in moved.reason
