"""Cross-origin device registration (docs/api.md, "register a device"): a web page served from
any origin may register its browser as a device with ``POST /api/v1/devices``.

That route takes only the app key, which ships inside every app anyway, and answers nothing a
cross-origin page could not get by registering; so any origin may call it (``*``, no
credentials). Every other route keeps the browser's same-origin rule: app secrets and access
tokens belong on servers, and the console's session cookie must not travel cross-origin."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mqttpush.api.context import ApiContext
from mqttpush.api.guard import Guard

REGISTRATION_PATH = "/api/v1/devices"
ALLOW_METHODS = "POST"
ALLOW_HEADERS = "Content-Type, X-MQTTPush-Key"
PREFLIGHT_MAX_AGE = 600
"""Seconds a browser may reuse a preflight answer."""


class _RegistrationCors:
    """Pure ASGI: answers the preflight ``OPTIONS`` of the registration route and adds
    ``Access-Control-Allow-Origin: *`` to its answers (errors included, so a page can read a
    ``429 rate_limited``); other paths pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != REGISTRATION_PATH:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if scope["method"] == "OPTIONS" and b"access-control-request-method" in headers:
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [
                        (b"access-control-allow-origin", b"*"),
                        (b"access-control-allow-methods", ALLOW_METHODS.encode()),
                        (b"access-control-allow-headers", ALLOW_HEADERS.encode()),
                        (b"access-control-max-age", str(PREFLIGHT_MAX_AGE).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"access-control-allow-origin", b"*")]
            await send(message)

        await self.app(scope, receive, sending)


def install(api: FastAPI, ctx: ApiContext, guard: Guard) -> None:
    """Let web pages of any origin register their browser (``POST /api/v1/devices``)."""
    api.add_middleware(_RegistrationCors)
