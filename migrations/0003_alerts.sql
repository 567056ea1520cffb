-- 0003: failure alerts (the `[[alerts]]` of the configuration).
--
-- * alert_events is an outbox: a trigger on jobs writes a row when a job becomes failed,
--   timed_out or dead, in the same transaction as the status change, so no change of any
--   writer (the worker, lease recovery, the Databricks sync, a write made outside the
--   store) can be missed by a crash. Long-running jobs are recorded by the delivering
--   process (kind 'running_long'), at most once per job, attempt and threshold.
-- * alert_cursors: how far each configured alert has read the outbox. Reading a batch,
--   making its deliveries and moving the cursor are one transaction, so an event becomes
--   at most one delivery per alert.
-- * alert_deliveries: one row per message to send, claimed with a lease like a job, retried
--   with backoff, marked sent after a 2xx. With a rate limit, events of the same plugin are
--   folded into a delivery not yet attempted (`events` counts them).

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
