-- 0004: own-job reads. A job records the id of the token that enqueued it, so that token
-- (whatever its scopes) can read the job's status view and list its own jobs.
--
-- The id, not the name: a name is free again once its token is revoked, and the built-in
-- submitters `cli` and `scheduler` are names a token could take. Token ids are never reused
-- (tokens are revoked, never deleted). Jobs enqueued before this migration, by the CLI, by
-- the scheduler or by the Databricks sync have none: they are nobody's own jobs.
--
-- The partial index serves `GET /jobs?mine=true`: one walk over the token's own jobs in
-- (created_at, seq) order, and their exact count. It holds only API-enqueued jobs and is
-- written once per job (a status change does not touch it).

ALTER TABLE jobs ADD COLUMN submitted_by_token INTEGER;

CREATE INDEX jobs_by_submitter ON jobs (submitted_by_token, created_at)
    WHERE submitted_by_token IS NOT NULL;
