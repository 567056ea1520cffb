"""A thin, blocking wrapper around ``databricks-sdk`` for the sync worker.

Everything in :class:`RunsClient` blocks (the SDK is built on ``requests``):
the sync calls it through ``asyncio.to_thread``. The SDK does the HTTP,
authentication and retries (429/503 with ``Retry-After``, connection errors),
bounded by ``retry_timeout_seconds``; this module only

- builds the ``WorkspaceClient`` the SDK's way from a :class:`WorkspaceConfig`,
  with the proxy settings of the environment read once (:func:`_settle_environment`);
- reads runs as raw JSON through ``api_client.do`` (the SDK's dataclasses turn
  unknown enum strings into None);
- turns every failure into a :class:`DatabricksFault` whose message is safe to
  store and show: it never contains a token or a client secret.

The SDK itself is imported lazily, on the first :meth:`RunsClient.connect`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from queue_service.databricks.config import DatabricksConfig, WorkspaceConfig

RUNS_LIST = "/api/2.2/jobs/runs/list"
RUNS_GET = "/api/2.2/jobs/runs/get"
JOBS_GET = "/api/2.2/jobs/get"
MAX_PAGE_SIZE = 25

_MESSAGE_LIMIT = 300
# Text the SDK appends to error messages: a config dump and a request log.
# Neither holds secrets, but both are noise in /sync.
_SDK_NOISE = (" Config: ", ". Config: ", " Env: ", "Request log:", "This is likely a bug")


class DatabricksFault(Exception):
    """A sync step failed. ``str()`` is safe to store and display (no secrets)."""

    kind = "error"

    def __init__(self, workspace: str, message: str) -> None:
        super().__init__(message)
        self.workspace = workspace
        self.message = message


class AuthFault(DatabricksFault):
    """Databricks rejected the credentials (401/403): the workspace is unhealthy."""

    kind = "auth"


class ConfigFault(DatabricksFault):
    """The workspace cannot be configured (no host, no credentials, bad profile...)."""

    kind = "config"


class TransientFault(DatabricksFault):
    """Unreachable host, 5xx, timeout, throttling beyond the retry budget, bad JSON:
    retry later with exponential backoff."""

    kind = "transient"


@dataclass(frozen=True, slots=True)
class RunsPage:
    """One page of ``runs/list``: raw run dicts plus the names of their jobs."""

    runs: list[Any]
    next_page_token: str | None
    job_names: dict[int, str | None] = field(default_factory=dict)


def _clean(message: str, secrets: Iterable[str]) -> str:
    text = " ".join(message.split())
    for marker in _SDK_NOISE:
        cut = text.find(marker)
        if cut > 0:
            text = text[:cut]
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    text = text.rstrip(" .")
    if len(text) > _MESSAGE_LIMIT:
        text = text[: _MESSAGE_LIMIT - 3] + "..."
    return text or "no message"


def classify(
    exc: BaseException, *, workspace: str, host: str | None, secrets: Iterable[str] = ()
) -> DatabricksFault:
    """Turn any exception raised by an SDK call into a DatabricksFault.

    401/403 in any form (string or numeric ``error_code``, HTML body) -> AuthFault.
    Configuration ``ValueError`` from the SDK's Config -> ConfigFault (raised by
    :meth:`RunsClient.connect` only). Everything else -> TransientFault,
    including errors we did not foresee, so the sync backs off instead of dying.
    """
    if isinstance(exc, DatabricksFault):
        return exc
    secrets = tuple(secrets)
    where = f"workspace {workspace!r}" + (f" ({host})" if host else "")
    from databricks.sdk.errors import PermissionDenied, Unauthenticated

    if isinstance(exc, Unauthenticated | PermissionDenied):
        status = 401 if isinstance(exc, Unauthenticated) else 403
        code = f" {exc.error_code}" if exc.error_code not in (None, "", status) else ""
        return AuthFault(
            workspace,
            f"Databricks rejected the credentials of {where}: HTTP {status}{code}: "
            f"{_clean(str(exc), secrets)}. Check the token, profile or service principal "
            "configured for this workspace.",
        )
    if isinstance(exc, TimeoutError) and exc.__cause__ is not None:
        # The SDK's retry loop gave up; the cause says on what.
        cause = exc.__cause__
        return TransientFault(
            workspace, f"{where}: gave up after retries: {_describe(cause, secrets)}"
        )
    return TransientFault(workspace, f"{where}: {_describe(exc, secrets)}")


def _describe(exc: BaseException, secrets: tuple[str, ...]) -> str:
    import requests
    from databricks.sdk.errors.base import DatabricksError

    if isinstance(exc, DatabricksError):
        code = f" {exc.error_code}" if exc.error_code else ""
        return f"{type(exc).__name__}{code}: {_clean(str(exc), secrets)}"
    if isinstance(exc, requests.exceptions.JSONDecodeError):
        return "malformed JSON in the response"
    if isinstance(exc, requests.Timeout):
        return "request timed out"
    if isinstance(exc, requests.ConnectionError):
        return "cannot connect"
    return f"{type(exc).__name__}: {_clean(str(exc), secrets)}"


def _settle_environment(client: Any, host: str) -> None:
    """Read the proxy and CA bundle settings of the environment once, for ``host``.

    The SDK's ``requests`` session trusts the environment, so every request
    re-reads HTTP(S)_PROXY, ALL_PROXY and NO_PROXY (scanning ``os.environ``) and
    REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE. Every request of this session goes to
    ``host``, so the answer is the same each time: resolve it here, as requests
    would, and stop the per-request look-ups. (The session already carries the
    SDK's authentication, so ``~/.netrc`` was never consulted.) databricks-sdk
    has no setting for this, hence the reach into its client; should that ever
    move, the session keeps trusting the environment, which is only slower.
    """
    import requests.utils

    session = getattr(getattr(client.api_client, "_api_client", None), "_session", None)
    if not isinstance(session, requests.Session):
        return
    session.proxies = requests.utils.get_environ_proxies(host)
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle and session.verify is True:
        session.verify = bundle
    session.trust_env = False


class _NameCache:
    """Job names by Databricks job id, each kept for ``ttl`` seconds (jobs get renamed)."""

    def __init__(self, ttl: float = 600.0, max_entries: int = 10_000) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._entries: dict[int, tuple[str | None, float]] = {}
        self._lock = threading.Lock()

    def get(self, job_id: int) -> tuple[bool, str | None]:
        with self._lock:
            entry = self._entries.get(job_id)
        if entry is None or time.monotonic() - entry[1] > self._ttl:
            return False, None
        return True, entry[0]

    def put(self, job_id: int, name: str | None) -> None:
        with self._lock:
            if len(self._entries) >= self._max:
                self._entries.clear()
            self._entries[job_id] = (name, time.monotonic())


class RunsClient:
    """Blocking access to one workspace's runs. Build with :meth:`connect`; call from a thread."""

    def __init__(self, workspace: WorkspaceConfig, settings: DatabricksConfig) -> None:
        self.workspace = workspace
        self.name = workspace.display_name
        self._settings = settings
        self._w: Any = None
        self._secrets: tuple[str, ...] = ()
        self._names = _NameCache()
        self.host: str | None = workspace.host

    def connect(self) -> None:
        """Build the SDK client (this probes ``/.well-known/databricks-config``).

        Raises ConfigFault when the SDK cannot resolve a host and credentials,
        AuthFault/TransientFault for failures on the wire.
        """
        from databricks.sdk import WorkspaceClient
        from databricks.sdk.config import Config

        kwargs: dict[str, Any] = {
            "retry_timeout_seconds": self._settings.retry_timeout_seconds,
            "http_timeout_seconds": self._settings.http_timeout_seconds,
        }
        if self.workspace.host:
            kwargs["host"] = self.workspace.host
        if self.workspace.profile:
            kwargs["profile"] = self.workspace.profile
        token: str | None = None
        if self.workspace.token_env:
            token = os.environ.get(self.workspace.token_env) or None
            if token is None:
                raise ConfigFault(
                    self.name,
                    f"workspace {self.name!r}: environment variable "
                    f"{self.workspace.token_env} (token_env) is not set or empty",
                )
            kwargs["token"] = token
            # A PAT named here wins over client id/secret found in the environment.
            kwargs["auth_type"] = "pat"
        try:
            cfg = Config(**kwargs)
            client = WorkspaceClient(config=cfg)
        except ValueError as exc:
            secrets = (token or "",)
            raise ConfigFault(
                self.name,
                f"workspace {self.name!r}: cannot configure the Databricks client: "
                f"{_clean(str(exc), secrets)}",
            ) from None
        except Exception as exc:
            self._secrets = (token or "",)
            raise self._fault(exc) from None
        resolved = (token, getattr(cfg, "token", None), getattr(cfg, "client_secret", None))
        self._secrets = tuple(s for s in resolved if s)
        self.host = str(cfg.host) if cfg.host else None
        if not self.host:
            raise ConfigFault(self.name, f"workspace {self.name!r}: no host could be resolved")
        _settle_environment(client, self.host)
        self._w = client

    def _fault(self, exc: BaseException) -> DatabricksFault:
        return classify(exc, workspace=self.name, host=self.host, secrets=self._secrets)

    def _get(self, path: str, query: Mapping[str, Any]) -> Any:
        if self._w is None:
            raise RuntimeError("RunsClient.connect() was not called")
        try:
            return self._w.api_client.do("GET", path, query=dict(query))
        except Exception as exc:
            raise self._fault(exc) from None

    def list_runs_page(
        self,
        *,
        active_only: bool = False,
        start_time_from: int | None = None,
        start_time_to: int | None = None,
        page_token: str | None = None,
        limit: int = MAX_PAGE_SIZE,
        resolve_job_names: bool = True,
    ) -> RunsPage:
        """Fetch one page of ``runs/list`` (newest start first) as raw JSON.

        With ``resolve_job_names`` the names of the page's jobs are looked up
        (``jobs/get``, cached). Raises DatabricksFault; a response that is not
        a JSON object of the documented shape is a TransientFault.
        """
        query: dict[str, Any] = {"limit": limit}
        if active_only:
            query["active_only"] = True
        if start_time_from is not None:
            query["start_time_from"] = start_time_from
        if start_time_to is not None:
            query["start_time_to"] = start_time_to
        if page_token:
            query["page_token"] = page_token
        body = self._get(RUNS_LIST, query)
        runs = body.get("runs", []) if isinstance(body, dict) else None
        token = body.get("next_page_token") if isinstance(body, dict) else None
        if not isinstance(runs, list) or not (token is None or isinstance(token, str)):
            raise TransientFault(
                self.name, f"workspace {self.name!r}: runs/list answered with an unexpected shape"
            )
        names: dict[int, str | None] = {}
        if resolve_job_names:
            for run in runs:
                job_id = run.get("job_id") if isinstance(run, dict) else None
                if isinstance(job_id, int) and not isinstance(job_id, bool) and job_id not in names:
                    names[job_id] = self.job_name(job_id)
        return RunsPage(runs=runs, next_page_token=token or None, job_names=names)

    def get_run(self, run_id: int) -> dict[str, Any] | None:
        """The raw run, or None when Databricks says it does not exist (any more)."""
        from databricks.sdk.errors import ResourceDoesNotExist

        if self._w is None:
            raise RuntimeError("RunsClient.connect() was not called")
        try:
            body = self._w.api_client.do("GET", RUNS_GET, query={"run_id": run_id})
        except ResourceDoesNotExist:
            # RESOURCE_DOES_NOT_EXIST, or the SDK's mapping of Databricks' 400 "Run N
            # does not exist". A bare 404 (ENDPOINT_NOT_FOUND, a proxy's HTML page) is
            # not proof that the run is gone, so it stays a fault.
            return None
        except Exception as exc:
            raise self._fault(exc) from None
        if not isinstance(body, dict):
            raise TransientFault(
                self.name, f"workspace {self.name!r}: runs/get answered with an unexpected shape"
            )
        return body

    def job_name(self, job_id: int) -> str | None:
        """The job's current name (cached), or None if the job is gone or hidden from us."""
        from databricks.sdk.errors import PermissionDenied, ResourceDoesNotExist

        known, name = self._names.get(job_id)
        if known:
            return name
        if self._w is None:
            raise RuntimeError("RunsClient.connect() was not called")
        try:
            body = self._w.api_client.do("GET", JOBS_GET, query={"job_id": job_id})
        except (ResourceDoesNotExist, PermissionDenied):
            # A deleted job, or a job we may list runs of but not read: use run_name.
            body = None
        except Exception as exc:
            raise self._fault(exc) from None
        settings = body.get("settings") if isinstance(body, dict) else None
        raw = settings.get("name") if isinstance(settings, dict) else None
        name = raw if isinstance(raw, str) and raw else None
        self._names.put(job_id, name)
        return name
