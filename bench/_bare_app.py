"""The bare-Starlette baseline: one route answering a fixed JSON body of 50 jobs.

The body is read once from the file named by BENCH_BARE_BODY (bench_list writes the real
first page of GET /jobs there, so both servers send the same bytes). It is served on the
same stack as `queue-service serve` (queue_service.server.http_config and run_event_loop:
the same event loop, HTTP parser and uvicorn settings), so the ratio compares the apps alone:

    BENCH_BARE_BODY=body.json python bench/_bare_app.py --port P
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import uvicorn
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


def main(argv: list[str] | None = None) -> int:
    from queue_service.server import http_config, run_event_loop

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    server = uvicorn.Server(
        http_config(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    )

    async def serve() -> int:
        await server.serve()
        return 0 if server.started else 1

    return run_event_loop(serve())


if __name__ == "__main__":
    sys.exit(main())
