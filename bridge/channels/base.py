"""What every vendor channel shares: the message it forwards, the request it builds, and the
outcome it classifies a vendor's answer into. Pure: the vendor knowledge lives in each module's
``build_request`` and ``classify`` (no I/O); ``send`` is a thin async shell around them."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self
from urllib.parse import urlsplit

import httpx

from mqttpush.errors import InvalidContent
from mqttpush.retry_after import MAX_RETRY_AFTER as MAX_RETRY_AFTER
from mqttpush.retry_after import retry_after as retry_after

ENVELOPE_ID_KEY = "mqttpush_id"
"""Where APNs and FCM payloads carry the envelope id (the app deduplicates against the MQTT copy)."""
RESERVED_PREFIX = "mqttpush_"
"""Data keys with this prefix are ours in vendor payloads."""


@dataclass(frozen=True, slots=True)
class PushMessage:
    """One message for one device, as a vendor channel sees it."""

    msg_id: str
    envelope: dict[str, Any]
    """The device envelope (docs/protocol.md): id, app, type ("notification"|"message"), title, body, data,
    sent_at, expires_at, and optional image, url, sound, badge, category."""
    ttl: int
    """Seconds left until the message expires (>= 0)."""
    priority: str = "normal"
    """"high" or "normal"."""
    collapse_key: str | None = None

    @property
    def is_notification(self) -> bool:
        return self.envelope.get("type") == "notification"


@dataclass(frozen=True, slots=True)
class VendorRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class VendorResponse:
    status: int
    headers: dict[str, str]
    """Lower-case header names."""
    body: bytes


@dataclass(frozen=True, slots=True)
class Delivered:
    vendor_id: str | None = None
    """The vendor's id for the accepted message (apns-id, FCM name, ...), when it gives one."""


@dataclass(frozen=True, slots=True)
class Retry:
    reason: str
    after: float | None = None
    """Seconds to wait (Retry-After), or None to use the dispatcher's backoff."""


@dataclass(frozen=True, slots=True)
class DropToken:
    """The vendor says this token will never work again: remove it from the registry."""

    reason: str


@dataclass(frozen=True, slots=True)
class Fail:
    reason: str
    auth: bool = False
    """True when the app's credentials are the problem (an app-level alarm, not a per-message retry)."""


Outcome = Delivered | Retry | DropToken | Fail


@dataclass(frozen=True, slots=True)
class AccessGrant:
    """An OAuth2 access token a vendor granted (FCM, HMS), and when it expires (UNIX seconds)."""

    token: str = field(repr=False)
    expires_at: float


class PayloadTooLargeForVendor(ValueError):
    """The vendor's payload limit (4096 bytes for APNs and FCM) would be exceeded."""


@dataclass
class ChannelStats:
    sent: int = 0
    delivered: int = 0
    retried: int = 0
    dropped_tokens: int = 0
    failed: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class Channel(Protocol):
    """An open connection to one vendor for one app's credentials."""

    name: str

    async def send(self, message: PushMessage, token: str) -> Outcome:
        """Build, send, classify. Network errors become ``Retry``; never raises for vendor answers."""
        ...

    async def close(self) -> None: ...


# --- small things every channel needs --------------------------------------------------------


def tls_verify(ca_file: str | Path | None) -> ssl.SSLContext | bool:
    """httpx ``verify``: a private CA bundle (tests, private deployments) or the system trust store."""
    return ssl.create_default_context(cafile=str(ca_file)) if ca_file else True


def redact(token: str) -> str:
    """Enough of a device token to tell log lines apart, never the whole token."""
    return token[:8] + "…"


def count(stats: ChannelStats, outcome: Outcome) -> None:
    if isinstance(outcome, Delivered):
        stats.delivered += 1
    elif isinstance(outcome, Retry):
        stats.retried += 1
    elif isinstance(outcome, DropToken):
        stats.dropped_tokens += 1
    else:
        stats.failed += 1


class HttpChannel:
    """The shell every vendor channel shares: one HTTP/2 client (one TLS connection, many
    streams), at most ``max_concurrency`` requests in flight, and counters."""

    name = ""

    def __init__(
        self, verify: ssl.SSLContext | bool, *, max_concurrency: int = 100, timeout: float = 10.0
    ) -> None:
        self.stats = ChannelStats()
        self._limit = asyncio.Semaphore(max_concurrency)
        self._client = httpx.AsyncClient(http2=True, verify=verify, timeout=timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._client.aclose()

    def _bump(self, key: str) -> None:
        self.stats.extra[key] = self.stats.extra.get(key, 0) + 1


def json_object(data: bytes) -> dict[str, Any] | None:
    """A vendor's JSON answer as a dict, or None when it is not one (never raises)."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def config_error(vendor: str, message: str) -> InvalidContent:
    """A VENDORS.json entry is unusable: 422 ``bad_vendor_config``, naming the vendor (and, in
    ``message``, the key)."""
    return InvalidContent(f"VENDORS.json {vendor}: {message}", code="bad_vendor_config")


def token_error(vendor: str, message: str, code: str = "bad_vendor_token") -> InvalidContent:
    """A device token a vendor can never accept: 422 ``bad_vendor_token`` at registration."""
    return InvalidContent(f"{vendor}: {message}", code=code)


_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")


def opaque_token(vendor: str, token: str, what: str, max_chars: int) -> str:
    """Check a token the vendor documents no format for: ``token`` without surrounding whitespace,
    when it is 1 to ``max_chars`` visible ASCII characters (no spaces, controls or non-ASCII);
    else 422 ``bad_vendor_token`` naming ``what`` it should be."""
    token = token.strip()
    if not token:
        raise token_error(vendor, f"{what} is required")
    if len(token) > max_chars:
        raise token_error(vendor, f"{what} is at most {max_chars} characters, got {len(token)}")
    if not _VISIBLE_ASCII.fullmatch(token):
        raise token_error(vendor, f"{what} is visible ASCII characters only, without spaces")
    return token


class ConfigFields:
    """Reads one VENDORS.json entry; every error names the vendor and the key (422 ``bad_vendor_config``)."""

    def __init__(self, vendor: str, obj: Mapping[str, Any], base_dir: Path) -> None:
        if not isinstance(obj, Mapping):
            raise config_error(vendor, f"the {vendor} entry must be a JSON object")
        self.vendor, self.obj, self.base_dir = vendor, obj, base_dir

    def bad(self, message: str) -> InvalidContent:
        return config_error(self.vendor, message)

    def required_str(self, key: str) -> str:
        value = self.obj.get(key)
        if not isinstance(value, str) or not value.strip():
            raise self.bad(f"{key!r} is required (a non-empty string)")
        return value.strip()

    def optional_str(self, key: str) -> str | None:
        value = self.obj.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.bad(f"{key!r} must be a non-empty string when given")
        return value.strip()

    def https_url(self, key: str, default: str) -> str:
        value = self.optional_str(key) or default
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.netloc:
            raise self.bad(f"{key!r} must be an https:// URL, got {value!r}")
        return value.rstrip("/")

    def ca_file(self) -> str | None:
        value = self.optional_str("ca_file")
        if value is None:
            return None
        path = Path(value) if Path(value).is_absolute() else self.base_dir / value
        if not path.is_file():
            raise self.bad(f"'ca_file' {str(path)!r} is not a readable file")
        return str(path)
