"""VAPID (RFC 8292): an application server proves which key it holds when it pushes to an endpoint.

Both header forms senders use are read: ``Authorization: vapid t=<JWT>, k=<public key>``
(RFC 8292) and the older ``Authorization: WebPush <JWT>`` with ``Crypto-Key: p256ecdsa=<key>``.
The JWT is ES256, signed by the private half of ``k``; its ``aud`` is the origin of the push
endpoint and its ``exp`` lies in the future, at most 24 hours ahead. No I/O here: headers and
the time in, the sender's key (or a refusal) out.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from mqttpush.errors import AuthError, Forbidden, InvalidContent

MAX_EXPIRY = 24 * 3600
"""RFC 8292: ``exp`` no more than 24 hours after the request."""
CLOCK_SKEW = 60
"""Seconds a sender's clock may run ahead of ours before its ``exp`` counts as too far."""
_KEY_BYTES = 65  # an uncompressed P-256 point
_PARAM = re.compile(r"\s*([A-Za-z0-9_-]+)\s*=\s*\"?([^\",;]*)\"?\s*")


@dataclass(frozen=True, slots=True)
class VapidCredentials:
    token: str
    key: str
    """The sender's public key, base64url as it came."""


def b64url_decode(value: str) -> bytes:
    """base64url with or without padding; ValueError if it is not."""
    value = value.strip()
    if not re.fullmatch(r"[A-Za-z0-9_-]*={0,2}", value):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None


def public_key(value: str) -> ec.EllipticCurvePublicKey:
    """A VAPID public key: base64url of an uncompressed P-256 point (65 bytes)."""
    raw = b64url_decode(value)
    if len(raw) != _KEY_BYTES or raw[0] != 4:
        raise ValueError("not an uncompressed P-256 public key (65 bytes, base64url)")
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)


def check_key(value: str) -> str:
    """An endpoint's ``vapid_key`` as given by the device: 422 ``bad_vapid_key`` if it is no key."""
    try:
        public_key(value)
    except ValueError:
        raise InvalidContent(
            "vapid_key must be the application server's P-256 public key: 65 bytes, base64url",
            code="bad_vapid_key",
        ) from None
    return value.strip().rstrip("=")


def _params(text: str) -> dict[str, str]:
    out = {}
    for part in re.split(r"[,;]", text):
        m = _PARAM.fullmatch(part)
        if m is not None:
            out[m.group(1).lower()] = m.group(2)
    return out


def credentials(authorization: str | None, crypto_key: str | None) -> VapidCredentials | None:
    """The VAPID credentials of a push request; None when it carries none. 403 ``bad_vapid`` for
    an ``Authorization`` that is neither form, or lacks the token or the key."""
    if not authorization or not authorization.strip():
        return None
    scheme, _, rest = authorization.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "vapid":
        params = _params(rest)
        token, key = params.get("t"), params.get("k")
    elif scheme == "webpush":
        token = rest.strip()
        key = _params(crypto_key or "").get("p256ecdsa")
    else:
        raise Forbidden(
            "Authorization must be 'vapid t=<JWT>, k=<key>' or 'WebPush <JWT>' with Crypto-Key: p256ecdsa=<key>",
            code="bad_vapid",
        )
    if not token or not key:
        raise Forbidden("the VAPID token (t) or key (k / p256ecdsa) is missing", code="bad_vapid")
    return VapidCredentials(token, key)


def _same_key(a: str, b: str) -> bool:
    try:
        return b64url_decode(a) == b64url_decode(b)
    except ValueError:
        return False


def verify(
    creds: VapidCredentials | None, audience: str, now: float, restricted_to: str | None = None
) -> None:
    """Check a push request's VAPID credentials (RFC 8292).

    ``restricted_to``: the key the endpoint was created for; then credentials are required
    (401 ``vapid_required`` without) and must be for that key (403 ``vapid_key_mismatch``).
    Credentials are checked whenever present: a token that does not verify with its key, whose
    ``aud`` is not ``audience`` (the endpoint's origin), that has expired or expires more than
    24 hours ahead is 403 ``bad_vapid``."""
    if creds is None:
        if restricted_to is not None:
            raise AuthError(
                "this endpoint takes only pushes signed with its VAPID key (RFC 8292)", code="vapid_required"
            )
        return
    if restricted_to is not None and not _same_key(creds.key, restricted_to):
        raise Forbidden(
            "the VAPID key is not the one this endpoint was created for", code="vapid_key_mismatch"
        )
    try:
        key = public_key(creds.key)
    except ValueError as exc:
        raise Forbidden(f"VAPID key: {exc}", code="bad_vapid") from None
    try:
        claims = jwt.decode(
            creds.token,
            key,
            algorithms=["ES256"],
            options={"require": ["exp", "aud"], "verify_exp": False, "verify_aud": False},
        )
    except jwt.InvalidTokenError as exc:
        raise Forbidden(f"VAPID token: {exc}", code="bad_vapid") from None
    aud, exp = claims.get("aud"), claims.get("exp")
    if not isinstance(aud, str) or _origin(aud) != _origin(audience):
        raise Forbidden(f"VAPID token: aud must be {audience!r}, the endpoint's origin", code="bad_vapid")
    if not isinstance(exp, int | float) or isinstance(exp, bool) or exp <= now:
        raise Forbidden("VAPID token: expired", code="bad_vapid")
    if exp > now + MAX_EXPIRY + CLOCK_SKEW:
        raise Forbidden("VAPID token: exp is more than 24 hours ahead", code="bad_vapid")


def _origin(url: str) -> str:
    return url.strip().rstrip("/").lower()
