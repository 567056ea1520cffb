"""The service's one TOML configuration file, validated once at start-up.

The file is given as `--config FILE` or `$QUEUE_SERVICE_CONFIG`; without one every
setting has its default. Validation collects every problem at once, and each
message starts with the dotted key it is about::

    plugins.echo.timeout_seconds.poll: must be a positive number (got -1)

See `examples/queue-service.toml` for a documented example.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from queue_service.alerts.config import Alerts
from queue_service.databricks.config import DatabricksConfig
from queue_service.plugins.runner import default_timeout
from queue_service.scheduling import ScheduleSpec, schedule_key

__all__ = [
    "CONFIG_ENV",
    "ConfigError",
    "PluginSection",
    "ServiceConfig",
    "ServiceSection",
    "load_config",
    "parse_config",
]

CONFIG_ENV = "QUEUE_SERVICE_CONFIG"


class ConfigError(Exception):
    """The configuration file is missing, unreadable, or invalid.

    `problems` holds one line per bad key, each starting with the key's dotted path.
    """

    def __init__(self, problems: Sequence[str], path: Path | None = None) -> None:
        self.problems = tuple(problems)
        self.path = path
        where = f"invalid configuration in {path}" if path else "invalid configuration"
        super().__init__(where + ":\n" + "\n".join(f"  {p}" for p in self.problems))


# -- value types with messages a person can act on ---------------------------------


def _as_number(value: object) -> float | None:
    """A finite int or float as float, else None."""
    # TOML booleans are ints to Python; `workers = true` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _positive_int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PydanticCustomError(
            "positive_int", "must be a whole number >= 1 (got {value})", {"value": repr(value)}
        )
    return value


#: The most PostgreSQL connections one process's pool may hold (`[service] pool_size`).
MAX_POOL_SIZE = 100


def _pool_size(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_POOL_SIZE:
        raise PydanticCustomError(
            "pool_size",
            "must be a whole number from 1 to {most} (got {value})",
            {"most": MAX_POOL_SIZE, "value": repr(value)},
        )
    return value


def _positive_number(value: object) -> float:
    number = _as_number(value)
    if number is None or number <= 0:
        raise PydanticCustomError(
            "positive_number", "must be a positive number (got {value})", {"value": repr(value)}
        )
    return number


def _non_negative_number(value: object) -> float:
    number = _as_number(value)
    if number is None or number < 0:
        raise PydanticCustomError(
            "non_negative_number", "must be a number >= 0 (got {value})", {"value": repr(value)}
        )
    return number


def _timeout_table(value: object) -> object:
    """A bare number applies to every command; store it under the `*` entry."""
    if isinstance(value, dict):
        return value
    if isinstance(value, int | float):
        return {"*": _positive_number(value)}
    raise PydanticCustomError(
        "timeout_seconds",
        "must be a positive number, or a table of seconds per command such as "
        "{ poll = 30, handle = 300 } (got {value})",
        {"value": repr(value)},
    )


def _plugin_dir(value: object, info: ValidationInfo) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise PydanticCustomError(
            "path", "must be a non-empty path string (got {value})", {"value": repr(value)}
        )
    path = Path(value).expanduser()
    base = (info.context or {}).get("base_dir")
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return path.resolve()


def _address_list(value: object) -> tuple[str, ...]:
    """IP addresses and networks (`10.0.0.1`, `10.0.0.0/8`, `::1`), or `*` for any."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise PydanticCustomError(
            "address_list",
            'must be a list of IP addresses or networks such as ["127.0.0.1", "10.0.0.0/8"] '
            "(got {value})",
            {"value": repr(value)},
        )
    for item in value:
        if item.strip() == "*":
            continue
        try:
            ipaddress.ip_network(item.strip(), strict=False)
        except ValueError:
            raise PydanticCustomError(
                "address_list",
                "{item} is not an IP address or network (such as 10.0.0.1 or 10.0.0.0/8)",
                {"item": repr(item)},
            ) from None
    return tuple(item.strip() for item in value)


PositiveInt = Annotated[int, PlainValidator(_positive_int)]
PositiveNumber = Annotated[float, PlainValidator(_positive_number)]
NonNegativeNumber = Annotated[float, PlainValidator(_non_negative_number)]
PluginDir = Annotated[Path, PlainValidator(_plugin_dir)]
TimeoutTable = Annotated[dict[str, PositiveNumber], BeforeValidator(_timeout_table)]
AddressList = Annotated[tuple[str, ...], PlainValidator(_address_list)]


def _env_name(value: object) -> str:
    if isinstance(value, str) and _ENV_NAME.fullmatch(value):
        return value
    raise PydanticCustomError(
        "env_name",
        "must be an environment variable name such as GITHUB_TOKEN (got {value})",
        {"value": repr(value)},
    )


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
EnvName = Annotated[str, PlainValidator(_env_name)]


def _synchronous(value: object) -> str:
    if isinstance(value, str) and value.strip().upper() in ("NORMAL", "FULL"):
        return value.strip().upper()
    raise PydanticCustomError(
        "synchronous", "must be 'NORMAL' or 'FULL' (got {value})", {"value": repr(value)}
    )


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ServiceSection(_Section):
    """`[service]`: process-wide settings."""

    plugin_dirs: list[PluginDir] = Field(default_factory=list)
    workers: PositiveInt = 4
    retention_days: PositiveInt = 30
    synchronous: Annotated[Literal["NORMAL", "FULL"], PlainValidator(_synchronous)] = "NORMAL"
    #: PostgreSQL connections each process's pool holds at most (SQLite ignores it).
    pool_size: Annotated[int, PlainValidator(_pool_size)] = 10
    lease_seconds: PositiveNumber = 60.0
    shutdown_grace_seconds: NonNegativeNumber = 30.0
    #: Peers whose X-Forwarded-For/-Proto headers are believed (a reverse proxy); none by
    #: default, so no client can put another address in the access log.
    forwarded_allow_ips: AddressList = ()
    #: Environment variables a plugin gets besides PATH, HOME, TZ, LANG, LANGUAGE,
    #: TMPDIR and LC_* (ductile's `plugin_env_passthrough`).
    plugin_env_passthrough: list[EnvName] = Field(default_factory=list)
    #: How far ahead a job's run_after may be, in days.
    max_run_after_days: PositiveInt = 365


class PluginSection(_Section):
    """`[plugins.NAME]`: how one plugin's jobs run and when they are scheduled."""

    # repr=False: values may come from ${NAME} references to secrets (see interpolate_env).
    config: dict[str, Any] = Field(default_factory=dict, repr=False)
    #: Sent as the request's top-level `secrets` when not empty; never merged into config.
    secrets: dict[str, str] = Field(default_factory=dict, repr=False)
    max_attempts: PositiveInt = 4
    backoff_seconds: NonNegativeNumber = 30.0
    timeout_seconds: TimeoutTable = Field(default_factory=dict)
    concurrency: PositiveInt | None = None
    schedules: list[ScheduleSpec] = Field(default_factory=list)

    @field_validator("schedules")
    @classmethod
    def _unique_schedule_ids(cls, schedules: list[ScheduleSpec]) -> list[ScheduleSpec]:
        seen: set[str] = set()
        for spec in schedules:
            if spec.id in seen:
                raise PydanticCustomError(
                    "duplicate_schedule",
                    "duplicate schedule id {id}; ids must be unique per plugin",
                    {"id": repr(spec.id)},
                )
            seen.add(spec.id)
        return schedules

    def timeout_for(self, command: str) -> float:
        """Seconds `command` may run: its own entry, else the plugin-wide number, else
        the runner's default for the command (poll 60, handle 120, health 10, ...)."""
        table = self.timeout_seconds
        return table.get(command, table.get("*", default_timeout(command)))


class ServiceConfig(_Section):
    """The whole configuration file. Every section is optional."""

    service: ServiceSection = Field(default_factory=ServiceSection)
    plugins: dict[str, PluginSection] = Field(default_factory=dict)
    #: None when the file has no `[databricks]` section: then no sync runs.
    databricks: DatabricksConfig | None = None
    #: `[[alerts]]`: webhooks for failed and long-running jobs (queue_service/alerts).
    alerts: Alerts = Field(default_factory=list)

    def plugin(self, name: str) -> PluginSection:
        """The section of plugin `name`, or the defaults when it is not configured."""
        return self.plugins.get(name) or _DEFAULT_PLUGIN

    def timeout_for(self, plugin: str, command: str) -> float:
        """Seconds a `plugin` `command` may run before it is terminated."""
        return self.plugin(plugin).timeout_for(command)

    def schedules(self) -> list[tuple[str, str, ScheduleSpec]]:
        """Every configured schedule as (key, plugin, spec), key = `plugin:schedule_id`."""
        return [
            (schedule_key(name, spec.id), name, spec)
            for name, section in self.plugins.items()
            for spec in section.schedules
        ]


_DEFAULT_PLUGIN = PluginSection()


def load_config(path: Path | str | None) -> ServiceConfig:
    """Read and validate the TOML file at `path`; None gives the defaults.

    Relative `plugin_dirs` are resolved against the file's folder. Raises
    ConfigError, listing every problem with its key, when the file cannot be read
    or parsed or does not validate.
    """
    if path is None:
        return ServiceConfig()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(["no such file"], path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read the file: {exc}"], path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], path) from None
    return parse_config(data, base_dir=path.resolve().parent, path=path)


def parse_config(
    data: Mapping[str, Any],
    *,
    base_dir: Path | None = None,
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> ServiceConfig:
    """Validate already-parsed TOML data. Relative `plugin_dirs` resolve against
    `base_dir` (default: the working directory); `${NAME}` references in plugin
    `config` and `secrets` tables are filled in from `environ` (default: this
    process's environment). Raises ConfigError."""
    environ = os.environ if environ is None else environ
    data, unset = _interpolate_plugins(data, environ)
    data, unset_in_alerts = _interpolate_alerts(data, environ)
    unset += unset_in_alerts
    try:
        config = ServiceConfig.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(unset + [_describe(error) for error in exc.errors()], path) from None
    if unset:
        raise ConfigError(unset, path)
    return config


#: A `${NAME}` reference, as ductile reads them: no `$NAME`, no default, no escape.
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def interpolate_env(value: Any, environ: Mapping[str, str], where: str) -> tuple[Any, list[str]]:
    """`value` with every `${NAME}` in its strings replaced by `environ[NAME]`, at any
    depth (tables and arrays), and one problem per unset variable, naming its key.
    Problems never quote a value, so a secret cannot leak through them."""
    if isinstance(value, str):
        missing = [n for n in _ENV_REFERENCE.findall(value) if n not in environ]
        if missing:
            return value, [f"{where}: environment variable ${{{n}}} is not set" for n in missing]
        return _ENV_REFERENCE.sub(lambda m: environ[m.group(1)], value), []
    problems: list[str] = []
    if isinstance(value, dict):
        filled: dict[str, Any] = {}
        for key, item in value.items():
            filled[key], found = interpolate_env(item, environ, f"{where}.{key}")
            problems += found
        return filled, problems
    if isinstance(value, list):
        items: list[Any] = []
        for index, item in enumerate(value):
            filled_item, found = interpolate_env(item, environ, f"{where}[{index}]")
            items.append(filled_item)
            problems += found
        return items, problems
    return value, []


def _interpolate_plugins(
    data: Mapping[str, Any], environ: Mapping[str, str]
) -> tuple[Mapping[str, Any], list[str]]:
    """Fill in the `config` and `secrets` tables of every `[plugins.NAME]`; the rest of
    the file is taken literally. Returns a copy; `data` is not changed."""
    plugins = data.get("plugins")
    if not isinstance(plugins, dict):
        return data, []
    problems: list[str] = []
    filled_plugins: dict[str, Any] = {}
    for name, section in plugins.items():
        filled_plugins[name], found = _interpolate_keys(
            section, ("config", "secrets"), environ, f"plugins.{name}"
        )
        problems += found
    return {**data, "plugins": filled_plugins}, problems


def _interpolate_alerts(
    data: Mapping[str, Any], environ: Mapping[str, str]
) -> tuple[Mapping[str, Any], list[str]]:
    """Fill in `url` and `headers` of every `[[alerts]]` entry (webhook URLs and tokens
    are secrets). Returns a copy; `data` is not changed."""
    alerts = data.get("alerts")
    if not isinstance(alerts, list):
        return data, []
    problems: list[str] = []
    filled_alerts: list[Any] = []
    for index, entry in enumerate(alerts):
        filled, found = _interpolate_keys(entry, ("url", "headers"), environ, f"alerts[{index}]")
        filled_alerts.append(filled)
        problems += found
    return {**data, "alerts": filled_alerts}, problems


def _interpolate_keys(
    section: Any, keys: Sequence[str], environ: Mapping[str, str], where: str
) -> tuple[Any, list[str]]:
    """A copy of the table `section` with `${NAME}` filled in under `keys`; anything that
    is not a table is returned as it is (validation names the mistake)."""
    if not isinstance(section, dict):
        return section, []
    filled = dict(section)
    problems: list[str] = []
    for key in keys:
        if key in filled:
            filled[key], found = interpolate_env(filled[key], environ, f"{where}.{key}")
            problems += found
    return filled, problems


def _describe(error: ErrorDetails) -> str:
    loc = error["loc"]
    key = _dotted(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        message = "unknown key" + (f"; allowed keys: {', '.join(allowed)}" if allowed else "")
    elif kind == "missing":
        message = "required"
    elif kind == "value_error" and "error" in error.get("ctx", {}):
        message = str(error["ctx"]["error"])
    else:
        message = error["msg"]
    return f"{key}: {message}" if key else message


def _dotted(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    """The keys the model at `loc` accepts, found by walking the model's annotations."""
    node: Any = ServiceConfig
    for part in loc:
        node = _unwrap(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(str(part))
            if field is None:
                return []
            node = field.annotation
        elif get_origin(node) in (list, dict):
            node = get_args(node)[-1]
        else:
            return []
    node = _unwrap(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """`X | None` -> X; anything else unchanged."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) not in (list, dict) and len(args) == 1:
        return args[0]
    return annotation
