"""`[[alerts]]` validation: what is accepted, what is refused with which message, and that a
secret filled in from the environment never shows in a message, a repr or the API view."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from queue_service.config import ConfigError, parse_config
from queue_service.store import AlertRoute

ENV = {"HOOK": "https://hooks.slack.com/services/T0/B0/very-secret", "TOKEN": "tok-secret"}


def problems(*alerts: dict[str, Any], environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config({"alerts": list(alerts)}, environ=ENV if environ is None else environ)
    return list(caught.value.problems)


def test_a_full_alert_becomes_its_route() -> None:
    config = parse_config(
        {
            "alerts": [
                {
                    "name": "ops-slack",
                    "url": "${HOOK}",
                    "format": "slack",
                    "statuses": ["failed", "dead"],
                    "running_longer_than": "30m",
                    "plugins": ["withings"],
                    "commands": ["poll"],
                    "sources": ["databricks"],
                    "headers": {"Authorization": "Bearer ${TOKEN}"},
                    "rate_limit": "5m",
                    "timeout_seconds": 5,
                    "max_attempts": 3,
                    "backoff_initial_seconds": 1,
                    "backoff_max_seconds": 60,
                }
            ]
        },
        environ=ENV,
    )
    [alert] = config.alerts
    assert alert.url == ENV["HOOK"] and alert.headers == {"Authorization": "Bearer tok-secret"}
    assert alert.target == "https://hooks.slack.com"
    assert "secret" not in repr(alert) and "secret" not in repr(config)
    assert alert.route() == AlertRoute(
        alert="ops-slack",
        statuses=("failed", "dead"),
        running_seconds=1800,
        plugins=("withings",),
        commands=("poll",),
        sources=("databricks",),
        rate_limit_seconds=300.0,
    )


def test_defaults_alert_on_every_failure_status_without_a_rate_limit() -> None:
    [alert] = parse_config({"alerts": [{"name": "a", "url": "http://127.0.0.1:9000/x"}]}).alerts
    assert alert.route() == AlertRoute(alert="a", statuses=("failed", "timed_out", "dead"))
    assert (alert.format, alert.timeout_seconds, alert.max_attempts) == ("json", 10.0, 12)
    assert alert.target == "http://127.0.0.1:9000"


def test_invalid_alerts_are_refused_with_their_keys() -> None:
    found = problems(
        {"name": "bad name!", "url": "http://x", "statuses": ["canceled"]},
        {"name": "b", "url": "ftp://example.com/${TOKEN}", "rate_limit": "5", "color": 1},
        {"name": "c", "url": "http://x", "statuses": []},
        {"name": "d", "url": "http://x", "headers": {"Idempotency-Key": "x", "Bad Name": "y"}},
        {"name": "e", "url": "http://x", "backoff_initial_seconds": 9, "backoff_max_seconds": 1},
        {"name": "f", "url": "${UNSET}"},
    )
    text = "\n".join(found)
    assert "alerts[0].name: 'bad name!' is not an alert name" in text
    assert "alerts[0].statuses[0]: Input should be 'failed', 'timed_out' or 'dead'" in text
    assert "alerts[1].url: must be an http:// or https:// URL with a host" in text
    assert "alerts[1].rate_limit: '5' is not a duration" in text
    assert "alerts[1].color: unknown key; allowed keys: name, url, format" in text
    assert "alerts[2]: would never fire: give statuses, running_longer_than, or both" in text
    assert "alerts[3].headers: 'Idempotency-Key' is set by queue-service itself" in text
    assert "alerts[4]: backoff_initial_seconds must not exceed backoff_max_seconds" in text
    assert "alerts[5].url: environment variable ${UNSET} is not set" in text
    assert "tok-secret" not in text  # a filled-in secret is never quoted


def test_alert_names_are_unique() -> None:
    found = problems({"name": "a", "url": "http://x"}, {"name": "a", "url": "http://y"})
    assert found == ["alerts: duplicate alert name 'a'; names must be unique"]


def test_the_example_alert_validates_when_uncommented() -> None:
    text = (Path(__file__).parents[1] / "examples" / "queue-service.toml").read_text()
    block = text[text.index("# [[alerts]]") : text.index("# Databricks sync")].splitlines()
    uncommented = "\n".join(
        line[2:] for line in block if line.startswith("# ") and not line.startswith("# #")
    )
    config = parse_config(tomllib.loads(uncommented), environ={"SLACK_WEBHOOK_URL": "https://x/y"})
    [alert] = config.alerts
    assert (alert.name, alert.format, alert.rate_limit) == ("ops-slack", "slack", "5m")
