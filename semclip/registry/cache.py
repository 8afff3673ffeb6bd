"""Registered versions kept on this machine: downloaded once to a folder, loaded once per process.

Versions are immutable, so both caches are safe: the folder cache is keyed by the version and
its logged model id, and a half-finished download never becomes visible (download to a temp
folder, rename); the process cache keeps the last few loaded models, so nightly shards share
one.

Immutable is not incorruptible: a cached copy is checked against the hashes its
``model.json`` records every time it is used, and one that fails is dropped and downloaded
again, once; when the registry's own copy fails too, :class:`CorruptRegistryModelError`.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TYPE_CHECKING

from semclip.registry.pyfunc import MODEL_ARTIFACT, artifact_subpath
from semclip.registry.refs import CorruptRegistryModelError, ModelRef, RegistryError

if TYPE_CHECKING:
    from semclip.model import SemclipModel

__all__ = [
    "cached_model",
    "cached_model_dir",
    "clear_model_cache",
    "drop_cached_dir",
]

log = logging.getLogger(__name__)

_CACHE_SIZE = 2  # loaded models kept per process (champion + one pinned/candidate)
_LOADED: dict[Hashable, SemclipModel] = {}
_CACHE_LOCK = threading.Lock()


def cached_model_dir(
    cache_dir: Path | None,
    ref: ModelRef,
    download: Callable[[Path], Path],
    where: str,
    *,
    refresh: bool = False,
) -> Path:
    """The semclip model directory of ``ref`` under ``cache_dir``, downloaded once.

    ``download(dst)`` fetches the logged model into ``dst`` and returns its root; ``where``
    names the registry in errors. A cached copy whose files fail
    :func:`~semclip.artifact.verify_model_dir` (or any copy, with ``refresh``) is dropped and
    downloaded again. Raises :class:`RegistryError` when what was downloaded is not a semclip
    model, :class:`CorruptRegistryModelError` when the fresh download fails the check too.
    """
    from semclip.artifact import CorruptModelError, verify_model_dir

    target = _cache_target(cache_dir, ref)
    if (target / "model.json").is_file():
        if refresh:
            drop_cached_dir(target)
        else:
            try:
                verify_model_dir(target)
                return target
            except CorruptModelError as exc:
                log.warning("%s: cached copy dropped, downloading again: %s", ref.uri, exc)
                drop_cached_dir(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        downloaded = download(tmp)
        inner = downloaded / artifact_subpath(downloaded)
        if not (inner / "model.json").is_file():
            raise RegistryError(
                f"{ref.uri} in {where} is not a semclip model (no {MODEL_ARTIFACT})"
            )
        try:
            verify_model_dir(inner)
        except CorruptModelError as exc:
            raise CorruptRegistryModelError(
                f"{ref.uri} in {where} is corrupt in the registry itself, not only in this "
                f"machine's cache: {exc}. Promote a good version (`semclip promote --version "
                f"N`) or register a new one (run the refit flow)"
            ) from exc
        try:
            inner.rename(target)
        except OSError:  # another process won the race: use its copy
            if not (target / "model.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def drop_cached_dir(target: Path) -> None:
    """Remove a cached version folder, out of sight first (rename) so no reader sees half."""
    doomed = target.with_name(f"{target.name}.bad-{uuid.uuid4().hex[:8]}")
    try:
        target.rename(doomed)
    except OSError:  # gone already (another process dropped it)
        return
    shutil.rmtree(doomed, ignore_errors=True)


def _cache_target(cache_dir: Path | None, ref: ModelRef) -> Path:
    cache = cache_dir or Path(tempfile.gettempdir()) / "semclip-model-cache"
    source_id = (ref.source or ref.run_id or "unknown").rsplit("/", 1)[-1]
    return cache / _safe(ref.name) / f"v{ref.version}-{_safe(source_id)}"


def cached_model(key: Hashable, load: Callable[[], SemclipModel]) -> SemclipModel:
    """The model loaded under ``key`` in this process, calling ``load()`` the first time."""
    with _CACHE_LOCK:
        model = _LOADED.get(key)
        if model is None:
            model = load()
            _LOADED[key] = model
            while len(_LOADED) > _CACHE_SIZE:
                _LOADED.pop(next(iter(_LOADED)))
        return model


def clear_model_cache() -> None:
    """Forget the models :func:`cached_model` holds (tests, memory pressure)."""
    with _CACHE_LOCK:
        _LOADED.clear()


def _safe(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", text)
