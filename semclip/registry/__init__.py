"""The MLflow side of a model's life: log, register, alias, load offline, serve as pyfunc.

A registered version of ``semclip-sem`` is one MLflow logged model whose artifacts hold the
whole semclip model directory (:mod:`semclip.artifact`: backbone weights, heads, T, classes,
prompts, τ, α, preprocessing, lineage), so a worker with no internet serves it from the
registry alone. It is logged through :class:`SemclipPyfunc`, so generic MLflow tooling
(``mlflow.pyfunc.load_model``, ``mlflow models serve``) works on it too; the nightly flow
loads it with ``Registry.load``, which gives back the :class:`~semclip.model.SemclipModel`.

Aliases, not stages (deprecated): ``champion`` is what nightly inference uses, ``challenger``
the latest candidate. Only the refit gate or a person (``semclip promote``) moves
``champion``; a rollback is promoting the older version.

Pitfalls handled here (MLflow 3.17): file stores are refused, so the default is SQLite; an
experiment's artifact location is fixed at creation, so it is set explicitly (next to the
database, never ``./mlruns`` of whatever folder a worker started in); aliases are read with
``get_model_version_by_alias`` (``search_model_versions`` returns none on SQL backends).

One module per part: :mod:`~semclip.registry.refs` (versions, aliases, model URIs; no
MLflow import), :mod:`~semclip.registry.client` (the ``Registry``),
:mod:`~semclip.registry.pyfunc` (the MLflow face of a model), :mod:`~semclip.registry.cache`
(downloaded and loaded versions), :mod:`~semclip.registry.code_copy` (the code and
requirements logged with a model). None of them imports prefect.

Models logged before this package was split pickled their python model by reference as
``semclip.registry.SemclipPyfunc``; that name still resolves here, so
``mlflow.pyfunc.load_model`` loads them in a process running this semclip.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["SemclipPyfunc"]


def __getattr__(name: str) -> Any:
    """``semclip.registry.SemclipPyfunc`` on demand (PEP 562): unpickling an old model finds
    it, while importing the light :mod:`~semclip.registry.refs` does not pull in MLflow."""
    if name == "SemclipPyfunc":
        return importlib.import_module("semclip.registry.pyfunc").SemclipPyfunc
    raise AttributeError(f"module 'semclip.registry' has no attribute {name!r}")


if TYPE_CHECKING:
    from semclip.registry.pyfunc import SemclipPyfunc
