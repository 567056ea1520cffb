-- Named queries for the SQLite store. Each block starts with `-- name: NAME`.
-- Loaded once at import; the store calls them by name. No SQL lives elsewhere.

-- name: insert_job
INSERT INTO jobs (job_id, plugin, command, status, source, payload, attempt, max_attempts,
                  submitted_by, dedupe_key, schedule_id, created_at, run_after)
VALUES (:job_id, :plugin, :command, 'queued', 'local', :payload, 0, :max_attempts,
        :submitted_by, :dedupe_key, :schedule_id, :created_at, :run_after)
ON CONFLICT (plugin, command, dedupe_key)
    WHERE dedupe_key IS NOT NULL AND status IN ('queued', 'running')
    DO NOTHING
RETURNING job_id;

-- name: find_active_dedupe
SELECT job_id FROM jobs
WHERE plugin = :plugin AND command = :command AND dedupe_key = :dedupe_key
  AND status IN ('queued', 'running');

-- name: get_job
SELECT seq, job_id, plugin, command, status, source, payload, result, events, logs, last_error, attempt,
       max_attempts, submitted_by, external_id, external_url, created_at, started_at,
       completed_at, run_after, lease_expires_at, dedupe_key, schedule_id
FROM jobs WHERE job_id = :job_id;

-- name: get_attempts
SELECT attempt, status, started_at, completed_at, exit_code, error, stderr_tail
FROM job_attempts WHERE job_id = :job_id ORDER BY id;

-- Listing: one query per (status, source) pair, merged by the store. The
-- bounds default to values outside any timestamp so each query is one index range.

-- name: list_all
SELECT job_id, plugin, command, status, source, created_at, started_at, completed_at,
       attempt, external_url, seq
FROM jobs INDEXED BY jobs_list_all
WHERE status = :status AND source = :source
  AND created_at > :after AND created_at < :before
  AND (created_at, seq) < (:cursor_created, :cursor_seq)
ORDER BY created_at DESC, seq DESC LIMIT :limit;

-- name: list_plugin
SELECT job_id, plugin, command, status, source, created_at, started_at, completed_at,
       attempt, external_url, seq
FROM jobs INDEXED BY jobs_list_plugin
WHERE status = :status AND source = :source AND plugin = :plugin
  AND created_at > :after AND created_at < :before
  AND (created_at, seq) < (:cursor_created, :cursor_seq)
ORDER BY created_at DESC, seq DESC LIMIT :limit;

-- name: list_plugin_command
SELECT job_id, plugin, command, status, source, created_at, started_at, completed_at,
       attempt, external_url, seq
FROM jobs INDEXED BY jobs_list_plugin_command
WHERE status = :status AND source = :source AND plugin = :plugin AND command = :command
  AND created_at > :after AND created_at < :before
  AND (created_at, seq) < (:cursor_created, :cursor_seq)
ORDER BY created_at DESC, seq DESC LIMIT :limit;

-- name: list_command
SELECT job_id, plugin, command, status, source, created_at, started_at, completed_at,
       attempt, external_url, seq
FROM jobs INDEXED BY jobs_list_command
WHERE status = :status AND source = :source AND command = :command
  AND created_at > :after AND created_at < :before
  AND (created_at, seq) < (:cursor_created, :cursor_seq)
ORDER BY created_at DESC, seq DESC LIMIT :limit;

-- Exact per-(status, source) counts from job_counts (a few rows): the total without time
-- bounds, and which listing queries can be skipped because they would find nothing.

-- name: total_all
SELECT status, source, SUM(n) FROM job_counts
WHERE status IN (SELECT value FROM json_each(:statuses))
  AND source IN (SELECT value FROM json_each(:sources))
GROUP BY status, source;

-- name: total_plugin
SELECT status, source, SUM(n) FROM job_counts
WHERE plugin = :plugin
  AND status IN (SELECT value FROM json_each(:statuses))
  AND source IN (SELECT value FROM json_each(:sources))
GROUP BY status, source;

-- name: total_plugin_command
SELECT status, source, SUM(n) FROM job_counts
WHERE plugin = :plugin AND command = :command
  AND status IN (SELECT value FROM json_each(:statuses))
  AND source IN (SELECT value FROM json_each(:sources))
GROUP BY status, source;

-- name: total_command
SELECT status, source, SUM(n) FROM job_counts
WHERE command = :command
  AND status IN (SELECT value FROM json_each(:statuses))
  AND source IN (SELECT value FROM json_each(:sources))
GROUP BY status, source;

-- Exact totals with time bounds count one covering-index range per (status, source).

-- name: count_all
SELECT COUNT(*) FROM jobs INDEXED BY jobs_list_all
WHERE status = :status AND source = :source AND created_at > :after AND created_at < :before;

-- name: count_plugin
SELECT COUNT(*) FROM jobs INDEXED BY jobs_list_plugin
WHERE status = :status AND source = :source AND plugin = :plugin
  AND created_at > :after AND created_at < :before;

-- name: count_plugin_command
SELECT COUNT(*) FROM jobs INDEXED BY jobs_list_plugin_command
WHERE status = :status AND source = :source AND plugin = :plugin AND command = :command
  AND created_at > :after AND created_at < :before;

-- name: count_command
SELECT COUNT(*) FROM jobs INDEXED BY jobs_list_command
WHERE status = :status AND source = :source AND command = :command
  AND created_at > :after AND created_at < :before;

-- name: queue_depth
SELECT COALESCE(SUM(n), 0) FROM job_counts WHERE status IN ('queued', 'running');

-- name: set_status
-- A generic legal transition; :allowed_from comes from queue_service.statuses.
UPDATE jobs SET
    status = :status,
    result = COALESCE(:result, result),
    last_error = COALESCE(:last_error, last_error),
    started_at = CASE WHEN :status = 'running' THEN :now ELSE started_at END,
    completed_at = CASE WHEN :status IN ('queued', 'running') THEN NULL ELSE :now END,
    lease_expires_at = CASE WHEN :status = 'running' THEN lease_expires_at ELSE NULL END
WHERE job_id = :job_id AND status IN (SELECT value FROM json_each(:allowed_from))
RETURNING status;

-- name: get_status
SELECT status, source FROM jobs WHERE job_id = :job_id;

-- Tokens

-- name: insert_token
INSERT INTO tokens (name, token_hash, scopes, created_at, expires_at)
VALUES (:name, :token_hash, :scopes, :created_at, :expires_at)
RETURNING token_id;

-- name: token_by_hash
SELECT token_id, name, token_hash, scopes, created_at, expires_at, last_used_at, revoked_at
FROM tokens WHERE token_hash = :token_hash;

-- name: list_tokens
SELECT token_id, name, token_hash, scopes, created_at, expires_at, last_used_at, revoked_at
FROM tokens ORDER BY created_at, token_id;

-- name: count_live_tokens
-- Usable tokens: neither revoked nor expired.
SELECT COUNT(*) FROM tokens
WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > :now);

-- name: count_all_tokens
-- Every token ever created: revoked and expired rows stay in the table.
SELECT COUNT(*) FROM tokens;

-- name: revoke_token
UPDATE tokens SET revoked_at = :now WHERE name = :name AND revoked_at IS NULL RETURNING token_id;

-- name: touch_token
UPDATE tokens SET last_used_at = :now WHERE token_id = :token_id;

-- Schema bookkeeping

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TEXT NOT NULL
);

-- name: applied_migrations
SELECT version, name FROM schema_migrations ORDER BY version;

-- name: user_tables
-- The tables SQLite did not create itself: tells a queue-service database (or an empty
-- file) from another application's.
SELECT name FROM sqlite_master
WHERE type = 'table' AND name NOT LIKE 'sqlite\_%' ESCAPE '\'
ORDER BY name;

-- name: probe_write
-- Rewrites one row to the value it has, inside a transaction that is rolled back:
-- SQLite refuses it at once (SQLITE_READONLY) when it can only read the file, and
-- nothing reaches the disk either way.
UPDATE schema_migrations SET version = version
WHERE version = (SELECT MAX(version) FROM schema_migrations);

-- name: record_migration
INSERT INTO schema_migrations (version, name, applied_at) VALUES (:version, :name, :applied_at);
