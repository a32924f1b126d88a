"""A local Web Push service that is also the browser behind each subscription.

Serve it with ``tests.fakes.tls.tls_server(fake.app)``; endpoints are ``{base_url}/push/{id}``.
As the push service (RFC 8030, RFC 8292) it checks the VAPID ``Authorization: vapid t=, k=`` header
(an ES256 JWT signed by ``k``, ``aud`` = this origin, ``exp`` in the future and at most 24 h away,
``sub`` a mailto:/https: contact, and ``k`` equal to the subscription's ``applicationServerKey``
when it was restricted to one), the TTL / Urgency / Topic / Content-Encoding headers and the
4096-byte body limit. As the browser (RFC 8291) it holds the subscription's private key and auth
secret and decrypts the ``aes128gcm`` body, so ``received`` holds the plaintext that arrived.
Answers: 201 + Location; 404 unknown and 410 expired subscriptions; 400/401/403/413/429 per the RFCs.
Script it with ``expired``, ``throttle_once`` (subscription ids) and ``expire_auth_once``.
"""

from __future__ import annotations

import base64
import itertools
import re
import time
from dataclasses import dataclass, field
from typing import Any

import http_ece
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

MAX_BODY = 4096
_VAPID = re.compile(r"^vapid\s+t=(?P<t>[^,\s]+)\s*,\s*k=(?P<k>[A-Za-z0-9_=-]+)$")
_TOPIC = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_URGENCIES = ("very-low", "low", "normal", "high")


@dataclass
class Browser:
    """The user agent's side of one subscription."""

    private_key: ec.EllipticCurvePrivateKey
    auth_secret: bytes
    application_server_key: str | None = None


@dataclass
class ReceivedPush:
    subscription_id: str
    plaintext: bytes
    ttl: int
    urgency: str
    topic: str | None
    claims: dict[str, Any] = field(default_factory=dict)
    jwt: str = ""
    http_version: str = ""


class FakePushService:
    def __init__(self) -> None:
        self.browsers: dict[str, Browser] = {}
        self.expired: set[str] = set()
        self.throttle_once: set[str] = set()
        self.expire_auth_once = False
        self.received: list[ReceivedPush] = []
        self.rejections: list[tuple[int, str]] = []
        self._ids = itertools.count(1)
        self.app = Starlette(routes=[Route("/push/{sub_id}", self._push, methods=["POST"])])

    def subscribe(
        self,
        sub_id: str,
        private_key: ec.EllipticCurvePrivateKey,
        auth_secret: bytes,
        *,
        application_server_key: str | None = None,
    ) -> None:
        """Register the browser behind ``/push/{sub_id}``; restrict it to one VAPID key if given."""
        self.browsers[sub_id] = Browser(private_key, auth_secret, application_server_key)

    async def _push(self, request: Request) -> Response:
        # Read the whole body first: hypercorn's HTTP/2 stream breaks on DATA after the answer.
        body = await request.body()
        sub_id = request.path_params["sub_id"]
        browser = self.browsers.get(sub_id)
        if browser is None:
            return self._reject(404, "unknown subscription")
        if sub_id in self.expired:
            return self._reject(410, "subscription expired")
        origin = f"{request.url.scheme}://{request.url.netloc}"
        verdict = self._check_vapid(request.headers.get("authorization", ""), origin, browser)
        if isinstance(verdict, Response):
            return verdict
        claims, token = verdict
        if self.expire_auth_once:
            self.expire_auth_once = False
            return self._reject(401, "VAPID token expired")
        if request.headers.get("content-encoding") != "aes128gcm":
            return self._reject(400, "Content-Encoding must be aes128gcm")
        ttl = request.headers.get("ttl", "")
        if not ttl.isdigit():
            return self._reject(400, "TTL header required")
        urgency = request.headers.get("urgency", "normal")
        if urgency not in _URGENCIES:
            return self._reject(400, "bad Urgency")
        topic = request.headers.get("topic")
        if topic is not None and not _TOPIC.match(topic):
            return self._reject(400, "bad Topic")
        if len(body) > MAX_BODY:
            return self._reject(413, "payload too large")
        if sub_id in self.throttle_once:
            self.throttle_once.discard(sub_id)
            return self._reject(429, "too many requests", {"Retry-After": "7"})
        try:
            plaintext = http_ece.decrypt(
                body, private_key=browser.private_key, auth_secret=browser.auth_secret, version="aes128gcm"
            )
        except http_ece.ECEException as exc:
            return self._reject(400, f"cannot decrypt: {exc}")
        self.received.append(
            ReceivedPush(
                sub_id,
                bytes(plaintext),
                int(ttl),
                urgency,
                topic,
                claims,
                token,
                request.scope.get("http_version", ""),
            )
        )
        location = f"{origin}/message/{next(self._ids)}"
        return Response(status_code=201, headers={"Location": location, "TTL": ttl})

    def _check_vapid(
        self, header: str, origin: str, browser: Browser
    ) -> tuple[dict[str, Any], str] | Response:
        match = _VAPID.match(header.strip())
        if match is None:
            return self._reject(401, "missing or malformed VAPID authorization")
        k = match.group("k")
        try:
            point = base64.urlsafe_b64decode(k + "=" * (-len(k) % 4))
            public_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
            claims: dict[str, Any] = jwt.decode(
                match.group("t"),
                public_key,
                algorithms=["ES256"],
                audience=origin,
                options={"require": ["aud", "exp", "sub"]},
            )
        except (ValueError, jwt.PyJWTError) as exc:
            return self._reject(401, f"bad VAPID JWT: {exc}")
        if claims["exp"] > time.time() + 24 * 3600:
            return self._reject(401, "VAPID exp more than 24 h ahead")
        sub = str(claims["sub"])
        if not (sub.startswith("mailto:") or sub.startswith("https://")):
            return self._reject(401, "VAPID sub must be mailto: or https:")
        if browser.application_server_key is not None and k != browser.application_server_key:
            return self._reject(403, "VAPID key does not match the subscription")
        return claims, match.group("t")

    def _reject(self, status: int, reason: str, headers: dict[str, str] | None = None) -> Response:
        self.rejections.append((status, reason))
        return JSONResponse(
            {"code": status, "errno": 0, "error": reason}, status_code=status, headers=headers
        )
