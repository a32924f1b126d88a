"""Firebase Cloud Messaging (FCM) HTTP v1 API with a Google service account.

What Google documents and this module relies on ("Send a message using FCM HTTP v1 API",
REST reference ``projects.messages`` / ``ErrorCode``, "Using OAuth 2.0 for Server to Server
Applications", "Manage FCM registration tokens"):

* ``POST {base_url}/v1/projects/{project_id}/messages:send`` with
  ``{"message": {"token", "notification", "data", "android", "apns", "webpush"}}`` and
  ``authorization: Bearer <OAuth2 access token>``; success is ``{"name": "projects/*/messages/<id>"}``.
* ``data`` values must be strings; keys ``from``, ``gcm`` and ``google*`` are reserved. The
  payload (keys and values) is at most 4096 bytes. ``android.ttl`` is a duration (``"30s"``) of at
  most 28 days; ``android.priority`` is ``HIGH`` or ``NORMAL``.
* Access token: an RS256 JWT ``{iss: client_email, scope, aud: token_uri, iat, exp: iat + 3600}``
  exchanged at the service account's ``token_uri`` (grant type ``jwt-bearer``) for
  ``{"access_token", "expires_in"}``; reused until shortly before it expires.
* Errors: ``{"error": {"code", "message", "status", "details": [{"@type":
  "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode"}, ...]}}``.
  The token is dead on 404 UNREGISTERED and on 400 INVALID_ARGUMENT about the registration token;
  429 QUOTA_EXCEEDED, 503 UNAVAILABLE and 500 INTERNAL are retried (honouring Retry-After; Google
  asks for at least one minute after QUOTA_EXCEEDED); a plain 401 UNAUTHENTICATED means a new
  access token is needed, while 401 THIRD_PARTY_AUTH_ERROR (the APNs/Web Push credentials stored
  in the Firebase project) and 403 PERMISSION_DENIED are credential failures.
* SENDER_ID_MISMATCH (403) says the token belongs to another sender. It is a ``Fail(auth=True)``,
  not a ``DropToken``: Google's token-management guide lists only UNREGISTERED and
  INVALID_ARGUMENT as signs of a dead token, and a wrongly configured service account makes
  *every* token mismatch — dropping them would wipe the app's registry irreversibly, while an auth
  alarm is what the operator needs.

Envelope → message: ``title``/``body``/``image`` → ``notification`` (omitted for data-only
messages, which stay data messages on every platform); ``sound``, ``category`` (click action) and
``badge`` → ``android.notification`` and ``apns.payload.aps``; ``data`` → ``data`` (non-strings as
JSON); the envelope id → ``data.mqttpush_id``; ``url`` → ``data.mqttpush_url`` (and the Web Push
link when https); a data-only message keeps title/body as ``mqttpush_title``/``mqttpush_body``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bridge.channels.apns import collapse_id, expiration
from bridge.channels.base import (
    ENVELOPE_ID_KEY,
    RESERVED_PREFIX,
    AccessGrant,
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
    opaque_token,
    redact,
    retry_after,
    tls_verify,
    token_error,
)
from mqttpush.errors import InvalidContent

log = logging.getLogger(__name__)

PRODUCTION_URL = "https://fcm.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
MAX_PAYLOAD_BYTES = 4096
MAX_TTL = 28 * 24 * 3600
ASSERTION_LIFETIME = 3600
QUOTA_BACKOFF = 60.0
"""Seconds to wait after QUOTA_EXCEEDED without Retry-After (Google: at least one minute)."""
REFRESH_MARGIN = 300.0
"""An access token is replaced this many seconds before it expires."""

_KEYS = frozenset({"service_account_file", "base_url", "ca_file"})
MAX_TOKEN_CHARS = 4096
_APNS_LOOKALIKE = re.compile(r"[0-9a-fA-F]{64}")
_PROJECT_ID = re.compile(r"[a-z0-9][a-z0-9.:\-]{0,99}")  # no "/", it goes into the URL path


@dataclass(frozen=True, slots=True)
class FcmCredentials:
    """One app's FCM credentials (the ``fcm`` object of VENDORS.json, service account loaded)."""

    project_id: str
    client_email: str
    token_uri: str
    """Where the OAuth2 access token is obtained (from the service account JSON)."""
    service_account_file: Path
    private_key: rsa.RSAPrivateKey = field(repr=False, compare=False)
    private_key_id: str | None = field(default=None, repr=False)
    base_url: str = PRODUCTION_URL
    ca_file: Path | None = None


def _https_url(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise config_error("fcm", f"{what} must be an https:// URL, got {value!r}")
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.netloc or parts.query or parts.fragment:
        raise config_error("fcm", f"{what} must be an https:// URL without query, got {value!r}")
    return value.rstrip("/")


def _path(value: Any, key: str, base_dir: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise config_error("fcm", f"{key} is required (a file path, relative to the VENDORS.json directory)")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if not path.is_file():
        raise config_error("fcm", f"{key}: no such file {path}")
    return path


def load_credentials(obj: Mapping[str, Any], base_dir: Path) -> FcmCredentials:
    """Parse the VENDORS.json ``fcm`` object and read its service account JSON (project_id,
    client_email, private_key, token_uri); relative paths are under ``base_dir``.

    Raises :class:`InvalidContent` (code ``bad_vendor_config``) naming the field at fault; the key
    itself never appears in a message.
    """
    if not isinstance(obj, Mapping):
        raise config_error("fcm", "the fcm entry must be a JSON object")
    unknown = sorted(set(obj) - _KEYS)
    if unknown:
        raise config_error(
            "fcm", f"unknown field(s) {', '.join(unknown)}; expected {', '.join(sorted(_KEYS))}"
        )
    sa_file = _path(obj.get("service_account_file"), "service_account_file", base_dir)
    try:
        account = json.loads(sa_file.read_bytes())
    except (OSError, ValueError, RecursionError):
        raise config_error("fcm", f"service_account_file {sa_file} is not JSON") from None
    if not isinstance(account, dict):
        raise config_error("fcm", f"service_account_file {sa_file} must hold a JSON object")
    if account.get("type", "service_account") != "service_account":
        raise config_error(
            "fcm", f"service_account_file {sa_file} is a {account.get('type')!r}, not a service_account"
        )
    fields: dict[str, str] = {}
    for key in ("project_id", "client_email", "private_key", "token_uri"):
        value = account.get(key)
        if not isinstance(value, str) or not value:
            raise config_error("fcm", f"service_account_file {sa_file} lacks {key}")
        fields[key] = value
    if not _PROJECT_ID.fullmatch(fields["project_id"]):
        raise config_error(
            "fcm", f"service_account_file {sa_file}: project_id {fields['project_id']!r} is not a project id"
        )
    if "@" not in fields["client_email"]:
        raise config_error("fcm", f"service_account_file {sa_file}: client_email is not an email address")
    try:
        private_key = serialization.load_pem_private_key(fields["private_key"].encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise config_error(
            "fcm", f"service_account_file {sa_file}: private_key is not a PEM private key"
        ) from None
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise config_error("fcm", f"service_account_file {sa_file}: private_key must be an RSA key")
    key_id = account.get("private_key_id")
    ca_file = obj.get("ca_file")
    return FcmCredentials(
        project_id=fields["project_id"],
        client_email=fields["client_email"],
        token_uri=_https_url(fields["token_uri"], "service account token_uri"),
        service_account_file=sa_file,
        private_key=private_key,
        private_key_id=key_id if isinstance(key_id, str) and key_id else None,
        base_url=_https_url(obj.get("base_url", PRODUCTION_URL), "base_url"),
        ca_file=None if ca_file is None else _path(ca_file, "ca_file", base_dir),
    )


def validate_token(token: str) -> str:
    """A registration token as registered → its normal form, or 422 ``bad_vendor_token``.

    Google documents no format or length (tokens are opaque and change form over time), so only
    what is certain is checked: visible ASCII, at most :data:`MAX_TOKEN_CHARS`, and not an APNs
    device token (64 hex digits), the usual mix-up of iOS apps using FCM. Surrounding
    whitespace is dropped. Pure.
    """
    token = opaque_token("fcm", token, "a registration token", MAX_TOKEN_CHARS)
    if _APNS_LOOKALIKE.fullmatch(token):
        raise token_error(
            "fcm",
            "this is an APNs device token (64 hex digits); register it with vendor apns, or send"
            " the FCM registration token (FirebaseMessaging token) instead",
        )
    return token


def _as_string(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _data(message: PushMessage) -> dict[str, str]:
    env = message.envelope
    data = env.get("data") or {}
    if not isinstance(data, dict):
        raise InvalidContent("envelope data must be a JSON object", code="invalid_envelope")
    out: dict[str, str] = {}
    for key, value in data.items():
        if key in ("from", "gcm") or key.startswith(("google", RESERVED_PREFIX)):
            raise InvalidContent(f"data key {key!r} is reserved for FCM/mqttpush", code="reserved_data_key")
        out[key] = _as_string(value)
    if not message.is_notification:
        for key in ("title", "body"):
            if env.get(key) is not None:
                out[RESERVED_PREFIX + key] = _as_string(env[key])
    for key in ("image", "url"):
        if env.get(key) is not None:
            out[RESERVED_PREFIX + key] = _as_string(env[key])
    out[ENVELOPE_ID_KEY] = _as_string(env.get("id", message.msg_id))
    return out


def build_message(message: PushMessage, token: str, *, now: float) -> dict[str, Any]:
    """The v1 ``message`` object (before the size check)."""
    if not token or not token.isprintable() or token != token.strip():
        raise InvalidContent(
            "an FCM registration token is a non-empty printable string", code="bad_device_token"
        )
    env = message.envelope
    high = message.priority == "high"
    ttl = min(max(message.ttl, 0), MAX_TTL)
    out: dict[str, Any] = {"token": token}
    android: dict[str, Any] = {"priority": "HIGH" if high else "NORMAL", "ttl": f"{ttl}s"}
    aps: dict[str, Any] = {}
    if message.collapse_key:
        android["collapse_key"] = message.collapse_key
    if message.is_notification:
        notification = {k: _as_string(env[k]) for k in ("title", "body", "image") if env.get(k) is not None}
        if notification:
            out["notification"] = notification
        android_notification: dict[str, Any] = {}
        if env.get("sound") is not None:
            android_notification["sound"] = _as_string(env["sound"])
            aps["sound"] = env["sound"]
        if env.get("category") is not None:
            android_notification["click_action"] = _as_string(env["category"])
            aps["category"] = env["category"]
        if isinstance(env.get("badge"), int) and not isinstance(env.get("badge"), bool):
            android_notification["notification_count"] = env["badge"]
            aps["badge"] = env["badge"]
        if env.get("image") is not None:
            aps["mutable-content"] = 1
        if android_notification:
            android["notification"] = android_notification
    else:
        aps["content-available"] = 1
    out["data"] = _data(message)
    out["android"] = android
    background = not message.is_notification
    apns_headers = {
        "apns-priority": "10" if high and not background else "5",
        "apns-push-type": "background" if background else "alert",
        "apns-expiration": str(expiration(message, now)),
    }
    if message.collapse_key:
        apns_headers["apns-collapse-id"] = collapse_id(message.collapse_key)
    out["apns"] = {"headers": apns_headers, "payload": {"aps": aps}}
    webpush: dict[str, Any] = {"headers": {"TTL": str(ttl), "Urgency": "high" if high else "normal"}}
    url = env.get("url")
    if message.is_notification and isinstance(url, str) and url.startswith("https://"):
        webpush["fcm_options"] = {"link": url}
    out["webpush"] = webpush
    return out


def payload_size(fcm_message: Mapping[str, Any]) -> int:
    """Bytes of what the device receives (notification + data, keys and values), as FCM counts
    against its 4096-byte limit."""
    visible = {k: fcm_message[k] for k in ("notification", "data") if k in fcm_message}
    return len(json.dumps(visible, ensure_ascii=False, separators=(",", ":")).encode())


def build_request(
    message: PushMessage,
    token: str,
    creds: FcmCredentials,
    auth: str,
    *,
    now: float | None = None,
) -> VendorRequest:
    """The ``messages:send`` request for ``message`` to registration ``token`` with OAuth2 access
    token ``auth``. Pure (``now`` only matters when the envelope has no ``expires_at``).

    Raises :class:`PayloadTooLargeForVendor` above 4096 bytes, and :class:`InvalidContent` for an
    unusable token (code ``bad_device_token``) or a reserved data key.
    """
    body = build_message(message, token, now=time.time() if now is None else now)
    size = payload_size(body)
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadTooLargeForVendor(f"FCM payload is {size} bytes, the limit is {MAX_PAYLOAD_BYTES}")
    return VendorRequest(
        "POST",
        f"{creds.base_url}/v1/projects/{creds.project_id}/messages:send",
        {"authorization": f"Bearer {auth}", "content-type": "application/json; charset=UTF-8"},
        json.dumps({"message": body}, ensure_ascii=False, separators=(",", ":")).encode(),
    )


@dataclass(frozen=True, slots=True)
class FcmError:
    """The parts of Google's error JSON that decide an outcome."""

    status: str
    """``error.status`` (INVALID_ARGUMENT, NOT_FOUND, UNAUTHENTICATED, ...), or ``HTTP <code>``."""
    error_code: str | None
    """``errorCode`` of the FcmError detail (UNREGISTERED, QUOTA_EXCEEDED, ...), when present."""
    message: str
    fields: tuple[str, ...] = ()
    """``fieldViolations[].field`` of a google.rpc.BadRequest detail."""

    @property
    def code(self) -> str:
        return self.error_code or self.status

    @property
    def reason(self) -> str:
        return f"{self.code}: {self.message}" if self.message else self.code


def parse_error(response: VendorResponse) -> FcmError:
    """Read ``{"error": {"status", "message", "details"}}``; tolerant of bodies that are not it."""
    error = (json_object(response.body) or {}).get("error")
    error = error if isinstance(error, dict) else {}
    status = error.get("status")
    message = error.get("message")
    error_code: str | None = None
    fields: list[str] = []
    details = error.get("details")
    for detail in details if isinstance(details, list) else []:
        if not isinstance(detail, dict):
            continue
        if detail.get("@type") == FCM_ERROR_TYPE and isinstance(detail.get("errorCode"), str):
            error_code = error_code or detail["errorCode"]
        elif detail.get("@type") == BAD_REQUEST_TYPE and isinstance(detail.get("fieldViolations"), list):
            fields += [
                v["field"]
                for v in detail["fieldViolations"]
                if isinstance(v, dict) and isinstance(v.get("field"), str)
            ]
    return FcmError(
        status=status if isinstance(status, str) and status else f"HTTP {response.status}",
        error_code=error_code,
        message=message if isinstance(message, str) else "",
        fields=tuple(fields),
    )


def _about_token(error: FcmError) -> bool:
    return "registration token" in error.message.lower() or "message.token" in error.fields


def needs_new_access_token(response: VendorResponse) -> bool:
    """A 401 about our OAuth2 access token (not THIRD_PARTY_AUTH_ERROR, which is about the APNs or
    Web Push credentials kept in the Firebase project and is not cured by a new access token)."""
    return response.status == 401 and parse_error(response).error_code in (None, "UNSPECIFIED_ERROR")


def classify(response: VendorResponse) -> Outcome:
    """FCM answer → outcome, per the v1 ErrorCode reference. Pure."""
    status = response.status
    if 200 <= status < 300:
        name = (json_object(response.body) or {}).get("name")
        return Delivered(name if isinstance(name, str) else None)
    error = parse_error(response)
    code = error.code
    if code == "UNREGISTERED":
        return DropToken(error.reason)
    if code == "INVALID_ARGUMENT" and _about_token(error):
        return DropToken(error.reason)
    if code in ("QUOTA_EXCEEDED", "RESOURCE_EXHAUSTED") or status == 429:
        after = retry_after(response.headers)
        return Retry(error.reason, after=QUOTA_BACKOFF if after is None else after)
    if code in ("UNAVAILABLE", "INTERNAL") or status >= 500:
        return Retry(error.reason, after=retry_after(response.headers))
    if status in (401, 403) or code in ("SENDER_ID_MISMATCH", "THIRD_PARTY_AUTH_ERROR", "UNAUTHENTICATED"):
        return Fail(error.reason, auth=True)
    return Fail(error.reason)


def build_token_request(creds: FcmCredentials, now: float) -> VendorRequest:
    """The OAuth2 JWT-bearer grant request to ``creds.token_uri``. Pure."""
    iat = int(now)
    headers = {"kid": creds.private_key_id} if creds.private_key_id else None
    assertion = jwt.encode(
        {
            "iss": creds.client_email,
            "scope": SCOPE,
            "aud": creds.token_uri,
            "iat": iat,
            "exp": iat + ASSERTION_LIFETIME,
        },
        creds.private_key,
        algorithm="RS256",
        headers=headers,
    )
    return VendorRequest(
        "POST",
        creds.token_uri,
        {"content-type": "application/x-www-form-urlencoded"},
        urlencode({"grant_type": JWT_BEARER, "assertion": assertion}).encode(),
    )


def classify_token_response(response: VendorResponse, now: float) -> AccessGrant | Retry | Fail:
    """Token endpoint answer → a grant, ``Retry`` (429/5xx) or ``Fail(auth=True)``. Pure."""
    body = json_object(response.body) or {}
    if response.status == 200:
        token = body.get("access_token")
        expires_in = body.get("expires_in")
        if isinstance(token, str) and token and isinstance(expires_in, int | float) and expires_in > 0:
            return AccessGrant(token, now + float(expires_in))
        return Fail("oauth: token response without access_token/expires_in", auth=True)
    error = body.get("error")
    description = body.get("error_description")
    reason = f"oauth {error if isinstance(error, str) else 'HTTP ' + str(response.status)}"
    if isinstance(description, str) and description:
        reason += f": {description}"
    if response.status == 429 or response.status >= 500:
        return Retry(reason, after=retry_after(response.headers))
    return Fail(reason, auth=True)


class AccessTokenSource:
    """The OAuth2 access token for FCM: fetched once, shared by concurrent sends, replaced shortly
    before it expires or when FCM refuses it."""

    def __init__(
        self,
        creds: FcmCredentials,
        *,
        now: Callable[[], float] = time.time,
        margin: float = REFRESH_MARGIN,
    ) -> None:
        self._creds = creds
        self._now = now
        self._margin = margin
        self._grant: AccessGrant | None = None
        self._lifetime = 0.0
        self._lock = asyncio.Lock()
        self.fetched = 0
        """How many access tokens were obtained so far."""

    def __repr__(self) -> str:
        return f"AccessTokenSource(client_email={self._creds.client_email!r}, fetched={self.fetched})"

    def cached(self) -> str | None:
        """The current token, or None when there is none or it is about to expire."""
        grant = self._grant
        if grant is None:
            return None
        if self._now() >= grant.expires_at - min(self._margin, self._lifetime / 2):
            return None
        return grant.token

    async def get(self, post: Callable[[VendorRequest], Awaitable[VendorResponse]]) -> str | Retry | Fail:
        """A valid token, fetching one through ``post`` when needed (one fetch for all waiters).
        Network errors from ``post`` propagate."""
        token = self.cached()
        if token is not None:
            return token
        async with self._lock:
            token = self.cached()
            if token is not None:
                return token
            now = self._now()
            result = classify_token_response(await post(build_token_request(self._creds, now)), now)
            if isinstance(result, AccessGrant):
                self._grant = result
                self._lifetime = result.expires_at - now
                self.fetched += 1
                return result.token
            return result

    def invalidate(self, token: str) -> None:
        """FCM refused ``token``: forget it, unless a concurrent send already replaced it."""
        if self._grant is not None and self._grant.token == token:
            self._grant = None


class FcmChannel(HttpChannel):
    """Sends to FCM for one Firebase project over one multiplexed HTTP/2 connection."""

    name = "fcm"

    def __init__(
        self,
        creds: FcmCredentials,
        *,
        max_concurrency: int = 100,
        timeout: float = 10.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.creds = creds
        self.access_tokens = AccessTokenSource(creds, now=now)
        self._now = now
        super().__init__(tls_verify(creds.ca_file), max_concurrency=max_concurrency, timeout=timeout)

    async def _post(self, request: VendorRequest) -> VendorResponse:
        response = await self._client.request(
            request.method, request.url, headers=request.headers, content=request.body
        )
        return VendorResponse(
            response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content
        )

    async def send(self, message: PushMessage, token: str) -> Outcome:
        """Build, send, classify; one resend with a new access token after a 401 UNAUTHENTICATED.
        Network errors (to FCM or the token endpoint) become ``Retry("network")``."""
        async with self._limit:
            self.stats.sent += 1
            try:
                outcome = await self._send(message, token)
            except httpx.TransportError as exc:
                self._bump("network_errors")
                log.warning("fcm network_error error=%s token=%s", type(exc).__name__, redact(token))
                outcome = Retry("network")
        count(self.stats, outcome)
        if isinstance(outcome, DropToken):
            log.info(
                "fcm drop_token reason=%s token=%s msg=%s",
                outcome.reason,
                redact(token),
                message.msg_id,
                extra={"msg_id": message.msg_id},
            )
        elif isinstance(outcome, Fail):
            log.warning(
                "fcm fail reason=%s auth=%s token=%s msg=%s",
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
            auth = await self.access_tokens.get(self._post)
            if not isinstance(auth, str):
                return auth
            try:
                request = build_request(message, token, self.creds, auth, now=self._now())
            except PayloadTooLargeForVendor as exc:
                return Fail(f"payload_too_large: {exc}")
            except InvalidContent as exc:
                if exc.code == "bad_device_token":
                    return DropToken(f"INVALID_ARGUMENT: {exc.message}")
                return Fail(f"{exc.code}: {exc.message}")
            response = await self._post(request)
            if not refreshed and needs_new_access_token(response):
                refreshed = True
                self.access_tokens.invalidate(auth)
                self._bump("auth_resends")
                log.info("fcm access_token_refresh status=%s", response.status)
                continue
            return classify(response)
