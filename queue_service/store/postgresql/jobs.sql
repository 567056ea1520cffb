-- Named queries of the PostgreSQL store: jobs (enqueue, read, status changes, pruning).
-- Parameters are psycopg's %(name)s, bound by the server.

-- name: insert_jobs
-- A run of jobs without a dedupe_key (they cannot conflict), one statement whatever their
-- number: the jobs travel as one JSON array of objects (cheaper to build and to send than
-- an array per column), and seq follows the order given, as the listing's tie-break must.
-- `payload` is the job's JSON text as a string, stored exactly as given.
INSERT INTO jobs (job_id, plugin, command, status, source, payload, attempt, max_attempts,
                  submitted_by, submitted_by_token, dedupe_key, schedule_id, created_at,
                  run_after)
SELECT job_id, plugin, command, 'queued', 'local', payload, 0, max_attempts,
       submitted_by, submitted_by_token, NULL, schedule_id, %(created_at)s, run_after
FROM ROWS FROM (
    json_to_recordset(%(jobs)s::json) AS (
        job_id text, plugin text, command text, payload text, max_attempts integer,
        submitted_by text, submitted_by_token bigint, schedule_id text, run_after text)
) WITH ORDINALITY AS j (job_id, plugin, command, payload, max_attempts, submitted_by,
                        submitted_by_token, schedule_id, run_after, n)
ORDER BY n;

-- name: insert_job_deduped
-- A job with a dedupe_key: inserted, or the queued or running job of the same plugin,
-- command and submitter that holds the key (deduplicated = true). No row at all means the
-- holder committed after this statement's snapshot, or finished meanwhile: run it again.
WITH inserted AS (
    INSERT INTO jobs (job_id, plugin, command, status, source, payload, attempt, max_attempts,
                      submitted_by, submitted_by_token, dedupe_key, schedule_id, created_at,
                      run_after)
    VALUES (%(job_id)s, %(plugin)s, %(command)s, 'queued', 'local', %(payload)s, 0,
            %(max_attempts)s, %(submitted_by)s, %(submitted_by_token)s, %(dedupe_key)s,
            %(schedule_id)s, %(created_at)s, %(run_after)s)
    ON CONFLICT (plugin, command, coalesce(submitted_by, ''), dedupe_key)
        WHERE dedupe_key IS NOT NULL AND status IN ('queued', 'running')
        DO NOTHING
    RETURNING job_id
)
SELECT job_id, false FROM inserted
UNION ALL
(SELECT job_id, true FROM jobs
 WHERE NOT EXISTS (SELECT 1 FROM inserted)
   AND plugin = %(plugin)s AND command = %(command)s AND dedupe_key = %(dedupe_key)s
   AND coalesce(submitted_by, '') = coalesce(%(submitted_by)s, '')
   AND status IN ('queued', 'running')
 LIMIT 1);

-- name: get_job
SELECT * FROM jobs WHERE job_id = %(job_id)s;

-- name: get_attempts
SELECT attempt, status, started_at, completed_at, exit_code, error, stderr_tail
FROM job_attempts WHERE job_id = %(job_id)s ORDER BY id;

-- name: lock_job_status
-- The job's status, locked until the transaction ends: the change that follows is checked
-- against it.
SELECT status, source FROM jobs WHERE job_id = %(job_id)s FOR UPDATE;

-- name: set_status
-- A generic legal transition; %(allowed_from)s comes from queue_service.statuses.
UPDATE jobs SET
    status = %(status)s,
    result = COALESCE(%(result)s, result),
    last_error = COALESCE(%(last_error)s, last_error),
    started_at = CASE WHEN %(status)s = 'running' THEN %(now)s ELSE started_at END,
    completed_at = CASE WHEN %(status)s IN ('queued', 'running') THEN NULL ELSE %(now)s END,
    lease_expires_at = CASE WHEN %(status)s = 'running' THEN lease_expires_at ELSE NULL END
WHERE job_id = %(job_id)s AND status = ANY(%(allowed_from)s::text[])
RETURNING status;

-- name: cancel_job
-- Cancel a queued local job, or flag a running one; either way the job's status and source
-- before the change come back (nothing at all: no such job).
WITH target AS (
    SELECT job_id, status, source FROM jobs WHERE job_id = %(job_id)s FOR UPDATE
), canceled AS (
    UPDATE jobs SET status = 'canceled', completed_at = %(now)s, last_error = %(reason)s
    FROM target
    WHERE jobs.job_id = target.job_id AND target.status = 'queued' AND target.source = 'local'
    RETURNING jobs.job_id
), flagged AS (
    UPDATE jobs SET cancel_requested = 1
    FROM target
    WHERE jobs.job_id = target.job_id AND target.status = 'running' AND target.source = 'local'
    RETURNING jobs.job_id
)
SELECT status, source, EXISTS (SELECT 1 FROM canceled), EXISTS (SELECT 1 FROM flagged)
FROM target;

-- Pruning: finished jobs (their attempts go with them), fired schedule slots, and the
-- alert outbox's finished deliveries and old events. Rows another pruner holds are
-- skipped, not waited for.

-- name: prune_finished
DELETE FROM jobs WHERE seq IN (
    SELECT seq FROM jobs
    WHERE status NOT IN ('queued', 'running') AND completed_at < %(before)s
    ORDER BY completed_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
);

-- name: prune_schedule_fires
DELETE FROM schedule_fires WHERE (schedule_key, slot) IN (
    SELECT schedule_key, slot FROM schedule_fires WHERE fired_at < %(before)s
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
);

-- name: prune_alert_deliveries
DELETE FROM alert_deliveries WHERE seq IN (
    SELECT seq FROM alert_deliveries
    WHERE status <> 'pending' AND finished_at < %(before)s
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
);

-- name: prune_alert_events
-- Events recorded before %(before)s that no pending delivery needs. An alert whose cursor
-- is still behind them (no process ran it for the whole retention) skips them.
DELETE FROM alert_events WHERE event_id IN (
    SELECT event_id FROM alert_events AS e
    WHERE recorded_at < %(before)s
      AND NOT EXISTS (
          SELECT 1 FROM alert_deliveries AS d
          WHERE d.status = 'pending'
            AND (d.first_event_id = e.event_id OR d.last_event_id = e.event_id)
      )
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
);
