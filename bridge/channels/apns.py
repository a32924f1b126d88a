"""Apple Push Notification service (APNs): HTTP/2 provider API with token-based (.p8) auth.

What Apple documents and this module relies on ("Sending notification requests to APNs",
"Generating a remote notification", "Establishing a token-based connection to APNs",
"Handling error responses from APNs"):

* ``POST {base_url}/3/device/<hex device token>`` over HTTP/2 + TLS; many streams share one
  connection. Headers: ``authorization: bearer <provider token>``, ``apns-topic`` (bundle id),
  ``apns-push-type``, ``apns-priority``, ``apns-expiration`` (UNIX seconds; 0 = do not store) and
  ``apns-collapse-id`` (at most 64 bytes).
* The JSON payload is at most 4096 bytes. Apple's keys live in ``aps``; custom keys sit next to it.
* A background (data-only) push has ``aps.content-available = 1`` and no alert, sound or badge,
  push type ``background`` and priority 5 (10 is not allowed for it).
* The provider token is an ES256 JWT ``{iss: team id, iat}`` with header ``kid`` = key id. APNs
  refuses a token older than one hour (ExpiredProviderToken) and tokens replaced more often than
  every 20 minutes (TooManyProviderTokenUpdates), so one is reused for 40 minutes.
* Success is 200 with an empty body and an ``apns-id`` header; errors carry ``{"reason"}`` (and,
  for 410 Unregistered, ``"timestamp"`` in milliseconds).

Envelope → payload: ``title``/``body`` → ``aps.alert``; ``sound``, ``badge``, ``category`` → ``aps``;
``image`` → ``mqttpush_image`` plus ``aps.mutable-content = 1`` (a notification service extension
fetches it); ``url`` → ``mqttpush_url``; ``data`` keys at the top level; the envelope id →
``mqttpush_id`` so the app can deduplicate against the MQTT copy. A data-only message keeps its
title/body as ``mqttpush_title``/``mqttpush_body``. ``aps`` and ``mqttpush_*`` data keys are reserved.
"""

from __future__ import annotations

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

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bridge.channels.base import (
    ENVELOPE_ID_KEY,
    RESERVED_PREFIX,
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
    json_object,
    redact,
    retry_after,
    tls_verify,
    token_error,
)
from bridge.channels.http2 import Http2Error, Http2Pool
from mqttpush.errors import InvalidContent

log = logging.getLogger(__name__)

PRODUCTION_URL = "https://api.push.apple.com"
SANDBOX_URL = "https://api.sandbox.push.apple.com"
MAX_PAYLOAD_BYTES = 4096
MAX_COLLAPSE_ID_BYTES = 64
TOKEN_REFRESH_AFTER = 40 * 60.0
"""Seconds a provider token is reused: Apple wants 20 min < age < 60 min."""
MIN_FORCED_REFRESH_INTERVAL = 20 * 60.0
"""A rejected token is replaced at once, but not twice within this many seconds (Apple answers
TooManyProviderTokenUpdates to faster churn, and a key that is wrong stays wrong)."""

REFRESH_TOKEN_REASONS = frozenset({"ExpiredProviderToken", "InvalidProviderToken", "MissingProviderToken"})
"""403 reasons after which a freshly signed provider token may succeed."""
DROP_TOKEN_REASONS_400 = frozenset({"BadDeviceToken", "DeviceTokenNotForTopic"})

_KEYS = frozenset({"team_id", "key_id", "key_file", "topic", "base_url", "ca_file"})
_TEN_ALNUM = re.compile(r"[A-Za-z0-9]{10}")
_TOPIC = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-_]*")
MIN_DEVICE_TOKEN_BYTES = 32
MAX_DEVICE_TOKEN_BYTES = 200
"""Device tokens are 32 bytes today; Apple says not to rely on a fixed length, so longer ones pass."""
_DEVICE_TOKEN = re.compile(rf"(?:[0-9a-fA-F]{{2}}){{{MIN_DEVICE_TOKEN_BYTES},{MAX_DEVICE_TOKEN_BYTES}}}")
_HEX = re.compile(r"[0-9a-fA-F]*")


@dataclass(frozen=True, slots=True)
class ApnsCredentials:
    """One app's APNs credentials (the ``apns`` object of VENDORS.json, with the key loaded)."""

    team_id: str
    key_id: str
    topic: str
    """The app's bundle id (``apns-topic``)."""
    key_file: Path
    signing_key: ec.EllipticCurvePrivateKey = field(repr=False, compare=False)
    base_url: str = PRODUCTION_URL
    ca_file: Path | None = None


def _text(obj: Mapping[str, Any], key: str, pattern: re.Pattern[str], what: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise config_error("apns", f"{key} is required (a string: {what})")
    if not pattern.fullmatch(value):
        raise config_error("apns", f"{key} must be {what}")
    return value


def _https_url(obj: Mapping[str, Any], key: str, default: str) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str):
        raise config_error("apns", f"{key} must be an https:// URL, got {value!r}")
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.netloc or parts.query or parts.fragment:
        raise config_error("apns", f"{key} must be an https:// URL without query, got {value!r}")
    return value.rstrip("/")


def _path(value: Any, key: str, base_dir: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise config_error("apns", f"{key} is required (a file path, relative to the VENDORS.json directory)")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if not path.is_file():
        raise config_error("apns", f"{key}: no such file {path}")
    return path


def load_credentials(obj: Mapping[str, Any], base_dir: Path) -> ApnsCredentials:
    """Parse and check the VENDORS.json ``apns`` object; relative paths are under ``base_dir``.

    Raises :class:`InvalidContent` (code ``bad_vendor_config``) naming the field at fault.
    """
    if not isinstance(obj, Mapping):
        raise config_error("apns", "the apns entry must be a JSON object")
    unknown = sorted(set(obj) - _KEYS)
    if unknown:
        raise config_error(
            "apns", f"unknown field(s) {', '.join(unknown)}; expected {', '.join(sorted(_KEYS))}"
        )
    team_id = _text(obj, "team_id", _TEN_ALNUM, "the 10-character Team ID")
    key_id = _text(obj, "key_id", _TEN_ALNUM, "the 10-character Key ID of the .p8 key")
    topic = _text(obj, "topic", _TOPIC, "the app's bundle id")
    key_file = _path(obj.get("key_file"), "key_file", base_dir)
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm, OSError):
        raise config_error(
            "apns", f"key_file {key_file} is not an unencrypted PEM (.p8) private key"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise config_error("apns", f"key_file {key_file} must hold an EC P-256 key (an APNs .p8 auth key)")
    return ApnsCredentials(
        team_id=team_id,
        key_id=key_id,
        topic=topic,
        key_file=key_file,
        signing_key=key,
        base_url=_https_url(obj, "base_url", PRODUCTION_URL),
        ca_file=None if obj.get("ca_file") is None else _path(obj["ca_file"], "ca_file", base_dir),
    )


def collapse_id(key: str) -> str:
    """``apns-collapse-id`` must be at most 64 bytes: longer keys become their SHA-256 (still
    stable, so equal keys still collapse)."""
    if len(key.encode()) <= MAX_COLLAPSE_ID_BYTES:
        return key
    return hashlib.sha256(key.encode()).hexdigest()


def validate_token(token: str) -> str:
    """A device token as registered → its normal form (lower-case hex), or 422 ``bad_vendor_token``.

    The token is the hex form of the ``deviceToken`` bytes an app gets from
    ``didRegisterForRemoteNotificationsWithDeviceToken``: an even number of hex digits, 32 bytes
    today, at most :data:`MAX_DEVICE_TOKEN_BYTES`. Surrounding whitespace is dropped. Pure.
    """
    token = token.strip()
    if not _DEVICE_TOKEN.fullmatch(token):
        raise token_error("apns", _device_token_problem(token))
    return token.lower()


def _device_token_problem(token: str) -> str:
    """What is wrong with a device token, in words (the message of both token errors)."""
    digits = len(token)
    if not _HEX.fullmatch(token):
        return "a device token is hex digits (0-9, a-f) only, with nothing around them"
    if digits % 2:
        return f"a device token is whole bytes of hex, an even number of digits; got {digits}"
    return (
        f"a device token is {MIN_DEVICE_TOKEN_BYTES} to {MAX_DEVICE_TOKEN_BYTES} bytes"
        f" ({2 * MIN_DEVICE_TOKEN_BYTES} to {2 * MAX_DEVICE_TOKEN_BYTES} hex digits); got {digits} digits"
    )


def expiration(message: PushMessage, now: float) -> int:
    """The ``apns-expiration`` value: 0 (deliver now or never) when no time is left, else the
    envelope's ``expires_at`` (or ``now + ttl``) in whole UNIX seconds."""
    if message.ttl <= 0:
        return 0
    expires_at = message.envelope.get("expires_at")
    if isinstance(expires_at, int | float) and not isinstance(expires_at, bool):
        return int(expires_at)
    return int(now) + message.ttl


def build_payload(message: PushMessage) -> dict[str, Any]:
    """The JSON payload (before the size check): ``aps`` plus custom keys."""
    env = message.envelope
    data = env.get("data") or {}
    if not isinstance(data, dict):
        raise InvalidContent("envelope data must be a JSON object", code="invalid_envelope")
    for key in data:
        if key == "aps" or key.startswith(RESERVED_PREFIX):
            raise InvalidContent(f"data key {key!r} is reserved for APNs/mqttpush", code="reserved_data_key")
    payload: dict[str, Any] = dict(data)
    aps: dict[str, Any] = {}
    if message.is_notification:
        alert = {k: env[k] for k in ("title", "body") if env.get(k) is not None}
        if alert:
            aps["alert"] = alert
        for key in ("sound", "badge", "category"):
            if env.get(key) is not None:
                aps[key] = env[key]
        if env.get("image") is not None:
            aps["mutable-content"] = 1
    else:
        aps["content-available"] = 1
        for key in ("title", "body"):
            if env.get(key) is not None:
                payload[RESERVED_PREFIX + key] = env[key]
    for key in ("image", "url"):
        if env.get(key) is not None:
            payload[RESERVED_PREFIX + key] = env[key]
    payload["aps"] = aps
    payload[ENVELOPE_ID_KEY] = env.get("id", message.msg_id)
    return payload


def build_request(
    message: PushMessage,
    token: str,
    creds: ApnsCredentials,
    auth: str,
    *,
    now: float | None = None,
) -> VendorRequest:
    """The APNs request for ``message`` to device ``token``, with provider token ``auth``.

    Pure (``now`` only matters when the envelope has no ``expires_at``). Raises
    :class:`PayloadTooLargeForVendor` above 4096 bytes, and :class:`InvalidContent` for a device
    token that is not hex (code ``bad_device_token``) or a reserved data key.
    """
    if not _DEVICE_TOKEN.fullmatch(token):
        raise InvalidContent(_device_token_problem(token), code="bad_device_token")
    body = json.dumps(build_payload(message), ensure_ascii=False, separators=(",", ":")).encode()
    if len(body) > MAX_PAYLOAD_BYTES:
        raise PayloadTooLargeForVendor(f"APNs payload is {len(body)} bytes, the limit is {MAX_PAYLOAD_BYTES}")
    background = not message.is_notification
    headers = {
        "authorization": f"bearer {auth}",
        "apns-topic": creds.topic,
        "apns-push-type": "background" if background else "alert",
        "apns-priority": "10" if message.priority == "high" and not background else "5",
        "apns-expiration": str(expiration(message, time.time() if now is None else now)),
        "content-type": "application/json",
    }
    if message.collapse_key:
        headers["apns-collapse-id"] = collapse_id(message.collapse_key)
    return VendorRequest("POST", f"{creds.base_url}/3/device/{token}", headers, body)


def error_reason(response: VendorResponse) -> str:
    """Apple's ``reason`` string, or ``HTTP <status>`` when the body has none."""
    reason = (json_object(response.body) or {}).get("reason")
    return reason if isinstance(reason, str) and reason else f"HTTP {response.status}"


def unregistered_since(response: VendorResponse) -> float | None:
    """For 410: when APNs last confirmed the token was invalid (UNIX seconds). Apple: push again only
    once the device registers a token later than that."""
    stamp = (json_object(response.body) or {}).get("timestamp")
    if response.status != 410 or not isinstance(stamp, int | float) or isinstance(stamp, bool):
        return None
    return stamp / 1000.0


def classify(response: VendorResponse) -> Outcome:
    """APNs answer → outcome, per Apple's status and reason table. Pure."""
    status = response.status
    if status == 200:
        return Delivered(response.headers.get("apns-id"))
    reason = error_reason(response)
    if status == 410:  # Unregistered / ExpiredToken: the token is no longer active for the topic
        return DropToken(reason)
    if status == 400 and reason in DROP_TOKEN_REASONS_400:
        return DropToken(reason)
    if status == 403:  # certificate or provider token: the app's credentials
        return Fail(reason, auth=True)
    if status == 429 or status >= 500:  # TooManyRequests, TooManyProviderTokenUpdates, 500, 503
        return Retry(reason, after=retry_after(response.headers))
    return Fail(reason)  # other 400s, 404 BadPath, 405, 413 PayloadTooLarge


class ProviderToken:
    """The provider authentication token (ES256 JWT), signed lazily and reused for 40 minutes."""

    def __init__(
        self,
        creds: ApnsCredentials,
        *,
        now: Callable[[], float] = time.time,
        refresh_after: float = TOKEN_REFRESH_AFTER,
        min_forced_interval: float = MIN_FORCED_REFRESH_INTERVAL,
    ) -> None:
        self._creds = creds
        self._now = now
        self._refresh_after = refresh_after
        self._min_forced_interval = min_forced_interval
        self._token: str | None = None
        self._issued_at = 0.0
        self._last_forced: float | None = None
        self.signed = 0
        """How many tokens were signed so far."""

    def __repr__(self) -> str:
        return f"ProviderToken(team_id={self._creds.team_id!r}, key_id={self._creds.key_id!r}, signed={self.signed})"

    def _sign(self, now: float) -> str:
        self._token = jwt.encode(
            {"iss": self._creds.team_id, "iat": int(now)},
            self._creds.signing_key,
            algorithm="ES256",
            headers={"kid": self._creds.key_id},
        )
        self._issued_at = now
        self.signed += 1
        return self._token

    def current(self) -> str:
        """The token to send now (a new one once the current is ``refresh_after`` seconds old)."""
        now = self._now()
        if self._token is None or now - self._issued_at >= self._refresh_after:
            return self._sign(now)
        return self._token

    def reject(self, token: str) -> bool:
        """APNs refused ``token``. Returns True when :meth:`current` now gives a different token:
        signed here, or already by a concurrent rejection of the same token."""
        if token != self._token:
            return True
        now = self._now()
        if self._last_forced is not None and now - self._last_forced < self._min_forced_interval:
            return False
        self._last_forced = now
        self._sign(now)
        return True


class ApnsChannel(HttpChannel):
    """Sends to APNs for one app: many concurrent streams on one HTTP/2 connection (at most
    ``max_concurrency`` in flight and the server's ``SETTINGS_MAX_CONCURRENT_STREAMS`` per
    connection), more connections (up to ``connections``) only when those are full."""

    name = "apns"

    def __init__(
        self,
        creds: ApnsCredentials,
        *,
        max_concurrency: int = 1000,
        connections: int = 1,
        timeout: float = 10.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.creds = creds
        self.provider_token = ProviderToken(creds, now=now)
        self._now = now
        verify = tls_verify(creds.ca_file)
        super().__init__(verify, max_concurrency=max_concurrency, timeout=timeout)
        self._pool = Http2Pool(
            creds.base_url, verify, connections=connections, max_streams=max_concurrency, timeout=timeout
        )

    async def close(self) -> None:
        await self._pool.aclose()
        await super().close()

    async def send(self, message: PushMessage, token: str) -> Outcome:
        """Build, send, classify; one resend with a fresh provider token after ExpiredProviderToken
        or InvalidProviderToken. Network errors become ``Retry("network")``."""
        async with self._limit:
            self.stats.sent += 1
            outcome = await self._send(message, token)
        count(self.stats, outcome)
        if isinstance(outcome, DropToken):
            log.info(
                "apns drop_token reason=%s token=%s msg=%s",
                outcome.reason,
                redact(token),
                message.msg_id,
                extra={"msg_id": message.msg_id},
            )
        elif isinstance(outcome, Fail):
            log.warning(
                "apns fail reason=%s auth=%s token=%s msg=%s",
                outcome.reason,
                outcome.auth,
                redact(token),
                message.msg_id,
                extra={"msg_id": message.msg_id},
            )
        return outcome

    async def _send(self, message: PushMessage, token: str) -> Outcome:
        refreshed = False
        while True:
            auth = self.provider_token.current()
            try:
                request = build_request(message, token, self.creds, auth, now=self._now())
            except PayloadTooLargeForVendor as exc:
                return Fail(f"payload_too_large: {exc}")
            except InvalidContent as exc:
                if exc.code == "bad_device_token":
                    return DropToken(f"BadDeviceToken: {exc.message}")
                return Fail(f"{exc.code}: {exc.message}")
            try:
                response = await self._pool.request(request)
            except Http2Error as exc:
                self._bump("network_errors")
                log.warning("apns network_error error=%s token=%s", exc, redact(token))
                return Retry("network")
            outcome = classify(response)
            if (
                not refreshed
                and isinstance(outcome, Fail)
                and outcome.reason in REFRESH_TOKEN_REASONS
                and self.provider_token.reject(auth)
            ):
                refreshed = True
                self._bump("auth_resends")
                log.info("apns provider_token_refresh reason=%s", outcome.reason)
                continue
            return outcome
