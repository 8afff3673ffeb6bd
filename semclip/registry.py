"""The MLflow side of a model's life: log, register, alias, load offline, serve as pyfunc.

A registered version of ``semclip-sem`` is one MLflow logged model whose artifacts hold the
whole semclip model directory (:mod:`semclip.artifact`: backbone weights, heads, T, classes,
prompts, τ, α, preprocessing, lineage), so a worker with no internet serves it from the
registry alone. It is logged through :class:`SemclipPyfunc`, so generic MLflow tooling
(``mlflow.pyfunc.load_model``, ``mlflow models serve``) works on it too; the nightly flow
loads it with :meth:`Registry.load`, which gives back the :class:`~semclip.model.SemclipModel`.

Aliases, not stages (deprecated): ``champion`` is what nightly inference uses, ``challenger``
the latest candidate. Only the refit gate or a person (``semclip promote``) moves
``champion``; a rollback is promoting the older version.

Pitfalls handled here (MLflow 3.17): file stores are refused, so the default is SQLite; an
experiment's artifact location is fixed at creation, so it is set explicitly (next to the
database, never ``./mlruns`` of whatever folder a worker started in); aliases are read with
``get_model_version_by_alias`` (``search_model_versions`` returns none on SQL backends).

This module imports mlflow but never prefect.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import uuid
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

if TYPE_CHECKING:
    import torch

    from semclip.model import SemclipModel
    from semclip.settings import SemclipSettings

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "MODEL_ARTIFACT",
    "ModelNotFoundError",
    "ModelRef",
    "Registry",
    "RegistryError",
    "SemclipPyfunc",
    "parse_model_uri",
]

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_ARTIFACT = "semclip_model"  # key of the model directory in the pyfunc artifacts
LOGGED_MODEL_NAME = "model"
RANDOM_BACKBONE_TAG = "semclip.random_backbone"
RANDOM_BACKBONE_NOTE = (
    "RANDOM-WEIGHT BACKBONE: this model's metrics are a plumbing check, not quality figures"
)
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")
_MAX_PARAM_CHARS = 6000  # MLflow's limit on one param value
_MLFLOW_URI_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
_CACHE_SIZE = 2  # loaded models kept per process (champion + one pinned/candidate)


class RegistryError(ValueError):
    """The registry cannot do what was asked; the message says what to do instead."""


class ModelNotFoundError(RegistryError):
    """No such registered model, version or alias."""


@dataclass(frozen=True)
class ModelRef:
    """One registered model version: what flows pass around instead of the model itself."""

    name: str
    version: str  # MLflow version number as a string, also the Parquet model_version
    run_id: str | None = None
    source: str | None = None  # the logged model's own URI (models:/m-…)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        """``models:/<name>/<version>``: immutable, unlike an alias."""
        return f"models:/{self.name}/{self.version}"

    @property
    def random_backbone(self) -> bool:
        """True when the version was fitted on a random-weight backbone (scores meaningless)."""
        return self.tags.get(RANDOM_BACKBONE_TAG, "").lower() == "true"


def parse_model_uri(value: str | int | None, default_name: str) -> tuple[str, str | None, str]:
    """``(name, version, alias)`` of a model reference; exactly one of version/alias is set.

    Accepts ``None`` (the champion), a version number (``3``, ``"3"``), an alias
    (``"challenger"``), ``models:/name/3`` and ``models:/name@alias``. Raises
    :class:`RegistryError` on anything else, e.g. ``models:/name`` or ``runs:/…``.
    """
    if value is None:
        return default_name, None, CHAMPION
    text = str(value).strip()
    if text.isdigit():
        return default_name, str(int(text)), ""
    if text.startswith("models:/"):
        match = _MODELS_URI.match(text)
        if not match:
            raise RegistryError(
                f"model URI {text!r}: use models:/<name>/<version> or models:/<name>@<alias>"
            )
        return match["name"], match["version"], match["alias"] or ""
    if re.fullmatch(r"[A-Za-z_][\w-]*", text):
        return default_name, None, text
    raise RegistryError(
        f"model reference {text!r}: give a version number, an alias (champion, challenger) "
        "or a models:/ URI"
    )


class SemclipPyfunc(mlflow.pyfunc.PythonModel):
    """Generic MLflow face of a semclip model: a DataFrame of images in, prediction rows out.

    Input: a column ``image`` (encoded file bytes) or ``image_uri`` (paths or fsspec URIs).
    Output: one row per image with the columns of the declared prediction schema
    (``probabilities`` as a dict, ``bbox`` as a dict or None). Unreadable images give a row
    with ``error`` set, as :meth:`SemclipModel.predict` does.
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from semclip.artifact import load_model

        self._model = load_model(context.artifacts[MODEL_ARTIFACT])

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        import fsspec

        if "image" in model_input.columns:
            images = list(model_input["image"])
            uris = (
                [str(u) for u in model_input["image_uri"]]
                if "image_uri" in model_input.columns
                else None
            )
        elif "image_uri" in model_input.columns:
            uris = [str(u) for u in model_input["image_uri"]]
            images = [_read_uri(fsspec, u) for u in uris]
        else:
            raise ValueError("input needs a column 'image' (bytes) or 'image_uri' (path/URI)")
        predictions = self._model.predict(images, uris=uris)
        return pd.DataFrame([p.to_record() for p in predictions])


def _read_uri(fsspec_module: Any, uri: str) -> bytes:
    """File bytes, or empty bytes when unreadable: the model then reports the read error."""
    try:
        with fsspec_module.open(uri, "rb") as f:
            return f.read()
    except OSError as exc:
        log.warning("cannot read %s: %s", uri, exc)
        return b""


@dataclass(frozen=True)
class Registry:
    """One MLflow tracking/registry server and one registered model name.

    ``artifact_location`` is used only when the experiment is first created (MLflow fixes it
    then); by default it is ``mlartifacts/`` beside a SQLite database. ``cache_dir`` holds
    downloaded versions (immutable, so downloaded once per worker).
    """

    tracking_uri: str
    model_name: str = "semclip-sem"
    experiment_name: str | None = None  # default: the model name
    artifact_location: str | None = None
    cache_dir: Path | None = None

    @classmethod
    def from_settings(cls, settings: SemclipSettings, **overrides: Any) -> Registry:
        """The registry the settings name; model cache under ``$SEMCLIP_HOME/model-cache``."""
        values: dict[str, Any] = {
            "tracking_uri": settings.mlflow_tracking_uri,
            "model_name": settings.model_name,
            "cache_dir": settings.home / "model-cache",
            "artifact_location": settings.mlflow_artifact_location,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    # ------------------------------------------------------------------ plumbing
    def client(self) -> MlflowClient:
        _ensure_sqlite_folder(self.tracking_uri)
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    @contextmanager
    def _active(self) -> Iterator[None]:
        """Point the fluent API (start_run, log_model) at this registry for a block.

        ``mlflow.set_tracking_uri`` also writes MLFLOW_TRACKING_URI into the environment,
        which the settings read: everything is put back exactly as it was afterwards, or a
        later ``get_settings()`` would silently follow this registry (or MLflow's default).
        """
        from mlflow.tracking._model_registry import utils as registry_utils
        from mlflow.tracking._tracking_service import utils as tracking_utils

        _ensure_sqlite_folder(self.tracking_uri)
        saved_env = {name: os.environ.get(name) for name in _MLFLOW_URI_VARS}
        saved = tracking_utils._tracking_uri, registry_utils._registry_uri
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        try:
            yield
        finally:
            tracking_utils._tracking_uri, registry_utils._registry_uri = saved
            for name, value in saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def where(self) -> str:
        """The tracking URI without credentials, for messages."""
        return _redact(self.tracking_uri)

    def experiment_id(self) -> str:
        """The refit experiment, created with an explicit artifact location if missing."""
        client = self.client()
        name = self.experiment_name or self.model_name
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        location = self.artifact_location or _default_artifact_location(self.tracking_uri)
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created meanwhile by another process
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    # ------------------------------------------------------------------ lookups
    def resolve(self, reference: str | int | None = None) -> ModelRef:
        """The version a reference names (``None``: the champion); clear error if none.

        Raises :class:`ModelNotFoundError` naming the model, the registry and what exists.
        """
        name, version, alias = parse_model_uri(reference, self.model_name)
        client = self.client()
        self._require_registered(client, name)
        if version is not None:
            try:
                return _ref(client.get_model_version(name, version))
            except MlflowException:
                raise ModelNotFoundError(
                    f"model {name!r} has no version {version} in {self.where()} "
                    f"(versions: {self._version_list(client, name)})"
                ) from None
        try:
            return _ref(client.get_model_version_by_alias(name, alias))
        except MlflowException:
            hint = (
                "run the refit flow, or set it with `semclip promote --version N`"
                if alias == CHAMPION
                else "run the refit flow"
            )
            raise ModelNotFoundError(
                f"model {name!r} has no alias {alias!r} in {self.where()}; {hint} "
                f"(versions: {self._version_list(client, name)})"
            ) from None

    def alias(self, alias: str) -> ModelRef | None:
        """The version holding ``alias``, or ``None`` (no such model or alias)."""
        try:
            return self.resolve(alias)
        except ModelNotFoundError:
            return None

    def versions(self) -> list[str]:
        """Version numbers of the model, ascending (empty when it is not registered)."""
        return [str(v) for v in self._version_numbers(self.client(), self.model_name)]

    def run_metrics(self, ref: ModelRef) -> dict[str, float]:
        """Metrics logged by the run that produced ``ref`` (empty if it has no run)."""
        if not ref.run_id:
            return {}
        return dict(self.client().get_run(ref.run_id).data.metrics)

    def _require_registered(self, client: MlflowClient, name: str) -> None:
        try:
            client.get_registered_model(name)
        except MlflowException:
            raise ModelNotFoundError(
                f"no registered model {name!r} in {self.where()}; run the refit flow first "
                "(it registers and promotes the first version)"
            ) from None

    def _version_numbers(self, client: MlflowClient, name: str) -> list[int]:
        found = client.search_model_versions(f"name = '{_quote(name)}'")
        return sorted(int(v.version) for v in found)

    def _version_list(self, client: MlflowClient, name: str) -> str:
        numbers = self._version_numbers(client, name)
        return ", ".join(map(str, numbers)) if numbers else "none"

    # ------------------------------------------------------------------ writing
    def log_version(
        self,
        model_dir: str | Path,
        *,
        run_name: str | None = None,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float | None] | None = None,
        tags: Mapping[str, str] | None = None,
        documents: Mapping[str, Any] | None = None,
    ) -> ModelRef:
        """Log a saved model directory as a new MLflow run + logged model, and register it.

        ``params`` are flattened (``a.b``) and stringified; ``None`` metrics are skipped
        (MLflow has no null); ``documents`` are JSON artifacts (lineage, gate decision).
        The version gets the run's ``tags`` too, so a registry browser shows them.
        """
        model_dir = Path(model_dir)
        tags = dict(tags or {})
        is_random = _is_random(model_dir)
        tags.setdefault(RANDOM_BACKBONE_TAG, str(is_random).lower())
        if is_random:  # the MLflow UI shows the note on the run page: say it where scores are
            tags.setdefault("mlflow.note.content", RANDOM_BACKBONE_NOTE)
        with self._active():
            experiment_id = self.experiment_id()
            with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
                mlflow.log_params(_flatten(params or {}))
                mlflow.log_metrics(
                    {k: float(v) for k, v in (metrics or {}).items() if v is not None}
                )
                mlflow.set_tags(tags)
                for name, document in (documents or {}).items():
                    mlflow.log_dict(document, name)
                with _clean_code_copy() as code, warnings.catch_warnings():
                    # An input example would make MLflow load and run the model while
                    # logging it; the signature already says what goes in.
                    warnings.filterwarnings("ignore", message=".*input example was not provided")
                    info = mlflow.pyfunc.log_model(
                        name=LOGGED_MODEL_NAME,
                        python_model=SemclipPyfunc(),
                        artifacts={MODEL_ARTIFACT: str(model_dir)},
                        code_paths=[str(code)],
                        signature=_signature(),
                        pip_requirements=_pip_requirements(),
                        registered_model_name=self.model_name,
                    )
                run_id = run.info.run_id
        version = str(info.registered_model_version)
        client = self.client()
        for key, value in tags.items():
            if not key.startswith("mlflow."):
                client.set_model_version_tag(self.model_name, version, key, value)
        if is_random:
            client.update_model_version(self.model_name, version, description=RANDOM_BACKBONE_NOTE)
        log.info("registered %s version %s (run %s)", self.model_name, version, run_id)
        return _ref(client.get_model_version(self.model_name, version))

    def set_alias(self, alias: str, version: str | int) -> ModelRef:
        """Point ``alias`` at ``version`` (which must exist); returns that version."""
        ref = self.resolve(str(version))
        self.client().set_registered_model_alias(self.model_name, alias, ref.version)
        return ref

    def promote(
        self, version: str | int, alias: str = CHAMPION
    ) -> tuple[ModelRef | None, ModelRef]:
        """Move ``alias`` (default champion) to ``version``; returns ``(previous, new)``.

        A rollback is promoting the previous version again. Raises
        :class:`ModelNotFoundError` when the version does not exist.
        """
        previous = self.alias(alias)
        new = self.set_alias(alias, version)
        log.info(
            "%s of %s: %s -> %s",
            alias,
            self.model_name,
            previous.version if previous else "none",
            new.version,
        )
        return previous, new

    # ------------------------------------------------------------------ loading
    def local_dir(self, ref: ModelRef) -> Path:
        """The semclip model directory of ``ref`` on this machine, downloaded once.

        Versions are immutable, so the cache key is the version plus its logged model id;
        a half-finished download never becomes visible (download to a temp folder, rename).
        """
        cache = self.cache_dir or Path(tempfile.gettempdir()) / "semclip-model-cache"
        source_id = (ref.source or ref.run_id or "unknown").rsplit("/", 1)[-1]
        target = cache / _safe(ref.name) / f"v{ref.version}-{_safe(source_id)}"
        if (target / "model.json").is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with self._active():  # models:/ resolution ignores registry_uri= in 3.17
                downloaded = Path(
                    mlflow.artifacts.download_artifacts(artifact_uri=ref.uri, dst_path=str(tmp))
                )
            inner = downloaded / _artifact_subpath(downloaded)
            if not (inner / "model.json").is_file():
                raise RegistryError(
                    f"{ref.uri} in {self.where()} is not a semclip model (no {MODEL_ARTIFACT})"
                )
            try:
                inner.rename(target)
            except OSError:  # another process won the race: use its copy
                if not (target / "model.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def load(
        self,
        reference: str | int | ModelRef | None = None,
        device: str | torch.device | None = None,
    ) -> SemclipModel:
        """The :class:`SemclipModel` of a version or alias, named as registered.

        ``model.version`` becomes the registry version (what Parquet rows carry), whatever the
        directory said when it was logged.
        """
        from semclip.artifact import load_model

        ref = reference if isinstance(reference, ModelRef) else self.resolve(reference)
        model = load_model(self.local_dir(ref), device=device)
        model.name, model.version = ref.name, ref.version
        if model.backbone.random_weights:
            log.warning(
                "%s: RANDOM-WEIGHT BACKBONE; its scores are a plumbing check, not quality",
                ref.uri,
            )
        return model

    def load_cached(self, ref: ModelRef, device: str | torch.device | None = None) -> SemclipModel:
        """:meth:`load`, kept in this process: nightly shards share one loaded model."""
        key = (self.tracking_uri, ref.name, ref.version, ref.source, str(device))
        with _CACHE_LOCK:
            model = _LOADED.get(key)
            if model is None:
                model = self.load(ref, device)
                _LOADED[key] = model
                while len(_LOADED) > _CACHE_SIZE:
                    _LOADED.pop(next(iter(_LOADED)))
            return model


_LOADED: dict[tuple[str, ...], SemclipModel] = {}
_CACHE_LOCK = threading.Lock()


def clear_model_cache() -> None:
    """Forget the models :meth:`Registry.load_cached` holds (tests, memory pressure)."""
    with _CACHE_LOCK:
        _LOADED.clear()


# --------------------------------------------------------------------------- helpers


def _ref(version: Any) -> ModelRef:
    return ModelRef(
        name=version.name,
        version=str(version.version),
        run_id=version.run_id or None,
        source=version.source or None,
        tags=dict(version.tags or {}),
    )


def _ensure_sqlite_folder(uri: str) -> None:
    """SQLite creates the file but not its folder ($SEMCLIP_HOME on a fresh machine)."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)


def _default_artifact_location(tracking_uri: str) -> str | None:
    """``mlartifacts/`` beside a SQLite database; the server's choice otherwise."""
    if tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri[len("sqlite:///") :]).parent / "mlartifacts"
        return folder.resolve().as_uri()
    return None


def _artifact_subpath(model_root: Path) -> str:
    """Where the semclip directory lies inside a downloaded pyfunc model (from MLmodel)."""
    from mlflow.models import Model

    flavor = Model.load(str(model_root)).flavors.get("python_function", {})
    entry = flavor.get("artifacts", {}).get(MODEL_ARTIFACT, {})
    path = entry.get("path") if isinstance(entry, dict) else None
    if not path:
        raise RegistryError(f"{model_root} has no {MODEL_ARTIFACT!r} artifact in its MLmodel")
    return path


def _signature() -> Any:
    """Input columns of the pyfunc: ``image`` (bytes) and/or ``image_uri``; either may be
    absent. Output columns vary with the model's classes, so they are left open."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema(
        [
            ColSpec("binary", "image", required=False),
            ColSpec("string", "image_uri", required=False),
        ]
    )
    return ModelSignature(inputs=inputs)


def _is_random(model_dir: Path) -> bool:
    try:
        meta = json.loads((model_dir / "model.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return bool(meta.get("backbone", {}).get("random_weights"))


@contextmanager
def _clean_code_copy() -> Iterator[Path]:
    """The semclip package without caches, logged with the model so serving needs no wheel."""
    import semclip

    source = Path(semclip.__file__).parent
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "semclip"
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        yield target


def _pip_requirements() -> list[str]:
    """semclip's own runtime requirements, as installed (the package itself is in code/)."""
    try:
        requires = importlib.metadata.requires("semclip") or []
    except importlib.metadata.PackageNotFoundError:
        requires = []
    serving = [r for r in requires if "extra ==" not in r and not r.startswith("prefect")]
    return serving or ["torch", "open_clip_torch", "mlflow"]


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            out[name] = text[:_MAX_PARAM_CHARS]
    return out


def _safe(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", text)


def _quote(text: str) -> str:
    return text.replace("'", "''")


def _redact(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))
