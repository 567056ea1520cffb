-- Named queries for the scheduler's persisted state.

-- name: get_schedule_states
SELECT schedule_key, next_run_at, last_fired_at, last_job_id FROM schedule_state;

-- name: claim_schedule_slot
-- The primary key makes each (schedule, slot) fire at most once, across processes: a
-- second process inserting the same slot waits for the first one's transaction, then
-- inserts nothing (and enqueues nothing) when it committed.
INSERT INTO schedule_fires (schedule_key, slot, fired_at)
VALUES (%(schedule_key)s, %(slot)s, %(now)s)
ON CONFLICT (schedule_key, slot) DO NOTHING
RETURNING slot;

-- name: record_slot_job
UPDATE schedule_fires SET job_id = %(job_id)s
WHERE schedule_key = %(schedule_key)s AND slot = %(slot)s;

-- name: schedule_has_active_job
SELECT job_id FROM jobs
WHERE schedule_id = %(schedule_key)s AND status IN ('queued', 'running')
LIMIT 1;

-- name: advance_schedule
-- next_run_at only moves forward here: a slower process must not rewind it.
INSERT INTO schedule_state AS s (schedule_key, next_run_at, last_fired_at, last_job_id, updated_at)
VALUES (%(schedule_key)s, %(next_run_at)s, %(fired_at)s, %(job_id)s, %(now)s)
ON CONFLICT (schedule_key) DO UPDATE SET
    next_run_at = GREATEST(COALESCE(s.next_run_at, ''), excluded.next_run_at),
    last_fired_at = COALESCE(excluded.last_fired_at, s.last_fired_at),
    last_job_id = COALESCE(excluded.last_job_id, s.last_job_id),
    updated_at = excluded.updated_at;

-- name: set_schedule_next_run
INSERT INTO schedule_state (schedule_key, next_run_at, updated_at)
VALUES (%(schedule_key)s, %(next_run_at)s, %(now)s)
ON CONFLICT (schedule_key) DO UPDATE SET
    next_run_at = excluded.next_run_at, updated_at = excluded.updated_at;

-- name: schedule_lock
-- The fires of one schedule take turns (until COMMIT): with skip_if_running, the active
-- job check must see the job another process's fire of the previous slot just enqueued.
SELECT pg_advisory_xact_lock('schedule_state'::regclass::oid::integer, hashtext(%(schedule_key)s));
