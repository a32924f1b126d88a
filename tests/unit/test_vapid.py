"""VAPID checks (RFC 8292) and the ``up`` envelope, without sockets: headers and time in, a decision out."""

from __future__ import annotations

import base64
import json

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given
from hypothesis import strategies as st

from mqttpush import envelope
from mqttpush.api import vapid
from mqttpush.errors import AuthError, Forbidden, InvalidContent

NOW = 1_800_000_000
AUD = "https://push.example.com"


def _key() -> tuple[ec.EllipticCurvePrivateKey, str]:
    private = ec.generate_private_key(ec.SECP256R1())
    raw = private.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return private, base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _token(private: ec.EllipticCurvePrivateKey, **claims: object) -> str:
    return jwt.encode(
        {"aud": AUD, "exp": NOW + 3600, "sub": "mailto:a@example.com"} | claims, private, "ES256"
    )


def test_both_header_forms_give_the_same_credentials() -> None:
    private, key = _key()
    token = _token(private)
    new = vapid.credentials(f"vapid t={token}, k={key}", None)
    old = vapid.credentials(f"WebPush {token}", f"dh=BXYZ;p256ecdsa={key}")
    assert new == old == vapid.VapidCredentials(token, key)
    assert vapid.credentials(None, None) is None and vapid.credentials("  ", None) is None
    vapid.verify(new, AUD + "/", NOW, restricted_to=key + "=")  # padding and a trailing / do not matter


@pytest.mark.parametrize(
    ("claims", "audience"),
    [
        ({"exp": NOW}, AUD),  # expired (exp must lie in the future)
        ({"exp": NOW + 24 * 3600 + 61}, AUD),  # more than 24 h (and the skew) ahead
        ({"aud": "https://other.example"}, AUD),
        ({"aud": AUD}, "http://push.example.com"),  # the scheme is part of the origin
    ],
)
def test_a_token_outside_its_bounds_is_bad_vapid(claims: dict[str, object], audience: str) -> None:
    private, key = _key()
    with pytest.raises(Forbidden) as refused:
        vapid.verify(vapid.VapidCredentials(_token(private, **claims), key), audience, NOW)
    assert refused.value.code == "bad_vapid"


def test_a_restricted_endpoint_wants_its_own_key() -> None:
    _, key = _key()
    other_private, other_key = _key()
    with pytest.raises(AuthError) as absent:
        vapid.verify(None, AUD, NOW, restricted_to=key)
    assert (absent.value.status, absent.value.code) == (401, "vapid_required")
    with pytest.raises(Forbidden) as mismatch:
        vapid.verify(vapid.VapidCredentials(_token(other_private), other_key), AUD, NOW, restricted_to=key)
    assert mismatch.value.code == "vapid_key_mismatch"
    with pytest.raises(Forbidden) as forged:  # claims the right key, signed by another
        vapid.verify(vapid.VapidCredentials(_token(other_private), key), AUD, NOW, restricted_to=key)
    assert forged.value.code == "bad_vapid"
    vapid.verify(None, AUD, NOW)  # an open endpoint takes pushes without VAPID


@given(st.text(max_size=200), st.one_of(st.none(), st.text(max_size=200)))
def test_any_authorization_header_is_read_or_refused_with_a_code(auth: str, crypto_key: str | None) -> None:
    try:
        creds = vapid.credentials(auth, crypto_key)
        vapid.verify(creds, AUD, NOW)
    except (Forbidden, AuthError) as exc:
        assert exc.code == "bad_vapid"


@given(st.text(max_size=120))
def test_any_vapid_key_is_taken_or_refused_as_bad_vapid_key(value: str) -> None:
    try:
        vapid.check_key(value)
    except InvalidContent as exc:
        assert exc.code == "bad_vapid_key"


@given(st.binary(max_size=4096), st.one_of(st.none(), st.just("aes128gcm")))
def test_the_up_envelope_carries_the_bytes_unchanged(payload: bytes, encoding: str | None) -> None:
    raw = envelope.up_envelope(
        msg_id="m1",
        app="a1",
        endpoint_id="e1",
        instance="chat",
        payload=payload,
        encoding=encoding,
        sent_at=NOW,
        expires_at=NOW + 60,
    )
    doc = envelope.decode(raw)
    assert doc is not None and doc["type"] == "up" and doc["encoding"] == encoding
    assert base64.b64decode(doc["body"], validate=True) == payload
    assert (doc["endpoint_id"], doc["instance"], doc["expires_at"]) == ("e1", "chat", NOW + 60)
    assert len(raw) < 6000 and json.loads(raw) == doc
