-- Named queries for the SQLite store. Each block starts with `-- name: NAME`.
-- Loaded once at import; the store calls them by name. No SQL lives elsewhere.

-- name: insert_job
-- A job whose dedupe_key its submitter already uses on a queued or running job of the same
-- plugin and command is not inserted (rowcount 0); find_active_dedupe then names that job.
INSERT INTO jobs (job_id, plugin, command, status, source, payload, attempt, max_attempts,
                  submitted_by, submitted_by_token, dedupe_key, schedule_id, created_at,
                  run_after)
VALUES (:job_id, :plugin, :command, 'queued', 'local', :payload, 0, :max_attempts,
        :submitted_by, :submitted_by_token, :dedupe_key, :schedule_id, :created_at, :run_after)
ON CONFLICT (plugin, command, ifnull(submitted_by, ''), dedupe_key)
    WHERE dedupe_key IS NOT NULL AND status IN ('queued', 'running')
    DO NOTHING;

-- name: find_active_dedupe
SELECT job_id FROM jobs
WHERE plugin = :plugin AND command = :command AND dedupe_key = :dedupe_key
  AND ifnull(submitted_by, '') = ifnull(:submitted_by, '')
  AND status IN ('queued', 'running');

-- name: get_job
SELECT * FROM jobs WHERE job_id = :job_id;

-- name: get_attempts
SELECT attempt, status, started_at, completed_at, exit_code, error, stderr_tail
FROM job_attempts WHERE job_id = :job_id ORDER BY id;

-- Listing. A page is one or a few index walks, merged by the store on (created_at, seq);
-- listing.py says which walks serve which filter. Every walk checks all the filters on the
-- row (a NULL :plugin or :command means any), so any walk is correct and the choice is
-- only about speed. Absent bounds are values outside any timestamp ('' and '~'), and the
-- status and source lists are padded by repeating an element, so each walk is one range.
-- `status != 'succeeded'` repeats the partial indexes' condition so SQLite may use them.

-- name: walk_time
SELECT job_id, plugin, command, status, source, created_at, started_at, completed_at,
       attempt, external_url, seq
FROM jobs INDEXED BY jobs_by_time
WHERE created_at > :after AND created_at < :before
  AND (created_at, seq) < (:cursor_created, :cursor_seq)
  AND status IN (:s0, :s1, :s2, :s3, :s4, :s5, :s6) AND source IN (:src0, :src1)
  AND plugin = COALESCE(:plugin, plugin) AND command = COALESCE(:command, command)
ORDER BY created_at DESC, seq DESC LIMIT :limit;

-- name: walk_plugin_command
SELECT job_id, plugin, command, status, source, created_at, started_at, completed_at,
       attempt, external_url, seq
FROM jobs INDEXED BY jobs_by_plugin_command
WHERE plugin = :plugin AND command = :command
  AND created_at > :after AND created_at < :before
  AND (created_at, seq) < (:cursor_created, :cursor_seq)
  AND status IN (:s0, :s1, :s2, :s3, :s4, :s5, :s6) AND source IN (:src0, :src1)
ORDER BY created_at DESC, seq DESC LIMIT :limit;

-- name: walk_status
SELECT job_id, plugin, command, status, source, created_at, started_at, completed_at,
       attempt, external_url, seq
FROM jobs INDEXED BY jobs_by_status
WHERE status = :status AND status != 'succeeded'
  AND created_at > :after AND created_at < :before
  AND (created_at, seq) < (:cursor_created, :cursor_seq)
  AND source IN (:src0, :src1)
  AND plugin = COALESCE(:plugin, plugin) AND command = COALESCE(:command, command)
ORDER BY created_at DESC, seq DESC LIMIT :limit;

-- name: walk_status_plugin_command
SELECT job_id, plugin, command, status, source, created_at, started_at, completed_at,
       attempt, external_url, seq
FROM jobs INDEXED BY jobs_by_status_plugin_command
WHERE status = :status AND status != 'succeeded' AND plugin = :plugin AND command = :command
  AND created_at > :after AND created_at < :before
  AND (created_at, seq) < (:cursor_created, :cursor_seq)
  AND source IN (:src0, :src1)
ORDER BY created_at DESC, seq DESC LIMIT :limit;

-- name: walk_submitter
-- One token's own jobs (GET /jobs?mine=true), every other filter checked on the row.
SELECT job_id, plugin, command, status, source, created_at, started_at, completed_at,
       attempt, external_url, seq
FROM jobs INDEXED BY jobs_by_submitter
WHERE submitted_by_token = :token AND submitted_by_token IS NOT NULL
  AND created_at > :after AND created_at < :before
  AND (created_at, seq) < (:cursor_created, :cursor_seq)
  AND status IN (:s0, :s1, :s2, :s3, :s4, :s5, :s6) AND source IN (:src0, :src1)
  AND plugin = COALESCE(:plugin, plugin) AND command = COALESCE(:command, command)
ORDER BY created_at DESC, seq DESC LIMIT :limit;

-- name: count_submitter
-- The exact total of walk_submitter's filter: the token's index entries, and their rows.
SELECT COUNT(*) FROM jobs INDEXED BY jobs_by_submitter
WHERE submitted_by_token = :token AND submitted_by_token IS NOT NULL
  AND created_at > :after AND created_at < :before
  AND status IN (:s0, :s1, :s2, :s3, :s4, :s5, :s6) AND source IN (:src0, :src1)
  AND plugin = COALESCE(:plugin, plugin) AND command = COALESCE(:command, command);

-- name: count_submitter_by_time
-- The same with no filter beyond the time bounds: counted in the index alone.
SELECT COUNT(*) FROM jobs INDEXED BY jobs_by_submitter
WHERE submitted_by_token = :token AND submitted_by_token IS NOT NULL
  AND created_at > :after AND created_at < :before;

-- Exact counts from job_counts plus any deltas not yet folded (none outside a write
-- transaction, unless something wrote around the store). The rows of one key may come
-- twice (a count and its delta): the store adds them up.

-- name: counts_all
SELECT status, source, NULL, NULL, SUM(n) FROM (
    SELECT status, source, n FROM job_counts_status
    UNION ALL
    SELECT status, source, d FROM job_count_deltas
) GROUP BY status, source;

-- name: counts_plugin
SELECT status, source, plugin, command, n FROM job_counts WHERE plugin = :plugin
UNION ALL
SELECT status, source, plugin, command, d FROM job_count_deltas WHERE plugin = :plugin;

-- name: counts_plugin_command
SELECT status, source, plugin, command, n FROM job_counts
WHERE plugin = :plugin AND command = :command
UNION ALL
SELECT status, source, plugin, command, d FROM job_count_deltas
WHERE plugin = :plugin AND command = :command;

-- name: counts_command
SELECT status, source, plugin, command, n FROM job_counts WHERE command = :command
UNION ALL
SELECT status, source, plugin, command, d FROM job_count_deltas WHERE command = :command;

-- name: count_every_job
SELECT COALESCE(SUM(n), 0) FROM (
    SELECT n FROM job_counts_status UNION ALL SELECT d FROM job_count_deltas
);

-- Totals with time bounds: whole hours strictly between :hour_after and :hour_before from
-- the hourly rollups (plus unfolded deltas), then the partial hours at the edges counted
-- in an index (edge_count_*).

-- name: hours_all
SELECT SUM(n) FROM (
    SELECT n FROM job_counts_hour
    WHERE status IN (:s0, :s1, :s2, :s3, :s4, :s5, :s6) AND source IN (:src0, :src1)
      AND hour > :hour_after AND hour < :hour_before
    UNION ALL
    SELECT d FROM job_count_deltas
    WHERE status IN (:s0, :s1, :s2, :s3, :s4, :s5, :s6) AND source IN (:src0, :src1)
      AND hour > :hour_after AND hour < :hour_before
);

-- name: hours_plugin
SELECT SUM(n) FROM (
    SELECT n FROM job_counts_hour_plugin
    WHERE status IN (:s0, :s1, :s2, :s3, :s4, :s5, :s6) AND source IN (:src0, :src1)
      AND plugin = :plugin AND hour > :hour_after AND hour < :hour_before
    UNION ALL
    SELECT d FROM job_count_deltas
    WHERE status IN (:s0, :s1, :s2, :s3, :s4, :s5, :s6) AND source IN (:src0, :src1)
      AND plugin = :plugin AND hour > :hour_after AND hour < :hour_before
);

-- name: hours_command
SELECT SUM(n) FROM (
    SELECT n FROM job_counts_hour_command
    WHERE status IN (:s0, :s1, :s2, :s3, :s4, :s5, :s6) AND source IN (:src0, :src1)
      AND command = :command AND hour > :hour_after AND hour < :hour_before
    UNION ALL
    SELECT d FROM job_count_deltas
    WHERE status IN (:s0, :s1, :s2, :s3, :s4, :s5, :s6) AND source IN (:src0, :src1)
      AND command = :command AND hour > :hour_after AND hour < :hour_before
);

-- name: hours_plugin_command
SELECT SUM(n) FROM (
    SELECT n FROM job_counts_hour_plugin_command
    WHERE status IN (:s0, :s1, :s2, :s3, :s4, :s5, :s6) AND source IN (:src0, :src1)
      AND plugin = :plugin AND command = :command
      AND hour > :hour_after AND hour < :hour_before
    UNION ALL
    SELECT d FROM job_count_deltas
    WHERE status IN (:s0, :s1, :s2, :s3, :s4, :s5, :s6) AND source IN (:src0, :src1)
      AND plugin = :plugin AND command = :command
      AND hour > :hour_after AND hour < :hour_before
);

-- name: edge_count_time
-- :plugin / :command NULL mean any; checked on the row (an edge is at most an hour).
SELECT COUNT(*) FROM jobs INDEXED BY jobs_by_time
WHERE created_at > :lo AND created_at < :hi
  AND status IN (:s0, :s1, :s2, :s3, :s4, :s5, :s6) AND source IN (:src0, :src1)
  AND plugin = COALESCE(:plugin, plugin) AND command = COALESCE(:command, command);

-- name: edge_count_plugin_command
SELECT COUNT(*) FROM jobs INDEXED BY jobs_by_plugin_command
WHERE plugin = :plugin AND command = :command AND created_at > :lo AND created_at < :hi
  AND status IN (:s0, :s1, :s2, :s3, :s4, :s5, :s6) AND source IN (:src0, :src1);

-- name: queue_depth
SELECT COALESCE(SUM(n), 0) FROM (
    SELECT n FROM job_counts_status WHERE status IN ('queued', 'running')
    UNION ALL
    SELECT d FROM job_count_deltas WHERE status IN ('queued', 'running')
);

-- Counts for overviews (`queue-service status`, `jobs --watch`), from the rollups.

-- name: counts_by_plugin
SELECT plugin, status, SUM(n) FROM (
    SELECT plugin, status, n FROM job_counts
    UNION ALL
    SELECT plugin, status, d FROM job_count_deltas
) GROUP BY plugin, status HAVING SUM(n) != 0;

-- name: oldest_queued
-- One seek: the index is (status, created_at) and its rowid (seq) breaks ties.
SELECT job_id, plugin, command, status, source, created_at, started_at, completed_at,
       attempt, external_url, seq
FROM jobs INDEXED BY jobs_by_status
WHERE status = 'queued' AND status != 'succeeded'
ORDER BY created_at, seq LIMIT 1;
-- name: job_counts
-- Every (plugin, command, source, status) with jobs: job_counts plus unfolded deltas.
SELECT plugin, command, source, status, SUM(n) FROM (
    SELECT plugin, command, source, status, n FROM job_counts
    UNION ALL
    SELECT plugin, command, source, status, d FROM job_count_deltas
) GROUP BY plugin, command, source, status HAVING SUM(n) > 0;

-- Folding the delta log into the counts, before each COMMIT of the store's writer.

-- name: has_count_deltas
SELECT 1 FROM job_count_deltas LIMIT 1;

-- name: fold_job_counts
INSERT INTO job_counts (plugin, command, status, source, n)
SELECT plugin, command, status, source, SUM(d) FROM job_count_deltas
GROUP BY plugin, command, status, source HAVING SUM(d) != 0
ON CONFLICT (plugin, command, status, source) DO UPDATE SET n = n + excluded.n;

-- name: fold_status
INSERT INTO job_counts_status (status, source, n)
SELECT status, source, SUM(d) FROM job_count_deltas
GROUP BY status, source HAVING SUM(d) != 0
ON CONFLICT (status, source) DO UPDATE SET n = n + excluded.n;

-- name: fold_hour
INSERT INTO job_counts_hour (status, source, hour, n)
SELECT status, source, hour, SUM(d) FROM job_count_deltas
GROUP BY status, source, hour HAVING SUM(d) != 0
ON CONFLICT (status, source, hour) DO UPDATE SET n = n + excluded.n;

-- name: fold_hour_plugin
INSERT INTO job_counts_hour_plugin (status, source, plugin, hour, n)
SELECT status, source, plugin, hour, SUM(d) FROM job_count_deltas
GROUP BY status, source, plugin, hour HAVING SUM(d) != 0
ON CONFLICT (status, source, plugin, hour) DO UPDATE SET n = n + excluded.n;

-- name: fold_hour_command
INSERT INTO job_counts_hour_command (status, source, command, hour, n)
SELECT status, source, command, hour, SUM(d) FROM job_count_deltas
GROUP BY status, source, command, hour HAVING SUM(d) != 0
ON CONFLICT (status, source, command, hour) DO UPDATE SET n = n + excluded.n;

-- name: fold_hour_plugin_command
INSERT INTO job_counts_hour_plugin_command (status, source, plugin, command, hour, n)
SELECT status, source, plugin, command, hour, SUM(d) FROM job_count_deltas
GROUP BY status, source, plugin, command, hour HAVING SUM(d) != 0
ON CONFLICT (status, source, plugin, command, hour) DO UPDATE SET n = n + excluded.n;

-- name: clear_count_deltas
DELETE FROM job_count_deltas;

-- Count rows that fell to zero (the queued and running hours of finished jobs, say):
-- dropped with pruning, not on every commit.

-- name: drop_empty_counts
DELETE FROM job_counts WHERE n = 0;

-- name: drop_empty_hour
DELETE FROM job_counts_hour WHERE n = 0;

-- name: drop_empty_hour_plugin
DELETE FROM job_counts_hour_plugin WHERE n = 0;

-- name: drop_empty_hour_command
DELETE FROM job_counts_hour_command WHERE n = 0;

-- name: drop_empty_hour_plugin_command
DELETE FROM job_counts_hour_plugin_command WHERE n = 0;

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
