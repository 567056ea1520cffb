"""The start-up layers import downwards only: cli -> server -> bootstrap -> the rest."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "queue_service"
#: Highest first: a module may import those after it, never those before it.
LAYERS = ("queue_service.cli", "queue_service.server", "queue_service.bootstrap")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every queue_service module `path` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("queue_service")}


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_imports_a_layer_above_it(name: str) -> None:
    rank = LAYERS.index(name) if name in LAYERS else len(LAYERS)
    above = set(LAYERS[:rank])
    if name == "queue_service.__main__":
        above.discard("queue_service.cli")  # `python -m queue_service` runs the CLI
    assert not imported_modules(MODULES[name]) & above


def test_the_layers_exist() -> None:
    # Guards the test above against a rename that would make it pass vacuously.
    assert set(LAYERS) <= set(MODULES)
    assert "queue_service.bootstrap" in imported_modules(MODULES["queue_service.server"])
    assert "queue_service.bootstrap" in imported_modules(MODULES["queue_service.cli"])
