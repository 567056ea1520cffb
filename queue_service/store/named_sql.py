"""Named SQL blocks (`-- name: NAME`) in a backend's .sql files, parsed once."""

from __future__ import annotations

import re
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


def load_queries(package: str, filenames: tuple[str, ...] | None = None) -> dict[str, str]:
    """Every named query of `package`'s .sql files (`filenames`, or all of them in name
    order). A name used twice is an error."""
    folder = resources.files(package)
    if filenames is None:
        filenames = tuple(sorted(e.name for e in folder.iterdir() if e.name.endswith(".sql")))
    found: dict[str, str] = {}
    for filename in filenames:
        text = folder.joinpath(filename).read_text("utf-8")
        for name, sql in parse_named_queries(text).items():
            if name in found:
                raise ValueError(f"query {name!r} is defined twice ({filename})")
            found[name] = sql
    return found
