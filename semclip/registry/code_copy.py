"""What is logged beside a model so that serving it needs no semclip wheel: the code, and
semclip's own runtime requirements."""

from __future__ import annotations

import importlib.metadata
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["clean_code_copy", "pip_requirements"]


@contextmanager
def clean_code_copy() -> Iterator[Path]:
    """The semclip package without caches, logged with the model so serving needs no wheel."""
    import semclip

    source = Path(semclip.__file__).parent
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "semclip"
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        yield target


def pip_requirements() -> list[str]:
    """semclip's own runtime requirements, as installed (the package itself is in code/)."""
    try:
        requires = importlib.metadata.requires("semclip") or []
    except importlib.metadata.PackageNotFoundError:
        requires = []
    serving = [r for r in requires if "extra ==" not in r and not r.startswith("prefect")]
    return serving or ["torch", "open_clip_torch", "mlflow"]
