"""Registered model versions as values: :class:`ModelRef`, the aliases, ``models:/`` URIs.

No MLflow import: what flows pass around, and what the CLI parses, stays light.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "CorruptRegistryModelError",
    "MissingArtifactsError",
    "RANDOM_BACKBONE_NOTE",
    "RANDOM_BACKBONE_TAG",
    "ModelNotFoundError",
    "RegistryAccessError",
    "ModelRef",
    "RegistryError",
    "parse_model_uri",
]


CHAMPION = "champion"
CHALLENGER = "challenger"
RANDOM_BACKBONE_TAG = "semclip.random_backbone"
RANDOM_BACKBONE_NOTE = (
    "RANDOM-WEIGHT BACKBONE: this model's metrics are a plumbing check, not quality figures"
)
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


class RegistryError(ValueError):
    """The registry cannot do what was asked; the message says what to do instead."""


class ModelNotFoundError(RegistryError):
    """No such registered model, version or alias."""


class RegistryAccessError(RegistryError, PermissionError):
    """The registry answered but refused these credentials (401/403): not a missing model,
    and not an outage either. A ``PermissionError``, so the I/O retry policy does not retry
    it: the same token fails the same way again."""


class CorruptRegistryModelError(RegistryError):
    """The registry's own copy of a version fails its file checks: re-downloading cannot help."""


class MissingArtifactsError(RegistryError):
    """The version is registered but its artifact folder is gone or unreadable."""


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
