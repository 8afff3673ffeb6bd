"""Decode SEM images (8/16-bit PNG, JPEG, TIFF, RGB, arrays) into one gray float format.

Everything downstream (model, masks, metrics) sees the same thing: an (H, W) float32 array in
[0, 1], plus the facts about the file that matter for lineage (bit depth, pixel size, content
hash). Any failure to decode becomes an :class:`ImageReadError` that names the source, so batch
jobs can quarantine the file with a readable reason and carry on.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from semclip.config import DEFAULT_MAX_IMAGE_PIXELS

logger = logging.getLogger(__name__)

# The largest image area decoded by default (see semclip.config for why 2**28 px).
DEFAULT_MAX_PIXELS = DEFAULT_MAX_IMAGE_PIXELS
MAX_PIXELS_SETTING = "max_image_pixels (SEMCLIP_MAX_IMAGE_PIXELS)"  # named in the errors

# Rec. 601 luma, the weights Pillow's convert("L") uses, so arrays and files agree.
_LUMA = (0.299, 0.587, 0.114)

# Resolution tags of 72/96/300 dpi are written by image editors by default and describe print
# size, not the microscope. No SEM pixel is 50 µm or larger, so such values are ignored.
_MAX_PLAUSIBLE_PIXEL_NM = 50_000.0

_NM_PER_UNIT = {2: 2.54e7, 3: 1e7}  # TIFF ResolutionUnit: 2 = inch, 3 = centimetre
_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
_PIXEL_SIZE_RE = re.compile(
    rf"pixel_?size_nm\s*[=:]\s*{_NUMBER}|pixel_?size\s*[=:]\s*{_NUMBER}\s*nm\b", re.IGNORECASE
)
# The file types semclip reads (decoding dispatches on content, not on the name): one list for
# data set folders, `semclip predict` folders and the nightly's raw/<date>/ listing.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_UNKNOWN_FORMAT = "not a recognised image format (expected PNG, JPEG or TIFF)"
_PILLOW_16BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageReadError(Exception):
    """An image could not be decoded; ``source`` names it and ``reason`` says why."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"cannot read image '{source}': {reason}")
        self.source = source
        self.reason = reason


@dataclass(frozen=True, eq=False)  # eq=False: comparing ndarrays field-wise is ambiguous
class LoadedImage:
    """A decoded image in the one format the rest of semclip consumes."""

    pixels: np.ndarray  # (H, W) float32 in [0, 1]: 8-bit / 255, 16-bit / 65535, RGB → luma
    # (12-bit samples in a 16-bit file / 4095, a TIFF's MaxSampleValue / itself: `_scale_of`)
    bit_depth: int  # 8, 12 or 16 as decoded (float input counts as 16; see `_scale_of`)
    pixel_size_nm: float | None  # from TIFF resolution/description or PNG pHYs; None if absent
    sha256: str | None  # hex digest of the exact input bytes; None for in-memory arrays
    source: str  # path, or the given name, used in every message about this image
    pixel_size_source: str | None = None  # "tiff", "png", "jpeg"…: where pixel_size_nm came from
    page: int = 0  # TIFF page decoded; 0 for every other format (the page applies to TIFF only)


@dataclass(frozen=True)
class _Raw:
    """Samples as stored in the file, before conversion to gray float."""

    array: np.ndarray  # (H, W) or (H, W, C), dtype as stored (bool, uint8, uint16, float)
    pixel_size_nm: float | None
    pixel_size_source: str | None = None  # the format whose metadata gave it
    page: int = 0  # the TIFF page these samples come from; 0 for other formats
    max_sample: int | None = None  # a TIFF's MaxSampleValue tag below its type's maximum


def read_image(
    source: str | os.PathLike[str] | bytes | np.ndarray,
    *,
    page: int = 0,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> LoadedImage:
    """Decode ``source`` (path, file bytes or array) into a gray float32 image in [0, 1].

    ``page`` selects the page (e.g. the detector channel) of a multi-page TIFF; PNG and JPEG
    have one image, so a night with ``SEMCLIP_TIFF_PAGE=1`` still reads them (frame 0).
    ``name`` replaces the source's description in messages (useful for bytes fetched from an
    object store). ``max_pixels`` bounds the image area, checked from the header before any
    pixel is decoded, so a decompression bomb costs nothing; it is also installed as Pillow's
    ``Image.MAX_IMAGE_PIXELS`` (a process-wide setting) so large SEM mosaics below it are not
    refused by Pillow.

    Raises:
        ImageReadError: on a missing, empty, truncated, corrupt or unsupported input, one
            above ``max_pixels``, or one whose decoding runs out of memory.
    """
    if isinstance(source, np.ndarray):
        label = name or "<array>"
        pixels, depth = _to_gray(source, label)
        return LoadedImage(pixels, depth, None, None, label)
    label, data = _read_source(source, name)
    raw = _decode_bytes(data, label, page=page, max_pixels=max_pixels)
    try:
        pixels, depth = _to_gray(raw.array, label, raw.max_sample)
    except MemoryError:
        raise ImageReadError(label, _out_of_memory(raw.array.shape[:2], max_pixels)) from None
    return LoadedImage(
        pixels,
        depth,
        raw.pixel_size_nm,
        hashlib.sha256(data).hexdigest(),
        label,
        raw.pixel_size_source if raw.pixel_size_nm is not None else None,
        page=raw.page,
    )


def read_raw_array(
    source: str | os.PathLike[str] | bytes,
    *,
    page: int = 0,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode ``source`` but keep the stored samples: (H, W) or (H, W, C), original dtype.

    Masks need the stored values (0/1 vs 0/255 vs 0/65535), not normalised gray levels.
    """
    label, data = _read_source(source, name)
    return _decode_bytes(data, label, page=page, max_pixels=max_pixels).array


def read_image_shape(source: str | os.PathLike[str], *, page: int = 0) -> tuple[int, int]:
    """Return ``(height, width)`` of an image file from its header, without decoding pixels."""
    label = os.fspath(source)
    try:
        with open(source, "rb") as fh:
            if fh.read(4) in _TIFF_MAGIC:
                fh.seek(0)
                with tifffile.TiffFile(fh) as tif:
                    tiff_page = _tiff_page(tif, page, label)
                    return int(tiff_page.imagelength), int(tiff_page.imagewidth)
            fh.seek(0)
            with Image.open(fh) as im:  # the page applies to TIFF only
                width, height = im.size
                return height, width
    except ImageReadError:
        raise
    except MemoryError:
        raise
    except FileNotFoundError:
        raise ImageReadError(label, "file not found") from None
    except UnidentifiedImageError:
        raise ImageReadError(label, _UNKNOWN_FORMAT) from None
    except Exception as exc:
        raise ImageReadError(label, _describe(exc)) from exc


def _read_source(source: str | os.PathLike[str] | bytes, name: str | None) -> tuple[str, bytes]:
    """Return (label for messages, file bytes); hashing and decoding share the one read."""
    if isinstance(source, bytes | bytearray | memoryview):
        return name or "<bytes>", bytes(source)
    label = name or os.fspath(source)
    try:
        with open(source, "rb") as fh:
            return label, fh.read()
    except FileNotFoundError:
        raise ImageReadError(label, "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(label, "is a directory, not a file") from None
    except OSError as exc:
        raise ImageReadError(label, _describe(exc)) from exc


def _decode_bytes(data: bytes, label: str, *, page: int, max_pixels: int) -> _Raw:
    """Dispatch on the magic number: tifffile for TIFF (Pillow mangles 16-bit), Pillow else."""
    if not data:
        raise ImageReadError(label, "empty file (0 bytes)")
    if page < 0:
        raise ImageReadError(label, f"page must be >= 0, got {page}")
    try:
        if data[:4] in _TIFF_MAGIC:
            return _decode_tiff(data, label, page, max_pixels)
        return _decode_pillow(data, label, max_pixels)
    except ImageReadError:
        raise
    except MemoryError:  # one image too big for this worker: its reason, not the night's end
        raise ImageReadError(label, _out_of_memory(None, max_pixels)) from None
    except UnidentifiedImageError:
        raise ImageReadError(
            label, "not a recognised image format (expected PNG/JPEG/TIFF)"
        ) from None
    except Exception as exc:  # any decoder failure means "unreadable", whatever its type
        raise ImageReadError(label, _describe(exc)) from exc


def _decode_tiff(data: bytes, label: str, page: int, max_pixels: int) -> _Raw:
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        tiff_page = _tiff_page(tif, page, label)
        _check_area(int(tiff_page.imagelength), int(tiff_page.imagewidth), max_pixels, label)
        array = tiff_page.asarray()
        if tiff_page.planarconfig == 2 and array.ndim == 3:  # SEPARATE: (S, H, W) → (H, W, S)
            array = np.moveaxis(array, 0, -1)
        pixel_size = _tiff_pixel_size(tiff_page) or _tiff_pixel_size(tif.pages[0])
        max_sample = _tiff_max_sample(tiff_page)
    return _Raw(_coerce_integer_samples(array, label), pixel_size, "tiff", page, max_sample)


def _tiff_max_sample(page: Any) -> int | None:
    """The MaxSampleValue tag (281) when it declares fewer than 16 bits' worth, else None."""
    tag = page.tags.get(281)
    if tag is None:
        return None
    value = tag.value
    value = int(value[0] if isinstance(value, tuple | list) else value)
    return value if 0 < value < 65535 else None


def _tiff_page(tif: tifffile.TiffFile, page: int, label: str) -> Any:
    count = len(tif.pages)
    if not 0 <= page < count:
        raise ImageReadError(label, f"page {page} out of range: the TIFF has {count} page(s)")
    return tif.pages[page]


def _decode_pillow(data: bytes, label: str, max_pixels: int) -> _Raw:
    """PNG, JPEG and the rest: always their first frame (the TIFF page does not apply)."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():  # between 1x and 2x the limit: refused just below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # Pillow's own limit is 2 x MAX_IMAGE_PIXELS
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        area = f"{int(claimed.group(1)):,} px" if claimed else "its size"
        raise ImageReadError(label, _too_large(area, max_pixels)) from None
    with opened as im:
        width, height = im.size
        _check_area(height, width, max_pixels, label)
        im.load()  # decode now so a truncated file fails here, not in the model
        array = _pillow_array(im, label)
        pixel_size = _text_pixel_size(im.info) or _png_phys_pixel_size(data)
        kind = (im.format or "image").lower()
    return _Raw(array, pixel_size, kind)


def _check_area(height: int, width: int, max_pixels: int, label: str) -> None:
    if height <= 0 or width <= 0:
        raise ImageReadError(label, f"zero-size image ({height}x{width})")
    if height * width > max_pixels:
        area = f"{height}x{width} px = {height * width:,} px"
        raise ImageReadError(label, _too_large(area, max_pixels))


def _too_large(area: str, max_pixels: int) -> str:
    return (
        f"{area} exceeds the limit of {max_pixels:,} px ({MAX_PIXELS_SETTING}); "
        "not decoded (a decompression bomb, or raise the setting if such images are genuine)"
    )


def _out_of_memory(shape: tuple[int, ...] | None, max_pixels: int) -> str:
    size = f" a {shape[0]}x{shape[1]} px image" if shape else ""
    return (
        f"out of memory decoding{size} (limit {max_pixels:,} px, {MAX_PIXELS_SETTING}); "
        "lower the setting or give the worker more memory"
    )


def _pillow_array(im: Image.Image, label: str) -> np.ndarray:
    """Pillow image → bool/uint8 (H, W), uint8 (H, W, 3), uint16 (H, W) or float32 (H, W)."""
    if im.mode in ("1", "L", "F"):
        return np.asarray(im)
    if im.mode in _PILLOW_16BIT_MODES:
        return np.asarray(im).astype(np.uint16)
    if im.mode == "I":  # older Pillow opens 16-bit gray PNG as 32-bit "I"
        array = np.asarray(im)
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise ImageReadError(label, "32-bit integer samples outside the 16-bit range")
        return array.astype(np.uint16)
    if im.mode in ("LA", "La"):
        return np.asarray(im.convert("L"))
    return np.asarray(im.convert("RGB"))  # P, PA, RGB(A), CMYK, YCbCr…: alpha is dropped


def _coerce_integer_samples(array: np.ndarray, label: str) -> np.ndarray:
    """TIFFs may store gray levels as int16/uint32; keep them if they fit 16 bits."""
    if array.dtype.kind not in "iu" or array.dtype in (np.uint8, np.uint16) or array.size == 0:
        return array
    if array.min() < 0 or array.max() > 65535:
        raise ImageReadError(label, f"{array.dtype} samples outside the 16-bit range")
    return array.astype(np.uint16)


def _to_gray(
    array: np.ndarray, label: str, max_sample: int | None = None
) -> tuple[np.ndarray, int]:
    """Stored samples → ((H, W) float32 in [0, 1], bit depth); RGB(A) → luma, alpha dropped."""
    channels = _split_channels(array, label)
    if channels[0].size == 0:
        raise ImageReadError(label, f"zero-size image (shape {array.shape})")
    scale, depth = _scale_of(array, label, max_sample)
    if len(channels) == 1:
        gray = channels[0].astype(np.float32)
    else:
        gray = channels[0].astype(np.float32) * np.float32(_LUMA[0])
        gray += channels[1].astype(np.float32) * np.float32(_LUMA[1])
        gray += channels[2].astype(np.float32) * np.float32(_LUMA[2])
    if scale != 1.0:
        gray /= np.float32(scale)
    np.clip(gray, 0.0, 1.0, out=gray)  # luma weights sum to 1 only up to float rounding
    return gray, depth


def _split_channels(array: np.ndarray, label: str) -> list[np.ndarray]:
    """Return [gray] or [r, g, b] views; (H, W, 2) is gray + alpha, (H, W, 4) is RGBA."""
    if array.ndim == 2:
        return [array]
    if array.ndim == 3 and array.shape[-1] in (1, 2):
        return [array[..., 0]]
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        return [array[..., 0], array[..., 1], array[..., 2]]
    raise ImageReadError(label, f"unsupported shape {array.shape}: expected (H, W) or (H, W, 3)")


TWELVE_BIT_MAX = 4095


def _scale_of(array: np.ndarray, label: str, max_sample: int | None = None) -> tuple[float, int]:
    """Full-scale value and bit depth for a dtype; floats must already lie in [0, 1].

    16-bit containers: a TIFF that declares its range (MaxSampleValue below 65535) is scaled
    by it. Without that tag, samples that all fit in 12 bits are read as 12-bit data: many
    SEM tools write their 12-bit detector output into 16-bit files, and dividing it by 65535
    would show the model a nearly black image (a 16-bit acquisition whose brightest pixel is
    below 1/16 of full scale is no usable SEM image either). Anything brighter is 16-bit.
    """
    if array.dtype == np.bool_:
        return 1.0, 8
    if array.dtype == np.uint8:
        return 255.0, 8
    if array.dtype == np.uint16:
        if max_sample is not None:
            return float(max_sample), max(int(max_sample).bit_length(), 1)
        if int(array.max()) <= TWELVE_BIT_MAX:
            return float(TWELVE_BIT_MAX), 12
        return 65535.0, 16
    if array.dtype.kind == "f":
        low, high = float(array.min()), float(array.max())
        if not (low >= 0.0 and high <= 1.0):  # also false for NaN
            raise ImageReadError(
                label, f"float samples must lie in [0, 1], found [{low:.4g}, {high:.4g}]"
            )
        return 1.0, 16
    raise ImageReadError(
        label, f"unsupported sample type {array.dtype}: use uint8, uint16 or float in [0, 1]"
    )


def _tiff_pixel_size(page: Any) -> float | None:
    """nm per pixel from the page's ImageDescription, else from its resolution tags."""
    from_text = _text_pixel_size({"description": page.description or ""})
    if from_text is not None:
        return from_text
    tags = page.tags
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return None
    nm_per_unit = _NM_PER_UNIT.get(int(tags["ResolutionUnit"].value))
    numerator, denominator = tags["XResolution"].value
    if nm_per_unit is None or numerator <= 0 or denominator <= 0:
        return None
    return _plausible(nm_per_unit * denominator / numerator)


def _text_pixel_size(info: dict[str, Any]) -> float | None:
    """Find ``PixelSize=<x>nm`` or ``pixel_size_nm=<x>`` in any text metadata."""
    for value in info.values():
        if not isinstance(value, str):
            continue
        match = _PIXEL_SIZE_RE.search(value)
        if match:
            size = float(match.group(1) or match.group(2))
            if np.isfinite(size) and size > 0:
                return size
    return None


def _png_phys_pixel_size(data: bytes) -> float | None:
    """nm per pixel from a PNG ``pHYs`` chunk in pixels per metre (Pillow only gives dpi)."""
    if not data.startswith(_PNG_MAGIC):
        return None
    offset = len(_PNG_MAGIC)
    while offset + 8 <= len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        kind = data[offset + 4 : offset + 8]
        if kind == b"IDAT":  # pHYs must precede the image data
            return None
        if kind == b"pHYs" and length == 9:
            body = data[offset + 8 : offset + 17]
            per_metre, unit = int.from_bytes(body[:4], "big"), body[8]
            return _plausible(1e9 / per_metre) if unit == 1 and per_metre > 0 else None
        offset += 12 + length
    return None


def _plausible(pixel_nm: float) -> float | None:
    if pixel_nm >= _MAX_PLAUSIBLE_PIXEL_NM:
        logger.debug("ignoring resolution of %.4g nm/px: a print resolution, not SEM", pixel_nm)
        return None
    return pixel_nm


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{text} ({type(exc).__name__})" if text else type(exc).__name__
