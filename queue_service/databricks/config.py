"""The ``[databricks]`` configuration section.

The main configuration model embeds :class:`DatabricksConfig` as an optional
field; when the section is absent nothing about Databricks runs or is imported.

Example (TOML)::

    [databricks]
    enabled = true
    poll_interval_seconds = 30
    lookback_hours = 168
    retry_timeout_seconds = 30

    [[databricks.workspaces]]
    name = "prod"
    host = "https://adb-123.4.azuredatabricks.net"
    token_env = "PROD_DATABRICKS_TOKEN"

    [[databricks.workspaces]]
    name = "dev"
    profile = "dev"          # a profile in ~/.databrickscfg

Every workspace field may be left out; the SDK then resolves what is missing
from ``DATABRICKS_HOST``/``DATABRICKS_TOKEN``/``DATABRICKS_CLIENT_ID``+``SECRET``,
``DATABRICKS_CONFIG_PROFILE`` and ``~/.databrickscfg``. With no ``workspaces``
list at all there is one workspace, named ``default``, resolved entirely that way.
"""

from __future__ import annotations

import re
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class WorkspaceConfig(BaseModel):
    """One Databricks workspace to mirror. Any field may be omitted (the SDK resolves it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Label shown in /sync and stored in each job's result.workspace. "
        "Defaults to the profile, else the host's name, else 'default'.",
    )
    host: str | None = Field(default=None, min_length=1, description="Workspace URL.")
    profile: str | None = Field(
        default=None, min_length=1, description="Profile name in ~/.databrickscfg."
    )
    token_env: str | None = Field(
        default=None,
        description="Name of an environment variable holding a personal access token "
        "(the token itself never goes in the config file).",
    )

    @field_validator("token_env")
    @classmethod
    def _valid_env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.match(value):
            raise ValueError(
                f"token_env must be an environment variable name such as DATABRICKS_TOKEN, "
                f"got {value!r}"
            )
        return value

    @property
    def display_name(self) -> str:
        """The name this workspace is known by in sync state and job results."""
        if self.name:
            return self.name
        if self.profile:
            return self.profile
        if self.host:
            text = self.host if "://" in self.host else "https://" + self.host
            return text.split("://", 1)[1].split("/", 1)[0].lower() or "default"
        return "default"


class DatabricksConfig(BaseModel):
    """Settings of the Databricks sync worker."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    workspaces: list[WorkspaceConfig] = Field(
        default_factory=lambda: [WorkspaceConfig()],
        description="Workspaces to mirror; default: one workspace resolved by the SDK.",
    )
    poll_interval_seconds: float = Field(default=30, gt=0, le=86_400)
    lookback_hours: float = Field(
        default=168, gt=0, le=24 * 60, description="How far back the first sync looks."
    )
    retry_timeout_seconds: int = Field(
        default=30,
        ge=1,
        le=3_600,
        description="Budget of the SDK's own retries (429, 503, unreachable) per call. "
        "The SDK treats 0 as its default of 300 s, hence the minimum of 1.",
    )
    http_timeout_seconds: float = Field(
        default=30, gt=0, le=600, description="Timeout of one HTTP request (the SDK default is 60)."
    )
    overlap_seconds: int = Field(
        default=600,
        ge=0,
        le=86_400,
        description="Each sync re-reads runs started up to this long before the watermark.",
    )
    backoff_initial_seconds: float = Field(
        default=5, gt=0, description="First delay after a transient fault; doubles each time."
    )
    backoff_max_seconds: float = Field(
        default=900, gt=0, description="Longest delay between attempts; also the auth-retry delay."
    )
    reconcile_limit: int = Field(
        default=200,
        ge=0,
        description="At most this many locally active runs missing from a sync are looked "
        "up with runs/get per sync (the rest wait for the next sync).",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        names = [ws.display_name for ws in self.workspaces]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(
                f"databricks.workspaces names must be unique; give each a distinct name "
                f"(duplicated: {', '.join(duplicates)})"
            )
        if self.backoff_initial_seconds > self.backoff_max_seconds:
            raise ValueError("backoff_initial_seconds must not exceed backoff_max_seconds")
        return self
