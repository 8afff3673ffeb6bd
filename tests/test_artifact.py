"""Model directories: save/load round trip, backbone pointer, lineage, incompatible formats."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from semclip import (
    Dataset,
    IncompatibleModelError,
    Prediction,
    SemclipModel,
    load_model,
    save_model,
)
from semclip.artifact import BACKBONE_DIR, FORMAT_VERSION, HEADS_FILE, MEMBANK_FILE, MODEL_FILE


@pytest.fixture(scope="module")
def saved_dir(fitted_model: SemclipModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(fitted_model, tmp_path_factory.mktemp("artifact") / "model")


@pytest.fixture(scope="module")
def reference(fitted_model: SemclipModel, query_paths: list[Path]) -> list[Prediction]:
    return fitted_model.predict(query_paths[:4])


def _assert_same_predictions(got: list[Prediction], want: list[Prediction]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.ok and a.predicted_class == b.predicted_class
        np.testing.assert_allclose(
            list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-5
        )
        assert a.anomaly_score == pytest.approx(b.anomaly_score, abs=1e-5)
        assert a.mask_rle == b.mask_rle


def _edit_meta(src: Path, dst: Path, **changes: object) -> Path:
    shutil.copytree(src, dst)
    meta = json.loads((dst / MODEL_FILE).read_text())
    meta.update(changes)
    (dst / MODEL_FILE).write_text(json.dumps(meta))
    return dst


@pytest.mark.slow
def test_save_writes_a_self_contained_directory(saved_dir: Path) -> None:
    assert (saved_dir / MODEL_FILE).is_file() and (saved_dir / HEADS_FILE).is_file()
    assert (saved_dir / MEMBANK_FILE).is_file()
    assert (saved_dir / BACKBONE_DIR).is_dir()
    assert not saved_dir.with_name(saved_dir.name + ".tmp").exists()
    meta = json.loads((saved_dir / MODEL_FILE).read_text())
    assert meta["format"] == "semclip-model" and meta["format_version"] == FORMAT_VERSION
    assert meta["backbone"]["random_weights"] is True


@pytest.mark.slow
def test_round_trip_predicts_the_same(
    saved_dir: Path,
    fitted_model: SemclipModel,
    query_paths: list[Path],
    reference: list[Prediction],
) -> None:
    loaded = load_model(saved_dir, device="cpu")
    assert loaded.classes == fitted_model.classes
    assert loaded.calibration == fitted_model.calibration
    assert loaded.preprocess == fitted_model.preprocess
    assert loaded.fit_config == fitted_model.fit_config
    assert loaded.predict_config == fitted_model.predict_config
    assert loaded.prompts == fitted_model.prompts
    assert (loaded.name, loaded.version) == (fitted_model.name, fitted_model.version)
    want, got = fitted_model.heads.state_dict(), loaded.heads.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert fitted_model.membank is not None and loaded.membank is not None
    assert torch.equal(loaded.membank.bank, fitted_model.membank.bank)
    assert torch.equal(loaded.membank.scale, fitted_model.membank.scale)
    assert (loaded.membank.k, loaded.membank.source) == (1, "vv")
    _assert_same_predictions(loaded.predict(query_paths[:4]), reference)


@pytest.mark.slow
def test_model_saved_before_the_memory_bank_still_loads(
    saved_dir: Path, tmp_path: Path, query_paths: list[Path]
) -> None:
    """An artifact of the earlier code: no membank file or key, no new calibration fields."""
    old = tmp_path / "old"
    shutil.copytree(saved_dir, old)
    (old / MEMBANK_FILE).unlink()
    meta = json.loads((old / MODEL_FILE).read_text())
    del meta["membank"]
    for key in ("class_alpha", "membank_weight", "surgery_scale"):
        del meta["calibration"][key]
    for key in ("membank", "membank_k", "head_lr", "plateau_patience", "class_alpha"):
        del meta["fit_config"][key]
    (old / MODEL_FILE).write_text(json.dumps(meta))
    loaded = load_model(old, device="cpu")
    assert loaded.membank is None
    assert loaded.calibration.membank_weight == 0.0 and loaded.calibration.class_alpha is None
    assert loaded.calibration.surgery_scale == 1.0
    preds = loaded.predict(query_paths[:2])
    assert all(p.ok for p in preds)
    np.testing.assert_allclose(sum(preds[0].probabilities.values()), 1.0, atol=1e-5)


@pytest.mark.slow
def test_random_weights_stay_flagged(saved_dir: Path) -> None:
    loaded = load_model(saved_dir, device="cpu")
    assert loaded.backbone.random_weights is True
    assert "RANDOM WEIGHTS" in loaded.backbone.describe()
    assert loaded.backbone.name == "semclip-tiny"


def test_lineage_records_seed_support_and_versions(
    saved_dir: Path, support_split: tuple[Dataset, Dataset]
) -> None:
    lineage = load_model(saved_dir, device="cpu").lineage
    assert lineage["seed"] == 0
    assert lineage["random_backbone"] is True
    assert lineage["shots_per_class"] == {"good": 2, "bridge": 2, "particle": 2, "scratch": 2}
    support = support_split[0].samples
    assert [s["uri"] for s in lineage["support"]] == [str(s.image) for s in support]
    assert [s["sha256"] for s in lineage["support"]] == [
        hashlib.sha256(s.image.read_bytes()).hexdigest() for s in support
    ]
    assert [s["label"] for s in lineage["support"]] == [s.label for s in support]
    assert set(lineage["versions"]) >= {"semclip", "torch", "open_clip", "numpy"}
    assert lineage["versions"]["torch"] == torch.__version__


@pytest.mark.slow
def test_backbone_pointer_loads_and_predicts_the_same(
    fitted_model: SemclipModel,
    query_paths: list[Path],
    reference: list[Prediction],
    tmp_path: Path,
) -> None:
    path = save_model(fitted_model, tmp_path / "pointer", include_backbone=False)
    assert not (path / BACKBONE_DIR).exists()
    info = json.loads((path / MODEL_FILE).read_text())["backbone"]
    assert info["name"] == "semclip-tiny" and info["pretrained"] is None and info["state_sha256"]
    loaded = load_model(path, device="cpu")
    assert loaded.backbone.random_weights is True
    _assert_same_predictions(loaded.predict(query_paths[:4]), reference)


@pytest.mark.slow
def test_backbone_pointer_with_other_weights_is_refused(
    fitted_model: SemclipModel, tmp_path: Path
) -> None:
    path = save_model(fitted_model, tmp_path / "pointer", include_backbone=False)
    meta = json.loads((path / MODEL_FILE).read_text())
    meta["backbone"]["state_sha256"] = "0" * 64
    (path / MODEL_FILE).write_text(json.dumps(meta))
    with pytest.raises(IncompatibleModelError, match="weights found there differ"):
        load_model(path, device="cpu")


def test_other_format_version_is_refused(saved_dir: Path, tmp_path: Path) -> None:
    old = _edit_meta(saved_dir, tmp_path / "old", format_version=FORMAT_VERSION + 98)
    with pytest.raises(IncompatibleModelError, match=f"format version {FORMAT_VERSION + 98}"):
        load_model(old, device="cpu")


def test_not_a_model_directory(saved_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(IncompatibleModelError, match=MODEL_FILE):
        load_model(tmp_path, device="cpu")  # exists, no model.json
    with pytest.raises(IncompatibleModelError, match=MODEL_FILE):
        load_model(tmp_path / "nowhere", device="cpu")
    foreign = _edit_meta(saved_dir, tmp_path / "foreign", format="something-else")
    with pytest.raises(IncompatibleModelError, match="not a semclip model"):
        load_model(foreign, device="cpu")
    garbled = tmp_path / "garbled"
    shutil.copytree(saved_dir, garbled)
    (garbled / MODEL_FILE).write_text("{not json")
    with pytest.raises(IncompatibleModelError, match="not valid JSON"):
        load_model(garbled, device="cpu")


def test_save_replaces_an_existing_directory(fitted_model: SemclipModel, tmp_path: Path) -> None:
    target = tmp_path / "m"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    save_model(fitted_model, target)
    assert not (target / "stale.txt").exists() and (target / MODEL_FILE).is_file()


# ------------------------------------------------------------------ integrity (issue 10)
def _flip_one_bit(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x01  # the middle of the file: tensor bytes, not the header
    file.write_bytes(bytes(data))


def test_bit_flipped_backbone_weights_are_refused(saved_dir: Path, tmp_path: Path) -> None:
    """The weights hash in model.json is checked: a flipped bit no longer loads silently."""
    from semclip.artifact import CorruptModelError
    from semclip.backbone import WEIGHTS_FILE

    copy = tmp_path / "flipped"
    shutil.copytree(saved_dir, copy)
    _flip_one_bit(copy / BACKBONE_DIR / WEIGHTS_FILE)
    with pytest.raises(CorruptModelError, match=rf"{WEIGHTS_FILE} does not match the sha256"):
        load_model(copy, device="cpu")


def test_bit_flipped_heads_are_refused(saved_dir: Path, tmp_path: Path) -> None:
    from semclip.artifact import CorruptModelError

    meta = json.loads((saved_dir / MODEL_FILE).read_text())
    assert meta["heads_sha256"] == hashlib.sha256((saved_dir / HEADS_FILE).read_bytes()).hexdigest()
    copy = tmp_path / "flipped"
    shutil.copytree(saved_dir, copy)
    _flip_one_bit(copy / HEADS_FILE)
    with pytest.raises(CorruptModelError, match=rf"{HEADS_FILE} does not match the sha256"):
        load_model(copy, device="cpu")


@pytest.mark.slow
def test_garbage_heads_file_is_a_named_error_even_without_a_hash(
    saved_dir: Path, tmp_path: Path
) -> None:
    """A model saved before the heads were hashed: the parse error is named, not raw."""
    from semclip.artifact import CorruptModelError

    old = tmp_path / "old"
    shutil.copytree(saved_dir, old)
    meta = json.loads((old / MODEL_FILE).read_text())
    del meta["heads_sha256"]
    (old / MODEL_FILE).write_text(json.dumps(meta))
    (old / HEADS_FILE).write_bytes(b"\x00garbage, not safetensors" * 10)
    with pytest.raises(CorruptModelError, match=r"not a readable heads file.*refit"):
        load_model(old, device="cpu")


def test_deleted_backbone_folder_is_a_named_error(saved_dir: Path, tmp_path: Path) -> None:
    from semclip.artifact import CorruptModelError

    copy = tmp_path / "incomplete"
    shutil.copytree(saved_dir, copy)
    shutil.rmtree(copy / BACKBONE_DIR)
    with pytest.raises(CorruptModelError, match=r"lacks backbone/.*incomplete.*copy the whole"):
        load_model(copy, device="cpu")


@pytest.mark.slow
def test_non_finite_probabilities_are_error_rows_not_good(
    saved_dir: Path, query_paths: list[Path]
) -> None:
    """Corrupt (NaN) head weights: argmax of NaN is index 0 = "good" and NaN < threshold is
    False, which wrote silent good rows; now every image is an error row with no class."""
    model = load_model(saved_dir, device="cpu")
    with torch.no_grad():
        model.heads.classifier.weight.fill_(float("nan"))
    got = model.predict(query_paths[:3])
    assert [p.ok for p in got] == [False, False, False]
    for p in got:
        assert p.predicted_class is None and p.probabilities is None
        assert p.needs_review is None and p.mask_rle is None
        assert "not finite" in (p.error or "") and p.image_sha256  # the image itself was read
    scored = model.score(query_paths[:1])
    assert isinstance(scored[0], Prediction) and "not finite" in (scored[0].error or "")
