"""What `predict` accepts: paths, bytes, arrays, every file format, and bad files mid-batch."""

from __future__ import annotations

import hashlib
import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from semclip import PredictConfig, Prediction, SemclipModel
from semclip.feature_cache import FeatureCache, entry_key


def _probs(pred: Prediction) -> np.ndarray:
    assert pred.ok, pred.error
    return np.array(list(pred.probabilities.values()))


def _assert_same(a: Prediction, b: Prediction, atol: float = 1e-5) -> None:
    np.testing.assert_allclose(_probs(a), _probs(b), atol=atol)
    assert (a.mask_height, a.mask_width) == (b.mask_height, b.mask_width)


@pytest.fixture(scope="module")
def gray8(query_paths: list[Path]) -> np.ndarray:
    """One synthetic SEM image as stored: (128, 128) uint8."""
    return np.asarray(Image.open(query_paths[-1]))


@pytest.fixture(scope="module")
def reference(fitted_model: SemclipModel, query_paths: list[Path]) -> Prediction:
    return fitted_model.predict([query_paths[-1]])[0]


def test_path_bytes_and_uint8_array_agree(
    fitted_model: SemclipModel, query_paths: list[Path], gray8: np.ndarray, reference: Prediction
) -> None:
    path = query_paths[-1]
    data = path.read_bytes()
    by_str, by_bytes, by_array = fitted_model.predict([str(path), data, gray8])
    assert reference.image_sha256 == hashlib.sha256(data).hexdigest()
    assert by_bytes.image_sha256 == reference.image_sha256 and by_bytes.image_uri == "<bytes:1>"
    assert by_array.image_sha256 is None and by_array.image_uri == "<array:2>"
    for pred in (by_str, by_bytes, by_array):  # batched with others: equal up to float order
        _assert_same(pred, reference)
    assert by_str.mask_rle == by_bytes.mask_rle == by_array.mask_rle  # same batch, same pixels


@pytest.mark.slow
@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(lambda g: g.astype(np.uint16) * 257, id="uint16"),
        pytest.param(lambda g: g.astype(np.float32) / 255.0, id="float32"),
        pytest.param(lambda g: g.astype(np.float64) / 255.0, id="float64"),
        pytest.param(lambda g: np.stack([g, g, g], axis=-1), id="rgb"),
        pytest.param(lambda g: np.dstack([g, g, g, np.full_like(g, 255)]), id="rgba"),
    ],
)
def test_array_types(
    fitted_model: SemclipModel, gray8: np.ndarray, reference: Prediction, convert
) -> None:
    _assert_same(fitted_model.predict([convert(gray8)])[0], reference)


def _write(path: Path, array: np.ndarray, **kwargs: object) -> Path:
    Image.fromarray(array).save(path, **kwargs)
    return path


@pytest.mark.slow
def test_file_formats(
    fitted_model: SemclipModel, gray8: np.ndarray, reference: Prediction, tmp_path: Path
) -> None:
    gray16 = gray8.astype(np.uint16) * 257
    png16 = _write(tmp_path / "a16.png", gray16)
    tif16 = tmp_path / "a16.tif"
    tifffile.imwrite(tif16, gray16, description="pixel_size_nm=3.0")
    rgb_png = _write(tmp_path / "rgb.png", np.stack([gray8] * 3, axis=-1))
    jpeg = _write(tmp_path / "a.jpg", gray8, quality=95)
    preds = fitted_model.predict([png16, tif16, rgb_png, jpeg])
    for pred in preds[:3]:
        _assert_same(pred, reference)
    assert preds[3].ok and (preds[3].mask_height, preds[3].mask_width) == (128, 128)
    assert preds[0].defect_area_nm2 is None
    assert preds[1].defect_area_nm2 == 9.0 * preds[1].defect_area_px  # read from the TIFF
    assert (preds[0].pixel_size_nm, preds[0].pixel_size_source) == (None, None)
    assert (preds[1].pixel_size_nm, preds[1].pixel_size_source) == (3.0, "tiff")
    override = fitted_model.predict([tif16], config=PredictConfig(pixel_size_nm=2.0))[0]
    assert override.defect_area_nm2 == 4.0 * override.defect_area_px
    assert (override.pixel_size_nm, override.pixel_size_source) == (2.0, "setting")


def test_multipage_tiff_page_selection(
    fitted_model: SemclipModel, gray8: np.ndarray, reference: Prediction, tmp_path: Path
) -> None:
    other = np.ascontiguousarray(gray8[::-1, ::-1])
    path = tmp_path / "two_detectors.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(other)
        tif.write(gray8)
    page0 = fitted_model.predict([path])[0]
    page1 = fitted_model.predict([path], config=PredictConfig(tiff_page=1))[0]
    page2 = fitted_model.predict([path], config=PredictConfig(tiff_page=2))[0]
    _assert_same(page1, reference)
    _assert_same(page0, fitted_model.predict([other])[0])
    assert page2.error and "page 2" in page2.error and str(path) in page2.error


@pytest.mark.slow
def test_feature_cache_keys_the_tiff_page(
    fitted_model: SemclipModel,
    gray8: np.ndarray,
    reference: Prediction,
    query_paths: list[Path],
    tmp_path: Path,
) -> None:
    # Two pages of one TIFF share the file's hash: the cache must not hand page 0's features
    # to a page-1 prediction (nor a PNG's features to another page setting).
    path = tmp_path / "two_detectors.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.asarray(Image.open(query_paths[1]).convert("L")))  # another image
        tif.write(gray8)
    n_stages = fitted_model.fit_config.n_stages
    cache = FeatureCache(fitted_model.backbone, fitted_model.preprocess, n_stages)
    page0 = fitted_model.predict([path], cache=cache)[0]
    page1 = fitted_model.predict([path], config=PredictConfig(tiff_page=1), cache=cache)[0]
    _assert_same(page1, reference)
    assert not np.allclose(_probs(page0), _probs(page1))
    png = tmp_path / "a.png"
    Image.fromarray(gray8).save(png)
    as_page1 = fitted_model.predict([png], config=PredictConfig(tiff_page=1), cache=cache)[0]
    assert as_page1.ok  # the page applies to TIFF only
    _assert_same(as_page1, reference)
    assert entry_key("ab", 0) == "ab-a0" and entry_key("ab", 3, page=2) == "ab-a3-p2"


@pytest.fixture()
def bad_files(tmp_path: Path, query_paths: list[Path]) -> dict[str, Path]:
    good_png = query_paths[0].read_bytes()
    files = {
        "corrupt": tmp_path / "corrupt.png",
        "truncated": tmp_path / "truncated.png",
        "empty": tmp_path / "empty.png",
        "missing": tmp_path / "missing.png",
    }
    files["corrupt"].write_bytes(np.random.default_rng(0).bytes(2000))
    files["truncated"].write_bytes(good_png[: len(good_png) // 2])
    files["empty"].write_bytes(b"")
    return files


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [0, 2])
def test_bad_files_get_error_rows_in_a_good_batch(
    fitted_model: SemclipModel,
    query_paths: list[Path],
    bad_files: dict[str, Path],
    batch_size: int,
) -> None:
    goods = query_paths[:3]
    bads = list(bad_files.values())
    mixed = [bads[0], goods[0], bads[1], bads[2], goods[1], bads[3], goods[2]]
    config = PredictConfig(batch_size=batch_size)
    preds = fitted_model.predict(mixed, config=config)
    alone = fitted_model.predict(goods)
    assert [p.image_uri for p in preds] == [str(p) for p in mixed]
    errors = {p.image_uri: p.error for p in preds if not p.ok}
    assert set(errors) == {str(p) for p in bads}
    for path in bads:
        assert str(path) in errors[str(path)]
    assert "not found" in errors[str(bad_files["missing"])]
    assert "empty" in errors[str(bad_files["empty"])]
    for pred in (p for p in preds if not p.ok):
        assert pred.predicted_class is None and pred.probabilities is None
        assert pred.mask() is None and pred.model_name == fitted_model.name
    for got, want in zip([preds[1], preds[4], preds[6]], alone, strict=True):
        _assert_same(got, want)
        assert got.image_sha256 == want.image_sha256


@pytest.mark.slow
def test_a_failing_batch_falls_back_to_single_images(
    fitted_model: SemclipModel,
    query_paths: list[Path],
    bad_files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An image that breaks the model fails alone; unreadable rows keep their place."""
    model = replace(fitted_model)
    poison = np.zeros((77, 77), dtype=np.uint8)
    original = model._heads_on

    def heads_on(images, *args, **kwargs):
        if any(im.pixels.shape == (77, 77) for im in images):
            raise RuntimeError("boom")
        return original(images, *args, **kwargs)

    monkeypatch.setattr(model, "_heads_on", heads_on)
    goods = query_paths[:2]
    inputs = [goods[0], bad_files["missing"], poison, goods[1]]
    preds = model.predict(inputs, uris=["g0", "missing", "poison", "g1"])
    assert [p.image_uri for p in preds] == ["g0", "missing", "poison", "g1"]
    assert [p.ok for p in preds] == [True, False, False, True]
    assert "boom" in preds[2].error
    alone = fitted_model.predict(goods)
    _assert_same(preds[0], alone[0])
    _assert_same(preds[3], alone[1])


def test_every_input_bad_still_returns_rows(
    fitted_model: SemclipModel, bad_files: dict[str, Path]
) -> None:
    preds = fitted_model.predict(list(bad_files.values()))
    assert len(preds) == 4 and not any(p.ok for p in preds)


def test_bytes_errors_name_the_source(fitted_model: SemclipModel) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, format="PNG")
    preds = fitted_model.predict([b"not an image", buf.getvalue()[:20]], uris=["s3://b/x.png", "y"])
    assert "s3://b/x.png" in preds[0].error
    assert "'y'" in preds[1].error
