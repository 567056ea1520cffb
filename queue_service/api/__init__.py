"""The HTTP API (Starlette on uvicorn)."""

from queue_service.api.app import create_app
from queue_service.api.state import ServiceState

__all__ = ["ServiceState", "create_app"]
