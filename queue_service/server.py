"""`queue-service serve`: the store, the API on uvicorn, and the background roles, in one loop."""

from __future__ import annotations

import asyncio
import logging
import sys

import uvicorn

from queue_service import logsetup
from queue_service.api import ServiceState, create_app
from queue_service.cli import CliError, open_store

log = logging.getLogger("queue_service.server")


async def ensure_admin_token(state: ServiceState, host: str, port: int) -> None:
    """On first start (no live token), create a `*` token and print it once on stdout."""
    if await state.store.count_live_tokens() > 0:
        return
    secret, _ = await state.tokens.create("admin", ["*"])
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
    print(
        "\nNo tokens yet: created an admin token (scope *). It is shown only this once;\n"
        "only its hash is stored. Keep it somewhere safe.\n\n"
        f"  export QS_TOKEN={secret}\n"
        f"  curl -H \"Authorization: Bearer $QS_TOKEN\" 'http://{shown_host}:{port}/jobs?status=ok'\n",
        flush=True,
    )


async def run_service(
    *, db: str, host: str, port: int, config_path: str | None, log_level: str
) -> int:
    store = await open_store(db)
    try:
        state = ServiceState.for_store(store)
        await ensure_admin_token(state, host, port)
        app = create_app(state)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            log_level=log_level,
            access_log=True,
            # Bound what a flood of connections can hold.
            limit_concurrency=1000,
            timeout_keep_alive=5,
            h11_max_incomplete_event_size=16 * 1024,
        )
        server = uvicorn.Server(config)
        log.info("queue-service serving %s on http://%s:%d", db, host, port)
        await server.serve()
        return 0 if server.started else 1
    finally:
        await store.close()


def serve(*, db: str, host: str, port: int, config_path: str | None, log_level: str) -> int:
    logsetup.configure(log_level)
    try:
        return asyncio.run(
            run_service(db=db, host=host, port=port, config_path=config_path, log_level=log_level)
        )
    except CliError as exc:
        print(f"queue-service: {exc}", file=sys.stderr)
        return 1
