"""FastAPI application of the HTTP API v1 (DESIGN §3.1)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from bridge.intake import Intake
from mqttpush import __version__, topics
from mqttpush.api import signing
from mqttpush.clock import Clock
from mqttpush.errors import AuthError, BadRequest, InvalidContent, MqttPushError, NotFound, PayloadTooLarge
from mqttpush.models import App, Device, DeviceRegistrationRequest, PushRequest
from mqttpush.store import Store

log = logging.getLogger("mqttpush.api")
M = TypeVar("M", bound=BaseModel)

MAX_BODY_BYTES = 1 << 20


@dataclass
class ApiContext:
    store: Store
    intake: Intake
    clock: Clock
    mqtt_url: Callable[[str], str]
    """Given the host a request came to, the MQTT URL devices should use."""


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body over {MAX_BODY_BYTES} bytes", code="body_too_large")
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body over {MAX_BODY_BYTES} bytes", code="body_too_large")
    return body


def _parse(model: type[M], body: bytes) -> M:
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}", code="malformed_json") from None
    if not isinstance(obj, dict):
        raise BadRequest("body must be a JSON object", code="malformed_json")
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidContent(f"{where}: {first['msg']}", code="invalid_request") from None


def create_api(ctx: ApiContext) -> FastAPI:
    """Build the FastAPI app over one store and bridge."""
    api = FastAPI(title="mqttpush", version=__version__, description="Push notifications over MQTT.")
    store = ctx.store

    @api.exception_handler(MqttPushError)
    async def _on_error(request: Request, exc: MqttPushError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message)

    @api.exception_handler(RequestValidationError)
    async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "invalid_request", str(exc.errors()[0].get("msg", "invalid request")))

    @api.exception_handler(StarletteHTTPException)
    async def _on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return _error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))

    @api.exception_handler(Exception)
    async def _on_crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error path=%s", request.url.path)
        return _error(500, "internal_error", "internal error; the request may not have been applied")

    async def _app_by_key(request: Request) -> App:
        key = request.headers.get(signing.KEY_HEADER)
        if not key:
            raise AuthError(f"missing {signing.KEY_HEADER} header", code="unknown_app")
        app = await store.run(store.get_app, key)
        if app is None:
            raise AuthError("unknown app key", code="unknown_app")
        return app

    async def _signed(request: Request) -> tuple[App, bytes]:
        app = await _app_by_key(request)
        body = await _body(request)
        path = request.scope.get("raw_path", request.url.path.encode()).decode("latin-1")
        if request.url.query:
            path += "?" + request.url.query
        h = request.headers
        nonce = h.get(signing.NONCE_HEADER)
        signing.check_request(
            app.secret,
            request.method,
            path,
            h.get(signing.TIMESTAMP_HEADER),
            nonce,
            h.get(signing.SIGNATURE_HEADER),
            body,
            ctx.clock.now(),
        )
        assert nonce is not None  # check_request refused a missing nonce
        if not await store.run(store.use_nonce, app.app_key, nonce, 2 * signing.WINDOW_SECONDS):
            raise AuthError("nonce already used", code="replayed_nonce")
        return app, body

    async def _device(request: Request) -> Device:
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthError("missing Authorization: Bearer <device_token>", code="missing_token")
        device_id = token.partition(".")[0]
        app_key = await store.run(store.authenticate_device, device_id, token.strip())
        device = await store.run(store.get_device, device_id) if app_key else None
        if device is None:
            raise AuthError("unknown or revoked device token", code="bad_token")
        return device

    def _device_doc(request: Request, device: Device) -> dict[str, Any]:
        return {
            "device_id": device.device_id,
            "app_key": device.app_key,
            "platform": device.platform,
            "mqtt_url": ctx.mqtt_url(request.url.hostname or "127.0.0.1"),
            "topics": {
                "inbox": topics.inbox_filter(device.app_key, device.device_id),
                "broadcast": topics.broadcast_filter(device.app_key),
                "receipts": topics.receipt_topic(device.app_key, device.device_id),
                "presence": topics.presence_topic(device.app_key, device.device_id),
            },
        }

    @api.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "version": __version__}

    @api.post("/api/v1/devices", status_code=201)
    async def register_device(request: Request) -> JSONResponse:
        app = await _app_by_key(request)
        req = _parse(DeviceRegistrationRequest, await _body(request))
        reg = await store.run(
            store.register_device,
            app.app_key,
            req.install_id,
            req.platform.value,
            req.app_version,
            req.locale,
            req.channel,
        )
        doc = {
            "device_id": reg.device_id,
            "device_token": reg.device_token,
            "app_key": app.app_key,
            "mqtt_url": ctx.mqtt_url(request.url.hostname or "127.0.0.1"),
        }
        return JSONResponse(doc, status_code=201 if reg.created else 200)

    @api.get("/api/v1/devices/me")
    async def device_me(request: Request) -> dict[str, Any]:
        return _device_doc(request, await _device(request))

    @api.post("/api/v1/push", status_code=202)
    async def push(request: Request) -> JSONResponse:
        app, body = await _signed(request)
        msg_id = await ctx.intake.push(app, _parse(PushRequest, body))
        return JSONResponse({"msg_id": msg_id}, status_code=202)

    @api.get("/api/v1/messages/{msg_id}")
    async def message_status(msg_id: str, request: Request) -> dict[str, Any]:
        app, _ = await _signed(request)
        status = await store.run(store.message_status, app.app_key, msg_id)
        if status is None:
            raise NotFound(f"no message {msg_id!r} in this app", code="unknown_message")
        return {
            "msg_id": status.msg_id,
            "created_at": status.created_at,
            "expires_at": status.expires_at,
            "deliveries": status.deliveries,
        }

    return api
