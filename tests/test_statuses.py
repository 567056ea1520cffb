"""The status vocabulary as the rest of the service sees it.

Rather than restate the tables in queue_service/statuses.py, these tests check what the tables
promise: every word a client may send resolves, the lifecycle has the shape a job queue needs,
and the store accepts exactly the transitions the vocabulary calls legal and refuses the rest.
"""

from __future__ import annotations

import uuid

import pytest

from queue_service.statuses import (
    STATUS_WORDS,
    TERMINAL,
    Source,
    Status,
    UnknownStatus,
    can_transition,
    normalize_status,
)
from queue_service.store import ExternalJob, IllegalTransition, NewJob, SQLiteStore
from queue_service.timeutil import now_ts

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("queued", Status.QUEUED),
        ("pending", Status.QUEUED),  # ductile's words
        ("ok", Status.SUCCEEDED),
        ("error", Status.FAILED),
        (" Failed ", Status.FAILED),
        ("TIMED_OUT", Status.TIMED_OUT),
    ],
)
def test_normalize_status_accepts_natives_and_aliases(word: str, expected: Status) -> None:
    assert normalize_status(word) is expected


@pytest.mark.parametrize("word", STATUS_WORDS)
def test_every_documented_word_resolves_in_any_case(word: str) -> None:
    status = normalize_status(word)
    assert normalize_status(f" {word.upper()} ") is status
    assert normalize_status(status.value) is status  # an alias leads to a native status


@pytest.mark.parametrize("word", ["fail", "", "succeeded,failed", "skipped", "okay"])
def test_normalize_status_rejects_unknown_words(word: str) -> None:
    with pytest.raises(UnknownStatus) as info:
        normalize_status(word)
    assert info.value.word == word


def _successors(status: Status) -> set[Status]:
    return {new for new in Status if can_transition(status, new, Source.LOCAL)}


def test_every_status_is_reachable_from_queued() -> None:
    seen, frontier = {Status.QUEUED}, [Status.QUEUED]
    while frontier:
        for new in _successors(frontier.pop()) - seen:
            seen.add(new)
            frontier.append(new)
    assert seen == set(Status)


@pytest.mark.parametrize("status", list(Status))
def test_a_local_status_is_final_exactly_when_it_is_terminal(status: Status) -> None:
    assert (not _successors(status)) is (status in TERMINAL)


def test_a_local_job_must_run_before_it_finishes() -> None:
    for outcome in (Status.SUCCEEDED, Status.FAILED, Status.TIMED_OUT):
        assert not can_transition(Status.QUEUED, outcome)
        assert can_transition(Status.RUNNING, outcome)
    # Canceling or killing a job that never ran is allowed; a retry puts it back in the queue.
    assert can_transition(Status.QUEUED, Status.CANCELED)
    assert can_transition(Status.QUEUED, Status.DEAD)
    assert can_transition(Status.RUNNING, Status.QUEUED)


def test_databricks_repair_reopens_a_terminal_run() -> None:
    assert can_transition(Status.FAILED, Status.RUNNING, Source.DATABRICKS)
    assert not can_transition(Status.FAILED, Status.RUNNING, Source.LOCAL)


async def _local_job_in(store: SQLiteStore, status: Status) -> str:
    """A local job brought to `status` the way the service does it: enqueue, run, finish."""
    job_id = (await store.enqueue(NewJob("echo", "poll"))).job_id
    if status is not Status.QUEUED:
        await store.set_status(job_id, Status.RUNNING)
    if status not in (Status.QUEUED, Status.RUNNING):
        await store.set_status(job_id, status)
    return job_id


async def _databricks_job_in(store: SQLiteStore, status: Status) -> str:
    """A mirrored Databricks run first seen in `status`."""
    now = now_ts()
    job_id = f"databricks-ws-{uuid.uuid4()}"
    await store.upsert_external_jobs(
        [
            ExternalJob(
                job_id=job_id,
                plugin="databricks",
                command="nightly",
                status=status,
                status_if_new=status,
                external_id=job_id,
                external_url=None,
                created_at=now,
                started_at=None,
                completed_at=None,
                attempt=1,
                last_error=None,
                result=None,
            )
        ]
    )
    return job_id


@pytest.mark.parametrize("source", list(Source))
@pytest.mark.parametrize("old", list(Status))
async def test_the_store_accepts_exactly_the_legal_transitions(
    store: SQLiteStore, source: Source, old: Status
) -> None:
    make = _local_job_in if source is Source.LOCAL else _databricks_job_in
    wrong: list[str] = []
    for new in Status:
        job_id = await make(store, old)
        try:
            await store.set_status(job_id, new)
            accepted = True
        except IllegalTransition:
            accepted = False
        job = await store.get_job(job_id)
        assert job is not None
        assert job.status is (new if accepted else old), "a refused transition wrote nothing"
        if accepted is not can_transition(old, new, source):
            wrong.append(f"{old} -> {new} {'accepted' if accepted else 'refused'}")
    assert not wrong, wrong
