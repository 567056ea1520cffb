-- Named queries for failure alerts: the outbox, the cursors, the deliveries.

-- name: record_long_running
-- One running_long event per running job (and attempt) started before :started_before
-- that has none for this threshold yet.
INSERT INTO alert_events (kind, job_id, plugin, command, source, status, attempt, last_error,
                          external_url, started_at, completed_at, running_seconds, recorded_at)
SELECT 'running_long', job_id, plugin, command, source, status, attempt, last_error,
       external_url, started_at, completed_at, :running_seconds, :now
FROM jobs INDEXED BY jobs_by_status
WHERE status = 'running' AND status != 'succeeded' AND started_at < :started_before
  AND NOT EXISTS (
      SELECT 1 FROM alert_events AS e
      WHERE e.kind = 'running_long' AND e.job_id = jobs.job_id AND e.attempt = jobs.attempt
        AND e.running_seconds = :running_seconds
  )
LIMIT :limit;

-- name: init_alert_cursor
-- An alert seen for the first time starts after the newest event: it does not send
-- what happened before it was configured.
INSERT INTO alert_cursors (alert, last_event_id, updated_at)
SELECT :alert, COALESCE(MAX(event_id), 0), :now FROM alert_events WHERE true
ON CONFLICT (alert) DO NOTHING;

-- name: get_alert_cursor
SELECT last_event_id FROM alert_cursors WHERE alert = :alert;

-- name: set_alert_cursor
UPDATE alert_cursors SET last_event_id = :last_event_id, updated_at = :now WHERE alert = :alert;

-- name: alert_events_after
SELECT * FROM alert_events WHERE event_id > :after ORDER BY event_id LIMIT :limit;

-- name: alert_events_by_id
SELECT * FROM alert_events WHERE event_id IN (:first, :last);

-- name: latest_alert_delivery
SELECT seq, status, attempts, lease_owner, not_before FROM alert_deliveries
WHERE alert = :alert AND plugin = :plugin ORDER BY seq DESC LIMIT 1;

-- name: insert_alert_delivery
INSERT INTO alert_deliveries (delivery_id, alert, plugin, first_event_id, last_event_id, events,
                              status, created_at, not_before, next_attempt_at)
VALUES (:delivery_id, :alert, :plugin, :first_event_id, :last_event_id, :events, 'pending', :now,
        :not_before, :not_before);

-- name: fold_alert_delivery
-- Only into a delivery never attempted (outbox.plan_route decides, in this transaction):
-- what a receiver may already have seen never changes.
UPDATE alert_deliveries SET last_event_id = :last_event_id, events = events + :events
WHERE seq = :seq AND status = 'pending' AND attempts = 0 AND lease_owner IS NULL;

-- name: claim_alert_deliveries
-- Due pending deliveries of one alert whose lease (if any) has expired: a delivery whose
-- sender died mid-send is sent again once its lease runs out.
UPDATE alert_deliveries SET
    attempts = attempts + 1,
    lease_owner = :owner,
    lease_expires_at = :lease_expires_at,
    last_attempt_at = :now
WHERE seq IN (
    SELECT seq FROM alert_deliveries INDEXED BY alert_deliveries_due
    WHERE status = 'pending' AND alert = :alert AND next_attempt_at <= :now
      AND (lease_expires_at IS NULL OR lease_expires_at < :now)
    ORDER BY next_attempt_at, seq
    LIMIT :limit
)
RETURNING *;

-- name: finish_alert_delivery
-- Only the holder of the current attempt's lease may record its outcome.
UPDATE alert_deliveries SET
    status = :status,
    next_attempt_at = COALESCE(:retry_at, next_attempt_at),
    lease_owner = NULL,
    lease_expires_at = NULL,
    last_error = COALESCE(:error, last_error),
    response_status = :response_status,
    finished_at = CASE WHEN :status = 'pending' THEN NULL ELSE :now END
WHERE delivery_id = :delivery_id AND status = 'pending' AND lease_owner = :owner
  AND attempts = :attempt
RETURNING seq;

-- name: recent_alert_deliveries
SELECT * FROM alert_deliveries INDEXED BY alert_deliveries_recent
WHERE alert = :alert ORDER BY seq DESC LIMIT :limit;

-- name: recent_alert_failures
SELECT * FROM alert_deliveries INDEXED BY alert_deliveries_recent
WHERE alert = :alert AND last_error IS NOT NULL ORDER BY seq DESC LIMIT :limit;

-- name: alert_delivery_counts
SELECT status, COUNT(*) FROM alert_deliveries INDEXED BY alert_deliveries_recent
WHERE alert = :alert GROUP BY status;

-- name: prune_alert_deliveries
DELETE FROM alert_deliveries WHERE seq IN (
    SELECT seq FROM alert_deliveries INDEXED BY alert_deliveries_finished
    WHERE status != 'pending' AND finished_at < :before
    LIMIT :limit
);

-- name: prune_alert_events
-- Events recorded before :before that no pending delivery needs. An alert whose cursor is
-- still behind them (no process ran it for the whole retention) skips them.
DELETE FROM alert_events WHERE event_id IN (
    SELECT event_id FROM alert_events INDEXED BY alert_events_by_time
    WHERE recorded_at < :before
      AND NOT EXISTS (
          SELECT 1 FROM alert_deliveries AS d
          WHERE d.status = 'pending'
            AND (d.first_event_id = alert_events.event_id
                 OR d.last_event_id = alert_events.event_id)
      )
    LIMIT :limit
);
