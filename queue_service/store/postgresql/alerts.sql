-- Named queries of the PostgreSQL store: failure alerts (the outbox, each alert's cursor
-- over it, the deliveries). Parameters are psycopg's %(name)s, bound by the server.
--
-- Every writer of alert_events takes alert_events_lock() first (the jobs triggers of
-- 0001_initial.sql do, and record_long_running below), so events commit in event_id order
-- and a cursor over event_id never passes an event that commits later.

-- name: long_running_due
-- Whether some running job (and attempt) started before %(started_before)s has no
-- running_long event for this threshold yet: checked before taking the outbox lock, so a
-- sender polling with nothing to record never waits for it.
SELECT EXISTS (
    SELECT 1 FROM jobs AS j
    WHERE j.status = 'running' AND j.started_at < %(started_before)s
      AND NOT EXISTS (
          SELECT 1 FROM alert_events AS e
          WHERE e.kind = 'running_long' AND e.job_id = j.job_id AND e.attempt = j.attempt
            AND e.running_seconds = %(running_seconds)s
      )
);

-- name: lock_alert_events
SELECT alert_events_lock();

-- name: record_long_running
-- Under the outbox lock: one running_long event per such job, oldest start first.
INSERT INTO alert_events (kind, job_id, plugin, command, source, status, attempt, last_error,
                          external_url, started_at, completed_at, running_seconds, recorded_at)
SELECT 'running_long', job_id, plugin, command, source, status, attempt, last_error,
       external_url, started_at, completed_at, %(running_seconds)s, %(now)s
FROM jobs AS j
WHERE j.status = 'running' AND j.started_at < %(started_before)s
  AND NOT EXISTS (
      SELECT 1 FROM alert_events AS e
      WHERE e.kind = 'running_long' AND e.job_id = j.job_id AND e.attempt = j.attempt
        AND e.running_seconds = %(running_seconds)s
  )
ORDER BY j.started_at
LIMIT %(limit)s
ON CONFLICT DO NOTHING;

-- name: lock_alert_cursor
-- The alert's cursor, locked: routers of one alert in several processes take turns, so
-- an event becomes at most one delivery per alert.
SELECT last_event_id FROM alert_cursors WHERE alert = %(alert)s FOR UPDATE;

-- name: init_alert_cursor
-- An alert seen for the first time starts after the newest event: it does not send what
-- happened before it was configured. No row back: another process made it meanwhile.
INSERT INTO alert_cursors (alert, last_event_id, updated_at)
SELECT %(alert)s, coalesce(max(event_id), 0), %(now)s FROM alert_events
ON CONFLICT (alert) DO NOTHING
RETURNING last_event_id;

-- name: set_alert_cursor
UPDATE alert_cursors SET last_event_id = %(last_event_id)s, updated_at = %(now)s
WHERE alert = %(alert)s;

-- name: alert_events_after
SELECT * FROM alert_events WHERE event_id > %(after)s ORDER BY event_id LIMIT %(limit)s;

-- name: alert_events_by_id
SELECT * FROM alert_events WHERE event_id = ANY(%(ids)s::bigint[]);

-- name: latest_alert_delivery
-- Locked for the routing transaction, so whether it can still be folded into (never
-- attempted) does not change before the fold: a sender's claim skips it meanwhile.
SELECT seq, status, attempts, lease_owner, not_before FROM alert_deliveries
WHERE alert = %(alert)s AND plugin = %(plugin)s
ORDER BY seq DESC LIMIT 1
FOR UPDATE;

-- name: insert_alert_delivery
INSERT INTO alert_deliveries (delivery_id, alert, plugin, first_event_id, last_event_id, events,
                              status, created_at, not_before, next_attempt_at)
VALUES (%(delivery_id)s, %(alert)s, %(plugin)s, %(first_event_id)s, %(last_event_id)s,
        %(events)s, 'pending', %(now)s, %(not_before)s, %(not_before)s);

-- name: fold_alert_delivery
-- Only into a delivery never attempted (outbox.plan_route decides, on the row locked by
-- latest_alert_delivery): what a receiver may already have seen never changes.
UPDATE alert_deliveries SET last_event_id = %(last_event_id)s, events = events + %(events)s
WHERE seq = %(seq)s AND status = 'pending' AND attempts = 0 AND lease_owner IS NULL;

-- name: claim_alert_deliveries
-- Due pending deliveries of one alert whose lease (if any) has expired: a delivery whose
-- sender died mid-send is sent again once its lease runs out. Rows another claimer (or a
-- router) holds are skipped, never waited for.
UPDATE alert_deliveries AS d SET
    attempts = d.attempts + 1,
    lease_owner = %(owner)s,
    lease_expires_at = %(lease_expires_at)s,
    last_attempt_at = %(now)s
FROM (
    SELECT seq FROM alert_deliveries
    WHERE status = 'pending' AND alert = %(alert)s AND next_attempt_at <= %(now)s
      AND (lease_expires_at IS NULL OR lease_expires_at < %(now)s)
    ORDER BY next_attempt_at, seq
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
) AS due
WHERE d.seq = due.seq
RETURNING d.*;

-- name: finish_alert_delivery
-- Only the holder of the current attempt's lease may record its outcome.
UPDATE alert_deliveries SET
    status = %(status)s,
    next_attempt_at = coalesce(%(retry_at)s, next_attempt_at),
    lease_owner = NULL,
    lease_expires_at = NULL,
    last_error = coalesce(%(error)s, last_error),
    response_status = %(response_status)s,
    finished_at = CASE WHEN %(status)s = 'pending' THEN NULL ELSE %(now)s END
WHERE delivery_id = %(delivery_id)s AND status = 'pending' AND lease_owner = %(owner)s
  AND attempts = %(attempt)s
RETURNING seq;

-- name: recent_alert_deliveries
SELECT * FROM alert_deliveries WHERE alert = %(alert)s ORDER BY seq DESC LIMIT %(limit)s;

-- name: recent_alert_failures
SELECT * FROM alert_deliveries
WHERE alert = %(alert)s AND last_error IS NOT NULL
ORDER BY seq DESC LIMIT %(limit)s;

-- name: alert_delivery_counts
SELECT status, count(*) FROM alert_deliveries WHERE alert = %(alert)s GROUP BY status;
