"""The nightly flow's shards on a Dask LocalCluster (prefect-dask), against a real Prefect API.

* Two workers give the rows the sequential run gives, column for column (run id and
  inference time apart), and the same quarantine.
* A worker killed mid-shard (``kill -9`` from inside the shard, see tests/worker_kill.py):
  the scheduler runs its shard again on a live worker, and the partition ends with every image
  once, nothing lost, nothing duplicated.

Thread workers where processes are not the subject (no start-up cost, one model in memory);
process workers for the kill, which must take a process.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask
import pytest

from flows.nightly import nightly_inference
from semclip.io.partitions import read_partition
from semclip.io.quarantine import read_quarantine

if TYPE_CHECKING:
    from conftest_pipeline import Kit, PipelineEnv

pytest_plugins = ["conftest_pipeline"]

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.slow]

WORKER_KILL = Path(__file__).resolve().parent / "worker_kill.py"
RUN_LINEAGE = {"flow_run_id", "inferred_at"}  # differ between any two runs


def _rows(env: PipelineEnv, run_date: dt.date) -> list[dict[str, Any]]:
    table = read_partition(env.fs, env.root, run_date)
    rows = [{k: v for k, v in r.items() if k not in RUN_LINEAGE} for r in table.to_pylist()]
    return sorted(rows, key=lambda r: r["image_uri"])


def _quarantine(env: PipelineEnv, run_date: dt.date) -> list[tuple[str, str]]:
    rows = read_quarantine(env.fs, env.root, run_date).to_pylist()
    return sorted((r["image_uri"], r["reason"]) for r in rows)


def _staged(env: PipelineEnv) -> list[str]:
    env.fs.invalidate_cache()
    folder = f"{env.root}/_staging"
    return env.fs.find(folder) if env.fs.exists(folder) else []


def _use_dask(monkeypatch: pytest.MonkeyPatch, workers: int, processes: bool) -> None:
    monkeypatch.setenv("SEMCLIP_TASK_RUNNER", "dask")
    monkeypatch.setenv("SEMCLIP_DASK_WORKERS", str(workers))
    monkeypatch.setenv("SEMCLIP_DASK_PROCESSES", str(processes).lower())


def test_two_dask_workers_give_the_rows_of_the_sequential_run(
    kit: Kit, pipeline_env: PipelineEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, day = pipeline_env, kit.RUN_DATE
    kit.write_raw_dump(env.fs, env.root, day, 14)  # + 2 broken files: 16 images, 4 shards
    sequential = nightly_inference(run_date=day.isoformat())
    expected, expected_quarantine = _rows(env, day), _quarantine(env, day)
    assert sequential.shard_runner.startswith("sequential") and len(sequential.workers) == 1
    for area in ("predictions", "quarantine"):  # the same date again, from nothing
        env.fs.rm(f"{env.root}/{area}/date={day}", recursive=True)

    _use_dask(monkeypatch, workers=2, processes=False)
    parallel = nightly_inference(run_date=day.isoformat())

    assert parallel.shard_runner == "dask LocalCluster: 2 thread worker(s)"
    assert len(parallel.workers) == 2  # both workers ran shards
    assert all(w.startswith("inproc://") for w in parallel.workers)
    counts = ("images", "predicted", "kept", "quarantined", "rows_total")
    assert [getattr(parallel, c) for c in counts] == [getattr(sequential, c) for c in counts]
    assert (parallel.predicted, parallel.quarantined) == (14, 2)
    assert _rows(env, day) == expected
    assert _quarantine(env, day) == expected_quarantine
    assert len({r["flow_run_id"] for r in read_partition(env.fs, env.root, day).to_pylist()}) == 1
    assert _staged(env) == []


def test_a_worker_killed_mid_shard_loses_nothing_and_duplicates_nothing(
    kit: Kit, pipeline_env: PipelineEnv, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env, day = pipeline_env, kit.RUN_DATE
    good = kit.write_raw_dump(env.fs, env.root, day, 8, corrupt=False)  # 2 shards of 4
    marker = tmp_path / "killed"
    monkeypatch.setenv("SEMCLIP_TEST_KILL_MARKER", str(marker))
    _use_dask(monkeypatch, workers=2, processes=True)

    with dask.config.set({"distributed.worker.preload": [str(WORKER_KILL)]}):
        report = nightly_inference(run_date=day.isoformat())

    killed_pid, killed_uri = marker.read_text().split()  # a worker did die mid-shard
    assert killed_uri in {env.fs.unstrip_protocol(p) for p in good}
    assert report.shard_runner.startswith("dask LocalCluster: 2 process worker(s)")
    assert all(f"(pid {killed_pid})" not in w for w in report.workers)  # retried elsewhere
    assert (report.images, report.predicted, report.kept, report.quarantined) == (8, 8, 0, 0)
    rows = read_partition(env.fs, env.root, day).to_pylist()
    uris = sorted(r["image_uri"] for r in rows)
    assert uris == sorted(env.fs.unstrip_protocol(p) for p in good)  # each image exactly once
    assert all(r["error"] is None and r["predicted_class"] for r in rows)
    assert read_quarantine(env.fs, env.root, day).num_rows == 0
    assert _staged(env) == []
