"""Plugins speaking ductile plugin protocol 2: discovery, validation and running.

- `load(plugin_dirs, plugin_configs) -> Registry` discovers plugins (registry.py).
- `run_command(plugin, command, ...) -> AttemptOutcome` runs one command as a real
  subprocess (runner.py).
"""

from queue_service.plugins.manifest import (
    Command,
    Manifest,
    ManifestError,
    PayloadError,
    parse_manifest,
    read_manifest,
)
from queue_service.plugins.registry import (
    Plugin,
    PluginLookupError,
    PluginUnavailable,
    Registry,
    UnknownCommand,
    UnknownPlugin,
    load,
)
from queue_service.plugins.runner import (
    DEFAULT_TIMEOUTS,
    ENV_ALLOWLIST,
    EXIT_CONFIG_ERROR,
    FALLBACK_TIMEOUT,
    KILL_GRACE,
    STDERR_TAIL,
    STDOUT_CAP,
    AttemptOutcome,
    OutcomeKind,
    default_timeout,
    plugin_environment,
    run_command,
)

__all__ = [
    "DEFAULT_TIMEOUTS",
    "ENV_ALLOWLIST",
    "EXIT_CONFIG_ERROR",
    "FALLBACK_TIMEOUT",
    "KILL_GRACE",
    "STDERR_TAIL",
    "STDOUT_CAP",
    "AttemptOutcome",
    "Command",
    "Manifest",
    "ManifestError",
    "OutcomeKind",
    "PayloadError",
    "Plugin",
    "PluginLookupError",
    "PluginUnavailable",
    "Registry",
    "UnknownCommand",
    "UnknownPlugin",
    "default_timeout",
    "load",
    "parse_manifest",
    "plugin_environment",
    "read_manifest",
    "run_command",
]
