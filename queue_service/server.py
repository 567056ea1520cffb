"""`queue-service serve`: the store, the API on uvicorn, the worker, the scheduler and the
Databricks sync, in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import shlex
import signal
import socket
from collections.abc import Coroutine, Sequence
from typing import Any

import h11
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from queue_service import logsetup
from queue_service.alerts.delivery import start_alerts
from queue_service.api import ServiceState, create_app
from queue_service.api.mcp import serve_stdio
from queue_service.auth import AuthError
from queue_service.bootstrap import (
    StartupError,
    display_db,
    load_registry,
    open_store,
    read_config,
)
from queue_service.errors import error_body
from queue_service.http_limits import KEEP_ALIVE_TIMEOUT_S, RequestDeadlines
from queue_service.scheduler import Scheduler, check_schedules
from queue_service.worker import Worker

log = logging.getLogger("queue_service.server")

#: The environment variable a command reads its bearer token from (as the README's curl does).
TOKEN_ENV = "QS_TOKEN"  # noqa: S105 - the name of a variable, not a secret


#: The largest request head (request line and headers) read; beyond it the answer is 400.
MAX_REQUEST_HEAD_BYTES = 16 * 1024


def _malformed_request_body(msg: str) -> bytes:
    return error_body("malformed_request", f"malformed HTTP request: {msg}")


class JsonErrorH11Protocol(H11Protocol):
    """uvicorn answers a request it cannot parse with a plain-text 400 before the app
    sees it; this sends the canonical JSON error body instead."""

    def send_400_response(self, msg: str) -> None:
        payload = _malformed_request_body(msg)
        response = h11.Response(
            status_code=400,
            headers=[
                (b"content-type", b"application/json"),
                (b"connection", b"close"),
                (b"content-length", str(len(payload)).encode()),
            ],
            reason=b"Bad Request",
        )
        for event in (response, h11.Data(data=payload), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()


class JsonErrorHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn on httptools (llhttp, in C), with what JsonErrorH11Protocol and h11 give:
    the canonical JSON body for a request it cannot parse, and a bound on the request head
    (llhttp has none: h11 enforces h11_max_incomplete_event_size, this counts the bytes
    received while a head is incomplete, so it holds up to one read beyond the limit)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_head = True
        self._head_bytes = 0

    def data_received(self, data: bytes) -> None:
        if self._reading_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if (
            self._reading_head
            and self._head_bytes > MAX_REQUEST_HEAD_BYTES
            and not self.transport.is_closing()
        ):
            # The same answer as h11's for a head over h11_max_incomplete_event_size.
            self.logger.warning("request head over %d bytes", MAX_REQUEST_HEAD_BYTES)
            self.send_400_response("Invalid HTTP request received.")

    def on_headers_complete(self) -> None:
        self._reading_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head = True
        self._head_bytes = 0

    def send_400_response(self, msg: str) -> None:
        payload = _malformed_request_body(msg)
        self.transport.write(
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(payload), payload)
        )
        self.transport.close()


class ServeProtocol(RequestDeadlines, JsonErrorHttpToolsProtocol):
    """The HTTP protocol of `serve`: llhttp's parser, JSON errors for bad HTTP, a bounded
    request head, bounded slow clients."""


def _http_protocol() -> type[asyncio.Protocol]:
    """The HTTP/1.1 implementation uvicorn serves with: httptools (llhttp, in C) costs a
    fraction of h11 (pure Python) per request. JsonErrorH11Protocol is the h11 alternative,
    with the same canonical errors and head limit (tests/test_http_stack.py runs both);
    RequestDeadlines goes on either."""
    return ServeProtocol


def http_config(
    app: ASGIApp,
    *,
    host: str,
    port: int,
    log_level: str,
    access_log: bool,
    forwarded_allow_ips: Sequence[str] = (),
) -> uvicorn.Config:
    """uvicorn's settings for the API; bench/_bare_app.py serves its baseline with the same."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        log_level=log_level,
        access_log=access_log,
        # X-Forwarded-* only from the configured proxies (uvicorn trusts localhost).
        proxy_headers=bool(forwarded_allow_ips),
        forwarded_allow_ips=list(forwarded_allow_ips) or None,
        timeout_keep_alive=KEEP_ALIVE_TIMEOUT_S,
        h11_max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES,
        http=_http_protocol(),
    )


def run_event_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run `main` on the event loop `serve`, `worker` and the bench's baseline share: uvloop
    where it is installed (a dependency except on Windows), else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def ensure_admin_token(state: ServiceState, db: str, host: str, port: int) -> None:
    """On first start (a database that never had a token), create a `*` token and print it
    once on stdout. Later starts never do: when every token is revoked or expired, the log
    says how to create one."""
    created = await state.tokens.create_first_admin()
    if created is None:
        if not await state.store.count_live_tokens():
            log.warning(
                "no live token: every request that needs one answers 401. Create one with "
                "`queue-service token create --name NAME --scope '*' --db %s`",
                shlex.quote(db),
            )
        return
    secret, token = created
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
    print(
        f"\nFirst start: created the admin token {token.name!r} (scope *). "
        "It is shown only this once;\n"
        "only its hash is stored. Keep it somewhere safe.\n\n"
        f"  export QS_TOKEN={secret}\n"
        f"  curl -H \"Authorization: Bearer $QS_TOKEN\" 'http://{shown_host}:{port}/jobs?status=ok'\n",
        flush=True,
    )


def _start_sync(state: ServiceState, stop: asyncio.Event) -> Coroutine[Any, Any, None] | None:
    """The Databricks sync loop, when configured. The SDK is imported only then."""
    databricks = state.config.databricks
    if databricks is None or not databricks.enabled:
        return None
    from queue_service.databricks.sync import DatabricksSync

    return DatabricksSync(databricks, state.store).run_forever(stop)


def start_roles(state: ServiceState, stop: asyncio.Event) -> list[asyncio.Task[None]]:
    """Start the worker, the scheduler and (when configured) the Databricks sync and the
    alert senders.

    Each role runs until `stop` is set; the worker then drains gracefully.
    """
    worker = Worker(state.store, state.registry, state.config)
    state.worker = worker
    scheduler = Scheduler.from_config(
        state.store, state.config, plugins=[p.name for p in state.registry.valid()]
    )
    roles: list[Coroutine[Any, Any, None]] = [worker.run(stop), scheduler.run_forever(stop)]
    sync = _start_sync(state, stop)
    if sync is not None:
        roles.append(sync)
    tasks = [asyncio.create_task(role) for role in roles]
    return tasks + start_alerts(state.store, state.config.alerts, stop)


async def open_service(
    db: str, config_path: str | None, *, writes: bool = False, must_exist: bool = False
) -> ServiceState:
    """The config, the store and the plugins. With `writes`, a read-only database is
    refused (StartupError) before anything else happens; with `must_exist`, a missing one."""
    config = read_config(config_path)
    store = await open_store(
        db,
        must_exist=must_exist,
        synchronous=config.service.synchronous,
        pool_size=config.service.pool_size,
    )
    if writes and store.read_only is not None:
        await store.close()
        raise StartupError(f"{display_db(db)}: {store.read_only}; a worker needs to write")
    registry = load_registry(config)
    problems = check_schedules(config, registry)
    if problems:
        await store.close()
        raise StartupError("invalid schedules in the config:\n  " + "\n  ".join(problems))
    return ServiceState.for_store(store, config=config, registry=registry)


def listen(host: str, port: int) -> list[socket.socket]:
    """Bound sockets for every address of `host` (as uvicorn would bind them), made before
    anything else starts: a port in use is then one clear StartupError, not a log that
    says "serving" followed by the bind error."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sockets: list[socket.socket] = []
    for family, kind, proto, _, address in dict.fromkeys(addresses):
        sock = socket.socket(family, kind, proto)
        sockets.append(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            for opened in sockets:
                opened.close()
            hint = (
                ": another process is listening there; stop it or choose another port with --port"
                if exc.errno == errno.EADDRINUSE
                else ""
            )
            raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}{hint}") from None
    return sockets


async def run_service(
    *, db: str, host: str, port: int, config_path: str | None, log_level: str
) -> int:
    sockets = listen(host, port)
    try:
        state = await open_service(db, config_path)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    try:
        if state.store.read_only is None:
            await ensure_admin_token(state, db, host, port)
            tasks = start_roles(state, stop)
        else:
            # Every role writes (claims, schedule slots, synced runs), so none can run;
            # reads are served, writes answer 503 with the same reason.
            log.warning(
                "%s: %s; serving reads only (writes answer 503; no worker, scheduler "
                "or sync runs; %d live token(s))",
                db,
                state.store.read_only,
                await state.store.count_live_tokens(),
            )
        server = uvicorn.Server(
            http_config(
                create_app(state),
                host=host,
                port=port,
                log_level=log_level,
                access_log=True,
                forwarded_allow_ips=state.config.service.forwarded_allow_ips,
            )
        )
        log.info(
            "queue-service %s serving %s on http://%s:%d; %d valid plugin(s), %d worker slot(s)",
            state.version,
            db,
            host,
            port,
            len(state.registry.valid()),
            state.config.service.workers if tasks else 0,
        )
        with _quiet_signals():
            await server.serve(sockets)
        return 0 if server.started else 1
    finally:
        # HTTP is down; now drain the roles (the worker gives running jobs a grace period).
        stop.set()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await state.store.close()


async def run_worker(*, db: str, config_path: str | None) -> int:
    """The roles without HTTP, until SIGTERM or SIGINT."""
    state = await open_service(db, config_path, writes=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "queue-service worker on %s with %d valid plugin(s), %d worker slot(s)",
        db,
        len(state.registry.valid()),
        state.config.service.workers,
    )
    try:
        tasks = start_roles(state, stop)
        await asyncio.gather(*tasks, return_exceptions=True)
        return 0
    finally:
        await state.store.close()


async def run_mcp_stdio(*, db: str, config_path: str | None, token: str) -> int:
    """MCP over stdin/stdout for a local agent host, as the holder of `token`, until stdin
    closes. It runs no worker: the jobs it enqueues are run by `serve` or `worker`."""
    state = await open_service(db, config_path, must_exist=True)
    try:
        try:
            principal = await state.tokens.verify(f"Bearer {token}")
        except AuthError as exc:
            raise StartupError(f"the token (--token or ${TOKEN_ENV}) is refused: {exc}") from None
        log.info(
            "queue-service %s serving MCP on stdio for token %r (scopes %s) on %s",
            state.version,
            principal.name,
            ",".join(principal.scopes),
            db,
        )
        await serve_stdio(create_app(state), token)
        return 0
    finally:
        await state.tokens.flush()
        await state.store.close()


@contextlib.contextmanager
def _quiet_signals() -> Any:
    """uvicorn re-raises the signal that stopped it once it is done; with the default
    handlers that would kill the process before the worker drains. Handlers that only
    record the signal make that re-raise harmless."""
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _main(run: Coroutine[Any, Any, int], log_level: str) -> int:
    # A StartupError or StoreError (disk full while creating the first token, say) goes up
    # to the caller's one start-up error path: bootstrap.run_reporting_failures.
    logsetup.configure(log_level)
    return run_event_loop(run)


def serve(*, db: str, host: str, port: int, config_path: str | None, log_level: str) -> int:
    return _main(
        run_service(db=db, host=host, port=port, config_path=config_path, log_level=log_level),
        log_level,
    )


def work(*, db: str, config_path: str | None, log_level: str) -> int:
    return _main(run_worker(db=db, config_path=config_path), log_level)


def mcp_stdio(*, db: str, config_path: str | None, token: str, log_level: str) -> int:
    return _main(run_mcp_stdio(db=db, config_path=config_path, token=token), log_level)
