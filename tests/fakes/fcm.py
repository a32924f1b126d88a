"""A local FCM HTTP v1 API and Google OAuth2 token endpoint (ASGI), answering as Google documents.

Serve it with ``tests.fakes.tls.tls_server(fake)`` and point the service account's ``token_uri``
at ``{base_url}/token`` (:func:`write_service_account`). ``POST /token`` verifies the RS256
JWT-bearer assertion against the service account's public key (iss, aud = this URL, scope, iat/exp)
and issues ``{"access_token", "expires_in", "token_type"}``. ``POST /v1/projects/{id}/messages:send``
requires a Bearer token it issued and has not expired, validates the v1 message shape (one target,
string-only ``data``, ``android.priority``/``ttl`` formats, 4096-byte payload) and answers
``{"name": "projects/{id}/messages/<n>"}`` or Google's error JSON with an ``FcmError`` detail.

Scripted behaviour per registration token: ``unregistered`` → 404 UNREGISTERED, ``invalid`` → 400
INVALID_ARGUMENT ("The registration token is not a valid FCM registration token"),
``sender_mismatch`` → 403 SENDER_ID_MISMATCH, ``quota_once`` → one 429 QUOTA_EXCEEDED with
Retry-After, ``unavailable_once`` → one 503 UNAVAILABLE, ``third_party_auth`` → 401
THIRD_PARTY_AUTH_ERROR; :meth:`FakeFcm.revoke_access_tokens` makes every issued token answer 401
UNAUTHENTICATED.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
MAX_PAYLOAD_BYTES = 4096
_SEND_PATH = re.compile(r"/v1/projects/([^/]+)/messages:send")
_DURATION = re.compile(r"\d+(\.\d{1,9})?s")
_MESSAGE_FIELDS = frozenset(
    {
        "name",
        "data",
        "notification",
        "android",
        "webpush",
        "apns",
        "fcm_options",
        "token",
        "topic",
        "condition",
    }
)


def write_service_account(
    path: Path,
    *,
    token_uri: str,
    project_id: str = "mqttpush-test",
    client_email: str = "push@mqttpush-test.iam.gserviceaccount.com",
    key: rsa.RSAPrivateKey | None = None,
) -> rsa.RSAPrivateKey:
    """Write a Google service account JSON (the fields FCM senders use) and return its key."""
    key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": project_id,
                "private_key_id": "0123456789abcdef",
                "private_key": pem,
                "client_email": client_email,
                "client_id": "1234567890",
                "auth_uri": "https://accounts.google.com/o/oauth2/auth",
                "token_uri": token_uri,
            }
        )
    )
    return key


def google_error(
    code: int, status: str, message: str, error_code: str | None = None, **headers: str
) -> JSONResponse:
    """Google's error JSON, with an FcmError detail when ``error_code`` is given."""
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if error_code:
        error["details"] = [{"@type": FCM_ERROR, "errorCode": error_code}]
    return JSONResponse({"error": error}, status_code=code, headers=headers or None)


def _bad_field(field_path: str, description: str) -> JSONResponse:
    return JSONResponse(
        {
            "error": {
                "code": 400,
                "message": description,
                "status": "INVALID_ARGUMENT",
                "details": [
                    {
                        "@type": BAD_REQUEST,
                        "fieldViolations": [{"field": field_path, "description": description}],
                    }
                ],
            }
        },
        status_code=400,
    )


@dataclass
class FcmMessage:
    """One message the fake accepted."""

    message: dict[str, Any]
    headers: dict[str, str]
    http_version: str
    name: str


@dataclass
class FakeFcm:
    project_id: str
    client_email: str
    public_key: rsa.RSAPublicKey
    now: Callable[[], float] = time.time
    expires_in: int = 3599
    received: list[FcmMessage] = field(default_factory=list)
    unregistered: set[str] = field(default_factory=set)
    invalid: set[str] = field(default_factory=set)
    sender_mismatch: set[str] = field(default_factory=set)
    quota_once: set[str] = field(default_factory=set)
    unavailable_once: set[str] = field(default_factory=set)
    third_party_auth: set[str] = field(default_factory=set)
    retry_after: str = "30"
    access_tokens: dict[str, float] = field(default_factory=dict)
    """Issued access token → expiry time."""
    token_requests: int = 0
    requests: int = 0
    connections: set[tuple[str, int]] = field(default_factory=set)
    http_versions: set[str] = field(default_factory=set)
    answers: list[tuple[int, str]] = field(default_factory=list)
    """(status, error status or "") of every messages:send answer, in order."""
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def revoke_access_tokens(self) -> None:
        """Every token issued so far answers 401 UNAUTHENTICATED from now on."""
        self.access_tokens.clear()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        self.requests += 1
        client = scope.get("client")
        if client:
            self.connections.add((client[0], client[1]))
        self.http_versions.add(scope["http_version"])
        request = Request(scope, receive)
        await request.body()  # read it before any answer (cached by Starlette): see tests/fakes/tls.py
        if request.url.path == "/token":
            response = await self._token(request, scope)
        else:
            response = await self._send(request, scope)
            body = json.loads(bytes(response.body)) if response.status_code != 200 else {}
            self.answers.append((response.status_code, body.get("error", {}).get("status", "")))
        await response(scope, receive, send)

    async def _token(self, request: Request, scope: dict[str, Any]) -> Response:
        """Google's OAuth2 token endpoint for the JWT-bearer grant."""
        self.token_requests += 1
        if request.method != "POST":
            return JSONResponse({"error": "invalid_request"}, status_code=405)
        form = parse_qs((await request.body()).decode())
        if form.get("grant_type") != [JWT_BEARER]:
            return JSONResponse(
                {"error": "unsupported_grant_type", "error_description": "Invalid grant_type"},
                status_code=400,
            )
        host, port = scope["server"]
        audience = f"https://{host}:{port}/token"
        try:
            claims = jwt.decode(
                (form.get("assertion") or [""])[0],
                self.public_key,
                algorithms=["RS256"],
                audience=audience,
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "require": ["iss", "aud", "iat", "exp", "scope"],
                },
            )
        except jwt.PyJWTError:
            return JSONResponse(
                {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}, status_code=400
            )
        now = self.now()
        if claims["iss"] != self.client_email:
            return JSONResponse(
                {"error": "invalid_grant", "error_description": "Invalid grant: account not found"},
                status_code=400,
            )
        if SCOPE not in str(claims["scope"]).split():
            return JSONResponse(
                {"error": "invalid_scope", "error_description": "Invalid OAuth scope"}, status_code=400
            )
        if not (claims["iat"] <= now + 60 and now < claims["exp"] and claims["exp"] - claims["iat"] <= 3600):
            return JSONResponse(
                {
                    "error": "invalid_grant",
                    "error_description": "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.",
                },
                status_code=400,
            )
        token = "ya29." + secrets.token_urlsafe(24)
        self.access_tokens[token] = now + self.expires_in
        return JSONResponse({"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"})

    def _authorized(self, authorization: str | None) -> bool:
        if not authorization or not authorization.startswith("Bearer "):
            return False
        expiry = self.access_tokens.get(authorization[7:])
        return expiry is not None and self.now() < expiry

    async def _send(self, request: Request, scope: dict[str, Any]) -> Response:
        match = _SEND_PATH.fullmatch(request.url.path)
        if match is None:
            return google_error(404, "NOT_FOUND", "Requested entity was not found.")
        if request.method != "POST":
            return google_error(405, "METHOD_NOT_ALLOWED", "Method not allowed.")
        if not self._authorized(request.headers.get("authorization")):
            return google_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie "
                "or other valid authentication credential.",
            )
        if match.group(1) != self.project_id:
            return google_error(
                403,
                "PERMISSION_DENIED",
                f"Permission 'cloudmessaging.messages.create' denied on resource '//cloudresourcemanager.googleapis.com/projects/{match.group(1)}'",
            )
        try:
            body = json.loads(await request.body())
        except ValueError:
            return google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        problem = self._validate(body)
        if problem is not None:
            return problem
        message = body["message"]
        token = message.get("token")
        if token in self.unregistered:
            return google_error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED")
        if token in self.invalid:
            return google_error(
                400,
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token",
                "INVALID_ARGUMENT",
            )
        if token in self.sender_mismatch:
            return google_error(403, "PERMISSION_DENIED", "SenderId mismatch", "SENDER_ID_MISMATCH")
        if token in self.third_party_auth:
            return google_error(
                401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service", "THIRD_PARTY_AUTH_ERROR"
            )
        if token in self.quota_once:
            self.quota_once.discard(token)
            return google_error(
                429,
                "RESOURCE_EXHAUSTED",
                "Quota exceeded for quota metric 'Send requests'",
                "QUOTA_EXCEEDED",
                **{"retry-after": self.retry_after},
            )
        if token in self.unavailable_once:
            self.unavailable_once.discard(token)
            return google_error(503, "UNAVAILABLE", "The service is currently unavailable.", "UNAVAILABLE")
        name = f"projects/{self.project_id}/messages/0:{next(self._ids)}%{secrets.token_hex(4)}"
        self.received.append(
            FcmMessage(
                message=message,
                headers={k.lower(): v for k, v in request.headers.items()},
                http_version=scope["http_version"],
                name=name,
            )
        )
        return JSONResponse({"name": name})

    def _validate(self, body: Any) -> Response | None:
        """The v1 request shape, answered the way Google's API validation does."""
        if not isinstance(body, dict) or not isinstance(body.get("message"), dict):
            return google_error(400, "INVALID_ARGUMENT", "Request contains an invalid argument.")
        message = body["message"]
        for key in message:
            if key not in _MESSAGE_FIELDS:
                return google_error(
                    400,
                    "INVALID_ARGUMENT",
                    f"Invalid JSON payload received. Unknown name \"{key}\" at 'message': Cannot find field.",
                )
        targets = [k for k in ("token", "topic", "condition") if k in message]
        if len(targets) != 1:
            return google_error(400, "INVALID_ARGUMENT", "Request contains an invalid argument.")
        data = message.get("data", {})
        if not isinstance(data, dict):
            return _bad_field("message.data", "Invalid value at 'message.data'")
        for index, (key, value) in enumerate(data.items()):
            if not isinstance(value, str):
                return _bad_field(
                    f"message.data[{index}].value",
                    f"Invalid value at 'message.data[{index}].value' (TYPE_STRING), {value}",
                )
            if key in ("from", "gcm") or key.startswith("google"):
                return google_error(
                    400, "INVALID_ARGUMENT", f"Invalid data payload key: {key}", "INVALID_ARGUMENT"
                )
        notification = message.get("notification", {})
        if not isinstance(notification, dict) or any(
            k not in ("title", "body", "image") or not isinstance(v, str) for k, v in notification.items()
        ):
            return _bad_field("message.notification", "Invalid value at 'message.notification'")
        android = message.get("android", {})
        if not isinstance(android, dict):
            return _bad_field("message.android", "Invalid value at 'message.android'")
        if android.get("priority", "NORMAL") not in ("NORMAL", "HIGH"):
            return _bad_field("message.android.priority", "Invalid value at 'message.android.priority'")
        ttl = android.get("ttl", "0s")
        if not isinstance(ttl, str) or not _DURATION.fullmatch(ttl) or float(ttl[:-1]) > 28 * 24 * 3600:
            return _bad_field(
                "message.android.ttl",
                "Invalid value at 'message.android.ttl' (type.googleapis.com/google.protobuf.Duration)",
            )
        apns = message.get("apns", {})
        if not isinstance(apns, dict) or not all(
            isinstance(v, str) for v in apns.get("headers", {}).values()
        ):
            return _bad_field("message.apns.headers", "Invalid value at 'message.apns.headers'")
        visible = {k: message[k] for k in ("notification", "data") if k in message}
        if len(json.dumps(visible, ensure_ascii=False, separators=(",", ":")).encode()) > MAX_PAYLOAD_BYTES:
            return google_error(400, "INVALID_ARGUMENT", "Message is too big", "INVALID_ARGUMENT")
        return None
