-- Named queries for mirrored external runs (the Databricks sync).

-- name: upsert_external_jobs
-- A page of runs in one statement: the runs already stored are updated (only when a
-- mirrored field changed; a NULL status keeps the stored status, a remote state we do
-- not know), the others inserted (with new_status). Both parts see the statement's one
-- snapshot, so a run is either updated or inserted, never both. Each parameter is the
-- array of one column; the caller sends no job id twice in one statement.
WITH runs AS (
    SELECT * FROM unnest(
        %(job_id)s::text[], %(plugin)s::text[], %(command)s::text[],
        %(new_status)s::text[], %(status)s::text[], %(source)s::text[],
        %(result)s::text[], %(last_error)s::text[], %(attempt)s::integer[],
        %(external_id)s::text[], %(external_url)s::text[], %(created_at)s::text[],
        %(started_at)s::text[], %(completed_at)s::text[]
    ) AS r (job_id, plugin, command, new_status, status, source, result, last_error, attempt,
            external_id, external_url, created_at, started_at, completed_at)
), updated AS (
    UPDATE jobs SET
        command = r.command,
        status = COALESCE(r.status, jobs.status),
        result = r.result,
        last_error = r.last_error,
        attempt = r.attempt,
        max_attempts = GREATEST(r.attempt, 1),
        external_url = r.external_url,
        created_at = r.created_at,
        started_at = r.started_at,
        completed_at = r.completed_at
    FROM runs AS r
    WHERE jobs.job_id = r.job_id AND jobs.source = r.source AND (
        jobs.command IS DISTINCT FROM r.command
        OR jobs.status IS DISTINCT FROM COALESCE(r.status, jobs.status)
        OR jobs.result IS DISTINCT FROM r.result
        OR jobs.last_error IS DISTINCT FROM r.last_error
        OR jobs.attempt IS DISTINCT FROM r.attempt
        OR jobs.external_url IS DISTINCT FROM r.external_url
        OR jobs.created_at IS DISTINCT FROM r.created_at
        OR jobs.started_at IS DISTINCT FROM r.started_at
        OR jobs.completed_at IS DISTINCT FROM r.completed_at)
    RETURNING jobs.job_id
), inserted AS (
    INSERT INTO jobs (job_id, plugin, command, status, source, result, last_error, attempt,
                      max_attempts, external_id, external_url, created_at, started_at,
                      completed_at, run_after)
    SELECT job_id, plugin, command, new_status, source, result, last_error, attempt,
           GREATEST(attempt, 1), external_id, external_url, created_at, started_at,
           completed_at, created_at
    FROM runs
    ON CONFLICT (job_id) DO NOTHING
    RETURNING job_id
)
SELECT (SELECT count(*) FROM inserted), (SELECT count(*) FROM updated);

-- name: upsert_sync_state
INSERT INTO sync_state (workspace, host, watermark_ms, last_success_at, last_error,
                        last_error_at, runs_ingested, healthy, extra)
VALUES (%(workspace)s, %(host)s, %(watermark_ms)s, %(last_success_at)s, %(last_error)s,
        %(last_error_at)s, %(runs_ingested)s, %(healthy)s, %(extra)s)
ON CONFLICT (workspace) DO UPDATE SET
    host = excluded.host,
    watermark_ms = excluded.watermark_ms,
    last_success_at = excluded.last_success_at,
    last_error = excluded.last_error,
    last_error_at = excluded.last_error_at,
    runs_ingested = excluded.runs_ingested,
    healthy = excluded.healthy,
    extra = excluded.extra;

-- name: get_sync_states
SELECT workspace, host, watermark_ms, last_success_at, last_error, last_error_at,
       runs_ingested, healthy, extra
FROM sync_state ORDER BY workspace;

-- name: active_external_jobs
SELECT * FROM jobs WHERE status IN ('queued', 'running') AND source = %(source)s;

-- name: try_sync_lock
-- One sync of a workspace at a time across processes and hosts: a session lock, held by
-- a connection of its own until it closes (or its process dies). Keyed by the sync_state
-- table's oid (stores in other schemas have their own) and the workspace.
SELECT pg_try_advisory_lock('sync_state'::regclass::oid::integer, hashtext(%(workspace)s));
