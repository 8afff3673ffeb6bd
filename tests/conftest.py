"""Session fixtures shared by the model, artifact, inference and CLI tests.

Everything is real and offline: the tiny open_clip config with its seeded random weights, a
small synthetic data set written to a temporary folder, and one model fitted on two shots per
class. A random backbone makes accuracy meaningless, so tests built on these fixtures assert
structure, invariants and exact equalities, never quality.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from semclip import Backbone, Dataset, FitConfig, Prediction, SemclipModel, load_backbone
from semclip.data import draw_support, load_dataset
from semclip.synth import generate_dataset

SYNTH_COUNTS = {"good": 6, "bridge": 4, "particle": 4, "scratch": 4}
SYNTH_SEED = 1
SYNTH_SIZE = 128
SHOTS = 2


BOMB_SIDE = 20_000  # px: the 389 KB PNG of the incident decodes to 20000 x 20000 (400 Mpx)


def pytest_configure(config: pytest.Config) -> None:
    """Keep all local state of the run out of the checkout: $SEMCLIP_HOME in a temp folder."""
    os.environ["SEMCLIP_HOME"] = tempfile.mkdtemp(prefix="semclip-home-")


@pytest.fixture(scope="session")
def tiny_backbone() -> Backbone:
    """`semclip-tiny` with its seeded random weights, on CPU."""
    return load_backbone("semclip-tiny", None, "cpu")


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic data set folder (images/, masks/, manifest.csv); treat as read-only."""
    out = tmp_path_factory.mktemp("synth") / "data"
    return generate_dataset(out, counts=SYNTH_COUNTS, seed=SYNTH_SEED, size=SYNTH_SIZE)


@pytest.fixture(scope="session")
def synth_dataset(synth_dir: Path) -> Dataset:
    return load_dataset(synth_dir)


@pytest.fixture(scope="session")
def support_split(synth_dataset: Dataset) -> tuple[Dataset, Dataset]:
    """(support, rest): two shots per class drawn with seed 0."""
    return draw_support(synth_dataset, SHOTS, 0)


@pytest.fixture(scope="session")
def query_paths(support_split: tuple[Dataset, Dataset]) -> list[Path]:
    """Images not in the support, to predict."""
    return [sample.image for sample in support_split[1].samples]


@pytest.fixture(scope="session")
def fast_config() -> FitConfig:
    """A cheap fit (no augmentation, few steps) for tests that fit their own models."""
    return FitConfig(augment=False, min_steps=20, max_steps=20)


@pytest.fixture(scope="session")
def fitted_model(tiny_backbone: Backbone, support_split: tuple[Dataset, Dataset]) -> SemclipModel:
    """The shared model: default FitConfig (seed 0), k = 2. Do not mutate it; use replace()."""
    return SemclipModel.fit(tiny_backbone, support_split[0])


def check_prediction(pred: Prediction, shape: tuple[int, int]) -> np.ndarray:
    """Assert every mask-derived field agrees with the decoded mask; returns the mask.

    The RLE must be byte-identical to pycocotools on the decoded mask, the area its pixel
    count, the box its extent and the region count scipy's 8-connected labelling.
    """
    from pycocotools import mask as coco_mask

    assert pred.ok, pred.error
    assert (pred.mask_height, pred.mask_width) == shape
    mask = pred.mask()
    assert mask is not None and mask.shape == shape and mask.dtype == bool
    assert isinstance(pred.needs_review, bool)
    assert pred.defect_area_px == int(mask.sum())
    if not mask.any():
        assert pred.mask_rle is None and pred.bbox is None and pred.n_regions == 0
        return mask
    expected = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()
    assert pred.mask_rle == expected
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    assert pred.bbox == (
        int(cols[0]),
        int(rows[0]),
        int(cols[-1] - cols[0] + 1),
        int(rows[-1] - rows[0] + 1),
    )
    _, n_regions = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    assert pred.n_regions == n_regions
    return mask


@pytest.fixture(scope="session")
def assert_prediction_consistent() -> Callable[[Prediction, tuple[int, int]], np.ndarray]:
    """`check_prediction` as a fixture, so every test module can use it without imports."""
    return check_prediction


@pytest.fixture
def unreachable_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A weights hub that refuses every connection (a closed local port), an empty hub cache
    and no proxy: what an air-gapped fab worker sees, without touching the real network."""
    import socket

    import huggingface_hub.constants as hf_constants

    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens
        probe.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(hf_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return endpoint


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


@pytest.fixture(scope="session")
def bomb_png() -> bytes:
    """A real decompression bomb: a valid ~390 KB 8-bit PNG of BOMB_SIDE² zero pixels.

    Built in about a second: 500 zero rows are deflated once, each piece ended by a full
    flush (which resets the compressor, so the same input gives the same bytes) and repeated;
    the zlib trailer carries the Adler-32 of all 400 MB, so a decoder accepts the stream.
    """
    rows = 500
    block = b"\x00" * ((BOMB_SIDE + 1) * rows)  # each row: filter byte 0, then the samples
    deflate = zlib.compressobj(9)
    first = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    piece = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    tail = deflate.flush()[:-4]  # the final empty block, without the 2-piece checksum
    adler = 1
    for _ in range(BOMB_SIDE // rows):
        adler = zlib.adler32(block, adler)
    stream = first + piece * (BOMB_SIDE // rows - 1) + tail + struct.pack(">I", adler)
    header = struct.pack(">IIBBBBB", BOMB_SIDE, BOMB_SIDE, 8, 0, 0, 0, 0)  # 8-bit gray
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", stream)
        + _png_chunk(b"IEND", b"")
    )
