"""Bearer tokens (RFC 6750): headers, scopes, expiry, revocation, hashing, constant-time compare."""

from __future__ import annotations

import httpx
import pytest

from queue_service.api import ServiceState
from queue_service.auth import AuthError, hash_token
from queue_service.scopes import UnknownScope, effective
from queue_service.store import NewJob, SQLiteStore, Token
from tests.conftest import RawDatabase, TokenFactory, assert_error, bearer

pytestmark = pytest.mark.anyio

PROTECTED = ["/jobs", "/job/00000000-0000-0000-0000-000000000000"]


@pytest.mark.parametrize("path", PROTECTED)
async def test_missing_token_is_401_with_bare_challenge(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(path)
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == 'Bearer realm="queue-service"'


@pytest.mark.parametrize("path", PROTECTED)
@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer qs_" + "A" * 43,  # well-formed, unknown
        "Bearer not-a-qs-token",
        "Bearer qs_short",
        "Token qs_" + "A" * 43,
    ],
)
async def test_bad_token_is_401_invalid_token(
    client: httpx.AsyncClient, path: str, header: str
) -> None:
    response = await client.get(path, headers={"Authorization": header})
    assert_error(response, 401, "invalid_token")
    assert response.headers["www-authenticate"] == (
        'Bearer realm="queue-service", error="invalid_token"'
    )


async def test_scheme_is_case_insensitive(
    client: httpx.AsyncClient, make_token: TokenFactory
) -> None:
    secret = await make_token("jobs:ro")
    response = await client.get("/jobs", headers={"Authorization": f"bearer {secret}"})
    assert response.status_code == 200


async def test_revoked_token_is_401(
    client: httpx.AsyncClient, state: ServiceState, store: SQLiteStore
) -> None:
    secret, _ = await state.tokens.create("gone", ["*"])
    assert (await client.get("/jobs", headers=bearer(secret))).status_code == 200
    assert await store.revoke_token("gone")
    response = await client.get("/jobs", headers=bearer(secret))
    body = assert_error(response, 401, "invalid_token")
    assert "revoked" in body["error"]


async def test_expired_token_is_401(
    client: httpx.AsyncClient, raw_db: RawDatabase, state: ServiceState
) -> None:
    secret, _ = await state.tokens.create("short", ["*"], expires_in="1h")
    assert (await client.get("/jobs", headers=bearer(secret))).status_code == 200
    raw_db.execute(
        "UPDATE tokens SET expires_at = '2000-01-01T00:00:00.000000Z' WHERE name = 'short'"
    )
    body = assert_error(await client.get("/jobs", headers=bearer(secret)), 401, "invalid_token")
    assert "expired" in body["error"]


async def test_insufficient_scope_is_403_naming_a_scope(
    client: httpx.AsyncClient, make_token: TokenFactory
) -> None:
    secret = await make_token("plugin:rw")
    response = await client.get("/jobs", headers=bearer(secret))
    assert_error(response, 403, "insufficient_scope")
    assert response.headers["www-authenticate"] == (
        'Bearer realm="queue-service", error="insufficient_scope", scope="jobs:status:ro"'
    )


@pytest.mark.parametrize(
    ("scope", "jobs_status", "job_status", "detail"),
    [
        ("jobs:status:ro", 200, 200, False),
        ("jobs:ro", 200, 200, True),
        ("jobs:rw", 200, 200, True),
        ("*", 200, 200, True),
        # Without job scopes a token reads only its own jobs; this one is nobody's: 404.
        ("plugin:ro", 403, 404, False),
        ("plugin:rw", 403, 404, False),
    ],
)
async def test_scope_matrix(
    client: httpx.AsyncClient,
    store: SQLiteStore,
    make_token: TokenFactory,
    scope: str,
    jobs_status: int,
    job_status: int,
    detail: bool,
) -> None:
    job_id = (await store.enqueue(NewJob("p", "c", {"k": 1}))).job_id
    headers = bearer(await make_token(scope))
    assert (await client.get("/jobs", headers=headers)).status_code == jobs_status
    response = await client.get(f"/job/{job_id}", headers=headers)
    assert response.status_code == job_status
    if job_status == 200:
        assert ("payload" in response.json()) is detail


def test_scopes_nest() -> None:
    assert effective(["*"]) >= {"jobs:rw", "jobs:ro", "jobs:status:ro", "plugin:rw", "plugin:ro"}
    assert effective(["jobs:rw"]) == {"jobs:rw", "jobs:ro", "jobs:status:ro"}
    assert effective(["plugin:rw"]) == {"plugin:rw", "plugin:ro"}
    assert "jobs:ro" not in effective(["jobs:status:ro"])


async def test_unknown_scope_is_rejected_at_creation(state: ServiceState) -> None:
    with pytest.raises(UnknownScope, match="jobs:write"):
        await state.tokens.create("x", ["jobs:write"])
    assert await state.store.count_live_tokens() == 0


async def test_only_hashes_are_stored(state: ServiceState, raw_db: RawDatabase) -> None:
    secret, _ = await state.tokens.create("h", ["*"])
    assert secret.startswith("qs_") and len(secret) >= 3 + 43
    dump = raw_db.dump()
    assert secret not in dump and secret[3:] not in dump
    assert hash_token(secret) in dump


async def test_the_store_is_asked_for_the_hash_never_the_secret(
    state: ServiceState, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret, _ = await state.tokens.create("c", ["*"])
    asked: list[str] = []
    real = state.store.token_by_hash

    async def spy(token_hash: str) -> tuple[Token, str] | None:
        asked.append(token_hash)
        return await real(token_hash)

    monkeypatch.setattr(state.store, "token_by_hash", spy)
    assert (await state.tokens.verify(f"Bearer {secret}")).name == "c"
    # A lookup timed by the database sees a fixed-length digest, not the secret.
    assert asked == [hash_token(secret)]
    assert secret not in asked[0] and len(asked[0]) == 64


async def test_a_near_miss_secret_is_refused(state: ServiceState) -> None:
    secret, _ = await state.tokens.create("c", ["*"])
    last = "A" if secret[-1] != "A" else "B"
    with pytest.raises(AuthError, match="unknown"):
        await state.tokens.verify(f"Bearer {secret[:-1]}{last}")


async def test_a_row_whose_stored_hash_differs_is_refused(
    state: ServiceState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify() checks the stored hash itself (in constant time), so a lookup that matches too
    loosely (a collation, a prefix index, a store bug) cannot let another secret in."""
    secret, _ = await state.tokens.create("c", ["*"])
    found = await state.store.token_by_hash(hash_token(secret))
    assert found is not None

    async def loose(token_hash: str) -> tuple[Token, str] | None:
        return found

    monkeypatch.setattr(state.store, "token_by_hash", loose)
    assert (await state.tokens.verify(f"Bearer {secret}")).name == "c"
    with pytest.raises(AuthError, match="unknown"):
        await state.tokens.verify("Bearer qs_" + "A" * 43)


async def test_last_used_is_recorded(state: ServiceState) -> None:
    secret, _ = await state.tokens.create("u", ["*"])
    assert (await state.store.list_tokens())[0].last_used_at is None
    await state.tokens.verify(f"Bearer {secret}")
    await state.tokens.flush()
    assert (await state.store.list_tokens())[0].last_used_at is not None


async def test_token_in_query_string_is_not_accepted(
    client: httpx.AsyncClient, make_token: TokenFactory
) -> None:
    secret = await make_token("*")
    response = await client.get(f"/jobs?access_token={secret}")
    assert_error(response, 401, "unauthorized")
    response = await client.get(f"/jobs?access_token={secret}", headers=bearer(secret))
    body = assert_error(response, 400, "unknown_parameter", param="access_token")
    assert "query string" in body["error"]


async def test_verify_rejects_missing_header(state: ServiceState) -> None:
    with pytest.raises(AuthError) as info:
        await state.tokens.verify(None)
    assert info.value.missing


async def test_first_admin_is_created_once_even_when_raced(state: ServiceState) -> None:
    import asyncio

    results = await asyncio.gather(*(state.tokens.create_first_admin() for _ in range(5)))
    created = [r for r in results if r is not None]
    assert len(created) == 1
    assert created[0][1].name == "admin" and created[0][1].scopes == ("*",)
    assert await state.store.count_live_tokens() == 1


@pytest.mark.parametrize("how", ["revoked", "expired"])
async def test_no_first_admin_once_the_database_has_had_a_token(
    state: ServiceState, raw_db: RawDatabase, how: str
) -> None:
    # An operator who revoked (or let expire) every token has locked the API on purpose:
    # the next start must not mint a fresh `*` token.
    await state.tokens.create("admin", ["*"])
    if how == "revoked":
        assert await state.store.revoke_token("admin")
    else:
        raw_db.execute("UPDATE tokens SET expires_at = '2000-01-01T00:00:00.000000Z'")
    assert await state.store.count_live_tokens() == 0
    assert await state.tokens.create_first_admin() is None
    assert len(await state.store.list_tokens()) == 1
