"""Bearer tokens (RFC 6750): creation, hashing, verification.

Tokens are `qs_` + 43 url-safe characters (32 random bytes). Only the SHA-256
of a token is stored; a presented token is hashed, looked up by hash, and the
stored hash is compared with hmac.compare_digest, so neither the secret nor its
length leaks through timing. A high-entropy random secret needs no slow KDF.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import time
import unicodedata
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta

from queue_service.scopes import validate_scopes
from queue_service.store import Store, Token
from queue_service.timeutil import format_ts, now_ts, parse_duration, utcnow

log = logging.getLogger("queue_service.auth")

TOKEN_PREFIX = "qs_"  # noqa: S105 - a prefix, not a secret
_TOKEN_SHAPE = re.compile(r"^qs_[A-Za-z0-9_-]{43}$")
#: RFC 6750 b64token after the scheme.
_BEARER = re.compile(r"^[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*) *$")
#: last_used_at is written at most this often per token, to keep reads read-only.
TOUCH_INTERVAL_S = 60.0
#: The longest name a token may have, in characters.
MAX_NAME_LENGTH = 200
#: The longest lifetime a token may be given; without one it never expires.
MAX_LIFETIME = timedelta(days=36500)


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


#: Why authentication failed, as counted by TokenService.failures (and /metrics).
AUTH_FAILURE_REASONS = (
    "missing",
    "malformed",
    "unknown",
    "revoked",
    "expired",
    "insufficient_scope",
)


class AuthError(Exception):
    """Why a request is not authenticated: `reason` is one of AUTH_FAILURE_REASONS
    (`missing` is the bare 401, without a token)."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason

    @property
    def missing(self) -> bool:
        return self.reason == "missing"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's name and scopes (never its secret)."""

    name: str
    scopes: tuple[str, ...]
    token_id: int


def parse_authorization(header: str | None) -> str:
    """The bearer credential from an Authorization header, or AuthError."""
    if header is None or not header.strip():
        raise AuthError(
            "this endpoint needs a bearer token: send 'Authorization: Bearer qs_…'",
            reason="missing",
        )
    match = _BEARER.match(header.strip())
    if not match:
        raise AuthError("the Authorization header must be 'Bearer <token>'", reason="malformed")
    return match.group(1)


def check_token_name(name: str) -> None:
    """Raise ValueError unless `name` is 1-200 characters, none of them control or
    invisible ones (they would garble `token list` and logs, or spoof another name)."""
    if not name.strip():
        raise ValueError("a token needs a non-empty name")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"a token name has at most {MAX_NAME_LENGTH} characters")
    for char in name:
        # C*: control, format (bidi overrides, zero-width), surrogates, private, unassigned.
        if unicodedata.category(char)[0] == "C" or unicodedata.category(char) in ("Zl", "Zp"):
            raise ValueError(
                f"a token name may not hold control or invisible characters: "
                f"{ascii(name)[:80]} holds U+{ord(char):04X}"
            )


def expiry_after(expires_in: str) -> str:
    """The expiry of a token created now with lifetime `expires_in` (e.g. `30d`)."""
    too_long = ValueError(
        f"expiry {expires_in!r} is too far ahead: at most {MAX_LIFETIME.days}d "
        "(leave the expiry out for a token that never expires)"
    )
    try:
        lifetime = parse_duration(expires_in)
    except OverflowError:
        raise too_long from None
    if lifetime > MAX_LIFETIME:
        raise too_long
    return format_ts(utcnow() + lifetime)


class TokenService:
    """Creates and verifies tokens against the store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._last_touch: dict[int, float] = {}
        self._pending: set[asyncio.Task[None]] = set()
        #: Failed authentications since start, by reason (AUTH_FAILURE_REASONS).
        self.failures: Counter[str] = Counter()

    def record_failure(self, reason: str) -> None:
        """Count a failed authentication (verify counts its own; callers that refuse a
        valid token for its scope count `insufficient_scope`)."""
        self.failures[reason] += 1

    async def create(
        self, name: str, scopes: list[str] | tuple[str, ...], expires_in: str | None = None
    ) -> tuple[str, Token]:
        """Create a token; return (secret, row). The secret is shown once and never stored."""
        check_token_name(name)
        checked = validate_scopes(list(scopes))
        expires_at = expiry_after(expires_in) if expires_in else None
        secret = new_secret()
        token = await self.store.create_token(name, hash_token(secret), checked, expires_at)
        return secret, token

    async def create_first_admin(self) -> tuple[str, Token] | None:
        """A `*` token when the database has never had a token (first start), else None."""
        secret = new_secret()
        token = await self.store.create_first_token("admin", hash_token(secret), ("*",))
        return None if token is None else (secret, token)

    async def verify(self, header: str | None) -> Principal:
        """Authenticate an Authorization header value; raise AuthError (counted in
        `failures`) when it fails."""
        try:
            return await self._verify(header)
        except AuthError as exc:
            self.record_failure(exc.reason)
            raise

    async def _verify(self, header: str | None) -> Principal:
        secret = parse_authorization(header)
        if not _TOKEN_SHAPE.match(secret):
            raise AuthError("the bearer token is not a queue-service token", reason="malformed")
        presented = hash_token(secret)
        found = await self.store.token_by_hash(presented)
        if found is None or not hmac.compare_digest(found[1], presented):
            raise AuthError("the bearer token is unknown", reason="unknown")
        token = found[0]
        if token.revoked_at is not None:
            raise AuthError("the bearer token has been revoked", reason="revoked")
        if token.expires_at is not None and token.expires_at <= now_ts():
            raise AuthError("the bearer token has expired", reason="expired")
        await self._maybe_touch(token.token_id)
        return Principal(name=token.name, scopes=token.scopes, token_id=token.token_id)

    async def _maybe_touch(self, token_id: int) -> None:
        """Record last_used_at at most once a minute per token, off the request path:
        a busy writer must never slow down or fail an authenticated read."""
        now = time.monotonic()
        last = self._last_touch.get(token_id)
        if last is not None and now - last < TOUCH_INTERVAL_S:
            return
        self._last_touch[token_id] = now
        task = asyncio.create_task(self._touch(token_id))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _touch(self, token_id: int) -> None:
        try:
            await self.store.touch_token(token_id)
        except Exception:  # bookkeeping only; retried on a later request
            self._last_touch.pop(token_id, None)
            log.debug("could not record last_used_at for token %d", token_id, exc_info=True)

    async def flush(self) -> None:
        """Wait for pending last_used_at writes (for shutdown and tests)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
