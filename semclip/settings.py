"""One typed settings object for the pipeline, read from the environment and a config file.

Every knob of the nightly/refit pipeline lives here, so the README table, the flows and the
CLI cannot disagree about a name or a default. Sources, strongest first:

1. keyword overrides to :func:`get_settings` (tests, the CLI);
2. environment variables ``SEMCLIP_<FIELD>``, plus the standard ``MLFLOW_TRACKING_URI`` and
   ``AWS_ENDPOINT_URL_S3`` that the MLflow and AWS tools already honour;
3. the TOML or YAML file named by ``SEMCLIP_CONFIG`` (keys are the field names);
4. the defaults below. ``bucket``, ``mlflow_tracking_uri`` and ``prefect_home`` default to
   places under ``home``, resolved to absolute paths when the settings are built.

Nothing is read at import time: call :func:`get_settings` where the value is needed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from semclip.config import DEFAULT_MAX_IMAGE_PIXELS

__all__ = ["CONFIG_ENV_VAR", "SemclipSettings", "get_settings", "settings_table"]

ENV_PREFIX = "SEMCLIP_"
CONFIG_ENV_VAR = "SEMCLIP_CONFIG"
ID_GROUPS = ("lot_id", "wafer_id", "defect_id")
DEFAULT_PATH_REGEX = r"(?P<lot_id>[^/]+)/(?P<wafer_id>[^/]+)/(?P<defect_id>[^/.]+)\.[^/]+$"

# Defaults as the README shows them (those under `home` are computed when settings are built).
_DERIVED_DEFAULTS = {
    "home": "./.semclip",
    "bucket": "file://$SEMCLIP_HOME/bucket",
    "mlflow_tracking_uri": "sqlite:///$SEMCLIP_HOME/mlflow.db",
    "prefect_home": "$SEMCLIP_HOME/prefect",
}
# Settings read from a standard variable of another tool; the SEMCLIP_ name works too.
_STANDARD_ENV = {
    "mlflow_tracking_uri": "MLFLOW_TRACKING_URI",
    "s3_endpoint_url": "AWS_ENDPOINT_URL_S3",
}
# The config file for this settings build: set by get_settings(config_file=...), else the env.
_config_file_override: ContextVar[Path | None] = ContextVar("semclip_config_file", default=None)


def _standard(name: str) -> AliasChoices:
    """Accept the other tool's variable first, then ``SEMCLIP_<NAME>``, then the field name."""
    return AliasChoices(_STANDARD_ENV[name], f"{ENV_PREFIX}{name.upper()}", name)


class SemclipSettings(BaseSettings):
    """Everything the pipeline can be configured with; see the module docstring for sources."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="forbid", populate_by_name=True
    )

    home: Path = Field(
        Path("./.semclip"),
        description="Working folder for the local bucket, MLflow database and Prefect state.",
    )
    bucket: str | None = Field(
        None,
        description="Object store root: file://… or s3://bucket[/prefix]; a bare path means "
        "a local folder.",
    )
    model_name: str = Field("semclip-sem", description="Registered MLflow model name.")
    timezone: str = Field(
        "UTC", description="IANA zone of the fab: the nightly cron and 'yesterday' use it."
    )
    path_regex: str = Field(
        DEFAULT_PATH_REGEX,
        description="Regex searched in an image path relative to raw/<date>/; named groups "
        "lot_id, wafer_id, defect_id (any missing group gives null).",
    )
    tiff_page: int = Field(
        0, ge=0, description="Page of a multi-page TIFF (detector) to read; PNG/JPEG: ignored."
    )
    max_image_pixels: int = Field(
        DEFAULT_MAX_IMAGE_PIXELS,
        ge=1,
        description="Largest image area (px) decoded; a larger one (a decompression bomb) is "
        "quarantined with the reason, and the run goes on.",
    )
    batch_size: int = Field(32, ge=1, description="Images per inference batch.")
    task_runner: Literal["auto", "sequential", "dask"] = Field(
        "auto",
        description="How the nightly runs its shards: sequential (in the flow's process) or "
        "dask (prefect-dask); auto: dask when SEMCLIP_DASK_ADDRESS is set or the machine gets "
        "2+ workers, else sequential.",
    )
    dask_address: str | None = Field(
        None,
        description="Scheduler of an existing Dask cluster (tcp://host:8786: dask-kubernetes, "
        "dask-jobqueue, Coiled); unset: a LocalCluster started by the run.",
    )
    dask_workers: int | None = Field(
        None,
        ge=1,
        description="Workers of the LocalCluster; unset: one per GPU, else one per 2 CPU "
        "cores. Torch threads per worker = cores / workers.",
    )
    dask_processes: bool = Field(
        True,
        description="LocalCluster workers as processes (own model copy and torch threads; a "
        "crash takes one worker); false: threads of the flow's process, no start-up cost.",
    )
    slot_lease_s: int = Field(
        60,
        ge=60,
        le=86400,
        description="Lease of a Prefect concurrency slot (semclip-gpu, the per-date lock), "
        "renewed while held: a killed run frees its slots this long after it died "
        "(Prefect's minimum is 60).",
    )
    slot_timeout_s: int = Field(
        3600,
        ge=1,
        description="Seconds a run waits for a concurrency slot before failing with the "
        "command that shows and frees it.",
    )
    holdout_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="Share of confirmed images held out, by content hash."
    )
    support_cap_per_class: int = Field(
        20, ge=1, description="Most support shots per class at refit (newest first)."
    )
    gate_min_f1_gain: float = Field(
        0.01,
        ge=-1.0,
        le=1.0,
        description="Bootstrap 95 % lower bound of the macro F1 gain a candidate needs to "
        "become champion.",
    )
    gate_max_pixel_f1_drop: float = Field(
        0.02, ge=0.0, le=1.0, description="Largest pixel F1-max drop a promotion tolerates."
    )
    gate_min_holdout_per_class: int = Field(
        5,
        ge=1,
        description="Hold-out images each class the candidate knows (good included) needs "
        "before the gate judges; fewer: 'insufficient', champion stays.",
    )
    review_margin: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="`semclip review export`: a row whose top-1 minus top-2 class probability "
        "is below this needs review (reason small_margin).",
    )
    drift_threshold: float = Field(
        0.25,
        gt=0.0,
        description="Drift score (max of class-histogram JS divergence, score-quantile shift "
        "and CLS-embedding cosine distance to the reference nights) above which the nightly "
        "report flags drift and emits the Prefect event semclip.drift.flagged.",
    )
    drift_window: int = Field(
        7, ge=1, description="Reference window of the drift score: the previous N nights."
    )
    mlflow_tracking_uri: str | None = Field(
        None,
        validation_alias=_standard("mlflow_tracking_uri"),
        description="MLflow tracking and registry URI (MLFLOW_TRACKING_URI wins).",
    )
    mlflow_artifact_location: str | None = Field(
        None,
        description="Where a new MLflow experiment keeps model versions (folder, file:// or "
        "s3://…); unset: mlartifacts/ beside a SQLite database, else the server's default. "
        "MLflow fixes it when the experiment is created.",
    )
    s3_endpoint_url: str | None = Field(
        None,
        validation_alias=_standard("s3_endpoint_url"),
        description="S3 endpoint for MinIO/Ceph/on-prem S3; unset means AWS.",
    )
    backbone: str | None = Field(
        None, description="open_clip architecture; unset means the project's default."
    )
    pretrained: str | None = Field(
        None, description="Pretrained weights (tag, file or local-dir:); unset: project default."
    )
    pixel_size_nm: float | None = Field(
        None,
        gt=0,
        description="Nanometres per pixel of nightly images whose file carries no pixel size "
        "(TIFF resolution/description, PNG pHYs/text); unset: defect_area_nm2 is null for them.",
    )
    git_commit: str | None = Field(
        None,
        description="Commit recorded in a refit's lineage when the code's folder is not a git "
        "checkout (e.g. an image built without .git); git rev-parse HEAD wins.",
    )
    nightly_report: bool = Field(
        True,
        description="The nightly flow ends with the yield report of its date (the yield-report "
        "flow, as a subflow: reports/date=<D>/ and a Prefect artifact); false: leave it out.",
    )
    report_nights: int = Field(
        7, ge=1, description="Nights in the yield report's defect density trend."
    )
    nightly_klarf_export: bool = Field(
        False,
        description="The nightly flow ends by writing klarf_out/<D>/ (each input KLARF with "
        "the predicted classes as CLASSNUMBER, as `semclip klarf-export`).",
    )
    class_codes: str | None = Field(
        None,
        description="KLARF class codes per predicted class, e.g. 'particle=1,bridge=2' or "
        "JSON; merged over `class_codes:` of the prompt file (this wins).",
    )
    prefect_home: Path | None = Field(None, description="PREFECT_HOME for local runs.")
    prefect_startup_timeout_s: int = Field(
        180,
        ge=1,
        description="Seconds `make demo` waits for the local Prefect server it starts when "
        "PREFECT_API_URL is unset.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Overrides, then the environment, then the optional config file; no .env magic."""
        config_file = _config_file_override.get() or _config_file_from_env()
        if config_file is None:
            return (init_settings, env_settings)
        return (init_settings, env_settings, _file_source(settings_cls, config_file))

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name") from None
        return value

    @field_validator("path_regex")
    @classmethod
    def _usable_regex(cls, value: str) -> str:
        try:
            groups = set(re.compile(value).groupindex)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        if not groups & set(ID_GROUPS):
            raise ValueError(f"needs at least one named group of {', '.join(ID_GROUPS)}")
        return value

    @model_validator(mode="after")
    def _resolve_paths(self) -> SemclipSettings:
        """Make ``home`` absolute and fill the defaults that live under it.

        Absolute because flows and workers may run from another folder than the one that
        configured them; the frozen model is written through ``__dict__`` once, here.
        """
        home = self.home.expanduser().resolve()
        resolved: dict[str, Any] = {
            "home": home,
            "bucket": _normalise_bucket(self.bucket or str(home / "bucket")),
            "mlflow_tracking_uri": self.mlflow_tracking_uri or f"sqlite:///{home / 'mlflow.db'}",
            "prefect_home": (self.prefect_home or home / "prefect").expanduser().resolve(),
        }
        self.__dict__.update(resolved)
        return self


def get_settings(
    *, config_file: str | os.PathLike[str] | None = None, **overrides: Any
) -> SemclipSettings:
    """Build the settings now; ``overrides`` win over everything, ``config_file`` over env's.

    Raises ``FileNotFoundError`` when the named config file does not exist (a typo there
    would otherwise silently run with defaults) and pydantic's ``ValidationError`` naming
    the field for a bad value or an unknown key in the file.
    """
    with _using_config_file(Path(config_file) if config_file is not None else None):
        return SemclipSettings(**overrides)


def describe_settings_error(exc: Exception) -> str | None:
    """A bad setting in the words a user set it: ``SEMCLIP_PIXEL_SIZE_NM='-5': must be > 0``.

    pydantic's own text names the field (``pixel_size_nm``) and its URL; people set
    environment variables or config-file keys, so both names are given. None when `exc` is
    not a validation error of these settings.
    """
    errors = getattr(exc, "errors", None)
    if getattr(exc, "title", None) != SemclipSettings.__name__ or not callable(errors):
        return None
    lines = []
    for error in errors():
        field = ".".join(str(part) for part in error.get("loc", ())) or "settings"
        name = field.split(".")[0]
        env = _STANDARD_ENV.get(name, f"{ENV_PREFIX}{name.upper()}")
        given = f"={error['input']!r}" if "input" in error and error["type"] != "missing" else ""
        known = name in SemclipSettings.model_fields
        where = f"{env}{given} (config key '{field}')" if known else f"'{field}'"
        lines.append(f"{where}: {error.get('msg', 'invalid')}")
    return "bad setting: " + "; ".join(lines)


def settings_table() -> list[tuple[str, str, str, str]]:
    """``(name, environment variable, default, description)`` per setting, for the README."""
    rows = [
        (
            "config",
            CONFIG_ENV_VAR,
            "unset",
            "TOML or YAML file with any of the settings below (field names as keys).",
        )
    ]
    for name, field in SemclipSettings.model_fields.items():
        env = _STANDARD_ENV.get(name, f"{ENV_PREFIX}{name.upper()}")
        if name in _DERIVED_DEFAULTS:
            default = _DERIVED_DEFAULTS[name]
        elif field.default is None:
            default = "unset"
        else:
            default = str(field.default)
        rows.append((name, env, default, field.description or ""))
    return rows


@contextmanager
def _using_config_file(path: Path | None) -> Iterator[None]:
    token = _config_file_override.set(path)
    try:
        yield
    finally:
        _config_file_override.reset(token)


def _config_file_from_env() -> Path | None:
    value = os.environ.get(CONFIG_ENV_VAR, "").strip()
    return Path(value) if value else None


def _file_source(settings_cls: type[BaseSettings], path: Path) -> PydanticBaseSettingsSource:
    path = path.expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"semclip config file {str(path)!r} (from {CONFIG_ENV_VAR}) does not exist"
        )
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise ValueError(f"semclip config file {str(path)!r}: use a .toml, .yaml or .yml file")
    try:  # both sources parse the file here
        if suffix == ".toml":
            return TomlConfigSettingsSource(settings_cls, toml_file=path)
        return YamlConfigSettingsSource(settings_cls, yaml_file=path)
    except Exception as exc:  # noqa: BLE001 - tomllib / yaml parse errors, named with the file
        raise ValueError(
            f"semclip config file {str(path)!r} (from {CONFIG_ENV_VAR}) cannot be parsed: {exc}"
        ) from None


def _normalise_bucket(value: str) -> str:
    """A bare path becomes an absolute ``file://`` URL; other URLs lose a trailing slash."""
    value = value.strip()
    parts = urlsplit(value)
    if len(parts.scheme) <= 1:  # no scheme, or a Windows drive letter
        return f"file://{Path(value).expanduser().resolve()}"
    if parts.scheme == "file":
        return f"file://{Path(parts.netloc + parts.path).expanduser().resolve()}"
    if not parts.netloc:
        raise ValueError(f"bucket URL {value!r} names no bucket")
    return value.rstrip("/")
