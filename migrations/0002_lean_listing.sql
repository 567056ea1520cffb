-- 0002: a layout that does not amplify writes.
--
-- Before: four listing indexes led by status, so every status change (three per job)
-- moved an entry in each, and per-row count triggers upserted job_counts twice per change.
-- Now:
-- * two listing indexes without status (jobs_by_time, jobs_by_plugin_command): written
--   when a job is inserted, never touched by a status change;
-- * two partial indexes led by status, holding every job except the succeeded ones: they
--   serve the selective status filters (queued, running, failed, ...); the happy path
--   leaves them when the job succeeds;
-- * counts kept exact in the same transaction, through a delta log: the triggers append
--   one row per change to job_count_deltas, and the store folds the log into job_counts,
--   a per-(status, source) rollup and the hourly rollups before each COMMIT (readers add any unfolded deltas, so the
--   totals stay exact even for writes made outside the store);
-- * the legal transitions of local jobs as a table the status trigger checks, filled from
--   the one vocabulary (queue_service/statuses.py; a test ties the two);
-- * deduplication scoped to the submitter: a dedupe_key names a job among the jobs of the
--   same token, so another token can neither squat a key nor learn of the job behind it;
-- * hourly rollups, so a total with time bounds sums whole hours and counts index entries
--   only in the two partial hours at its edges.

DROP TRIGGER jobs_count_insert;
DROP TRIGGER jobs_count_delete;
DROP TRIGGER jobs_count_update;

DROP INDEX jobs_list_all;
DROP INDEX jobs_list_plugin;
DROP INDEX jobs_list_plugin_command;
DROP INDEX jobs_list_command;

CREATE TABLE job_count_deltas (
    plugin  TEXT    NOT NULL,
    command TEXT    NOT NULL,
    status  TEXT    NOT NULL,
    source  TEXT    NOT NULL,
    hour    TEXT    NOT NULL,  -- substr(created_at, 1, 13): 2026-11-23T15
    d       INTEGER NOT NULL
);

CREATE TABLE job_counts_status (
    status TEXT    NOT NULL,
    source TEXT    NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (status, source)
) WITHOUT ROWID;

CREATE TABLE job_counts_hour (
    status TEXT    NOT NULL,
    source TEXT    NOT NULL,
    hour   TEXT    NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (status, source, hour)
) WITHOUT ROWID;

CREATE TABLE job_counts_hour_plugin (
    status TEXT    NOT NULL,
    source TEXT    NOT NULL,
    plugin TEXT    NOT NULL,
    hour   TEXT    NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (status, source, plugin, hour)
) WITHOUT ROWID;

CREATE TABLE job_counts_hour_command (
    status  TEXT    NOT NULL,
    source  TEXT    NOT NULL,
    command TEXT    NOT NULL,
    hour    TEXT    NOT NULL,
    n       INTEGER NOT NULL,
    PRIMARY KEY (status, source, command, hour)
) WITHOUT ROWID;

CREATE TABLE job_counts_hour_plugin_command (
    status  TEXT    NOT NULL,
    source  TEXT    NOT NULL,
    plugin  TEXT    NOT NULL,
    command TEXT    NOT NULL,
    hour    TEXT    NOT NULL,
    n       INTEGER NOT NULL,
    PRIMARY KEY (status, source, plugin, command, hour)
) WITHOUT ROWID;

INSERT INTO job_counts_status (status, source, n)
SELECT status, source, COUNT(*) FROM jobs GROUP BY 1, 2;

INSERT INTO job_counts_hour (status, source, hour, n)
SELECT status, source, substr(created_at, 1, 13), COUNT(*) FROM jobs GROUP BY 1, 2, 3;

INSERT INTO job_counts_hour_plugin (status, source, plugin, hour, n)
SELECT status, source, plugin, substr(created_at, 1, 13), COUNT(*) FROM jobs GROUP BY 1, 2, 3, 4;

INSERT INTO job_counts_hour_command (status, source, command, hour, n)
SELECT status, source, command, substr(created_at, 1, 13), COUNT(*) FROM jobs GROUP BY 1, 2, 3, 4;

INSERT INTO job_counts_hour_plugin_command (status, source, plugin, command, hour, n)
SELECT status, source, plugin, command, substr(created_at, 1, 13), COUNT(*)
FROM jobs GROUP BY 1, 2, 3, 4, 5;

CREATE INDEX jobs_by_time ON jobs (created_at);

CREATE INDEX jobs_by_plugin_command ON jobs (plugin, command, created_at);

CREATE INDEX jobs_by_status ON jobs (status, created_at)
    WHERE status != 'succeeded';

CREATE INDEX jobs_by_status_plugin_command ON jobs (status, plugin, command, created_at)
    WHERE status != 'succeeded';

CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs
BEGIN
    INSERT INTO job_count_deltas (plugin, command, status, source, hour, d)
    VALUES (NEW.plugin, NEW.command, NEW.status, NEW.source, substr(NEW.created_at, 1, 13), 1);
END;

CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs
BEGIN
    INSERT INTO job_count_deltas (plugin, command, status, source, hour, d)
    VALUES (OLD.plugin, OLD.command, OLD.status, OLD.source, substr(OLD.created_at, 1, 13), -1);
END;

CREATE TRIGGER jobs_count_update AFTER UPDATE OF plugin, command, status, source, created_at ON jobs
WHEN OLD.plugin IS NOT NEW.plugin OR OLD.command IS NOT NEW.command
  OR OLD.status IS NOT NEW.status OR OLD.source IS NOT NEW.source
  OR substr(OLD.created_at, 1, 13) IS NOT substr(NEW.created_at, 1, 13)
BEGIN
    INSERT INTO job_count_deltas (plugin, command, status, source, hour, d)
    VALUES (OLD.plugin, OLD.command, OLD.status, OLD.source, substr(OLD.created_at, 1, 13), -1),
           (NEW.plugin, NEW.command, NEW.status, NEW.source, substr(NEW.created_at, 1, 13), 1);
END;

CREATE TABLE local_transitions (
    old_status TEXT NOT NULL,
    new_status TEXT NOT NULL,
    PRIMARY KEY (old_status, new_status)
) WITHOUT ROWID;

INSERT INTO local_transitions (old_status, new_status) VALUES
    ('queued', 'running'), ('queued', 'canceled'), ('queued', 'dead'),
    ('running', 'queued'), ('running', 'succeeded'), ('running', 'failed'),
    ('running', 'timed_out'), ('running', 'canceled'), ('running', 'dead');

DROP TRIGGER jobs_terminal_is_final;

CREATE TRIGGER jobs_local_transition BEFORE UPDATE OF status ON jobs
WHEN OLD.source = 'local' AND NEW.status IS NOT OLD.status
  AND NOT EXISTS (SELECT 1 FROM local_transitions
                  WHERE old_status = OLD.status AND new_status = NEW.status)
BEGIN
    SELECT RAISE(ABORT, 'illegal status transition for a local job');
END;

DROP INDEX jobs_dedupe;

CREATE UNIQUE INDEX jobs_dedupe ON jobs (plugin, command, ifnull(submitted_by, ''), dedupe_key)
    WHERE dedupe_key IS NOT NULL AND status IN ('queued', 'running');
