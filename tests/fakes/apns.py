"""A local APNs provider API (ASGI) that checks requests and answers the way Apple documents.

Serve it with ``tests.fakes.tls.tls_server(fake)``. It verifies the ES256 provider token against
the public half of the test .p8 key (``kid``, ``iss``, ``iat`` not older than one hour), requires
``apns-topic`` and a 64-hex device token, checks the other ``apns-*`` headers and the 4096-byte
payload limit, and records every accepted notification in :attr:`FakeApns.received`.

Scripted behaviour per device token (sets the test fills): ``unregistered`` → 410 Unregistered
(with ``timestamp``), ``expired`` → 410 ExpiredToken, ``bad`` → 400 BadDeviceToken, ``wrong_topic`` →
400 DeviceTokenNotForTopic, ``throttle_once`` → one 429 TooManyRequests, ``unavailable_once`` → one
503 ServiceUnavailable with ``Retry-After``; and ``fail_next_auth = n`` → the next n requests get
403 ExpiredProviderToken. ``connections`` and ``http_versions`` show how clients connected.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.requests import Request
from starlette.responses import Response

MAX_PAYLOAD_BYTES = 4096
PUSH_TYPES = frozenset(
    {
        "alert",
        "background",
        "location",
        "voip",
        "complication",
        "fileprovider",
        "mdm",
        "liveactivity",
        "pushtotalk",
    }
)
_PATH = re.compile(r"/3/device/([^/]*)")
_TOKEN = re.compile(r"[0-9a-fA-F]{64}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


def write_auth_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Write a new APNs-style auth key (EC P-256, PKCS#8 PEM, as a .p8 file) and return it."""
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return key


def fake_apns(directory: Path, **settings: Any) -> FakeApns:
    """A fake for a new auth key written as ``directory/AuthKey.p8`` (see :meth:`FakeApns.vendor_config`)."""
    key = write_auth_key(directory / "AuthKey.p8")
    return FakeApns(
        team_id="TEAM123456",
        key_id="KEY1234567",
        topic="com.example.app",
        public_key=key.public_key(),
        **settings,
    )


@dataclass
class ApnsNotification:
    """One notification the fake accepted."""

    device_token: str
    headers: dict[str, str]
    payload: dict[str, Any]
    http_version: str
    provider_token: str
    apns_id: str


@dataclass
class FakeApns:
    team_id: str
    key_id: str
    topic: str
    public_key: ec.EllipticCurvePublicKey
    now: Callable[[], float] = time.time
    received: list[ApnsNotification] = field(default_factory=list)
    unregistered: set[str] = field(default_factory=set)
    expired: set[str] = field(default_factory=set)
    bad: set[str] = field(default_factory=set)
    wrong_topic: set[str] = field(default_factory=set)
    throttle_once: set[str] = field(default_factory=set)
    unavailable_once: set[str] = field(default_factory=set)
    retry_after: str = "7"
    fail_next_auth: int = 0
    requests: int = 0
    """Every request, answered or refused."""
    connections: set[tuple[str, int]] = field(default_factory=set)
    """Distinct client (host, port) pairs: one per TCP connection."""
    http_versions: set[str] = field(default_factory=set)
    provider_tokens: list[str] = field(default_factory=list)
    """Distinct provider tokens whose signature, kid, iss and iat checked out, in the order seen."""
    answers: list[tuple[int, str]] = field(default_factory=list)
    """(status, reason or "") of every answer, in order."""

    def vendor_config(self, base_url: str, ca_file: str, key_file: str = "AuthKey.p8") -> dict[str, str]:
        """The VENDORS.json ``apns`` object that points at this fake (``key_file`` as :func:`fake_apns` wrote it)."""
        return {
            "team_id": self.team_id,
            "key_id": self.key_id,
            "key_file": key_file,
            "topic": self.topic,
            "base_url": base_url,
            "ca_file": ca_file,
        }

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
        request = Request(scope, receive)
        response = await self._handle(request, scope)
        await response(scope, receive, send)

    def _answer(
        self, status: int, reason: str | None = None, apns_id: str | None = None, **extra: Any
    ) -> Response:
        self.answers.append((status, reason or ""))
        headers = {"apns-id": apns_id or str(uuid.uuid4())}
        if reason is None:
            return Response(status_code=status, headers=headers)
        if status in (429, 503) and "retry_after" in extra:
            headers["retry-after"] = extra.pop("retry_after")
        body = json.dumps({"reason": reason, **extra}).encode()
        return Response(body, status_code=status, headers=headers, media_type="application/json")

    def _check_provider_token(self, authorization: str | None) -> str | None:
        """None when the token is good, else the 403 reason."""
        if not authorization or not authorization.lower().startswith("bearer "):
            return "MissingProviderToken"
        token = authorization[7:].strip()
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, self.public_key, algorithms=["ES256"], options={"verify_iat": False})
        except jwt.PyJWTError:
            return "InvalidProviderToken"
        if header.get("kid") != self.key_id or claims.get("iss") != self.team_id:
            return "InvalidProviderToken"
        iat = claims.get("iat")
        if not isinstance(iat, int):
            return "InvalidProviderToken"
        now = self.now()
        if iat > now + 60:
            return "InvalidProviderToken"
        if now - iat > 3600:
            return "ExpiredProviderToken"
        if token not in self.provider_tokens:
            self.provider_tokens.append(token)
        if self.fail_next_auth > 0:
            self.fail_next_auth -= 1
            return "ExpiredProviderToken"
        return None

    async def _handle(self, request: Request, scope: dict[str, Any]) -> Response:
        self.requests += 1
        body = await request.body()  # before any answer: see tests/fakes/tls.py
        client = scope.get("client")
        if client:
            self.connections.add((client[0], client[1]))
        self.http_versions.add(scope["http_version"])
        headers = {k.lower(): v for k, v in request.headers.items()}
        apns_id = headers.get("apns-id")
        if apns_id is not None and not _UUID.fullmatch(apns_id):
            return self._answer(400, "BadMessageId")
        if request.method != "POST":
            return self._answer(405, "MethodNotAllowed", apns_id)
        match = _PATH.fullmatch(request.url.path)
        if match is None:
            return self._answer(404, "BadPath", apns_id)
        device = match.group(1)
        auth_error = self._check_provider_token(headers.get("authorization"))
        if auth_error:
            return self._answer(403, auth_error, apns_id)
        if "apns-topic" not in headers:
            return self._answer(400, "MissingTopic", apns_id)
        if headers["apns-topic"] != self.topic:
            return self._answer(400, "TopicDisallowed", apns_id)
        if not device:
            return self._answer(400, "MissingDeviceToken", apns_id)
        if not _TOKEN.fullmatch(device) or device in self.bad:
            return self._answer(400, "BadDeviceToken", apns_id)
        push_type = headers.get("apns-push-type", "alert")
        if push_type not in PUSH_TYPES:
            return self._answer(400, "InvalidPushType", apns_id)
        priority = headers.get("apns-priority", "10")
        if priority not in ("10", "5", "1") or (push_type == "background" and priority == "10"):
            return self._answer(400, "BadPriority", apns_id)
        if not headers.get("apns-expiration", "0").isdigit():
            return self._answer(400, "BadExpirationDate", apns_id)
        if len(headers.get("apns-collapse-id", "").encode()) > 64:
            return self._answer(400, "BadCollapseId", apns_id)
        if not body:
            return self._answer(400, "PayloadEmpty", apns_id)
        if len(body) > MAX_PAYLOAD_BYTES:
            return self._answer(413, "PayloadTooLarge", apns_id)
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if not isinstance(payload, dict) or not isinstance(payload.get("aps"), dict):
            return self._answer(400, "BadPayload", apns_id)  # not an Apple reason: a test bug, loudly
        if device in self.wrong_topic:
            return self._answer(400, "DeviceTokenNotForTopic", apns_id)
        if device in self.unregistered:
            return self._answer(410, "Unregistered", apns_id, timestamp=int(self.now() * 1000) - 60_000)
        if device in self.expired:
            return self._answer(410, "ExpiredToken", apns_id)
        if device in self.throttle_once:
            self.throttle_once.discard(device)
            return self._answer(429, "TooManyRequests", apns_id)
        if device in self.unavailable_once:
            self.unavailable_once.discard(device)
            return self._answer(503, "ServiceUnavailable", apns_id, retry_after=self.retry_after)
        accepted_id = apns_id or str(uuid.uuid4())
        self.received.append(
            ApnsNotification(
                device_token=device,
                headers=headers,
                payload=payload,
                http_version=scope["http_version"],
                provider_token=headers["authorization"][7:].strip(),
                apns_id=accepted_id,
            )
        )
        return self._answer(200, None, accepted_id)
