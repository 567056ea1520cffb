"""`PostgreSQLStore`: the `Store` protocol on a PostgreSQL database, for several hosts
sharing one queue.

Each area is a mixin of its own module (jobs, listing, work, schedules, sync, alerts,
portable, tokens), all on the one `Database` (connection.py); the contracts are documented
on the protocol (queue_service/store/protocol.py).
"""

from __future__ import annotations

from queue_service.store.postgresql.alerts import AlertsMixin
from queue_service.store.postgresql.connection import Database
from queue_service.store.postgresql.jobs import JobsMixin
from queue_service.store.postgresql.listing import ListingMixin
from queue_service.store.postgresql.portable import PortableMixin
from queue_service.store.postgresql.schedules import SchedulesMixin
from queue_service.store.postgresql.sync import SyncMixin
from queue_service.store.postgresql.tokens import TokensMixin
from queue_service.store.postgresql.work import WorkMixin


class PostgreSQLStore(
    JobsMixin,
    ListingMixin,
    WorkMixin,
    SchedulesMixin,
    SyncMixin,
    AlertsMixin,
    PortableMixin,
    TokensMixin,
    Database,
):
    """The job store on PostgreSQL (`--db postgresql://user@host:5432/dbname`)."""
