"""Loads the named SQL blocks (`-- name: NAME`) from the store's .sql files, once."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def parse_named_queries(text: str) -> dict[str, str]:
    """Split a .sql file into {name: sql}. Comment lines inside a block are kept."""
    queries: dict[str, str] = {}
    matches = list(_NAME.finditer(text))
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        body = text[match.end() : end].strip()
        # Drop trailing comment lines that introduce the next block.
        lines = body.splitlines()
        while lines and lines[-1].lstrip().startswith("--"):
            lines.pop()
        name = match.group(1)
        if name in queries:
            raise ValueError(f"duplicate query name {name!r}")
        queries[name] = "\n".join(lines).strip().rstrip(";")
    return queries


#: The files of named queries, one per concern.
QUERY_FILES = ("queries.sql", "work.sql", "sync.sql", "schedules.sql", "alerts.sql")


@cache
def queries() -> dict[str, str]:
    """Every named query of the package's query files. A name used twice is an error."""
    found: dict[str, str] = {}
    for filename in QUERY_FILES:
        text = resources.files("queue_service.store.sqlite").joinpath(filename).read_text("utf-8")
        for name, sql in parse_named_queries(text).items():
            if name in found:
                raise ValueError(f"query {name!r} is defined twice ({filename})")
            found[name] = sql
    return found


def q(name: str) -> str:
    """The SQL text of a named query. KeyError names the missing query."""
    return queries()[name]
