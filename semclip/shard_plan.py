"""Where the nightly's shards run: in the flow's process, or on Dask workers, and how many.

Pure arithmetic on the settings and the machine (cores, GPUs), so the choice can be tested
without starting anything. The rules (docs/pipeline.md "Shards on Dask"):

* an existing cluster (``SEMCLIP_DASK_ADDRESS``) is used as it is: its workers, their threads
  and GPUs are its operator's business;
* otherwise a ``LocalCluster`` gets one worker per GPU, else one per 2 CPU cores, or
  ``SEMCLIP_DASK_WORKERS``; each worker process runs ``cores // workers`` torch threads, so
  the workers share the cores instead of each spinning up a thread per core;
* ``auto`` (the default) runs sequentially when the cluster would have a single worker (a
  2-core laptop or CI machine, one GPU): a 1-worker cluster only adds its start-up time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

__all__ = ["ShardPlan", "default_workers", "plan_shards", "usable_cores"]

Runner = Literal["sequential", "dask"]


@dataclass(frozen=True)
class ShardPlan:
    """How one nightly run executes its shards."""

    runner: Runner
    address: str | None = None  # scheduler of an existing cluster; None: local
    workers: int = 1  # local workers (an existing cluster: 0, it has its own)
    torch_threads: int | None = None  # per local worker process; None: leave torch's default
    gpus: int = 0  # GPUs of this machine; local worker i uses GPU i % gpus
    processes: bool = True  # local workers are processes (else threads of the flow's process)

    def describe(self) -> str:
        """One line for the log and the run report."""
        if self.runner == "sequential":
            return "sequential (in the flow's process)"
        if self.address:
            return f"dask cluster at {self.address}"
        kind = "process" if self.processes else "thread"
        threads = f", {self.torch_threads} torch thread(s) each" if self.torch_threads else ""
        gpus = f", {self.gpus} GPU(s)" if self.gpus else ""
        return f"dask LocalCluster: {self.workers} {kind} worker(s){threads}{gpus}"


def default_workers(cores: int, gpus: int) -> int:
    """One worker per GPU; without a GPU, one per 2 CPU cores (at least one)."""
    return gpus if gpus > 0 else max(1, cores // 2)


def plan_shards(
    task_runner: Literal["auto", "sequential", "dask"],
    *,
    address: str | None,
    workers: int | None,
    cores: int,
    gpus: int,
    processes: bool = True,
) -> ShardPlan:
    """The plan for ``task_runner`` on a machine of ``cores`` CPU cores and ``gpus`` GPUs."""
    if task_runner == "sequential":
        return ShardPlan("sequential", gpus=gpus)
    if address:
        return ShardPlan("dask", address=address, workers=0, gpus=gpus)
    n = workers or default_workers(cores, gpus)
    if task_runner == "auto" and n < 2:
        return ShardPlan("sequential", gpus=gpus)
    # threads of one process share torch's pool: setting it there would change the flow's own
    threads = max(1, cores // n) if processes else None
    return ShardPlan("dask", workers=n, torch_threads=threads, gpus=gpus, processes=processes)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, as in a container), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
