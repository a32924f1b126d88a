"""What every route module of the HTTP API shares: the error shape, body reading and parsing, and
the OpenAPI declarations (security schemes, body models, error responses)."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncGenerator
from typing import Any, Protocol, TypeVar

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.datastructures import Headers
from starlette.types import Scope

from mqttpush import signing
from mqttpush.errors import (
    MqttPushError,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    StoreUnavailable,
    UnsupportedMediaType,
)
from mqttpush.models import (
    AliasRequest,
    ApproveRequest,
    AppSettings,
    BatchRequest,
    DeviceRegistrationRequest,
    DeviceUpdateRequest,
    PushRequest,
    TagsRequest,
    TemplateRequest,
    VendorTokenRequest,
    parse_json_object,
    validate_request,
)

log = logging.getLogger("mqttpush.api")
M = TypeVar("M", bound=BaseModel)

MAX_BODY_BYTES = 1 << 20


class Incoming(Protocol):
    """What the guard and the body readers read of a request: a Starlette ``Request`` in the
    FastAPI routes, a ``hotpath.Call`` (the ASGI scope and ``receive``, no more) on the hot path."""

    @property
    def scope(self) -> Scope: ...

    @property
    def method(self) -> str: ...

    @property
    def headers(self) -> Headers: ...

    async def body(self) -> bytes: ...

    def stream(self) -> AsyncGenerator[bytes, None]: ...


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def error_response(exc: MqttPushError) -> JSONResponse:
    """The answer to a refusal: its status and code, and ``Retry-After`` where waiting helps."""
    response = error(exc.status, exc.code, exc.message)
    if isinstance(exc, Overloaded | StoreUnavailable | RateLimited):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


def crash_response(path: str) -> JSONResponse:
    """The answer to a bug (call it where the exception is caught: it logs the traceback)."""
    log.exception("unhandled error path=%s", path)
    return error(500, "internal_error", "internal error; the request may not have been applied")


def is_json(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    kind, _, subtype = media.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


async def read_body(request: Incoming) -> bytes:
    """A JSON route's body: at most MAX_BODY_BYTES, and JSON or undeclared (curl --data-binary
    without -H, or a client that sets no Content-Type)."""
    declared = request.headers.get("content-length", "")
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body over {MAX_BODY_BYTES} bytes", code="body_too_large")
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body over {MAX_BODY_BYTES} bytes", code="body_too_large")
    content_type = request.headers.get("content-type")
    if body and content_type is not None and not is_json(content_type):
        raise UnsupportedMediaType(f"the body must be application/json, not {content_type[:64]!r}")
    return body


# What pydantic's JSON parser reads as a number where the reference path refuses it (422
# invalid_json_number): NaN, Infinity, and numbers beyond a double, which need a 3-digit exponent
# or, with a shorter one, 200 digits or more. Text that merely looks so only takes the longer way.
_NOT_FINITE = re.compile(rb"NaN|Infinity|[:,\[]\s*-?[0-9.]+[eE][+-]?[0-9]{3}|[0-9]{200}")


def parse(model: type[M], body: bytes) -> M:
    """``body`` as ``model``: parsed and validated in one pass by pydantic where that is sure to
    agree; anything it refuses, and anything that may hold a non-finite number, goes the reference
    way (:func:`parse_json_object`, :func:`validate_request`), which gives the refusal's code and message."""
    if _NOT_FINITE.search(body) is None:
        try:
            return model.model_validate_json(body)
        except ValidationError:
            pass
    return validate_request(model, parse_json_object(body))


# --- OpenAPI: the routes read raw bytes themselves (the signature covers them), so what each
# takes and which credentials it needs is declared here, next to each route, via openapi_extra.

SIGNED: dict[str, list[str]] = {"appKey": [], "appTimestamp": [], "appNonce": [], "appSignature": []}
"""All four signing headers together (docs/api.md, signing)."""
KEY_ONLY: dict[str, list[str]] = {"appKey": []}
BEARER: dict[str, list[str]] = {"deviceToken": []}
TOKEN: dict[str, list[str]] = {"appToken": []}
"""An app access token (``Authorization: Bearer mpt_…``): accepted wherever SIGNED is, within its
scope; :func:`spec` adds it beside SIGNED."""
TOKEN_SCOPE = "x-token-scope"
"""The operation field naming the least token scope a route needs (read, push, admin): declared
with ``spec(scope=…)``, else :func:`token_scope`'s default; the guard enforces what is declared."""
_SIGNING = (
    "HMAC-SHA256 signing (docs/api.md): X-MQTTPush-Signature is lowercase hex "
    "HMAC-SHA256(app_secret, METHOD \\n PATH_WITH_QUERY \\n TIMESTAMP \\n NONCE \\n hex(SHA-256(body))); "
    "all four X-MQTTPush-* headers go together."
)
SECURITY_SCHEMES: dict[str, Any] = {
    "appKey": {
        "type": "apiKey",
        "in": "header",
        "name": signing.KEY_HEADER,
        "description": "The app key. " + _SIGNING,
    },
    "appTimestamp": {
        "type": "apiKey",
        "in": "header",
        "name": signing.TIMESTAMP_HEADER,
        "description": "Unix seconds, within ±300 s of the server's clock. " + _SIGNING,
    },
    "appNonce": {
        "type": "apiKey",
        "in": "header",
        "name": signing.NONCE_HEADER,
        "description": "16-64 URL-safe characters, never reused within 10 minutes. " + _SIGNING,
    },
    "appSignature": {
        "type": "apiKey",
        "in": "header",
        "name": signing.SIGNATURE_HEADER,
        "description": _SIGNING,
    },
    "deviceToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "The device token from registration (`<device_id>.<secret>`), also its MQTT password.",
    },
    "appToken": {
        "type": "http",
        "scheme": "bearer",
        "description": (
            "An app access token `mpt_…` (`mqttpush app token create APP_KEY --scope read|push|admin`). "
            "Scopes: read = GET routes; push = read and sending (push, quick form, files, cancel, "
            "recall, approve, tasks); admin = everything the app's signature may do. Each operation's "
            "`x-token-scope` names the least scope it needs (403 insufficient_scope below it)."
        ),
    },
}
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}
ERROR_STATUSES = {
    "400": "Malformed JSON or request",
    "401": "Missing or bad credentials",
    "403": "Not allowed for these credentials",
    "404": "No such route or object",
    "405": "Method not allowed (Allow lists the methods)",
    "409": "The object is not in a state that allows this",
    "413": "Body or file too large",
    "415": "Body is not application/json",
    "422": "Invalid content",
    "429": "Over the request rate (Retry-After)",
    "503": "Overloaded or store unavailable (Retry-After)",
}
BODY_MODELS: list[type[BaseModel]] = [
    DeviceRegistrationRequest,
    PushRequest,
    BatchRequest,
    TemplateRequest,
    DeviceUpdateRequest,
    TagsRequest,
    AliasRequest,
    ApproveRequest,
    VendorTokenRequest,
    AppSettings,
]


def spec(
    *security: dict[str, list[str]],
    body: type[BaseModel] | None = None,
    text_body: bool | str = False,
    scope: str | None = None,
    headers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """``openapi_extra`` of a route: its credentials (alternatives), its body (a model, or text:
    ``text_body`` is then its description), the request headers it reads, and the least app
    token scope it needs where it takes SIGNED (default: :func:`token_scope`)."""
    alternatives = list(security)
    if SIGNED in alternatives and TOKEN not in alternatives:
        alternatives.insert(alternatives.index(SIGNED) + 1, TOKEN)
    extra: dict[str, Any] = {"security": alternatives}
    if scope is not None:
        extra[TOKEN_SCOPE] = scope
    if headers:
        extra["parameters"] = headers
    if body is not None:
        if body not in BODY_MODELS:  # a route module's own body models join the document
            BODY_MODELS.append(body)
        schema = {"$ref": f"#/components/schemas/{body.__name__}"}
        extra["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    elif text_body:
        about = text_body if isinstance(text_body, str) else "one entry a line"
        text = {"schema": {"type": "string", "description": about}}
        extra["requestBody"] = {"required": True, "content": {"text/plain": text}}
    return extra


def token_scope(method: str, extra: dict[str, Any] | None) -> str:
    """The least app token scope a route needs: as declared (``spec(scope=…)``), else ``read``
    for GET and HEAD and ``admin`` for anything that changes something."""
    declared = (extra or {}).get(TOKEN_SCOPE)
    if isinstance(declared, str):
        return declared
    return "read" if method.upper() in ("GET", "HEAD") else "admin"


def complete_openapi(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the body models, the error shape and the security schemes to FastAPI's document."""
    _, defs = models_json_schema(
        [(m, "validation") for m in BODY_MODELS], ref_template="#/components/schemas/{model}"
    )
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    # FastAPI's own 422 shape is never sent: every refusal is ERROR_SCHEMA.
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas.update(defs.get("$defs", {}))
    schemas["Error"] = ERROR_SCHEMA
    components["securitySchemes"] = SECURITY_SCHEMES
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if TOKEN in operation.get("security", ()):
                scope = token_scope(method, operation)
                operation[TOKEN_SCOPE] = scope
                note = f"An app token (`Authorization: Bearer mpt_…`) needs scope `{scope}` or above."
                operation["description"] = (operation.get("description", "") + "\n\n" + note).strip()
            responses = operation["responses"]
            responses.pop("422", None)
            if path.startswith("/api/"):
                responses.update({s: {"description": d, **error} for s, d in ERROR_STATUSES.items()})
            else:
                # /healthz and /readyz are never rate-limited (docs/api.md "Limits").
                responses["405"] = {"description": ERROR_STATUSES["405"], **error}
            if path == "/readyz":
                responses["503"] = {
                    "description": "Not ready: the message and parts name each cause",
                    **error,
                }
    return schema
