"""Device tokens are checked per vendor when a device registers one (issue 13 item 7)."""

from __future__ import annotations

import base64
import json
import os

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.channels import apns, fcm, hms, mipush, webpush
from bridge.channels.tokens import VALIDATORS, validate_vendor_token
from mqttpush.errors import InvalidContent
from tests.conftest import Running

APNS_32 = "a1" * 32
FCM = "dQw4w9WgXcQ:APA91bHun4MxP5egoKMwt2KZFBaFUH-1RYqx" + "x" * 100
MI_REGID = "DMKEh+9zVfYFo5hkoz2mEwBtCgmA+7n/Py4e0Y9XsQhrf7m8Xl5VYo6xmI3r3Q2x="


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _subscription(endpoint: str = "https://push.example.com/send/abc", **keys: str) -> dict[str, object]:
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    return {"endpoint": endpoint, "keys": {"p256dh": _b64(point), "auth": _b64(os.urandom(16))} | keys}


def _refusal(vendor: str, token: str) -> InvalidContent:
    with pytest.raises(InvalidContent) as caught:
        validate_vendor_token(vendor, token)
    return caught.value


def test_every_vendor_has_a_validator() -> None:
    assert set(VALIDATORS) == {"apns", "fcm", "hms", "mipush", "webpush"}
    assert VALIDATORS["apns"] is apns.validate_token and VALIDATORS["webpush"] is webpush.validate_token
    assert _refusal("gcm", "x").code == "bad_vendor_token"


# --- APNs: hex of whole bytes, 32 bytes today, longer allowed --------------------------------------


@pytest.mark.parametrize(
    ("token", "normal"),
    [
        (APNS_32, APNS_32),
        (APNS_32.upper(), APNS_32),
        (f"  {APNS_32}\n", APNS_32),
        ("ab" * 100, "ab" * 100),  # Apple: do not hard-code the length
        ("0f" * 200, "0f" * 200),
    ],
)
def test_apns_accepts_hex_device_tokens(token: str, normal: str) -> None:
    assert apns.validate_token(token) == normal


@pytest.mark.parametrize(
    ("token", "says"),
    [
        ("abc123", "32 to 200 bytes"),
        ("aabbccdd", "got 8 digits"),  # an even number of hex digits, but 4 bytes
        ("a" * 63, "even number of digits; got 63"),
        ("ab" * 201, "32 to 200 bytes"),
        ("zz" * 32, "hex digits"),
        (f"<{APNS_32[:8]} {APNS_32[8:]}>", "hex digits"),
        (APNS_32[:32] + " " + APNS_32[32:], "hex digits"),
        ("", "32 to 200 bytes"),
        (APNS_32 + "/../x", "hex digits"),
    ],
)
def test_apns_refuses_what_apple_would_not_take(token: str, says: str) -> None:
    error = _refusal("apns", token)
    assert error.code == "bad_vendor_token"
    assert error.message.startswith("apns: ") and says in error.message, error.message


def test_a_short_apns_token_is_not_called_an_odd_number_of_digits() -> None:
    assert "even" not in _refusal("apns", "aabbccdd").message


@settings(max_examples=100)
@given(st.binary(min_size=32, max_size=200))
def test_apns_accepts_the_hex_of_any_token_bytes(raw: bytes) -> None:
    assert apns.validate_token(raw.hex().upper()) == raw.hex()


# --- FCM, HMS, MiPush: opaque, so only what is certain -----------------------------------------


@pytest.mark.parametrize(
    ("vendor", "token"),
    [
        ("fcm", FCM),
        ("fcm", "abc123"),  # Google documents no length
        ("hms", "IQAAAACy0kYkAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        ("hms", "0866123456789012300004507700000CN01"),  # the pre-2020 encoding
        ("mipush", MI_REGID),
    ],
)
def test_opaque_tokens_are_taken_as_they_are(vendor: str, token: str) -> None:
    assert validate_vendor_token(vendor, token) == token
    assert validate_vendor_token(vendor, f" {token}\t") == token


@pytest.mark.parametrize("vendor", ["fcm", "hms", "mipush"])
@pytest.mark.parametrize(
    ("token", "says"),
    [
        ("", "is required"),
        ("   ", "is required"),
        ("two words", "visible ASCII"),
        ("tab\tinside", "visible ASCII"),
        ("tökén", "visible ASCII"),
        ("nul\x00", "visible ASCII"),
        ("x" * 5000, "at most"),
    ],
)
def test_opaque_tokens_refuse_what_no_vendor_issues(vendor: str, token: str, says: str) -> None:
    error = _refusal(vendor, token)
    assert error.code == "bad_vendor_token"
    assert error.message.startswith(f"{vendor}: ") and says in error.message, error.message


def test_fcm_names_an_apns_token_registered_as_fcm() -> None:
    error = _refusal("fcm", APNS_32)
    assert error.code == "bad_vendor_token" and "APNs device token" in error.message


def test_the_length_limits_name_the_token_kind() -> None:
    assert "registration token" in _refusal("fcm", "x" * (fcm.MAX_TOKEN_CHARS + 1)).message
    assert "push token" in _refusal("hms", "x" * (hms.MAX_TOKEN_CHARS + 1)).message
    assert "regId" in _refusal("mipush", "x" * (mipush.MAX_TOKEN_CHARS + 1)).message


@settings(max_examples=100)
@given(vendor=st.sampled_from(["apns", "fcm", "hms", "mipush", "webpush"]), token=st.text(max_size=80))
def test_validation_is_total_and_idempotent(vendor: str, token: str) -> None:
    try:
        normal = validate_vendor_token(vendor, token)
    except InvalidContent as exc:
        assert exc.code in ("bad_vendor_token", "bad_subscription")
    else:
        assert validate_vendor_token(vendor, normal) == normal


# --- WebPush: the subscription JSON -----------------------------------------------------------------


def test_webpush_keeps_only_endpoint_and_keys() -> None:
    sub = _subscription() | {"expirationTime": None}
    normal = json.loads(webpush.validate_token(json.dumps(sub)))
    assert normal == {"endpoint": sub["endpoint"], "keys": sub["keys"]}
    assert webpush.parse_subscription(json.dumps(normal)).endpoint == sub["endpoint"]


@pytest.mark.parametrize(
    "sub",
    [
        _subscription("http://push.example.com/send/abc"),
        _subscription("push.example.com/send/abc"),
        _subscription(auth=_b64(b"short")),
        _subscription(p256dh=_b64(b"\x04" + b"k" * 10)),
        _subscription(p256dh="not base64!"),
        {"endpoint": "https://push.example.com/send/abc"},
        {"endpoint": "https://push.example.com/send/abc", "keys": []},
        [],
    ],
)
def test_webpush_refuses_a_subscription_no_browser_made(sub: object) -> None:
    assert _refusal("webpush", json.dumps(sub)).code == "bad_subscription"


# --- at registration, over HTTP ---------------------------------------------------------------------


def _put_token(r: Running, device_token: str, device_id: str, body: dict[str, object]) -> httpx.Response:
    return httpx.put(
        f"{r.url}/api/v1/devices/{device_id}/tokens",
        json=body,
        headers={"Authorization": f"Bearer {device_token}"},
        timeout=10,
    )


def test_registration_refuses_a_bad_token_with_422_and_keeps_a_good_one(running: Running) -> None:
    r = running
    ((device_id, device_token),) = r.register(platform="ios")
    refusals: list[tuple[dict[str, object], str]] = [
        ({"vendor": "apns", "token": "abc123"}, "bad_vendor_token"),
        ({"vendor": "apns", "token": "aabbccdd"}, "bad_vendor_token"),
        ({"vendor": "fcm", "token": "two words"}, "bad_vendor_token"),
        ({"vendor": "mipush"}, "bad_vendor_token"),
        ({"vendor": "webpush", "subscription": _subscription(auth="AAAA")}, "bad_subscription"),
    ]
    for body, code in refusals:
        resp = _put_token(r, device_token, device_id, body)
        doc = resp.json()
        assert resp.status_code == 422, doc
        assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message"}, doc
        assert doc["error"]["code"] == code and doc["error"]["message"], doc

    resp = _put_token(r, device_token, device_id, {"vendor": "apns", "token": APNS_32.upper()})
    assert resp.status_code == 200, resp.text
    assert [t["vendor"] for t in resp.json()["tokens"]] == ["apns"]
    store = r.server.store
    stored = r.call(store.run(store.devices.vendor_tokens, device_id))
    assert [(t.vendor, t.token) for t in stored] == [("apns", APNS_32)]  # stored normalised
