"""Databricks job-run sync: mirrors Databricks Jobs API runs into the job store.

This package is imported by the service's configuration code, so importing it
must stay cheap: nothing here imports ``databricks-sdk`` (about two seconds of
import time). The SDK is imported lazily, in a worker thread, the first time a
workspace client is built (see :mod:`queue_service.databricks.client`).

Modules:

- ``config``: the ``[databricks]`` configuration section (pydantic).
- ``mapping``: pure mapping of a raw run (API JSON) to a store ``ExternalJob``.
- ``client``: the SDK wrapper and fault classification (blocking; call it in a thread).
- ``sync``: the async sync worker, ``DatabricksSync``.
- ``status``: the per-workspace sync status shown by ``GET /sync`` and ``/healthz``.
"""
