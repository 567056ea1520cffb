-- Named queries for mirrored external runs (the Databricks sync).

-- name: insert_external_job
-- :new_status is the status of a run seen for the first time (syncrows.py).
INSERT INTO jobs (job_id, plugin, command, status, source, result, last_error, attempt,
                  max_attempts, external_id, external_url, created_at, started_at,
                  completed_at, run_after)
VALUES (:job_id, :plugin, :command, :new_status, :source, :result, :last_error, :attempt,
        MAX(:attempt, 1), :external_id, :external_url, :created_at, :started_at,
        :completed_at, :created_at)
ON CONFLICT (job_id) DO NOTHING;

-- name: update_external_job
-- :status NULL keeps the stored status (a remote state we do not know).
-- Rows whose every mirrored field is unchanged are not written at all.
UPDATE jobs SET
    command = :command,
    status = COALESCE(:status, status),
    result = :result,
    last_error = :last_error,
    attempt = :attempt,
    max_attempts = MAX(:attempt, 1),
    external_url = :external_url,
    created_at = :created_at,
    started_at = :started_at,
    completed_at = :completed_at
WHERE job_id = :job_id AND source = :source AND (
    command IS NOT :command OR status IS NOT COALESCE(:status, status)
    OR result IS NOT :result OR last_error IS NOT :last_error OR attempt IS NOT :attempt
    OR external_url IS NOT :external_url OR created_at IS NOT :created_at
    OR started_at IS NOT :started_at OR completed_at IS NOT :completed_at
);

-- name: upsert_sync_state
INSERT INTO sync_state (workspace, host, watermark_ms, last_success_at, last_error,
                        last_error_at, runs_ingested, healthy, extra)
VALUES (:workspace, :host, :watermark_ms, :last_success_at, :last_error, :last_error_at,
        :runs_ingested, :healthy, :extra)
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
SELECT * FROM jobs INDEXED BY jobs_by_status
WHERE status IN ('queued', 'running') AND status != 'succeeded' AND source = :source;
