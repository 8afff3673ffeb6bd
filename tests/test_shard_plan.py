"""Where the nightly's shards run: the plan from the settings and the machine (no cluster)."""

from __future__ import annotations

import pytest

from semclip.settings import get_settings
from semclip.shard_plan import ShardPlan, default_workers, plan_shards


@pytest.mark.parametrize(
    ("cores", "gpus", "workers"),
    [(2, 0, 1), (3, 0, 1), (16, 0, 8), (1, 0, 1), (64, 8, 8), (2, 1, 1)],
)
def test_one_worker_per_gpu_else_per_two_cores(cores: int, gpus: int, workers: int) -> None:
    assert default_workers(cores, gpus) == workers


def test_dask_local_cluster_shares_the_cores_between_workers() -> None:
    plan = plan_shards("dask", address=None, workers=None, cores=16, gpus=0)
    assert plan == ShardPlan("dask", workers=8, torch_threads=2)
    plan = plan_shards("dask", address=None, workers=3, cores=16, gpus=0)
    assert (plan.workers, plan.torch_threads) == (3, 5)  # cores // workers
    plan = plan_shards("dask", address=None, workers=4, cores=2, gpus=0)
    assert (plan.workers, plan.torch_threads) == (4, 1)  # never zero threads


def test_gpus_set_the_worker_count_and_each_worker_gets_one() -> None:
    plan = plan_shards("auto", address=None, workers=None, cores=64, gpus=8)
    assert (plan.runner, plan.workers, plan.torch_threads, plan.gpus) == ("dask", 8, 8, 8)
    assert "8 process worker(s), 8 torch thread(s) each, 8 GPU(s)" in plan.describe()


def test_auto_is_sequential_where_a_cluster_would_have_one_worker() -> None:
    assert plan_shards("auto", address=None, workers=None, cores=2, gpus=0).runner == "sequential"
    assert plan_shards("auto", address=None, workers=None, cores=8, gpus=1).runner == "sequential"
    assert plan_shards("auto", address=None, workers=2, cores=2, gpus=0).runner == "dask"
    assert plan_shards("auto", address=None, workers=None, cores=4, gpus=0).workers == 2
    # asked for explicitly, a one-worker cluster is what you get (the benchmark's baseline)
    assert plan_shards("dask", address=None, workers=1, cores=2, gpus=0).workers == 1


def test_an_existing_cluster_is_used_as_it_is() -> None:
    plan = plan_shards("auto", address="tcp://sched:8786", workers=4, cores=2, gpus=0)
    assert plan == ShardPlan("dask", address="tcp://sched:8786", workers=0)
    assert plan.describe() == "dask cluster at tcp://sched:8786"
    # sequential, said explicitly, wins over an address
    plan = plan_shards("sequential", address="tcp://sched:8786", workers=4, cores=2, gpus=0)
    assert plan.runner == "sequential"


def test_thread_workers_leave_torch_threads_alone() -> None:
    plan = plan_shards("dask", address=None, workers=2, cores=2, gpus=0, processes=False)
    assert (plan.workers, plan.torch_threads, plan.processes) == (2, None, False)
    assert plan.describe() == "dask LocalCluster: 2 thread worker(s)"


def test_settings_read_the_dask_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SEMCLIP_TASK_RUNNER", "SEMCLIP_DASK_ADDRESS", "SEMCLIP_DASK_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    default = get_settings()
    assert (default.task_runner, default.dask_address, default.dask_workers) == ("auto", None, None)
    assert default.dask_processes is True
    monkeypatch.setenv("SEMCLIP_TASK_RUNNER", "dask")
    monkeypatch.setenv("SEMCLIP_DASK_ADDRESS", "tcp://10.0.0.5:8786")
    monkeypatch.setenv("SEMCLIP_DASK_WORKERS", "3")
    monkeypatch.setenv("SEMCLIP_DASK_PROCESSES", "false")
    s = get_settings()
    assert (s.task_runner, s.dask_address, s.dask_workers, s.dask_processes) == (
        "dask",
        "tcp://10.0.0.5:8786",
        3,
        False,
    )
    monkeypatch.setenv("SEMCLIP_TASK_RUNNER", "ray")
    with pytest.raises(ValueError, match="task_runner"):
        get_settings()
    monkeypatch.setenv("SEMCLIP_TASK_RUNNER", "dask")
    monkeypatch.setenv("SEMCLIP_DASK_WORKERS", "0")
    with pytest.raises(ValueError, match="dask_workers"):
        get_settings()
