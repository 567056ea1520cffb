-- Named queries of the PostgreSQL store: listing jobs, exact counts, and the fold of the
-- count deltas into the rollups (listing.py says which runs when).
--
-- Listing reads run with sorts disabled (listing.py: _LISTING_BEGIN), so every walk below
-- can only be planned as an ordered index scan that stops after `limit` rows: the plan
-- does not depend on statistics. A NULL :plugin or :command means any.

-- name: list_counts_status
-- The counts a listing plans with, in one snapshot: per (status, source) (kind 's'), and
-- every unfolded delta (kind 'd'; listing.py adds each where it belongs).
SELECT 's', status, source, NULL, NULL, n FROM job_counts_status
UNION ALL
SELECT 'd', status, source, plugin, command, d FROM job_count_deltas;

-- name: list_counts_plugin
-- The same, and the rollup rows of the plugin's keys (kind 'k').
SELECT 's', status, source, NULL, NULL, n FROM job_counts_status
UNION ALL
SELECT 'k', status, source, plugin, command, n FROM job_counts WHERE plugin = %(plugin)s
UNION ALL
SELECT 'd', status, source, plugin, command, d FROM job_count_deltas;

-- name: list_counts_command
SELECT 's', status, source, NULL, NULL, n FROM job_counts_status
UNION ALL
SELECT 'k', status, source, plugin, command, n FROM job_counts WHERE command = %(command)s
UNION ALL
SELECT 'd', status, source, plugin, command, d FROM job_count_deltas;

-- name: list_counts_plugin_command
SELECT 's', status, source, NULL, NULL, n FROM job_counts_status
UNION ALL
SELECT 'k', status, source, plugin, command, n FROM job_counts
WHERE plugin = %(plugin)s AND command = %(command)s
UNION ALL
SELECT 'd', status, source, plugin, command, d FROM job_count_deltas;

-- Walks: each reads the jobs of one index range newest first and checks every other
-- filter on the row. A walk over several keys (statuses, (plugin, command) pairs, ...)
-- walks each key in a LATERAL subquery of `limit` rows and keeps the newest `limit`.
--
-- The upper end of a walk is one row comparison, (created_at, seq) < :upper: the tighter
-- of the cursor and `created_at < before` (listing.py), because the index scan starts
-- from the row comparison and would not see that a plain bound on created_at is tighter.
-- Row filters on plugin and command are written IS NOT DISTINCT FROM, which no index
-- serves: the planner cannot trade the walk's index for one that merely starts with
-- plugin and would read all of its jobs.

-- name: walk_time
-- Per source: jobs_by_time is (source, created_at, seq).
SELECT w.* FROM unnest(%(walk_sources)s::text[]) AS k (walk_source)
CROSS JOIN LATERAL (
    SELECT job_id, plugin, command, status, source, created_at, started_at, completed_at,
           attempt, external_url, seq
    FROM jobs
    WHERE source = k.walk_source
      AND created_at > %(after)s
      AND (created_at, seq) < (%(upper_created)s, %(upper_seq)s::bigint)
      AND status = ANY(%(statuses)s::text[])
      AND (%(plugin)s::text IS NULL OR plugin IS NOT DISTINCT FROM %(plugin)s)
      AND (%(command)s::text IS NULL OR command IS NOT DISTINCT FROM %(command)s)
    ORDER BY created_at DESC, seq DESC LIMIT %(limit)s
) AS w
ORDER BY w.created_at DESC, w.seq DESC LIMIT %(limit)s;

-- name: walk_plugin_command
SELECT w.* FROM unnest(%(walk_plugins)s::text[], %(walk_commands)s::text[])
    AS k (walk_plugin, walk_command)
CROSS JOIN LATERAL (
    SELECT job_id, plugin, command, status, source, created_at, started_at, completed_at,
           attempt, external_url, seq
    FROM jobs
    WHERE plugin = k.walk_plugin AND command = k.walk_command
      AND created_at > %(after)s
      AND (created_at, seq) < (%(upper_created)s, %(upper_seq)s::bigint)
      AND status = ANY(%(statuses)s::text[]) AND source = ANY(%(sources)s::text[])
    ORDER BY created_at DESC, seq DESC LIMIT %(limit)s
) AS w
ORDER BY w.created_at DESC, w.seq DESC LIMIT %(limit)s;

-- name: walk_status
-- Per (status, source). `status <> 'succeeded'` repeats the partial index's condition, so
-- the walk may use it.
SELECT w.* FROM unnest(%(walk_statuses)s::text[], %(walk_sources)s::text[])
    AS k (walk_status, walk_source)
CROSS JOIN LATERAL (
    SELECT job_id, plugin, command, status, source, created_at, started_at, completed_at,
           attempt, external_url, seq
    FROM jobs
    WHERE status = k.walk_status AND source = k.walk_source AND status <> 'succeeded'
      AND created_at > %(after)s
      AND (created_at, seq) < (%(upper_created)s, %(upper_seq)s::bigint)
      AND (%(plugin)s::text IS NULL OR plugin IS NOT DISTINCT FROM %(plugin)s)
      AND (%(command)s::text IS NULL OR command IS NOT DISTINCT FROM %(command)s)
    ORDER BY created_at DESC, seq DESC LIMIT %(limit)s
) AS w
ORDER BY w.created_at DESC, w.seq DESC LIMIT %(limit)s;

-- name: walk_status_plugin_command
SELECT w.* FROM unnest(%(walk_statuses)s::text[], %(walk_plugins)s::text[],
                       %(walk_commands)s::text[]) AS k (walk_status, walk_plugin, walk_command)
CROSS JOIN LATERAL (
    SELECT job_id, plugin, command, status, source, created_at, started_at, completed_at,
           attempt, external_url, seq
    FROM jobs
    WHERE status = k.walk_status AND status <> 'succeeded'
      AND plugin = k.walk_plugin AND command = k.walk_command
      AND created_at > %(after)s
      AND (created_at, seq) < (%(upper_created)s, %(upper_seq)s::bigint)
      AND source = ANY(%(sources)s::text[])
    ORDER BY created_at DESC, seq DESC LIMIT %(limit)s
) AS w
ORDER BY w.created_at DESC, w.seq DESC LIMIT %(limit)s;

-- name: walk_submitter
-- One token's own jobs (GET /jobs?mine=true), every other filter checked on the row.
SELECT job_id, plugin, command, status, source, created_at, started_at, completed_at,
       attempt, external_url, seq
FROM jobs
WHERE submitted_by_token = %(token)s AND submitted_by_token IS NOT NULL
  AND created_at > %(after)s AND (created_at, seq) < (%(upper_created)s, %(upper_seq)s::bigint)
  AND status = ANY(%(statuses)s::text[]) AND source = ANY(%(sources)s::text[])
  AND (%(plugin)s::text IS NULL OR plugin IS NOT DISTINCT FROM %(plugin)s)
  AND (%(command)s::text IS NULL OR command IS NOT DISTINCT FROM %(command)s)
ORDER BY created_at DESC, seq DESC LIMIT %(limit)s;

-- name: count_submitter_by_time
-- walk_submitter's total when nothing but time is filtered: counted in the index alone.
SELECT count(*) FROM jobs
WHERE submitted_by_token = %(token)s AND submitted_by_token IS NOT NULL
  AND created_at > %(after)s AND created_at < %(before)s;

-- name: count_submitter
-- walk_submitter's total: the token's index entries, and their rows.
SELECT count(*) FROM jobs
WHERE submitted_by_token = %(token)s AND submitted_by_token IS NOT NULL
  AND created_at > %(after)s AND created_at < %(before)s
  AND status = ANY(%(statuses)s::text[]) AND source = ANY(%(sources)s::text[])
  AND (%(plugin)s::text IS NULL OR plugin IS NOT DISTINCT FROM %(plugin)s)
  AND (%(command)s::text IS NULL OR command IS NOT DISTINCT FROM %(command)s);

-- Totals with time bounds (store/listing_plan.py: bounded_total): whole days, then whole
-- hours, strictly between :unit_after and :unit_before, from the rollups (index-only
-- scans) plus unfolded deltas; then the partial hours at the edges counted in an index.

-- name: hours_all
SELECT coalesce(sum(n), 0) FROM (
    SELECT n FROM job_counts_hour
    WHERE status = ANY(%(statuses)s::text[]) AND source = ANY(%(sources)s::text[])
      AND hour > %(unit_after)s AND hour < %(unit_before)s
    UNION ALL
    SELECT d FROM job_count_deltas
    WHERE status = ANY(%(statuses)s::text[]) AND source = ANY(%(sources)s::text[])
      AND hour > %(unit_after)s AND hour < %(unit_before)s
) AS c;

-- name: hours_plugin
SELECT coalesce(sum(n), 0) FROM (
    SELECT n FROM job_counts_hour_plugin
    WHERE status = ANY(%(statuses)s::text[]) AND source = ANY(%(sources)s::text[])
      AND plugin = %(plugin)s AND hour > %(unit_after)s AND hour < %(unit_before)s
    UNION ALL
    SELECT d FROM job_count_deltas
    WHERE status = ANY(%(statuses)s::text[]) AND source = ANY(%(sources)s::text[])
      AND plugin = %(plugin)s AND hour > %(unit_after)s AND hour < %(unit_before)s
) AS c;

-- name: hours_command
SELECT coalesce(sum(n), 0) FROM (
    SELECT n FROM job_counts_hour_command
    WHERE status = ANY(%(statuses)s::text[]) AND source = ANY(%(sources)s::text[])
      AND command = %(command)s AND hour > %(unit_after)s AND hour < %(unit_before)s
    UNION ALL
    SELECT d FROM job_count_deltas
    WHERE status = ANY(%(statuses)s::text[]) AND source = ANY(%(sources)s::text[])
      AND command = %(command)s AND hour > %(unit_after)s AND hour < %(unit_before)s
) AS c;

-- name: hours_plugin_command
SELECT coalesce(sum(n), 0) FROM (
    SELECT n FROM job_counts_hour_plugin_command
    WHERE status = ANY(%(statuses)s::text[]) AND source = ANY(%(sources)s::text[])
      AND plugin = %(plugin)s AND command = %(command)s
      AND hour > %(unit_after)s AND hour < %(unit_before)s
    UNION ALL
    SELECT d FROM job_count_deltas
    WHERE status = ANY(%(statuses)s::text[]) AND source = ANY(%(sources)s::text[])
      AND plugin = %(plugin)s AND command = %(command)s
      AND hour > %(unit_after)s AND hour < %(unit_before)s
) AS c;

-- name: days_all
SELECT coalesce(sum(n), 0) FROM (
    SELECT n FROM job_counts_day
    WHERE status = ANY(%(statuses)s::text[]) AND source = ANY(%(sources)s::text[])
      AND day > %(unit_after)s AND day < %(unit_before)s
    UNION ALL
    SELECT d FROM job_count_deltas
    WHERE status = ANY(%(statuses)s::text[]) AND source = ANY(%(sources)s::text[])
      AND left(hour, 10) > %(unit_after)s AND left(hour, 10) < %(unit_before)s
) AS c;

-- name: days_plugin
SELECT coalesce(sum(n), 0) FROM (
    SELECT n FROM job_counts_day_plugin
    WHERE status = ANY(%(statuses)s::text[]) AND source = ANY(%(sources)s::text[])
      AND plugin = %(plugin)s AND day > %(unit_after)s AND day < %(unit_before)s
    UNION ALL
    SELECT d FROM job_count_deltas
    WHERE status = ANY(%(statuses)s::text[]) AND source = ANY(%(sources)s::text[])
      AND plugin = %(plugin)s AND left(hour, 10) > %(unit_after)s AND left(hour, 10) < %(unit_before)s
) AS c;

-- name: days_command
SELECT coalesce(sum(n), 0) FROM (
    SELECT n FROM job_counts_day_command
    WHERE status = ANY(%(statuses)s::text[]) AND source = ANY(%(sources)s::text[])
      AND command = %(command)s AND day > %(unit_after)s AND day < %(unit_before)s
    UNION ALL
    SELECT d FROM job_count_deltas
    WHERE status = ANY(%(statuses)s::text[]) AND source = ANY(%(sources)s::text[])
      AND command = %(command)s AND left(hour, 10) > %(unit_after)s AND left(hour, 10) < %(unit_before)s
) AS c;

-- name: days_plugin_command
SELECT coalesce(sum(n), 0) FROM (
    SELECT n FROM job_counts_day_plugin_command
    WHERE status = ANY(%(statuses)s::text[]) AND source = ANY(%(sources)s::text[])
      AND plugin = %(plugin)s AND command = %(command)s
      AND day > %(unit_after)s AND day < %(unit_before)s
    UNION ALL
    SELECT d FROM job_count_deltas
    WHERE status = ANY(%(statuses)s::text[]) AND source = ANY(%(sources)s::text[])
      AND plugin = %(plugin)s AND command = %(command)s
      AND left(hour, 10) > %(unit_after)s AND left(hour, 10) < %(unit_before)s
) AS c;

-- Edges: the jobs of (:lo, :hi), at most an hour, counted over the keys of the page's walk
-- (edge_<walk>), every other filter checked on the row.

-- name: edge_time
SELECT coalesce(sum(e.n), 0) FROM unnest(%(walk_sources)s::text[]) AS k (walk_source)
CROSS JOIN LATERAL (
    SELECT count(*) AS n FROM jobs
    WHERE source = k.walk_source AND created_at > %(lo)s AND created_at < %(hi)s
      AND status = ANY(%(statuses)s::text[])
      AND (%(plugin)s::text IS NULL OR plugin IS NOT DISTINCT FROM %(plugin)s)
      AND (%(command)s::text IS NULL OR command IS NOT DISTINCT FROM %(command)s)
) AS e;

-- name: edge_plugin_command
SELECT coalesce(sum(e.n), 0) FROM unnest(%(walk_plugins)s::text[], %(walk_commands)s::text[])
    AS k (walk_plugin, walk_command)
CROSS JOIN LATERAL (
    SELECT count(*) AS n FROM jobs
    WHERE plugin = k.walk_plugin AND command = k.walk_command
      AND created_at > %(lo)s AND created_at < %(hi)s
      AND status = ANY(%(statuses)s::text[]) AND source = ANY(%(sources)s::text[])
) AS e;

-- name: edge_status
SELECT coalesce(sum(e.n), 0) FROM unnest(%(walk_statuses)s::text[], %(walk_sources)s::text[])
    AS k (walk_status, walk_source)
CROSS JOIN LATERAL (
    SELECT count(*) AS n FROM jobs
    WHERE status = k.walk_status AND source = k.walk_source AND status <> 'succeeded'
      AND created_at > %(lo)s AND created_at < %(hi)s
      AND (%(plugin)s::text IS NULL OR plugin IS NOT DISTINCT FROM %(plugin)s)
      AND (%(command)s::text IS NULL OR command IS NOT DISTINCT FROM %(command)s)
) AS e;

-- name: edge_status_plugin_command
SELECT coalesce(sum(e.n), 0) FROM unnest(%(walk_statuses)s::text[], %(walk_plugins)s::text[],
                                         %(walk_commands)s::text[])
    AS k (walk_status, walk_plugin, walk_command)
CROSS JOIN LATERAL (
    SELECT count(*) AS n FROM jobs
    WHERE status = k.walk_status AND status <> 'succeeded'
      AND plugin = k.walk_plugin AND command = k.walk_command
      AND created_at > %(lo)s AND created_at < %(hi)s
      AND source = ANY(%(sources)s::text[])
) AS e;

-- Counts for overviews and the worker, from the rollups plus the unfolded deltas.

-- name: queue_depth
SELECT coalesce(sum(n), 0) FROM (
    SELECT n FROM job_counts_status WHERE status IN ('queued', 'running')
    UNION ALL
    SELECT d FROM job_count_deltas WHERE status IN ('queued', 'running')
) AS c;

-- name: counts_by_plugin
SELECT plugin, status, sum(n) FROM (
    SELECT plugin, status, n FROM job_counts
    UNION ALL
    SELECT plugin, status, d FROM job_count_deltas
) AS c
GROUP BY plugin, status HAVING sum(n) <> 0;

-- name: job_counts
-- Every (plugin, command, source, status) with jobs.
SELECT plugin, command, source, status, sum(n) FROM (
    SELECT plugin, command, source, status, n FROM job_counts
    UNION ALL
    SELECT plugin, command, source, status, d FROM job_count_deltas
) AS c
GROUP BY plugin, command, source, status HAVING sum(n) > 0;

-- name: queued_by_plugin
-- Queued local jobs per plugin.
SELECT plugin, sum(n) FROM (
    SELECT plugin, n FROM job_counts WHERE status = 'queued' AND source = 'local'
    UNION ALL
    SELECT plugin, d FROM job_count_deltas WHERE status = 'queued' AND source = 'local'
) AS c
GROUP BY plugin HAVING sum(n) > 0;

-- name: oldest_queued
-- One seek per source in jobs_by_status: (status, source, created_at, seq).
SELECT o.* FROM unnest(%(sources)s::text[]) AS k (walk_source)
CROSS JOIN LATERAL (
    SELECT job_id, plugin, command, status, source, created_at, started_at, completed_at,
           attempt, external_url, seq
    FROM jobs
    WHERE status = 'queued' AND status <> 'succeeded' AND source = k.walk_source
    ORDER BY created_at, seq LIMIT 1
) AS o
ORDER BY o.created_at, o.seq LIMIT 1;

-- name: oldest_queued_by_plugin
-- Plugins with queued local jobs from the counts, then one seek each in the claim index
-- (plugin, run_after) for the earliest run_after.
WITH queued AS (
    SELECT plugin FROM (
        SELECT plugin, n FROM job_counts WHERE status = 'queued' AND source = 'local'
        UNION ALL
        SELECT plugin, d FROM job_count_deltas WHERE status = 'queued' AND source = 'local'
    ) AS c
    GROUP BY plugin HAVING sum(n) > 0
)
SELECT queued.plugin, o.run_after FROM queued
CROSS JOIN LATERAL (
    SELECT run_after FROM jobs
    WHERE status = 'queued' AND plugin = queued.plugin AND source = 'local'
    ORDER BY run_after LIMIT 1
) AS o;

-- The fold: a batch of committed deltas out of the log, summed per key (the caller holds
-- the fold lock), then added to each rollup. A rollup row that reaches zero is deleted.

-- name: fold_lock
SELECT pg_try_advisory_xact_lock('job_count_deltas'::regclass::oid::integer, 0);

-- name: fold_take_deltas
WITH moved AS (
    DELETE FROM job_count_deltas
    WHERE ctid = ANY(ARRAY(SELECT ctid FROM job_count_deltas LIMIT %(batch)s))
    RETURNING plugin, command, status, source, hour, d
)
SELECT plugin, command, status, source, hour, sum(d)::bigint, count(*) FROM moved
GROUP BY plugin, command, status, source, hour;

-- name: fold_job_counts
MERGE INTO job_counts AS t
USING (
    SELECT plugin, command, status, source, sum(d) AS d
    FROM unnest(%(plugins)s::text[], %(commands)s::text[], %(statuses)s::text[],
                %(sources)s::text[], %(ds)s::bigint[]) AS k (plugin, command, status, source, d)
    GROUP BY plugin, command, status, source
) AS s
ON t.plugin = s.plugin AND t.command = s.command AND t.status = s.status
   AND t.source = s.source
WHEN MATCHED AND s.d = 0 THEN DO NOTHING
WHEN MATCHED AND t.n + s.d = 0 THEN DELETE
WHEN MATCHED THEN UPDATE SET n = t.n + s.d
WHEN NOT MATCHED AND s.d <> 0 THEN
    INSERT (plugin, command, status, source, n) VALUES (s.plugin, s.command, s.status, s.source, s.d);

-- name: fold_status
MERGE INTO job_counts_status AS t
USING (
    SELECT status, source, sum(d) AS d
    FROM unnest(%(statuses)s::text[], %(sources)s::text[], %(ds)s::bigint[])
        AS k (status, source, d)
    GROUP BY status, source
) AS s
ON t.status = s.status AND t.source = s.source
WHEN MATCHED AND s.d = 0 THEN DO NOTHING
WHEN MATCHED AND t.n + s.d = 0 THEN DELETE
WHEN MATCHED THEN UPDATE SET n = t.n + s.d
WHEN NOT MATCHED AND s.d <> 0 THEN
    INSERT (status, source, n) VALUES (s.status, s.source, s.d);

-- name: fold_hour
MERGE INTO job_counts_hour AS t
USING (
    SELECT status, source, hour, sum(d) AS d
    FROM unnest(%(statuses)s::text[], %(sources)s::text[], %(hours)s::text[], %(ds)s::bigint[])
        AS k (status, source, hour, d)
    GROUP BY status, source, hour
) AS s
ON t.status = s.status AND t.source = s.source AND t.hour = s.hour
WHEN MATCHED AND s.d = 0 THEN DO NOTHING
WHEN MATCHED AND t.n + s.d = 0 THEN DELETE
WHEN MATCHED THEN UPDATE SET n = t.n + s.d
WHEN NOT MATCHED AND s.d <> 0 THEN
    INSERT (status, source, hour, n) VALUES (s.status, s.source, s.hour, s.d);

-- name: fold_hour_plugin
MERGE INTO job_counts_hour_plugin AS t
USING (
    SELECT status, source, plugin, hour, sum(d) AS d
    FROM unnest(%(statuses)s::text[], %(sources)s::text[], %(plugins)s::text[],
                %(hours)s::text[], %(ds)s::bigint[]) AS k (status, source, plugin, hour, d)
    GROUP BY status, source, plugin, hour
) AS s
ON t.status = s.status AND t.source = s.source AND t.plugin = s.plugin AND t.hour = s.hour
WHEN MATCHED AND s.d = 0 THEN DO NOTHING
WHEN MATCHED AND t.n + s.d = 0 THEN DELETE
WHEN MATCHED THEN UPDATE SET n = t.n + s.d
WHEN NOT MATCHED AND s.d <> 0 THEN
    INSERT (status, source, plugin, hour, n) VALUES (s.status, s.source, s.plugin, s.hour, s.d);

-- name: fold_hour_command
MERGE INTO job_counts_hour_command AS t
USING (
    SELECT status, source, command, hour, sum(d) AS d
    FROM unnest(%(statuses)s::text[], %(sources)s::text[], %(commands)s::text[],
                %(hours)s::text[], %(ds)s::bigint[]) AS k (status, source, command, hour, d)
    GROUP BY status, source, command, hour
) AS s
ON t.status = s.status AND t.source = s.source AND t.command = s.command AND t.hour = s.hour
WHEN MATCHED AND s.d = 0 THEN DO NOTHING
WHEN MATCHED AND t.n + s.d = 0 THEN DELETE
WHEN MATCHED THEN UPDATE SET n = t.n + s.d
WHEN NOT MATCHED AND s.d <> 0 THEN
    INSERT (status, source, command, hour, n)
    VALUES (s.status, s.source, s.command, s.hour, s.d);

-- name: fold_hour_plugin_command
MERGE INTO job_counts_hour_plugin_command AS t
USING (
    SELECT status, source, plugin, command, hour, sum(d) AS d
    FROM unnest(%(statuses)s::text[], %(sources)s::text[], %(plugins)s::text[],
                %(commands)s::text[], %(hours)s::text[], %(ds)s::bigint[])
        AS k (status, source, plugin, command, hour, d)
    GROUP BY status, source, plugin, command, hour
) AS s
ON t.status = s.status AND t.source = s.source AND t.plugin = s.plugin
   AND t.command = s.command AND t.hour = s.hour
WHEN MATCHED AND s.d = 0 THEN DO NOTHING
WHEN MATCHED AND t.n + s.d = 0 THEN DELETE
WHEN MATCHED THEN UPDATE SET n = t.n + s.d
WHEN NOT MATCHED AND s.d <> 0 THEN
    INSERT (status, source, plugin, command, hour, n)
    VALUES (s.status, s.source, s.plugin, s.command, s.hour, s.d);

-- name: fold_day
MERGE INTO job_counts_day AS t
USING (
    SELECT status, source, day, sum(d) AS d
    FROM unnest(%(statuses)s::text[], %(sources)s::text[], %(days)s::text[], %(ds)s::bigint[])
        AS k (status, source, day, d)
    GROUP BY status, source, day
) AS s
ON t.status = s.status AND t.source = s.source AND t.day = s.day
WHEN MATCHED AND s.d = 0 THEN DO NOTHING
WHEN MATCHED AND t.n + s.d = 0 THEN DELETE
WHEN MATCHED THEN UPDATE SET n = t.n + s.d
WHEN NOT MATCHED AND s.d <> 0 THEN
    INSERT (status, source, day, n) VALUES (s.status, s.source, s.day, s.d);

-- name: fold_day_plugin
MERGE INTO job_counts_day_plugin AS t
USING (
    SELECT status, source, plugin, day, sum(d) AS d
    FROM unnest(%(statuses)s::text[], %(sources)s::text[], %(plugins)s::text[],
                %(days)s::text[], %(ds)s::bigint[]) AS k (status, source, plugin, day, d)
    GROUP BY status, source, plugin, day
) AS s
ON t.status = s.status AND t.source = s.source AND t.plugin = s.plugin AND t.day = s.day
WHEN MATCHED AND s.d = 0 THEN DO NOTHING
WHEN MATCHED AND t.n + s.d = 0 THEN DELETE
WHEN MATCHED THEN UPDATE SET n = t.n + s.d
WHEN NOT MATCHED AND s.d <> 0 THEN
    INSERT (status, source, plugin, day, n) VALUES (s.status, s.source, s.plugin, s.day, s.d);

-- name: fold_day_command
MERGE INTO job_counts_day_command AS t
USING (
    SELECT status, source, command, day, sum(d) AS d
    FROM unnest(%(statuses)s::text[], %(sources)s::text[], %(commands)s::text[],
                %(days)s::text[], %(ds)s::bigint[]) AS k (status, source, command, day, d)
    GROUP BY status, source, command, day
) AS s
ON t.status = s.status AND t.source = s.source AND t.command = s.command AND t.day = s.day
WHEN MATCHED AND s.d = 0 THEN DO NOTHING
WHEN MATCHED AND t.n + s.d = 0 THEN DELETE
WHEN MATCHED THEN UPDATE SET n = t.n + s.d
WHEN NOT MATCHED AND s.d <> 0 THEN
    INSERT (status, source, command, day, n)
    VALUES (s.status, s.source, s.command, s.day, s.d);

-- name: fold_day_plugin_command
MERGE INTO job_counts_day_plugin_command AS t
USING (
    SELECT status, source, plugin, command, day, sum(d) AS d
    FROM unnest(%(statuses)s::text[], %(sources)s::text[], %(plugins)s::text[],
                %(commands)s::text[], %(days)s::text[], %(ds)s::bigint[])
        AS k (status, source, plugin, command, day, d)
    GROUP BY status, source, plugin, command, day
) AS s
ON t.status = s.status AND t.source = s.source AND t.plugin = s.plugin
   AND t.command = s.command AND t.day = s.day
WHEN MATCHED AND s.d = 0 THEN DO NOTHING
WHEN MATCHED AND t.n + s.d = 0 THEN DELETE
WHEN MATCHED THEN UPDATE SET n = t.n + s.d
WHEN NOT MATCHED AND s.d <> 0 THEN
    INSERT (status, source, plugin, command, day, n)
    VALUES (s.status, s.source, s.plugin, s.command, s.day, s.d);

-- name: vacuum_count_deltas
-- Outside any transaction: the space of folded deltas is used again, and the empty pages
-- at the end of the heap are given back (readers scan the whole heap). Giving them back
-- locks out writers for a moment: the fold task does it when the log is idle.
VACUUM job_count_deltas;

-- name: vacuum_count_deltas_keep
-- The same, keeping the heap's empty pages (never waits for a lock).
VACUUM (TRUNCATE false) job_count_deltas;

-- name: vacuum_count_rollups
-- Outside any transaction: sets the visibility map of the rollups' pages (folds keep
-- changing a few rows), so sums over past days and hours stay index-only scans.
VACUUM (TRUNCATE false) job_counts, job_counts_status, job_counts_hour, job_counts_hour_plugin,
    job_counts_hour_command, job_counts_hour_plugin_command, job_counts_day, job_counts_day_plugin,
    job_counts_day_command, job_counts_day_plugin_command;
