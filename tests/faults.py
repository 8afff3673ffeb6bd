"""Fault injection for storage tests: make a chosen write fail the way real storage fails.

A :class:`Fault` picks writes by path (an ``fnmatch`` pattern on the path inside the
filesystem, no protocol) and fires at the ``nth`` matching one (1-based), ``times`` times:

* ``Fault.enospc(pattern, after_bytes=k)``: the first ``k`` bytes reach the file, then
  ``OSError(ENOSPC)`` is raised, as a full disk does (a truncated file is left behind);
* ``Fault.kill(pattern, after_bytes=k)``: ``k`` bytes are written and flushed, then the
  process gets ``SIGKILL`` (no ``finally``, no clean-up: use it in a subprocess, see
  :func:`run_python`);
* ``Fault.pause(pattern, seconds=s)``: the write waits before its first byte until
  ``fault.release`` is set or ``s`` seconds pass; ``fault.reached`` is set when it starts
  waiting, so a test can act while a writer is stalled (another run, a reader).

:func:`inject_faults` patches ``open`` of the filesystem *class* (``LocalFileSystem``,
``S3FileSystem``…) with ``monkeypatch``, so every instance sees it, in every thread: fsspec
caches one instance per thread and arguments, and a flow's tasks open their own. Writes are
what goes through ``fs.open(path, "wb"|"ab"|"xb")``: pyarrow's ``FSSpecHandler`` output
streams, ``pq.write_table`` to a handle, and ``LocalFileSystem.pipe_file``. (An async
filesystem's ``pipe_file`` goes straight to the store and is not seen.) Reads are untouched.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fsspec import AbstractFileSystem

__all__ = ["Fault", "inject_faults", "run_python"]

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent


@dataclass
class Fault:
    """One injected fault; see the module doc. Build with the class methods."""

    kind: str  # "enospc" | "kill" | "pause"
    pattern: str
    nth: int = 1
    times: int = 1
    after_bytes: int = 0
    seconds: float = 0.0
    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    seen: int = 0  # matching writes so far
    fired: list[str] = field(default_factory=list)  # paths it fired on
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def enospc(cls, pattern: str, *, nth: int = 1, times: int = 1, after_bytes: int = 0) -> Fault:
        """Full disk at the ``nth`` matching write, after ``after_bytes`` bytes."""
        return cls("enospc", pattern, nth, times, after_bytes=after_bytes)

    @classmethod
    def kill(cls, pattern: str, *, nth: int = 1, after_bytes: int = 0) -> Fault:
        """``kill -9`` of this process at the ``nth`` matching write, after ``after_bytes``."""
        return cls("kill", pattern, nth, 1, after_bytes=after_bytes)

    @classmethod
    def pause(cls, pattern: str, *, seconds: float, nth: int = 1, times: int = 1) -> Fault:
        """Stall the ``nth`` matching write until ``release`` is set or ``seconds`` pass."""
        return cls("pause", pattern, nth, times, seconds=seconds)

    def _claim(self, path: str) -> bool:
        """Count a write to ``path``; True when this one must fail."""
        if not fnmatch.fnmatch(path, self.pattern):
            return False
        with self._lock:
            self.seen += 1
            fire = self.nth <= self.seen < self.nth + self.times
            if fire:
                self.fired.append(path)
            return fire


class _FaultyFile:
    """A writable file that lets ``after_bytes`` through, then fails as its fault says."""

    def __init__(self, inner: Any, fault: Fault, path: str) -> None:
        self._inner, self._fault, self._path = inner, fault, path
        self._written = 0

    def write(self, data: bytes) -> int:
        room = self._fault.after_bytes - self._written
        if len(data) <= room:
            self._written += len(data)
            return self._inner.write(data)
        if room > 0:
            self._inner.write(bytes(data[:room]))
            self._written += room
        self._inner.flush()
        if self._fault.kind == "kill":
            _sync(self._inner)
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._path)

    def __enter__(self) -> _FaultyFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _sync(inner: Any) -> None:
    with contextlib.suppress(AttributeError, OSError, ValueError):  # an object-store buffer
        os.fsync(inner.fileno())


def inject_faults(
    monkeypatch: pytest.MonkeyPatch, fs: AbstractFileSystem | type, *faults: Fault
) -> tuple[Fault, ...]:
    """Make writes of ``fs``'s class (or of the class given) fail per ``faults``; returns them.

    Undone by ``monkeypatch`` at the end of the test. The first fault whose pattern and count
    match a write decides it.
    """
    cls = fs if isinstance(fs, type) else type(fs)
    original = cls.open

    def open_with_faults(self: Any, path: str, mode: str = "rb", *args: Any, **kwargs: Any) -> Any:
        if not any(c in mode for c in "wax"):
            return original(self, path, mode, *args, **kwargs)
        stripped = self._strip_protocol(path)
        fault = next((f for f in faults if f._claim(stripped)), None)
        if fault is not None and fault.kind == "pause":
            fault.reached.set()
            fault.release.wait(fault.seconds)
            fault = None
        handle = original(self, path, mode, *args, **kwargs)
        return handle if fault is None else _FaultyFile(handle, fault, stripped)

    monkeypatch.setattr(cls, "open", open_with_faults)
    return faults


def run_python(
    code: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with the repository and ``tests/`` importable.

    For faults that must kill a process (:meth:`Fault.kill`): the test asserts on what the
    killed process left behind; ``returncode`` is ``-9`` when it was killed.
    """
    path = os.pathsep.join([str(REPO_ROOT), str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])
    full_env = {**os.environ, **(env or {}), "PYTHONPATH": path}
    return subprocess.run(
        [sys.executable, "-c", code],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
