"""Engines of the reliability suite, shared by its tests and by `bench/soak.py`.

Not test modules. Each engine runs a real scenario against real processes on 127.0.0.1 and
one SQLite file, counts what happened, and returns a report; the tests assert on the
reports, and the soak script runs the same engines longer:

- `crash`: `queue-service worker` processes SIGKILLed mid-job, over and over, while a ledger
  plugin records every execution; `serve` SIGKILLed while clients enqueue;
- `contention`: processes that enqueue and work on one database file at once, while a
  `serve` process on the same file answers the API;
- `databricks`: a sync of a 10k-run history from a fake workspace failing at random,
  compared with a fault-free sync;
- `storage`: unwritable files and directories, a tiny filesystem that can be filled.
"""

from tests.reliability._db import count_mismatches, integrity_check, read_only
from tests.reliability.contention import run_contention
from tests.reliability.crash import run_crash_scenario, run_server_kills
from tests.reliability.databricks import run_databricks_faults
from tests.reliability.storage import fill_disk, tiny_filesystem, unwritable

__all__ = [
    "count_mismatches",
    "fill_disk",
    "integrity_check",
    "read_only",
    "run_contention",
    "run_crash_scenario",
    "run_databricks_faults",
    "run_server_kills",
    "tiny_filesystem",
    "unwritable",
]
