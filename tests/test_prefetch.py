"""Decoding ahead in worker threads: the same rows, in order, bad inputs named and kept."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from semclip import PredictConfig, SemclipModel
from semclip.data.prefetch import Decoded, decode_workers, prefetch_batches
from semclip.features import batch_for_memory, batches, inference_bytes_per_image


def _decode(i: int) -> Decoded[int]:
    if i % 4 == 3:
        return Decoded(-i, None)  # a failed row: no tensor
    return Decoded(i, torch.full((3, 2, 2), float(i)))


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_batches_come_back_in_order_with_their_failures(workers: int) -> None:
    slices = list(batches(11, 4))
    got = list(prefetch_batches(range(11), slices, _decode, workers=workers))
    assert [sl for sl, _ in got] == slices
    for sl, batch in got:
        ids = list(range(sl.start, sl.stop))
        assert [d.item for d in batch.items] == [-i if i % 4 == 3 else i for i in ids]
        ok = [i for i in ids if i % 4 != 3]
        assert batch.stacked is not None and batch.error is None
        assert batch.stacked[:, 0, 0, 0].tolist() == [float(i) for i in ok]


def test_decoding_runs_in_worker_threads_ahead_of_the_consumer() -> None:
    names: set[str] = set()

    def decode(i: int) -> Decoded[int]:
        names.add(threading.current_thread().name)
        return Decoded(i, torch.zeros(1))

    it = prefetch_batches(range(12), list(batches(12, 2)), decode, workers=2)
    next(it)
    assert names and all(n.startswith("semclip-decode") for n in names)
    list(it)


def test_a_preprocessing_error_is_carried_to_the_batch() -> None:
    boom = RuntimeError("boom")

    def decode(i: int) -> Decoded[int]:
        return Decoded(i, None, boom) if i == 1 else Decoded(i, torch.zeros(1))

    [(_, batch)] = list(prefetch_batches(range(3), [slice(0, 3)], decode, workers=2))
    assert batch.error is boom and batch.stacked is None and len(batch.items) == 3


def test_worker_count_by_cpus() -> None:
    assert decode_workers(3) == 3
    assert 1 <= decode_workers(0) <= 8


@pytest.fixture()
def bad_files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "empty.png").write_bytes(b"")
    return {"missing": tmp_path / "missing.png", "empty": tmp_path / "empty.png"}


@pytest.mark.slow
def test_predict_is_the_same_with_and_without_decode_threads(
    fitted_model: SemclipModel, query_paths: list[Path], bad_files: dict[str, Path]
) -> None:
    inputs = [query_paths[0], bad_files["missing"], query_paths[1], bad_files["empty"]]
    inputs += list(query_paths[2:5])
    uris = [str(p) for p in inputs]
    inline = fitted_model.predict(inputs, uris=uris, config=PredictConfig(batch_size=2))
    threaded = fitted_model.predict(
        inputs, uris=uris, config=PredictConfig(batch_size=2, decode_workers=3)
    )
    assert [p.image_uri for p in threaded] == uris
    assert [p.ok for p in threaded] == [True, False, True, False, True, True, True]
    for a, b in zip(inline, threaded, strict=True):
        assert a.error == b.error and a.mask_rle == b.mask_rle and a.bbox == b.bbox
        if a.ok:
            np.testing.assert_allclose(
                list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-6
            )
    assert str(bad_files["missing"]) in threaded[1].error


def test_a_preprocessing_failure_falls_back_to_single_images(
    fitted_model: SemclipModel, query_paths: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = replace(fitted_model)
    original = model.preprocess.image_tensor

    prep = model.preprocess

    def image_tensor(pixels: np.ndarray) -> torch.Tensor:
        if pixels.shape == (77, 77):
            raise RuntimeError("resize failed")
        return original(pixels)

    monkeypatch.setattr(type(prep), "image_tensor", lambda self, px: image_tensor(px))
    poison = np.zeros((77, 77), dtype=np.uint8)
    preds = model.predict([query_paths[0], poison, query_paths[1]], uris=["a", "poison", "b"])
    assert [p.ok for p in preds] == [True, False, True]
    assert "prediction failed: resize failed" in preds[1].error


def test_batch_size_by_memory() -> None:
    assert batch_for_memory(10 * 2**30, 100 * 2**20) == 102
    assert batch_for_memory(2**20, 100 * 2**20) == 1  # never below one image
    assert batch_for_memory(2**40, 2**20) == 256  # capped
    with pytest.raises(ValueError, match="positive"):
        batch_for_memory(2**30, 0)


def test_per_image_memory_grows_with_resolution_and_classes(fitted_model: SemclipModel) -> None:
    enc = fitted_model.encoder
    base = inference_bytes_per_image(enc, 3, 96)
    assert inference_bytes_per_image(enc, 3, 192) > base
    assert inference_bytes_per_image(enc, 7, 96) > base
    assert fitted_model.inference_batch_size(5) == 5
    assert fitted_model.inference_batch_size(0) == 16  # CPU
