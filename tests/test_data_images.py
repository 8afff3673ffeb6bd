"""Image decoding, masks and databar crops on files the tests write themselves."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageFile

from semclip.data import (
    DEFAULT_MAX_PIXELS,
    DatabarCrop,
    ImageReadError,
    MaskError,
    decode_mask,
    read_image,
    read_image_shape,
    read_mask,
    read_raw_array,
)


def _ramp8(height: int = 12, width: int = 20) -> np.ndarray:
    return (np.arange(height * width) % 256).astype(np.uint8).reshape(height, width)


def _ramp16(height: int = 12, width: int = 20) -> np.ndarray:
    return (np.arange(height * width) * 271 % 65536).astype(np.uint16).reshape(height, width)


def _save_png(path: Path, array: np.ndarray, **kwargs: object) -> Path:
    Image.fromarray(array).save(path, **kwargs)
    return path


def test_png_8bit_exact_with_hash(tmp_path: Path) -> None:
    array = _ramp8()
    path = _save_png(tmp_path / "a.png", array)
    image = read_image(path)
    assert image.pixels.dtype == np.float32 and image.pixels.shape == (12, 20)
    np.testing.assert_allclose(image.pixels, array / 255.0, atol=1e-7)
    assert image.bit_depth == 8
    assert image.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert image.source == str(path)
    assert image.pixel_size_nm is None


def test_png_16bit_keeps_full_depth(tmp_path: Path) -> None:
    array = _ramp16()
    path = _save_png(tmp_path / "a16.png", array)
    image = read_image(path)
    assert image.bit_depth == 16
    np.testing.assert_allclose(image.pixels, array / 65535.0, atol=1e-7)
    assert image.pixels.max() > 0.9  # not scaled as if 8-bit


def test_jpeg_gray_and_rgb(tmp_path: Path) -> None:
    gray = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (16, 1))
    _save_png(tmp_path / "g.jpg", gray, quality=95)
    image = read_image(tmp_path / "g.jpg")
    assert image.bit_depth == 8 and image.pixels.shape == (16, 32)
    np.testing.assert_allclose(image.pixels, gray / 255.0, atol=0.03)
    rgb = np.stack([gray] * 3, axis=-1)
    _save_png(tmp_path / "c.jpg", rgb, quality=95)
    np.testing.assert_allclose(read_image(tmp_path / "c.jpg").pixels, gray / 255.0, atol=0.03)


def test_tiff_16bit_uses_tifffile(tmp_path: Path) -> None:
    array = _ramp16()
    tifffile.imwrite(tmp_path / "a.tif", array)
    image = read_image(tmp_path / "a.tif")
    assert image.bit_depth == 16
    np.testing.assert_allclose(image.pixels, array / 65535.0, atol=1e-7)


def test_12bit_samples_in_a_16bit_file_are_read_as_12bit(tmp_path: Path) -> None:
    """Many SEM tools write 12-bit detector output into 16-bit TIFFs: / 4095, not / 65535."""
    twelve = (np.arange(12 * 20) * 17 % 4096).astype(np.uint16).reshape(12, 20)
    tifffile.imwrite(tmp_path / "t12.tif", twelve)
    _save_png(tmp_path / "t12.png", twelve)
    for path in (tmp_path / "t12.tif", tmp_path / "t12.png"):
        image = read_image(path)
        assert image.bit_depth == 12
        np.testing.assert_allclose(image.pixels, twelve / 4095.0, atol=1e-7)
    # the same scene at 8 bits and at 12 bits reads as the same gray levels
    eight = _ramp8()
    as12 = np.round(eight.astype(np.float64) / 255 * 4095).astype(np.uint16)
    tifffile.imwrite(tmp_path / "s12.tif", as12)
    np.testing.assert_allclose(
        read_image(tmp_path / "s12.tif").pixels, eight / 255.0, atol=0.5 / 4095
    )
    # one sample above 12 bits: a 16-bit image, scaled as before
    brighter = twelve.copy()
    brighter[0, 0] = 4096
    tifffile.imwrite(tmp_path / "b.tif", brighter)
    assert read_image(tmp_path / "b.tif").bit_depth == 16


def test_a_tiff_that_declares_its_range_is_scaled_by_it(tmp_path: Path) -> None:
    """MaxSampleValue (tag 281) below 65535: a 14-bit camera, say, gets / 16383."""
    fourteen = (np.arange(12 * 20) * 61 % 16384).astype(np.uint16).reshape(12, 20)
    tifffile.imwrite(tmp_path / "t14.tif", fourteen, extratags=[(281, "H", 1, 16383, False)])
    image = read_image(tmp_path / "t14.tif")
    assert image.bit_depth == 14
    np.testing.assert_allclose(image.pixels, fourteen / 16383.0, atol=1e-7)
    dim = (fourteen // 8).astype(np.uint16)  # declared 14-bit, all below 12 bits: the tag wins
    tifffile.imwrite(tmp_path / "d14.tif", dim, extratags=[(281, "H", 1, 16383, False)])
    np.testing.assert_allclose(read_image(tmp_path / "d14.tif").pixels, dim / 16383.0, atol=1e-7)


def test_multipage_tiff_selects_page(tmp_path: Path) -> None:
    path = tmp_path / "detectors.tif"
    for value in (1000, 30000, 60000):
        tifffile.imwrite(path, np.full((8, 9), value, np.uint16), append=True)
    assert read_image(path, page=1).pixels[0, 0] == pytest.approx(30000 / 65535)
    assert read_image(path, page=2).pixels[0, 0] == pytest.approx(60000 / 65535)
    with pytest.raises(ImageReadError, match=r"detectors\.tif.*page 3 out of range.*3 page"):
        read_image(path, page=3)


def test_rgb_and_rgba_png_convert_to_luma(tmp_path: Path) -> None:
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[..., 1] = 100
    rgb[..., 2] = 50
    expected = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255
    _save_png(tmp_path / "rgb.png", rgb)
    np.testing.assert_allclose(read_image(tmp_path / "rgb.png").pixels, expected, atol=1e-6)
    rgba = np.concatenate([rgb, np.full((4, 4, 1), 7, np.uint8)], axis=-1)
    _save_png(tmp_path / "rgba.png", rgba)
    np.testing.assert_allclose(read_image(tmp_path / "rgba.png").pixels, expected, atol=1e-6)


@pytest.mark.parametrize(
    ("resolution", "unit", "expected"),
    [
        ((2e6, 2e6), "CENTIMETER", 5.0),  # 2e6 px/cm = 5 nm/px
        ((2.54e7 / 4, 2.54e7 / 4), "INCH", 4.0),
        ((72, 72), "INCH", None),  # editor default print resolution, not a pixel size
        ((2e6, 2e6), "NONE", None),
    ],
)
def test_tiff_resolution_tags(
    tmp_path: Path, resolution: tuple[float, float], unit: str, expected: float | None
) -> None:
    path = tmp_path / "res.tif"
    tifffile.imwrite(path, _ramp16(), resolution=resolution, resolutionunit=unit)
    size = read_image(path).pixel_size_nm
    assert size == (pytest.approx(expected, rel=1e-6) if expected is not None else None)


@pytest.mark.parametrize("text", ["Detector=SE PixelSize=1.25nm", "pixel_size_nm = 1.25"])
def test_tiff_description_pixel_size(tmp_path: Path, text: str) -> None:
    tifffile.imwrite(tmp_path / "d.tif", _ramp8(), description=text)
    assert read_image(tmp_path / "d.tif").pixel_size_nm == pytest.approx(1.25)


def test_png_phys_pixel_size(tmp_path: Path) -> None:
    dpi = 2.54e7 / 4  # Pillow writes pHYs in pixels per metre: 2.5e8 px/m = 4 nm/px
    path = _save_png(tmp_path / "p.png", _ramp8(), dpi=(dpi, dpi))
    assert read_image(path).pixel_size_nm == pytest.approx(4.0)


def test_truncated_png_fails_at_read(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    data = (_save_png(tmp_path / "full.png", noise)).read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        ImageReadError, match=r"cannot read image '.*cut\.png': .*truncated"
    ) as info:
        read_image(path)
    assert info.value.source == str(path)


def test_empty_random_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.png.*empty file"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "noise.png").write_bytes(np.random.default_rng(1).bytes(500))
    with pytest.raises(ImageReadError, match=r"noise\.png': not a recognised image format"):
        read_image(tmp_path / "noise.png")
    with pytest.raises(ImageReadError, match=r"nope\.png.*not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match=r"directory"):
        read_image(tmp_path)


def test_bytes_input_named_and_hashed(tmp_path: Path) -> None:
    data = _save_png(tmp_path / "b.png", _ramp8()).read_bytes()
    image = read_image(data, name="s3://bucket/b.png")
    assert image.source == "s3://bucket/b.png"
    assert image.sha256 == hashlib.sha256(data).hexdigest()
    with pytest.raises(ImageReadError, match=r"'s3://bucket/bad\.png'"):
        read_image(b"garbage", name="s3://bucket/bad.png")


def test_arrays() -> None:
    gray8 = _ramp8()
    np.testing.assert_allclose(read_image(gray8).pixels, gray8 / 255.0, atol=1e-7)
    assert read_image(_ramp16()).bit_depth == 16
    floats = np.linspace(0, 1, 12, dtype=np.float64).reshape(3, 4)
    loaded = read_image(floats)
    assert loaded.sha256 is None and loaded.source == "<array>"
    np.testing.assert_allclose(loaded.pixels, floats, atol=1e-7)
    rgb = np.stack([gray8] * 3, axis=-1)
    np.testing.assert_allclose(read_image(rgb).pixels, gray8 / 255.0, atol=1e-6)
    with pytest.raises(ImageReadError, match="int64"):
        read_image(gray8.astype(np.int64), name="x")
    with pytest.raises(ImageReadError, match=r"\[0, 1\]"):
        read_image(floats * 2)
    with pytest.raises(ImageReadError, match="zero-size"):
        read_image(np.zeros((0, 5), np.uint8))


def test_pillow_bomb_limit_is_lifted_and_configurable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _save_png(tmp_path / "big.png", np.zeros((64, 64), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # would reject 4096 px as a bomb
    assert read_image(path).pixels.shape == (64, 64)
    with pytest.raises(ImageReadError, match=r"4,096 px exceeds .*1,000 px.*max_image_pixels"):
        read_image(path, max_pixels=1000)


@pytest.mark.slow
def test_decompression_bomb_is_refused_from_its_header(bomb_png: bytes) -> None:
    # The incident's file: ~389 KB on disk, 20000 x 20000 px once decoded (400 Mpx, 1.6 GB
    # as float32). The default limit refuses it before a single pixel is inflated.
    assert len(bomb_png) < 400_000 and DEFAULT_MAX_PIXELS == 2**28
    with pytest.raises(ImageReadError) as info:
        read_image(bomb_png, name="raw/2026-11-01/bomb.png")
    reason = info.value.reason
    assert "20000x20000 px = 400,000,000 px" in reason
    assert "268,435,456 px" in reason and "SEMCLIP_MAX_IMAGE_PIXELS" in reason
    assert "raw/2026-11-01/bomb.png" in str(info.value)
    with pytest.raises(ImageReadError, match=r"400,000,000 px exceeds the limit of 1,000,000"):
        read_raw_array(bomb_png, max_pixels=1_000_000)


def test_out_of_memory_while_decoding_is_a_read_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _save_png(tmp_path / "a.png", _ramp8())
    good = read_image(path)

    def no_memory(self: object) -> None:
        raise MemoryError

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_memory)  # the worker runs out mid-decode
    with pytest.raises(ImageReadError, match=r"a\.png.*out of memory.*max_image_pixels"):
        read_image(path)
    monkeypatch.undo()
    assert np.array_equal(read_image(path).pixels, good.pixels)


def test_tiff_page_applies_to_tiff_only(tmp_path: Path) -> None:
    png = _save_png(tmp_path / "a.png", _ramp8())
    jpeg = _save_png(tmp_path / "a.jpg", _ramp8(), quality=95)
    tif = tmp_path / "two.tif"
    with tifffile.TiffWriter(tif) as writer:
        writer.write(_ramp16())
        writer.write(_ramp16()[::-1].copy())
    for path in (png, jpeg):  # SEMCLIP_TIFF_PAGE=1 must not cost the night its PNGs and JPEGs
        assert read_image(path, page=1).page == 0
        assert np.array_equal(read_image(path, page=1).pixels, read_image(path).pixels)
        assert read_image_shape(path, page=1) == (12, 20)
    assert read_image(tif, page=1).page == 1 and read_image(tif).page == 0
    assert read_image(tif, page=1).pixels[0, 0] == pytest.approx(_ramp16()[-1, 0] / 65535)


def test_read_image_shape_from_header(tmp_path: Path) -> None:
    _save_png(tmp_path / "a.png", _ramp8(7, 9))
    tifffile.imwrite(tmp_path / "a.tif", _ramp16(5, 6))
    assert read_image_shape(tmp_path / "a.png") == (7, 9)
    assert read_image_shape(tmp_path / "a.tif") == (5, 6)
    with pytest.raises(ImageReadError, match="not found"):
        read_image_shape(tmp_path / "missing.png")


@pytest.mark.parametrize(
    ("values", "dtype", "expected"),
    [
        ([0, 1, 1], np.uint8, [False, True, True]),  # 0/1 mask
        ([0, 255, 127], np.uint8, [False, True, False]),  # 0/255 mask: >= 128
        ([0, 128, 2], np.uint8, [False, True, False]),
        ([0, 0, 0], np.uint8, [False, False, False]),  # all zero: no defect
        ([0, 65535, 32767], np.uint16, [False, True, False]),
        ([0, 1, 0], np.uint16, [False, True, False]),
        ([0.0, 1.0, 0.4], np.float32, [False, True, False]),
    ],
)
def test_decode_mask_rule(values: list[float], dtype: type, expected: list[bool]) -> None:
    mask = decode_mask(np.array([values], dtype=dtype))
    assert mask.dtype == np.bool_
    assert mask.tolist() == [expected]


def test_decode_mask_colour_and_bool() -> None:
    rgb = np.zeros((1, 3, 3), np.uint8)
    rgb[0, 1, 2] = 255  # defect painted blue
    assert decode_mask(rgb).tolist() == [[False, True, False]]
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[..., 3] = 255  # opaque alpha is not a defect
    rgba[0, 0, 0] = 200
    assert decode_mask(rgba).tolist() == [[True, False]]
    flags = np.array([[True, False]])
    assert decode_mask(flags) is flags


def test_decode_mask_defect_is_at_least_half_the_masks_maximum() -> None:
    """Issue 3: blurred or dimmed masks count where they reach half their own maximum."""
    assert decode_mask(np.array([[0, 255]], np.uint16)).tolist() == [[False, True]]
    blurred = np.array([[0, 60, 99, 100, 150, 200]], np.uint8)
    assert decode_mask(blurred).tolist() == [[False, False, False, True, True, True]]
    assert decode_mask(np.array([[0, 127, 128, 255]], np.uint8)).tolist() == [
        [False, False, True, True]
    ]


def test_read_mask_checks_size(tmp_path: Path) -> None:
    mask = np.zeros((10, 12), np.uint8)
    mask[2:4, 3:5] = 255
    path = _save_png(tmp_path / "m.png", mask)
    assert read_mask(path, (10, 12)).sum() == 4
    with pytest.raises(MaskError, match=r"m\.png.*10x12.*image is 11x12") as info:
        read_mask(path, (11, 12))
    assert info.value.mask_shape == (10, 12) and info.value.expected_shape == (11, 12)
    mask16 = np.zeros((10, 12), np.uint16)
    mask16[0, 0] = 65535
    assert read_mask(_save_png(tmp_path / "m16.png", mask16)).sum() == 1


def test_databar_crop_round_trip() -> None:
    crop = DatabarCrop(top=2, bottom=3)
    image = np.arange(10 * 4).reshape(10, 4)
    cropped = crop.apply(image)
    assert cropped.shape == (5, 4) and cropped[0, 0] == image[2, 0]
    full = crop.undo_mask(np.ones((5, 4), bool), (10, 4))
    assert full.shape == (10, 4) and full.sum() == 20
    assert not full[:2].any() and not full[-3:].any()
    assert crop.undo_bbox((1, 0, 3, 2)) == (1, 2, 3, 2)
    assert crop.undo_bbox((1, 0, 3, 2), fmt="xyxy") == (1, 2, 3, 4)
    assert DatabarCrop.from_dict(crop.to_dict()) == crop
    assert DatabarCrop.from_dict({}) == DatabarCrop()
    with pytest.raises(ValueError, match="leaves no rows"):
        DatabarCrop(top=6, bottom=4).apply(image)
    with pytest.raises(ValueError, match="cropped mask"):
        crop.undo_mask(np.ones((6, 4), bool), (10, 4))
    with pytest.raises(ValueError, match=">= 0"):
        DatabarCrop(top=-1)
    with pytest.raises(ValueError, match="unknown"):
        DatabarCrop.from_dict({"left": 3})
