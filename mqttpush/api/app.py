"""FastAPI application of the HTTP API v1 (docs/api.md)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from bridge.channels.tokens import validate_vendor_token
from bridge.policy import SendPolicy
from bridge.targets import ALIAS_RE, ALIAS_TYPE_RE, TAG_RE
from mqttpush import __version__, ids, topics
from mqttpush.api import console, cors, metrics, quick, webhooks, webpush
from mqttpush.api import stats as stats_routes
from mqttpush.api.common import (
    BEARER,
    KEY_ONLY,
    SIGNED,
    Incoming,
    complete_openapi,
    crash_response,
    error,
    error_response,
    parse,
    read_body,
    spec,
)
from mqttpush.api.context import ApiContext
from mqttpush.api.guard import Guard
from mqttpush.api.hotpath import HotApi
from mqttpush.clock import zone
from mqttpush.errors import (
    Forbidden,
    InvalidContent,
    MqttPushError,
    NotFound,
    PayloadTooLarge,
    StoreUnavailable,
)
from mqttpush.models import (
    AliasRequest,
    App,
    ApproveRequest,
    AppSettings,
    BatchRequest,
    DeliveryStatus,
    Device,
    DeviceRegistrationRequest,
    DeviceUpdateRequest,
    PushRequest,
    TagsRequest,
    TemplateRequest,
    VendorTokenRequest,
)
from mqttpush.store.messages import MessageLifecycle

M = TypeVar("M", bound=BaseModel)

MAX_BODY_BYTES = 1 << 20
READY_PROBE_SECONDS = 5.0
MAX_FILE_LINES = 1_000_000
FILE_BATCH = 5000


@dataclass(frozen=True, slots=True)
class _Lines:
    count: int
    digest: str


def _lifecycle_doc(lifecycle: MessageLifecycle) -> dict[str, Any]:
    """A message's lifecycle as the message status shows it (priority by name)."""
    return asdict(lifecycle) | {"priority": "high" if lifecycle.priority == 0 else "normal"}


def _delivery_doc(d: DeliveryStatus) -> dict[str, Any]:
    """A delivery as ``GET /api/v1/messages/{msg_id}`` shows it (docs/api.md)."""
    return {
        "device_id": d.device_id,
        "state": d.state,
        "channel": d.channel,
        "attempts": d.attempts,
        "error": d.error,
        "updated_at": d.updated_at,
        "history": [
            {"state": e.state, "at": e.at, **({"detail": e.detail} if e.detail else {})} for e in d.history
        ],
    }


def create_api(ctx: ApiContext, *, hot_path: bool = True) -> FastAPI:
    """Build the FastAPI app over one store and bridge; with ``hot_path`` (the default) the push
    routes are answered in front of FastAPI (:mod:`mqttpush.api.hotpath`), the same way."""
    # No redirect from /path/ to /path: every answer is the JSON of docs/api.md, a 404 here.
    api = HotApi(
        title="mqttpush",
        version=__version__,
        description="Push notifications over MQTT.",
        redirect_slashes=False,
    )
    store = ctx.store
    guard = Guard(store, ctx.app_limiter, ctx.ip_limiter)

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            doc = get_openapi(
                title=api.title, version=api.version, description=api.description, routes=api.routes
            )
            api.openapi_schema = complete_openapi(doc)
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]

    @api.exception_handler(MqttPushError)
    async def _on_error(request: Request, exc: MqttPushError) -> JSONResponse:
        return error_response(exc)

    @api.exception_handler(RequestValidationError)
    async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, "invalid_request", str(exc.errors()[0].get("msg", "invalid request")))

    @api.exception_handler(StarletteHTTPException)
    async def _on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed(request)
        return error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail), headers)

    def _allowed(request: Request) -> str:
        """Every method of every route on this path (Starlette names only the first route's)."""
        methods: set[str] = set()
        for route in api.router.routes:
            match, _ = route.matches({**request.scope, "method": "GET"})
            if match != Match.NONE:
                methods.update(getattr(route, "methods", None) or ())
        return ", ".join(sorted(methods))

    @api.exception_handler(Exception)
    async def _on_crash(request: Request, exc: Exception) -> JSONResponse:
        return crash_response(request.url.path)

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
        """The process is up (liveness)."""
        return {"ok": True, "version": __version__}

    @api.get("/readyz")
    async def readyz() -> JSONResponse:
        """Ready while the store can write and every supervised loop runs (docs/api.md)."""
        parts: dict[str, str] = {}
        if store.write_failure is not None:  # only then a probe write: it costs an fsync
            try:
                await asyncio.wait_for(store.check_writable(), READY_PROBE_SECONDS)
            except (StoreUnavailable, TimeoutError) as exc:
                parts["store"] = str(exc) or "the store did not answer in time"
        if ctx.not_ready is not None:
            parts |= ctx.not_ready()
        if not parts:
            return JSONResponse({"ready": True})
        message = "not ready: " + "; ".join(f"{name}: {why}" for name, why in parts.items())
        doc = {"error": {"code": "not_ready", "message": message, "parts": parts}}
        return JSONResponse(doc, status_code=503)

    @api.post(
        "/api/v1/devices",
        status_code=201,
        openapi_extra=spec(KEY_ONLY, body=DeviceRegistrationRequest),
        responses={200: {"description": "Registered again: same device id, new token"}},
    )
    async def register_device(request: Request) -> JSONResponse:
        guard.limit_ip(request)
        app = await guard.app_by_key(request)
        req = parse(DeviceRegistrationRequest, await read_body(request))
        if req.timezone is not None:
            zone(req.timezone)
        reg = await store.run(
            store.devices.register_device,
            app.app_key,
            req.install_id,
            req.platform.value,
            req.app_version,
            req.locale,
            req.channel,
            req.timezone,
        )
        if ctx.on_register is not None:
            ctx.on_register()
        doc = {
            "device_id": reg.device_id,
            "device_token": reg.device_token,
            "app_key": app.app_key,
            "mqtt_url": ctx.mqtt_url(request.url.hostname or "127.0.0.1"),
        }
        return JSONResponse(doc, status_code=201 if reg.created else 200)

    @api.get("/api/v1/devices/me", openapi_extra=spec(BEARER))
    async def device_me(request: Request) -> dict[str, Any]:
        return _device_doc(request, await guard.device(request))

    # The two push routes are hot (mqttpush/api/hotpath.py): each endpoint calls its handler, which
    # the hot path calls directly.
    async def accept_push(request: Incoming, params: dict[str, Any]) -> JSONResponse:
        app, body = await guard.signed(request)
        result = await ctx.intake.push(app, parse(PushRequest, body))
        return JSONResponse(result, status_code=202)

    async def accept_batch(request: Incoming, params: dict[str, Any]) -> JSONResponse:
        app, body = await guard.signed(request)
        msg_ids = await ctx.intake.push_batch(app, parse(BatchRequest, body))
        return JSONResponse({"msg_ids": msg_ids}, status_code=202)

    @api.post("/api/v1/push", status_code=202, openapi_extra=spec(SIGNED, body=PushRequest, scope="push"))
    async def push(request: Request) -> JSONResponse:
        return await accept_push(request, request.path_params)

    @api.post(
        "/api/v1/push/batch", status_code=202, openapi_extra=spec(SIGNED, body=BatchRequest, scope="push")
    )
    async def push_batch(request: Request) -> JSONResponse:
        return await accept_batch(request, request.path_params)

    api.hot(push, accept_push)
    api.hot(push_batch, accept_batch)

    @api.get("/api/v1/tasks/{task_id}", openapi_extra=spec(SIGNED))
    async def task_status(task_id: str, request: Request) -> dict[str, Any]:
        app, _ = await guard.signed(request)
        return asdict(await store.run(store.tasks.task_status, app.app_key, task_id))

    @api.delete("/api/v1/tasks/{task_id}", openapi_extra=spec(SIGNED, scope="push"))
    async def task_cancel(task_id: str, request: Request) -> dict[str, Any]:
        app, _ = await guard.signed(request)
        await store.run(store.tasks.cancel_task, app.app_key, task_id)
        ctx.tasks.cancelled(task_id)
        return asdict(await store.run(store.tasks.task_status, app.app_key, task_id))

    @api.post("/api/v1/files", status_code=201, openapi_extra=spec(SIGNED, text_body=True, scope="push"))
    async def upload_file(request: Request, kind: str = "devices", alias_type: str = "user") -> JSONResponse:
        """A list of device ids (or aliases, ``?kind=aliases&alias_type=user``), one a line, streamed."""
        app, check_body = await guard.signed_stream(request)
        if kind not in ("devices", "aliases"):
            raise InvalidContent("kind must be 'devices' or 'aliases'", code="invalid_request")
        if not ALIAS_TYPE_RE.fullmatch(alias_type):
            raise InvalidContent("alias_type must be 1-32 of A-Z a-z 0-9 _ . -", code="invalid_request")
        file_id = await store.run(
            store.tasks.create_file, app.app_key, kind, alias_type if kind == "aliases" else None
        )
        try:
            lines = await _receive_lines(request, file_id, kind)
            await check_body(lines.digest)
        except BaseException:
            await store.run(store.tasks.drop_file, file_id)
            raise
        await store.run(store.tasks.finish_file, file_id, lines.count)
        return JSONResponse({"file_id": file_id, "lines": lines.count}, status_code=201)

    async def _receive_lines(request: Request, file_id: str, kind: str) -> _Lines:
        digest = hashlib.sha256()
        pending: list[str] = []
        count = 0
        rest = b""
        line_no = 0

        async def flush() -> None:
            nonlocal count
            if pending:
                await store.run(store.tasks.append_file_lines, file_id, count + 1, list(pending))
                count += len(pending)
                pending.clear()

        async def take(raw: bytes) -> None:
            nonlocal line_no
            line_no += 1
            value = raw.decode("utf-8", "replace").strip()
            if not value:
                return
            ok = ids.is_valid_id(value) if kind == "devices" else ALIAS_RE.fullmatch(value) is not None
            if not ok:
                raise InvalidContent(
                    f"line {line_no}: {value[:40]!r} is not a valid {kind[:-1]}", code="bad_file_line"
                )
            if count + len(pending) >= MAX_FILE_LINES:
                raise PayloadTooLarge(f"a file holds at most {MAX_FILE_LINES} lines", code="too_many_lines")
            pending.append(value)
            if len(pending) >= FILE_BATCH:
                await flush()

        async for chunk in request.stream():
            digest.update(chunk)
            rest += chunk
            *complete, rest = rest.split(b"\n")
            if len(rest) > 4096:
                raise InvalidContent(f"line {line_no + 1} is longer than 4096 bytes", code="bad_file_line")
            for raw in complete:
                await take(raw)
        if rest:
            await take(rest)
        await flush()
        return _Lines(count, digest.hexdigest())

    @api.put(
        "/api/v1/templates/{name}",
        openapi_extra=spec(SIGNED, body=TemplateRequest),
        responses={201: {"description": "Created"}},
    )
    async def put_template(name: str, request: Request) -> JSONResponse:
        app, body = await guard.signed(request)
        if not ALIAS_TYPE_RE.fullmatch(name):
            raise InvalidContent("template names are 1-32 of A-Z a-z 0-9 _ . -", code="invalid_request")
        template = parse(TemplateRequest, body).model_dump(exclude_none=True)
        if not template.get("notification") and template.get("data") is None:
            raise InvalidContent("a template needs a notification or data", code="empty_template")
        created = await store.run(store.apps.put_template, app.app_key, name, template)
        return JSONResponse({"name": name, **template}, status_code=201 if created else 200)

    @api.get("/api/v1/templates", openapi_extra=spec(SIGNED))
    async def list_templates(request: Request) -> dict[str, Any]:
        app, _ = await guard.signed(request)
        templates = await store.run(store.apps.list_templates, app.app_key)
        return {"templates": [{"name": t.name, **t.template, "updated_at": t.updated_at} for t in templates]}

    @api.get("/api/v1/devices/{device_id}", openapi_extra=spec(SIGNED, BEARER))
    async def show_device(device_id: str, request: Request) -> dict[str, Any]:
        app_key, _, _ = await guard.app_or_device(request, device_id)
        doc = await store.run(store.devices.device_doc, app_key, device_id)
        tokens = await store.run(store.devices.masked_vendor_tokens, device_id)
        return asdict(doc) | {"vendor_tokens": [asdict(t) for t in tokens]}

    @api.patch("/api/v1/devices/{device_id}", openapi_extra=spec(SIGNED, BEARER, body=DeviceUpdateRequest))
    async def update_device(device_id: str, request: Request) -> dict[str, Any]:
        app_key, by_app, body = await guard.app_or_device(request, device_id)
        changes = parse(DeviceUpdateRequest, body).model_dump(exclude_none=True)
        if "timezone" in changes:
            zone(changes["timezone"])
        if "test" in changes and not by_app:
            raise Forbidden("only the app marks test devices", code="not_your_device")
        await store.run(store.devices.update_device, app_key, device_id, **changes)
        return asdict(await store.run(store.devices.device_doc, app_key, device_id))

    @api.post("/api/v1/devices/{device_id}/tags", openapi_extra=spec(SIGNED, BEARER, body=TagsRequest))
    async def update_tags(device_id: str, request: Request) -> dict[str, Any]:
        app_key, _, body = await guard.app_or_device(request, device_id)
        req = parse(TagsRequest, body)
        bad = [t for t in (*req.add, *req.remove) if not TAG_RE.fullmatch(t)]
        if bad:
            raise InvalidContent(f"not a tag: {bad[0]!r} (1-64 printable characters)", code="bad_tag")
        tags = await store.run(store.devices.update_tags, app_key, device_id, req.add, req.remove)
        return {"device_id": device_id, "tags": tags}

    @api.post("/api/v1/devices/{device_id}/aliases", openapi_extra=spec(SIGNED, BEARER, body=AliasRequest))
    async def bind_alias(device_id: str, request: Request) -> dict[str, Any]:
        app_key, _, body = await guard.app_or_device(request, device_id)
        req = parse(AliasRequest, body)
        if not ALIAS_RE.fullmatch(req.alias):
            raise InvalidContent(f"not an alias: {req.alias!r}", code="bad_alias")
        await store.run(
            store.devices.bind_alias, app_key, device_id, req.alias_type, req.alias, replace=req.mode == "set"
        )
        doc = await store.run(store.devices.device_doc, app_key, device_id)
        return {"device_id": device_id, "aliases": [asdict(a) for a in doc.aliases]}

    @api.delete(
        "/api/v1/devices/{device_id}/aliases/{alias_type}/{alias}", openapi_extra=spec(SIGNED, BEARER)
    )
    async def unbind_alias(device_id: str, alias_type: str, alias: str, request: Request) -> dict[str, Any]:
        app_key, _, _ = await guard.app_or_device(request, device_id)
        await store.run(store.devices.unbind_alias, app_key, device_id, alias_type, alias)
        doc = await store.run(store.devices.device_doc, app_key, device_id)
        return {"device_id": device_id, "aliases": [asdict(a) for a in doc.aliases]}

    async def _status_doc(app: App, msg_id: str) -> dict[str, Any]:
        status = await store.run(store.messages.message_status, app.app_key, msg_id)
        if status is None:
            raise NotFound(f"no message {msg_id!r} in this app", code="unknown_message")
        lifecycle = await store.run(store.messages.message_lifecycle, msg_id)
        return {
            "msg_id": status.msg_id,
            **(_lifecycle_doc(lifecycle) if lifecycle is not None else {}),
            "created_at": status.created_at,
            "expires_at": status.expires_at,
            "deliveries": [_delivery_doc(d) for d in status.deliveries],
        }

    @api.get("/api/v1/messages/{msg_id}", openapi_extra=spec(SIGNED))
    async def message_status(msg_id: str, request: Request) -> dict[str, Any]:
        app, _ = await guard.signed(request)
        return await _status_doc(app, msg_id)

    @api.get("/api/v1/messages", openapi_extra=spec(SIGNED))
    async def list_messages(request: Request, state: str | None = None, limit: int = 100) -> dict[str, Any]:
        """Recent messages, e.g. ``?state=draft`` for what waits for approval."""
        app, _ = await guard.signed(request)
        return {
            "messages": [
                asdict(m)
                for m in await store.run(
                    store.messages.list_messages, app.app_key, state, max(1, min(limit, 1000))
                )
            ]
        }

    @api.delete("/api/v1/messages/{msg_id}", openapi_extra=spec(SIGNED, scope="push"))
    async def cancel_message(msg_id: str, request: Request) -> dict[str, Any]:
        app, _ = await guard.signed(request)
        await ctx.intake.cancel(app, msg_id)
        return await _status_doc(app, msg_id)

    @api.post(
        "/api/v1/messages/{msg_id}/approve", openapi_extra=spec(SIGNED, body=ApproveRequest, scope="push")
    )
    async def approve_message(msg_id: str, request: Request) -> dict[str, Any]:
        app, body = await guard.signed(request)
        req = parse(ApproveRequest, body)
        await store.run(store.messages.approve, app.app_key, msg_id, req.approver)
        if ctx.intake.on_scheduled is not None:
            ctx.intake.on_scheduled()
        return await _status_doc(app, msg_id)

    @api.post("/api/v1/messages/{msg_id}/recall", openapi_extra=spec(SIGNED, scope="push"))
    async def recall_message(msg_id: str, request: Request) -> dict[str, Any]:
        app, _ = await guard.signed(request)
        assert ctx.publisher is not None
        told = await ctx.intake.recall(app, msg_id, ctx.publisher)
        return {"msg_id": msg_id, "revoked_devices": told}

    @api.put(
        "/api/v1/devices/{device_id}/tokens", openapi_extra=spec(SIGNED, BEARER, body=VendorTokenRequest)
    )
    async def set_vendor_token(device_id: str, request: Request) -> dict[str, Any]:
        """Register a vendor token (APNs, FCM, HMS, MiPush) or a WebPush subscription for a device."""
        app_key, _, body = await guard.app_or_device(request, device_id)
        req = parse(VendorTokenRequest, body)
        if req.vendor == "webpush":
            if not isinstance(req.subscription, dict):
                raise InvalidContent(
                    'webpush needs "subscription": {"endpoint": "https://...", "keys": {"p256dh", "auth"}}',
                    code="bad_subscription",
                )
            token = validate_vendor_token("webpush", json.dumps(req.subscription))
        elif req.token is None:
            raise InvalidContent(f"{req.vendor} needs a token", code="bad_vendor_token")
        else:
            token = validate_vendor_token(req.vendor, req.token)
        await store.run(store.devices.set_vendor_token, app_key, device_id, req.vendor, token)
        tokens = await store.run(store.devices.vendor_tokens, device_id)
        return {
            "device_id": device_id,
            "tokens": [{"vendor": t.vendor, "updated_at": t.updated_at} for t in tokens],
        }

    @api.delete("/api/v1/devices/{device_id}/tokens/{vendor}", openapi_extra=spec(SIGNED, BEARER))
    async def remove_vendor_token(device_id: str, vendor: str, request: Request) -> dict[str, Any]:
        app_key, _, _ = await guard.app_or_device(request, device_id)
        await store.run(store.devices.device_doc, app_key, device_id)  # 404 for another app's device
        removed = await store.run(store.devices.remove_vendor_token, device_id, vendor)
        return {"device_id": device_id, "removed": removed}

    @api.get("/api/v1/webpush/key", openapi_extra=spec(KEY_ONLY))
    async def webpush_key(request: Request) -> dict[str, Any]:
        """The app's VAPID public key, for a browser's ``pushManager.subscribe`` (X-MQTTPush-Key)."""
        guard.limit_ip(request)
        app = await guard.app_by_key(request)
        config = await store.run(store.vendors.vendor_config, app.app_key, "webpush")
        if not config or not config.get("vapid_public_key"):
            raise NotFound("this app has no VAPID key yet (mqttpush app vapid)", code="no_vapid_key")
        return {"public_key": config["vapid_public_key"]}

    @api.get("/api/v1/vendors", openapi_extra=spec(SIGNED))
    async def vendors(request: Request) -> dict[str, Any]:
        """Configured vendor channels, their counters, and alarms (e.g. rejected credentials)."""
        app, _ = await guard.signed(request)
        return {
            "configured": await store.run(store.vendors.vendors_configured, app.app_key),
            "counters": {
                vendor: asdict(counts)
                for vendor, counts in (await store.run(store.vendors.vendor_counters, app.app_key)).items()
            },
            "alarms": [asdict(a) for a in await store.run(store.vendors.alarms, app.app_key)],
        }

    @api.get("/api/v1/settings", openapi_extra=spec(SIGNED))
    async def get_settings(request: Request) -> dict[str, Any]:
        app, _ = await guard.signed(request)
        return AppSettings.model_validate(await store.settings(app.app_key)).model_dump()

    @api.put("/api/v1/settings", openapi_extra=spec(SIGNED, body=AppSettings))
    async def put_settings(request: Request) -> dict[str, Any]:
        app, body = await guard.signed(request)
        settings = parse(AppSettings, body)
        doc = settings.model_dump()
        SendPolicy.of({}, doc)  # 422 on nonsense (quiet hours) before it is stored
        await store.run(store.apps.put_app_settings, app.app_key, doc)
        return doc

    # Route modules (mqttpush/api/<name>.py): each adds its routes with install(api, ctx, guard).
    console.install(api, ctx, guard)
    http_counts = metrics.install(api, ctx, guard)
    webpush.install(api, ctx, guard)
    quick.install(api, ctx, guard)
    webhooks.install(api, ctx, guard)
    stats_routes.install(api, ctx, guard)
    cors.install(api, ctx, guard)
    if hot_path:
        api.open_hot_path(http_counts)
    return api
