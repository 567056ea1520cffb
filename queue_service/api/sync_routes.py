"""GET /sync: the Databricks sync's progress per workspace."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from queue_service.api import examples
from queue_service.api.operations import Context, Operation
from queue_service.api.responses import json_response
from queue_service.api.state import ServiceState
from queue_service.databricks.status import SyncStatus, read_status


async def sync_status(state: ServiceState) -> SyncStatus:
    """The sync's status for the service's configured workspaces (see `read_status`)."""
    return await read_status(state.store, state.config.databricks)


async def get_sync(request: Request, ctx: Context) -> Response:
    return json_response((await sync_status(ctx.state)).model_dump())


OPERATIONS = (
    Operation(
        method="GET",
        path="/sync",
        operation_id="sync_status",
        summary="Databricks sync status per workspace",
        description=(
            "For each workspace: its state (pending, ok, backing_off, unhealthy), last success, "
            "last error (never a secret), watermark and runs ingested."
        ),
        handler=get_sync,
        scope="jobs:ro",
        responses={200: (SyncStatus, "The sync's state.")},
        examples={200: examples.SYNC_STATUS},
        tags=("databricks",),
    ),
)
