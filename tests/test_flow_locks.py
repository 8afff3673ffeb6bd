"""Locks of the nightly flow against a real Prefect API: one writer per date, no leaked slot.

* Two runs of one date at once (a nightly stalled in its write, a backfill started meanwhile)
  end with the union of their rows and no duplicate.
* A slot held by another holder makes a run fail after ``SEMCLIP_SLOT_TIMEOUT_S`` with the
  limit's name and the command that frees it, after logging what it waits for.
* A slot leaked by a dead run (acquired with a lease, never renewed or released, as after a
  ``kill -9``) is free again soon after its lease ends, on a ``prefect server start`` server
  (the session's test server is a temporary one, which never reclaims leases; see
  docs/pipeline.md "Faults and recovery").
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from faults import Fault, inject_faults

from flows.nightly import NightlyReport, nightly_inference
from flows.setup import ensure_gpu_limit
from semclip.io.partitions import read_partition
from tasks.common import GPU_LIMIT, SlotTimeoutError, date_limit

if TYPE_CHECKING:
    from conftest_pipeline import Kit, PipelineEnv

pytest_plugins = ["conftest_pipeline"]

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.slow]  # a Prefect server

LEASE_S = 60  # the shortest lease Prefect's API accepts


class _Lines(logging.Handler):
    """Flow-run log lines, with their times, for asserting what a run said and when."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def matching(self, text: str) -> list[logging.LogRecord]:
        return [r for r in self.records if text in r.getMessage()]


@pytest.fixture
def run_lines() -> Iterator[_Lines]:
    handler = _Lines()
    logger = logging.getLogger("prefect.flow_runs")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _leak_slot(name: str, lease_s: float) -> Any:
    """Take one slot of ``name`` with a lease and neither renew nor release it: a dead run."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        response = client.increment_concurrency_slots_with_lease(
            names=[name], slots=1, mode="concurrency", lease_duration=lease_s
        )
    return response.json()["lease_id"]


def _release(lease_id: Any) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.release_concurrency_slots_with_lease(lease_id)


def test_two_runs_of_one_date_end_with_the_union(
    kit: Kit, pipeline_env: PipelineEnv, monkeypatch: pytest.MonkeyPatch, run_lines: _Lines
) -> None:
    fs, root, day = pipeline_env.fs, pipeline_env.root, kit.RUN_DATE
    kit.write_raw_dump(fs, root, day, 4, corrupt=False)
    (stall,) = inject_faults(
        monkeypatch, fs, Fault.pause(f"*predictions/date={day}/*", seconds=120)
    )
    results: dict[str, NightlyReport | BaseException] = {}

    def run(name: str) -> None:
        try:
            results[name] = nightly_inference(run_date=day.isoformat())
        except BaseException as exc:  # noqa: BLE001 - reported by the asserts below
            results[name] = exc

    nightly = threading.Thread(target=run, args=("nightly",))
    nightly.start()
    assert stall.reached.wait(180), "the nightly never reached its partition write"
    kit.write_raw_dump(fs, root, day, 8, corrupt=False)  # 4 more images arrive meanwhile
    backfill = threading.Thread(target=run, args=("backfill",))
    backfill.start()
    waiting = f"waiting for a slot of concurrency limit {date_limit(day)!r}"
    deadline = time.monotonic() + 120
    while backfill.is_alive() and time.monotonic() < deadline:  # until it waits, or is done
        if len(run_lines.matching(waiting)) >= 2:
            time.sleep(2)  # it is queued on the date's lock (not past it: that would log more)
            break
        time.sleep(0.2)
    stall.release.set()
    nightly.join(300)
    backfill.join(300)

    assert isinstance(results["nightly"], NightlyReport), results["nightly"]
    assert isinstance(results["backfill"], NightlyReport), results["backfill"]
    table = read_partition(fs, root, day)
    uris = table.column("image_uri").to_pylist()
    shas, versions = (table.column(c).to_pylist() for c in ("image_sha256", "model_version"))
    keys = list(zip(shas, versions, strict=True))
    assert len(uris) == 8 and len(set(uris)) == 8  # the union of both runs, 0 rows lost
    assert len(set(keys)) == len(keys)  # 0 duplicated
    assert results["backfill"].predicted == 4 and results["backfill"].kept == 4
    assert results["backfill"].rows_total == 8


def test_a_held_slot_fails_the_run_with_the_limit_named(
    kit: Kit, pipeline_env: PipelineEnv, monkeypatch: pytest.MonkeyPatch, run_lines: _Lines
) -> None:
    kit.write_raw_dump(pipeline_env.fs, pipeline_env.root, kit.RUN_DATE, 2, corrupt=False)
    monkeypatch.setenv("SEMCLIP_SLOT_TIMEOUT_S", "3")
    lease = _leak_slot(GPU_LIMIT, LEASE_S)
    outcome: list[BaseException | NightlyReport] = []

    def run() -> None:
        try:
            outcome.append(nightly_inference(run_date=kit.RUN_DATE.isoformat()))
        except BaseException as exc:  # noqa: BLE001 - asserted below
            outcome.append(exc)

    try:
        runner = threading.Thread(target=run, daemon=True)  # without a timeout it never ends
        runner.start()
        runner.join(90)
        assert outcome, "the run still waits for the slot after 90 s"
    finally:
        _release(lease)
    runner.join(60)
    (failure,) = outcome
    assert isinstance(failure, SlotTimeoutError), failure
    message = str(failure)
    assert f"'{GPU_LIMIT}' within 3 s (SEMCLIP_SLOT_TIMEOUT_S)" in message
    assert f"prefect gcl inspect {GPU_LIMIT}" in message
    assert f"prefect gcl update {GPU_LIMIT} --active-slots 0" in message
    assert run_lines.matching(f"waiting for a slot of concurrency limit {GPU_LIMIT!r} (at most 3 s")
    # The date's lock was given back on the way out: the next run of the date is not blocked.
    assert nightly_inference(run_date=kit.RUN_DATE.isoformat()).predicted == 2


# --------------------------------------------------------------------------- leaked slot


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def long_lived_server(tmp_path: Path) -> Iterator[str]:
    """``prefect server start`` (not a temporary server: its repossessor reclaims expired
    leases, checked every second here instead of 15), in its own home; yields the API URL."""
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'p.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "1",
    }
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--no-ui", "--no-scheduler", "--no-late-runs"]
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "prefect server start did not come up"
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


_HOLDER = """
import sys, time
from tasks.common import GPU_LIMIT, hold_slot
with hold_slot(GPU_LIMIT, lease_s=float(sys.argv[1]), timeout_s=30):
    print("held", flush=True)
    time.sleep(3600)
"""

_RERUN = """
import sys
from flows.nightly import nightly_inference
print("REPORT", nightly_inference(run_date=sys.argv[1]).model_dump_json(), flush=True)
"""


def test_a_leaked_gpu_slot_frees_itself_soon_after_its_lease(
    kit: Kit, pipeline_env: PipelineEnv, long_lived_server: str, tmp_path: Path
) -> None:
    """A run holding the GPU slot is killed with SIGKILL; the re-run, a new process as a
    worker would start, waits at most about one lease, then predicts."""
    kit.write_raw_dump(pipeline_env.fs, pipeline_env.root, kit.RUN_DATE, 2, corrupt=False)
    env = {
        **os.environ,
        "PREFECT_API_URL": long_lived_server,
        "SEMCLIP_SLOT_LEASE_S": str(LEASE_S),
        "SEMCLIP_SLOT_TIMEOUT_S": "150",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: long_lived_server}):
        ensure_gpu_limit()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(LEASE_S)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    finally:
        holder.kill()  # kill -9: no release, no more renewals
        holder.wait(10)
    killed_at = time.monotonic()

    rerun = subprocess.run(
        [sys.executable, "-c", _RERUN, kit.RUN_DATE.isoformat()],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    elapsed = time.monotonic() - killed_at
    out = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, out[-3000:]
    report = NightlyReport.model_validate_json(out.split("REPORT ", 1)[1].splitlines()[0])
    assert report.predicted == 2
    waited = [float(w) for w in re.findall(rf"holding {GPU_LIMIT!r} \(waited ([0-9.]+) s\)", out)]
    assert waited, out[-3000:]
    # It did wait for the dead run's slot, and for no more than its lease and the
    # repossessor's loop (1 s here) and the start of the process.
    assert 1.0 < max(waited) <= LEASE_S + 10, (waited, out[-3000:])
    assert elapsed <= LEASE_S + 90, elapsed
