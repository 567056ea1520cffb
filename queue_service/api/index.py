"""GET /: a small index of the service, for a person or an agent arriving at the base URL."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from queue_service import __version__, models
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


def index_body(version: str) -> dict[str, Any]:
    """The index of a service at `version` (also the document's example of it)."""
    return models.ServiceIndex(
        name="queue-service",
        version=version,
        description="A local job queue: plugin jobs and Databricks runs in one store, "
        "over a REST API (see openapi) and MCP (see mcp), with scoped bearer tokens.",
        links=models.IndexLinks(openapi="/openapi.json", mcp="/mcp", health="/healthz"),
        docs=DOCS,
    ).model_dump()


async def index(request: Request, ctx: Context) -> Response:
    return json_response(index_body(ctx.state.version))


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
        examples={200: index_body(__version__)},
        tags=("service",),
    ),
)
