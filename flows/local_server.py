"""A local Prefect server for `make demo`, started explicitly and waited for.

Prefect starts a temporary server on first use when ``PREFECT_API_URL`` is unset, and gives it
``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`` (20 s) to answer; on a busy 2-core machine
its database set-up took longer and the demo failed once in four runs. Here the server is
started before anything else talks to Prefect, with a generous wait (setting
``SEMCLIP_PREFECT_STARTUP_TIMEOUT_S``, default 180 s), and the process's ``PREFECT_API_URL``
points at it, so every flow of the demo uses the one server that is known to be up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator

log = logging.getLogger(__name__)


def _free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def local_server() -> Iterator[str | None]:
    """Yield the API URL in use: the configured one, else a local server started and waited for.

    Must be entered before the first Prefect client is made (flows read ``PREFECT_API_URL``
    when they start). The server is stopped on exit.
    """
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield PREFECT_API_URL.value()
        return
    from semclip.settings import get_settings

    timeout = get_settings().prefect_startup_timeout_s
    # Prefect keeps one server object per port: without a port of our own we would get (and
    # later stop) the temporary server some other code in this process already started.
    server = SubprocessASGIServer(port=_free_port())
    log.info("starting a local Prefect server (waiting up to %d s for it)", timeout)
    server.start(timeout=timeout)
    try:
        os.environ["PREFECT_API_URL"] = server.api_url
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()
