from datetime import timedelta

import pytest

from queue_service.timeutil import format_ts, parse_duration, parse_rfc3339


def normalize_ts(text: str) -> str:
    """RFC 3339 text to the store's fixed-width UTC text, as the API reads time bounds."""
    return format_ts(parse_rfc3339(text))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-23T15:46:40Z", "2026-11-23T15:46:40.000000Z"),
        ("2026-11-23T16:46:40+01:00", "2026-11-23T15:46:40.000000Z"),
        ("2026-11-23t15:46:40.5z", "2026-11-23T15:46:40.500000Z"),
        ("2026-11-23T15:46:40.123456789Z", "2026-11-23T15:46:40.123456Z"),
    ],
)
def test_normalize_ts_gives_fixed_width_utc(text: str, expected: str) -> None:
    assert normalize_ts(text) == expected
    assert len(normalize_ts(text)) == 27


@pytest.mark.parametrize(
    "text", ["2026-11-23", "2026-11-23T15:46:40", "yesterday", "2026-13-01T00:00:00Z", ""]
)
def test_normalize_ts_rejects_non_rfc3339(text: str) -> None:
    with pytest.raises(ValueError, match="RFC 3339|valid date"):
        normalize_ts(text)


def test_text_order_is_time_order() -> None:
    a = normalize_ts("2026-11-23T23:59:59.999999+00:00")
    b = normalize_ts("2026-11-24T01:00:00+02:00")  # 23:00 UTC on the 23rd: earlier
    assert b < a


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("30d", 30 * 86400)]
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["0s", "5", "1w", "-1h", "h"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_format_ts_pads_early_years_so_text_order_holds() -> None:
    from datetime import UTC, datetime

    from queue_service.timeutil import format_ts

    early = format_ts(datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC))
    assert early == "0999-01-02T03:04:05.000006Z"
    assert early < format_ts(datetime(2026, 1, 1, tzinfo=UTC))
