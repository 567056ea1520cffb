"""How long a client may take to send a request, and how many connections are open at once.

All of it is in `RequestDeadlines`, a mixin for uvicorn's HTTP protocol classes. It uses only
what uvicorn's h11 and httptools protocols share (`connection_made`, `data_received`,
`connection_lost`, `transport`, `flow`, `cycle` with `more_body` and `response_complete`, and
the server-wide `connections` set): `serve` puts it on httptools (server.ServeProtocol), and
it fits h11's class as well.

Idle keep-alive connections are uvicorn's own `timeout_keep_alive` (KEEP_ALIVE_TIMEOUT_S).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from queue_service.errors import error_body

if TYPE_CHECKING:
    # What mypy checks the mixin against: the class `serve` uses.
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Protocol
else:
    _Protocol = object

log = logging.getLogger("queue_service.server")

#: A request head (request line and headers) must arrive within this many seconds of the
#: connection opening, or of its first byte on a kept-alive connection.
HEADER_TIMEOUT_S = 10.0
#: A request body must arrive within this many seconds of the head (time the server itself
#: spends not reading, while large bodies wait for their turn, does not count).
BODY_TIMEOUT_S = 30.0
#: A connection idle between requests is closed after this many seconds.
KEEP_ALIVE_TIMEOUT_S = 5
#: Connections open at once per process; one more is answered 503 and closed.
MAX_CONNECTIONS = 1000
#: The "refusing connections" warning is logged at most this often.
_REFUSAL_LOG_INTERVAL_S = 60.0


def _busy_response() -> bytes:
    body = error_body("unavailable", "the server has too many open connections; retry shortly")
    return (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        b"retry-after: 1\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    )


class RequestDeadlines(_Protocol):
    """Close a connection whose client is too slow to send its request head or body, and
    refuse connections beyond MAX_CONNECTIONS. Put it before the uvicorn protocol class."""

    header_timeout_s = HEADER_TIMEOUT_S
    body_timeout_s = BODY_TIMEOUT_S
    max_connections = MAX_CONNECTIONS
    _last_refusal_log = 0.0

    _deadline: asyncio.TimerHandle | None = None
    #: What the armed deadline waits for: "head", "body", or None when none is armed.
    _waiting_for: str | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refuse()
            return
        self._follow()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _follow(self) -> None:
        """Arm the deadline for what the connection now waits for from the client."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            waiting_for: str | None = "head"
        elif cycle.more_body:
            waiting_for = "body"
        else:
            waiting_for = None  # the request is in; the app is answering
        if waiting_for == self._waiting_for:
            return
        self._disarm()
        self._waiting_for = waiting_for
        if waiting_for is not None:
            timeout = self.header_timeout_s if waiting_for == "head" else self.body_timeout_s
            self._deadline = self.loop.call_later(timeout, self._expired)

    def _expired(self) -> None:
        self._deadline = None
        if self._waiting_for == "body" and self.flow.read_paused:
            # The server stopped reading (a large body waiting for its turn): not the
            # client's fault, so its time starts again once reading resumes.
            self._deadline = self.loop.call_later(self.body_timeout_s, self._expired)
            return
        timeout = self.header_timeout_s if self._waiting_for == "head" else self.body_timeout_s
        log.info(
            "closed a connection from %s: the request %s did not arrive within %.0f s",
            self.client[0] if self.client else "?",
            self._waiting_for,
            timeout,
        )
        self.transport.close()

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._waiting_for = None

    def _refuse(self) -> None:
        now = time.monotonic()
        if now - RequestDeadlines._last_refusal_log > _REFUSAL_LOG_INTERVAL_S:
            RequestDeadlines._last_refusal_log = now
            log.warning(
                "refusing connections: %d are open (the limit is %d)",
                len(self.connections),
                self.max_connections,
            )
        self.transport.write(_busy_response())
        self.transport.close()
