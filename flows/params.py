"""Validated parameters of the flows, checked in each flow's first lines.

``prefect deployment run … --param run_date=2026-11-01`` hands the flow a *string*, and
Prefect only notices a bad one when the run starts, so every flow builds its model here
before touching storage or scheduling anything: a typo fails at once with a message that
says which parameter and why. The flows keep plain keyword arguments (so ``--param`` names
stay short) and these models carry the rules.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from semclip.config import FitConfig

__all__ = [
    "MAX_BACKFILL_DAYS",
    "BackfillParams",
    "NightlyParams",
    "RefitParams",
    "parse_run_date",
    "today_in",
]

MAX_BACKFILL_DAYS = 366  # a longer range is almost surely a typo in a year
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def today_in(timezone: str) -> dt.date:
    """Today's date at the fab (the nightly's 'yesterday' is relative to this)."""
    return dt.datetime.now(ZoneInfo(timezone)).date()


def parse_run_date(value: Any, name: str = "run_date") -> dt.date:
    """A date from ``YYYY-MM-DD`` (or a ``date``); ``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, dt.datetime):
        raise ValueError(f"{name}: give a date (YYYY-MM-DD), not a date and time: {value}")
    if isinstance(value, dt.date):
        return value
    text = str(value).strip()
    if not _ISO_DATE.match(text):
        raise ValueError(f"{name} {value!r} is not a date in the form YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"{name} {value!r} is not a valid date: {exc}") from None


class _Params(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NightlyParams(_Params):
    """nightly-inference: which raw/<date>/ to predict, and with which model."""

    run_date: dt.date = Field(description="The raw/<YYYY-MM-DD>/ folder to predict.")
    model_version: str | None = Field(
        None, description="Pinned version number or alias; default: the champion."
    )

    @classmethod
    def build(
        cls, run_date: str | dt.date | None, model_version: str | int | None, timezone: str
    ) -> NightlyParams:
        """From the flow's arguments; no date means yesterday in the fab's ``timezone``."""
        date = (
            today_in(timezone) - dt.timedelta(days=1)
            if run_date in (None, "")
            else parse_run_date(run_date)
        )
        if date > today_in(timezone):
            raise ValueError(f"run_date {date} is in the future (fab time zone {timezone})")
        version = None if model_version in (None, "") else str(model_version).strip()
        return cls(run_date=date, model_version=version)


class BackfillParams(_Params):
    """backfill: one nightly run per date from ``start`` to ``end``, both included."""

    start: dt.date
    end: dt.date
    request_id: str = Field(
        min_length=1,
        max_length=100,
        description="Identifies this backfill in idempotency keys (default: the flow run id).",
    )
    model_version: str | None = None
    deployment: str = Field(
        "nightly-inference/nightly", description="The nightly deployment, as flow/deployment."
    )

    @field_validator("start", "end", mode="before")
    @classmethod
    def _date(cls, value: Any, info: Any) -> dt.date:
        return parse_run_date(value, info.field_name)

    @field_validator("deployment")
    @classmethod
    def _deployment_name(cls, value: str) -> str:
        if value.count("/") != 1 or not all(value.split("/")):
            raise ValueError(f"deployment {value!r}: use '<flow name>/<deployment name>'")
        return value

    @model_validator(mode="after")
    def _range(self) -> BackfillParams:
        if self.start > self.end:
            raise ValueError(f"start {self.start} is after end {self.end}")
        days = (self.end - self.start).days + 1
        if days > MAX_BACKFILL_DAYS:
            raise ValueError(
                f"{days} days from {self.start} to {self.end}; at most {MAX_BACKFILL_DAYS} "
                "per backfill (split the range)"
            )
        return self

    @classmethod
    def build(
        cls,
        start: Any,
        end: Any,
        request_id: str,
        model_version: str | None,
        deployment: str,
        timezone: str,
    ) -> BackfillParams:
        """Validate everything, including that ``end`` is not after today at the fab."""
        params = cls(
            start=start,
            end=end,
            request_id=request_id,
            model_version=model_version or None,
            deployment=deployment,
        )
        if params.end > today_in(timezone):
            raise ValueError(f"end {params.end} is in the future (fab time zone {timezone})")
        return params

    def dates(self) -> list[dt.date]:
        """Every date of the range, oldest first."""
        days = (self.end - self.start).days + 1
        return [self.start + dt.timedelta(days=i) for i in range(days)]

    def idempotency_key(self, date: dt.date) -> str:
        """Date *and* request id: Prefect keeps keys for ever, so a later backfill of the
        same date needs a new key or it silently gets the old run back."""
        return f"semclip-backfill/{self.request_id}/{date.isoformat()}"


class RefitParams(_Params):
    """refit: how to fit the candidate and judge it; ``None`` takes the setting."""

    backbone: str | None = Field(None, description="open_clip model or local-dir:PATH.")
    pretrained: str | None = Field(None, description="Weights tag or file; 'none' = random.")
    databar_top: int = Field(0, ge=0, description="Databar rows cropped at the top.")
    databar_bottom: int = Field(0, ge=0, description="Databar rows cropped at the bottom.")
    fit: dict[str, Any] = Field(
        default_factory=dict, description="FitConfig overrides, e.g. {'max_steps': 200}."
    )
    gate_min_f1_gain: float | None = Field(None, ge=-1.0, le=1.0)
    gate_max_pixel_f1_drop: float | None = Field(None, ge=0.0, le=1.0)
    device: str | None = Field(None, description="cpu, cuda; default: CUDA when present.")

    @field_validator("fit")
    @classmethod
    def _fit_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        known = set(FitConfig.__dataclass_fields__)
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown FitConfig field(s) {unknown}; known: {sorted(known)}")
        return value

    def fit_config(self) -> FitConfig:
        """The FitConfig these overrides give."""
        return FitConfig.from_dict({**FitConfig().to_dict(), **self.fit})
