"""The quick push form (docs/api.md, "Quick form"): one ``curl -d`` line sends a notification.

``POST /api/v1/push/device/{device_id}`` (or ``/alias/{alias_type}/{alias}``, ``/tag/{expr}``,
``/broadcast``): the body is the notification's text, optional headers carry the rest (``Title``,
``Priority``, ``TTL``, ``Data``, ``Biz-Id``). It becomes the same :class:`PushRequest` as
``POST /api/v1/push`` and goes through the same intake, so it answers the same 202."""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers

from mqttpush.api.common import MAX_BODY_BYTES, SIGNED, Incoming, spec
from mqttpush.api.context import ApiContext
from mqttpush.api.guard import Guard
from mqttpush.api.hotpath import HotApi
from mqttpush.errors import BadRequest, InvalidContent, PayloadTooLarge, UnsupportedMediaType
from mqttpush.models import PushRequest, check_json_values, validate_request

# ntfy's clients send 1-5 (and its names); mqttpush has two priorities, so low counts as normal.
PRIORITIES = {
    "high": "high",
    "normal": "normal",
    "low": "normal",
    "5": "high",
    "4": "high",
    "3": "normal",
    "2": "normal",
    "1": "normal",
    "max": "high",
    "urgent": "high",
    "default": "normal",
    "min": "normal",
}
_TTL = re.compile(r"([0-9]{1,9})([smhd]?)")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_BIZ_ID = 128
# Bodies of these types are the text as sent: curl -d sends a form type, and reading it as a form
# would eat '+' and '&'. JSON and multipart are refused: they were meant for another route.
_TEXT_TYPES = ("text/", "application/x-www-form-urlencoded", "application/octet-stream")
_CHARSETS = ("utf-8", "utf8", "us-ascii", "ascii")


def _param(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "description": description, "schema": schema}


HEADERS = [
    _param("Title", "The notification's title (UTF-8). Also X-Title.", {"type": "string"}),
    _param(
        "Priority",
        "high, normal or low (sent as normal), or ntfy's 1-5 (4-5: high). Also X-Priority.",
        {"type": "string", "enum": sorted(PRIORITIES)},
    ),
    _param(
        "TTL",
        "Seconds the message may wait for an offline device (or 90m, 12h, 3d); default 3 days. Also X-TTL.",
        {"type": "string", "pattern": r"^[0-9]{1,9}[smhd]?$"},
    ),
    _param("Data", "A JSON object: the message's data. Also X-Data.", {"type": "string"}),
    _param(
        "Biz-Id",
        f"Idempotency key (1-{MAX_BIZ_ID} characters): the same key answers the first message's id.",
        {"type": "string", "minLength": 1, "maxLength": MAX_BIZ_ID},
    ),
]
BODY = (
    "The notification's body as UTF-8 text (a trailing newline is dropped); may be empty when a Title "
    "is given. Sent as text/plain, as curl -d sends it (application/x-www-form-urlencoded, read as "
    "is, not form-decoded), or without Content-Type."
)


async def read_text(request: Incoming) -> bytes:
    """The quick form's body: bounded, and of a text-like type (or undeclared)."""
    content_type = request.headers.get("content-type")
    if content_type is not None:
        media, _, params = content_type.partition(";")
        media = media.strip().lower()
        if media and not media.startswith(_TEXT_TYPES):
            raise UnsupportedMediaType(
                f"the quick form's body is the notification text (text/plain), not {media[:64]!r};"
                " JSON requests go to POST /api/v1/push"
            )
        charset = re.search(r"charset\s*=\s*\"?([\w.:-]+)", params, re.IGNORECASE)
        if charset and charset.group(1).lower() not in _CHARSETS:
            raise UnsupportedMediaType(f"send the text as UTF-8, not {charset.group(1)[:32]!r}")
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body over {MAX_BODY_BYTES} bytes", code="body_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"request body over {MAX_BODY_BYTES} bytes", code="body_too_large")
    return bytes(body)


def _header(headers: Headers, name: str) -> str | None:
    """A header's value as the client meant it: curl sends UTF-8 bytes, which HTTP libraries
    read as Latin-1; read them again as UTF-8 where they are (else they stay Latin-1)."""
    value = headers.get(name)
    if value is None:
        value = headers.get("X-" + name)
    if value is None:
        return None
    with contextlib.suppress(UnicodeError):
        value = value.encode("latin-1").decode("utf-8")
    return value.strip()


def _bad(name: str, why: str) -> InvalidContent:
    return InvalidContent(f"header {name}: {why}", code="bad_header")


def quick_request(target: dict[str, Any], raw: bytes, headers: Headers) -> PushRequest:
    """The :class:`PushRequest` a quick-form request stands for (pure: bytes and headers in)."""
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"the body is not UTF-8 text: {exc.reason} at byte {exc.start}", code="invalid_text"
        ) from None
    notification: dict[str, Any] = {}
    title = _header(headers, "Title")
    if title:
        notification["title"] = title
    if text:
        notification["body"] = text
    policy: dict[str, Any] = {}
    priority = _header(headers, "Priority")
    if priority is not None:
        if priority.lower() not in PRIORITIES:
            raise _bad("Priority", f"{priority[:32]!r} is not high, normal, low or 1-5")
        policy["priority"] = PRIORITIES[priority.lower()]
    ttl = _header(headers, "TTL")
    if ttl is not None:
        match = _TTL.fullmatch(ttl)
        seconds = int(match.group(1)) * _TTL_UNITS[match.group(2)] if match else 0
        if seconds <= 0:
            raise _bad("TTL", f"{ttl[:32]!r} is not a positive number of seconds (or 90m, 12h, 3d)")
        policy["ttl"] = seconds
    biz_id = _header(headers, "Biz-Id")
    if biz_id is not None:
        if not 1 <= len(biz_id) <= MAX_BIZ_ID:
            raise _bad("Biz-Id", f"must be 1-{MAX_BIZ_ID} characters")
        policy["biz_id"] = biz_id
    obj: dict[str, Any] = {"target": target, "notification": notification, "policy": policy}
    data = _header(headers, "Data")
    if data is not None:
        try:
            parsed = json.loads(data)
        except (ValueError, RecursionError):
            raise _bad("Data", "not valid JSON") from None
        if not isinstance(parsed, dict):
            raise _bad("Data", "must be a JSON object")
        check_json_values(parsed)
        obj["data"] = parsed
    return validate_request(PushRequest, obj)


def install(api: HotApi, ctx: ApiContext, guard: Guard) -> None:
    """Add the quick-form routes (signed, or an app token of scope ``push``), hot (see
    :mod:`mqttpush.api.hotpath`): each endpoint calls its handler, which the hot path calls directly."""

    def extra() -> dict[str, Any]:
        return spec(SIGNED, text_body=BODY, scope="push", headers=list(HEADERS))

    accepted: dict[int | str, dict[str, Any]] = {
        202: {"description": 'Accepted: {"msg_id"} (device, alias) or {"task_id", "msg_id"} (tag, broadcast)'}
    }

    async def quick(request: Incoming, target: dict[str, Any]) -> JSONResponse:
        app, raw = await guard.signed(request, read=read_text)
        result = await ctx.intake.push(app, quick_request(target, raw, request.headers))
        return JSONResponse(result, status_code=202)

    async def to_device(request: Incoming, params: dict[str, Any]) -> JSONResponse:
        return await quick(request, {"devices": [params["device_id"]]})

    async def to_alias(request: Incoming, params: dict[str, Any]) -> JSONResponse:
        return await quick(request, {"alias": params["alias"], "alias_type": params["alias_type"]})

    async def to_tag(request: Incoming, params: dict[str, Any]) -> JSONResponse:
        return await quick(request, {"tags": params["expr"]})

    async def to_broadcast(request: Incoming, params: dict[str, Any]) -> JSONResponse:
        return await quick(request, {"broadcast": True})

    @api.post("/api/v1/push/device/{device_id}", status_code=202, openapi_extra=extra(), responses=accepted)
    async def quick_device(device_id: str, request: Request) -> JSONResponse:
        """Quick form: push the body's text to one device."""
        return await to_device(request, request.path_params)

    @api.post(
        "/api/v1/push/alias/{alias_type}/{alias:path}",
        status_code=202,
        openapi_extra=extra(),
        responses=accepted,
    )
    async def quick_alias(alias_type: str, alias: str, request: Request) -> JSONResponse:
        """Quick form: push to the devices bound to an alias (URL-encode it)."""
        return await to_alias(request, request.path_params)

    @api.post("/api/v1/push/tag/{expr:path}", status_code=202, openapi_extra=extra(), responses=accepted)
    async def quick_tag(expr: str, request: Request) -> JSONResponse:
        """Quick form: push to the devices a tag expression selects (URL-encoded), as a task."""
        return await to_tag(request, request.path_params)

    @api.post("/api/v1/push/broadcast", status_code=202, openapi_extra=extra(), responses=accepted)
    async def quick_broadcast(request: Request) -> JSONResponse:
        """Quick form: push to every device of the app, as a task."""
        return await to_broadcast(request, request.path_params)

    api.hot(quick_device, to_device)
    api.hot(quick_alias, to_alias)
    api.hot(quick_tag, to_tag)
    api.hot(quick_broadcast, to_broadcast)
