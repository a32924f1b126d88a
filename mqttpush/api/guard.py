"""Who is calling: signed app requests, app access tokens, device tokens, and the per-app and
per-address limits, shared by every route module of the HTTP API (docs/api.md, signing and
"App access tokens")."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable

from starlette.datastructures import URL
from starlette.requests import Request

from mqttpush import signing
from mqttpush.api.common import Incoming, read_body, token_scope
from mqttpush.api.limits import RateLimiter, retry_after
from mqttpush.errors import AuthError, Forbidden, RateLimited, StoreUnavailable
from mqttpush.models import App, Device
from mqttpush.store import Store
from mqttpush.store.tokens import TOKEN_PREFIX, AppToken, covers, looks_like_token, token_digest

log = logging.getLogger("mqttpush.api")

BodyReader = Callable[[Incoming], Awaitable[bytes]]
"""How a route reads its body once the caller is known (:func:`read_body`: JSON routes)."""
BodyCheck = Callable[[str], Awaitable[None]]
"""For a body read in pieces: called with the hex SHA-256 of the whole body once read."""


def app_token(request: Incoming) -> str | None:
    """The app access token of ``Authorization: Bearer mpt_…``, if that is what the request carries
    (a device token, ``<device_id>.<secret>``, never starts with ``mpt_``)."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value.startswith(TOKEN_PREFIX):
        return value
    return None


def _route_scope(request: Incoming) -> str:
    """The least token scope the matched route declares (docs/api.md, "App access tokens")."""
    route = request.scope.get("route")
    return token_scope(request.method, getattr(route, "openapi_extra", None))


class Guard:
    """Authentication and rate limits for the routes; one per API instance."""

    def __init__(
        self, store: Store, app_limiter: RateLimiter | None = None, ip_limiter: RateLimiter | None = None
    ) -> None:
        self.store = store
        self.app_limiter = app_limiter
        self.ip_limiter = ip_limiter

    async def app_by_key(self, request: Incoming) -> App:
        key = request.headers.get(signing.KEY_HEADER)
        if not key:
            raise AuthError(f"missing {signing.KEY_HEADER} header", code="unknown_app")
        app = await self.store.app(key)
        if app is None:
            raise AuthError("unknown app key", code="unknown_app")
        return app

    def _limit(self, limiter: RateLimiter | None, key: str, who: str) -> None:
        wait = limiter.take(key) if limiter is not None else 0.0
        if wait > 0:
            seconds = retry_after(wait)
            raise RateLimited(f"{who} is over its request rate; retry in {seconds} s", retry_after=seconds)

    def limit_app(self, app_key: str) -> None:
        """After authentication: one app's flood never takes another app's requests."""
        self._limit(self.app_limiter, app_key, "this app")

    def limit_ip(self, request: Request) -> None:
        """Routes without a signature or token are limited by client address instead."""
        host = request.client.host if request.client is not None else ""
        self._limit(self.ip_limiter, host, "this client address")

    @staticmethod
    def _path(request: Incoming) -> str:
        """The path and query as signed: the path as sent, the query as Starlette's URL reads it
        (a URL is built only for a query: most signed requests have none)."""
        scope = request.scope
        raw = scope.get("raw_path")
        path = raw.decode("latin-1") if raw is not None else URL(scope=scope).path
        if not scope.get("query_string"):
            return path
        query = URL(scope=scope).query
        return path + "?" + query if query else path

    async def signed_headers(self, request: Incoming) -> tuple[App, str, str, str]:
        """The body-free half of signature checking: app, fresh timestamp, well-formed nonce."""
        app = await self.app_by_key(request)
        h = request.headers
        ts, nonce, sig = (
            h.get(signing.TIMESTAMP_HEADER),
            h.get(signing.NONCE_HEADER),
            h.get(signing.SIGNATURE_HEADER),
        )
        # Freshness is agreement with the client's wall clock, whatever clock drives delivery policy.
        signing.check_headers(ts, nonce, sig, time.time())
        assert ts is not None and nonce is not None and sig is not None
        return app, ts, nonce, sig

    async def use_nonce(self, app: App, nonce: str) -> None:
        # Every signed request passes here once its signature holds; limited before the nonce is
        # used up, so a refused request may be sent again as it was.
        self.limit_app(app.app_key)
        if not await self.store.run(
            self.store.apps.use_nonce, app.app_key, nonce, 2 * signing.WINDOW_SECONDS
        ):
            raise AuthError("nonce already used", code="replayed_nonce")

    def check_signature(
        self, app: App, request: Incoming, ts: str, nonce: str, sig: str, digest: str
    ) -> None:
        """The current secret, or within a rotation's overlap the previous one (docs/operations.md)."""
        current, *previous = app.secrets_at(self.store.clock.now())
        for secret in previous:
            try:
                return signing.check_signature(
                    secret, request.method, self._path(request), ts, nonce, sig, digest
                )
            except AuthError:
                pass  # not the previous secret either way: the current one decides
        signing.check_signature(current, request.method, self._path(request), ts, nonce, sig, digest)

    async def signed(
        self, request: Incoming, scope: str | None = None, *, read: BodyReader = read_body
    ) -> tuple[App, bytes]:
        """The app calling, by its signature or by an app token of at least ``scope`` (default:
        what the route declares), and the body as ``read`` reads it (the signature covers it)."""
        token = app_token(request)
        if token is not None:
            app = await self.token_app(request, token, scope)
            return app, await read(request)
        app, ts, nonce, sig = await self.signed_headers(request)
        body = await read(request)
        self.check_signature(app, request, ts, nonce, sig, hashlib.sha256(body).hexdigest())
        await self.use_nonce(app, nonce)
        return app, body

    async def signed_stream(self, request: Request, scope: str | None = None) -> tuple[App, BodyCheck]:
        """:meth:`signed` for a body the route reads in pieces: the app now, and the check to await
        with the body's SHA-256 once it is read (nothing to check for an app token)."""
        token = app_token(request)
        if token is not None:
            app = await self.token_app(request, token, scope)

            async def nothing_to_check(digest: str) -> None:
                return None

            return app, nothing_to_check
        app, ts, nonce, sig = await self.signed_headers(request)

        async def check(digest: str) -> None:
            self.check_signature(app, request, ts, nonce, sig, digest)
            await self.use_nonce(app, nonce)

        return app, check

    async def token_app(self, request: Incoming, token: str, scope: str | None = None) -> App:
        """The app of a live app token whose scope covers ``scope`` (default: the route's).
        Unknown, revoked or expired: 401 ``bad_token``; too small a scope: 403 ``insufficient_scope``.
        Counts against the app's rate limit like a signed request."""
        found = await self._find_token(token)
        now = self.store.clock.now()
        state = found.state(now) if found is not None else "unknown"
        if found is None or state != "active":
            raise AuthError(f"{state} app token", code="bad_token")
        app = await self.store.app(found.app_key)
        if app is None:
            raise AuthError("unknown app token", code="bad_token")
        needed = scope or _route_scope(request)
        if not covers(found.scope, needed):
            raise Forbidden(
                f"this token's scope is {found.scope}; {request.method} {URL(scope=request.scope).path} needs {needed}",
                code="insufficient_scope",
            )
        self.limit_app(app.app_key)
        tokens = self.store.tokens
        if tokens.due(found, now):
            try:
                await self.store.run(tokens.touch, found.token_id, now)
            except StoreUnavailable as exc:  # bookkeeping only: the request itself goes on
                log.warning("could not record a token's use token_id=%s: %s", found.token_id, exc)
        return app

    async def _find_token(self, token: str) -> AppToken | None:
        """The token, from memory if read within ``LOOKUP_SECONDS`` (a push per request stays off
        the store); only well-formed tokens are looked up."""
        if not looks_like_token(token):
            return None
        tokens = self.store.tokens
        digest = token_digest(token)
        hit = tokens.cached(digest)
        if hit is not None:
            return hit
        generation = tokens.generation
        found = await self.store.run(tokens.find, digest)
        if found is not None:
            tokens.remember(digest, found, generation)
        return found

    async def app_or_device(self, request: Request, device_id: str) -> tuple[str, bool, bytes]:
        """Either the device itself (bearer token) or its app (signed, or an app token).
        Returns (app_key, by_app, body)."""
        token = app_token(request)
        if token is not None:
            app = await self.token_app(request, token)
            return app.app_key, True, await read_body(request)
        if request.headers.get("authorization"):
            device = await self.device(request)
            if device.device_id != device_id:
                raise Forbidden("a device may only see and change itself", code="not_your_device")
            return device.app_key, False, await read_body(request)
        app, body = await self.signed(request)
        return app.app_key, True, body

    async def device(self, request: Request) -> Device:
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthError("missing Authorization: Bearer <device_token>", code="missing_token")
        device_id = token.partition(".")[0]
        app_key = await self.store.run(self.store.devices.authenticate_device, device_id, token.strip())
        device = await self.store.run(self.store.devices.get_device, device_id) if app_key else None
        if device is None:
            raise AuthError("unknown or revoked device token", code="bad_token")
        self.limit_app(device.app_key)
        return device
