"""What the running service shares with every request."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from queue_service import __version__
from queue_service.auth import TokenService
from queue_service.config import ServiceConfig
from queue_service.plugins import Registry
from queue_service.store import Store

if TYPE_CHECKING:
    from queue_service.worker import Worker


@dataclass(slots=True)
class ServiceState:
    store: Store
    tokens: TokenService
    config: ServiceConfig = field(default_factory=ServiceConfig)
    registry: Registry = field(default_factory=lambda: Registry(()))
    #: The in-process worker, when this process runs one (to cancel its jobs at once).
    worker: Worker | None = None
    version: str = __version__
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def for_store(
        cls,
        store: Store,
        *,
        config: ServiceConfig | None = None,
        registry: Registry | None = None,
    ) -> ServiceState:
        return cls(
            store=store,
            tokens=TokenService(store),
            config=config or ServiceConfig(),
            registry=registry or Registry(()),
        )

    def uptime_seconds(self) -> float:
        return round(time.monotonic() - self.started, 3)
