"""APNs channel: the pure request builder and classifier, provider-token timing, and real sends to
a local APNs fake over TLS + HTTP/2."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st

from bridge.channels import apns
from bridge.channels.apns import ApnsChannel, ApnsCredentials, ProviderToken, build_request, classify
from bridge.channels.base import (
    Delivered,
    DropToken,
    Fail,
    PayloadTooLargeForVendor,
    PushMessage,
    Retry,
    VendorResponse,
    retry_after,
)
from mqttpush.clock import ManualClock
from mqttpush.errors import InvalidContent
from tests.fakes.apns import FakeApns, write_auth_key
from tests.fakes.tls import tls_server

TEAM = "TEAM123456"
KEY_ID = "KEY1234567"
TOPIC = "com.example.app"
NOW = 1_800_000_000.0


def device(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


TOKEN = device(0)


def message(
    kind: str = "notification", *, ttl: int = 3600, priority: str = "normal", **fields: Any
) -> PushMessage:
    envelope: dict[str, Any] = {
        "id": "m1",
        "app": "app1",
        "type": kind,
        "title": "Hello",
        "body": "World",
        "data": {},
        "sent_at": NOW,
        "expires_at": NOW + ttl,
    }
    envelope.update(fields)
    collapse = envelope.pop("collapse_key", None)
    return PushMessage(msg_id="m1", envelope=envelope, ttl=ttl, priority=priority, collapse_key=collapse)


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("apns-keys")
    write_auth_key(directory / "AuthKey.p8")
    return directory


def config(**overrides: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"team_id": TEAM, "key_id": KEY_ID, "key_file": "AuthKey.p8", "topic": TOPIC}
    obj.update(overrides)
    return {k: v for k, v in obj.items() if v is not None}


@pytest.fixture(scope="module")
def creds(key_dir: Path) -> ApnsCredentials:
    return apns.load_credentials(config(), key_dir)


def body_of(request: Any) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(request.body)
    return result


# --- credentials ---------------------------------------------------------------------------------


def test_load_credentials_resolves_paths_and_defaults(key_dir: Path) -> None:
    creds = apns.load_credentials(config(), key_dir)
    assert creds.key_file == key_dir / "AuthKey.p8"
    assert creds.base_url == "https://api.push.apple.com"
    assert creds.ca_file is None
    sandbox = apns.load_credentials(config(base_url="https://api.sandbox.push.apple.com/"), key_dir)
    assert sandbox.base_url == apns.SANDBOX_URL


def test_credentials_never_show_the_key(creds: ApnsCredentials, key_dir: Path) -> None:
    pem = (key_dir / "AuthKey.p8").read_text()
    secret_line = pem.splitlines()[1]
    for text in (repr(creds), str(creds), repr(ProviderToken(creds))):
        assert secret_line not in text
        assert "signing_key" not in text
        assert "PRIVATE" not in text


@pytest.mark.parametrize(
    ("overrides", "mentions"),
    [
        ({"team_id": None}, "team_id"),
        ({"team_id": "SHORT"}, "team_id"),
        ({"key_id": 1234567890}, "key_id"),
        ({"topic": ""}, "topic"),
        ({"topic": "com.example\r\nx: y"}, "topic"),
        ({"key_file": None}, "key_file"),
        ({"key_file": "missing.p8"}, "no such file"),
        ({"key_file": "not-a-key.txt"}, "PEM"),
        ({"key_file": "rsa.pem"}, "P-256"),
        ({"base_url": "http://api.push.apple.com"}, "base_url"),
        ({"base_url": 5}, "base_url"),
        ({"ca_file": "missing-ca.pem"}, "ca_file"),
        ({"keyfile": "AuthKey.p8"}, "unknown field"),
    ],
)
def test_bad_config_is_refused_with_a_clear_message(
    key_dir: Path, overrides: dict[str, Any], mentions: str
) -> None:
    (key_dir / "not-a-key.txt").write_text("hello")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    (key_dir / "rsa.pem").write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    obj = config()
    for key, value in overrides.items():
        if value is None:
            obj.pop(key, None)
        else:
            obj[key] = value
    with pytest.raises(InvalidContent) as caught:
        apns.load_credentials(obj, key_dir)
    assert caught.value.code == "bad_vendor_config"
    assert mentions in caught.value.message


def test_config_must_be_an_object(key_dir: Path) -> None:
    with pytest.raises(InvalidContent, match="object"):
        apns.load_credentials(["team_id"], key_dir)  # type: ignore[arg-type]


# --- build_request -------------------------------------------------------------------------------


def test_notification_maps_to_alert_and_headers(creds: ApnsCredentials) -> None:
    msg = message(
        priority="high",
        data={"order": 42, "nested": {"a": [1, 2]}},
        sound="ping.caf",
        badge=3,
        category="REPLY",
        image="https://example.com/i.png",
        url="https://example.com/o/42",
        collapse_key="order-42",
    )
    request = build_request(msg, TOKEN, creds, "JWT")
    assert request.method == "POST"
    assert request.url == f"https://api.push.apple.com/3/device/{TOKEN}"
    assert request.headers == {
        "authorization": "bearer JWT",
        "apns-topic": TOPIC,
        "apns-push-type": "alert",
        "apns-priority": "10",
        "apns-expiration": str(int(NOW + 3600)),
        "apns-collapse-id": "order-42",
        "content-type": "application/json",
    }
    assert body_of(request) == {
        "aps": {
            "alert": {"title": "Hello", "body": "World"},
            "sound": "ping.caf",
            "badge": 3,
            "category": "REPLY",
            "mutable-content": 1,
        },
        "order": 42,
        "nested": {"a": [1, 2]},
        "mqttpush_id": "m1",
        "mqttpush_image": "https://example.com/i.png",
        "mqttpush_url": "https://example.com/o/42",
    }


def test_normal_priority_notification_uses_priority_5(creds: ApnsCredentials) -> None:
    request = build_request(message(priority="normal"), TOKEN, creds, "JWT")
    assert request.headers["apns-priority"] == "5"
    assert "apns-collapse-id" not in request.headers
    assert "mutable-content" not in body_of(request)["aps"]


def test_data_only_message_is_a_background_push(creds: ApnsCredentials) -> None:
    msg = message("message", priority="high", data={"k": "v"})
    request = build_request(msg, TOKEN, creds, "JWT")
    assert request.headers["apns-push-type"] == "background"
    assert request.headers["apns-priority"] == "5"  # Apple refuses 10 for background pushes
    assert body_of(request) == {
        "aps": {"content-available": 1},
        "k": "v",
        "mqttpush_id": "m1",
        "mqttpush_title": "Hello",
        "mqttpush_body": "World",
    }


def test_expiration_comes_from_the_envelope_else_now_plus_ttl(creds: ApnsCredentials) -> None:
    assert build_request(message(ttl=60), TOKEN, creds, "J").headers["apns-expiration"] == str(int(NOW + 60))
    no_expiry = PushMessage("m1", {"id": "m1", "type": "notification", "title": "t"}, ttl=90)
    assert build_request(no_expiry, TOKEN, creds, "J", now=1000.5).headers["apns-expiration"] == "1090"
    assert build_request(message(ttl=0), TOKEN, creds, "J").headers["apns-expiration"] == "0"


def test_long_collapse_key_is_hashed_to_64_bytes(creds: ApnsCredentials) -> None:
    key = "k" * 65
    header = build_request(message(collapse_key=key), TOKEN, creds, "J").headers["apns-collapse-id"]
    assert header == hashlib.sha256(key.encode()).hexdigest()
    assert len(header) == 64
    assert (
        build_request(message(collapse_key="é" * 32), TOKEN, creds, "J").headers["apns-collapse-id"]
        == "é" * 32
    )


@pytest.mark.parametrize("key", ["aps", "mqttpush_id", "mqttpush_anything"])
def test_reserved_data_keys_are_refused(creds: ApnsCredentials, key: str) -> None:
    with pytest.raises(InvalidContent) as caught:
        build_request(message(data={key: 1}), TOKEN, creds, "J")
    assert caught.value.code == "reserved_data_key"


@pytest.mark.parametrize("token", ["", "abc", "zz" * 32, TOKEN + "/../x", TOKEN + "?a=b", " " + TOKEN])
def test_device_token_must_be_hex(creds: ApnsCredentials, token: str) -> None:
    with pytest.raises(InvalidContent) as caught:
        build_request(message(), token, creds, "J")
    assert caught.value.code == "bad_device_token"


@pytest.mark.parametrize(
    ("token", "says"),
    [("aabbccdd", "32 to 200 bytes"), ("abc", "an even number of digits; got 3"), ("zz" * 32, "hex digits")],
)
def test_a_refused_device_token_is_told_what_is_wrong(creds: ApnsCredentials, token: str, says: str) -> None:
    with pytest.raises(InvalidContent) as caught:
        build_request(message(), token, creds, "J")
    assert says in caught.value.message  # "aabbccdd" is an even number of digits: too short is the fault


def _payload_size(msg: PushMessage, creds: ApnsCredentials) -> int:
    return len(build_request(msg, TOKEN, creds, "J").body)


@given(extra=st.integers(min_value=-200, max_value=200), wide=st.booleans())
def test_payload_limit_is_4096_utf8_bytes(creds: ApnsCredentials, extra: int, wide: bool) -> None:
    base = _payload_size(message(data={"f": ""}), creds)
    char, width = ("€", 3) if wide else ("x", 1)
    target = apns.MAX_PAYLOAD_BYTES + extra
    count, rest = divmod(target - base, width)
    msg = message(data={"f": char * count + "x" * rest})
    size = base + count * width + rest
    if size > apns.MAX_PAYLOAD_BYTES:
        with pytest.raises(PayloadTooLargeForVendor):
            build_request(msg, TOKEN, creds, "J")
    else:
        assert len(build_request(msg, TOKEN, creds, "J").body) == size


# --- classify ------------------------------------------------------------------------------------


def answer(
    status: int, reason: str | None = None, headers: dict[str, str] | None = None, **extra: Any
) -> VendorResponse:
    body = json.dumps({"reason": reason, **extra}).encode() if reason else b""
    return VendorResponse(status, headers or {}, body)


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (answer(200, headers={"apns-id": "A-1"}), Delivered("A-1")),
        (answer(400, "BadDeviceToken"), DropToken("BadDeviceToken")),
        (answer(400, "DeviceTokenNotForTopic"), DropToken("DeviceTokenNotForTopic")),
        (answer(410, "Unregistered", timestamp=1_700_000_000_000), DropToken("Unregistered")),
        (answer(410, "ExpiredToken"), DropToken("ExpiredToken")),
        (answer(403, "ExpiredProviderToken"), Fail("ExpiredProviderToken", auth=True)),
        (answer(403, "InvalidProviderToken"), Fail("InvalidProviderToken", auth=True)),
        (answer(403, "MissingProviderToken"), Fail("MissingProviderToken", auth=True)),
        (answer(403, "BadCertificate"), Fail("BadCertificate", auth=True)),
        (answer(403, "BadCertificateEnvironment"), Fail("BadCertificateEnvironment", auth=True)),
        (answer(403, "Forbidden"), Fail("Forbidden", auth=True)),
        (answer(403, "UnrelatedKeyIdInToken"), Fail("UnrelatedKeyIdInToken", auth=True)),
        (answer(413, "PayloadTooLarge"), Fail("PayloadTooLarge")),
        (answer(429, "TooManyRequests"), Retry("TooManyRequests")),
        (answer(429, "TooManyProviderTokenUpdates"), Retry("TooManyProviderTokenUpdates")),
        (answer(500, "InternalServerError"), Retry("InternalServerError")),
        (answer(503, "ServiceUnavailable", {"retry-after": "30"}), Retry("ServiceUnavailable", after=30.0)),
        (answer(503, "Shutdown"), Retry("Shutdown")),
        (answer(400, "BadTopic"), Fail("BadTopic")),
        (answer(400, "BadCollapseId"), Fail("BadCollapseId")),
        (answer(400, "BadExpirationDate"), Fail("BadExpirationDate")),
        (answer(400, "BadPriority"), Fail("BadPriority")),
        (answer(400, "InvalidPushType"), Fail("InvalidPushType")),
        (answer(400, "MissingTopic"), Fail("MissingTopic")),
        (answer(400, "TopicDisallowed"), Fail("TopicDisallowed")),
        (answer(400, "PayloadEmpty"), Fail("PayloadEmpty")),
        (answer(404, "BadPath"), Fail("BadPath")),
        (answer(405, "MethodNotAllowed"), Fail("MethodNotAllowed")),
        (VendorResponse(502, {}, b"<html>bad gateway</html>"), Retry("HTTP 502")),
        (VendorResponse(400, {}, b"[]"), Fail("HTTP 400")),
    ],
)
def test_classify_follows_apples_table(response: VendorResponse, expected: object) -> None:
    assert classify(response) == expected


def test_retry_after_as_http_date() -> None:
    headers = {"retry-after": "Wed, 21 Oct 2026 07:28:30 GMT", "date": "Wed, 21 Oct 2026 07:28:00 GMT"}
    assert classify(answer(503, "ServiceUnavailable", headers)) == Retry("ServiceUnavailable", after=30.0)
    assert retry_after({"retry-after": "Wed, 21 Oct 2026 07:28:30 GMT"}) is None  # no Date to measure from
    assert retry_after({"retry-after": "soon"}) is None


def test_unregistered_since_reads_the_timestamp() -> None:
    assert (
        apns.unregistered_since(answer(410, "Unregistered", timestamp=1_700_000_000_500)) == 1_700_000_000.5
    )
    assert apns.unregistered_since(answer(410, "ExpiredToken")) is None
    assert apns.unregistered_since(answer(400, "BadDeviceToken", timestamp=5)) is None


@given(status=st.integers(min_value=100, max_value=599), body=st.binary(max_size=64))
def test_classify_never_raises(status: int, body: bytes) -> None:
    assert isinstance(classify(VendorResponse(status, {}, body)), Delivered | Retry | DropToken | Fail)


# --- provider token ------------------------------------------------------------------------------


def test_provider_token_is_es256_with_kid_and_iss(creds: ApnsCredentials) -> None:
    clock = ManualClock(NOW)
    token = ProviderToken(creds, now=clock.now).current()
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": KEY_ID, "typ": "JWT"}
    public = creds.signing_key.public_key()
    claims = jwt.decode(token, public, algorithms=["ES256"], options={"verify_iat": False})
    assert claims == {"iss": TEAM, "iat": int(NOW)}


def test_provider_token_is_reused_for_40_minutes(creds: ApnsCredentials) -> None:
    clock = ManualClock(NOW)
    tokens = ProviderToken(creds, now=clock.now)
    first = tokens.current()
    clock.advance(39 * 60)
    assert tokens.current() == first
    clock.advance(60)
    second = tokens.current()
    assert second != first
    claims = jwt.decode(second, options={"verify_signature": False})
    assert claims["iat"] == int(NOW + 40 * 60)
    assert tokens.signed == 2


def test_rejected_token_is_replaced_at_once_but_not_churned(creds: ApnsCredentials) -> None:
    clock = ManualClock(NOW)
    tokens = ProviderToken(creds, now=clock.now)
    first = tokens.current()
    clock.advance(5)
    assert tokens.reject(first)
    second = tokens.current()
    assert second != first
    assert tokens.reject(first)  # a concurrent send saw the old one: already replaced, nothing signed
    assert tokens.signed == 2
    clock.advance(60)
    assert not tokens.reject(second)  # within 20 minutes of the last forced refresh: keep it
    assert tokens.current() == second
    clock.advance(20 * 60)
    assert tokens.reject(tokens.current())
    assert tokens.signed == 3


# --- real sends over TLS + HTTP/2 ----------------------------------------------------------------


@dataclass
class Env:
    fake: FakeApns
    channel: ApnsChannel
    clock: ManualClock
    creds: ApnsCredentials
    base_url: str
    ca_file: str


@pytest.fixture
async def env(key_dir: Path, creds: ApnsCredentials) -> AsyncIterator[Env]:
    clock = ManualClock(NOW)
    fake = FakeApns(TEAM, KEY_ID, TOPIC, creds.signing_key.public_key(), now=clock.now)
    async with tls_server(fake) as (base_url, ca_file):
        live = apns.load_credentials(config(base_url=base_url, ca_file=ca_file), key_dir)
        async with ApnsChannel(live, now=clock.now) as channel:
            yield Env(fake, channel, clock, live, base_url, ca_file)


async def test_send_delivers_over_http2(env: Env) -> None:
    msg = message(priority="high", data={"order": 1}, collapse_key="c")
    outcome = await env.channel.send(msg, TOKEN)
    assert isinstance(outcome, Delivered)
    [got] = env.fake.received
    assert outcome.vendor_id == got.apns_id
    assert got.http_version == "2"
    assert got.device_token == TOKEN
    assert got.headers["apns-topic"] == TOPIC
    assert got.headers["apns-push-type"] == "alert"
    assert got.headers["apns-priority"] == "10"
    assert got.headers["apns-collapse-id"] == "c"
    assert got.payload["aps"]["alert"] == {"title": "Hello", "body": "World"}
    assert got.payload["mqttpush_id"] == "m1"
    assert env.channel.stats.sent == env.channel.stats.delivered == 1


async def test_200_concurrent_sends_share_one_http2_connection(env: Env) -> None:
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(env.channel.send(message("message"), device(n)) for n in range(200))), 15
    )
    assert all(isinstance(o, Delivered) for o in outcomes)
    assert len({o.vendor_id for o in outcomes if isinstance(o, Delivered)}) == 200
    assert len(env.fake.received) == 200
    assert env.fake.http_versions == {"2"}
    assert len(env.fake.connections) == 1
    assert len(env.fake.provider_tokens) == 1
    assert env.channel.provider_token.signed == 1
    assert env.channel.stats.delivered == 200


async def test_vendor_answers_become_outcomes(env: Env) -> None:
    gone, expired, bad, other_app = device(1), device(2), device(3), device(4)
    env.fake.unregistered.add(gone)
    env.fake.expired.add(expired)
    env.fake.bad.add(bad)
    env.fake.wrong_topic.add(other_app)
    assert await env.channel.send(message(), gone) == DropToken("Unregistered")
    assert await env.channel.send(message(), expired) == DropToken("ExpiredToken")
    assert await env.channel.send(message(), bad) == DropToken("BadDeviceToken")
    assert await env.channel.send(message(), other_app) == DropToken("DeviceTokenNotForTopic")
    assert env.channel.stats.dropped_tokens == 4
    assert env.fake.received == []


async def test_throttling_and_unavailability_are_retried(env: Env) -> None:
    env.fake.throttle_once.add(TOKEN)
    env.fake.unavailable_once.add(device(9))
    assert await env.channel.send(message(), TOKEN) == Retry("TooManyRequests")
    assert isinstance(await env.channel.send(message(), TOKEN), Delivered)
    assert await env.channel.send(message(), device(9)) == Retry("ServiceUnavailable", after=7.0)
    assert isinstance(await env.channel.send(message(), device(9)), Delivered)
    assert env.channel.stats.retried == 2
    assert env.channel.stats.delivered == 2


async def test_expired_provider_token_is_replaced_and_the_send_repeated(env: Env) -> None:
    assert isinstance(await env.channel.send(message(), device(1)), Delivered)
    env.clock.advance(60)
    env.fake.fail_next_auth = 1
    outcome = await env.channel.send(message(), device(2))
    assert isinstance(outcome, Delivered)
    assert env.fake.answers[-2:] == [(403, "ExpiredProviderToken"), (200, "")]
    assert len(env.fake.provider_tokens) == 2
    assert env.fake.received[-1].provider_token == env.fake.provider_tokens[1]
    assert env.channel.stats.extra["auth_resends"] == 1
    assert env.channel.stats.sent == env.channel.stats.delivered == 2


async def test_a_token_older_than_an_hour_is_refused_then_replaced(env: Env) -> None:
    env.channel.provider_token = ProviderToken(env.creds, now=env.clock.now, refresh_after=10 * 3600)
    assert isinstance(await env.channel.send(message(), device(1)), Delivered)
    env.clock.advance(3601)
    assert isinstance(await env.channel.send(message(), device(2)), Delivered)
    assert env.fake.answers == [(200, ""), (403, "ExpiredProviderToken"), (200, "")]


async def test_token_ages_out_after_40_minutes_without_a_refusal(env: Env) -> None:
    await env.channel.send(message(), device(1))
    env.clock.advance(41 * 60)
    await env.channel.send(message(), device(2))
    assert [status for status, _ in env.fake.answers] == [200, 200]
    assert len(env.fake.provider_tokens) == 2


async def test_wrong_key_is_an_auth_failure_without_token_churn(env: Env, tmp_path: Path) -> None:
    write_auth_key(tmp_path / "Other.p8")
    wrong = apns.load_credentials(
        config(key_file="Other.p8", base_url=env.base_url, ca_file=env.ca_file), tmp_path
    )
    async with ApnsChannel(wrong, now=env.clock.now) as channel:
        assert await channel.send(message(), TOKEN) == Fail("InvalidProviderToken", auth=True)
        assert await channel.send(message(), TOKEN) == Fail("InvalidProviderToken", auth=True)
        assert channel.provider_token.signed == 2  # one forced refresh, then no more for 20 minutes
        assert channel.stats.failed == 2
    assert env.fake.answers == [(403, "InvalidProviderToken")] * 3


async def test_oversized_or_malformed_input_fails_before_any_request(env: Env) -> None:
    huge = message(data={"blob": "x" * 5000})
    outcome = await env.channel.send(huge, TOKEN)
    assert isinstance(outcome, Fail) and outcome.reason.startswith("payload_too_large")
    assert isinstance(await env.channel.send(message(), "not-hex"), DropToken)
    reserved = await env.channel.send(message(data={"aps": 1}), TOKEN)
    assert isinstance(reserved, Fail) and reserved.reason.startswith("reserved_data_key")
    assert env.fake.requests == 0


async def test_network_errors_become_retry(key_dir: Path, creds: ApnsCredentials, tmp_path: Path) -> None:
    fake = FakeApns(TEAM, KEY_ID, TOPIC, creds.signing_key.public_key())
    async with tls_server(fake, cert_dir=tmp_path) as (base_url, ca_file):
        pass  # the server is gone: connections are refused
    live = apns.load_credentials(config(base_url=base_url, ca_file=ca_file), key_dir)
    async with ApnsChannel(live, timeout=5) as channel:
        assert await channel.send(message(), TOKEN) == Retry("network")
        assert channel.stats.extra["network_errors"] == 1
        assert channel.stats.retried == 1


async def test_server_certificate_is_verified(env: Env, key_dir: Path) -> None:
    untrusted = apns.load_credentials(config(base_url=env.base_url), key_dir)
    async with ApnsChannel(untrusted) as channel:
        assert await channel.send(message(), TOKEN) == Retry("network")
    assert env.fake.requests == 0
