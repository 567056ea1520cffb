"""The bare-Starlette baseline: one route answering a fixed JSON body of 50 jobs.

The body is read once from the file named by BENCH_BARE_BODY (bench_list writes the real
first page of GET /jobs there, so both servers send the same bytes). Served by uvicorn:

    BENCH_BARE_BODY=body.json python -m uvicorn _bare_app:app --app-dir bench --port P
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def make_app(body: bytes) -> Starlette:
    async def jobs(request: Request) -> Response:
        return Response(body, media_type="application/json")

    return Starlette(routes=[Route("/jobs", jobs)])


_BODY_FILE = os.environ.get("BENCH_BARE_BODY")
app = make_app(Path(_BODY_FILE).read_bytes() if _BODY_FILE else b"{}")
