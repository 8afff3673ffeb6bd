"""The flows end to end: real Prefect runs, real MLflow registry, file:// and moto S3 buckets.

Every flow here runs under one session-wide Prefect test server (``prefect_server``). The
model is the tiny random-weight backbone, so the tests assert counts, columns, idempotency
and failure behaviour, never prediction quality.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pytest
import yaml

from flows.adapt import adapt_backbone_flow
from flows.backfill import backfill
from flows.nightly import NightlyReport, nightly_inference
from flows.params import BackfillParams, NightlyParams
from flows.refit import refit
from semclip.io.bucket import open_bucket
from semclip.io.partitions import predictions_dataset, read_partition
from semclip.io.quarantine import read_quarantine
from semclip.io.tables import parquet_files
from semclip.model import SemclipModel
from semclip.registry.refs import CHALLENGER, CHAMPION

if TYPE_CHECKING:
    from conftest_pipeline import Kit, PipelineEnv

pytest_plugins = ["conftest_pipeline"]

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.slow]  # a Prefect server

REPO = Path(__file__).resolve().parents[1]


class PredictSpy:
    """Wraps SemclipModel.predict and records every URI it is asked to predict."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.uris: list[str] = []
        original = SemclipModel.predict

        def spy(model: SemclipModel, images: Any, *, uris: Any = None, **kwargs: Any) -> Any:
            self.uris.extend(uris or [])
            return original(model, images, uris=uris, **kwargs)

        monkeypatch.setattr(SemclipModel, "predict", spy)


def _failure(state: Any) -> str:
    assert state.is_failed(), state
    return str(state.message)


# --------------------------------------------------------------------------- nightly


def test_nightly_quarantines_corrupt_inputs_and_reruns_idempotently(
    kit: Kit, pipeline_env: PipelineEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs, root = pipeline_env.fs, pipeline_env.root
    good = kit.write_raw_dump(fs, root, kit.RUN_DATE, 6)
    kit.write_raw_dump(
        fs, root, kit.RUN_DATE + dt.timedelta(days=1), 2, corrupt=False
    )  # not this date
    spy = PredictSpy(monkeypatch)

    first = nightly_inference(run_date=kit.RUN_DATE.isoformat())

    assert isinstance(first, NightlyReport)
    assert (first.images, first.predicted, first.kept, first.quarantined) == (8, 6, 0, 2)
    assert first.rows_total == 6 and first.model_version == "1" and first.random_backbone
    assert len(spy.uris) == 8 and all(kit.RUN_DATE.isoformat() in u for u in spy.uris)
    rows = read_partition(fs, root, kit.RUN_DATE).to_pylist()
    assert sorted(r["image_uri"] for r in rows) == sorted(fs.unstrip_protocol(p) for p in good)
    by_defect = {r["defect_id"]: r for r in rows}
    d2 = by_defect["D0002"]
    assert (d2["lot_id"], d2["wafer_id"], d2["die_x_index"], d2["die_y_index"]) == (
        "LOT7",
        "W03",
        1,
        -1,
    )
    assert (d2["x_rel_um"], d2["y_rel_um"]) == (21.0, 40.5)
    assert all(r["model_name"] == "semclip-sem" and r["model_version"] == "1" for r in rows)
    assert all(r["flow_run_id"] and r["inferred_at"] for r in rows)
    assert all(r["error"] is None and r["predicted_class"] for r in rows)
    quarantine = read_quarantine(fs, root, kit.RUN_DATE).to_pylist()
    reasons = {Path(q["image_uri"]).name: q["reason"] for q in quarantine}
    assert set(reasons) == {"garbage.png", "truncated.png"}
    assert "truncated" in reasons["truncated.png"]
    fs.invalidate_cache()
    staged = fs.find(f"{root}/_staging") if fs.exists(f"{root}/_staging") else []
    assert staged == []  # the run removed its staged shards and the partition's staged copy

    # Re-run: nothing recomputed for kept rows (only the two broken files are retried).
    spy.uris.clear()
    second = nightly_inference(run_date=kit.RUN_DATE.isoformat())
    assert (second.predicted, second.kept, second.rows_total) == (0, 6, 6)
    assert sorted(Path(u).name for u in spy.uris) == ["garbage.png", "truncated.png"]
    again = read_partition(fs, root, kit.RUN_DATE).to_pylist()
    assert again == rows  # same rows, same run ids and times: kept, not rewritten
    files = parquet_files(fs, f"{root}/predictions/date={kit.RUN_DATE}")
    assert len(files) == 1  # no stale files
    assert second.quarantined == 2  # this run met them again ...
    assert read_quarantine(fs, root, kit.RUN_DATE).num_rows == 2  # ... recorded once

    # A new image arrives: only it is predicted; the partition is the union.
    fs.pipe_file(
        f"{root}/raw/{kit.RUN_DATE}/LOT7/W04/D0101.png", kit.synth_png("bridge", 42, seed=5)
    )
    spy.uris.clear()
    third = nightly_inference(run_date=kit.RUN_DATE.isoformat())
    new_uri = fs.unstrip_protocol(f"{root}/raw/{kit.RUN_DATE}/LOT7/W04/D0101.png")
    assert new_uri in spy.uris and not set(spy.uris) & {fs.unstrip_protocol(p) for p in good}
    assert (third.predicted, third.kept, third.rows_total) == (1, 6, 7)
    final = read_partition(fs, root, kit.RUN_DATE)
    hashes, versions = final["image_sha256"].to_pylist(), final["model_version"].to_pylist()
    keys = list(zip(hashes, versions, strict=True))
    assert len(keys) == len(set(keys))  # never a duplicate
    assert len(parquet_files(fs, f"{root}/predictions/date={kit.RUN_DATE}")) == 1

    # A copy of a predicted image under another name (or the same file renamed) on a later
    # run: no second row for those bytes, and not "kept" silently either: quarantined,
    # naming the URI whose row holds them, so images = predicted + kept + quarantined.
    copy = f"{root}/raw/{kit.RUN_DATE}/LOT7/W05/copy-of-D0101.png"
    fs.pipe_file(copy, fs.cat_file(f"{root}/raw/{kit.RUN_DATE}/LOT7/W04/D0101.png"))
    fourth = nightly_inference(run_date=kit.RUN_DATE.isoformat())
    assert (fourth.images, fourth.predicted, fourth.kept, fourth.quarantined) == (10, 0, 7, 3)
    assert fourth.rows_total == 7
    reasons = {
        q["image_uri"]: q["reason"] for q in read_quarantine(fs, root, kit.RUN_DATE).to_pylist()
    }
    assert reasons[fs.unstrip_protocol(copy)].endswith(f"as {new_uri}, predicted under that URI")


def test_a_transient_fetch_error_retries_the_shard_instead_of_quarantining_the_image(
    kit: Kit, pipeline_env: PipelineEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a connection reset while fetching one image (s3fs's own retries spent) was
    quarantined as "cannot fetch" and the run ended Completed with that image unpredicted."""
    import tasks.inference

    fs, root = pipeline_env.fs, pipeline_env.root
    kit.write_raw_dump(fs, root, kit.RUN_DATE, 6)
    real_fetch = tasks.inference.fetch_bytes
    resets: list[str] = []

    def flaky_fetch(fs: Any, uris: Any) -> dict[str, Any]:
        out = real_fetch(fs, uris)
        for uri in out:
            if uri.endswith("D0002.png") and not resets:  # the first attempt only
                resets.append(uri)
                out[uri] = ConnectionResetError(104, "Connection reset by peer")
        return out

    monkeypatch.setattr(tasks.inference, "fetch_bytes", flaky_fetch)
    monkeypatch.setattr(tasks.inference.predict_shard, "retry_delay_seconds", [0, 0])

    report = nightly_inference(run_date=kit.RUN_DATE.isoformat())

    assert resets, "the fault did not fire"
    assert (report.images, report.predicted, report.quarantined) == (8, 6, 2)
    quarantined = {
        Path(q["image_uri"]).name for q in read_quarantine(fs, root, kit.RUN_DATE).to_pylist()
    }
    assert quarantined == {"garbage.png", "truncated.png"}  # not D0002.png
    uris = read_partition(fs, root, kit.RUN_DATE).column("image_uri").to_pylist()
    assert resets[0] in uris and len(uris) == len(set(uris)) == 6


def test_a_missing_image_is_quarantined_not_retried() -> None:
    """The other side of the line: a file gone between listing and fetching is no outage."""
    from tasks.common import is_transient

    assert not is_transient(FileNotFoundError("raw/2026-03-01/D1.png"))
    assert not is_transient(PermissionError("Access Denied"))
    assert is_transient(ConnectionResetError(104, "Connection reset by peer"))
    assert is_transient(OSError("SlowDown: please reduce your request rate"))


def test_nightly_quarantines_a_bomb_and_links_out_and_keeps_pngs_under_a_tiff_page(
    kit: Kit,
    pipeline_env: PipelineEnv,
    bomb_png: bytes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fs, root = pipeline_env.fs, pipeline_env.root
    monkeypatch.setenv("SEMCLIP_TIFF_PAGE", "1")  # the detector page of this fab's TIFFs
    good = kit.write_raw_dump(fs, root, kit.RUN_DATE, 3, corrupt=False)  # PNGs
    folder = f"{root}/raw/{kit.RUN_DATE}/LOT7/W03"
    fs.pipe_file(f"{folder}/D0004.png", bomb_png)  # 389 KB, 20000 x 20000 px
    outside = tmp_path / "not-the-bucket" / "D0005.png"
    outside.parent.mkdir()
    outside.write_bytes(kit.synth_png("good", 7))
    Path(f"{folder}/D0005.png").symlink_to(outside)  # a link out of the local bucket
    fs.invalidate_cache()

    report = nightly_inference(run_date=kit.RUN_DATE.isoformat())

    assert (report.images, report.predicted, report.quarantined) == (5, 3, 2)
    rows = read_partition(fs, root, kit.RUN_DATE).to_pylist()
    assert sorted(r["image_uri"] for r in rows) == sorted(fs.unstrip_protocol(p) for p in good)
    reasons = {
        Path(q["image_uri"]).name: q["reason"]
        for q in read_quarantine(fs, root, kit.RUN_DATE).to_pylist()
    }
    assert set(reasons) == {"D0004.png", "D0005.png"}
    assert "400,000,000 px" in reasons["D0004.png"]
    assert "SEMCLIP_MAX_IMAGE_PIXELS" in reasons["D0004.png"]
    assert "outside the bucket" in reasons["D0005.png"] and str(outside) in reasons["D0005.png"]


def test_nightly_on_s3(
    kit: Kit,
    s3_endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    registry_templates: Any,
) -> None:
    url = f"s3://semclip-flows-{uuid.uuid4().hex[:12]}"
    fs, root = open_bucket(url, endpoint_url=s3_endpoint, create=True)
    registry = kit.copy_registry(registry_templates, "champion", tmp_path / "registry")
    kit.use_environment(monkeypatch, tmp_path / "home", url, s3_endpoint, registry)
    kit.write_raw_dump(fs, root, kit.RUN_DATE, 3)

    report = nightly_inference(run_date=kit.RUN_DATE.isoformat())

    assert (report.images, report.predicted, report.quarantined) == (5, 3, 2)
    assert report.partition_uri == f"{url}/predictions/date={kit.RUN_DATE}"
    table = read_partition(fs, root, kit.RUN_DATE)
    assert table.num_rows == 3 and all(
        u.startswith("s3://") for u in table["image_uri"].to_pylist()
    )
    assert read_quarantine(fs, root, kit.RUN_DATE).num_rows == 2
    dataset = predictions_dataset(fs, root).to_table()
    assert dataset.schema.field("date").type == pa.date32()
    assert set(dataset["date"].to_pylist()) == {kit.RUN_DATE}


def test_nightly_empty_date_completes_with_zero_counts(pipeline_env: PipelineEnv) -> None:
    report = nightly_inference(run_date="2026-10-31")
    assert (report.images, report.predicted, report.quarantined, report.rows_total) == (0, 0, 0, 0)
    assert not pipeline_env.fs.exists(f"{pipeline_env.root}/predictions/date=2026-10-31")


def test_nightly_missing_bucket_fails_clearly(
    kit: Kit, pipeline_env: PipelineEnv, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SEMCLIP_BUCKET", f"file://{tmp_path / 'no-such-bucket'}")
    state = nightly_inference(run_date=kit.RUN_DATE.isoformat(), return_state=True)
    message = _failure(state)
    assert "no-such-bucket" in message and "does not exist" in message


def test_nightly_without_champion_fails_clearly(
    kit: Kit,
    pipeline_env: PipelineEnv,
    monkeypatch: pytest.MonkeyPatch,
    registry_templates: Any,
    tmp_path: Path,
) -> None:
    empty = kit.copy_registry(registry_templates, "empty", tmp_path / "empty-registry")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", empty.tracking_uri)
    message = _failure(nightly_inference(run_date=kit.RUN_DATE.isoformat(), return_state=True))
    assert "no registered model 'semclip-sem'" in message and "refit" in message


def test_nightly_pinned_version_and_missing_version(kit: Kit, pipeline_env: PipelineEnv) -> None:
    kit.write_raw_dump(pipeline_env.fs, pipeline_env.root, kit.RUN_DATE, 1, corrupt=False)
    assert nightly_inference(run_date=str(kit.RUN_DATE), model_version=1).predicted == 1
    message = _failure(
        nightly_inference(run_date=str(kit.RUN_DATE), model_version="9", return_state=True)
    )
    assert "has no version 9" in message and "versions: 1" in message


@pytest.mark.parametrize("bad", ["2026-13-01", "yesterday", "2026-11-1", "2999-01-01"])
def test_nightly_params_reject_bad_run_dates(bad: str) -> None:
    with pytest.raises(ValueError, match="run_date"):
        NightlyParams.build(bad, None, "UTC")


def test_nightly_fails_on_a_bad_run_date_before_any_work(
    kit: Kit, pipeline_env: PipelineEnv
) -> None:
    kit.write_raw_dump(pipeline_env.fs, pipeline_env.root, kit.RUN_DATE, 1, corrupt=False)
    message = _failure(nightly_inference(run_date="2026-11-31", return_state=True))
    assert "run_date '2026-11-31' is not a valid date" in message
    assert not pipeline_env.fs.exists(f"{pipeline_env.root}/predictions")


def test_nightly_params_default_to_yesterday_in_fab_timezone() -> None:
    params = NightlyParams.build(None, None, "Pacific/Kiritimati")
    from flows.params import today_in

    assert params.run_date == today_in("Pacific/Kiritimati") - dt.timedelta(days=1)
    assert NightlyParams.build("2026-11-01", 3, "UTC").model_version == "3"


# --------------------------------------------------------------------------- backfill


def _runs_of(deployment_id: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )


@pytest.fixture(scope="module")
def nightly_deployment(prefect_server: None) -> str:
    """The nightly flow registered as nightly-inference/nightly (no worker: runs stay queued)."""
    return str(nightly_inference.to_deployment(name="nightly").apply())


@pytest.mark.parametrize(
    ("start", "end", "words"),
    [
        ("2026-11-05", "2026-11-01", "is after end"),
        ("2026-02-30", "2026-03-02", "not a valid date"),
        ("11/01/2026", "2026-11-02", "YYYY-MM-DD"),
        ("2020-01-01", "2026-01-01", "at most 366"),
        (str(dt.date.today()), str(dt.date.today() + dt.timedelta(days=3)), "in the future"),
    ],
)
def test_backfill_params_reject_bad_ranges(start: str, end: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        BackfillParams.build(start, end, "req", None, "nightly-inference/nightly", "UTC")


def test_backfill_rejects_a_bad_range_before_scheduling(
    pipeline_env: PipelineEnv, nightly_deployment: str
) -> None:
    before = len(_runs_of(nightly_deployment))
    message = _failure(backfill(start="2026-11-05", end="2026-11-01", return_state=True))
    assert "start 2026-11-05 is after end 2026-11-01" in message
    assert len(_runs_of(nightly_deployment)) == before


def test_backfill_schedules_one_run_per_date_idempotently(
    pipeline_env: PipelineEnv, nightly_deployment: str
) -> None:
    first = backfill(start="2026-10-01", end="2026-10-03", request_id="req-1")
    assert first.dates == [dt.date(2026, 10, d) for d in (1, 2, 3)]
    runs = {str(r.id): r for r in _runs_of(nightly_deployment)}
    assert set(first.flow_run_ids) <= set(runs)
    assert [runs[i].parameters["run_date"] for i in first.flow_run_ids] == [
        "2026-10-01",
        "2026-10-02",
        "2026-10-03",
    ]
    again = backfill(start="2026-10-01", end="2026-10-03", request_id="req-1")
    assert again.flow_run_ids == first.flow_run_ids  # a retried backfill makes no duplicates
    later = backfill(start="2026-10-02", end="2026-10-02", request_id="req-2")
    assert later.flow_run_ids[0] not in first.flow_run_ids  # a new backfill runs again


def test_backfill_unknown_deployment_fails_before_scheduling(pipeline_env: PipelineEnv) -> None:
    message = _failure(
        backfill(
            start="2026-10-01",
            end="2026-10-01",
            deployment="nightly-inference/nope",
            return_state=True,
        )
    )
    assert "prefect deploy" in message


def test_backfill_keys_carry_date_and_request_id() -> None:
    params = BackfillParams.build("2026-10-01", "2026-10-02", "abc", None, "a/b", "UTC")
    assert params.idempotency_key(dt.date(2026, 10, 2)) == "semclip-backfill/abc/2026-10-02"


def test_rerun_after_a_promotion_counts_each_image_once(
    kit: Kit, pipeline_env: PipelineEnv, small_model_dir: Path
) -> None:
    """The issue's 28 rows for 14 images: history stays, the summary counts current rows."""
    from tasks.common import BucketRef
    from tasks.demo import summarize_predictions

    fs, root, registry = pipeline_env.fs, pipeline_env.root, pipeline_env.registry
    kit.write_raw_dump(fs, root, kit.RUN_DATE, 4, corrupt=False)
    nightly_inference(run_date=kit.RUN_DATE.isoformat())
    registry.promote(registry.log_version(small_model_dir, run_name="v2").version)

    rerun = nightly_inference(run_date=kit.RUN_DATE.isoformat())

    assert rerun.model_version == "2" and rerun.rows_total == 8  # v1's rows kept as history
    bucket = BucketRef(pipeline_env.bucket_url, None)
    summary = summarize_predictions.fn(bucket, [kit.RUN_DATE], registry)
    assert (summary.rows, summary.history_rows) == (4, 8)
    assert summary.model_versions == ["2"] and summary.champion == "2"
    assert sum(summary.by_class.values()) == 4
    registry.promote("1")  # a rollback makes v1's rows current again, with no re-run
    assert summarize_predictions.fn(bucket, [kit.RUN_DATE], registry).model_versions == ["1"]


def test_nightly_rows_carry_pixel_size_from_the_file_else_the_setting(
    kit: Kit, pipeline_env: PipelineEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TIFF with resolution tags (5 nm/px) keeps its own size; PNGs without metadata
    take SEMCLIP_PIXEL_SIZE_NM; defect_area_nm2 follows from each."""
    import io

    import numpy as np
    import tifffile
    from PIL import Image

    fs, root = pipeline_env.fs, pipeline_env.root
    pngs = kit.write_raw_dump(fs, root, kit.RUN_DATE, 2, corrupt=False)
    pixels = np.asarray(Image.open(io.BytesIO(kit.synth_png("particle", 5))))
    out = io.BytesIO()  # 2e6 px per cm = 5 nm per pixel
    tifffile.imwrite(out, pixels, resolution=(2e6, 2e6), resolutionunit="CENTIMETER")
    tif = f"{root}/raw/{kit.RUN_DATE.isoformat()}/LOT7/W03/D0009.tif"
    fs.pipe_file(tif, out.getvalue())
    monkeypatch.setenv("SEMCLIP_PIXEL_SIZE_NM", "2.5")

    nightly_inference(run_date=kit.RUN_DATE.isoformat())

    rows = {r["image_uri"]: r for r in read_partition(fs, root, kit.RUN_DATE).to_pylist()}
    expected = {fs.unstrip_protocol(tif): (5.0, "tiff")}
    expected.update({fs.unstrip_protocol(p): (2.5, "setting") for p in pngs})
    assert {u: (r["pixel_size_nm"], r["pixel_size_source"]) for u, r in rows.items()} == expected
    for row in rows.values():
        size = row["pixel_size_nm"]
        assert row["defect_area_nm2"] == pytest.approx(row["defect_area_px"] * size**2)


# --------------------------------------------------------------------------- refit


def test_refit_registers_champion_then_gates_an_equal_candidate(
    kit: Kit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry_templates: Any
) -> None:
    url = f"file://{tmp_path / 'bucket'}"
    fs, root = open_bucket(url, create=True)
    registry = kit.copy_registry(registry_templates, "empty", tmp_path / "registry")
    kit.use_environment(monkeypatch, tmp_path / "home", url, None, registry)
    monkeypatch.setenv("SEMCLIP_SUPPORT_CAP_PER_CLASS", "1")  # k = 1: one cheap fit
    kit.write_confirmed(fs, root, {"good": 4, "bridge": 4, "scratch": 4})
    header = "image_uri,label,mask_uri,confirmed_at,reviewer\n"
    late = header + "confirmed/img/missing.png,good,,2026-10-09,t\n"
    fs.pipe_file(f"{root}/confirmed/late.csv", late.encode())  # points at a missing image
    secret = tmp_path / "secret.png"  # an image outside the bucket: must not be trained on
    secret.write_bytes(kit.synth_png("bridge", 9))
    good_0 = fs.cat_file(f"{root}/confirmed/img/good_0.png")
    fs.pipe_file(f"{root}/confirmed/img/copy.png", good_0)  # good_0's bytes, another path
    odd = header + "".join(
        f"{row},2026-10-09,t\n"
        for row in (
            f"{secret},bridge,",  # row 1: absolute path
            f"file://{secret},bridge,",  # row 2: a file:// URI outside the bucket
            "confirmed/../../secret.png,bridge,",  # row 3: climbs out
            "s3://other-bucket/x.png,SCRATCH,",  # row 4: another bucket
            "confirmed/img/copy.png, Bridge ,",  # row 5: good_0's bytes labelled bridge
        )
    )
    fs.pipe_file(f"{root}/confirmed/odd.csv", odd.encode())
    options = {"backbone": "semclip-tiny", "fit": kit.FAST_FIT, "databar_bottom": 5}

    first = refit(**options)

    assert first.version == "1" and first.promoted and first.champion_version == "1"
    assert "no champion yet" in first.reason and first.random_backbone
    assert first.n_confirmed == 14 and first.n_support == 3 and first.n_holdout >= 1
    assert any("missing.png" in p for p in first.problems)
    odd_uri = fs.unstrip_protocol(f"{root}/confirmed/odd.csv")
    assert [r.split(",")[0] for r in first.rejected_rows] == [
        f"{odd_uri} row {n}" for n in (1, 2, 3, 4)
    ]
    assert all("outside" in r or "absolute path" in r for r in first.rejected_rows)
    (conflict,) = first.label_conflicts
    assert "good_0.png as 'good'" in conflict and "copy.png as 'bridge'" in conflict
    assert [n.split(": ", 1)[1] for n in first.normalised_labels] == [
        "label 'SCRATCH' read as 'scratch'",  # a rejected row's label is reported too
        "label ' Bridge ' read as 'bridge'",
    ]
    assert "Rejected confirmed rows (4)" in first.markdown()
    refit_lineage = registry.load(CHAMPION).lineage["refit"]
    assert [r["row"] for r in refit_lineage["rejected_rows"]] == [1, 2, 3, 4]
    assert refit_lineage["label_conflicts"][0]["sha256"] == hashlib.sha256(good_0).hexdigest()
    trained = {s["sha256"] for s in registry.load(CHAMPION).lineage["support"]}
    assert hashlib.sha256(good_0).hexdigest() not in trained
    assert hashlib.sha256(secret.read_bytes()).hexdigest() not in trained
    assert registry.resolve(CHALLENGER).version == "1"
    lineage = registry.load(CHAMPION).lineage
    assert lineage["refit"]["n_holdout"] == first.n_holdout
    support_hashes = {s["sha256"] for s in lineage["support"]}

    second = refit(**options)  # same shots; a hold-out of 3 images, none of them good

    assert second.version == "2" and not second.promoted
    assert second.gate_decision == "insufficient" and "good 0" in second.reason
    assert second.holdout_per_class == {"good": 0, "bridge": 1, "scratch": 2}
    assert second.champion_version == "1" and second.previous_champion == "1"
    assert registry.resolve(CHAMPION).version == "1"
    assert registry.resolve(CHALLENGER).version == "2"
    assert second.champion_metrics is not None
    assert second.candidate_metrics["f1"] == second.champion_metrics["f1"]
    second_lineage = registry.load("2").lineage
    assert {s["sha256"] for s in second_lineage["support"]} == support_hashes  # fixed split
    metrics = registry.run_metrics(registry.resolve("2"))
    assert {"candidate.f1", "champion.f1", "holdout.n_images"} <= set(metrics)
    assert registry.resolve("2").tags["semclip.gate"] == "insufficient"


def test_refit_judges_on_the_bootstrap_bound_and_records_what_an_ml_engineer_expects(
    kit: Kit, pipeline_env: PipelineEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11: wafer groups, the bootstrap gate, and the MLflow record of a refit."""
    import subprocess

    from mlflow import MlflowClient

    monkeypatch.setenv("SEMCLIP_SUPPORT_CAP_PER_CLASS", "1")
    monkeypatch.setenv("SEMCLIP_HOLDOUT_FRACTION", "0.5")  # 3 good, 3 bridge, 2 scratch held
    monkeypatch.setenv("SEMCLIP_GATE_MIN_HOLDOUT_PER_CLASS", "2")
    env = pipeline_env
    kit.write_confirmed(env.fs, env.root, {"good": 4, "bridge": 4, "scratch": 4}, wafers=2)

    report = refit(backbone="semclip-tiny", fit=kit.FAST_FIT, databar_bottom=5)

    assert report.version == "2" and report.previous_champion == "1"
    assert report.gate_decision in {"hold", "promote"}  # judged, not insufficient
    assert report.promoted is (report.gate_decision == "promote")
    assert report.holdout_per_class == {"good": 3, "bridge": 3, "scratch": 2}
    assert report.n_resamples == 1000 and report.f1_gain is not None
    assert report.f1_gain_lower is not None and f"{report.f1_gain_lower:+.4f}" in report.reason
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    assert report.git_commit == head.stdout.strip() and len(report.git_commit) == 40

    ref = env.registry.resolve("2")
    model = env.registry.load(ref)
    groups = {s["group"] for s in model.lineage["support"]}
    assert groups <= {"LOT1/W01", "LOT1/W02"} and None not in groups  # folds keep wafers
    assert model.lineage["refit"]["git_commit"] == report.git_commit

    client = MlflowClient(tracking_uri=env.registry.tracking_uri)
    run = client.get_run(ref.run_id or "")
    metrics, tags = run.data.metrics, run.data.tags
    assert metrics["gate.f1_gain_lower"] == pytest.approx(report.f1_gain_lower)
    assert metrics["gate.n_resamples"] == 1000 and metrics["holdout.n_good"] == 3
    for label in ("good", "bridge", "scratch"):
        assert f"candidate.holdout_f1_{label}" in metrics
        assert f"candidate.holdout_recall_{label}" in metrics
    assert tags["mlflow.source.git.commit"] == report.git_commit
    assert ref.tags["semclip.gate"] == report.gate_decision
    assert ref.tags["semclip.git_commit"] == report.git_commit

    inputs = {d.tags[0].value: d.dataset for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "holdout"}
    support = inputs["training"]
    assert "image_uri" in support.schema and "sha256" in support.schema
    assert "label" in support.schema and support.profile and '"num_rows": 3' in support.profile
    assert '"num_rows": 8' in inputs["holdout"].profile

    description = client.get_model_version(ref.name, "2").description
    assert "classes: good, bridge, scratch" in description
    assert "backbone: semclip-tiny" in description and "good 1, bridge 1, scratch 1" in description
    assert f"gate: {report.gate_decision}" in description


def test_refit_without_confirmed_shots_fails_clearly(pipeline_env: PipelineEnv) -> None:
    message = _failure(refit(backbone="semclip-tiny", return_state=True))
    assert "no confirmed shots" in message


def test_refit_without_backbone_settings_fits_on_the_champions_backbone(
    kit: Kit, pipeline_env: PipelineEnv, monkeypatch: pytest.MonkeyPatch, unreachable_hub: str
) -> None:
    """`prefect deployment run 'refit/weekly'` as deployed: no parameters, no backbone setting,
    no hub. The champion's own backbone (inside its model version) is what it fits with."""
    monkeypatch.setenv("SEMCLIP_SUPPORT_CAP_PER_CLASS", "1")
    kit.write_confirmed(pipeline_env.fs, pipeline_env.root, {"good": 3, "bridge": 3})

    report = refit(fit=kit.FAST_FIT)

    registry = pipeline_env.registry
    assert report.version == "2" and report.previous_champion == "1"
    assert report.backbone.startswith("semclip-tiny") and report.random_backbone
    fitted = registry.load("2").backbone
    assert (fitted.name, fitted.random_weights) == ("semclip-tiny", True)
    params = registry.client().get_run(registry.resolve("2").run_id).data.params
    assert params["backbone"] == "semclip-tiny"
    assert params["backbone_source"].endswith("from champion v1")


def test_refit_with_no_backbone_and_no_champion_fails_in_seconds(
    kit: Kit,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    registry_templates: Any,
    unreachable_hub: str,
) -> None:
    url = f"file://{tmp_path / 'bucket'}"
    fs, root = open_bucket(url, create=True)
    registry = kit.copy_registry(registry_templates, "empty", tmp_path / "registry")
    kit.use_environment(monkeypatch, tmp_path / "home", url, None, registry)
    kit.write_confirmed(fs, root, {"good": 2, "bridge": 2})
    start = time.monotonic()

    message = _failure(refit(fit=kit.FAST_FIT, return_state=True))

    assert time.monotonic() - start < 20
    for setting in ("SEMCLIP_BACKBONE", "SEMCLIP_PRETRAINED", "--param backbone"):
        assert setting in message
    assert registry.versions() == []


# --------------------------------------------------------------------------- deployments


def test_prefect_yaml_declares_the_four_deployments() -> None:
    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert set(deployments) == {
        "nightly",
        "weekly",
        "monthly",
        "backfill",
        "report",
        "klarf-export",
    }
    assert deployments["report"]["entrypoint"] == "flows/report.py:yield_report"
    nightly = deployments["nightly"]
    assert nightly["entrypoint"] == "flows/nightly.py:nightly_inference"
    assert nightly["schedules"][0]["timezone"] == spec["definitions"]["fab_timezone"]
    assert (
        nightly["work_pool"]["job_variables"]["env"]["SEMCLIP_TIMEZONE"]
        == (spec["definitions"]["fab_timezone"])
    )
    assert deployments["weekly"]["entrypoint"] == "flows/refit.py:refit"
    assert deployments["weekly"]["schedules"][0]["timezone"]
    assert deployments["backfill"]["entrypoint"] == "flows/backfill.py:backfill"
    monthly = deployments["monthly"]  # adapt-backbone/monthly
    assert monthly["entrypoint"] == "flows/adapt.py:adapt_backbone_flow"
    assert monthly["schedules"][0]["timezone"] == spec["definitions"]["fab_timezone"]
    assert monthly["parameters"] == {"nights": 30}
    assert adapt_backbone_flow.name == "adapt-backbone"
    for d in deployments.values():
        assert d["work_pool"]["name"] == "semclip"
        module, name = d["entrypoint"].split(":")
        assert (REPO / module).is_file()
    names = {"nightly-inference": nightly_inference, "refit": refit, "backfill": backfill}
    assert deployments["backfill"]["parameters"]["deployment"].split("/")[0] in names


def test_gpu_limit_exists_and_setup_is_idempotent() -> None:
    from prefect.client.orchestration import get_client

    from flows.setup import ensure_gpu_limit
    from tasks.common import GPU_LIMIT

    assert GPU_LIMIT == "semclip-gpu"
    assert ensure_gpu_limit() is False  # created at session set-up already
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(GPU_LIMIT)
    assert limit.limit == 1 and limit.active


def test_setup_leaves_an_operators_limit_alone() -> None:
    """A shared server's limit of 3 stays 3: set-up only creates what is missing."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from flows.setup import ensure_gpu_limit

    name = "semclip-gpu-shared-test"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=3))
    assert ensure_gpu_limit(1, name=name) is False
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(name).limit == 3


def test_setup_prints_the_limits_it_left(capsys: pytest.CaptureFixture) -> None:
    """The operator sees the values on the server, not only 'present': Prefect's logging
    config hides set-up's INFO lines, so they are printed."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from flows.setup import main

    with get_client(sync_client=True) as client:
        client.create_work_pool(
            WorkPoolCreate(name="semclip-busy-pool", type="process", concurrency_limit=3)
        )
    assert main(["--pool", "semclip-busy-pool"]) == 0
    assert "'semclip-busy-pool': present, concurrency limit 3" in capsys.readouterr().out


def test_setup_gives_the_work_pool_a_concurrency_limit(capsys: pytest.CaptureFixture) -> None:
    """Backfill runs queue: the pool starts one flow run at a time, and set-up says where."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate

    from flows.setup import ensure_work_pool, main

    assert main(["--pool", "semclip-test-pool"]) == 0
    out = capsys.readouterr().out
    assert "Prefect server: http" in out
    assert "'semclip-test-pool': created, concurrency limit 1" in out
    assert "'semclip-gpu': present, limit 1 (active)" in out
    with get_client(sync_client=True) as client:
        assert client.read_work_pool("semclip-test-pool").concurrency_limit == 1
        client.create_work_pool(WorkPoolCreate(name="semclip-bare-pool", type="process"))
    assert ensure_work_pool("semclip-bare-pool", 1) is False  # present, but had no limit
    with get_client(sync_client=True) as client:
        assert client.read_work_pool("semclip-bare-pool").concurrency_limit == 1
        client.update_work_pool("semclip-bare-pool", WorkPoolUpdate(concurrency_limit=4))
    ensure_work_pool("semclip-bare-pool", 1)
    with get_client(sync_client=True) as client:
        assert client.read_work_pool("semclip-bare-pool").concurrency_limit == 4


def test_setup_refuses_a_temporary_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import flows.setup as setup

    monkeypatch.setattr(setup, "server_url", lambda: None)
    assert setup.main([]) == 2
    assert "PREFECT_API_URL is not set" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (ConnectionError("reset by peer"), True),
        (TimeoutError("slow S3"), True),
        (OSError("EIO"), True),
        (FileNotFoundError("no bucket"), False),
        (PermissionError("denied"), False),
        (ValueError("bad date"), False),
    ],
)
def test_io_tasks_retry_only_transient_errors(error: Exception, retry: bool) -> None:
    from prefect.states import Failed

    from tasks.common import retry_on_transient

    assert retry_on_transient(None, None, Failed(data=error)) is retry  # type: ignore[arg-type]


def test_a_failed_refit_leaves_no_staging_and_n_support_counts_only_fitted_shots(
    kit: Kit, pipeline_env: PipelineEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10 item 11: a refit that fails after fitting (MLflow down at registration) removes
    its local model folder; a support shot that cannot be decoded is reported and not counted
    in ``n_support``."""
    from prefect import task

    import flows.refit as refit_flow
    from semclip.refit.split import is_holdout
    from semclip.settings import get_settings

    monkeypatch.setenv("SEMCLIP_SUPPORT_CAP_PER_CLASS", "1")
    fs, root = pipeline_env.fs, pipeline_env.root
    kit.write_confirmed(fs, root, {"good": 3, "bridge": 3, "scratch": 3})
    # The newest bridge shot, on the train side of the split, is a truncated PNG: it is
    # selected for the support (newest first, cap 1) and fails to decode at fit time.
    whole = kit.synth_png("bridge", 7)
    fraction = get_settings().holdout_fraction
    cut = next(
        n
        for n in range(len(whole) // 2, len(whole))
        if not is_holdout(hashlib.sha256(whole[:n]).hexdigest(), fraction)
    )
    fs.pipe_file(f"{root}/confirmed/img/cut.png", whole[:cut])
    fs.pipe_file(
        f"{root}/confirmed/late.csv",
        b"image_uri,label,mask_uri,confirmed_at,reviewer\n"
        b"confirmed/img/cut.png,bridge,,2026-11-30T00:00:00+00:00,t\n",
    )
    staging = pipeline_env.home / "staging" / "refit"

    @task(name="register_candidate")
    def mlflow_down(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("MLflow at http://mlflow:5000 unreachable (injected)")

    with monkeypatch.context() as patch:
        patch.setattr(refit_flow, "register_candidate", mlflow_down)
        message = _failure(refit(fit=kit.FAST_FIT, return_state=True))
    assert "unreachable (injected)" in message
    assert not staging.exists() or not any(staging.iterdir()), list(staging.rglob("*"))

    report = refit(fit=kit.FAST_FIT)

    assert any("cut.png" in p for p in report.problems), report.problems
    fitted = pipeline_env.registry.load(report.version)
    assert report.n_support == 2 == len(fitted.lineage["support"])  # good + scratch only
    assert "cut.png" not in str(fitted.lineage["support"])
    assert not staging.exists() or not any(staging.iterdir())
