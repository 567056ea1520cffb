"""Failure alerts: webhooks sent when jobs fail or run too long (`[[alerts]]`).

The store records what happened (an outbox written in the status change's own
transaction); `AlertSender` (delivery.py) turns it into messages and sends them,
at least once, from every `serve` and `worker` process, claiming each with a lease.
"""

from __future__ import annotations

from queue_service.alerts.config import AlertConfig

__all__ = ["AlertConfig"]
