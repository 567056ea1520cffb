"""Plugin discovery and the registry the API and the worker look plugins up in.

Discovery: every immediate sub-folder of each plugin dir that holds a
`manifest.yaml` is a plugin. Folders whose name starts with `.` or `_` are skipped.
Plugin dirs are scanned in the order given, and folders inside one dir in name
order, so the result never depends on file system order.

A plugin that cannot be used never stops the service. It is kept in the registry
as invalid, with a one-line `error`, and logged once at WARNING:
- its manifest is invalid (see `manifest.read_manifest`);
- a key listed in `config_keys.required` is missing from its configured config table;
- it, its plugin dir or its entrypoint could be changed by someone other than root
  and the service's user (see `trust.py`); the error names the path;
- its name is already taken (duplicates across plugin dirs: **the first one found
  wins**; later ones are listed as invalid, naming the folder that owns the name).

An invalid plugin is registered under the manifest's `name` when that much could be
read, else under its folder name.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from queue_service.plugins.manifest import (
    MANIFEST_FILENAME,
    Command,
    Manifest,
    ManifestError,
    read_manifest,
)
from queue_service.plugins.trust import ownership_problem

if TYPE_CHECKING:
    from queue_service.store import Store

log = logging.getLogger("queue_service.plugins")


@dataclass(frozen=True, slots=True)
class Plugin:
    """A discovered plugin, usable or not.

    `manifest` is None only when the manifest itself could not be parsed.
    `config` is the plugin's configured config table, passed to it as `config`.
    `error` is None exactly when the plugin is usable.
    """

    name: str
    folder: Path
    manifest: Manifest | None
    # repr=False: values may be secrets filled in from the environment.
    config: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    error: str | None = None

    @property
    def valid(self) -> bool:
        return self.error is None

    @property
    def version(self) -> str | None:
        return self.manifest.version if self.manifest else None

    @property
    def description(self) -> str | None:
        return self.manifest.description if self.manifest else None

    @property
    def commands(self) -> tuple[Command, ...]:
        return self.manifest.commands if self.manifest else ()

    @property
    def concurrency_safe(self) -> bool:
        return self.manifest.concurrency_safe if self.manifest else True

    @property
    def entrypoint(self) -> Path:
        """Absolute path of the executable to run. Raises ValueError if there is none."""
        if self.manifest is None:
            raise ValueError(f"plugin {self.name!r} has no usable manifest: {self.error}")
        return (self.folder / self.manifest.entrypoint).resolve()

    def command(self, name: str) -> Command | None:
        return self.manifest.command(name) if self.manifest else None


class PluginLookupError(LookupError):
    """A plugin or command that cannot be used. Carries what an API error needs.

    `param` is "plugin" or "command", `value` the name asked for, and `allowed`
    the names that would have worked (sorted).
    """

    def __init__(self, message: str, *, param: str, value: str, allowed: Iterable[str]) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.value = value
        self.allowed: tuple[str, ...] = tuple(sorted(allowed))


class UnknownPlugin(PluginLookupError):
    """No plugin by that name was discovered."""


class PluginUnavailable(PluginLookupError):
    """The plugin exists but is invalid; `reason` says why."""

    def __init__(self, message: str, *, value: str, reason: str, allowed: Iterable[str]) -> None:
        super().__init__(message, param="plugin", value=value, allowed=allowed)
        self.reason = reason


class UnknownCommand(PluginLookupError):
    """The plugin is usable but does not declare that command."""


class Registry:
    """All discovered plugins, valid and invalid, looked up by name.

    Immutable after construction and safe to share between tasks and threads.
    """

    def __init__(self, plugins: Iterable[Plugin]) -> None:
        """`plugins` in discovery order: the first plugin of a name owns that name."""
        ordered = tuple(plugins)
        by_name: dict[str, Plugin] = {}
        for plugin in ordered:
            by_name.setdefault(plugin.name, plugin)
        self._by_name: Mapping[str, Plugin] = MappingProxyType(by_name)
        self._all = tuple(sorted(ordered, key=lambda p: (p.name, str(p.folder))))
        self._valid = tuple(p for p in self._all if p.valid)

    def get(self, name: str) -> Plugin | None:
        """The plugin that owns `name` (valid or not), or None if none was discovered."""
        return self._by_name.get(name)

    def all(self) -> tuple[Plugin, ...]:
        """Every discovered plugin, invalid ones and losing duplicates included,
        sorted by name and then by folder."""
        return self._all

    async def missing(self, store: Store) -> dict[str, int]:
        """{plugin: queued local jobs} for plugins that queued jobs name but no plugin folder
        holds, from the store's exact counts (no table walk). Empty when no plugin was
        discovered: such a process (API only) cannot tell what is missing."""
        known = {p.name for p in self._all}
        if not known:
            return {}
        waiting = await store.queued_by_plugin()
        return {name: n for name, n in waiting.items() if name not in known}

    def valid(self) -> tuple[Plugin, ...]:
        """The usable plugins, sorted by name."""
        return self._valid

    def resolve(self, plugin: str, command: str) -> tuple[Plugin, Command]:
        """The usable plugin and its declared command.

        Raises UnknownPlugin, PluginUnavailable (invalid plugin) or UnknownCommand.
        """
        found = self._by_name.get(plugin)
        if found is None:
            raise UnknownPlugin(
                f"unknown plugin {plugin!r}",
                param="plugin",
                value=plugin,
                allowed=[p.name for p in self._valid],
            )
        if found.error is not None:
            raise PluginUnavailable(
                f"plugin {plugin!r} is invalid: {found.error}",
                value=plugin,
                reason=found.error,
                allowed=[p.name for p in self._valid],
            )
        declared = found.command(command)
        if declared is None:
            names = [c.name for c in found.commands]
            raise UnknownCommand(
                f"plugin {plugin!r} has no command {command!r}",
                param="command",
                value=command,
                allowed=names,
            )
        return found, declared


def load(
    plugin_dirs: Iterable[str | Path],
    plugin_configs: Mapping[str, Mapping[str, Any]] | None = None,
) -> Registry:
    """Discover the plugins under `plugin_dirs` and check them against their config.

    `plugin_configs` maps a plugin name to its config table (`[plugins.NAME].config`).
    Never raises for a bad plugin or a missing plugin dir: problems are logged and
    recorded on the returned plugins (see the module docstring).
    """
    configs = plugin_configs or {}
    plugins: list[Plugin] = []
    owners: dict[str, Path] = {}
    for plugin_dir in plugin_dirs:
        root = Path(plugin_dir)
        if not root.is_dir():
            log.warning("plugin dir %s does not exist or is not a directory; skipped", root)
            continue
        # Its plugins are still listed (as invalid), so their queued jobs are kept.
        dir_problem = ownership_problem(root.resolve(), "plugin dir")
        if dir_problem is not None:
            log.warning("%s", dir_problem)
        for folder in sorted(root.iterdir(), key=lambda p: p.name):
            if folder.name.startswith((".", "_")) or not folder.is_dir():
                continue
            if not (folder / MANIFEST_FILENAME).is_file():
                log.debug("%s has no %s; not a plugin", folder, MANIFEST_FILENAME)
                continue
            plugin = _load_one(folder.absolute(), configs)
            if dir_problem is not None:
                plugin = replace(plugin, error=dir_problem)
            owner = owners.get(plugin.name)
            if owner is not None:
                plugin = Plugin(
                    name=plugin.name,
                    folder=plugin.folder,
                    manifest=plugin.manifest,
                    config=plugin.config,
                    error=f"duplicate plugin name {plugin.name!r}: already defined by {owner}",
                )
            else:
                owners[plugin.name] = plugin.folder
            if plugin.error is None:
                log.info("plugin %s %s loaded from %s", plugin.name, plugin.version, plugin.folder)
            else:
                log.warning(
                    "plugin %s at %s is invalid: %s", plugin.name, plugin.folder, plugin.error
                )
            plugins.append(plugin)
    for name in sorted(set(configs) - set(owners)):
        log.warning("config is given for plugin %r, but no such plugin was found", name)
    return Registry(plugins)


def _load_one(folder: Path, configs: Mapping[str, Mapping[str, Any]]) -> Plugin:
    try:
        manifest = read_manifest(folder)
    except ManifestError as exc:
        name = exc.plugin_name or folder.name
        return Plugin(name=name, folder=folder, manifest=None, error=str(exc))
    config = MappingProxyType(dict(configs.get(manifest.name, {})))
    missing = [key for key in manifest.required_config if key not in config]
    error = None
    if missing:
        error = (
            f"missing required config key(s) {', '.join(missing)}; "
            f"set them in [plugins.{manifest.name}.config]"
        )
    else:
        declared = set(manifest.required_config) | set(manifest.optional_config)
        unknown = sorted(set(config) - declared)
        if unknown:
            log.warning(
                "plugin %s: config key(s) %s are not declared in its manifest",
                manifest.name,
                ", ".join(unknown),
            )
    return Plugin(name=manifest.name, folder=folder, manifest=manifest, config=config, error=error)
