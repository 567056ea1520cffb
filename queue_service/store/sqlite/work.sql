-- Named queries for the worker: claim, heartbeat, finish, recover, release, cancel, prune.

-- name: running_count
SELECT COALESCE(SUM(n), 0) FROM (
    SELECT n FROM job_counts WHERE plugin = :plugin AND status = 'running' AND source = 'local'
    UNION ALL
    SELECT d FROM job_count_deltas
    WHERE plugin = :plugin AND status = 'running' AND source = 'local'
);

-- name: claim_jobs
UPDATE jobs SET
    status = 'running',
    attempt = attempt + 1,
    started_at = :now,
    completed_at = NULL,
    lease_expires_at = :lease_expires_at,
    lease_owner = :owner
WHERE seq IN (
    SELECT seq FROM jobs INDEXED BY jobs_claimable
    WHERE status = 'queued' AND plugin = :plugin AND run_after <= :now
    ORDER BY run_after, seq
    LIMIT :limit
)
RETURNING *;

-- name: insert_attempt
INSERT INTO job_attempts (job_id, attempt, status, started_at)
VALUES (:job_id, :attempt, 'running', :now);

-- name: heartbeat
UPDATE jobs SET lease_expires_at = :lease_expires_at
WHERE job_id = :job_id AND status = 'running' AND lease_owner = :owner AND attempt = :attempt
RETURNING cancel_requested;

-- name: finish_job
-- Only the holder of the current attempt may finish it; a lost lease makes this a no-op.
-- A cancel requested while the attempt ran wins over a retry: the job ends canceled
-- instead of running the plugin again.
UPDATE jobs SET
    status = CASE WHEN :status = 'queued' AND cancel_requested THEN 'canceled' ELSE :status END,
    result = :result,
    events = :events,
    logs = :logs,
    last_error = COALESCE(:last_error, last_error),
    completed_at = CASE WHEN :status = 'queued' AND NOT cancel_requested THEN NULL ELSE :now END,
    run_after = COALESCE(:run_after, run_after),
    lease_expires_at = NULL,
    lease_owner = NULL
WHERE job_id = :job_id AND status = 'running' AND lease_owner = :owner AND attempt = :attempt
RETURNING status;

-- name: finish_attempt
UPDATE job_attempts SET
    status = :attempt_status,
    completed_at = :now,
    exit_code = :exit_code,
    error = :error,
    stderr_tail = :stderr_tail
WHERE job_id = :job_id AND attempt = :attempt AND status = 'running';

-- name: merge_plugin_state
-- ductile's shallow merge: each top-level key of :updates replaces the stored one whole
-- (nested objects are not merged) and null is stored as a value, so no key is deleted.
-- Values are copied as their JSON text (`doc -> fullkey`), which keeps numbers exact; the
-- path cannot name a key holding '"', so such a value is rebuilt from json_each instead.
INSERT INTO plugin_state (plugin, state, updated_at) VALUES (:plugin, json(:updates), :now)
ON CONFLICT (plugin) DO UPDATE SET state = (
    SELECT json_group_object(merged.key, json(merged.value_json)) FROM (
        SELECT cur.key,
            coalesce(plugin_state.state -> cur.fullkey, CASE cur.type
                WHEN 'true' THEN 'true' WHEN 'false' THEN 'false'
                WHEN 'object' THEN cur.value WHEN 'array' THEN cur.value
                ELSE json_quote(cur.value) END) AS value_json
        FROM json_each(plugin_state.state) AS cur
        WHERE cur.key NOT IN (SELECT upd.key FROM json_each(excluded.state) AS upd)
        UNION ALL
        SELECT upd.key,
            coalesce(excluded.state -> upd.fullkey, CASE upd.type
                WHEN 'true' THEN 'true' WHEN 'false' THEN 'false'
                WHEN 'object' THEN upd.value WHEN 'array' THEN upd.value
                ELSE json_quote(upd.value) END)
        FROM json_each(excluded.state) AS upd
    ) AS merged
), updated_at = :now;

-- name: get_plugin_state
SELECT state FROM plugin_state WHERE plugin = :plugin;

-- name: expired_leases
-- Recovery picks its rows once, so the attempt rows and the jobs it updates are the same.
SELECT seq, job_id, attempt FROM jobs INDEXED BY jobs_leases
WHERE status = 'running' AND lease_expires_at < :now
ORDER BY lease_expires_at
LIMIT :limit;

-- name: expired_attempts
UPDATE job_attempts SET
    status = 'lost',
    completed_at = :now,
    error = 'the lease expired: the worker running this attempt stopped (crash, kill or hang)'
WHERE status = 'running' AND (job_id, attempt) IN (
    SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(:pairs)
);

-- name: recover_expired
-- A lost attempt counts: the job retries while attempts remain, else it is dead.
-- A cancel requested while the holder died is honoured.
UPDATE jobs SET
    status = CASE
        WHEN cancel_requested THEN 'canceled'
        WHEN attempt < max_attempts THEN 'queued'
        ELSE 'dead' END,
    last_error = 'attempt ' || attempt || ' lost: its lease expired (the worker stopped)',
    completed_at = CASE
        WHEN cancel_requested OR attempt >= max_attempts THEN :now ELSE NULL END,
    run_after = :now,
    lease_expires_at = NULL,
    lease_owner = NULL
WHERE seq IN (SELECT value FROM json_each(:seqs))
  AND status = 'running' AND lease_expires_at < :now
RETURNING job_id, status, attempt;

-- name: release_attempt
-- The attempt stays on record as interrupted; it is not counted, so its number is reused.
UPDATE job_attempts SET
    status = 'interrupted',
    completed_at = :now,
    error = 'the worker shut down before this attempt finished; it does not count'
WHERE job_id = :job_id AND attempt = :attempt AND status = 'running';

-- name: release_job
-- Graceful shutdown: back to queued without spending the attempt, unless a cancel was
-- requested meanwhile: then the job ends canceled rather than run again.
UPDATE jobs SET
    status = CASE WHEN cancel_requested THEN 'canceled' ELSE 'queued' END,
    attempt = attempt - 1,
    started_at = NULL,
    completed_at = CASE WHEN cancel_requested THEN :now ELSE NULL END,
    last_error = CASE WHEN cancel_requested THEN 'canceled by request' ELSE last_error END,
    run_after = :now,
    lease_expires_at = NULL,
    lease_owner = NULL
WHERE job_id = :job_id AND status = 'running' AND lease_owner = :owner AND attempt = :attempt
RETURNING job_id;

-- name: cancel_queued
UPDATE jobs SET status = 'canceled', completed_at = :now, last_error = :reason
WHERE job_id = :job_id AND status = 'queued' AND source = 'local'
RETURNING status;

-- name: request_cancel
UPDATE jobs SET cancel_requested = 1
WHERE job_id = :job_id AND status = 'running' AND source = 'local'
RETURNING status;

-- name: queued_by_plugin
-- Queued local jobs per plugin, from the exact counts (no table walk).
SELECT plugin, SUM(n) FROM (
    SELECT plugin, n FROM job_counts WHERE status = 'queued' AND source = 'local'
    UNION ALL
    SELECT plugin, d FROM job_count_deltas WHERE status = 'queued' AND source = 'local'
) GROUP BY plugin HAVING SUM(n) > 0;

-- name: oldest_queued_run_after
-- One seek in the claim index: the earliest run_after of the plugin's queued local jobs.
SELECT run_after FROM jobs INDEXED BY jobs_claimable
WHERE status = 'queued' AND plugin = :plugin AND source = 'local'
ORDER BY run_after LIMIT 1;

-- name: cancel_queued_batch
-- Bulk cancel by filter (an operator's explicit choice, e.g. for a plugin that is gone).
UPDATE jobs SET status = 'canceled', completed_at = :now, last_error = :reason
WHERE seq IN (
    SELECT seq FROM jobs INDEXED BY jobs_by_status_plugin_command
    WHERE status = 'queued' AND status != 'succeeded' AND plugin = :plugin
      AND command = COALESCE(:command, command) AND source = 'local'
    LIMIT :limit
)
RETURNING job_id;

-- name: prune_finished
DELETE FROM jobs WHERE seq IN (
    SELECT seq FROM jobs INDEXED BY jobs_finished
    WHERE status NOT IN ('queued', 'running') AND completed_at < :before
    ORDER BY completed_at
    LIMIT :limit
);

-- name: prune_schedule_fires
DELETE FROM schedule_fires WHERE (schedule_key, slot) IN (
    SELECT schedule_key, slot FROM schedule_fires WHERE fired_at < :before LIMIT :limit
);
