"""The TOML configuration: defaults, validation messages that name the key, the example."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from queue_service.config import (
    ConfigError,
    PluginSection,
    ServiceConfig,
    ServiceSection,
    load_config,
    parse_config,
)
from queue_service.databricks.config import DatabricksConfig
from queue_service.scheduling import ScheduleSpec

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "queue-service.toml"


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return list(info.value.problems)


def only_problem(data: dict[str, Any]) -> str:
    found = problems(data)
    assert len(found) == 1, found
    return found[0]


def write(tmp_path: Path, text: str, name: str = "queue-service.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- defaults -------------------------------------------------------------------------


def test_no_file_gives_defaults() -> None:
    config = load_config(None)
    assert config == ServiceConfig()
    assert config.service.plugin_dirs == []
    assert config.service.workers == 4
    assert config.service.retention_days == 30
    assert config.service.synchronous == "NORMAL"
    assert config.service.lease_seconds == 60
    assert config.service.shutdown_grace_seconds == 30
    assert config.plugins == {}
    assert config.databricks is None


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == ServiceConfig()


def test_unconfigured_plugin_gets_plugin_defaults() -> None:
    plugin = ServiceConfig().plugin("anything")
    assert plugin.config == {}
    assert plugin.max_attempts == 4
    assert plugin.backoff_seconds == 30
    assert plugin.concurrency is None
    assert plugin.schedules == []


def test_default_timeouts_per_command() -> None:
    config = ServiceConfig()
    assert config.timeout_for("echo", "poll") == 60
    assert config.timeout_for("echo", "handle") == 120
    assert config.timeout_for("echo", "health") == 10
    assert config.timeout_for("echo", "sync") == 60


def test_timeout_number_applies_to_every_command() -> None:
    config = parse_config({"plugins": {"echo": {"timeout_seconds": 5}}})
    assert [config.timeout_for("echo", c) for c in ("poll", "handle", "other")] == [5, 5, 5]
    assert config.timeout_for("other-plugin", "handle") == 120


def test_timeout_table_overrides_listed_commands_only() -> None:
    config = parse_config({"plugins": {"echo": {"timeout_seconds": {"handle": 300, "x": 1.5}}}})
    assert config.timeout_for("echo", "handle") == 300
    assert config.timeout_for("echo", "x") == 1.5
    assert config.timeout_for("echo", "poll") == 60


def test_synchronous_is_case_insensitive() -> None:
    assert parse_config({"service": {"synchronous": "full"}}).service.synchronous == "FULL"


def test_schedules_are_listed_with_their_keys() -> None:
    config = parse_config(
        {
            "plugins": {
                "a": {"schedules": [{"id": "one", "command": "poll", "every": "5m"}]},
                "b": {
                    "max_attempts": 2,
                    "schedules": [{"id": "one", "command": "poll", "cron": "0 * * * *"}],
                },
            }
        }
    )
    assert [(key, plugin, spec.id) for key, plugin, spec in config.schedules()] == [
        ("a:one", "a", "one"),
        ("b:one", "b", "one"),
    ]


# -- plugin_dirs ----------------------------------------------------------------------


def test_relative_plugin_dirs_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    path = write(conf_dir, f'[service]\nplugin_dirs = ["plugins", "../shared", "{tmp_path}/abs"]\n')
    monkeypatch.chdir(REPO)  # the working directory must not matter
    config = load_config(path)
    assert config.service.plugin_dirs == [
        conf_dir / "plugins",
        tmp_path / "shared",
        tmp_path / "abs",
    ]
    assert all(p.is_absolute() for p in config.service.plugin_dirs)


def test_plugin_dirs_expand_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    config = load_config(write(tmp_path, '[service]\nplugin_dirs = ["~/plugins"]\n'))
    assert config.service.plugin_dirs == [tmp_path / "plugins"]


def test_load_config_accepts_a_string_path(tmp_path: Path) -> None:
    assert load_config(str(write(tmp_path, "[service]\nworkers = 2\n"))).service.workers == 2


# -- the example ----------------------------------------------------------------------


def test_example_file_loads() -> None:
    config = load_config(EXAMPLE)
    assert config.service.plugin_dirs == [REPO / "plugins"]
    echo = config.plugin("echo")
    assert echo.timeout_for("poll") == 30
    assert echo.timeout_for("health") == 10
    assert [spec.id for spec in echo.schedules] == ["heartbeat", "weekday-report"]
    assert config.databricks is None


def test_example_databricks_block_validates_when_uncommented() -> None:
    """The commented-out [databricks] block must stay valid for users who enable it."""
    text = EXAMPLE.read_text(encoding="utf-8")
    block = text[text.index("# [databricks]") :].splitlines()
    uncommented = "\n".join(
        line[2:] for line in block if line.startswith("# ") and not line.startswith("# #")
    )
    config = parse_config(tomllib.loads(uncommented))
    assert isinstance(config.databricks, DatabricksConfig)
    assert [ws.name for ws in config.databricks.workspaces] == ["prod", "dev"]


@pytest.mark.parametrize(
    "model", [ServiceSection, PluginSection, ScheduleSpec], ids=lambda m: m.__name__
)
def test_example_documents_every_setting(model: type[BaseModel]) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    for key in model.model_fields:
        assert re.search(rf"\b{key}\b", text), f"{key} is not in the example"


# -- the [databricks] section ---------------------------------------------------------


def test_databricks_section_is_embedded() -> None:
    config = parse_config({"databricks": {"poll_interval_seconds": 10}})
    assert isinstance(config.databricks, DatabricksConfig)
    assert config.databricks.poll_interval_seconds == 10


def test_databricks_errors_name_their_keys() -> None:
    found = problems({"databricks": {"poll_interval_seconds": -1, "workspaces": [{"nme": "x"}]}})
    assert any(p.startswith("databricks.poll_interval_seconds: ") for p in found), found
    assert any(p.startswith("databricks.workspaces[0].nme: unknown key") for p in found), found


def test_config_module_does_not_import_the_databricks_sdk() -> None:
    import subprocess
    import sys

    code = "import sys, queue_service.config; print('databricks.sdk' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- every validation error names its key ---------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"service": {"workers": 0}}, "service.workers: must be a whole number >= 1 (got 0)"),
        ({"service": {"workers": True}}, "service.workers: must be a whole number >= 1"),
        ({"service": {"workers": "4"}}, "service.workers: must be a whole number >= 1"),
        ({"service": {"workers": 2.0}}, "service.workers: must be a whole number >= 1"),
        ({"service": {"retention_days": 0}}, "service.retention_days: must be a whole number"),
        ({"service": {"synchronous": "OFF"}}, "service.synchronous: must be 'NORMAL' or 'FULL'"),
        ({"service": {"lease_seconds": 0}}, "service.lease_seconds: must be a positive number"),
        (
            {"service": {"lease_seconds": float("nan")}},
            "service.lease_seconds: must be a positive number",
        ),
        (
            {"service": {"shutdown_grace_seconds": -1}},
            "service.shutdown_grace_seconds: must be a number >= 0",
        ),
        ({"service": {"plugin_dirs": "plugins"}}, "service.plugin_dirs: "),
        ({"service": {"plugin_dirs": ["ok", ""]}}, "service.plugin_dirs[1]: must be a non-empty"),
        ({"service": {"wrkers": 2}}, "service.wrkers: unknown key; allowed keys: plugin_dirs,"),
        ({"servce": {}}, "servce: unknown key; allowed keys: service, plugins, databricks"),
        ({"plugins": {"echo": 3}}, "plugins.echo: "),
        ({"plugins": {"echo": {"config": "x"}}}, "plugins.echo.config: "),
        ({"plugins": {"echo": {"max_attempts": 0}}}, "plugins.echo.max_attempts: must be a whole"),
        (
            {"plugins": {"echo": {"backoff_seconds": -1}}},
            "plugins.echo.backoff_seconds: must be a number >= 0 (got -1)",
        ),
        (
            {"plugins": {"echo": {"timeout_seconds": {"poll": -1}}}},
            "plugins.echo.timeout_seconds.poll: must be a positive number (got -1)",
        ),
        (
            {"plugins": {"echo": {"timeout_seconds": 0}}},
            "plugins.echo.timeout_seconds: must be a positive number (got 0)",
        ),
        (
            {"plugins": {"echo": {"timeout_seconds": "60"}}},
            "plugins.echo.timeout_seconds: must be a positive number, or a table",
        ),
        ({"plugins": {"echo": {"concurrency": 0}}}, "plugins.echo.concurrency: must be a whole"),
        ({"plugins": {"echo": {"retries": 3}}}, "plugins.echo.retries: unknown key; allowed keys"),
        ({"plugins": {"echo": {"schedules": {}}}}, "plugins.echo.schedules: "),
        (
            {"plugins": {"echo": {"schedules": [{"id": "a", "every": "5m"}]}}},
            "plugins.echo.schedules[0].command: required",
        ),
        (
            {"plugins": {"echo": {"schedules": [{"command": "poll", "every": "5m"}]}}},
            "plugins.echo.schedules[0].id: required",
        ),
        (
            {"plugins": {"echo": {"schedules": [{"id": "a b", "command": "p", "every": "5m"}]}}},
            "plugins.echo.schedules[0].id: 'a b' is not a schedule id",
        ),
        (
            {"plugins": {"echo": {"schedules": [{"id": "a", "command": "p"}]}}},
            "plugins.echo.schedules[0]: set exactly one of 'every' or 'cron'",
        ),
        (
            {
                "plugins": {
                    "echo": {
                        "schedules": [
                            {"id": "a", "command": "p", "every": "5m", "cron": "* * * * *"}
                        ]
                    }
                }
            },
            "plugins.echo.schedules[0]: set exactly one of 'every' or 'cron'",
        ),
        (
            {"plugins": {"echo": {"schedules": [{"id": "a", "command": "p", "every": "5x"}]}}},
            "plugins.echo.schedules[0].every: '5x' is not a duration",
        ),
        (
            {"plugins": {"echo": {"schedules": [{"id": "a", "command": "p", "every": "0s"}]}}},
            "plugins.echo.schedules[0].every: '0s' is not a duration",
        ),
        (
            {"plugins": {"echo": {"schedules": [{"id": "a", "command": "p", "every": 300}]}}},
            "plugins.echo.schedules[0].every: ",
        ),
        (
            {"plugins": {"echo": {"schedules": [{"id": "a", "command": "p", "cron": "* * *"}]}}},
            "plugins.echo.schedules[0].cron: '* * *' is not a five-field cron expression",
        ),
        (
            {
                "plugins": {
                    "echo": {"schedules": [{"id": "a", "command": "p", "cron": "0 0 * * * *"}]}
                }
            },
            "plugins.echo.schedules[0].cron: '0 0 * * * *' is not a five-field cron expression",
        ),
        (
            {
                "plugins": {
                    "echo": {"schedules": [{"id": "a", "command": "p", "cron": "61 * * * *"}]}
                }
            },
            "plugins.echo.schedules[0].cron: '61 * * * *' is not a five-field",
        ),
        (
            {
                "plugins": {
                    "echo": {"schedules": [{"id": "a", "command": "p", "cron": "0 0 31 2 *"}]}
                }
            },
            "plugins.echo.schedules[0].cron: '0 0 31 2 *' never matches a date",
        ),
        (
            {
                "plugins": {
                    "echo": {
                        "schedules": [
                            {
                                "id": "a",
                                "command": "p",
                                "cron": "0 9 * * *",
                                "timezone": "Mars/Base",
                            }
                        ]
                    }
                }
            },
            "plugins.echo.schedules[0].timezone: 'Mars/Base' is not an IANA time zone",
        ),
        (
            {
                "plugins": {
                    "echo": {
                        "schedules": [
                            {"id": "a", "command": "p", "every": "1d", "timezone": "Europe/Berlin"}
                        ]
                    }
                }
            },
            "plugins.echo.schedules[0].timezone: only applies to cron schedules",
        ),
        (
            {
                "plugins": {
                    "echo": {
                        "schedules": [{"id": "a", "command": "p", "every": "5m", "jitter": "5m"}]
                    }
                }
            },
            "plugins.echo.schedules[0].jitter: must be shorter than every (5m)",
        ),
        (
            {
                "plugins": {
                    "echo": {
                        "schedules": [{"id": "a", "command": "p", "every": "5m", "jitter": "-1s"}]
                    }
                }
            },
            "plugins.echo.schedules[0].jitter: '-1s' is not a duration",
        ),
        (
            {
                "plugins": {
                    "echo": {
                        "schedules": [
                            {"id": "a", "command": "p", "every": "5m", "if_running": "cancel"}
                        ]
                    }
                }
            },
            "plugins.echo.schedules[0].if_running: Input should be 'skip' or 'queue'",
        ),
        (
            {
                "plugins": {
                    "echo": {
                        "schedules": [
                            {"id": "a", "command": "p", "every": "5m", "catch_up": "run_all"}
                        ]
                    }
                }
            },
            "plugins.echo.schedules[0].catch_up: Input should be 'skip' or 'run_once'",
        ),
        (
            {
                "plugins": {
                    "echo": {"schedules": [{"id": "a", "command": "p", "every": "5m", "when": 1}]}
                }
            },
            "plugins.echo.schedules[0].when: unknown key; allowed keys: id, command, every, cron,",
        ),
        (
            {
                "plugins": {
                    "echo": {
                        "schedules": [
                            {"id": "a", "command": "p", "every": "5m"},
                            {"id": "a", "command": "q", "every": "1h"},
                        ]
                    }
                }
            },
            "plugins.echo.schedules: duplicate schedule id 'a'",
        ),
    ],
)
def test_each_error_names_its_key(data: dict[str, Any], expected: str) -> None:
    assert only_problem(data).startswith(expected)


def test_every_problem_is_listed_at_once() -> None:
    found = problems(
        {
            "service": {"workers": 0, "retention_days": -1},
            "plugins": {
                "echo": {"timeout_seconds": {"poll": -1, "handle": 0}},
                "other": {"concurrency": 0},
            },
            "extra": True,
        }
    )
    keys = sorted(p.split(":", 1)[0] for p in found)
    assert keys == [
        "extra",
        "plugins.echo.timeout_seconds.handle",
        "plugins.echo.timeout_seconds.poll",
        "plugins.other.concurrency",
        "service.retention_days",
        "service.workers",
    ]


def test_config_error_message_names_the_file_and_every_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[service]\nworkers = 0\n[plugins.echo]\nmax_attempts = 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "service.workers: " in message
    assert "plugins.echo.max_attempts: " in message
    assert info.value.path == path


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml")


def test_invalid_toml_is_a_config_error_with_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not valid TOML: .*line 2"):
        load_config(write(tmp_path, "[service]\nworkers = = 3\n"))


def test_duplicate_toml_key_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[service]\nworkers = 3\nworkers = 4\n"))


# --- ${NAME} interpolation, secrets and the environment passthrough ---------------------


def test_env_references_in_plugin_config_and_secrets_are_filled_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QS_TEST_TOKEN", "s3cret")
    monkeypatch.setenv("QS_TEST_HOST", "example.org")
    monkeypatch.setenv("QS_TEST_EMPTY", "")
    config = parse_config(
        {
            "plugins": {
                "notify": {
                    "config": {
                        "url": "https://${QS_TEST_HOST}/hook",
                        "nested": {"deep": ["${QS_TEST_HOST}", 3]},
                        "empty": "${QS_TEST_EMPTY}",
                        "plain": "$QS_TEST_HOST and ${ not a name }",
                    },
                    "secrets": {"token": "${QS_TEST_TOKEN}"},
                }
            }
        }
    )
    section = config.plugin("notify")
    assert section.config == {
        "url": "https://example.org/hook",
        "nested": {"deep": ["example.org", 3]},
        "empty": "",
        "plain": "$QS_TEST_HOST and ${ not a name }",  # only ${NAME} is a reference
    }
    assert section.secrets == {"token": "s3cret"}
    assert "s3cret" not in repr(config), "secret values never reach a repr (and so a log)"


def test_unset_variables_stop_start_up_naming_each(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QS_TEST_UNSET", raising=False)
    monkeypatch.delenv("QS_TEST_UNSET_TOO", raising=False)
    found = problems(
        {
            "plugins": {
                "notify": {
                    "config": {"list": ["${QS_TEST_UNSET}"]},
                    "secrets": {"token": "x-${QS_TEST_UNSET_TOO}"},
                }
            }
        }
    )
    assert found == [
        "plugins.notify.config.list[0]: environment variable ${QS_TEST_UNSET} is not set",
        "plugins.notify.secrets.token: environment variable ${QS_TEST_UNSET_TOO} is not set",
    ]


def test_interpolated_values_stay_out_of_error_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QS_TEST_TOKEN", "s3cret")
    path = write(
        tmp_path,
        '[plugins.notify]\nsecrets = { token = "${QS_TEST_TOKEN}", bad = 5 }\nretries = 1\n',
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "plugins.notify.secrets.bad" in str(info.value)
    assert "s3cret" not in str(info.value)


def test_only_plugin_tables_are_interpolated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QS_TEST_HOST", "example.org")
    config = parse_config({"plugins": {"p": {"schedules": [], "config": {}}}})
    assert config.plugin("p").config == {}
    message = only_problem({"service": {"synchronous": "${QS_TEST_HOST}"}})
    assert message.startswith("service.synchronous: must be 'NORMAL' or 'FULL'")


def test_plugin_env_passthrough_names_are_checked() -> None:
    config = parse_config({"service": {"plugin_env_passthrough": ["GITHUB_TOKEN", "_X1"]}})
    assert config.service.plugin_env_passthrough == ["GITHUB_TOKEN", "_X1"]
    assert ServiceConfig().service.plugin_env_passthrough == []
    message = only_problem({"service": {"plugin_env_passthrough": ["GITHUB-TOKEN"]}})
    assert message.startswith("service.plugin_env_passthrough[0]: must be an environment variable")


def test_pool_size_is_a_whole_number_from_1_to_100() -> None:
    assert parse_config({}).service.pool_size == 10
    assert parse_config({"service": {"pool_size": 25}}).service.pool_size == 25
    for bad in (0, 101, "10", 2.5, True):
        assert only_problem({"service": {"pool_size": bad}}) == (
            f"service.pool_size: must be a whole number from 1 to 100 (got {bad!r})"
        )
