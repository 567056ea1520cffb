"""A plugin's persistent state, as ductile keeps it: a shallow merge capped at 1 MiB.

The store applies `state_updates` (the `merge_plugin_state` query); this module says
what the merge gives and whether the result is too large, so the worker can fail the
job instead of storing it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

#: Largest merged state, in bytes of compact JSON (ductile's limit).
STATE_CAP: Final = 1024 * 1024


def merge_state(state: Mapping[str, Any], updates: Mapping[str, Any]) -> dict[str, Any]:
    """ductile's shallow merge: each top-level key of `updates` replaces the stored one
    whole (nested objects are not merged), and null is kept as a value."""
    return {**state, **updates}


def state_cap_problem(state: Mapping[str, Any], updates: Mapping[str, Any]) -> str | None:
    """Why merging `updates` into `state` must fail the job, or None when it may go on."""
    merged = json.dumps(merge_state(state, updates), separators=(",", ":"), ensure_ascii=False)
    size = len(merged.encode())
    if size <= STATE_CAP:
        return None
    return (
        f"state_updates would make the plugin's state {size} bytes, over the "
        f"{STATE_CAP}-byte cap; not applied"
    )
