"""SemclipModel.fit / predict on the tiny random backbone: structure, invariants, determinism."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from semclip import (
    Backbone,
    DatabarCrop,
    Dataset,
    FitConfig,
    PredictConfig,
    Prediction,
    SemclipModel,
    SupportItem,
)
from semclip.data import draw_support
from semclip.io.schema import PREDICTION_SCHEMA, records_to_table, validate_table
from semclip.train import ALPHA_GRID

Check = Callable[[Prediction, tuple[int, int]], np.ndarray]


def _items(dataset: Dataset, *, masks: bool = True) -> list[SupportItem]:
    return [
        SupportItem(s.image, s.label, s.mask if masks else None, s.group, str(s.image))
        for s in dataset.samples
    ]


def _with_tau(model: SemclipModel, tau: float) -> SemclipModel:
    return replace(model, calibration=replace(model.calibration, tau=tau))


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)


# --------------------------------------------------------------------------------- fitting
def test_fit_k2_cross_validates(fitted_model: SemclipModel) -> None:
    cal = fitted_model.calibration
    assert fitted_model.classes == ("good", "bridge", "particle", "scratch")
    assert fitted_model.good_index == 0
    assert cal.method == "cross-validation"
    assert cal.alpha in ALPHA_GRID
    assert 0.0 <= cal.tau <= 1.0
    assert cal.pclip_source in ("transform", "clip")
    assert cal.details["folds"] >= 2
    assert cal.details["n_held_out"] == 8  # every support image held out exactly once
    assert fitted_model.heads.text.shape == (4, fitted_model.backbone.model.visual.output_dim)
    assert not fitted_model.heads.training


@pytest.mark.slow
def test_fit_k1_uses_defaults(
    tiny_backbone: Backbone, synth_dataset: Dataset, fast_config: FitConfig
) -> None:
    support, _ = draw_support(synth_dataset, 1, 0)
    model = SemclipModel.fit(tiny_backbone, support, config=fast_config)
    assert model.calibration.method == "default"
    assert model.calibration.alpha == 0.1 == fast_config.default_alpha
    assert 0.5 <= model.calibration.tau <= 0.95  # default τ: 0.5 raised by good-pixel scores
    assert model.lineage["shots_per_class"] == {"good": 1, "bridge": 1, "particle": 1, "scratch": 1}


@pytest.mark.slow
def test_fit_without_masks_trains_classification_only(
    tiny_backbone: Backbone,
    support_split: tuple[Dataset, Dataset],
    fast_config: FitConfig,
    query_paths: list[Path],
    assert_prediction_consistent: Check,
) -> None:
    items = _items(support_split[0], masks=False)
    model = SemclipModel.fit(tiny_backbone, items, config=fast_config)
    assert model.calibration.method == "cross-validation"
    assert model.calibration.details["cv_pixel_f1"] is None  # no defect mask to choose τ on
    assert all(shot["mask"] is None for shot in model.lineage["support"])
    pred = model.predict(query_paths[:1])[0]
    assert_prediction_consistent(pred, (128, 128))


@pytest.mark.slow
def test_fit_is_deterministic_for_a_seed(
    tiny_backbone: Backbone, support_split: tuple[Dataset, Dataset], fast_config: FitConfig
) -> None:
    support = support_split[0]
    first = SemclipModel.fit(tiny_backbone, support, config=fast_config)
    second = SemclipModel.fit(tiny_backbone, support, config=fast_config)
    other = SemclipModel.fit(tiny_backbone, support, config=replace(fast_config, seed=1))
    a, b, c = (m.heads.state_dict() for m in (first, second, other))
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert first.calibration == second.calibration
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert other.lineage["seed"] == 1 and first.lineage["seed"] == 0


def test_fit_needs_good_images(tiny_backbone: Backbone, synth_dataset: Dataset) -> None:
    defects = [i for i in _items(synth_dataset) if i.label != "good"]
    with pytest.raises(ValueError, match="'good'"):
        SemclipModel.fit(tiny_backbone, defects)
    goods = [i for i in _items(synth_dataset) if i.label == "good"]
    with pytest.raises(ValueError, match="defect class"):
        SemclipModel.fit(tiny_backbone, goods)


@pytest.mark.slow
def test_label_without_prompts_gets_generic_ones(
    tiny_backbone: Backbone, synth_dataset: Dataset, fast_config: FitConfig
) -> None:
    support, _ = draw_support(synth_dataset, 1, 0)
    items = [replace(i, label="weird_blob") if i.label == "bridge" else i for i in _items(support)]
    model = SemclipModel.fit(tiny_backbone, items, config=fast_config)
    assert "weird_blob" not in model.prompts.states
    assert model.classes == ("good", "particle", "scratch", "weird_blob")
    alpha = fast_config.default_alpha  # class-aware fusion: CLIP cannot know weird_blob
    assert model.calibration.class_alpha == (alpha, alpha, alpha, 0.0)
    pred = model.predict([items[0].image])[0]
    assert list(pred.probabilities) == list(model.classes)


@pytest.mark.slow
def test_classes_the_backbone_never_saw_lean_on_the_head(
    tiny_backbone: Backbone, synth_dataset: Dataset, fast_config: FitConfig, tmp_path: Path
) -> None:
    """A backbone folder whose pretrain.json lacks scratch: α_scratch = 0 (head alone)."""
    record = {
        "data": {
            "classes": ["good", "bridge", "particle", "scratch"],
            "excluded_classes": ["scratch"],
        }
    }
    (tmp_path / "pretrain.json").write_text(json.dumps(record))
    backbone = replace(tiny_backbone, name=f"local-dir:{tmp_path}")
    support, _ = draw_support(synth_dataset, 1, 0)
    model = SemclipModel.fit(backbone, support, config=fast_config)
    assert model.classes == ("good", "bridge", "particle", "scratch")
    alpha = fast_config.default_alpha
    assert model.calibration.class_alpha == (alpha, alpha, alpha, 0.0)
    glob = SemclipModel.fit(backbone, support, config=replace(fast_config, class_alpha="global"))
    assert glob.calibration.class_alpha is None


# ------------------------------------------------------------------------------ predicting
@pytest.mark.slow
def test_predict_one_row_per_input_in_order(
    fitted_model: SemclipModel, query_paths: list[Path]
) -> None:
    images = [*query_paths, _noise(96, 96)]
    preds = fitted_model.predict(images)
    assert [p.image_uri for p in preds] == [*map(str, query_paths), "<array:8>"]
    uris = [f"img-{i}" for i in range(len(images))]
    named = fitted_model.predict(images, uris=uris, config=PredictConfig(batch_size=3))
    assert [p.image_uri for p in named] == uris
    for a, b in zip(preds, named, strict=True):
        assert a.predicted_class == b.predicted_class
        assert a.mask_rle == b.mask_rle
        np.testing.assert_allclose(
            list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-5
        )
    with pytest.raises(ValueError, match="uris"):
        fitted_model.predict(images, uris=uris[:2])


def test_probabilities_and_anomaly_score(
    fitted_model: SemclipModel, query_paths: list[Path]
) -> None:
    for pred in fitted_model.predict(query_paths):
        probs = pred.probabilities
        assert list(probs) == list(fitted_model.classes)
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
        assert all(0.0 <= p <= 1.0 for p in probs.values())
        assert pred.predicted_class == max(probs, key=probs.get)
        assert pred.anomaly_score == pytest.approx(1.0 - probs["good"], abs=1e-6)
        assert isinstance(pred.needs_review, bool)
        assert pred.model_name == fitted_model.name and pred.error is None


def test_predict_is_deterministic(fitted_model: SemclipModel, query_paths: list[Path]) -> None:
    first = fitted_model.predict(query_paths[:3])
    assert fitted_model.predict(query_paths[:3]) == first


@pytest.mark.slow
@pytest.mark.parametrize("tau", [0.3, 0.5, 0.7])
def test_mask_fields_agree_with_the_mask(
    fitted_model: SemclipModel,
    query_paths: list[Path],
    tau: float,
    assert_prediction_consistent: Check,
) -> None:
    preds = _with_tau(fitted_model, tau).predict(query_paths)
    masks = [assert_prediction_consistent(p, (128, 128)) for p in preds]
    area = [int(m.sum()) for m in masks]
    assert area == [p.defect_area_px for p in preds]


@pytest.mark.slow
def test_masks_are_partial_at_some_threshold(
    fitted_model: SemclipModel, query_paths: list[Path]
) -> None:
    """Guards the test above against passing vacuously on all-empty or all-full masks."""
    preds = [p for t in (0.3, 0.5, 0.7) for p in _with_tau(fitted_model, t).predict(query_paths)]
    partial = [p for p in preds if 0 < p.defect_area_px < 128 * 128]
    assert partial and any(p.n_regions > 1 for p in partial)


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(300, 517), (3000, 4000)])
def test_mask_at_original_resolution(
    fitted_model: SemclipModel, shape: tuple[int, int], assert_prediction_consistent: Check
) -> None:
    model = _with_tau(fitted_model, 0.5)
    pred = model.predict([_noise(*shape)])[0]
    assert_prediction_consistent(pred, shape)
    assert pred.image_sha256 is None  # arrays have no file bytes to hash


def test_databar_rows_never_hold_defects(
    fitted_model: SemclipModel, query_paths: list[Path], assert_prediction_consistent: Check
) -> None:
    bar = 20
    preprocess = replace(fitted_model.preprocess, databar=DatabarCrop(bottom=bar))
    model = replace(_with_tau(fitted_model, -1.0), preprocess=preprocess)
    image = _noise(150, 200)
    pred = model.predict([image])[0]
    mask = assert_prediction_consistent(pred, (150, 200))
    assert not mask[-bar:].any()
    assert mask[:-bar].all()  # τ below every score: each pixel the model saw is a defect
    assert pred.bbox == (0, 0, 200, 150 - bar)
    top = replace(model, preprocess=replace(preprocess, databar=DatabarCrop(top=7)))
    mask_top = top.predict([image])[0].mask()
    assert not mask_top[:7].any() and mask_top[7:].all()


def test_too_tall_databar_is_a_row_error(fitted_model: SemclipModel) -> None:
    preprocess = replace(fitted_model.preprocess, databar=DatabarCrop(bottom=50))
    model = replace(fitted_model, preprocess=preprocess)
    preds = model.predict([_noise(40, 64), _noise(64, 64)], uris=["short", "tall"])
    assert preds[0].error and "databar" in preds[0].error
    assert preds[1].ok


def test_pixel_size_gives_area_in_nm2(fitted_model: SemclipModel, query_paths: list[Path]) -> None:
    model = _with_tau(fitted_model, 0.5)
    plain = model.predict(query_paths)
    sized = model.predict(query_paths, config=PredictConfig(pixel_size_nm=2.0))
    assert all(p.defect_area_nm2 is None for p in plain)  # synthetic PNGs carry no pixel size
    assert any(p.defect_area_px > 0 for p in sized)
    for p, q in zip(plain, sized, strict=True):
        assert q.defect_area_px == p.defect_area_px
        assert q.defect_area_nm2 == 4.0 * q.defect_area_px


def test_records_validate_and_round_trip_parquet(
    fitted_model: SemclipModel, query_paths: list[Path], tmp_path: Path
) -> None:
    preds = fitted_model.predict(
        [*query_paths[:3], tmp_path / "missing.png"], config=PredictConfig(pixel_size_nm=1.5)
    )
    table = records_to_table([p.to_record() for p in preds])
    validate_table(table)
    pq.write_table(table, tmp_path / "p.parquet")
    back = pq.read_table(tmp_path / "p.parquet")
    validate_table(back)
    assert back.schema.equals(PREDICTION_SCHEMA)
    assert back.equals(table)
    rows = back.to_pylist()
    assert rows[-1]["error"] and rows[-1]["predicted_class"] is None
    assert rows[0]["image_uri"] == str(query_paths[0])
    assert dict(rows[0]["probabilities"]).keys() == set(fitted_model.classes)
