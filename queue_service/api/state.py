"""What the running service shares with every request."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from queue_service import __version__
from queue_service.auth import TokenService
from queue_service.store import SQLiteStore


@dataclass(slots=True)
class ServiceState:
    store: SQLiteStore
    tokens: TokenService
    version: str = __version__
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def for_store(cls, store: SQLiteStore) -> ServiceState:
        return cls(store=store, tokens=TokenService(store))

    def uptime_seconds(self) -> float:
        return round(time.monotonic() - self.started, 3)
