"""Huawei Push Kit (HMS Core, Android): one message to one token over the v1 REST API.

Vendor knowledge lives in two pure functions: :func:`build_request` (a ``PushMessage`` and a push
token → the ``POST {base_url}/v1/{app_id}/messages:send`` request) and :func:`classify` (the
answer → ``Delivered`` / ``Retry`` / ``DropToken`` / ``Fail``). The access token comes from
Huawei's OAuth 2.0 client-credentials grant (:func:`build_token_request`,
:func:`classify_token_response`), cached by :class:`AccessTokenCache` until shortly before it
expires. :class:`HmsChannel` is the thin async shell that sends.

Result codes (Push Kit server API): 80000000 success; 80100000 some tokens failed (the failed ones
are listed in ``msg``); 80100001/80100003/80100004/80100013/80100016 malformed or refused content;
80200001 OAuth authentication error; 80200003 OAuth token expired; 80300002 the app may not push;
80300007 all tokens invalid; 80300008 message body too large; 80300010 token count out of range;
80300011 no right to send high-priority messages; 81000001 internal error. HTTP 503 is Huawei's
traffic control (rate limit); 429 and other 5xx are treated alike.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx

from bridge.channels.base import (
    AccessGrant,
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

NAME = "hms"
DEFAULT_BASE_URL = "https://push-api.cloud.huawei.com"
DEFAULT_TOKEN_URL = "https://oauth-login.cloud.huawei.com/oauth2/v3/token"
MAX_MESSAGE_BYTES = 4096
"""Push Kit's limit on the message content (the ``message`` object without its token list)."""
MAX_TTL = 15 * 24 * 3600
"""Push Kit caches a message for at most 15 days."""
TOKEN_REFRESH_MARGIN = 300.0
"""Fetch a new access token this many seconds before the cached one expires."""
TOKEN_REFUSAL_HOLD = 60.0
"""After Huawei refuses the client credentials, answer sends with that refusal this long instead of
asking again for every message."""

SUCCESS = "80000000"
PARTIAL_SUCCESS = "80100000"
OAUTH_ERROR = "80200001"
OAUTH_TOKEN_EXPIRED = "80200003"
NO_PUSH_PERMISSION = "80300002"
ALL_TOKENS_INVALID = "80300007"
BODY_TOO_LARGE = "80300008"
INTERNAL_ERROR = "81000001"

_CONTENT_ERRORS = {
    "80100001": "parameter_error",
    "80100002": "sync_message_needs_one_token",
    "80100003": "incorrect_message_structure",
    "80100004": "ttl_already_passed",
    "80100013": "invalid_collapse_key",
    "80100016": "sensitive_content",
    "80300010": "token_count_out_of_range",
    "80300011": "no_high_priority_permission",
}
# The failures a fresh access token can cure; the channel refetches once on these.
_REFRESHABLE = frozenset({"oauth_error", "oauth_token_expired", "unauthorized"})


@dataclass(frozen=True, slots=True)
class HmsCredentials:
    """The ``hms`` object of VENDORS.json (docs/vendors.md)."""

    app_id: str
    client_id: str
    client_secret: str = field(repr=False)
    base_url: str = DEFAULT_BASE_URL
    token_url: str = DEFAULT_TOKEN_URL
    ca_file: str | None = None
    """PEM bundle to trust instead of the system store (None: system trust store)."""


def load_credentials(obj: Mapping[str, Any], base_dir: Path) -> HmsCredentials:
    """Read the ``hms`` VENDORS.json object; relative ``ca_file`` paths are taken from ``base_dir``.

    ``client_id`` defaults to ``app_id`` (Huawei issues the app's OAuth client id equal to its app
    id). Raises ``InvalidContent(code="bad_vendor_config")`` naming the offending key.
    """
    f = ConfigFields("hms", obj, base_dir)
    app_id = f.required_str("app_id")
    client_id = f.optional_str("client_id") or app_id
    return HmsCredentials(
        app_id=app_id,
        client_id=client_id,
        client_secret=f.required_str("client_secret"),
        base_url=f.https_url("base_url", DEFAULT_BASE_URL),
        token_url=f.https_url("token_url", DEFAULT_TOKEN_URL),
        ca_file=f.ca_file(),
    )


# ---------------------------------------------------------------------------------------------
# Pure: token validation, request building and answer classification

MAX_TOKEN_CHARS = 1024


def validate_token(token: str) -> str:
    """A push token as registered → its normal form, or 422 ``bad_vendor_token``.

    Huawei says not to check a push token's length (its encoding changed in 2020 and may again),
    so only what is certain is checked: visible ASCII, at most :data:`MAX_TOKEN_CHARS`. Surrounding
    whitespace is dropped. Pure.
    """
    return opaque_token(NAME, token, "a push token", MAX_TOKEN_CHARS)


def build_request(message: PushMessage, token: str, creds: HmsCredentials, auth: str) -> VendorRequest:
    """The Push Kit send request for ``message`` to one ``token``; ``auth`` is the OAuth access token.

    A notification envelope becomes ``android.notification`` (tapping opens the app) and a
    ``"message"`` envelope a data message; both carry the envelope JSON in ``message.data`` so the
    app can deduplicate by id. Raises :class:`PayloadTooLargeForVendor` over 4096 bytes of content.
    """
    envelope = message.envelope
    android: dict[str, Any] = {
        "urgency": "HIGH" if message.priority == "high" else "NORMAL",
        # Push Kit has no "deliver now or never": 1 s is the shortest lifetime it takes.
        "ttl": f"{min(max(message.ttl, 1), MAX_TTL)}s",
    }
    if message.collapse_key:
        android["collapse_key"] = collapse_group(message.collapse_key)
    if message.is_notification:
        android["notification"] = _notification(envelope, message.collapse_key)
    content: dict[str, Any] = {
        "data": json.dumps(envelope, ensure_ascii=False, separators=(",", ":")),
        "android": android,
    }
    size = len(json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode())
    if size > MAX_MESSAGE_BYTES:
        raise PayloadTooLargeForVendor(f"HMS message content is {size} bytes, over {MAX_MESSAGE_BYTES}")
    body = {"validate_only": False, "message": {**content, "token": [token]}}
    return VendorRequest(
        method="POST",
        url=f"{creds.base_url}/v1/{creds.app_id}/messages:send",
        headers={
            "authorization": f"Bearer {auth}",
            "content-type": "application/json; charset=UTF-8",
        },
        body=json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(),
    )


def collapse_group(collapse_key: str) -> int:
    """Push Kit collapses offline messages by an integer group 1..100; map our key onto one, stably."""
    return zlib.crc32(collapse_key.encode()) % 100 + 1


def _notification(envelope: Mapping[str, Any], collapse_key: str | None) -> dict[str, Any]:
    notification: dict[str, Any] = {
        "title": str(envelope.get("title") or ""),
        "body": str(envelope.get("body") or ""),
        "click_action": {"type": 3},  # 3 = start the app
    }
    image = envelope.get("image")
    if isinstance(image, str) and image.startswith("https://"):
        notification["image"] = image  # Push Kit fetches only HTTPS images
    sound = envelope.get("sound")
    if isinstance(sound, str) and sound and sound != "default":
        notification["sound"] = f"/raw/{sound}"  # a resource in the app's res/raw
        notification["default_sound"] = False
    else:
        notification["default_sound"] = True
    if collapse_key:
        notification["tag"] = collapse_key  # a newer notification with the same tag replaces it
    return notification


def classify(response: VendorResponse) -> Outcome:
    """Map a Push Kit answer for a single-token send onto an outcome."""
    body = json_object(response.body)
    code = str(body.get("code", "")) if body is not None else ""
    request_id = body.get("requestId") if body is not None else None
    if code == PARTIAL_SUCCESS and _partial_failed(body):
        # With one token, a failure count or an illegal-token list can only mean ours.
        return DropToken("illegal_token")
    if code in (SUCCESS, PARTIAL_SUCCESS):
        return Delivered(vendor_id=str(request_id) if request_id else None)
    if code == ALL_TOKENS_INVALID:
        return DropToken("invalid_token")
    if code == OAUTH_TOKEN_EXPIRED:
        return Fail("oauth_token_expired", auth=True)
    if code == OAUTH_ERROR:
        return Fail("oauth_error", auth=True)
    if code == NO_PUSH_PERMISSION:
        return Fail("no_push_permission", auth=True)
    if code == BODY_TOO_LARGE:
        return Fail("payload_too_large")
    if code == INTERNAL_ERROR:
        return Retry("vendor_internal_error", after=retry_after(response.headers))
    if code in _CONTENT_ERRORS:
        return Fail(_CONTENT_ERRORS[code])
    status = response.status
    if status == 401:
        return Fail("unauthorized", auth=True)
    if status == 429 or status >= 500:
        return Retry(
            "rate_limited" if status in (429, 503) else f"http_{status}", after=retry_after(response.headers)
        )
    return Fail(f"http_{status}" + (f"_code_{code}" if code else ""))


def _partial_failed(body: Mapping[str, Any] | None) -> bool:
    """Read 80100000's ``msg``: a JSON string {"success", "failure", "illegal_tokens": [...]}."""
    msg = body.get("msg") if body is not None else None
    detail = json_object(msg.encode()) if isinstance(msg, str) else None
    if detail is None:
        return True  # no detail to read: the failure Huawei reports is our only token's
    failures = detail.get("failure")
    illegal = detail.get("illegal_tokens") or detail.get("illegalTokens")
    return bool(illegal) or (isinstance(failures, int) and failures > 0)


# ---------------------------------------------------------------------------------------------
# Pure: the OAuth 2.0 client-credentials grant


def build_token_request(creds: HmsCredentials) -> VendorRequest:
    """``POST token_url`` with ``grant_type=client_credentials``, the client id and secret."""
    form = {
        "grant_type": "client_credentials",
        "client_id": creds.client_id,
        "client_secret": creds.client_secret,
    }
    return VendorRequest(
        method="POST",
        url=creds.token_url,
        headers={"content-type": "application/x-www-form-urlencoded"},
        body=urlencode(form).encode(),
    )


def classify_token_response(response: VendorResponse, now: float) -> AccessGrant | Retry | Fail:
    """A new access token, or why there is none (``Retry`` when Huawei is busy, ``Fail(auth=True)``
    when it refuses the client id/secret)."""
    body = json_object(response.body) or {}
    token = body.get("access_token")
    expires_in = body.get("expires_in")
    if response.status == 200 and isinstance(token, str) and token and isinstance(expires_in, int | float):
        return AccessGrant(token=token, expires_at=now + float(expires_in))
    if response.status == 429 or response.status >= 500:
        return Retry("oauth_unavailable", after=retry_after(response.headers))
    detail = body.get("error_description") or body.get("error") or f"http_{response.status}"
    return Fail(f"oauth_rejected: {detail}", auth=True)


class AccessTokenCache:
    """The current access token, trusted until ``margin`` seconds before it expires."""

    def __init__(self, now: Callable[[], float] = time.time, margin: float = TOKEN_REFRESH_MARGIN) -> None:
        self._now = now
        self._margin = margin
        self._grant: AccessGrant | None = None

    def get(self) -> str | None:
        grant = self._grant
        if grant is None or self._now() >= grant.expires_at - self._margin:
            return None
        return grant.token

    def put(self, grant: AccessGrant) -> None:
        self._grant = grant

    def invalidate(self, token: str) -> None:
        """Forget ``token`` (the one a send was refused with), but not a newer one fetched since."""
        if self._grant is not None and self._grant.token == token:
            self._grant = None


# ---------------------------------------------------------------------------------------------
# The channel: a thin async shell


class HmsChannel(HttpChannel):
    """Sends to Huawei Push Kit for one app's credentials over one shared HTTP/2 client."""

    name = NAME

    def __init__(
        self,
        creds: HmsCredentials,
        *,
        max_concurrency: int = 100,
        timeout: float = 10.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.creds = creds
        self._now = now
        self._tokens = AccessTokenCache(now)
        self._refusal: tuple[Fail, float] | None = None
        self._token_lock = asyncio.Lock()
        super().__init__(tls_verify(creds.ca_file), max_concurrency=max_concurrency, timeout=timeout)

    async def send(self, message: PushMessage, token: str) -> Outcome:
        """Build, send, classify; refetch the access token once if Huawei refuses it."""
        self.stats.sent += 1
        async with self._limit:
            outcome = await self._send(message, token)
        count(self.stats, outcome)
        _log_outcome(message, token, outcome)
        return outcome

    async def _send(self, message: PushMessage, token: str) -> Outcome:
        refreshed = False
        while True:
            access = await self._access_token()
            if not isinstance(access, str):
                return access
            try:
                request = build_request(message, token, self.creds, access)
            except PayloadTooLargeForVendor as exc:
                log.info(
                    "hms payload too large msg_id=%s: %s",
                    message.msg_id,
                    exc,
                    extra={"msg_id": message.msg_id},
                )
                self._bump("too_large")
                return Fail("payload_too_large")
            response = await _exchange(self._client, request)
            if isinstance(response, Retry):
                return response
            outcome = classify(response)
            if isinstance(outcome, Fail) and outcome.reason in _REFRESHABLE and not refreshed:
                refreshed = True
                self._tokens.invalidate(access)
                self._bump("auth_refreshes")
                continue
            return outcome

    async def _access_token(self) -> str | Retry | Fail:
        token = self._tokens.get()
        if token is not None:
            return token
        async with self._token_lock:  # one fetch at a time; the others reuse its result
            token = self._tokens.get()
            if token is not None:
                return token
            if self._refusal is not None and self._now() < self._refusal[1]:
                return self._refusal[0]
            response = await _exchange(self._client, build_token_request(self.creds))
            if isinstance(response, Retry):
                return response
            result = classify_token_response(response, self._now())
            if isinstance(result, AccessGrant):
                self._tokens.put(result)
                self._refusal = None
                self._bump("token_fetches")
                return result.token
            if isinstance(result, Fail):
                self._refusal = (result, self._now() + TOKEN_REFUSAL_HOLD)
                log.warning("hms access token refused app_id=%s reason=%s", self.creds.app_id, result.reason)
            return result


async def _exchange(client: httpx.AsyncClient, request: VendorRequest) -> VendorResponse | Retry:
    try:
        response = await client.request(
            request.method, request.url, headers=request.headers, content=request.body
        )
    except httpx.TransportError as exc:
        log.info("hms network error url=%s error=%s", urlsplit(request.url).netloc, type(exc).__name__)
        return Retry("network")
    return VendorResponse(
        status=response.status_code,
        headers={k.lower(): v for k, v in response.headers.items()},
        body=response.content,
    )


def _log_outcome(message: PushMessage, token: str, outcome: Outcome) -> None:
    if isinstance(outcome, DropToken):
        log.info(
            "hms drop token=%s msg_id=%s reason=%s",
            redact(token),
            message.msg_id,
            outcome.reason,
            extra={"msg_id": message.msg_id},
        )
    elif isinstance(outcome, Fail):
        level = logging.WARNING if outcome.auth else logging.INFO
        log.log(
            level,
            "hms failed msg_id=%s reason=%s auth=%s",
            message.msg_id,
            outcome.reason,
            outcome.auth,
            extra={"msg_id": message.msg_id},
        )
