"""GET /alerts: each configured alert, its recent deliveries and failures."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from queue_service.alerts.status import AlertsStatus, alerts_status
from queue_service.api import examples
from queue_service.api.operations import Context, Operation
from queue_service.api.responses import json_response


async def get_alerts(request: Request, ctx: Context) -> Response:
    return json_response(await alerts_status(ctx.state.store, ctx.state.config.alerts))


OPERATIONS = (
    Operation(
        method="GET",
        path="/alerts",
        operation_id="list_alerts",
        summary="Failure alerts and their recent deliveries",
        description=(
            "For each `[[alerts]]` entry of the configuration: its settings (the webhook's "
            "scheme, host and port only; header names, never values), delivery counts, the "
            "latest deliveries and the latest failed attempts. Read from the store, so any "
            "process answers for every sender."
        ),
        handler=get_alerts,
        scope="jobs:ro",
        responses={200: (AlertsStatus, "The configured alerts.")},
        examples={200: examples.ALERTS},
        tags=("alerts",),
    ),
)
