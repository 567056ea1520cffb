"""The `[[alerts]]` configuration: one webhook per entry, and what it is sent for.

Example (TOML)::

    [[alerts]]
    name = "ops-slack"
    url = "${SLACK_WEBHOOK_URL}"
    format = "slack"
    plugins = ["withings"]
    running_longer_than = "30m"
    rate_limit = "5m"

`url` and the values of `headers` may hold `${NAME}` references, filled in from the
environment (queue_service.config): a webhook URL or a bearer token never needs to be in
the file, and neither is ever logged or shown by the API.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from queue_service.statuses import SOURCES, Status
from queue_service.store.types import AlertRoute
from queue_service.timeutil import parse_duration

#: The statuses an alert may fire on: a job that ended badly.
ALERT_STATUSES: tuple[str, ...] = tuple(
    s.value for s in (Status.FAILED, Status.TIMED_OUT, Status.DEAD)
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")
#: Headers the sender sets itself.
RESERVED_HEADERS = frozenset({"content-type", "content-length", "host", "idempotency-key"})

AlertStatus = Literal["failed", "timed_out", "dead"]
AlertSource = Literal["local", "databricks"]
assert set(AlertStatus.__args__) == set(ALERT_STATUSES)  # type: ignore[attr-defined]
assert set(AlertSource.__args__) == set(SOURCES)  # type: ignore[attr-defined]


def _every_alert_status() -> list[AlertStatus]:
    return ["failed", "timed_out", "dead"]


def _duration(value: str | None) -> str | None:
    if value is not None:
        parse_duration(value)
    return value


Duration = Annotated[str | None, AfterValidator(_duration)]


class AlertConfig(BaseModel):
    """One `[[alerts]]` entry."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str
    #: repr=False: a webhook URL is often a secret (Slack's are).
    url: str = Field(repr=False)
    format: Literal["json", "slack"] = "json"
    statuses: list[AlertStatus] = Field(default_factory=_every_alert_status)
    running_longer_than: Duration = None
    plugins: list[str] = Field(default_factory=list)
    commands: list[str] = Field(default_factory=list)
    sources: list[AlertSource] = Field(default_factory=list)
    headers: dict[str, str] = Field(default_factory=dict, repr=False)
    rate_limit: Duration = None
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    max_attempts: int = Field(default=12, ge=1, le=100)
    backoff_initial_seconds: float = Field(default=10.0, gt=0)
    backoff_max_seconds: float = Field(default=3600.0, gt=0)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"{value!r} is not an alert name; use 1-64 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        # The message never quotes the value: it may hold a secret filled in from ${NAME}.
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
        except ValueError:
            raise ValueError("must be an http:// or https:// URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if any(c in value for c in "\r\n\t "):
            raise ValueError("must not contain spaces or line breaks")
        return value

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not an HTTP header name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"{name!r} is set by queue-service itself")
            if any(c in text for c in "\r\n\0"):
                raise ValueError(f"the value of {name!r} must not contain line breaks")
        return value

    @model_validator(mode="after")
    def _check_whole(self) -> Self:
        if not self.statuses and self.running_longer_than is None:
            raise ValueError("would never fire: give statuses, running_longer_than, or both")
        if self.backoff_initial_seconds > self.backoff_max_seconds:
            raise ValueError("backoff_initial_seconds must not exceed backoff_max_seconds")
        return self

    @property
    def target(self) -> str:
        """Where it sends, without path, query or credentials: safe to show and log."""
        parts = urlsplit(self.url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}"

    @property
    def running_seconds(self) -> int | None:
        if self.running_longer_than is None:
            return None
        return int(parse_duration(self.running_longer_than).total_seconds())

    @property
    def rate_limit_seconds(self) -> float | None:
        if self.rate_limit is None:
            return None
        return parse_duration(self.rate_limit).total_seconds()

    def route(self) -> AlertRoute:
        """What the store needs to turn outbox events into this alert's deliveries."""
        return AlertRoute(
            alert=self.name,
            statuses=tuple(self.statuses),
            running_seconds=self.running_seconds,
            plugins=tuple(self.plugins),
            commands=tuple(self.commands),
            sources=tuple(self.sources),
            rate_limit_seconds=self.rate_limit_seconds,
        )


def unique_names(alerts: list[AlertConfig]) -> list[AlertConfig]:
    seen: set[str] = set()
    for alert in alerts:
        if alert.name in seen:
            raise ValueError(f"duplicate alert name {alert.name!r}; names must be unique")
        seen.add(alert.name)
    return alerts


Alerts = Annotated[list[AlertConfig], AfterValidator(unique_names)]
