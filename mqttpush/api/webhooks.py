"""Webhook registrations (docs/webhooks.md): ``POST /api/v1/webhooks``, ``GET`` lists them with
their health, ``DELETE /api/v1/webhooks/{webhook_id}``. Signed app requests."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from mqttpush.api.common import SIGNED, parse, spec
from mqttpush.api.context import ApiContext
from mqttpush.api.guard import Guard
from mqttpush.errors import InvalidContent
from mqttpush.store.webhooks import EVENTS, unknown_events

MAX_URL_LENGTH = 2048


class WebhookRequest(BaseModel):
    """``POST /api/v1/webhooks``: where to post, and which events."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=MAX_URL_LENGTH, description="http:// or https:// URL")
    events: list[str] = Field(min_length=1, max_length=len(EVENTS), description=" | ".join(EVENTS))


def check_url(url: str) -> str:
    """An endpoint URL: http or https, with a host, no whitespace or control characters;
    422 ``bad_webhook_url`` otherwise."""
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise InvalidContent("url: no spaces or control characters", code="bad_webhook_url")
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port  # .port raises on a malformed one
    except ValueError as exc:
        raise InvalidContent(f"url: {exc}", code="bad_webhook_url") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidContent(f"url: must be http:// or https://, not {url[:40]!r}", code="bad_webhook_url")
    if not host:
        raise InvalidContent("url: names no host", code="bad_webhook_url")
    return url


def check_events(events: list[str]) -> list[str]:
    """Known event types, each once, in the order given; 422 ``unknown_event`` naming the first other."""
    unknown = unknown_events(events)
    if unknown:
        raise InvalidContent(
            f"events: unknown event {unknown[0][:64]!r} (known: {', '.join(EVENTS)})", code="unknown_event"
        )
    return list(dict.fromkeys(events))


def install(api: FastAPI, ctx: ApiContext, guard: Guard) -> None:
    store = ctx.store

    @api.post(
        "/api/v1/webhooks",
        status_code=201,
        openapi_extra=spec(SIGNED, body=WebhookRequest),
    )
    async def add_webhook(request: Request) -> JSONResponse:
        """Register an endpoint for events → ``{"webhook_id", "secret"}`` (the secret signs every
        POST; it is shown only here)."""
        app, body = await guard.signed(request)
        req = parse(WebhookRequest, body)
        created = await store.run(
            store.webhooks.create, app.app_key, check_url(req.url), check_events(req.events)
        )
        return JSONResponse(created, status_code=201)

    @api.get("/api/v1/webhooks", openapi_extra=spec(SIGNED))
    async def list_webhooks(request: Request) -> dict[str, Any]:
        """The app's webhooks: events, last success, last error, backlog, state."""
        app, _ = await guard.signed(request)
        return {"webhooks": await store.run(store.webhooks.for_app, app.app_key)}

    @api.delete("/api/v1/webhooks/{webhook_id}", openapi_extra=spec(SIGNED))
    async def remove_webhook(webhook_id: str, request: Request) -> dict[str, Any]:
        """Remove a webhook; events still waiting for it are dropped."""
        app, _ = await guard.signed(request)
        await store.run(store.webhooks.remove, app.app_key, webhook_id)
        return {"webhook_id": webhook_id, "removed": True}
