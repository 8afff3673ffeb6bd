"""``python -m flows``: run the demo pipeline on local defaults and print its summary.

Prefect reads PREFECT_HOME when it is imported, so it is set here (to SEMCLIP_PREFECT_HOME,
default $SEMCLIP_HOME/prefect) before anything imports Prefect; analytics are off because the
demo must run offline. Values already in the environment win. Without ``PREFECT_API_URL`` a
local server is started first and waited for (:mod:`flows.local_server`), so a slow machine
does not hit Prefect's 20-second ephemeral start-up limit.
"""

from __future__ import annotations

import os
import sys
import time


def main() -> int:
    """Set Prefect's home, run :func:`flows.demo.demo_pipeline`, print the summary."""
    from semclip.settings import get_settings

    settings = get_settings()
    os.environ.setdefault("PREFECT_HOME", str(settings.prefect_home))
    os.makedirs(os.environ["PREFECT_HOME"], exist_ok=True)  # Prefect makes only the leaf
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from flows.demo import demo_pipeline, format_summary
    from flows.local_server import local_server

    started = time.perf_counter()
    with local_server():
        summary = demo_pipeline()
    print(format_summary(summary))
    print(f"\ndemo pipeline finished in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
