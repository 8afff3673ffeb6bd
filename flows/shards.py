"""Run the nightly's shards: one after another in the flow's process, or on Dask (prefect-dask).

The flow hands :func:`run_shards` a task and one parameter dict per shard (URIs, ids, the
model's registry reference: never a model or a tensor) and gets back the results of the
shards that succeeded and the errors of those that did not, after every shard has finished.

On Dask each worker loads the model once, on its first shard, and keeps it for the next ones
(the process cache of :mod:`semclip.registry.cache`: a worker process lives for the whole
run). A worker that dies mid-shard (killed, out of memory) is noticed by the scheduler,
which runs the shard again on a live worker (at most ``distributed.scheduler.allowed-failures``
times, 3 by default); the dead attempt's staged file, if any, is never merged, since the flow
merges only the URIs returned by successful tasks.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from distributed.diagnostics.plugin import WorkerPlugin
from prefect import Task
from prefect.futures import wait

from semclip.settings import SemclipSettings
from semclip.shard_plan import ShardPlan, plan_shards, usable_cores

__all__ = ["ShardOutcome", "SetupWorker", "run_shards", "shard_plan", "shard_runner"]

log = logging.getLogger(__name__)

R = TypeVar("R")


@dataclass
class ShardOutcome(Generic[R]):
    """Results of the shards that succeeded (in shard order), errors of the others."""

    results: list[R] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the shards, a cluster's start-up left out

    def raise_first_error(self) -> None:
        """Raise the first shard's error, if any shard failed."""
        if self.errors:
            raise self.errors[0]


class SetupWorker(WorkerPlugin):
    """Dask worker plugin: torch threads per worker, and one GPU per worker when there are GPUs.

    Runs in each worker process when it starts (and in a worker restarted after a crash),
    before any shard, so CUDA is not initialised yet and ``CUDA_VISIBLE_DEVICES`` still takes.
    """

    name = "semclip-setup-worker"

    def __init__(self, torch_threads: int | None, gpus: int) -> None:
        self.torch_threads, self.gpus = torch_threads, gpus

    def setup(self, worker: Any) -> None:
        if self.gpus and isinstance(worker.name, int):  # LocalCluster names workers 0, 1, …
            os.environ["CUDA_VISIBLE_DEVICES"] = str(worker.name % self.gpus)
        if self.torch_threads:
            import torch

            torch.set_num_threads(self.torch_threads)

    def teardown(self, worker: Any) -> None:
        """Nothing to undo: the process ends with the worker."""


def shard_plan(settings: SemclipSettings) -> ShardPlan:
    """The plan of this machine and these settings (see :mod:`semclip.shard_plan`)."""
    gpus = 0
    if settings.task_runner != "sequential" and not settings.dask_address:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return plan_shards(
        settings.task_runner,
        address=settings.dask_address,
        workers=settings.dask_workers,
        cores=usable_cores(),
        gpus=gpus,
        processes=settings.dask_processes,
    )


def shard_runner(plan: ShardPlan) -> Any:
    """A prefect-dask ``DaskTaskRunner`` for ``plan``: the existing cluster, or a LocalCluster.

    The LocalCluster runs one shard at a time per worker (``threads_per_worker=1``) and no
    dashboard (nothing would read it, and its port could clash with another run's).
    """
    from prefect_dask import DaskTaskRunner

    if plan.address:
        return DaskTaskRunner(address=plan.address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": plan.workers,
            "threads_per_worker": 1,
            "processes": plan.processes,
            "dashboard_address": None,
        },
    )


def run_shards(
    plan: ShardPlan, task: Task[..., R], calls: Sequence[Mapping[str, Any]]
) -> ShardOutcome[R]:
    """Run ``task`` once per parameter dict of ``calls`` as ``plan`` says; never raises for
    a shard's failure (see :class:`ShardOutcome`), so the caller can clean up what the
    successful shards left and then fail."""
    if plan.runner == "sequential":
        return _run_here(task, calls)
    with shard_runner(plan) as runner:
        started = time.monotonic()
        client = runner.client  # starts (or connects to) the cluster
        if not plan.address:
            client.register_plugin(SetupWorker(plan.torch_threads, plan.gpus))
        log.info("cluster up in %.1f s: %s", time.monotonic() - started, plan.describe())
        started = time.monotonic()
        futures = [runner.submit(task, parameters=dict(call)) for call in calls]
        wait(futures)
        outcome: ShardOutcome[R] = ShardOutcome()
        for future in futures:
            try:
                outcome.results.append(future.result())
            except Exception as exc:  # noqa: BLE001 - collected, raised by the caller
                outcome.errors.append(exc)
        outcome.seconds = time.monotonic() - started
    return outcome


def _run_here(task: Task[..., R], calls: Sequence[Mapping[str, Any]]) -> ShardOutcome[R]:
    """Sequentially in this process; stops at the first failing shard, as a run always did."""
    outcome: ShardOutcome[R] = ShardOutcome()
    started = time.monotonic()
    for call in calls:
        try:
            outcome.results.append(task(**call))
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            outcome.errors.append(exc)
            break
    outcome.seconds = time.monotonic() - started
    return outcome
