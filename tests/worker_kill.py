"""Dask worker preload for the worker-kill test: the first shard to predict kills its worker.

Loaded into every worker process through the ``distributed.worker.preload`` config (see
tests/test_flows_dask.py). It wraps ``SemclipModel.predict``: the first call on any worker,
mid-shard (bytes fetched, model loaded), claims the marker file named by
``SEMCLIP_TEST_KILL_MARKER`` (an exclusive create, so exactly one worker wins), writes its pid
and the shard's first URI there and sends itself ``SIGKILL``: no ``finally``, no clean-up, as
when the OOM killer or a node failure takes a worker. Every later call predicts normally.
"""

from __future__ import annotations

import os
import signal
from typing import Any

MARKER_ENV = "SEMCLIP_TEST_KILL_MARKER"


def dask_setup(worker: Any) -> None:
    """Install the one-shot kill in this worker process (called by Dask at worker start)."""
    from semclip.model import SemclipModel

    marker = os.environ.get(MARKER_ENV)
    if not marker or getattr(SemclipModel.predict, "_kills_once", False):
        return
    original = SemclipModel.predict

    def predict(model: SemclipModel, images: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:  # the kill already happened (here or on another worker)
            return original(model, images, *args, **kwargs)
        first = (kwargs.get("uris") or ["?"])[0]
        os.write(fd, f"{os.getpid()}\n{first}\n".encode())
        os.fsync(fd)
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable: the worker was killed")

    predict._kills_once = True  # type: ignore[attr-defined]
    SemclipModel.predict = predict  # type: ignore[method-assign]
