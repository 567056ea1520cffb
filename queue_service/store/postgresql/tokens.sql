-- Named queries of the PostgreSQL store: tokens. Only hashes are stored.

-- name: insert_token
INSERT INTO tokens (name, token_hash, scopes, created_at, expires_at)
VALUES (%(name)s, %(token_hash)s, %(scopes)s, %(created_at)s, %(expires_at)s)
RETURNING token_id, name, token_hash, scopes, created_at, expires_at, last_used_at, revoked_at;

-- name: lock_tokens
-- Serializes the creation of the first token across processes (until the transaction ends).
SELECT pg_advisory_xact_lock('tokens'::regclass::oid::integer, 0);

-- name: any_token
-- Every token ever created counts: revoked and expired rows stay in the table.
SELECT EXISTS (SELECT 1 FROM tokens);

-- name: token_by_hash
SELECT token_id, name, token_hash, scopes, created_at, expires_at, last_used_at, revoked_at
FROM tokens WHERE token_hash = %(token_hash)s;

-- name: list_tokens
SELECT token_id, name, token_hash, scopes, created_at, expires_at, last_used_at, revoked_at
FROM tokens ORDER BY created_at, token_id;

-- name: count_live_tokens
-- Usable tokens: neither revoked nor expired.
SELECT count(*) FROM tokens
WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > %(now)s);

-- name: revoke_token
UPDATE tokens SET revoked_at = %(now)s WHERE name = %(name)s AND revoked_at IS NULL
RETURNING token_id;

-- name: touch_token
UPDATE tokens SET last_used_at = %(now)s WHERE token_id = %(token_id)s;
