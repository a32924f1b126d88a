"""Web Push (RFC 8030) with message encryption (RFC 8291) and VAPID (RFC 8292).

The device token is the browser's ``PushSubscription`` as JSON: ``{"endpoint", "keys": {"p256dh",
"auth"}}``. :func:`build_request` encrypts the envelope JSON for the subscription (``aes128gcm``,
one record, a fresh ephemeral ECDH key and salt per message) and POSTs it to the endpoint with TTL,
Urgency, Topic and the VAPID ``Authorization: vapid t=<JWT>, k=<public key>`` header.
:func:`classify` maps the push service's answer (201 Created, 404/410 gone, 413, 429, ...) onto an
outcome. :class:`WebPushChannel` is the thin async shell; it signs one VAPID JWT per push-service
origin and reuses it for :data:`VAPID_CACHE_SECONDS`.

The app's VAPID key pair (EC P-256) is not in VENDORS.json: it is generated once per app
(:func:`generate_vapid_keys`, ``mqttpush app vapid``) and handed to :func:`load_credentials`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import http_ece
import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bridge.channels.base import (
    Delivered,
    DropToken,
    Fail,
    HttpChannel,
    Outcome,
    PayloadTooLargeForVendor,
    PushMessage,
    Retry,
    VendorRequest,
    VendorResponse,
    config_error,
    count,
    retry_after,
    tls_verify,
)
from mqttpush.errors import InvalidContent

log = logging.getLogger(__name__)

NAME = "webpush"
MAX_PLAINTEXT_BYTES = 3993
"""RFC 8291 §4: push services need accept only 4096 bytes of body; less the aes128gcm header
(86 bytes), the padding delimiter (1) and the AEAD tag (16), that leaves 3993 bytes of plaintext."""
MAX_TOPIC_CHARS = 32
VAPID_TOKEN_LIFETIME = 18 * 3600
"""``exp`` of a VAPID JWT: RFC 8292 allows at most 24 h; the rest is slack for clock skew."""
VAPID_CACHE_SECONDS = 12 * 3600
"""Reuse a signed JWT this long, so a cached one still has >= 6 h to live when it is sent."""

_TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}")


@dataclass(frozen=True, slots=True)
class WebPushCredentials:
    """The ``webpush`` object of VENDORS.json (docs/vendors.md) with the app's VAPID key pair."""

    subject: str
    """``mailto:`` or ``https:`` contact for the push service operator (the JWT ``sub``)."""
    private_key: ec.EllipticCurvePrivateKey = field(repr=False, compare=False)
    public_key: str
    """The VAPID public key: the uncompressed P-256 point, base64url without padding (what a
    browser's ``applicationServerKey`` takes, and the ``k`` parameter of the header)."""
    ca_file: str | None = None
    """PEM bundle to trust instead of the system store (None: system trust store)."""


def generate_vapid_keys() -> tuple[str, str]:
    """A new VAPID key pair: ``(private key PEM (PKCS#8), public key base64url)``."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return pem, _public_b64(key)


def load_credentials(
    obj: Mapping[str, Any], base_dir: Path, *, vapid_private_key: str | bytes
) -> WebPushCredentials:
    """Read the ``webpush`` VENDORS.json object and the app's VAPID private key.

    ``vapid_private_key`` is a PEM (PKCS#8 or SEC1) or the raw 32-byte private scalar in base64url
    (the form other Web Push libraries print). Relative ``ca_file`` paths are taken from
    ``base_dir``. Raises ``InvalidContent(code="bad_vendor_config")`` naming what is wrong.
    """
    if not isinstance(obj, Mapping):
        raise config_error(NAME, "the webpush entry must be a JSON object")
    subject = _required_str(obj, "subject")
    if not (subject.startswith("mailto:") and len(subject) > 7) and not _is_https_url(subject):
        raise config_error(NAME, f"'subject' must be a mailto: or https:// URL, got {subject!r}")
    key = load_vapid_private_key(vapid_private_key)
    return WebPushCredentials(
        subject=subject, private_key=key, public_key=_public_b64(key), ca_file=_ca_file(obj, base_dir)
    )


def load_vapid_private_key(value: str | bytes) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key from PEM or from its raw scalar in base64url."""
    data = value.encode() if isinstance(value, str) else value
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(data, password=None)
        else:
            scalar = _b64decode(data.decode("ascii").strip())
            if len(scalar) != 32:
                raise ValueError("a raw VAPID private key is 32 bytes")
            key = ec.derive_private_key(int.from_bytes(scalar, "big"), ec.SECP256R1())
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise config_error(
            NAME, f"the VAPID private key is not a PEM or base64url P-256 key ({exc})"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise config_error(NAME, "the VAPID private key must be an EC P-256 key")
    return key


# ---------------------------------------------------------------------------------------------
# Pure: subscriptions, VAPID, request building and answer classification


@dataclass(frozen=True, slots=True)
class Subscription:
    endpoint: str
    p256dh: bytes = field(repr=False)
    """The user agent's ECDH public key, an uncompressed P-256 point (65 bytes)."""
    auth: bytes = field(repr=False)
    """The 16-byte authentication secret."""


def parse_subscription(token: str) -> Subscription:
    """Read a ``PushSubscription`` JSON token; raises ``InvalidContent(code="bad_subscription")``."""
    try:
        obj = json.loads(token)
        endpoint = obj["endpoint"]
        p256dh = _b64decode(obj["keys"]["p256dh"])
        auth = _b64decode(obj["keys"]["auth"])
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise InvalidContent(
            "a Web Push token is the subscription JSON {endpoint, keys: {p256dh, auth}}",
            code="bad_subscription",
        ) from None
    if not isinstance(endpoint, str) or not _is_https_url(endpoint):
        raise InvalidContent("a push subscription endpoint must be an https:// URL", code="bad_subscription")
    if len(p256dh) != 65 or p256dh[0] != 4 or len(auth) != 16:
        raise InvalidContent(
            "a push subscription needs a 65-byte P-256 p256dh key and a 16-byte auth secret",
            code="bad_subscription",
        )
    return Subscription(endpoint=endpoint, p256dh=p256dh, auth=auth)


def validate_token(token: str) -> str:
    """A subscription as registered (its JSON) → the normal form kept as the device's token:
    ``{"endpoint", "keys": {"p256dh", "auth"}}`` with nothing else, or 422 ``bad_subscription``
    (an https endpoint, a 65-byte P-256 ``p256dh`` and a 16-byte ``auth``, base64url). Pure."""
    parse_subscription(token)
    obj = json.loads(token)
    return json.dumps(
        {"endpoint": obj["endpoint"], "keys": {"p256dh": obj["keys"]["p256dh"], "auth": obj["keys"]["auth"]}}
    )


def origin(endpoint: str) -> str:
    """The origin of a push endpoint (scheme://host[:port], default port omitted): the JWT ``aud``."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    default = {"https": 443, "http": 80}.get(parts.scheme)
    port = f":{parts.port}" if parts.port is not None and parts.port != default else ""
    return f"{parts.scheme}://{host}{port}"


def vapid_authorization(creds: WebPushCredentials, endpoint: str, now: float) -> str:
    """The RFC 8292 header value ``vapid t=<ES256 JWT>, k=<public key>`` for ``endpoint``'s origin."""
    claims = {"aud": origin(endpoint), "exp": int(now) + VAPID_TOKEN_LIFETIME, "sub": creds.subject}
    token = jwt.encode(claims, creds.private_key, algorithm="ES256", headers={"typ": "JWT"})
    return f"vapid t={token}, k={creds.public_key}"


def topic(collapse_key: str) -> str:
    """A Topic header value for ``collapse_key``: kept when it already is <= 32 base64url characters,
    otherwise the first 32 characters of its SHA-256 in base64url."""
    if _TOPIC.fullmatch(collapse_key):
        return collapse_key
    digest = base64.urlsafe_b64encode(hashlib.sha256(collapse_key.encode()).digest()).decode()
    return digest[:MAX_TOPIC_CHARS]


def build_request(
    message: PushMessage, token: str, creds: WebPushCredentials, auth: str = ""
) -> VendorRequest:
    """The encrypted push for ``message`` to the subscription ``token``.

    ``auth`` is the VAPID ``Authorization`` value from :func:`vapid_authorization` (the channel
    caches one per origin); when empty, one is signed now. The plaintext is the envelope JSON, which
    the service worker receives. Raises :class:`PayloadTooLargeForVendor` over 3993 bytes of
    plaintext and ``InvalidContent(code="bad_subscription")`` for a malformed token.
    """
    subscription = parse_subscription(token)
    plaintext = json.dumps(message.envelope, ensure_ascii=False, separators=(",", ":")).encode()
    if len(plaintext) > MAX_PLAINTEXT_BYTES:
        raise PayloadTooLargeForVendor(
            f"Web Push plaintext is {len(plaintext)} bytes, over {MAX_PLAINTEXT_BYTES}"
        )
    # RFC 8291: a fresh ephemeral key (and salt, drawn by http_ece) for every message.
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    body = http_ece.encrypt(
        plaintext,
        private_key=ephemeral,
        dh=subscription.p256dh,
        auth_secret=subscription.auth,
        version="aes128gcm",
    )
    headers = {
        "authorization": auth or vapid_authorization(creds, subscription.endpoint, time.time()),
        "content-encoding": "aes128gcm",
        "content-type": "application/octet-stream",
        "ttl": str(max(message.ttl, 0)),
        "urgency": "high" if message.priority == "high" else "normal",
    }
    if message.collapse_key:
        headers["topic"] = topic(message.collapse_key)
    return VendorRequest(method="POST", url=subscription.endpoint, headers=headers, body=bytes(body))


def classify(response: VendorResponse) -> Outcome:
    """Map a push service's answer (RFC 8030 §5, RFC 8292 §4) onto an outcome."""
    status = response.status
    if 200 <= status < 300:
        return Delivered(vendor_id=response.headers.get("location"))
    if status in (404, 410):
        return DropToken("subscription_gone")
    if status == 413:
        return Fail("payload_too_large")
    if status == 429:
        return Retry("rate_limited", after=retry_after(response.headers))
    if status in (400, 401, 403):
        # Our requests are well formed by construction, so these are the VAPID JWT or key.
        return Fail(f"vapid_rejected_{status}", auth=True)
    if status >= 500:
        return Retry(f"http_{status}", after=retry_after(response.headers))
    return Fail(f"http_{status}")


# ---------------------------------------------------------------------------------------------
# The channel: a thin async shell


class VapidCache:
    """One signed VAPID header per push-service origin, re-signed after ``VAPID_CACHE_SECONDS``."""

    def __init__(self, creds: WebPushCredentials, now: Callable[[], float] = time.time) -> None:
        self._creds = creds
        self._now = now
        self._headers: dict[str, tuple[str, float]] = {}

    def get(self, endpoint: str) -> str:
        key = origin(endpoint)
        now = self._now()
        cached = self._headers.get(key)
        if cached is None or now - cached[1] >= VAPID_CACHE_SECONDS:
            cached = (vapid_authorization(self._creds, endpoint, now), now)
            self._headers[key] = cached
        return cached[0]

    def invalidate(self, endpoint: str) -> None:
        self._headers.pop(origin(endpoint), None)


class WebPushChannel(HttpChannel):
    """Sends Web Push messages for one app's VAPID key pair over one shared HTTP/2 client."""

    name = NAME

    def __init__(
        self,
        creds: WebPushCredentials,
        *,
        max_concurrency: int = 100,
        timeout: float = 10.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.creds = creds
        self._vapid = VapidCache(creds, now)
        super().__init__(tls_verify(creds.ca_file), max_concurrency=max_concurrency, timeout=timeout)

    async def send(self, message: PushMessage, token: str) -> Outcome:
        """Encrypt, send, classify; re-sign the VAPID JWT once if the push service refuses it."""
        self.stats.sent += 1
        async with self._limit:
            outcome = await self._send(message, token)
        count(self.stats, outcome)
        _log_outcome(message, token, outcome)
        return outcome

    async def _send(self, message: PushMessage, token: str) -> Outcome:
        try:
            endpoint = parse_subscription(token).endpoint
        except InvalidContent:
            return DropToken("bad_subscription")  # a malformed subscription never starts working
        resigned = False
        while True:
            try:
                request = build_request(message, token, self.creds, self._vapid.get(endpoint))
            except PayloadTooLargeForVendor as exc:
                log.info(
                    "webpush payload too large msg_id=%s: %s",
                    message.msg_id,
                    exc,
                    extra={"msg_id": message.msg_id},
                )
                self._bump("too_large")
                return Fail("payload_too_large")
            try:
                response = await self._client.request(
                    request.method, request.url, headers=request.headers, content=request.body
                )
            except httpx.TransportError as exc:
                log.info("webpush network error origin=%s error=%s", origin(endpoint), type(exc).__name__)
                return Retry("network")
            outcome = classify(
                VendorResponse(
                    status=response.status_code,
                    headers={k.lower(): v for k, v in response.headers.items()},
                    body=response.content,
                )
            )
            if isinstance(outcome, Fail) and outcome.auth and not resigned:
                resigned = True
                self._vapid.invalidate(endpoint)
                self._bump("auth_refreshes")
                continue
            return outcome


def _log_outcome(message: PushMessage, token: str, outcome: Outcome) -> None:
    # The subscription's endpoint path is its capability: log only where it points.
    where = _token_origin(token)
    if isinstance(outcome, DropToken):
        log.info(
            "webpush drop subscription origin=%s msg_id=%s reason=%s", where, message.msg_id, outcome.reason
        )
    elif isinstance(outcome, Fail):
        level = logging.WARNING if outcome.auth else logging.INFO
        log.log(
            level,
            "webpush failed origin=%s msg_id=%s reason=%s",
            where,
            message.msg_id,
            outcome.reason,
            extra={"msg_id": message.msg_id},
        )


def _token_origin(token: str) -> str:
    try:
        return origin(parse_subscription(token).endpoint)
    except InvalidContent:
        return "?"


def _public_b64(key: ec.EllipticCurvePrivateKey) -> str:
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return base64.urlsafe_b64encode(point).rstrip(b"=").decode()


def _b64decode(value: Any) -> bytes:
    """base64url (or standard base64, which some browsers' polyfills emit), padding optional."""
    if not isinstance(value, str):
        raise ValueError("not a base64 string")
    text = value.strip().replace("+", "-").replace("/", "_")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:
        raise ValueError(str(exc)) from None


def _is_https_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme == "https" and bool(parts.hostname)


# ---------------------------------------------------------------------------------------------
# VENDORS.json validation


def _required_str(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise config_error(NAME, f"{key!r} is required (a non-empty string)")
    return value.strip()


def _ca_file(obj: Mapping[str, Any], base_dir: Path) -> str | None:
    value = obj.get("ca_file")
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise config_error(NAME, "'ca_file' must be a non-empty string when given")
    path = Path(value) if Path(value).is_absolute() else base_dir / value
    if not path.is_file():
        raise config_error(NAME, f"'ca_file' {str(path)!r} is not a readable file")
    return str(path)
