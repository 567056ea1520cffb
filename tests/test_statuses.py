import pytest

from queue_service.statuses import (
    ACTIVE,
    ALIASES,
    LOCAL_TRANSITIONS,
    STATUS_WORDS,
    TERMINAL,
    Source,
    Status,
    UnknownStatus,
    can_transition,
    normalize_status,
)


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("queued", Status.QUEUED),
        ("pending", Status.QUEUED),
        ("ok", Status.SUCCEEDED),
        ("error", Status.FAILED),
        (" Failed ", Status.FAILED),
        ("TIMED_OUT", Status.TIMED_OUT),
    ],
)
def test_normalize_status_accepts_natives_and_aliases(word: str, expected: Status) -> None:
    assert normalize_status(word) is expected


@pytest.mark.parametrize("word", ["fail", "", "succeeded,failed", "skipped"])
def test_normalize_status_rejects_unknown_words(word: str) -> None:
    with pytest.raises(UnknownStatus):
        normalize_status(word)


def test_vocabulary_is_consistent() -> None:
    assert set(ALIASES.values()) <= set(Status)
    assert set(STATUS_WORDS) == {s.value for s in Status} | set(ALIASES)
    assert ACTIVE | TERMINAL == set(Status) and not ACTIVE & TERMINAL
    assert set(LOCAL_TRANSITIONS) == set(Status)


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
def test_terminal_statuses_are_final_for_local_jobs(terminal: Status) -> None:
    for new in Status:
        assert not can_transition(terminal, new, Source.LOCAL)


def test_databricks_repair_reopens_a_terminal_run() -> None:
    assert can_transition(Status.FAILED, Status.RUNNING, Source.DATABRICKS)
    assert not can_transition(Status.FAILED, Status.RUNNING, Source.LOCAL)


def test_local_lifecycle_edges() -> None:
    assert can_transition(Status.QUEUED, Status.RUNNING)
    assert can_transition(Status.RUNNING, Status.QUEUED)  # retry / recovered lease
    assert not can_transition(Status.QUEUED, Status.SUCCEEDED)  # must run first
