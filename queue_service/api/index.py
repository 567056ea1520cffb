"""GET /: a small index of the service, for a person or an agent arriving at the base URL."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from queue_service import models
from queue_service.api.operations import Context, Operation
from queue_service.api.responses import json_response

#: The docs an index reader may want, by topic (paths in the source tree and the sdist).
DOCS = {
    "readme": "README.md",
    "api_reference": "docs/API_REFERENCE.md",
    "agents": "docs/AGENTS.md",
    "configuration": "docs/CONFIGURATION.md",
    "plugins": "docs/PLUGINS.md",
}


async def index(request: Request, ctx: Context) -> Response:
    body = models.ServiceIndex(
        name="queue-service",
        version=ctx.state.version,
        description="A local job queue: plugin jobs and Databricks runs in one store, "
        "over a REST API (see openapi) and MCP (see mcp), with scoped bearer tokens.",
        links=models.IndexLinks(openapi="/openapi.json", mcp="/mcp", health="/healthz"),
        docs=DOCS,
    )
    return json_response(body.model_dump())


OPERATIONS = (
    Operation(
        method="GET",
        path="/",
        operation_id="get_index",
        summary="Where to start: links to the OpenAPI document, MCP and health",
        description="The service's name and version, and links to `/openapi.json`, `/mcp` "
        "and `/healthz`. Holds no job data.",
        handler=index,
        scope=None,
        responses={200: (models.ServiceIndex, "The index.")},
        tags=("service",),
    ),
)
