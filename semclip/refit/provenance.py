"""Which code made a model: the git commit of the repository the refit code runs from.

A worker runs the flow from whatever its deployment pulled (a git clone, a baked image), not
from the folder that registered the deployment, so the commit is read where the code lies:
``git rev-parse HEAD`` in the code's own folder, then the ``SEMCLIP_GIT_COMMIT`` setting (an
image built without ``.git`` sets it at build time), else ``"unknown"``. Never an error: a
missing commit must not cost the week's model, it is recorded as unknown instead.
"""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path

__all__ = ["UNKNOWN_COMMIT", "git_commit"]

log = logging.getLogger(__name__)

UNKNOWN_COMMIT = "unknown"
_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")  # SHA-1 or SHA-256 object names
_GIT_TIMEOUT_S = 10


def git_commit(code_dir: str | Path, fallback: str | None = None) -> str:
    """The commit checked out at ``code_dir``, else ``fallback``, else ``"unknown"``."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(code_dir),
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:  # no git, no folder, hung
        log.info("no git commit for %s: %s", code_dir, exc)
    else:
        sha = done.stdout.strip()
        if done.returncode == 0 and _SHA.match(sha):
            return sha
        log.info("no git commit for %s: %s", code_dir, done.stderr.strip() or sha)
    return (fallback or "").strip() or UNKNOWN_COMMIT
