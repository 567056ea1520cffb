-- Named queries for the worker: claim, heartbeat, finish, recover, release, cancel_queued.
-- Each is one statement (one round trip); the jobs it touches come as arrays (unnest), so a
-- batch costs what one job does.

-- name: plugin_claim_lock
-- With a concurrency cap, claims of one plugin take turns (until COMMIT), so that the
-- running count read next includes every other process's committed claims. Keyed by the
-- jobs table's oid (stores in other schemas have their own) and the plugin.
SELECT pg_advisory_xact_lock('jobs'::regclass::oid::integer, hashtext(%(plugin)s));

-- name: running_count
-- Bounded by the running jobs (every worker's slots), read through the partial index.
SELECT count(*) FROM jobs WHERE status = 'running' AND plugin = %(plugin)s;

-- name: claim_jobs
-- SKIP LOCKED: claimers never wait for each other; a row another transaction is claiming
-- is passed over. The attempt row is opened by the same statement.
WITH picked AS (
    SELECT seq FROM jobs
    WHERE status = 'queued' AND plugin = %(plugin)s AND run_after <= %(now)s
    ORDER BY run_after, seq
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE jobs SET
        status = 'running',
        attempt = jobs.attempt + 1,
        started_at = %(now)s,
        completed_at = NULL,
        lease_expires_at = %(lease_expires_at)s,
        lease_owner = %(owner)s
    FROM picked
    WHERE jobs.seq = picked.seq
    RETURNING jobs.*
), opened AS (
    INSERT INTO job_attempts (job_id, attempt, status, started_at)
    SELECT job_id, attempt, 'running', %(now)s FROM claimed
)
SELECT * FROM claimed ORDER BY run_after, seq;

-- name: heartbeat
UPDATE jobs SET lease_expires_at = %(lease_expires_at)s
FROM unnest(%(job_ids)s::text[], %(attempts)s::integer[]) AS held (job_id, attempt)
WHERE jobs.job_id = held.job_id AND jobs.attempt = held.attempt
  AND jobs.status = 'running' AND jobs.lease_owner = %(owner)s
RETURNING jobs.job_id, jobs.cancel_requested;

-- name: finish_attempts
-- Several attempts' ends in one statement, each named by (job_id, attempt, owner); they
-- travel as one JSON array of objects (result, events and logs as their JSON text). Only the
-- holder of the current attempt may finish it; a lost lease leaves its row out (the caller
-- gets None), so of two ends of one job (a stale holder's and the holder's) one applies. A cancel requested
-- while the attempt ran wins over a retry: the job ends canceled instead of running again.
WITH ends AS (
    SELECT * FROM json_to_recordset(%(ends)s::json) AS e (
        job_id text, attempt integer, owner text, status text, result text, events text,
        logs text, error text, run_after text, attempt_status text, exit_code integer,
        stderr_tail text)
), finished AS (
    UPDATE jobs SET
        status = CASE WHEN e.status = 'queued' AND jobs.cancel_requested <> 0
                      THEN 'canceled' ELSE e.status END,
        result = e.result,
        events = e.events,
        logs = e.logs,
        last_error = COALESCE(e.error, jobs.last_error),
        completed_at = CASE WHEN e.status = 'queued' AND jobs.cancel_requested = 0
                            THEN NULL ELSE %(now)s END,
        run_after = COALESCE(e.run_after, jobs.run_after),
        lease_expires_at = NULL,
        lease_owner = NULL
    FROM ends AS e
    WHERE jobs.job_id = e.job_id AND jobs.status = 'running'
      AND jobs.lease_owner = e.owner AND jobs.attempt = e.attempt
    RETURNING jobs.job_id, jobs.attempt, e.owner, jobs.status
), recorded AS (
    UPDATE job_attempts SET
        status = e.attempt_status,
        completed_at = %(now)s,
        exit_code = e.exit_code,
        error = e.error,
        stderr_tail = e.stderr_tail
    FROM finished AS f
    JOIN ends AS e ON e.job_id = f.job_id AND e.attempt = f.attempt AND e.owner = f.owner
    WHERE job_attempts.job_id = f.job_id AND job_attempts.attempt = f.attempt
      AND job_attempts.status = 'running'
)
SELECT job_id, attempt, owner, status FROM finished;

-- name: merge_plugin_state
-- ductile's shallow merge, as SQLite's store does it: each top-level key of the updates
-- replaces the stored one whole and null is stored as a value. The `json` type keeps each
-- value's text as written (numbers stay exact, keys keep their order): the stored keys that
-- are not updated come first, then the updated ones. The row lock of ON CONFLICT DO UPDATE
-- makes concurrent merges of one plugin take turns.
INSERT INTO plugin_state AS s (plugin, state, updated_at)
VALUES (%(plugin)s, %(updates)s, %(now)s)
ON CONFLICT (plugin) DO UPDATE SET state = (
    SELECT '{' || string_agg(to_json(m.key)::text || ':' || m.value::text, ','
                             ORDER BY m.part, m.ord) || '}'
    FROM (
        SELECT 0 AS part, cur.ord, cur.key, cur.value
        FROM json_each(s.state::json) WITH ORDINALITY AS cur (key, value, ord)
        WHERE cur.key NOT IN (SELECT json_object_keys(excluded.state::json))
        UNION ALL
        SELECT 1, upd.ord, upd.key, upd.value
        FROM json_each(excluded.state::json) WITH ORDINALITY AS upd (key, value, ord)
    ) AS m
), updated_at = excluded.updated_at;

-- name: get_plugin_state
SELECT state FROM plugin_state WHERE plugin = %(plugin)s;

-- name: recover_expired
-- Each expired lease is recovered once, whichever processes recover at the same time:
-- SKIP LOCKED passes over rows another recovery (or their holder's late finish) has locked,
-- and the UPDATE checks the lease again. A lost attempt counts: the job retries while
-- attempts remain, else it is dead; a cancel requested while the holder died is honoured.
WITH expired AS (
    SELECT seq FROM jobs
    WHERE status = 'running' AND lease_expires_at < %(now)s
    ORDER BY lease_expires_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), recovered AS (
    UPDATE jobs SET
        status = CASE
            WHEN jobs.cancel_requested <> 0 THEN 'canceled'
            WHEN jobs.attempt < jobs.max_attempts THEN 'queued'
            ELSE 'dead' END,
        last_error = 'attempt ' || jobs.attempt || ' lost: its lease expired (the worker stopped)',
        completed_at = CASE
            WHEN jobs.cancel_requested <> 0 OR jobs.attempt >= jobs.max_attempts THEN %(now)s
            ELSE NULL END,
        run_after = %(now)s,
        lease_expires_at = NULL,
        lease_owner = NULL
    FROM expired
    WHERE jobs.seq = expired.seq AND jobs.status = 'running' AND jobs.lease_expires_at < %(now)s
    RETURNING jobs.job_id, jobs.status, jobs.attempt, jobs.seq
), lost AS (
    UPDATE job_attempts SET
        status = 'lost',
        completed_at = %(now)s,
        error = 'the lease expired: the worker running this attempt stopped (crash, kill or hang)'
    FROM recovered AS r
    WHERE job_attempts.job_id = r.job_id AND job_attempts.attempt = r.attempt
      AND job_attempts.status = 'running'
)
SELECT job_id, status, attempt FROM recovered ORDER BY seq;

-- name: release_jobs
-- Graceful shutdown: back to queued without spending the attempt, unless a cancel was
-- requested meanwhile: then the job ends canceled rather than run again. The attempt stays
-- on record as interrupted; it does not count, so its number is reused.
WITH released AS (
    UPDATE jobs SET
        status = CASE WHEN jobs.cancel_requested <> 0 THEN 'canceled' ELSE 'queued' END,
        attempt = jobs.attempt - 1,
        started_at = NULL,
        completed_at = CASE WHEN jobs.cancel_requested <> 0 THEN %(now)s ELSE NULL END,
        last_error = CASE WHEN jobs.cancel_requested <> 0 THEN 'canceled by request'
                          ELSE jobs.last_error END,
        run_after = %(now)s,
        lease_expires_at = NULL,
        lease_owner = NULL
    FROM unnest(%(job_ids)s::text[], %(attempts)s::integer[]) AS held (job_id, attempt)
    WHERE jobs.job_id = held.job_id AND jobs.status = 'running'
      AND jobs.lease_owner = %(owner)s AND jobs.attempt = held.attempt
    RETURNING jobs.job_id, held.attempt
), interrupted AS (
    UPDATE job_attempts SET
        status = 'interrupted',
        completed_at = %(now)s,
        error = 'the worker shut down before this attempt finished; it does not count'
    FROM released AS r
    WHERE job_attempts.job_id = r.job_id AND job_attempts.attempt = r.attempt
      AND job_attempts.status = 'running'
)
SELECT job_id FROM released;

-- name: cancel_queued_batch
-- Bulk cancel by filter (an operator's explicit choice, e.g. for a plugin that is gone).
-- A job being claimed right now is passed over: it is running once the claim commits.
WITH picked AS (
    SELECT seq FROM jobs
    WHERE status = 'queued' AND plugin = %(plugin)s AND source = 'local'
      AND (%(command)s::text IS NULL OR command = %(command)s::text)
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE jobs SET status = 'canceled', completed_at = %(now)s, last_error = %(reason)s
FROM picked
WHERE jobs.seq = picked.seq AND jobs.status = 'queued'
RETURNING jobs.job_id;
