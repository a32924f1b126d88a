"""Statistics routes (docs/statistics.md): counters over time, and the funnel of a message or task."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.requests import Request

from mqttpush.api.common import SIGNED, spec
from mqttpush.api.context import ApiContext
from mqttpush.api.guard import Guard


def install(api: FastAPI, ctx: ApiContext, guard: Guard) -> None:
    store = ctx.store

    @api.get("/api/v1/stats", openapi_extra=spec(SIGNED))
    async def stats(
        request: Request,
        since: str | None = None,
        until: str | None = None,
        by: str | None = None,
        step: str | None = None,
    ) -> dict[str, Any]:
        """Counters per time bucket: ``since``/``until`` as unix seconds, ISO 8601 or relative
        (``24h``, ``7d``); ``by`` of platform, channel, type, app_version, vendor, reason;
        ``step`` 1m, 1h or 1d (default from the range)."""
        app, _ = await guard.signed(request)
        return await store.run(store.stats.query, app.app_key, since, until, by, step)

    @api.get("/api/v1/messages/{msg_id}/funnel", openapi_extra=spec(SIGNED))
    async def message_funnel(msg_id: str, request: Request) -> dict[str, Any]:
        """How far the message's deliveries got: targeted, published, forwarded, arrived, opened…"""
        app, _ = await guard.signed(request)
        return await store.run(store.stats.message_funnel, app.app_key, msg_id)

    @api.get("/api/v1/tasks/{task_id}/funnel", openapi_extra=spec(SIGNED))
    async def task_funnel(task_id: str, request: Request) -> dict[str, Any]:
        """The funnel of a group send's message."""
        app, _ = await guard.signed(request)
        return await store.run(store.stats.task_funnel, app.app_key, task_id)
