"""The HTTP edge of `serve`: which proxies are believed, ambiguous requests, slow clients."""

from __future__ import annotations

import pytest

from queue_service.config import ConfigError, parse_config


def test_forwarded_allow_ips_defaults_to_nobody() -> None:
    assert parse_config({}).service.forwarded_allow_ips == ()
    config = parse_config({"service": {"forwarded_allow_ips": ["10.0.0.1", " 10.0.0.0/8", "::1"]}})
    assert config.service.forwarded_allow_ips == ("10.0.0.1", "10.0.0.0/8", "::1")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("127.0.0.1", "must be a list of IP addresses or networks"),
        (["localhost"], "'localhost' is not an IP address or network"),
        (["10.0.0.0/33"], "'10.0.0.0/33' is not an IP address or network"),
        ([1], "must be a list"),
    ],
)
def test_forwarded_allow_ips_names_a_bad_entry(value: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"service": {"forwarded_allow_ips": value}})
    (problem,) = info.value.problems
    assert problem.startswith("service.forwarded_allow_ips: ") and message in problem
