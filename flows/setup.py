"""One-time set-up of a Prefect server for semclip: the "semclip-gpu" limit and the work pool.

``python -m flows.setup`` is idempotent; run it once per Prefect server before
``prefect deploy`` (the demo calls :func:`ensure_gpu_limit` itself). The limit has to exist:
the flows take it with ``strict=True``, because Prefect's default (``strict=False``) would
silently run every GPU job at once when the limit is missing.

Set-up never changes what an operator set: an existing limit or work-pool concurrency limit is
left as it is and reported. It names the server it talks to, and refuses to configure a
throw-away temporary server (``PREFECT_API_URL`` unset) unless asked to.
"""

from __future__ import annotations

import argparse
import logging
import sys

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    WorkPoolCreate,
    WorkPoolUpdate,
)
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import PREFECT_API_URL

from tasks.common import GPU_LIMIT

__all__ = ["WORK_POOL", "ensure_gpu_limit", "ensure_work_pool", "main", "server_url"]

log = logging.getLogger(__name__)

WORK_POOL = "semclip"  # the process work pool deployments/prefect.yaml names
POOL_LIMIT = 1  # flow runs the pool starts at once: backfill dates queue behind each other


def server_url() -> str | None:
    """The Prefect API this process talks to; None means a temporary local server."""
    return PREFECT_API_URL.value() or None


def ensure_gpu_limit(limit: int = 1, name: str = GPU_LIMIT) -> bool:
    """Create the global concurrency limit if it is missing; True when created.

    An existing limit keeps its value (another team may share the server's GPUs).
    """
    with get_client(sync_client=True) as client:
        try:
            current = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=limit)
            )
            log.info("created global concurrency limit %r (limit %d)", name, limit)
            return True
    state = "active" if current.active else "INACTIVE (the flows will not wait on it)"
    log.info(
        "global concurrency limit %r present: limit %d, %s; left as is", name, current.limit, state
    )
    return False


def ensure_work_pool(name: str = WORK_POOL, concurrency_limit: int = POOL_LIMIT) -> bool:
    """Create the process work pool with a concurrency limit; True when created.

    A pool that exists without a limit gets one (else a 31-day backfill starts 31 processes);
    a pool whose limit an operator set keeps it.
    """
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(
                WorkPoolCreate(name=name, type="process", concurrency_limit=concurrency_limit)
            )
        except ObjectAlreadyExists:
            pool = client.read_work_pool(name)
            if pool.concurrency_limit is None:
                client.update_work_pool(name, WorkPoolUpdate(concurrency_limit=concurrency_limit))
                log.info(
                    "work pool %r had no concurrency limit: set to %d", name, concurrency_limit
                )
            else:
                log.info(
                    "work pool %r present: concurrency limit %d; left as is",
                    name,
                    pool.concurrency_limit,
                )
            return False
    log.info("created process work pool %r (concurrency limit %d)", name, concurrency_limit)
    return True


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m flows.setup [--gpu-limit N] [--pool NAME] [--pool-limit N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--gpu-limit",
        type=int,
        default=1,
        help="pipeline runs on the GPUs at once, when the "
        f"{GPU_LIMIT!r} limit is created (an existing one is left alone; default 1)",
    )
    parser.add_argument("--pool", default=WORK_POOL, help=f"work pool name (default {WORK_POOL})")
    parser.add_argument(
        "--pool-limit",
        type=int,
        default=POOL_LIMIT,
        help="flow runs the work pool starts at "
        f"once, when the pool has none (default {POOL_LIMIT}: backfill dates queue)",
    )
    parser.add_argument(
        "--allow-temporary-server",
        action="store_true",
        help="configure a temporary local server although PREFECT_API_URL is unset "
        "(everything set up vanishes when this command ends)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    url = server_url()
    if url is None and not args.allow_temporary_server:
        print(
            "error: PREFECT_API_URL is not set, so set-up would configure a temporary server "
            "that disappears when it ends. Start one (`prefect server start`) and run "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api` (or `prefect config set "
            "PREFECT_API_URL=…`), or pass --allow-temporary-server.",
            file=sys.stderr,
        )
        return 2
    print(f"Prefect server: {url or 'temporary local server (PREFECT_API_URL unset)'}")
    created = ensure_gpu_limit(args.gpu_limit)
    pool = ensure_work_pool(args.pool, args.pool_limit)
    gpu_now, pool_now = _current_limits(GPU_LIMIT, args.pool)
    print(
        f"global concurrency limit {GPU_LIMIT!r}: {'created' if created else 'present'}, {gpu_now}"
    )
    print(f"process work pool {args.pool!r}: {'created' if pool else 'present'}, {pool_now}")
    return 0


def _current_limits(gpu_limit: str, pool: str) -> tuple[str, str]:
    """What the server holds now, printed by set-up: Prefect configures logging when a client
    starts (root at WARNING), so the INFO lines above never reach the operator's terminal."""
    with get_client(sync_client=True) as client:
        gcl = client.read_global_concurrency_limit_by_name(gpu_limit)
        work_pool = client.read_work_pool(pool)
    active = "active" if gcl.active else "INACTIVE: the flows will not wait on it"
    return (
        f"limit {gcl.limit} ({active})",
        f"concurrency limit {work_pool.concurrency_limit}",
    )


if __name__ == "__main__":
    raise SystemExit(main())
