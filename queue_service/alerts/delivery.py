"""Sending alerts: one task per configured alert, in every `serve` and `worker` process.

Each task, every `poll_interval` seconds:
1. records long-running jobs (when the alert has `running_longer_than`);
2. routes new outbox events into its deliveries (store.route_alert_events);
3. claims its due deliveries with a lease and POSTs each one; a 2xx marks it sent,
   anything else schedules a retry with exponential backoff, until `max_attempts`.

Guarantees (docs/CONFIGURATION.md#alerts): at least once. A delivery is held by one process
at a time (the lease), so several processes never send it at once; it is marked sent only
after the receiver's 2xx, so a process that dies mid-send leaves it to be sent again once
its lease expires (a restart resends at most the delivery in flight), and a late or non-2xx
answer is retried even if the receiver kept the message: every copy carries the same
`Idempotency-Key`. One alert's slow or failing receiver never delays another alert: every
alert has its own task, and every request its own bounded timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import random
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

from queue_service import __version__
from queue_service.alerts.config import AlertConfig
from queue_service.alerts.message import build_body
from queue_service.store import AlertDelivery, DeliveryStatus, Store
from queue_service.timeutil import format_ts, utcnow
from queue_service.worker import backoff_delay, log_failure, new_owner_id

log = logging.getLogger("queue_service.alerts")

#: Deliveries claimed at once per alert.
CLAIM_BATCH = 10
#: Outbox events read per routing transaction.
ROUTE_BATCH = 500


class DeliveryError(Exception):
    """The request did not get an HTTP answer (refused, timed out, TLS, malformed reply).
    The message never holds the URL: it may carry a secret."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer that is not 2xx: it is not followed (the body and its
    headers would go to a host nobody configured)."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def post_webhook(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
    """POST `body` to `url` and return the HTTP status (blocking; run it in a thread).
    The response body is not read. Raises DeliveryError when no status came back."""
    # AlertConfig admits http:// and https:// URLs only.
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")  # noqa: S310
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)
    except urllib.error.URLError as exc:
        raise DeliveryError(f"no answer: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise DeliveryError(f"no answer: {exc.__class__.__name__}: {exc}") from None
    except ValueError as exc:
        # http.client.InvalidURL and the like quote the URL: name the kind only.
        raise DeliveryError(f"the request could not be made ({exc.__class__.__name__})") from None


Post = Callable[[str, bytes, Mapping[str, str], float], int]


@dataclass(frozen=True, slots=True)
class Outcome:
    status: DeliveryStatus
    response_status: int | None
    error: str | None
    retry_at: str | None


class AlertSender:
    """Routes, claims and sends the deliveries of one alert."""

    def __init__(
        self,
        store: Store,
        alert: AlertConfig,
        *,
        owner: str,
        poll_interval: float = 1.0,
        post: Post = post_webhook,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.alert = alert
        self.route = alert.route()
        self.owner = owner
        self.poll_interval = poll_interval
        self.post = post
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not security
        #: Long enough for a request that takes its whole timeout, and the store writes.
        self.lease_seconds = 2 * alert.timeout_seconds + 10
        running = alert.running_seconds
        self.scan_interval = None if running is None else max(poll_interval, min(10, running / 4))
        self._next_scan = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Send until `stop` is set; a delivery in flight is finished first."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            busy = False
            try:
                if self.scan_interval is not None and loop.time() >= self._next_scan:
                    self._next_scan = loop.time() + self.scan_interval
                    await self.store.record_long_running(
                        running_seconds=self.route.running_seconds or 0
                    )
                while (
                    await self.store.route_alert_events(self.route, limit=ROUTE_BATCH)
                    == ROUTE_BATCH
                ):
                    pass
                busy = await self.send_due(stop) == CLAIM_BATCH
            except Exception as exc:
                log_failure(f"alert {self.alert.name}: routing or claiming failed; will retry", exc)
            if not busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.poll_interval)

    async def send_due(self, stop: asyncio.Event | None = None) -> int:
        """Claim the due deliveries (up to CLAIM_BATCH) and send them one by one; returns
        how many were claimed. When `stop` is set meanwhile, the rest are given back
        unsent."""
        deliveries = await self.store.claim_alert_deliveries(
            self.alert.name, owner=self.owner, lease_seconds=self.lease_seconds, limit=CLAIM_BATCH
        )
        for index, delivery in enumerate(deliveries):
            if stop is not None and stop.is_set():
                await self._release(deliveries[index:])
                break
            outcome = await self.send(delivery)
            await self.store.finish_alert_delivery(
                delivery.delivery_id,
                owner=self.owner,
                attempt=delivery.attempts,
                status=outcome.status,
                response_status=outcome.response_status,
                error=outcome.error,
                retry_at=outcome.retry_at,
            )
        return len(deliveries)

    async def _release(self, deliveries: Sequence[AlertDelivery]) -> None:
        """Shutting down: give back claimed deliveries not yet sent, due now, so another
        process (or this one restarted) need not wait for their leases to expire."""
        now = format_ts(utcnow())
        for delivery in deliveries:
            await self.store.finish_alert_delivery(
                delivery.delivery_id,
                owner=self.owner,
                attempt=delivery.attempts,
                status=DeliveryStatus.PENDING,
                retry_at=now,
            )

    async def send(self, delivery: AlertDelivery) -> Outcome:
        """POST one delivery and decide what happens next. Never raises for the receiver's
        faults; they are the outcome."""
        alert = self.alert
        body = build_body(delivery, alert=alert.name, slack=alert.format == "slack")
        headers = {
            "User-Agent": f"queue-service/{__version__}",
            **alert.headers,
            "Content-Type": "application/json",
            "Idempotency-Key": delivery.delivery_id,
        }
        response_status: int | None = None
        try:
            response_status = await asyncio.wait_for(
                asyncio.to_thread(self.post, alert.url, body, headers, alert.timeout_seconds),
                # urllib's timeout is per socket operation; this bounds the whole request.
                timeout=alert.timeout_seconds * 2,
            )
        except TimeoutError:
            error = f"no answer within {alert.timeout_seconds * 2:g} s"
        except DeliveryError as exc:
            error = str(exc)
        else:
            if 200 <= response_status < 300:
                log.info(
                    "alert %s: delivery %s sent to %s (HTTP %d)",
                    alert.name, delivery.delivery_id, alert.target, response_status,
                )  # fmt: skip
                return Outcome(DeliveryStatus.SENT, response_status, None, None)
            error = f"HTTP {response_status} from {alert.target}"
        if delivery.attempts >= alert.max_attempts:
            log.error(
                "alert %s: delivery %s given up after %d attempts: %s",
                alert.name, delivery.delivery_id, delivery.attempts, error,
            )  # fmt: skip
            return Outcome(DeliveryStatus.FAILED, response_status, error, None)
        delay = min(
            alert.backoff_max_seconds,
            backoff_delay(alert.backoff_initial_seconds, delivery.attempts, self.rng),
        )
        retry_at = format_ts(utcnow() + timedelta(seconds=delay))
        log.warning(
            "alert %s: delivery %s attempt %d/%d failed: %s; next attempt at %s",
            alert.name, delivery.delivery_id, delivery.attempts, alert.max_attempts, error,
            retry_at,
        )  # fmt: skip
        return Outcome(DeliveryStatus.PENDING, response_status, error, retry_at)


def start_alerts(
    store: Store, alerts: Sequence[AlertConfig], stop: asyncio.Event, *, poll_interval: float = 1.0
) -> list[asyncio.Task[None]]:
    """One sending task per alert (none without alerts), sharing one lease owner id."""
    owner = new_owner_id()
    return [
        asyncio.create_task(
            AlertSender(store, alert, owner=owner, poll_interval=poll_interval).run(stop),
            name=f"alert {alert.name}",
        )
        for alert in alerts
    ]
