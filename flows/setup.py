"""One-time set-up of a Prefect server for semclip: the "gpu" limit and the work pool.

``python -m flows.setup`` is idempotent; run it once per Prefect server before
``prefect deploy`` (the demo calls :func:`ensure_gpu_limit` itself). The limit has to exist:
the flows take it with ``strict=True``, because Prefect's default (``strict=False``) would
silently run every GPU job at once when the limit is missing.
"""

from __future__ import annotations

import argparse
import logging

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
    WorkPoolCreate,
)
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from tasks.common import GPU_LIMIT

__all__ = ["WORK_POOL", "ensure_gpu_limit", "ensure_work_pool", "main"]

log = logging.getLogger(__name__)

WORK_POOL = "semclip"  # the process work pool deployments/prefect.yaml names


def ensure_gpu_limit(limit: int = 1, name: str = GPU_LIMIT) -> bool:
    """Create (or reset to ``limit``) the global concurrency limit; True when created."""
    with get_client(sync_client=True) as client:
        try:
            current = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=limit)
            )
            log.info("created global concurrency limit %r (limit %d)", name, limit)
            return True
        if current.limit != limit or not current.active:
            client.update_global_concurrency_limit(
                name, GlobalConcurrencyLimitUpdate(limit=limit, active=True)
            )
            log.info("reset global concurrency limit %r to %d", name, limit)
        return False


def ensure_work_pool(name: str = WORK_POOL) -> bool:
    """Create the process work pool the deployments use; True when created."""
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
        except ObjectAlreadyExists:
            return False
    log.info("created process work pool %r", name)
    return True


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m flows.setup [--gpu-limit N] [--pool NAME]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu-limit", type=int, default=1, help="GPU jobs at once (default 1)")
    parser.add_argument("--pool", default=WORK_POOL, help=f"work pool name (default {WORK_POOL})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    created = ensure_gpu_limit(args.gpu_limit)
    print(f"global concurrency limit {GPU_LIMIT!r}: {'created' if created else 'present'}")
    pool = ensure_work_pool(args.pool)
    print(f"process work pool {args.pool!r}: {'created' if pool else 'present'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
