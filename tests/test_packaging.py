"""The wheel carries what an installed queue-service needs outside the source tree."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_ships_both_backends_migrations_queries_and_the_dashboard(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("queue_service-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    migrations = sorted(p.name for p in (ROOT / "migrations").glob("[0-9]*.sql"))
    assert migrations, "no migrations in the source tree"
    for name in migrations:
        assert f"queue_service/migrations/{name}" in names
    pg_migrations = sorted(p.name for p in (ROOT / "migrations" / "postgresql").glob("[0-9]*.sql"))
    assert pg_migrations, "no PostgreSQL migrations in the source tree"
    for name in pg_migrations:
        assert f"queue_service/migrations/postgresql/{name}" in names
    for name in ("queries.sql", "work.sql", "sync.sql", "schedules.sql", "schema.sql"):
        assert f"queue_service/store/sqlite/{name}" in names
    pg_queries = sorted(p.name for p in (ROOT / "queue_service/store/postgresql").glob("*.sql"))
    for name in pg_queries:
        assert f"queue_service/store/postgresql/{name}" in names
    for name in ("index.html", "app.js", "app.css"):
        assert f"queue_service/api/ui/static/{name}" in names
    assert any(n.endswith("entry_points.txt") for n in names)
