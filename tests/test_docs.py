"""The docs keep up with the code, each fact in its own place.

- docs/API_REFERENCE.md has a section per route of the OpenAPI document (and none for a route that
  does not exist), and each route's parameters are documented in that route's section.
- Its tables of scopes, statuses, aliases and error codes list exactly the vocabularies.
- docs/CONFIGURATION.md has a table per section of the configuration model, listing exactly the
  keys that section accepts.
- The Command line section of docs/API_REFERENCE.md has a section per command of
  `queue-service`, naming each of its options.
- docs/METRICS.md lists exactly the metrics GET /metrics exposes, each with its type.
"""

from __future__ import annotations

import argparse
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from queue_service.api import ServiceState
from queue_service.api.app import CORE_OPERATIONS
from queue_service.api.mcp import TOOL_SPECS
from queue_service.api.metrics import ServiceMetrics
from queue_service.api.openapi import build_openapi
from queue_service.cli import build_parser
from queue_service.config import ServiceConfig, parse_config
from queue_service.errors import ERROR_CODES
from queue_service.plugins import Registry
from queue_service.scopes import SCOPES
from queue_service.statuses import ALIASES, STATUSES
from queue_service.store import SQLiteStore
from queue_service.worker import Worker

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT = build_openapi(CORE_OPERATIONS)


@dataclass(frozen=True)
class Section:
    level: int
    heading: str
    own: str  # the text up to the next heading of any level
    whole: str  # the text up to the next heading of the same or a higher level


def sections(markdown: str) -> list[Section]:
    """The headed sections of a markdown file (`#` lines inside code fences are not headings)."""
    lines = markdown.splitlines()
    heads: list[tuple[int, int, str]] = []
    fenced = False
    for number, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        match = None if fenced else re.match(r"^(#{1,6}) (.+)$", line)
        if match:
            heads.append((number, len(match.group(1)), match.group(2).strip()))
    found = []
    for index, (start, level, heading) in enumerate(heads):
        following = heads[index + 1 :]
        own_end = following[0][0] if following else len(lines)
        whole_end = next((n for n, lvl, _ in following if lvl <= level), len(lines))
        found.append(
            Section(
                level,
                heading,
                "\n".join(lines[start + 1 : own_end]),
                "\n".join(lines[start + 1 : whole_end]),
            )
        )
    return found


def section(markdown: str, heading: str) -> Section:
    matches = [s for s in sections(markdown) if s.heading == heading]
    assert len(matches) == 1, f"expected one section headed {heading!r}, found {len(matches)}"
    return matches[0]


def table_keys(text: str) -> list[list[str]]:
    """For each table in `text`, the backticked names that open its body rows."""
    tables: list[list[str]] = []
    previous_was_table = False
    for line in text.splitlines():
        is_table = line.startswith("|")
        if is_table and not previous_was_table:
            tables.append([])  # the header row opens a table and names no key
        elif is_table and (match := re.match(r"^\| `([^`]+)` \|", line)):
            tables[-1].append(match.group(1))
        previous_was_table = is_table
    return tables


# -- API_REFERENCE.md ------------------------------------------------------

REFERENCE = (ROOT / "docs" / "API_REFERENCE.md").read_text()
ROUTES = {
    f"{method.upper()} {path}": operation
    for path, operations in DOCUMENT["paths"].items()
    for method, operation in operations.items()
}


def route_sections() -> dict[str, Section]:
    routes = section(REFERENCE, "Routes")
    return {
        s.heading.strip("`"): s
        for s in sections(routes.whole)
        if s.level == 3 and re.fullmatch(r"`[A-Z]+ /\S*`", s.heading)
    }


def test_every_documented_route_exists() -> None:
    assert set(route_sections()) == set(ROUTES)


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_every_route_parameter_is_documented_in_its_route_section(route: str) -> None:
    documented = route_sections().get(route)
    assert documented is not None, f"API_REFERENCE.md has no section '### `{route}`'"
    query = [p["name"] for p in ROUTES[route]["parameters"] if p["in"] == "query"]
    path = [p["name"] for p in ROUTES[route]["parameters"] if p["in"] == "path"]
    tabled = [key for table in table_keys(documented.whole) for key in table]
    # Query parameters each have a row in the route's parameter table, and nothing else does.
    assert sorted(tabled) == sorted(query)
    if not query:
        assert "**Query parameters:** none" in documented.own
    for name in path:
        assert re.search(rf"\*\*Path parameters?\b[^\n]*`{name}`", documented.own), (
            f"path parameter {name} of {route} is not in its **Path parameter** line"
        )


# -- vocabularies ------------------------------------------------------------


def test_the_scope_table_lists_every_scope() -> None:
    assert table_keys(section(REFERENCE, "Scopes").own)[0] == list(SCOPES)


def test_the_status_tables_list_every_status_and_alias() -> None:
    assert table_keys(section(REFERENCE, "Statuses").own) == [list(STATUSES)]
    assert table_keys(section(REFERENCE, "Aliases").own) == [list(ALIASES)]


def test_the_mcp_tool_table_lists_every_tool() -> None:
    assert table_keys(section(REFERENCE, "Tools").own) == [[spec.name for spec in TOOL_SPECS]]


def test_the_error_code_table_lists_every_code() -> None:
    (codes,) = table_keys(section(REFERENCE, "Error codes").own)
    assert sorted(codes) == sorted(ERROR_CODES)


# -- CONFIGURATION.md --------------------------------------------------------

CONFIGURATION = (ROOT / "docs" / "CONFIGURATION.md").read_text()
#: Sections whose heading is a word rather than their TOML table header.
HEADED_OTHERWISE = {"`[[plugins.NAME.schedules]]`": "Schedules"}


def _nested_model(annotation: Any) -> tuple[type[BaseModel], str] | None:
    """The model a field holds, and how its TOML header is written: `[x]`, `[x.NAME]` or
    `[[x]]` (a table, a table of tables, an array of tables); None for a plain value."""
    origin = typing.get_origin(annotation)
    if origin is dict:
        inner, header = typing.get_args(annotation)[-1], "[{}.NAME]"
    elif origin is list:
        inner, header = typing.get_args(annotation)[-1], "[[{}]]"
    else:
        present = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = origin in (typing.Union, types.UnionType) and len(present) == 1
        inner, header = (present[0] if optional else annotation), "[{}]"
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        return inner, header
    return None


def config_tables() -> dict[str, type[BaseModel]]:
    """Every table of the configuration model by its TOML header, e.g. `[[databricks.workspaces]]`."""
    tables: dict[str, type[BaseModel]] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            nested = _nested_model(field.annotation)
            if nested is None:
                continue
            inner, header = nested
            dotted = f"{prefix}.{name}" if prefix else name
            toml = header.format(dotted)
            tables[f"`{toml}`"] = inner
            walk(inner, toml.strip("[]"))

    walk(ServiceConfig, "")
    return tables


def test_the_config_model_is_walked() -> None:
    # Guards the walk itself: if it found nothing, the tests below would pass vacuously.
    assert {"`[service]`", "`[plugins.NAME]`", "`[[databricks.workspaces]]`"} <= set(
        config_tables()
    )


@pytest.mark.parametrize("table", sorted(config_tables()))
def test_every_config_key_is_documented_and_every_documented_key_exists(table: str) -> None:
    model = config_tables()[table]
    documented = section(CONFIGURATION, HEADED_OTHERWISE.get(table, table))
    tables = table_keys(documented.own)
    assert len(tables) == 1, f"the section for {table} should hold one table of keys"
    (keys,) = tables
    assert sorted(keys) == sorted(model.model_fields), (
        f"{table}: undocumented {sorted(set(model.model_fields) - set(keys))}, "
        f"documented but not accepted {sorted(set(keys) - set(model.model_fields))}"
    )


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = (
        "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest"
    )
    assert command in readme and command in ci


# -- the command line ----------------------------------------------------------


def cli_commands() -> dict[str, argparse.ArgumentParser]:
    """Every runnable command of `queue-service` by its words, e.g. `token create`."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> None:
        subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subcommands:
            found[" ".join(words)] = parser
        for action in subcommands:
            for name, child in action.choices.items():
                walk(child, (*words, name))

    walk(build_parser(), ())
    return found


def test_the_command_line_is_walked() -> None:
    assert {"serve", "jobs", "status", "token create", "sync databricks"} <= set(cli_commands())


@pytest.mark.parametrize("command", sorted(cli_commands()))
def test_every_command_and_option_is_documented(command: str) -> None:
    """Each command has a `### `command …`` section under Command line naming every option."""
    heads = [
        s
        for s in sections(section(REFERENCE, "Command line").whole)
        if s.level == 3 and s.heading.strip("`").split()[: len(command.split())] == command.split()
    ]
    assert len(heads) == 1, f"API_REFERENCE.md has no section '### `{command}`' under Command line"
    options = [
        option
        for action in cli_commands()[command]._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    ]
    missing = [option for option in options if option not in heads[0].whole]
    assert not missing, f"`{command}`: options not in its section: {missing}"


# -- METRICS.md --------------------------------------------------------------

METRICS = (ROOT / "docs" / "METRICS.md").read_text()


@pytest.mark.anyio
async def test_metrics_md_lists_every_metric_with_its_type(store: SQLiteStore) -> None:
    # Every family present: a worker in the process and a configured Databricks sync.
    config = parse_config({"databricks": {"workspaces": [{"name": "prod"}]}})
    state = ServiceState.for_store(store, config=config)
    state.worker = Worker(store, Registry(()), config)
    body = (await ServiceMetrics(state).render()).decode()
    exposed = dict(re.findall(r"^# TYPE (\S+) (\S+)$", body, re.MULTILINE))
    rows = re.findall(r"^\| `(queue_service_\w+)` \| (\w+) \|", METRICS, re.MULTILINE)
    assert rows, "METRICS.md has no metric table"
    assert dict(rows) == exposed
    assert "[METRICS.md](METRICS.md)" in section(REFERENCE, "`GET /metrics`").own
