-- Named queries for the scheduler's persisted state.

-- name: get_schedule_states
SELECT schedule_key, next_run_at, last_fired_at, last_job_id FROM schedule_state;

-- name: claim_schedule_slot
-- The primary key makes each (schedule, slot) fire at most once, across processes.
INSERT INTO schedule_fires (schedule_key, slot, fired_at) VALUES (:schedule_key, :slot, :now)
ON CONFLICT (schedule_key, slot) DO NOTHING
RETURNING slot;

-- name: record_slot_job
UPDATE schedule_fires SET job_id = :job_id WHERE schedule_key = :schedule_key AND slot = :slot;

-- name: schedule_has_active_job
SELECT job_id FROM jobs INDEXED BY jobs_schedule_active
WHERE schedule_id = :schedule_key AND status IN ('queued', 'running')
LIMIT 1;

-- name: advance_schedule
-- next_run_at only moves forward here: a slower process must not rewind it.
INSERT INTO schedule_state (schedule_key, next_run_at, last_fired_at, last_job_id, updated_at)
VALUES (:schedule_key, :next_run_at, :fired_at, :job_id, :now)
ON CONFLICT (schedule_key) DO UPDATE SET
    next_run_at = MAX(COALESCE(schedule_state.next_run_at, ''), excluded.next_run_at),
    last_fired_at = COALESCE(excluded.last_fired_at, schedule_state.last_fired_at),
    last_job_id = COALESCE(excluded.last_job_id, schedule_state.last_job_id),
    updated_at = excluded.updated_at;

-- name: set_schedule_next_run
INSERT INTO schedule_state (schedule_key, next_run_at, updated_at)
VALUES (:schedule_key, :next_run_at, :now)
ON CONFLICT (schedule_key) DO UPDATE SET
    next_run_at = excluded.next_run_at, updated_at = excluded.updated_at;
