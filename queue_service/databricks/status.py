"""Per-workspace sync status for ``GET /sync`` and ``/healthz``.

The status is derived from the ``SyncState`` rows in the store, so any process
(the API, the CLI) can show it, not only the one running the sync. The keys the
sync keeps in ``SyncState.extra`` are named here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from queue_service.store.types import SyncState

if TYPE_CHECKING:
    from queue_service.databricks.config import DatabricksConfig
    from queue_service.store import Store

#: SyncState.extra keys written by the sync worker.
EXTRA_FAILURES = "consecutive_failures"
EXTRA_FAULT_KIND = "fault_kind"
EXTRA_NEXT_ATTEMPT = "next_attempt_at"
EXTRA_PROGRESS = "window_progress"
EXTRA_LAST_SYNC = "last_sync"

WorkspaceState = Literal["pending", "ok", "backing_off", "unhealthy"]


class WorkspaceSyncStatus(BaseModel):
    """How the sync of one workspace is going."""

    workspace: str = Field(description="Configured workspace name.")
    host: str | None = Field(description="Workspace URL as resolved by the SDK.")
    state: WorkspaceState = Field(
        description="pending: never synced yet; ok: last attempt succeeded; "
        "backing_off: transient faults, retrying with exponential backoff; "
        "unhealthy: Databricks rejected the credentials or the workspace is misconfigured."
    )
    healthy: bool
    last_success_at: str | None
    last_error: str | None = Field(
        description="Last fault; kept after recovery, see last_error_at."
    )
    last_error_at: str | None
    fault_kind: str | None = Field(description="auth, config or transient; null when ok.")
    consecutive_failures: int
    next_attempt_at: str | None = Field(description="When a failing workspace is tried again.")
    watermark_ms: int | None = Field(
        description="Newest run start time (epoch ms) fully ingested; the next sync reads "
        "runs started since this minus the overlap."
    )
    runs_ingested: int = Field(description="Run records written since the first sync.")
    last_sync: dict[str, Any] | None = Field(
        default=None, description="Counts of the last successful sync."
    )


class SyncStatus(BaseModel):
    """The Databricks sync as a whole."""

    enabled: bool
    healthy: bool = Field(description="False when any workspace is unhealthy.")
    workspaces: list[WorkspaceSyncStatus]


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def workspace_status(state: SyncState) -> WorkspaceSyncStatus:
    """Summarise one workspace's stored sync state."""
    extra = state.extra or {}
    failures = _int(extra.get(EXTRA_FAILURES))
    status: WorkspaceState
    if not state.healthy:
        status = "unhealthy"
    elif failures:
        status = "backing_off"
    elif state.last_success_at is None:
        status = "pending"
    else:
        status = "ok"
    last_sync = extra.get(EXTRA_LAST_SYNC)
    return WorkspaceSyncStatus(
        workspace=state.workspace,
        host=state.host,
        state=status,
        healthy=state.healthy,
        last_success_at=state.last_success_at,
        last_error=state.last_error,
        last_error_at=state.last_error_at,
        fault_kind=extra.get(EXTRA_FAULT_KIND) if failures else None,
        consecutive_failures=failures,
        next_attempt_at=extra.get(EXTRA_NEXT_ATTEMPT) if failures else None,
        watermark_ms=state.watermark_ms,
        runs_ingested=state.runs_ingested,
        last_sync=last_sync if isinstance(last_sync, dict) else None,
    )


def build_status(
    states: Iterable[SyncState], *, enabled: bool, workspaces: Sequence[str] | None = None
) -> SyncStatus:
    """Status of the configured workspaces, in config order.

    ``workspaces`` are the configured names: a workspace never synced shows as
    pending, and stored state of a workspace no longer configured is left out
    (it must not make /healthz unhealthy forever). With ``workspaces`` None,
    every stored workspace is shown, by name.
    """
    by_name = {s.workspace: s for s in states}
    if workspaces is None:
        ordered = [by_name[name] for name in sorted(by_name)]
    else:
        ordered = [by_name.get(name, SyncState(workspace=name)) for name in workspaces]
    items = [workspace_status(s) for s in ordered]
    return SyncStatus(enabled=enabled, healthy=all(i.healthy for i in items), workspaces=items)


async def read_status(store: Store, config: DatabricksConfig | None) -> SyncStatus:
    """The sync's status from the store, so any process can answer, not only the syncing one.

    Workspaces are those configured now; with no [databricks] section (`config` None),
    whatever the store holds is shown (e.g. after a one-off `queue-service sync databricks
    --once`).
    """
    states = await store.get_sync_states()
    if config is None:
        return build_status(states, enabled=False)
    names = [workspace.display_name for workspace in config.workspaces]
    return build_status(states, enabled=config.enabled, workspaces=names or None)
