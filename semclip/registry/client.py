"""The :class:`Registry`: one MLflow tracking/registry server and one registered model name.

Looks versions and aliases up, logs and registers a saved model directory, moves aliases, and
loads a version as a :class:`~semclip.model.SemclipModel` (through :mod:`semclip.registry.cache`).
See :mod:`semclip.registry` for the MLflow pitfalls handled here.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import mlflow
import mlflow.pyfunc
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from semclip.outage import EndpointUnreachableError, is_connection_failure
from semclip.registry.cache import cached_model, cached_model_dir
from semclip.registry.code_copy import clean_code_copy, pip_requirements
from semclip.registry.pyfunc import MODEL_ARTIFACT, MODEL_CODE_FILE, input_example, signature
from semclip.registry.refs import (
    CHAMPION,
    RANDOM_BACKBONE_NOTE,
    RANDOM_BACKBONE_TAG,
    CorruptRegistryModelError,
    MissingArtifactsError,
    ModelNotFoundError,
    ModelRef,
    RegistryAccessError,
    RegistryError,
    parse_model_uri,
)

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from semclip.model import SemclipModel
    from semclip.settings import SemclipSettings

__all__ = ["Registry"]

log = logging.getLogger(__name__)


LOGGED_MODEL_NAME = "model"
GATE_TAG = "semclip.gate"  # the refit gate's decision on a version (see semclip.refit.gate)
MANUAL_PROMOTE = "manual-promote"  # GATE_TAG once a person promoted the version
MANUAL_PREFIX = "semclip.promoted_"  # by, at, from, reason, alias of that promotion
# MLflow error codes that mean "the server looked and it is not there": a missing model or
# version, and a missing alias (INVALID_PARAMETER_VALUE from both SQL and REST stores).
_MISSING_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})
_ACCESS_REFUSED_CODES = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED"})
_MAX_PARAM_CHARS = 6000  # MLflow's limit on one param value
_MLFLOW_URI_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
# MLflow's own HTTP defaults (7 retries with back-off doubling from 2 s, a 120 s timeout) kept a
# task against a dead or mistyped server waiting some 13 minutes before any error. Outages are
# the flows' task retries' job (IO_RETRIES: named EndpointUnreachableError, retried twice), so
# each call gives up in seconds; a value the user exported wins.
HTTP_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def _bound_http_retries(tracking_uri: str) -> None:
    """Cap MLflow's HTTP retries for an http(s) server (see HTTP_BOUNDS), process-wide,
    unless the environment already says otherwise."""
    if tracking_uri.startswith(("http://", "https://")):
        for name, value in HTTP_BOUNDS.items():
            os.environ.setdefault(name, value)


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
        _bound_http_retries(self.tracking_uri)
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
        _bound_http_retries(self.tracking_uri)
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
            except MlflowException as exc:
                self._raise_if_unreachable(exc)
                raise ModelNotFoundError(
                    f"model {name!r} has no version {version} in {self.where()} "
                    f"(versions: {self._version_list(client, name)})"
                ) from None
        try:
            return _ref(client.get_model_version_by_alias(name, alias))
        except MlflowException as exc:
            self._raise_if_unreachable(exc)
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
        except MlflowException as exc:
            self._raise_if_unreachable(exc)
            raise ModelNotFoundError(
                f"no registered model {name!r} in {self.where()}; run the refit flow first "
                "(it registers and promotes the first version)"
            ) from None

    def _raise_if_unreachable(self, exc: BaseException) -> None:
        """Only an answer "no such thing" may become :class:`ModelNotFoundError`.

        MLflow raises one ``MlflowException`` for everything, so a server that is down, or
        up but failing (HTTP 5xx after its retries, a proxy's 502), read as "no registered
        model": ``alias()`` then said "no champion" and a refit promoted itself without the
        gate. Here a connection failure or a server error becomes
        :class:`EndpointUnreachableError` naming the server (an outage, retried), refused
        credentials become :class:`RegistryAccessError`, and anything else is left to the
        caller, which reports what is missing.
        """
        if is_connection_failure(exc):
            raise EndpointUnreachableError("the MLflow registry", self.where(), exc) from exc
        if not isinstance(exc, MlflowException):
            return
        if exc.error_code in _ACCESS_REFUSED_CODES:
            raise RegistryAccessError(
                f"the MLflow registry at {self.where()} refused this client "
                f"({exc.error_code}: {exc.message}); set MLFLOW_TRACKING_TOKEN or "
                "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD for this worker"
            ) from exc
        if exc.error_code not in _MISSING_CODES:
            raise EndpointUnreachableError("the MLflow registry", self.where(), exc) from exc

    @contextmanager
    def _reaching(self) -> Iterator[None]:
        """Calls to the server inside the block: a connection failure is named as one."""
        try:
            yield
        except EndpointUnreachableError:
            raise
        except Exception as exc:
            self._raise_if_unreachable(exc)
            raise

    def _version_numbers(self, client: MlflowClient, name: str) -> list[int]:
        with self._reaching():
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
        datasets: Mapping[str, pd.DataFrame] | None = None,
        description: str | None = None,
    ) -> ModelRef:
        """Log a saved model directory as a new MLflow run + logged model, and register it.

        ``params`` are flattened (``a.b``) and stringified; ``None`` metrics are skipped
        (MLflow has no null); ``documents`` are JSON artifacts (lineage, gate decision).
        ``datasets`` are run inputs by context (``"training"``, ``"holdout"``: one row per
        image, with its URI, hash and label), so the MLflow UI shows what the model saw.
        The version gets the run's ``tags`` too, so a registry browser shows them, and
        ``description`` (after the random-backbone note where that applies).
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
                _log_datasets(datasets or {})
                with clean_code_copy() as code:
                    # MLflow runs the input example through the model while logging it.
                    info = mlflow.pyfunc.log_model(
                        name=LOGGED_MODEL_NAME,
                        python_model=str(MODEL_CODE_FILE),  # models from code: no pickle
                        artifacts={MODEL_ARTIFACT: str(model_dir)},
                        code_paths=[str(code)],
                        signature=signature(),
                        input_example=input_example(model_dir),
                        pip_requirements=pip_requirements(),
                        registered_model_name=self.model_name,
                    )
                run_id = run.info.run_id
        version = str(info.registered_model_version)
        client = self.client()
        for key, value in tags.items():
            if not key.startswith("mlflow."):
                client.set_model_version_tag(self.model_name, version, key, value)
        text = "\n\n".join(t for t in (RANDOM_BACKBONE_NOTE if is_random else "", description) if t)
        if text:
            client.update_model_version(self.model_name, version, description=text)
        log.info("registered %s version %s (run %s)", self.model_name, version, run_id)
        return _ref(client.get_model_version(self.model_name, version))

    def set_alias(self, alias: str, version: str | int) -> ModelRef:
        """Point ``alias`` at ``version`` (which must exist); returns that version."""
        ref = self.resolve(str(version))
        self.client().set_registered_model_alias(self.model_name, alias, ref.version)
        return ref

    def promote(
        self,
        version: str | int,
        alias: str = CHAMPION,
        *,
        by: str | None = None,
        reason: str | None = None,
    ) -> tuple[ModelRef | None, ModelRef]:
        """Move ``alias`` (default champion) to ``version``; returns ``(previous, new)``.

        A rollback is promoting the previous version again. Raises
        :class:`ModelNotFoundError` when the version does not exist. A promotion by hand
        (``reason`` given) is recorded on the version: who, when (UTC), from which version,
        why, and its gate tag becomes ``manual-promote`` (the refit's word is kept beside).
        """
        previous = self.alias(alias)
        if previous is not None and str(previous.version) == str(version).strip():
            # nothing moves; writing the audit tags again would overwrite the record of the
            # promotion (or rollback) that put it there
            raise ValueError(
                f"v{previous.version} is already {alias} of {self.model_name}: nothing to "
                "promote (its promotion record is kept)"
            )
        if reason is not None:
            self._record_manual_promotion(version, alias, previous, by, reason)
        new = self.set_alias(alias, version)
        log.info(
            "%s of %s: %s -> %s",
            alias,
            self.model_name,
            previous.version if previous else "none",
            new.version,
        )
        return previous, new

    def _record_manual_promotion(
        self,
        version: str | int,
        alias: str,
        previous: ModelRef | None,
        by: str | None,
        reason: str,
    ) -> None:
        """The audit tags of a promotion by hand, written before the alias moves."""
        ref = self.resolve(str(version))
        tags = {
            f"{MANUAL_PREFIX}by": by or "unknown",
            f"{MANUAL_PREFIX}at": datetime.now(UTC).isoformat(timespec="seconds"),
            f"{MANUAL_PREFIX}from": previous.version if previous else "none",
            f"{MANUAL_PREFIX}reason": reason,
            f"{MANUAL_PREFIX}alias": alias,
            GATE_TAG: MANUAL_PROMOTE,
        }
        if ref.tags.get(GATE_TAG) and ref.tags[GATE_TAG] != MANUAL_PROMOTE:
            tags[f"{GATE_TAG}_refit"] = ref.tags[GATE_TAG]
        client = self.client()
        for key, value in tags.items():
            client.set_model_version_tag(self.model_name, ref.version, key, value)

    def annotate(
        self,
        ref: ModelRef,
        *,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
        documents: Mapping[str, Any] | None = None,
        texts: Mapping[str, str] | None = None,
    ) -> ModelRef:
        """Add params, metrics, tags and artifacts to a registered version's run (and tags to
        the version itself): what a flow that wraps the refit (adapt-backbone) knows about a
        version besides what the refit logged. ``params`` are flattened as in log_version and
        must not repeat a key the run has already logged (MLflow params are write-once).
        """
        if ref.run_id is None:
            raise RegistryError(f"{ref.uri} has no MLflow run to annotate")
        client = self.client()
        for key, value in _flatten(params or {}).items():
            client.log_param(ref.run_id, key, value)
        for key, value in (metrics or {}).items():
            client.log_metric(ref.run_id, key, float(value))
        for key, value in (tags or {}).items():
            client.set_tag(ref.run_id, key, value)
            client.set_model_version_tag(self.model_name, ref.version, key, value)
        for name, document in (documents or {}).items():
            client.log_dict(ref.run_id, document, name)
        for name, text in (texts or {}).items():
            client.log_text(ref.run_id, text, name)
        return _ref(client.get_model_version(self.model_name, ref.version))

    # ------------------------------------------------------------------ loading
    def local_dir(self, ref: ModelRef, *, refresh: bool = False) -> Path:
        """The semclip model directory of ``ref`` on this machine, downloaded once.

        The cached copy is checked against its recorded hashes on every call and downloaded
        again when it fails (or with ``refresh``); see :mod:`semclip.registry.cache`.
        """
        return cached_model_dir(
            self.cache_dir, ref, partial(self._download, ref), self.where(), refresh=refresh
        )

    def _download(self, ref: ModelRef, dst: Path) -> Path:
        with self._active(), self._reaching():  # models:/ resolution ignores registry_uri=
            try:
                root = Path(
                    mlflow.artifacts.download_artifacts(artifact_uri=ref.uri, dst_path=str(dst))
                )
            except (MlflowException, OSError) as exc:
                if is_connection_failure(exc):
                    raise  # named as an outage by _reaching
                raise self._missing_artifacts(ref, f"{type(exc).__name__}: {exc}") from exc
        if not (root / "MLmodel").is_file():  # MLflow "downloads" a deleted folder as empty
            raise self._missing_artifacts(ref, "the download is empty, no MLmodel")
        return root

    def _missing_artifacts(self, ref: ModelRef, why: str) -> MissingArtifactsError:
        return MissingArtifactsError(
            f"{ref.uri} is registered in {self.where()} but its artifacts cannot be read "
            f"from {ref.source or 'its artifact store'} ({why}); the artifact folder was "
            f"deleted or is unreadable. Promote another version (`semclip promote --version "
            f"N`) or register a new one (run the refit flow)"
        )

    def load(
        self,
        reference: str | int | ModelRef | None = None,
        device: str | torch.device | None = None,
    ) -> SemclipModel:
        """The :class:`SemclipModel` of a version or alias, named as registered.

        ``model.version`` becomes the registry version (what Parquet rows carry), whatever the
        directory said when it was logged. A cached copy that cannot be loaded is dropped and
        downloaded once more; if that fails too, :class:`CorruptRegistryModelError`.
        """
        from semclip.artifact import CorruptModelError, load_model

        ref = reference if isinstance(reference, ModelRef) else self.resolve(reference)
        try:  # local_dir has just checked the hashes: no second pass over the weights
            model = load_model(self.local_dir(ref), device=device, verify=False)
        except CorruptModelError as exc:
            log.warning("%s: cached copy unusable, downloading again: %s", ref.uri, exc)
            try:
                model = load_model(self.local_dir(ref, refresh=True), device=device, verify=False)
            except CorruptModelError as again:
                raise CorruptRegistryModelError(
                    f"{ref.uri} in {self.where()} cannot be loaded even freshly downloaded: "
                    f"{again}. Promote a good version (`semclip promote --version N`) or "
                    f"register a new one (run the refit flow)"
                ) from again
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
        return cached_model(key, partial(self.load, ref, device))


def _log_datasets(datasets: Mapping[str, pd.DataFrame]) -> None:
    """Each frame as an MLflow dataset input of the active run, its context the key."""
    import mlflow.data

    for context, frame in datasets.items():
        dataset = mlflow.data.from_pandas(frame, name=context)
        mlflow.log_input(dataset, context=context)


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


def _is_random(model_dir: Path) -> bool:
    try:
        meta = json.loads((model_dir / "model.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return bool(meta.get("backbone", {}).get("random_weights"))


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
