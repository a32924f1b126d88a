"""The UnifiedPush / Web Push distributor's routes (docs/webpush.md).

A device asks for an endpoint for one of its apps (``/api/v1/devices/me/endpoints``, its bearer
token); any application server pushes to that endpoint (``POST /up/<endpoint_id>``, RFC 8030,
no credentials but the unguessable URL and, where the endpoint asks for it, VAPID, RFC 8292);
the bytes reach the device's MQTT inbox unchanged (bridge/distributor.py).
"""

from __future__ import annotations

import re
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from bridge.distributor import URGENCIES, UpMessage
from mqttpush.api import vapid
from mqttpush.api.common import BEARER, ERROR_STATUSES, parse, read_body, spec
from mqttpush.api.context import ApiContext
from mqttpush.api.guard import Guard
from mqttpush.api.limits import retry_after
from mqttpush.errors import (
    BadRequest,
    Forbidden,
    Gone,
    InvalidContent,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    UnsupportedMediaType,
)
from mqttpush.models import Device
from mqttpush.store.endpoints import Endpoint

MAX_PUSH_BYTES = 4096
"""The most a pushed message may hold (RFC 8030 asks push services to take at least 4096)."""
MAX_ENDPOINTS = 100
"""Live endpoints one device may hold."""
DEFAULT_INSTANCE = "default"
TTL_CEILING = 2**31
"""RFC 8030: a TTL too large to represent counts as 2^31 (then the server's maximum applies)."""
_TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}")
_TTL = re.compile(r"[0-9]+")
_INSTANCE = re.compile(r"[^\x00-\x1f\x7f]{1,128}")
_ENCODINGS = ("aes128gcm",)


class EndpointRequest(BaseModel):
    """``POST /api/v1/devices/me/endpoints``."""

    model_config = ConfigDict(extra="forbid")

    instance: str | None = Field(
        default=None, description="The app's name for this endpoint (UnifiedPush instance/token)."
    )
    vapid_key: str | None = Field(
        default=None,
        description="The application server's VAPID public key (base64url, 65 bytes): only pushes "
        "signed with it are taken.",
    )


def _errors(*statuses: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses of a route outside /api/ (those get every error status by default)."""
    shape = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    known = ERROR_STATUSES | {"410": "The endpoint was unregistered"}
    return {s: {"description": known[s], **shape} for s in statuses}


def install(api: FastAPI, ctx: ApiContext, guard: Guard) -> None:
    """Add the endpoint routes and the push resource ``/up/<endpoint_id>``."""
    store = ctx.store
    distributor = ctx.distributor
    if distributor is None:  # an API without a bridge behind it delivers nothing
        return

    def base_url(request: Request) -> str:
        if ctx.public_url:
            return ctx.public_url.rstrip("/")
        return f"{request.url.scheme}://{request.url.netloc}"

    def doc(request: Request, endpoint: Endpoint) -> dict[str, Any]:
        return {
            "endpoint": f"{base_url(request)}/up/{endpoint.endpoint_id}",
            "endpoint_id": endpoint.endpoint_id,
            "instance": endpoint.instance,
            "vapid_key": endpoint.vapid_key,
            "created_at": endpoint.created_at,
            "removed_at": endpoint.removed_at,
        }

    async def live_endpoint(endpoint_id: str) -> Endpoint:
        endpoint = await store.run(store.endpoints.get, endpoint_id)
        if endpoint is None:
            raise NotFound("no such push endpoint", code="unknown_endpoint")
        if not endpoint.active:
            raise Gone("this push endpoint was unregistered", code="endpoint_gone")
        return endpoint

    async def remove(request: Request, device: Device, endpoint_id: str) -> dict[str, Any]:
        endpoint, cancelled = await store.run(store.endpoints.remove, device.device_id, endpoint_id)
        await distributor.clear(device.app_key, device.device_id, cancelled)
        return doc(request, endpoint)

    @api.post(
        "/api/v1/devices/me/endpoints",
        status_code=201,
        openapi_extra=spec(BEARER, body=EndpointRequest),
        responses={200: {"description": "The instance's endpoint, made before"}},
    )
    async def create_endpoint(request: Request) -> JSONResponse:
        """An endpoint for one of the device's apps: ``{"endpoint": "https://HOST/up/…", …}``."""
        device = await guard.device(request)
        req = parse(EndpointRequest, await read_body(request))
        instance = DEFAULT_INSTANCE if req.instance is None else req.instance
        if not _INSTANCE.fullmatch(instance):
            raise InvalidContent(
                "instance must be 1-128 characters without control characters", code="bad_instance"
            )
        key = vapid.check_key(req.vapid_key) if req.vapid_key is not None else None
        endpoint, created = await store.run(
            store.endpoints.create, device.app_key, device.device_id, instance, key, MAX_ENDPOINTS
        )
        return JSONResponse(doc(request, endpoint), status_code=201 if created else 200)

    @api.get("/api/v1/devices/me/endpoints", openapi_extra=spec(BEARER))
    async def list_endpoints(request: Request) -> dict[str, Any]:
        device = await guard.device(request)
        endpoints = await store.run(store.endpoints.of_device, device.device_id)
        return {"endpoints": [doc(request, e) for e in endpoints]}

    @api.delete("/api/v1/devices/me/endpoints/{endpoint_id}", openapi_extra=spec(BEARER))
    async def delete_endpoint(endpoint_id: str, request: Request) -> dict[str, Any]:
        """Unregister: senders get 410 from now on; what still waits through it is cancelled."""
        return await remove(request, await guard.device(request), endpoint_id)

    @api.get(
        "/up/{endpoint_id}",
        openapi_extra={"security": []},
        responses=_errors("404", "410", "429"),
    )
    async def discover(endpoint_id: str, request: Request) -> dict[str, Any]:
        """UnifiedPush discovery: an application server checks the endpoint is a push endpoint."""
        guard.limit_ip(request)
        await live_endpoint(endpoint_id)
        return {"unifiedpush": {"version": 1}}

    @api.delete(
        "/up/{endpoint_id}",
        openapi_extra=spec(BEARER),
        responses=_errors("401", "403", "404", "429"),
    )
    async def unsubscribe(endpoint_id: str, request: Request) -> dict[str, Any]:
        """Unregister by the subscriber: only the endpoint's own device (bearer), never a sender."""
        device = await guard.device(request)
        endpoint = await store.run(store.endpoints.get, endpoint_id)
        if endpoint is not None and endpoint.device_id != device.device_id:
            raise Forbidden("only the endpoint's own device may unregister it", code="not_your_device")
        return await remove(request, device, endpoint_id)

    @api.post(
        "/up/{endpoint_id}",
        status_code=201,
        openapi_extra={
            "security": [],
            "requestBody": {
                "required": False,
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            },
        },
        responses=_errors("400", "401", "403", "404", "410", "413", "415", "429", "503"),
    )
    async def push(endpoint_id: str, request: Request) -> JSONResponse:
        """Push a message (RFC 8030): the body as sent, ``TTL``, ``Urgency``, ``Topic`` headers,
        VAPID ``Authorization``. → 201 with ``Location`` and the ``TTL`` applied."""
        guard.limit_ip(request)
        endpoint = await live_endpoint(endpoint_id)
        if ctx.endpoint_limiter is not None:
            wait = ctx.endpoint_limiter.take(endpoint_id)
            if wait > 0:
                seconds = retry_after(wait)
                raise RateLimited(
                    f"this endpoint is over its push rate; retry in {seconds} s", retry_after=seconds
                )
        h = request.headers
        encoding = _encoding(h.get("content-encoding"))
        ttl = _ttl(h.get("ttl"), encoding, ctx.intake.limits.default_ttl, ctx.intake.limits.max_ttl)
        urgency = _urgency(h.get("urgency"))
        topic = _topic(h.get("topic"))
        vapid.verify(
            vapid.credentials(h.get("authorization"), h.get("crypto-key")),
            base_url(request),
            time.time(),  # the sender's JWT expiry is agreement with wall clocks
            endpoint.vapid_key,
        )
        payload = await _body(request)
        accepted = await distributor.deliver(UpMessage(endpoint, payload, encoding, ttl, urgency, topic))
        headers = {"Location": f"/up/message/{accepted.msg_id}", "TTL": str(accepted.ttl)}
        if topic is not None:
            headers["Topic"] = topic
        return JSONResponse(
            {"msg_id": accepted.msg_id, "ttl": accepted.ttl, "stored": accepted.stored},
            status_code=201,
            headers=headers,
        )

    @api.delete(
        "/up/message/{msg_id}",
        openapi_extra={"security": []},
        responses=_errors("404", "429"),
    )
    async def cancel_message(msg_id: str, request: Request) -> dict[str, Any]:
        """The sender takes back a message it pushed (its ``Location``) while it still waits."""
        guard.limit_ip(request)
        app_key, device_id, cancelled = await store.run(store.endpoints.cancel_message, msg_id)
        if cancelled:
            await distributor.clear(app_key, device_id, [msg_id])
        return {"msg_id": msg_id, "cancelled": cancelled}


def _encoding(value: str | None) -> str | None:
    """``aes128gcm`` (RFC 8291) or none at all (plain bytes, older UnifiedPush servers)."""
    if value is None or not value.strip() or value.strip().lower() == "identity":
        return None
    if value.strip().lower() in _ENCODINGS:
        return value.strip().lower()
    raise UnsupportedMediaType(
        f"Content-Encoding {value[:32]!r} is not taken: send aes128gcm (RFC 8291) or plain bytes",
        code="unsupported_encoding",
    )


def _ttl(value: str | None, encoding: str | None, default: int, most: int) -> int:
    """Seconds to keep the message, capped at the server's maximum (the answer's ``TTL`` says
    which). RFC 8030 requires the header of Web Push senders (400 ``missing_ttl`` for an
    encrypted push without it); a plain UnifiedPush push without it gets the default TTL."""
    if value is None:
        if encoding is not None:
            raise BadRequest("the TTL header is required (RFC 8030)", code="missing_ttl")
        return min(default, most)
    value = value.strip()
    if not _TTL.fullmatch(value):
        raise BadRequest(f"TTL must be whole seconds (digits), not {value[:32]!r}", code="bad_ttl")
    return min(int(value) if len(value) <= 10 else TTL_CEILING, TTL_CEILING, most)


def _urgency(value: str | None) -> str:
    if value is None:
        return "normal"
    urgency = value.strip().lower()
    if urgency not in URGENCIES:
        raise BadRequest(f"Urgency must be one of {', '.join(URGENCIES)}", code="bad_urgency")
    return urgency


def _topic(value: str | None) -> str | None:
    if value is None:
        return None
    if not _TOPIC.fullmatch(value.strip()):
        raise BadRequest("Topic must be 1-32 characters of A-Z a-z 0-9 _ - (RFC 8030)", code="bad_topic")
    return value.strip()


async def _body(request: Request) -> bytes:
    """The pushed bytes, refused (413) as soon as they pass MAX_PUSH_BYTES."""
    too_large = PayloadTooLarge(f"a push message holds at most {MAX_PUSH_BYTES} bytes", code="push_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_PUSH_BYTES:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_PUSH_BYTES:
            raise too_large
    return bytes(body)
