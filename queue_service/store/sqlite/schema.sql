-- The current schema, as the migrations in migrations/ build it.
-- Kept by hand beside them; tests/test_migrations.py fails when the two differ.

CREATE TABLE jobs (
    seq              INTEGER PRIMARY KEY,            -- insertion order: the listing tie-break
    job_id           TEXT    NOT NULL UNIQUE,        -- UUID
    plugin           TEXT    NOT NULL,
    command          TEXT    NOT NULL,
    status           TEXT    NOT NULL CHECK (status IN
                        ('queued', 'running', 'succeeded', 'failed', 'timed_out', 'canceled', 'dead')),
    source           TEXT    NOT NULL DEFAULT 'local' CHECK (source IN ('local', 'databricks')),
    payload          TEXT,                           -- JSON
    result           TEXT,                           -- JSON: the plugin's result
    events           TEXT,                           -- JSON list the plugin emitted
    logs             TEXT,                           -- JSON list of {level, message}
    last_error       TEXT,
    attempt          INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts     INTEGER NOT NULL DEFAULT 4 CHECK (max_attempts >= 1),
    submitted_by     TEXT,
    external_id      TEXT,
    external_url     TEXT,
    dedupe_key       TEXT,
    schedule_id      TEXT,
    created_at       TEXT    NOT NULL,
    started_at       TEXT,
    completed_at     TEXT,
    run_after        TEXT    NOT NULL,
    lease_expires_at TEXT,
    lease_owner      TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0
, submitted_by_token INTEGER);  -- by 0004's ALTER TABLE, hence the layout: the enqueuing token's id


CREATE TABLE job_counts (
    plugin  TEXT    NOT NULL,
    command TEXT    NOT NULL,
    status  TEXT    NOT NULL,
    source  TEXT    NOT NULL,
    n       INTEGER NOT NULL,
    PRIMARY KEY (plugin, command, status, source)
) WITHOUT ROWID;

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

CREATE TABLE local_transitions (
    old_status TEXT NOT NULL,
    new_status TEXT NOT NULL,
    PRIMARY KEY (old_status, new_status)
) WITHOUT ROWID;

-- The legal transitions of local jobs (queue_service/statuses.py LOCAL_TRANSITIONS).
INSERT INTO local_transitions (old_status, new_status) VALUES
    ('queued', 'running'), ('queued', 'canceled'), ('queued', 'dead'),
    ('running', 'queued'), ('running', 'succeeded'), ('running', 'failed'),
    ('running', 'timed_out'), ('running', 'canceled'), ('running', 'dead');

CREATE TABLE job_attempts (
    id           INTEGER PRIMARY KEY,  -- record order; an interrupted attempt's number is reused
    job_id       TEXT    NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    attempt      INTEGER NOT NULL,
    status       TEXT    NOT NULL,  -- running, succeeded, failed, timed_out, canceled, lost, interrupted
    started_at   TEXT    NOT NULL,
    completed_at TEXT,
    exit_code    INTEGER,
    error        TEXT,
    stderr_tail  TEXT
);

CREATE TABLE plugin_state (
    plugin     TEXT PRIMARY KEY,
    state      TEXT NOT NULL,  -- JSON object
    updated_at TEXT NOT NULL
);

CREATE TABLE tokens (
    token_id     INTEGER PRIMARY KEY,
    name         TEXT NOT NULL,
    token_hash   TEXT NOT NULL UNIQUE,  -- hex SHA-256 of the secret; the secret is never stored
    scopes       TEXT NOT NULL,         -- JSON array
    created_at   TEXT NOT NULL,
    expires_at   TEXT,
    last_used_at TEXT,
    revoked_at   TEXT
);

CREATE TABLE schedule_state (
    schedule_key  TEXT PRIMARY KEY,  -- plugin:schedule_id
    next_run_at   TEXT,
    last_fired_at TEXT,
    last_job_id   TEXT,
    updated_at    TEXT NOT NULL
);

CREATE TABLE schedule_fires (
    schedule_key TEXT NOT NULL,
    slot         TEXT NOT NULL,
    job_id       TEXT,
    fired_at     TEXT NOT NULL,
    PRIMARY KEY (schedule_key, slot)
) WITHOUT ROWID;

CREATE TABLE sync_state (
    workspace       TEXT PRIMARY KEY,
    host            TEXT,
    watermark_ms    INTEGER,
    last_success_at TEXT,
    last_error      TEXT,
    last_error_at   TEXT,
    runs_ingested   INTEGER NOT NULL DEFAULT 0,
    healthy         INTEGER NOT NULL DEFAULT 1,
    extra           TEXT NOT NULL DEFAULT '{}'  -- JSON object
);

CREATE INDEX jobs_by_time ON jobs (created_at);

CREATE INDEX jobs_by_plugin_command ON jobs (plugin, command, created_at);

CREATE INDEX jobs_by_status ON jobs (status, created_at)
    WHERE status != 'succeeded';

CREATE INDEX jobs_by_status_plugin_command ON jobs (status, plugin, command, created_at)
    WHERE status != 'succeeded';

CREATE INDEX jobs_claimable ON jobs (plugin, run_after) WHERE status = 'queued';

CREATE INDEX jobs_leases    ON jobs (lease_expires_at) WHERE status = 'running';

CREATE UNIQUE INDEX jobs_dedupe ON jobs (plugin, command, ifnull(submitted_by, ''), dedupe_key)
    WHERE dedupe_key IS NOT NULL AND status IN ('queued', 'running');

CREATE INDEX jobs_schedule_active ON jobs (schedule_id)
    WHERE schedule_id IS NOT NULL AND status IN ('queued', 'running');

CREATE INDEX jobs_finished ON jobs (completed_at)
    WHERE status NOT IN ('queued', 'running');

CREATE INDEX job_attempts_by_job ON job_attempts (job_id, attempt);

CREATE UNIQUE INDEX tokens_live_name ON tokens (name) WHERE revoked_at IS NULL;

CREATE INDEX jobs_by_submitter ON jobs (submitted_by_token, created_at)
    WHERE submitted_by_token IS NOT NULL;

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

CREATE TRIGGER jobs_local_transition BEFORE UPDATE OF status ON jobs
WHEN OLD.source = 'local' AND NEW.status IS NOT OLD.status
  AND NOT EXISTS (SELECT 1 FROM local_transitions
                  WHERE old_status = OLD.status AND new_status = NEW.status)
BEGIN
    SELECT RAISE(ABORT, 'illegal status transition for a local job');
END;

-- Failure alerts (migrations/0003_alerts.sql).

CREATE TABLE alert_events (
    event_id        INTEGER PRIMARY KEY,
    kind            TEXT    NOT NULL CHECK (kind IN ('status', 'running_long')),
    job_id          TEXT    NOT NULL,
    plugin          TEXT    NOT NULL,
    command         TEXT    NOT NULL,
    source          TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    attempt         INTEGER NOT NULL,
    last_error      TEXT,
    external_url    TEXT,
    started_at      TEXT,
    completed_at    TEXT,
    running_seconds INTEGER,  -- the threshold of a running_long event; NULL for 'status'
    recorded_at     TEXT    NOT NULL
);

CREATE UNIQUE INDEX alert_events_running_long ON alert_events (job_id, attempt, running_seconds)
    WHERE kind = 'running_long';

CREATE INDEX alert_events_by_time ON alert_events (recorded_at);

CREATE TABLE alert_cursors (
    alert         TEXT    PRIMARY KEY,
    last_event_id INTEGER NOT NULL,
    updated_at    TEXT    NOT NULL
);

CREATE TABLE alert_deliveries (
    seq              INTEGER PRIMARY KEY,
    delivery_id      TEXT    NOT NULL UNIQUE,  -- UUID; the Idempotency-Key header
    alert            TEXT    NOT NULL,
    plugin           TEXT    NOT NULL,         -- the rate limit's group
    first_event_id   INTEGER NOT NULL,
    last_event_id    INTEGER NOT NULL,
    events           INTEGER NOT NULL DEFAULT 1 CHECK (events >= 1),
    status           TEXT    NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
    created_at       TEXT    NOT NULL,
    not_before       TEXT    NOT NULL,         -- its rate-limit window opens (created_at without one)
    next_attempt_at  TEXT    NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires_at TEXT,
    last_attempt_at  TEXT,
    last_error       TEXT,
    response_status  INTEGER,
    finished_at      TEXT
);

CREATE INDEX alert_deliveries_due ON alert_deliveries (alert, next_attempt_at)
    WHERE status = 'pending';

CREATE INDEX alert_deliveries_by_alert ON alert_deliveries (alert, plugin, seq);

CREATE INDEX alert_deliveries_recent ON alert_deliveries (alert, seq);

CREATE INDEX alert_deliveries_finished ON alert_deliveries (finished_at)
    WHERE status != 'pending';

CREATE TRIGGER jobs_alert_insert AFTER INSERT ON jobs
WHEN NEW.status IN ('failed', 'timed_out', 'dead')
BEGIN
    INSERT INTO alert_events (kind, job_id, plugin, command, source, status, attempt,
                              last_error, external_url, started_at, completed_at, recorded_at)
    VALUES ('status', NEW.job_id, NEW.plugin, NEW.command, NEW.source, NEW.status, NEW.attempt,
            NEW.last_error, NEW.external_url, NEW.started_at, NEW.completed_at,
            strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z');
END;

CREATE TRIGGER jobs_alert_status AFTER UPDATE OF status ON jobs
WHEN NEW.status IN ('failed', 'timed_out', 'dead') AND NEW.status IS NOT OLD.status
BEGIN
    INSERT INTO alert_events (kind, job_id, plugin, command, source, status, attempt,
                              last_error, external_url, started_at, completed_at, recorded_at)
    VALUES ('status', NEW.job_id, NEW.plugin, NEW.command, NEW.source, NEW.status, NEW.attempt,
            NEW.last_error, NEW.external_url, NEW.started_at, NEW.completed_at,
            strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z');
END;
