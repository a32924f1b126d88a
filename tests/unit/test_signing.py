"""Request signing (docs/api.md): the string to sign, the HMAC, and every refusal code."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqttpush import signing
from mqttpush.errors import AuthError

PROPS = settings(max_examples=200, deadline=None)

SECRET = "s3cret-app-secret"
NOW = 1_700_000_000
NONCE = "abcdefghijklmnop_-0123"
PATH = "/api/v1/push?dry_run=1"
BODY = b'{"target": {"devices": ["dev1"]}}'
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def reference_signature(secret: str, method: str, path: str, timestamp: str, nonce: str, body: bytes) -> str:
    s = f"{method}\n{path}\n{timestamp}\n{nonce}\n{hashlib.sha256(body).hexdigest()}"
    return hmac.new(secret.encode(), s.encode(), hashlib.sha256).hexdigest()


def check(
    *,
    method: str = "POST",
    path: str = PATH,
    timestamp: str | None = str(NOW),
    nonce: str | None = NONCE,
    signature: str | None = None,
    body: bytes = BODY,
    now: float = NOW,
    secret: str = SECRET,
) -> None:
    """check_request for a request signed over the defaults unless ``signature`` is given."""
    if signature is None:
        signature = reference_signature(SECRET, "POST", PATH, str(NOW), NONCE, BODY)
    signing.check_request(secret, method, path, timestamp, nonce, signature, body, now)


def refused(code: str, **kwargs: object) -> AuthError:
    with pytest.raises(AuthError) as info:
        check(**kwargs)  # type: ignore[arg-type]
    assert info.value.code == code
    assert info.value.status == 401
    return info.value


# --- string_to_sign and sign ---------------------------------------------------------------------


def test_string_to_sign_is_the_documented_five_lines() -> None:
    s = signing.string_to_sign("POST", PATH, "1700000000", NONCE, BODY)
    expected = "\n".join(["POST", PATH, "1700000000", NONCE, hashlib.sha256(BODY).hexdigest()]).encode()
    assert s == expected
    assert s.count(b"\n") == 4


def test_string_to_sign_of_empty_body_uses_sha256_of_empty_bytes() -> None:
    s = signing.string_to_sign("GET", "/api/v1/messages/m1", "1700000000", NONCE, b"")
    assert s == f"GET\n/api/v1/messages/m1\n1700000000\n{NONCE}\n{EMPTY_SHA256}".encode()


def test_string_to_sign_keeps_the_query_verbatim() -> None:
    s = signing.string_to_sign("GET", "/a?b=1&c=%2F", "1", NONCE, b"")
    assert s.split(b"\n")[1] == b"/a?b=1&c=%2F"


def test_sign_is_lowercase_hex_hmac_sha256() -> None:
    sig = signing.sign(SECRET, "POST", PATH, "1700000000", NONCE, BODY)
    assert sig == reference_signature(SECRET, "POST", PATH, "1700000000", NONCE, BODY)
    assert len(sig) == 64
    assert sig == sig.lower()
    int(sig, 16)


def test_sign_depends_on_every_input() -> None:
    base = ("POST", PATH, "1700000000", NONCE, BODY)
    sig = signing.sign(SECRET, *base)
    assert signing.sign("other", *base) != sig
    assert signing.sign(SECRET, "PUT", *base[1:]) != sig
    assert signing.sign(SECRET, "POST", "/api/v1/push", *base[2:]) != sig
    assert signing.sign(SECRET, "POST", PATH, "1700000001", NONCE, BODY) != sig
    assert signing.sign(SECRET, "POST", PATH, "1700000000", NONCE + "x", BODY) != sig
    assert signing.sign(SECRET, "POST", PATH, "1700000000", NONCE, BODY + b" ") != sig


@PROPS
@given(
    secret=st.text(min_size=1),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    path=st.text(),
    timestamp=st.integers(min_value=0, max_value=2**40).map(str),
    nonce=st.text(alphabet="ABCxyz019_-", min_size=16, max_size=64),
    body=st.binary(),
)
def test_sign_agrees_with_reference(
    secret: str, method: str, path: str, timestamp: str, nonce: str, body: bytes
) -> None:
    assert signing.sign(secret, method, path, timestamp, nonce, body) == reference_signature(
        secret, method, path, timestamp, nonce, body
    )


# --- check_request -------------------------------------------------------------------------------


def test_correctly_signed_request_passes() -> None:
    check()


@pytest.mark.parametrize("missing", ["timestamp", "nonce", "signature"])
@pytest.mark.parametrize("value", [None, ""])
def test_missing_header_is_missing_signature(missing: str, value: str | None) -> None:
    good = reference_signature(SECRET, "POST", PATH, str(NOW), NONCE, BODY)
    headers: dict[str, str | None] = {"timestamp": str(NOW), "nonce": NONCE, "signature": good}
    headers[missing] = value
    with pytest.raises(AuthError) as info:
        signing.check_request(
            SECRET, "POST", PATH, headers["timestamp"], headers["nonce"], headers["signature"], BODY, NOW
        )
    assert info.value.code == "missing_signature"


@pytest.mark.parametrize("skew", [300, -300, 0, 299, -299])
def test_timestamp_within_300_seconds_is_accepted(skew: int) -> None:
    check(now=NOW + skew)


@pytest.mark.parametrize("skew", [301, -301, 3600, -3600, NOW])
def test_timestamp_beyond_300_seconds_is_stale(skew: int) -> None:
    refused("stale_timestamp", now=NOW + skew)


@pytest.mark.parametrize("timestamp", ["abc", "1.7e9", "1700000000.5", "0x6553F100"])
def test_timestamp_not_unix_seconds_is_stale(timestamp: str) -> None:
    refused("stale_timestamp", timestamp=timestamp)


def test_stale_timestamp_is_refused_even_when_correctly_signed() -> None:
    old = str(NOW - 301)
    sig = reference_signature(SECRET, "POST", PATH, old, NONCE, BODY)
    refused("stale_timestamp", timestamp=old, signature=sig)


@pytest.mark.parametrize("nonce", ["a" * 16, "Z" * 64, "0123456789abcdef", "-_-_-_-_-_-_-_-_"])
def test_nonce_of_16_to_64_url_safe_characters_is_accepted(nonce: str) -> None:
    check(nonce=nonce, signature=reference_signature(SECRET, "POST", PATH, str(NOW), nonce, BODY))


@pytest.mark.parametrize(
    "nonce",
    [
        "a" * 15,
        "a" * 65,
        "a" * 200,
        "abcdefghijklmno=",
        "abcdefghijklmn+/",
        "abcdefghijklmnop.",
        "abcdefgh ijklmnop",
        "abcdefghijklmnopé",
        "abcdefghijklmnop\n",
        "\nabcdefghijklmnop",
    ],
)
def test_nonce_that_is_short_long_or_not_url_safe_is_bad(nonce: str) -> None:
    # signed correctly over the nonce, so only the nonce rule can refuse it
    sig = reference_signature(SECRET, "POST", PATH, str(NOW), nonce, BODY)
    refused("bad_nonce", nonce=nonce, signature=sig)


@pytest.mark.parametrize(
    "change",
    [
        {"body": BODY + b" "},
        {"body": b""},
        {"path": "/api/v1/push"},
        {"path": "/api/v1/push?dry_run=2"},
        {"path": "/api/v1/devices"},
        {"method": "PUT"},
        {"method": "GET"},
        {"secret": "another-secret"},
        {"timestamp": str(NOW + 1)},
        {"nonce": NONCE + "x"},
    ],
)
def test_any_change_after_signing_is_bad_signature(change: dict[str, object]) -> None:
    refused("bad_signature", **change)


@pytest.mark.parametrize(
    "signature",
    ["0" * 64, "deadbeef", "x" * 64, " " + "0" * 63, "é" * 64, "ü" + "0" * 63],
)
def test_malformed_signature_is_bad_signature(signature: str) -> None:
    # Header values arrive as latin-1 text: a non-ASCII signature must be refused, not crash.
    refused("bad_signature", signature=signature)


def test_signature_for_another_app_secret_is_bad() -> None:
    sig = reference_signature("not-the-secret", "POST", PATH, str(NOW), NONCE, BODY)
    refused("bad_signature", signature=sig)


# --- signed_headers -------------------------------------------------------------------------------


def test_signed_headers_are_the_four_documented_headers() -> None:
    h = signing.signed_headers("app1", SECRET, "POST", PATH, BODY, NOW + 0.9)
    assert set(h) == {"X-MQTTPush-Key", "X-MQTTPush-Timestamp", "X-MQTTPush-Nonce", "X-MQTTPush-Signature"}
    assert h["X-MQTTPush-Key"] == "app1"
    assert h["X-MQTTPush-Timestamp"] == str(NOW)
    assert signing.NONCE_RE.fullmatch(h["X-MQTTPush-Nonce"])
    assert h["X-MQTTPush-Signature"] == reference_signature(
        SECRET, "POST", PATH, str(NOW), h["X-MQTTPush-Nonce"], BODY
    )


def test_signed_headers_use_a_fresh_nonce_each_time() -> None:
    nonces = {
        signing.signed_headers("app1", SECRET, "GET", "/", b"", NOW)[signing.NONCE_HEADER] for _ in range(50)
    }
    assert len(nonces) == 50


@PROPS
@given(
    secret=st.text(min_size=1, max_size=64),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    path=st.text(max_size=200),
    body=st.binary(max_size=2000),
    now=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    skew=st.integers(min_value=-299, max_value=299),
)
def test_signed_headers_always_verify(
    secret: str, method: str, path: str, body: bytes, now: float, skew: int
) -> None:
    h = signing.signed_headers("app1", secret, method, path, body, now)
    signing.check_request(
        secret,
        method,
        path,
        h[signing.TIMESTAMP_HEADER],
        h[signing.NONCE_HEADER],
        h[signing.SIGNATURE_HEADER],
        body,
        now + skew,
    )


@PROPS
@given(body=st.binary(max_size=500), other=st.binary(max_size=500), path=st.text(max_size=100))
def test_signed_headers_do_not_verify_another_body(body: bytes, other: bytes, path: str) -> None:
    if body == other:
        other = body + b"\x00"
    h = signing.signed_headers("app1", SECRET, "POST", path, body, NOW)
    with pytest.raises(AuthError) as info:
        signing.check_request(
            SECRET,
            "POST",
            path,
            h[signing.TIMESTAMP_HEADER],
            h[signing.NONCE_HEADER],
            h[signing.SIGNATURE_HEADER],
            other,
            NOW,
        )
    assert info.value.code == "bad_signature"
