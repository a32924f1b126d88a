"""Request signing (docs/api.md), shared by the server and every client. Pure: no I/O.

``S = METHOD \\n PATH_WITH_QUERY \\n TIMESTAMP \\n NONCE \\n hex(SHA-256(body))`` and the
signature is lowercase hex HMAC-SHA256(app_secret, S).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from mqttpush.errors import AuthError

KEY_HEADER = "X-MQTTPush-Key"
TIMESTAMP_HEADER = "X-MQTTPush-Timestamp"
NONCE_HEADER = "X-MQTTPush-Nonce"
SIGNATURE_HEADER = "X-MQTTPush-Signature"
WINDOW_SECONDS = 300
NONCE_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
# Unix seconds in ASCII digits; 20 of them keep the arithmetic in range (int("1" + "0" * 400)
# minus a float overflows) and int() would also take "+1", " 1", "1_0" and non-ASCII digits.
TIMESTAMP_RE = re.compile(r"[0-9]{1,20}")


def string_to_sign(method: str, path_with_query: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    return string_to_sign_digest(method, path_with_query, timestamp, nonce, hashlib.sha256(body).hexdigest())


def string_to_sign_digest(
    method: str, path_with_query: str, timestamp: str, nonce: str, body_sha256: str
) -> bytes:
    """``S`` with the body already hashed (lowercase hex): for bodies streamed rather than held."""
    return "\n".join([method.upper(), path_with_query, timestamp, nonce, body_sha256]).encode()


def sign(secret: str, method: str, path_with_query: str, timestamp: str, nonce: str, body: bytes) -> str:
    return sign_digest(secret, method, path_with_query, timestamp, nonce, hashlib.sha256(body).hexdigest())


def sign_digest(
    secret: str, method: str, path_with_query: str, timestamp: str, nonce: str, body_sha256: str
) -> str:
    message = string_to_sign_digest(method, path_with_query, timestamp, nonce, body_sha256)
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_headers(
    app_key: str, secret: str, method: str, path_with_query: str, body: bytes, now: float
) -> dict[str, str]:
    """The four headers of a signed request made at ``now``."""
    return signed_headers_digest(
        app_key, secret, method, path_with_query, hashlib.sha256(body).hexdigest(), now
    )


def signed_headers_digest(
    app_key: str, secret: str, method: str, path_with_query: str, body_sha256: str, now: float
) -> dict[str, str]:
    timestamp = str(int(now))
    nonce = secrets.token_urlsafe(18)
    return {
        KEY_HEADER: app_key,
        TIMESTAMP_HEADER: timestamp,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: sign_digest(secret, method, path_with_query, timestamp, nonce, body_sha256),
    }


def check_headers(timestamp: str | None, nonce: str | None, signature: str | None, now: float) -> None:
    """The checks that need no body: headers present, timestamp fresh, nonce well-formed."""
    if not timestamp or not nonce or not signature:
        raise AuthError(
            f"signed requests need {TIMESTAMP_HEADER}, {NONCE_HEADER} and {SIGNATURE_HEADER}",
            code="missing_signature",
        )
    if TIMESTAMP_RE.fullmatch(timestamp) is None:
        raise AuthError(f"{TIMESTAMP_HEADER} must be unix seconds", code="stale_timestamp")
    ts = int(timestamp)
    if abs(now - ts) > WINDOW_SECONDS:
        raise AuthError(
            f"timestamp is {int(now - ts)}s away from server time (allowed ±{WINDOW_SECONDS}s)",
            code="stale_timestamp",
        )
    if NONCE_RE.fullmatch(nonce) is None:
        raise AuthError(f"{NONCE_HEADER} must be 16-64 URL-safe characters", code="bad_nonce")


def check_signature(
    secret: str,
    method: str,
    path_with_query: str,
    timestamp: str,
    nonce: str,
    signature: str,
    body_sha256: str,
) -> None:
    expected = sign_digest(secret, method, path_with_query, timestamp, nonce, body_sha256)
    if not hmac.compare_digest(expected.encode(), signature.lower().encode("utf-8", "replace")):
        raise AuthError("signature does not match", code="bad_signature")


def check_request(
    secret: str,
    method: str,
    path_with_query: str,
    timestamp: str | None,
    nonce: str | None,
    signature: str | None,
    body: bytes,
    now: float,
) -> None:
    """Raise :class:`AuthError` unless the request is fresh and correctly signed (nonce reuse is checked by the caller)."""
    check_headers(timestamp, nonce, signature, now)
    assert timestamp is not None and nonce is not None and signature is not None
    check_signature(
        secret, method, path_with_query, timestamp, nonce, signature, hashlib.sha256(body).hexdigest()
    )
