"""Web Push: VAPID keys and credentials, subscriptions, the pure request builder (RFC 8291
encryption, RFC 8292 VAPID) and classifier (RFC 8030), and real sends to a local push service that
is also the browser, over TLS + HTTP/2."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import http_ece
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from bridge.channels import webpush
from bridge.channels.base import (
    Delivered,
    DropToken,
    Fail,
    PayloadTooLargeForVendor,
    PushMessage,
    Retry,
    VendorResponse,
)
from mqttpush.errors import InvalidContent
from tests.fakes.tls import make_ca, tls_server
from tests.fakes.webpush import FakePushService

T = TypeVar("T")
PRIVATE_PEM, PUBLIC_B64 = webpush.generate_vapid_keys()
CREDS = webpush.load_credentials(
    {"subject": "mailto:ops@example.com"}, Path("."), vapid_private_key=PRIVATE_PEM
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class BrowserKeys:
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes

    def subscription(self, endpoint: str) -> str:
        point = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return json.dumps({"endpoint": endpoint, "keys": {"p256dh": b64(point), "auth": b64(self.auth)}})

    def decrypt(self, body: bytes) -> bytes:
        result: bytes = http_ece.decrypt(
            body, private_key=self.private_key, auth_secret=self.auth, version="aes128gcm"
        )
        return result


def new_browser() -> BrowserKeys:
    return BrowserKeys(ec.generate_private_key(ec.SECP256R1()), os.urandom(16))


BROWSER = new_browser()
ENDPOINT = "https://push.example.net:8443/wpush/v2/gAAAAABsubscription"
TOKEN = BROWSER.subscription(ENDPOINT)


def envelope(**extra: Any) -> dict[str, Any]:
    return {
        "id": "m1",
        "app": "app1",
        "type": "notification",
        "title": "Hello",
        "body": "Wörld ✓",
        "data": {"k": "v"},
        "sent_at": 1_800_000_000,
        "expires_at": 1_800_003_600,
        **extra,
    }


def push(
    *, ttl: int = 3600, priority: str = "normal", collapse_key: str | None = None, **extra: Any
) -> PushMessage:
    return PushMessage(
        msg_id="m1", envelope=envelope(**extra), ttl=ttl, priority=priority, collapse_key=collapse_key
    )


def plaintext_of(message: PushMessage) -> bytes:
    return json.dumps(message.envelope, ensure_ascii=False, separators=(",", ":")).encode()


def answer(status: int, body: bytes = b"", *, headers: dict[str, str] | None = None) -> VendorResponse:
    return VendorResponse(status=status, headers=headers or {}, body=body)


def jwt_claims(authorization: str, public_b64: str = PUBLIC_B64) -> dict[str, Any]:
    scheme, _, params = authorization.partition(" ")
    assert scheme == "vapid"
    values = dict(part.strip().split("=", 1) for part in params.split(","))
    assert values["k"] == public_b64
    point = base64.urlsafe_b64decode(values["k"] + "=" * (-len(values["k"]) % 4))
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    assert jwt.get_unverified_header(values["t"]) == {"alg": "ES256", "typ": "JWT"}
    claims: dict[str, Any] = jwt.decode(
        values["t"], key, algorithms=["ES256"], options={"verify_aud": False, "verify_exp": False}
    )
    return claims


async def within(awaitable: Awaitable[T], seconds: float = 10.0) -> T:
    return await asyncio.wait_for(awaitable, seconds)


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


# --- VAPID keys and credentials ------------------------------------------------------------


def test_generated_vapid_keys_are_a_p256_pair_in_browser_form() -> None:
    pem, public = webpush.generate_vapid_keys()
    assert pem.startswith("-----BEGIN PRIVATE KEY-----")
    assert "=" not in public and len(public) == 87
    point = base64.urlsafe_b64decode(public + "=")
    assert len(point) == 65 and point[0] == 4
    creds = webpush.load_credentials(
        {"subject": "https://example.com/contact"}, Path("."), vapid_private_key=pem
    )
    assert creds.public_key == public
    assert "PRIVATE" not in repr(creds) and "private_key" not in repr(creds)


def test_raw_base64url_private_key_is_accepted(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    raw = b64(key.private_numbers().private_value.to_bytes(32, "big"))
    ca_file, _, _ = make_ca(tmp_path)
    creds = webpush.load_credentials(
        {"subject": "mailto:a@b.c", "ca_file": "ca.pem"}, tmp_path, vapid_private_key=raw
    )
    assert creds.public_key == b64(
        key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )
    assert creds.ca_file == ca_file


@pytest.mark.parametrize(
    ("obj", "key", "names"),
    [
        ({}, PRIVATE_PEM, "subject"),
        ({"subject": "ops@example.com"}, PRIVATE_PEM, "subject"),
        ({"subject": "mailto:"}, PRIVATE_PEM, "subject"),
        ({"subject": "http://example.com"}, PRIVATE_PEM, "subject"),
        ({"subject": "mailto:a@b.c", "ca_file": "missing.pem"}, PRIVATE_PEM, "ca_file"),
        ({"subject": "mailto:a@b.c"}, "not a key", "VAPID"),
        ({"subject": "mailto:a@b.c"}, b64(b"short"), "VAPID"),
        (
            {"subject": "mailto:a@b.c"},
            ec.generate_private_key(ec.SECP384R1())
            .private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            .decode(),
            "P-256",
        ),
        (None, PRIVATE_PEM, "object"),
    ],
)
def test_load_credentials_rejects_bad_config(tmp_path: Path, obj: Any, key: str, names: str) -> None:
    with pytest.raises(InvalidContent) as info:
        webpush.load_credentials(obj, tmp_path, vapid_private_key=key)
    assert info.value.code == "bad_vendor_config"
    assert names in info.value.message


# --- subscriptions, origin, topic ----------------------------------------------------------


def test_parse_subscription() -> None:
    sub = webpush.parse_subscription(TOKEN)
    assert sub.endpoint == ENDPOINT
    assert len(sub.p256dh) == 65 and sub.auth == BROWSER.auth


@pytest.mark.parametrize(
    "token",
    [
        "not json",
        "[]",
        json.dumps({"endpoint": ENDPOINT}),
        json.dumps({"endpoint": "http://push.example/x", "keys": json.loads(TOKEN)["keys"]}),
        json.dumps({"endpoint": ENDPOINT, "keys": {"p256dh": b64(b"\x04" * 10), "auth": b64(b"a" * 16)}}),
        json.dumps({"endpoint": ENDPOINT, "keys": {**json.loads(TOKEN)["keys"], "auth": b64(b"short")}}),
        json.dumps({"endpoint": ENDPOINT, "keys": {**json.loads(TOKEN)["keys"], "auth": "!!!"}}),
    ],
)
def test_bad_subscriptions_are_refused(token: str) -> None:
    with pytest.raises(InvalidContent) as info:
        webpush.parse_subscription(token)
    assert info.value.code == "bad_subscription"


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("https://fcm.googleapis.com/fcm/send/abc", "https://fcm.googleapis.com"),
        ("https://Push.Example:443/x?y", "https://push.example"),
        ("https://127.0.0.1:8443/push/1", "https://127.0.0.1:8443"),
        ("https://[::1]:9000/p", "https://[::1]:9000"),
    ],
)
def test_origin(endpoint: str, expected: str) -> None:
    assert webpush.origin(endpoint) == expected


def test_topic() -> None:
    assert webpush.topic("score-123_A") == "score-123_A"
    assert len(webpush.topic("x" * 33)) == 32
    assert webpush.topic("game score") == webpush.topic("game score") != "game score"


@given(st.text(min_size=1))
def test_topic_is_always_a_valid_header(key: str) -> None:
    value = webpush.topic(key)
    assert 1 <= len(value) <= 32
    assert set(value) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


# --- VAPID and build_request ---------------------------------------------------------------


def test_vapid_authorization_follows_rfc_8292() -> None:
    header = webpush.vapid_authorization(CREDS, ENDPOINT, 1_800_000_000.5)
    claims = jwt_claims(header)
    assert claims == {
        "aud": "https://push.example.net:8443",
        "exp": 1_800_000_000 + 18 * 3600,
        "sub": "mailto:ops@example.com",
    }
    assert claims["exp"] - 1_800_000_000 <= 24 * 3600


def test_build_request_encrypts_for_the_subscription() -> None:
    message = push(priority="high", collapse_key="score")
    request = webpush.build_request(message, TOKEN, CREDS, "vapid t=x, k=y")
    assert request.method == "POST" and request.url == ENDPOINT
    assert request.headers == {
        "authorization": "vapid t=x, k=y",
        "content-encoding": "aes128gcm",
        "content-type": "application/octet-stream",
        "ttl": "3600",
        "urgency": "high",
        "topic": "score",
    }
    assert BROWSER.decrypt(request.body) == plaintext_of(message)
    # RFC 8291 header: salt(16) rs(4) idlen(1) keyid = the sender's ephemeral public key (65).
    assert (
        int.from_bytes(request.body[16:20], "big") == 4096
        and request.body[20] == 65
        and request.body[21] == 4
    )


def test_every_message_gets_a_fresh_ephemeral_key_and_salt() -> None:
    first = webpush.build_request(push(), TOKEN, CREDS, "a").body
    second = webpush.build_request(push(), TOKEN, CREDS, "a").body
    assert first[:16] != second[:16] and first[21:86] != second[21:86]
    assert BROWSER.decrypt(first) == BROWSER.decrypt(second)


def test_build_request_signs_vapid_when_not_given() -> None:
    request = webpush.build_request(push(ttl=0), TOKEN, CREDS, "")
    claims = jwt_claims(request.headers["authorization"])
    assert claims["aud"] == "https://push.example.net:8443"
    assert time.time() < claims["exp"] <= time.time() + 24 * 3600
    assert request.headers["ttl"] == "0" and request.headers["urgency"] == "normal"
    assert "topic" not in request.headers


def test_payload_limit_keeps_the_body_within_4096_bytes() -> None:
    base = len(plaintext_of(push(body="")))
    fits = push(body="x" * (webpush.MAX_PLAINTEXT_BYTES - base))
    assert len(webpush.build_request(fits, TOKEN, CREDS, "a").body) == 4096
    with pytest.raises(PayloadTooLargeForVendor):
        webpush.build_request(push(body="x" * (webpush.MAX_PLAINTEXT_BYTES - base + 1)), TOKEN, CREDS, "a")


# --- classify ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "outcome"),
    [
        (
            answer(201, headers={"location": "https://push.example/m/1"}),
            Delivered("https://push.example/m/1"),
        ),
        (answer(201), Delivered(None)),
        (answer(410, b'{"errno": 106}'), DropToken("subscription_gone")),
        (answer(404), DropToken("subscription_gone")),
        (answer(413), Fail("payload_too_large")),
        (answer(429, headers={"retry-after": "30"}), Retry("rate_limited", after=30.0)),
        (answer(429, headers={"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"}), Retry("rate_limited")),
        (answer(400), Fail("vapid_rejected_400", auth=True)),
        (answer(401), Fail("vapid_rejected_401", auth=True)),
        (answer(403), Fail("vapid_rejected_403", auth=True)),
        (answer(500), Retry("http_500")),
        (answer(503, headers={"retry-after": "4"}), Retry("http_503", after=4.0)),
        (answer(301), Fail("http_301")),
    ],
)
def test_classify(response: VendorResponse, outcome: object) -> None:
    assert webpush.classify(response) == outcome


@given(st.integers(100, 599), st.dictionaries(st.sampled_from(["location", "retry-after"]), st.text()))
def test_classify_never_raises(status: int, headers: dict[str, str]) -> None:
    assert isinstance(
        webpush.classify(VendorResponse(status, headers, b"")), Delivered | Retry | DropToken | Fail
    )


def test_vapid_cache_reuses_a_jwt_per_origin_for_twelve_hours() -> None:
    clock = Clock(1_800_000_000.0)
    cache = webpush.VapidCache(CREDS, clock.now)
    first = cache.get(ENDPOINT)
    assert cache.get(ENDPOINT.replace("gAAAAABsubscription", "other")) == first
    assert cache.get("https://fcm.googleapis.com/fcm/send/x") != first
    clock.t += webpush.VAPID_CACHE_SECONDS - 1
    assert cache.get(ENDPOINT) == first
    clock.t += 1
    renewed = cache.get(ENDPOINT)
    assert renewed != first and jwt_claims(renewed)["exp"] == int(clock.t) + webpush.VAPID_TOKEN_LIFETIME
    cache.invalidate(ENDPOINT)
    assert cache.get(ENDPOINT) != renewed


# --- the channel against the fake push service over TLS + HTTP/2 ---------------------------


@dataclass
class Rig:
    fake: FakePushService
    channel: webpush.WebPushChannel
    clock: Clock
    base_url: str
    browser: BrowserKeys

    def token(self, sub_id: str = "sub1") -> str:
        return self.browser.subscription(f"{self.base_url}/push/{sub_id}")


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    fake = FakePushService()
    browser = new_browser()
    for sub_id in ("sub1", "sub2", "gone"):
        fake.subscribe(sub_id, browser.private_key, browser.auth)
    clock = Clock(time.time())  # the fake checks exp against the wall clock
    async with tls_server(fake.app) as (base_url, ca_file):
        creds = webpush.load_credentials(
            {"subject": "mailto:ops@example.com", "ca_file": ca_file}, tmp_path, vapid_private_key=PRIVATE_PEM
        )
        async with webpush.WebPushChannel(creds, now=clock.now) as channel:
            yield Rig(fake, channel, clock, base_url, browser)


async def test_send_arrives_decrypted_over_http2(rig: Rig) -> None:
    message = push(priority="high", collapse_key="score")
    outcome = await within(rig.channel.send(message, rig.token()))
    assert isinstance(outcome, Delivered)
    assert outcome.vendor_id == f"{rig.base_url}/message/1"
    (received,) = rig.fake.received
    assert received.plaintext == plaintext_of(message)
    assert json.loads(received.plaintext) == envelope()
    assert (received.ttl, received.urgency, received.topic) == (3600, "high", "score")
    assert received.claims["aud"] == rig.base_url and received.claims["sub"] == "mailto:ops@example.com"
    assert received.http_version == "2"
    assert rig.channel.stats.sent == 1 and rig.channel.stats.delivered == 1


async def test_vapid_jwt_is_cached_per_origin_then_renewed(rig: Rig) -> None:
    rig.clock.t -= webpush.VAPID_CACHE_SECONDS  # so the renewed JWT is signed at wall-clock time
    await within(rig.channel.send(push(), rig.token("sub1")))
    await within(rig.channel.send(push(), rig.token("sub2")))
    rig.clock.t += webpush.VAPID_CACHE_SECONDS
    await within(rig.channel.send(push(), rig.token("sub1")))
    first, second, third = (r.jwt for r in rig.fake.received)
    assert first == second != third


async def test_expired_subscription_is_dropped(rig: Rig) -> None:
    rig.fake.expired.add("gone")
    assert await within(rig.channel.send(push(), rig.token("gone"))) == DropToken("subscription_gone")
    assert await within(rig.channel.send(push(), rig.token("never-was"))) == DropToken("subscription_gone")
    assert await within(rig.channel.send(push(), '{"endpoint": 1}')) == DropToken("bad_subscription")
    assert rig.channel.stats.dropped_tokens == 3
    assert rig.fake.received == []


async def test_refused_vapid_is_resigned_once(rig: Rig) -> None:
    assert isinstance(await within(rig.channel.send(push(), rig.token())), Delivered)
    rig.fake.expire_auth_once = True
    assert isinstance(await within(rig.channel.send(push(), rig.token())), Delivered)
    assert rig.channel.stats.extra["auth_refreshes"] == 1
    assert rig.fake.received[0].jwt != rig.fake.received[1].jwt


async def test_subscription_for_another_key_is_an_app_alarm(rig: Rig) -> None:
    _, other_public = webpush.generate_vapid_keys()
    rig.fake.subscribe(
        "locked", rig.browser.private_key, rig.browser.auth, application_server_key=other_public
    )
    outcome = await within(rig.channel.send(push(), rig.token("locked")))
    assert outcome == Fail("vapid_rejected_403", auth=True)
    assert [status for status, _ in rig.fake.rejections] == [403, 403]  # re-signed once, then gave up
    assert rig.channel.stats.failed == 1


async def test_rate_limit_retries_after(rig: Rig) -> None:
    rig.fake.throttle_once.add("sub1")
    assert await within(rig.channel.send(push(), rig.token())) == Retry("rate_limited", after=7.0)
    assert isinstance(await within(rig.channel.send(push(), rig.token())), Delivered)


async def test_largest_payload_arrives_and_larger_is_failed(rig: Rig) -> None:
    base = len(plaintext_of(push(body="")))
    largest = push(body="x" * (webpush.MAX_PLAINTEXT_BYTES - base))
    assert isinstance(await within(rig.channel.send(largest, rig.token())), Delivered)
    assert rig.fake.received[0].plaintext == plaintext_of(largest)
    too_large = push(body="x" * (webpush.MAX_PLAINTEXT_BYTES - base + 1))
    assert await within(rig.channel.send(too_large, rig.token())) == Fail("payload_too_large")
    assert len(rig.fake.received) == 1


async def test_network_error_is_retry() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with webpush.WebPushChannel(CREDS) as channel:
        outcome = await within(channel.send(push(), BROWSER.subscription(f"https://127.0.0.1:{port}/push/x")))
    assert outcome == Retry("network")
