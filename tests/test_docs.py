"""The docs keep up with the code: every route, query parameter, error code, status and scope
in the OpenAPI document and the vocabularies appears in docs/API_REFERENCE.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from queue_service.api.app import CORE_OPERATIONS
from queue_service.api.openapi import build_openapi
from queue_service.errors import ERROR_CODES
from queue_service.scopes import SCOPES
from queue_service.statuses import STATUS_WORDS

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = (ROOT / "docs" / "API_REFERENCE.md").read_text()
DOCUMENT = build_openapi(CORE_OPERATIONS)


@pytest.mark.parametrize(
    ("method", "path"),
    [(m.upper(), p) for p, ops in DOCUMENT["paths"].items() for m in ops],
)
def test_every_route_is_documented(method: str, path: str) -> None:
    assert f"{method} {path}" in REFERENCE, f"{method} {path} is missing from API_REFERENCE.md"


@pytest.mark.parametrize(
    ("path", "name"),
    sorted(
        {
            (p, param["name"])
            for p, ops in DOCUMENT["paths"].items()
            for op in ops.values()
            for param in op["parameters"]
        }
    ),
)
def test_every_parameter_is_documented(path: str, name: str) -> None:
    assert f"`{name}`" in REFERENCE, f"parameter {name} of {path} is missing"


@pytest.mark.parametrize("code", sorted(ERROR_CODES))
def test_every_error_code_is_documented(code: str) -> None:
    assert f"`{code}`" in REFERENCE


@pytest.mark.parametrize("word", STATUS_WORDS + SCOPES)
def test_every_status_alias_and_scope_is_documented(word: str) -> None:
    assert f"`{word}`" in REFERENCE


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = (
        "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest"
    )
    assert command in readme and command in ci
