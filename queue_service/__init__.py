"""queue-service: a local job queue with a SQLite store, plugin workers and a REST API."""

__version__ = "0.1.0"

__all__ = ["__version__"]
