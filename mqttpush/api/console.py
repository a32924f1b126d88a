"""The web console (docs/console.md): its page and assets at ``/console``, and its JSON API under
``/console/api/…``, authenticated by a session cookie instead of a signature.

Every console call goes through the same library calls as the signed API (``Intake.push``,
the store's queries); the console adds sessions, CSRF protection and paged reads, nothing else."""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from dataclasses import asdict
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from mqttpush.api.common import parse, read_body
from mqttpush.api.context import ApiContext
from mqttpush.api.guard import Guard
from mqttpush.errors import AuthError, Forbidden, InvalidContent
from mqttpush.models import App, ApproveRequest, PushRequest
from mqttpush.store.console import ConsoleSession
from mqttpush.store.tokens import covers, looks_like_token, token_digest

COOKIE = "mqttpush_console"
CSRF_HEADER = "X-CSRF-Token"
SESSION_SECONDS = 12 * 3600
ASSET_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}
# The page loads nothing from elsewhere and may not be framed (clickjacking).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class SignInRequest(BaseModel):
    """Either an app key and its secret, or an app access token of scope admin."""

    app_key: str | None = Field(default=None, max_length=64)
    app_secret: str | None = Field(default=None, max_length=256)
    token: str | None = Field(default=None, max_length=256)


def _assets() -> dict[str, tuple[bytes, str]]:
    """Every file shipped in ``console_assets/`` (package data), read once: name -> (bytes, type)."""
    folder = resources.files("mqttpush.api") / "console_assets"
    out: dict[str, tuple[bytes, str]] = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in ASSET_TYPES:
            out[entry.name] = (entry.read_bytes(), ASSET_TYPES[suffix])
    return out


def _number(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if value != value or value in (float("inf"), float("-inf")):
        raise InvalidContent(f"{name} must be unix seconds, not {raw[:40]!r}", code="bad_range")
    return value


def _limit(request: Request, default: int = 50) -> int:
    raw = request.query_params.get("limit", "")
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()):
        raise InvalidContent(
            f"limit must be a positive whole number, not {raw[:20]!r}", code="invalid_request"
        )
    return int(raw)


def install(api: FastAPI, ctx: ApiContext, guard: Guard) -> None:
    """Add ``/console`` and ``/console/api/…`` to the API."""
    store = ctx.store
    assets = _assets()

    def asset(name: str) -> Response:
        found = assets.get(name)
        if found is None:
            return JSONResponse(
                {"error": {"code": "not_found", "message": f"no console file {name!r}"}}, status_code=404
            )
        return Response(found[0], media_type=found[1], headers=SECURITY_HEADERS)

    @api.get("/console", include_in_schema=False)
    async def console_page() -> Response:
        return asset("index.html")

    @api.get("/console/static/{name}", include_in_schema=False)
    async def console_asset(name: str) -> Response:
        return asset(name)

    # --- sessions ---------------------------------------------------------------------------------

    def check_origin(request: Request) -> None:
        """A state-changing call must come from a page of this server: its Origin (or, without
        one, Sec-Fetch-Site) says so. The host is compared, not the scheme, so a TLS-terminating
        proxy in front does not refuse every call."""
        origin = request.headers.get("origin")
        host = request.headers.get("host", "")
        if origin is not None:
            if origin == "null" or urlsplit(origin).netloc.lower() != host.lower():
                raise Forbidden(f"a console call from another origin ({origin[:80]})", code="bad_origin")
        elif request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            raise Forbidden("a console call from another site", code="bad_origin")

    async def session_of(request: Request, *, changes: bool) -> tuple[App, ConsoleSession, str]:
        """The signed-in app of this request; for a state-changing call also its CSRF token and origin."""
        session_id = request.cookies.get(COOKIE, "")
        session = await store.run(store.console.session, session_id) if session_id else None
        app = await store.app(session.app_key) if session is not None else None
        if session is None or app is None:
            raise AuthError("not signed in, or the session ended: sign in again", code="no_session")
        guard.limit_app(app.app_key)
        if changes:
            check_origin(request)
            sent = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(sent.encode(), session.csrf_token.encode()):
                raise Forbidden(f"missing or wrong {CSRF_HEADER} header", code="bad_csrf")
        return app, session, session_id

    def session_doc(app: App, session: ConsoleSession) -> dict[str, Any]:
        return {
            "app_key": app.app_key,
            "app_name": app.name,
            "via": session.via,
            "csrf_token": session.csrf_token,
            "expires_at": session.expires_at,
            "max_envelope_bytes": ctx.intake.limits.max_envelope_bytes,
        }

    @api.post("/console/api/session", include_in_schema=False)
    async def sign_in(request: Request) -> JSONResponse:
        guard.limit_ip(request)  # sign-in takes no signature: limited like registration
        check_origin(request)
        req = parse(SignInRequest, await read_body(request))
        app: App | None = None
        token_id: str | None = None
        if req.token:
            found = (
                await store.run(store.tokens.find, token_digest(req.token))
                if looks_like_token(req.token)
                else None
            )
            if found is not None and found.state(store.clock.now()) == "active":
                if not covers(found.scope, "admin"):
                    raise AuthError(
                        f"this token's scope is {found.scope}; the console needs an admin token",
                        code="bad_credentials",
                    )
                app, token_id = await store.app(found.app_key), found.token_id
        elif req.app_key and req.app_secret:
            if await store.run(store.apps.authenticate_app, req.app_key, req.app_secret):
                app = await store.app(req.app_key)
        else:
            raise InvalidContent("give app_key and app_secret, or an access token", code="invalid_request")
        if app is None:
            raise AuthError("wrong app key, secret or token", code="bad_credentials")
        via = "secret" if token_id is None else "token"
        session_id, session = await store.run(
            store.console.create_session, app.app_key, via, token_id, SESSION_SECONDS
        )
        response = JSONResponse(session_doc(app, session), status_code=201)
        response.set_cookie(
            COOKIE,
            session_id,
            max_age=SESSION_SECONDS,
            path="/console",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @api.get("/console/api/session", include_in_schema=False)
    async def who_am_i(request: Request) -> dict[str, Any]:
        app, session, _ = await session_of(request, changes=False)
        return session_doc(app, session)

    @api.delete("/console/api/session", include_in_schema=False)
    async def sign_out(request: Request) -> JSONResponse:
        _, _, session_id = await session_of(request, changes=True)
        await store.run(store.console.end_session, session_id)
        response = JSONResponse({"signed_out": True})
        response.delete_cookie(COOKIE, path="/console", httponly=True, samesite="strict")
        return response

    # --- composing and sending ----------------------------------------------------------------------

    @api.post("/console/api/preview", include_in_schema=False)
    async def preview(request: Request) -> dict[str, Any]:
        app, _, _ = await session_of(request, changes=True)
        envelope = await ctx.intake.preview(app, parse(PushRequest, await read_body(request)))
        return {
            "envelope": json.loads(envelope),
            "bytes": len(envelope),
            "max_envelope_bytes": ctx.intake.limits.max_envelope_bytes,
        }

    @api.post("/console/api/push", include_in_schema=False)
    async def console_push(request: Request) -> JSONResponse:
        app, _, _ = await session_of(request, changes=True)
        result = await ctx.intake.push(app, parse(PushRequest, await read_body(request)))
        return JSONResponse(result, status_code=202)

    # --- messages, tasks, approval --------------------------------------------------------------------

    async def _page(request: Request, page: Callable[..., dict[str, Any]]) -> dict[str, Any]:
        """A keyset page of messages or tasks: ``?state&since&until&cursor&limit``."""
        app, _, _ = await session_of(request, changes=False)
        q = request.query_params
        return await store.run(
            page,
            app.app_key,
            state=q.get("state") or None,
            since=_number(request, "since"),
            until=_number(request, "until"),
            cursor=q.get("cursor") or None,
            limit=_limit(request),
        )

    @api.get("/console/api/messages", include_in_schema=False)
    async def console_messages(request: Request) -> dict[str, Any]:
        return await _page(request, store.console.messages_page)

    @api.get("/console/api/tasks", include_in_schema=False)
    async def console_tasks(request: Request) -> dict[str, Any]:
        return await _page(request, store.console.tasks_page)

    @api.get("/console/api/messages/{msg_id}", include_in_schema=False)
    async def console_message(msg_id: str, request: Request) -> dict[str, Any]:
        app, _, _ = await session_of(request, changes=False)
        return await store.run(store.console.message_summary, app.app_key, msg_id)

    @api.get("/console/api/messages/{msg_id}/deliveries", include_in_schema=False)
    async def console_deliveries(msg_id: str, request: Request) -> dict[str, Any]:
        app, _, _ = await session_of(request, changes=False)
        q = request.query_params
        return await store.run(
            store.console.deliveries_page,
            app.app_key,
            msg_id,
            state=q.get("state") or None,
            cursor=q.get("cursor") or None,
            limit=_limit(request),
        )

    @api.post("/console/api/messages/{msg_id}/approve", include_in_schema=False)
    async def console_approve(msg_id: str, request: Request) -> dict[str, Any]:
        app, _, _ = await session_of(request, changes=True)
        req = parse(ApproveRequest, await read_body(request))
        await store.run(store.messages.approve, app.app_key, msg_id, req.approver)
        if ctx.intake.on_scheduled is not None:
            ctx.intake.on_scheduled()
        return await store.run(store.console.message_summary, app.app_key, msg_id)

    @api.post("/console/api/messages/{msg_id}/cancel", include_in_schema=False)
    async def console_cancel(msg_id: str, request: Request) -> dict[str, Any]:
        app, _, _ = await session_of(request, changes=True)
        await ctx.intake.cancel(app, msg_id)
        return await store.run(store.console.message_summary, app.app_key, msg_id)

    # --- statistics ------------------------------------------------------------------------------------

    @api.get("/console/api/stats", include_in_schema=False)
    async def console_stats(request: Request) -> dict[str, Any]:
        """The statistics of ``GET /api/v1/stats`` (docs/statistics.md), for the charts."""
        app, _, _ = await session_of(request, changes=False)
        q = request.query_params
        return await store.run(
            store.stats.query,
            app.app_key,
            q.get("since") or None,
            q.get("until") or None,
            q.get("by") or None,
            q.get("step") or None,
        )

    # --- devices ---------------------------------------------------------------------------------------

    @api.get("/console/api/devices", include_in_schema=False)
    async def console_find_devices(request: Request) -> dict[str, Any]:
        app, _, _ = await session_of(request, changes=False)
        query = request.query_params.get("q", "").strip()
        if not query or len(query) > 128:
            raise InvalidContent(
                "give a device id, install id or alias (1-128 characters)", code="invalid_request"
            )
        return {"query": query, "devices": await store.run(store.console.find_devices, app.app_key, query)}

    @api.get("/console/api/devices/{device_id}", include_in_schema=False)
    async def console_device(device_id: str, request: Request) -> dict[str, Any]:
        app, _, _ = await session_of(request, changes=False)
        doc = asdict(await store.run(store.devices.device_doc, app.app_key, device_id))
        doc["vendor_tokens"] = [
            asdict(t) for t in await store.run(store.devices.masked_vendor_tokens, device_id)
        ]
        doc["recent"] = await store.run(store.console.recent_deliveries, device_id)
        return doc
