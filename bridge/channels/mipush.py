"""Xiaomi MiPush: one message to one registration id over the v3 server API.

Vendor knowledge lives in two pure functions: :func:`build_request` (a ``PushMessage`` and a regid →
``POST {base_url}/v3/message/regid``, form-encoded, ``Authorization: key=<app_secret>``) and
:func:`classify` (the answer → ``Delivered`` / ``Retry`` / ``DropToken`` / ``Fail``).
:class:`MiPushChannel` is the thin async shell that sends. The app secret is a static key: there is
no token to refresh.

Answers are JSON ``{"result": "ok"|"error", "code", "reason", "description", "trace_id", "data"}``.
Success is code 0 with ``data.id`` (and ``data.bad_regids``, a comma-separated list, when some
regids were refused); code 20301 "No valid targets!" means every regid was refused. Documented
server error codes used here: 1/10001/10002/10003/26003/65029 internal or busy, 10027 and 21303
calls too frequent, 10034 daily quota used up (all retried); 21301/21302 authentication failed,
22000 invalid app (a wrong app secret), 22006/22007/22022 invalid app id, key or package name,
10031/10036 app blacklisted or its operations forbidden (app alarms); 65009 message content too
long; 10008/10016/10017/21305 bad or missing parameters.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

from bridge.channels.base import (
    ConfigFields,
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
    count,
    json_object,
    opaque_token,
    redact,
    retry_after,
    tls_verify,
)

log = logging.getLogger(__name__)

NAME = "mipush"
DEFAULT_BASE_URL = "https://api.xmpush.xiaomi.com"
MAX_PAYLOAD_BYTES = 4096
"""MiPush's limit on the message content (``payload``, the envelope JSON)."""
MAX_TITLE_CHARS = 49
"""A notification title must be shorter than 50 characters (each CJK or Latin character counts 1)."""
MAX_DESCRIPTION_CHARS = 127
"""A notification description must be shorter than 128 characters."""

NO_VALID_TARGETS = 20301
_RETRY = {
    1: "vendor_internal_error",
    10001: "vendor_system_error",
    10002: "vendor_busy",
    10003: "vendor_remote_error",
    10027: "rate_limited",
    10034: "daily_quota_exceeded",
    21303: "rate_limited",
    26003: "vendor_internal_error",
    65029: "vendor_remote_error",
}
_AUTH = {
    10031: "app_blacklisted",
    10036: "app_operation_forbidden",
    21301: "authentication_failed",
    21302: "authentication_failed",
    22000: "invalid_app_secret",
    22006: "invalid_app_id",
    22007: "invalid_app_key",
    22022: "invalid_package_name",
}
_FAIL = {
    10008: "parameter_error",
    10016: "missing_parameter",
    10017: "invalid_parameter",
    21305: "missing_parameter",
    65009: "payload_too_large",
}


@dataclass(frozen=True, slots=True)
class MiPushCredentials:
    """The ``mipush`` object of VENDORS.json (docs/vendors.md)."""

    app_secret: str = field(repr=False)
    package_name: str
    base_url: str = DEFAULT_BASE_URL
    ca_file: str | None = None
    """PEM bundle to trust instead of the system store (None: system trust store)."""
    channel_id: str | None = None
    """Optional notification channel registered with Xiaomi (``extra.channel_id``); Xiaomi uses it
    to tell private messages from public ones and to apply their quotas."""


def load_credentials(obj: Mapping[str, Any], base_dir: Path) -> MiPushCredentials:
    """Read the ``mipush`` VENDORS.json object; relative ``ca_file`` paths are taken from ``base_dir``.

    Raises ``InvalidContent(code="bad_vendor_config")`` naming the offending key.
    """
    f = ConfigFields("mipush", obj, base_dir)
    return MiPushCredentials(
        app_secret=f.required_str("app_secret"),
        package_name=f.required_str("package_name"),
        base_url=f.https_url("base_url", DEFAULT_BASE_URL),
        ca_file=f.ca_file(),
        channel_id=f.optional_str("channel_id"),
    )


# ---------------------------------------------------------------------------------------------
# Pure: token validation, request building and answer classification

MAX_TOKEN_CHARS = 1024


def validate_token(token: str) -> str:
    """A regId as registered → its normal form, or 422 ``bad_vendor_token``.

    Xiaomi documents no regId format (they are base64-like and may hold ``+``, ``/`` and ``=``),
    so only what is certain is checked: visible ASCII, at most :data:`MAX_TOKEN_CHARS`. Surrounding
    whitespace is dropped. Pure.
    """
    return opaque_token(NAME, token, "a regId", MAX_TOKEN_CHARS)


def build_request(
    message: PushMessage, token: str, creds: MiPushCredentials, auth: str = ""
) -> VendorRequest:
    """The MiPush send request for ``message`` to one regid ``token``.

    ``auth`` is unused: MiPush authenticates with the static app secret from ``creds``. A
    notification envelope becomes a notification-bar message (``pass_through=0``; tapping opens the
    app, which receives ``payload``), a ``"message"`` envelope a pass-through message
    (``pass_through=1``). ``payload`` is the envelope JSON either way. Raises
    :class:`PayloadTooLargeForVendor` when the payload is over 4096 bytes.
    """
    envelope = message.envelope
    payload = json.dumps(envelope, ensure_ascii=False, separators=(",", ":"))
    size = len(payload.encode())
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadTooLargeForVendor(f"MiPush payload is {size} bytes, over {MAX_PAYLOAD_BYTES}")
    form: dict[str, str] = {
        "registration_id": token,
        "restricted_package_name": creds.package_name,
        "payload": payload,
        "time_to_live": str(max(message.ttl, 0) * 1000),
    }
    title, description = _texts(envelope)
    if message.is_notification and (title or description):
        form.update(
            {
                "pass_through": "0",
                # MiPush refuses an all-blank title or description: each stands in for the other.
                "title": (title or description)[:MAX_TITLE_CHARS],
                "description": (description or title)[:MAX_DESCRIPTION_CHARS],
                "notify_type": "-1",  # DEFAULT_ALL: default sound, vibration and light
                # Same notify_id replaces the shown notification: one per collapse key, else per message.
                "notify_id": str(notify_id(message.collapse_key or message.msg_id)),
                "extra.notify_effect": "1",  # tapping opens the app's launcher activity
                "extra.notify_foreground": "1",
            }
        )
        sound = envelope.get("sound")
        if isinstance(sound, str) and sound and sound != "default":
            form["extra.sound_uri"] = f"android.resource://{creds.package_name}/raw/{sound}"
    else:
        # Nothing to show (a data message, or a notification without any text): the app handles it.
        form["pass_through"] = "1"
    if creds.channel_id:
        form["extra.channel_id"] = creds.channel_id
    return VendorRequest(
        method="POST",
        url=f"{creds.base_url}/v3/message/regid",
        headers={
            "authorization": f"key={creds.app_secret}",
            "content-type": "application/x-www-form-urlencoded; charset=UTF-8",
        },
        body=urlencode(form).encode(),
    )


def notify_id(key: str) -> int:
    """A stable notify_id for ``key`` in MiPush's range 0..2**31-1."""
    return zlib.crc32(key.encode()) & 0x7FFFFFFF


def _texts(envelope: Mapping[str, Any]) -> tuple[str, str]:
    title = str(envelope.get("title") or "").strip()
    body = str(envelope.get("body") or "").strip()
    return title, body


def classify(response: VendorResponse) -> Outcome:
    """Map a MiPush answer for a single-regid send onto an outcome."""
    body = json_object(response.body)
    if body is None:
        return _classify_status(response)
    code = _int_code(body.get("code"))
    raw_data = body.get("data")
    data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
    if body.get("result") == "ok" and code in (0, None):
        if data.get("bad_regids") or data.get("bad_regIds"):
            return DropToken("bad_regid")  # one regid sent, so the refused one is ours
        message_id = data.get("id")
        return Delivered(vendor_id=str(message_id) if message_id else None)
    if code is None:
        return _classify_status(response)
    if code == NO_VALID_TARGETS:
        reason = str(body.get("reason") or "").lower()
        if "target" in reason or "regid" in reason or "registration" in reason:
            return DropToken("invalid_regid")
        return Fail("send_failed")
    if code in _RETRY:
        return Retry(_RETRY[code], after=retry_after(response.headers))
    if code in _AUTH:
        return Fail(_AUTH[code], auth=True)
    if code in _FAIL:
        return Fail(_FAIL[code])
    if response.status != 200:
        return _classify_status(response)
    return Fail(f"code_{code}")


def _int_code(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return None


def _classify_status(response: VendorResponse) -> Outcome:
    status = response.status
    if status in (401, 403):
        return Fail("unauthorized", auth=True)
    if status == 429 or status >= 500:
        return Retry(
            "rate_limited" if status in (429, 503) else f"http_{status}", after=retry_after(response.headers)
        )
    return Fail(f"http_{status}")


# ---------------------------------------------------------------------------------------------
# The channel: a thin async shell


class MiPushChannel(HttpChannel):
    """Sends to Xiaomi MiPush for one app's credentials over one shared HTTP/2 client."""

    name = NAME

    def __init__(
        self, creds: MiPushCredentials, *, max_concurrency: int = 100, timeout: float = 10.0
    ) -> None:
        self.creds = creds
        super().__init__(tls_verify(creds.ca_file), max_concurrency=max_concurrency, timeout=timeout)

    async def send(self, message: PushMessage, token: str) -> Outcome:
        """Build, send, classify. Network errors become ``Retry("network")``."""
        self.stats.sent += 1
        async with self._limit:
            outcome = await self._send(message, token)
        count(self.stats, outcome)
        _log_outcome(message, token, outcome)
        return outcome

    async def _send(self, message: PushMessage, token: str) -> Outcome:
        try:
            request = build_request(message, token, self.creds)
        except PayloadTooLargeForVendor as exc:
            log.info(
                "mipush payload too large msg_id=%s: %s",
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
            log.info(
                "mipush network error msg_id=%s error=%s",
                message.msg_id,
                type(exc).__name__,
                extra={"msg_id": message.msg_id},
            )
            return Retry("network")
        return classify(
            VendorResponse(
                status=response.status_code,
                headers={k.lower(): v for k, v in response.headers.items()},
                body=response.content,
            )
        )


def _log_outcome(message: PushMessage, token: str, outcome: Outcome) -> None:
    if isinstance(outcome, DropToken):
        log.info(
            "mipush drop token=%s msg_id=%s reason=%s",
            redact(token),
            message.msg_id,
            outcome.reason,
            extra={"msg_id": message.msg_id},
        )
    elif isinstance(outcome, Fail):
        level = logging.WARNING if outcome.auth else logging.INFO
        log.log(
            level, "mipush failed msg_id=%s reason=%s auth=%s", message.msg_id, outcome.reason, outcome.auth
        )
