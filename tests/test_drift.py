"""Drift: the CLS embedding sum from prediction, the nightly summary and its score against
the previous nights, on file:// and moto S3."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from semclip.drift.embedding import EmbeddingSum, read_embedding_sums, write_embedding_sum
from semclip.drift.summary import (
    DriftScore,
    NightSummary,
    describe,
    drift_score,
    read_summary,
    record_drift,
    summary_path,
)
from semclip.io.partitions import write_partition
from semclip.io.pipeline_schema import PIPELINE_PREDICTION_SCHEMA, pipeline_records_to_table

if TYPE_CHECKING:
    from conftest_storage import BucketCase

    from semclip.model import SemclipModel

pytest_plugins = ["conftest_storage"]

START = dt.date(2026, 11, 1)
NOW = dt.datetime(2026, 11, 2, 3, 0, tzinfo=dt.UTC)


def test_predict_sums_the_unit_cls_embedding_of_each_predicted_image(
    fitted_model: SemclipModel, query_paths: list[Any]
) -> None:
    sums = EmbeddingSum()
    images = [*query_paths[:3], b"not an image"]
    predictions = fitted_model.predict(images, embeddings=sums)
    assert sum(p.ok for p in predictions) == 3 and sums.count == 3  # not the failed one
    dim = fitted_model.backbone.model.visual.proj.shape[1]
    mean = sums.mean()
    assert mean is not None and mean.shape == (dim,)
    assert 0.0 < float(np.linalg.norm(mean)) <= 1.0 + 1e-6  # a mean of unit vectors
    one = EmbeddingSum()
    fitted_model.predict(query_paths[:1], embeddings=one)
    assert float(np.linalg.norm(one.mean())) == pytest.approx(1.0, abs=1e-5)


def _night(
    case: BucketCase,
    day: dt.date,
    mix: dict[str, int],
    *,
    run: str,
    version: str = "1",
    embedding: np.ndarray | None = None,
    confidence: float = 0.9,
) -> None:
    """A partition for ``day`` with ``mix`` current rows, and the run's staged embedding sum."""
    records = []
    for cls, n in mix.items():
        for i in range(n):
            row = {name: None for name in PIPELINE_PREDICTION_SCHEMA.names}
            other = 1.0 - confidence
            row.update(
                image_uri=f"{case.fs.unstrip_protocol(case.root)}/raw/{day}/{cls}-{i}.png",
                image_sha256=f"{cls}-{i}-{day}",
                predicted_class=cls,
                probabilities={cls: confidence, "other": other},
                anomaly_score=0.0 if cls == "good" else confidence,
                model_name="semclip-sem",
                model_version=version,
                flow_run_id=run,
                inferred_at=NOW,
            )
            records.append(row)
    write_partition(case.fs, case.root, day, pipeline_records_to_table(records))
    if embedding is not None:
        total = sum(mix.values())
        sums = EmbeddingSum(np.asarray(embedding, dtype=np.float64) * total, total)
        write_embedding_sum(
            case.fs,
            case.root,
            day,
            sums,
            model_name="semclip-sem",
            model_version=version,
            flow_run_id=run,
            shard=0,
        )
    case.fs.invalidate_cache()


@pytest.mark.slow
def test_drift_against_the_previous_nights(bucket: BucketCase) -> None:
    fs, root = bucket.fs, bucket.root
    east = np.array([1.0, 0.0, 0.0])
    mix = {"good": 6, "particle": 3, "bridge": 1}
    for n in range(3):
        _night(bucket, START + dt.timedelta(days=n), mix, run=f"r{n}", embedding=east)

    first = record_drift(fs, root, START, window=7, threshold=0.2)
    assert first.drift.score is None and not first.flagged  # nothing to compare with
    assert "no reference night" in describe(first)
    second = record_drift(fs, root, START + dt.timedelta(days=1), window=7, threshold=0.2)
    assert second.drift.reference_dates == (START,)
    assert second.drift.score == pytest.approx(0.0, abs=1e-9) and not second.flagged
    assert second.n_images == 10 and second.n_embedded == 10
    assert second.class_counts == {"bridge": 1, "good": 6, "particle": 3}

    record_drift(fs, root, START + dt.timedelta(days=2), window=7, threshold=0.2)
    stored = read_summary(fs, root, START + dt.timedelta(days=1))
    assert stored is not None and stored.to_row() == second.to_row()
    assert fs.exists(summary_path(root, START + dt.timedelta(days=1)))

    # a new tool: the same classes, but images elsewhere in embedding space, and less sure
    shifted = START + dt.timedelta(days=3)
    _night(bucket, shifted, mix, run="r3", embedding=np.array([0.0, 1.0, 0.0]), confidence=0.6)
    drifted = record_drift(fs, root, shifted, window=2, threshold=0.2)
    assert drifted.drift.reference_dates == (
        START + dt.timedelta(days=2),
        START + dt.timedelta(days=1),
    )
    assert drifted.drift.class_js == pytest.approx(0.0, abs=1e-9)
    assert drifted.drift.embedding_distance == pytest.approx(1.0)
    assert drifted.drift.score_shift == pytest.approx(0.3)  # top probability 0.9 → 0.6
    assert drifted.flagged and "DRIFT FLAGGED" in describe(drifted)


@pytest.mark.slow
def test_embedding_distance_only_against_the_same_model_version(bucket: BucketCase) -> None:
    _night(bucket, START, {"good": 4}, run="a", version="1", embedding=np.array([1.0, 0.0]))
    _night(
        bucket,
        START + dt.timedelta(days=1),
        {"good": 4},
        run="b",
        version="2",
        embedding=np.array([0.0, 1.0]),
    )
    record_drift(bucket.fs, bucket.root, START, window=3, threshold=0.5)
    night = record_drift(
        bucket.fs, bucket.root, START + dt.timedelta(days=1), window=3, threshold=0.5
    )
    assert night.drift.embedding_distance is None  # v2's space vs v1's: not compared
    assert night.drift.class_js == pytest.approx(0.0) and not night.flagged


def test_sums_of_a_run_that_wrote_no_current_row_are_left_out(bucket: BucketCase) -> None:
    fs, root = bucket.fs, bucket.root
    _night(bucket, START, {"good": 2}, run="ok", embedding=np.array([1.0, 0.0]))
    failed = EmbeddingSum(np.array([0.0, 50.0]), 50)  # staged by a run whose write failed
    write_embedding_sum(
        fs,
        root,
        START,
        failed,
        model_name="semclip-sem",
        model_version="1",
        flow_run_id="died",
        shard=0,
    )
    sums = read_embedding_sums(
        fs, root, START, model_name="semclip-sem", model_version="1", flow_run_ids={"ok"}
    )
    assert sums.count == 2 and sums.mean() == pytest.approx([1.0, 0.0])


def test_class_mix_change_alone_flags() -> None:
    def night(day: int, mix: dict[str, int]) -> NightSummary:
        return NightSummary(
            START + dt.timedelta(days=day),
            sum(mix.values()),
            "m",
            "1",
            mix,
            (0.5,),
            (0.9,),
            None,
            0,
        )

    refs = [night(0, {"good": 90, "particle": 10}), night(1, {"good": 90, "particle": 10})]
    same = drift_score(night(2, {"good": 90, "particle": 10}), refs)
    flood = drift_score(night(2, {"good": 10, "particle": 90}), refs)
    assert same.class_js == pytest.approx(0.0) and same.embedding_distance is None
    assert flood.class_js is not None and flood.class_js > 0.4 and flood.score == flood.class_js
    assert DriftScore().score is None


def test_a_shard_that_runs_again_replaces_its_sum_instead_of_adding_it(
    bucket: BucketCase,
) -> None:
    """A retried shard (or one whose Dask worker died after writing) writes its sum again:
    the drift mean must count its images once, as the partition does."""
    fs, root = bucket.fs, bucket.root
    for attempt in range(2):
        write_embedding_sum(
            fs,
            root,
            START,
            EmbeddingSum(np.array([2.0 + attempt, 0.0]), 2),
            model_name="semclip-sem",
            model_version="1",
            flow_run_id="run-7",
            shard=3,
        )
    sums = read_embedding_sums(
        fs, root, START, model_name="semclip-sem", model_version="1", flow_run_ids={"run-7"}
    )
    assert sums.count == 2 and sums.mean() == pytest.approx([1.5, 0.0])  # the last attempt


def test_a_damaged_embedding_sum_is_named_and_left_out_not_fatal(
    bucket: BucketCase, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: record_drift raised ArrowInvalid naming no file on every re-run of the date,
    and the night dropped out of later nights' reference window."""
    import logging

    from semclip.drift.embedding import embeddings_folder

    fs, root = bucket.fs, bucket.root
    _night(bucket, START, {"good": 3}, run="r0", embedding=np.array([1.0, 0.0]))
    damaged = f"{embeddings_folder(root, START)}/r0-shard-00001.parquet"
    fs.pipe_file(damaged, b"PAR1 cut short")
    fs.invalidate_cache()

    with caplog.at_level(logging.ERROR, logger="semclip.drift.embedding"):
        record_drift(fs, root, START, window=7, threshold=0.2)
    assert fs.unstrip_protocol(damaged) in caplog.text
    summary = read_summary(fs, root, START)
    assert summary is not None and summary.n_images == 3 and summary.n_embedded == 3
