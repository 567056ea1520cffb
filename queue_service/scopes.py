"""Token scopes and how they nest."""

from __future__ import annotations

#: Every scope a token may hold. `*` covers all.
SCOPES: tuple[str, ...] = (
    "*",
    "jobs:rw",
    "jobs:ro",
    "jobs:status:ro",
    "plugin:rw",
    "plugin:ro",
    "metrics:ro",
)

#: What each scope grants beyond itself.
_IMPLIES: dict[str, frozenset[str]] = {
    "*": frozenset(SCOPES),
    "jobs:rw": frozenset({"jobs:rw", "jobs:ro", "jobs:status:ro"}),
    "jobs:ro": frozenset({"jobs:ro", "jobs:status:ro"}),
    "jobs:status:ro": frozenset({"jobs:status:ro"}),
    "plugin:rw": frozenset({"plugin:rw", "plugin:ro"}),
    "plugin:ro": frozenset({"plugin:ro"}),
    # Prometheus scraping GET /metrics: counts and timings, never a job's content.
    "metrics:ro": frozenset({"metrics:ro"}),
}


class UnknownScope(ValueError):
    def __init__(self, scope: str) -> None:
        super().__init__(f"unknown scope {scope!r}; valid scopes: {', '.join(SCOPES)}")
        self.scope = scope


def validate_scopes(scopes: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Return the scopes, de-duplicated in order; raise UnknownScope for any unknown one."""
    if not scopes:
        raise ValueError("a token needs at least one scope")
    for scope in scopes:
        if scope not in _IMPLIES:
            raise UnknownScope(scope)
    return tuple(dict.fromkeys(scopes))


def effective(scopes: tuple[str, ...] | list[str]) -> frozenset[str]:
    """Every scope granted by holding `scopes` (unknown names grant nothing)."""
    granted: set[str] = set()
    for scope in scopes:
        granted |= _IMPLIES.get(scope, frozenset())
    return frozenset(granted)


def grants(scopes: tuple[str, ...] | list[str], needed: str) -> bool:
    return needed in effective(scopes)
