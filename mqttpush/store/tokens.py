"""App access tokens (docs/api.md, "App access tokens"): ``mpt_`` and 256 random bits, kept only
as their SHA-256. Each belongs to one app, has a scope (``read`` < ``push`` < ``admin``), may
expire, and may be revoked; a revoked token stays listed."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

from mqttpush.errors import InvalidContent, NotFound
from mqttpush.store.core import Repository, StoreCore

TOKEN_PREFIX = "mpt_"
SCOPES = ("read", "push", "admin")
"""Each scope allows what the ones before it allow."""
LOOKUP_SECONDS = 1.0
"""How long a token read from the store is used without reading it again: a revoke made by
another process (``mqttpush app token revoke``) holds within this; one made here at once."""
TOUCH_SECONDS = 60.0
"""``last_used_at`` is kept to this resolution: at most one write per token per period."""
MAX_NAME = 64
_TOKEN_RE = re.compile(r"mpt_[A-Za-z0-9_-]{43}")
_COLUMNS = "token_id, app_key, name, scope, prefix, created_at, expires_at, last_used_at, revoked_at"


def token_digest(token: str) -> bytes:
    """How the store finds a token: its SHA-256. Unsalted and unstretched on purpose: the token is
    256 random bits (nothing to guess), and a push per request must stay cheap to check."""
    return hashlib.sha256(token.encode()).digest()


def looks_like_token(value: str) -> bool:
    """True for the form of a token this module issues (a cheap refusal before any lookup)."""
    return _TOKEN_RE.fullmatch(value) is not None


def covers(granted: str, needed: str) -> bool:
    """Does a token of scope ``granted`` allow what needs ``needed``?"""
    return SCOPES.index(granted) >= SCOPES.index(needed)


@dataclass(frozen=True, slots=True)
class AppToken:
    """What the store knows of one token (never the token itself)."""

    token_id: str
    app_key: str
    name: str | None
    scope: str
    prefix: str
    created_at: float
    expires_at: float | None
    last_used_at: float | None
    revoked_at: float | None

    def state(self, now: float) -> str:
        """``active``, ``expired`` or ``revoked``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def doc(self, now: float) -> dict[str, Any]:
        """The listing form (``app token list --json``)."""
        return {
            "token_id": self.token_id,
            "app_key": self.app_key,
            "name": self.name,
            "scope": self.scope,
            "prefix": self.prefix,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "last_used_at": self.last_used_at,
            "revoked_at": self.revoked_at,
            "state": self.state(now),
        }


@dataclass(frozen=True, slots=True)
class NewToken:
    """A token just created: ``token`` is shown once and stored only as its hash."""

    token: str
    info: AppToken


def _row(row: Any) -> AppToken:
    return AppToken(*row)


class TokenRepository(Repository):
    """``store.tokens``: create, list, revoke and look up app tokens.

    The look-up cache (:meth:`cached`, :meth:`remember`) is used from the event loop while the
    queries run on the store thread; :meth:`revoke` bumps ``generation`` and drops the entry, so
    a revoke through this store is seen by the very next request."""

    def __init__(self, store: StoreCore) -> None:
        super().__init__(store)
        self._cache: dict[bytes, tuple[float, AppToken]] = {}
        self._touched: dict[str, float] = {}
        self.generation = 0

    def create(
        self, app_key: str, scope: str, *, expires_in: float | None = None, name: str | None = None
    ) -> NewToken:
        """A new token for ``app_key`` (which must exist), valid ``expires_in`` seconds (None: always)."""
        if scope not in SCOPES:
            raise InvalidContent(f"scope must be one of {', '.join(SCOPES)}", code="invalid_request")
        if name is not None and not 1 <= len(name) <= MAX_NAME:
            raise InvalidContent(f"a token name is 1-{MAX_NAME} characters", code="invalid_request")
        if expires_in is not None and not expires_in > 0:
            raise InvalidContent("a token's lifetime must be positive", code="invalid_request")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = self.clock.now()
        info = AppToken(
            token_id="tok_" + secrets.token_hex(8),
            app_key=app_key,
            name=name,
            scope=scope,
            prefix=token[: len(TOKEN_PREFIX) + 4] + "…",
            created_at=now,
            expires_at=None if expires_in is None else now + expires_in,
            last_used_at=None,
            revoked_at=None,
        )
        with self._tx() as conn:
            if conn.execute("SELECT 1 FROM apps WHERE app_key = ?", (app_key,)).fetchone() is None:
                raise NotFound(f"unknown app key {app_key}", code="unknown_app")
            conn.execute(
                "INSERT INTO app_tokens (token_id, app_key, name, scope, token_hash, prefix, created_at,"
                " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    info.token_id,
                    app_key,
                    name,
                    scope,
                    token_digest(token),
                    info.prefix,
                    info.created_at,
                    info.expires_at,
                ),
            )
        return NewToken(token, info)

    def for_app(self, app_key: str) -> list[AppToken]:
        """Every token of the app, revoked and expired ones included, oldest first."""
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM app_tokens WHERE app_key = ? ORDER BY created_at, token_id", (app_key,)
        )
        return [_row(r) for r in rows]

    def revoke(self, app_key: str, token_id_or_token: str) -> AppToken:
        """Revoke one of the app's tokens, named by its id or by the token itself. Revoking a
        revoked token changes nothing (it keeps its first ``revoked_at``)."""
        key: bytes | str = token_id_or_token
        where = "token_id = ?"
        if token_id_or_token.startswith(TOKEN_PREFIX):
            where, key = "token_hash = ?", token_digest(token_id_or_token)
        now = self.clock.now()
        with self._tx() as conn:
            row = conn.execute(
                f"UPDATE app_tokens SET revoked_at = coalesce(revoked_at, ?) WHERE app_key = ? AND {where}"
                f" RETURNING {_COLUMNS}",
                (now, app_key, key),
            ).fetchone()
            if row is None:
                raise NotFound(f"no token {token_id_or_token[:24]!r} in app {app_key}", code="unknown_token")
        revoked = _row(row)
        # Bump first, then drop: a look-up that raced this one is not remembered (see remember()).
        self.generation += 1
        for digest, (_, cached) in list(self._cache.items()):
            if cached.token_id == revoked.token_id:
                self._cache.pop(digest, None)
        return revoked

    def find(self, digest: bytes) -> AppToken | None:
        """The token with this SHA-256, whatever its state (the caller decides what it allows)."""
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM app_tokens WHERE token_hash = ?", (digest,)
        ).fetchone()
        return None if row is None else _row(row)

    def touch(self, token_id: str, at: float) -> None:
        """Record a use (callers do so at most every ``TOUCH_SECONDS`` per token)."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE app_tokens SET last_used_at = ? WHERE token_id = ?"
                " AND (last_used_at IS NULL OR last_used_at < ?)",
                (at, token_id, at),
            )

    # --- the look-up cache (event loop side) -------------------------------------------------

    def cached(self, digest: bytes) -> AppToken | None:
        """A token read within ``LOOKUP_SECONDS``, else None (read it with :meth:`find`)."""
        hit = self._cache.get(digest)
        if hit is None:
            return None
        age = self.clock.now() - hit[0]
        if not 0 <= age < LOOKUP_SECONDS:  # a clock set back counts as stale
            self._cache.pop(digest, None)
            return None
        return hit[1]

    def remember(self, digest: bytes, token: AppToken, generation: int) -> None:
        """Keep a token read by :meth:`find`, unless a revoke ran since ``generation`` was taken
        (before the read). Set, then check: a revoke between the two removes it again."""
        self._cache[digest] = (self.clock.now(), token)
        if self.generation != generation:
            self._cache.pop(digest, None)

    def due(self, token: AppToken, now: float) -> bool:
        """Should this use be written down (:meth:`touch`)? True at most once per
        ``TOUCH_SECONDS`` per token in this process; the caller then writes it."""
        last = max(token.last_used_at or 0.0, self._touched.get(token.token_id, 0.0))
        if 0 <= now - last < TOUCH_SECONDS:
            return False
        self._touched[token.token_id] = now
        return True
