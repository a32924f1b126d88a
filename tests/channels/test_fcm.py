"""FCM channel: the pure request builder and classifier, OAuth2 access-token timing, and real sends
to a local FCM + token endpoint fake over TLS + HTTP/2."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st

from bridge.channels import fcm
from bridge.channels.base import (
    AccessGrant,
    Delivered,
    DropToken,
    Fail,
    PayloadTooLargeForVendor,
    PushMessage,
    Retry,
    VendorRequest,
    VendorResponse,
)
from bridge.channels.fcm import AccessTokenSource, FcmChannel, FcmCredentials, build_request, classify
from mqttpush.clock import ManualClock
from mqttpush.errors import InvalidContent
from tests.fakes.fcm import FakeFcm, write_service_account
from tests.fakes.tls import tls_server

PROJECT = "mqttpush-test"
EMAIL = "push@mqttpush-test.iam.gserviceaccount.com"
TOKEN_URI = "https://oauth2.example.test/token"
NOW = 1_800_000_000.0
TOKEN = "fcm-registration-token:APA91b" + "x" * 100


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
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def creds_dir(tmp_path_factory: pytest.TempPathFactory, rsa_key: rsa.RSAPrivateKey) -> Path:
    directory = tmp_path_factory.mktemp("fcm-creds")
    write_service_account(directory / "sa.json", token_uri=TOKEN_URI, key=rsa_key)
    return directory


@pytest.fixture(scope="module")
def creds(creds_dir: Path) -> FcmCredentials:
    return fcm.load_credentials({"service_account_file": "sa.json"}, creds_dir)


def sent(request: VendorRequest) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(request.body)["message"]
    return result


# --- credentials ---------------------------------------------------------------------------------


def test_load_credentials_reads_the_service_account(creds: FcmCredentials, creds_dir: Path) -> None:
    assert creds.project_id == PROJECT
    assert creds.client_email == EMAIL
    assert creds.token_uri == TOKEN_URI
    assert creds.private_key_id == "0123456789abcdef"
    assert creds.service_account_file == creds_dir / "sa.json"
    assert creds.base_url == "https://fcm.googleapis.com"
    assert creds.ca_file is None


def test_credentials_never_show_the_key(creds: FcmCredentials, creds_dir: Path) -> None:
    pem = json.loads((creds_dir / "sa.json").read_text())["private_key"]
    secret_line = pem.splitlines()[1]
    for text in (repr(creds), str(creds), repr(AccessTokenSource(creds))):
        assert secret_line not in text
        assert "PRIVATE" not in text
        assert "private_key=" not in text


def _write(directory: Path, name: str, account: Any) -> str:
    (directory / name).write_text(account if isinstance(account, str) else json.dumps(account))
    return name


@pytest.mark.parametrize(
    ("change", "mentions"),
    [
        ({"drop": "project_id"}, "project_id"),
        ({"drop": "client_email"}, "client_email"),
        ({"drop": "private_key"}, "private_key"),
        ({"drop": "token_uri"}, "token_uri"),
        ({"set": {"project_id": "a/b"}}, "project_id"),
        ({"set": {"client_email": "nobody"}}, "client_email"),
        ({"set": {"token_uri": "http://oauth2.googleapis.com/token"}}, "token_uri"),
        ({"set": {"type": "authorized_user"}}, "service_account"),
        ({"set": {"private_key": "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n"}}, "PEM"),
        ({"ec_key": True}, "RSA"),
        ({"raw": "not json"}, "not JSON"),
        ({"raw": "[1, 2]"}, "JSON object"),
    ],
)
def test_bad_service_account_is_refused_with_a_clear_message(
    creds_dir: Path, tmp_path: Path, change: dict[str, Any], mentions: str
) -> None:
    account: Any = json.loads((creds_dir / "sa.json").read_text())
    if "drop" in change:
        del account[change["drop"]]
    account.update(change.get("set", {}))
    if change.get("ec_key"):
        account["private_key"] = (
            ec.generate_private_key(ec.SECP256R1())
            .private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            .decode()
        )
    if "raw" in change:
        account = change["raw"]
    name = _write(tmp_path, "sa.json", account)
    with pytest.raises(InvalidContent) as caught:
        fcm.load_credentials({"service_account_file": name}, tmp_path)
    assert caught.value.code == "bad_vendor_config"
    assert mentions in caught.value.message
    assert "nope" not in caught.value.message


@pytest.mark.parametrize(
    ("obj", "mentions"),
    [
        ({}, "service_account_file"),
        ({"service_account_file": "missing.json"}, "no such file"),
        ({"service_account_file": "sa.json", "base_url": "ftp://x"}, "base_url"),
        ({"service_account_file": "sa.json", "ca_file": "missing.pem"}, "ca_file"),
        ({"service_account_file": "sa.json", "project_id": "p"}, "unknown field"),
    ],
)
def test_bad_fcm_entry_is_refused(creds_dir: Path, obj: dict[str, Any], mentions: str) -> None:
    with pytest.raises(InvalidContent) as caught:
        fcm.load_credentials(obj, creds_dir)
    assert caught.value.code == "bad_vendor_config"
    assert mentions in caught.value.message


# --- build_request -------------------------------------------------------------------------------


def test_notification_maps_to_the_v1_message(creds: FcmCredentials) -> None:
    msg = message(
        priority="high",
        data={"order": 42, "flag": True, "nested": {"a": [1]}, "text": "t", "none": None},
        sound="ping",
        badge=3,
        category="REPLY",
        image="https://example.com/i.png",
        url="https://example.com/o/42",
        collapse_key="order-42",
    )
    request = build_request(msg, TOKEN, creds, "ya29.ACCESS")
    assert request.method == "POST"
    assert request.url == f"https://fcm.googleapis.com/v1/projects/{PROJECT}/messages:send"
    assert request.headers["authorization"] == "Bearer ya29.ACCESS"
    assert request.headers["content-type"].startswith("application/json")
    assert sent(request) == {
        "token": TOKEN,
        "notification": {"title": "Hello", "body": "World", "image": "https://example.com/i.png"},
        "data": {
            "order": "42",
            "flag": "true",
            "nested": '{"a":[1]}',
            "text": "t",
            "none": "null",
            "mqttpush_image": "https://example.com/i.png",
            "mqttpush_url": "https://example.com/o/42",
            "mqttpush_id": "m1",
        },
        "android": {
            "priority": "HIGH",
            "ttl": "3600s",
            "collapse_key": "order-42",
            "notification": {"sound": "ping", "click_action": "REPLY", "notification_count": 3},
        },
        "apns": {
            "headers": {
                "apns-priority": "10",
                "apns-push-type": "alert",
                "apns-expiration": str(int(NOW + 3600)),
                "apns-collapse-id": "order-42",
            },
            "payload": {"aps": {"sound": "ping", "category": "REPLY", "badge": 3, "mutable-content": 1}},
        },
        "webpush": {
            "headers": {"TTL": "3600", "Urgency": "high"},
            "fcm_options": {"link": "https://example.com/o/42"},
        },
    }


def test_data_only_message_stays_a_data_message(creds: FcmCredentials) -> None:
    body = sent(build_request(message("message", priority="high", data={"k": "v"}), TOKEN, creds, "A"))
    assert "notification" not in body
    assert "notification" not in body["android"]
    assert body["android"]["priority"] == "HIGH"
    assert body["data"] == {
        "k": "v",
        "mqttpush_title": "Hello",
        "mqttpush_body": "World",
        "mqttpush_id": "m1",
    }
    assert body["apns"] == {
        "headers": {
            "apns-priority": "5",
            "apns-push-type": "background",
            "apns-expiration": str(int(NOW + 3600)),
        },
        "payload": {"aps": {"content-available": 1}},
    }
    assert body["webpush"] == {"headers": {"TTL": "3600", "Urgency": "high"}}


def test_normal_priority_and_ttl_bounds(creds: FcmCredentials) -> None:
    body = sent(build_request(message(ttl=0), TOKEN, creds, "A"))
    assert body["android"] == {"priority": "NORMAL", "ttl": "0s"}
    assert body["apns"]["headers"]["apns-expiration"] == "0"
    assert body["webpush"]["headers"] == {"TTL": "0", "Urgency": "normal"}
    long = sent(build_request(message(ttl=60 * 24 * 3600), TOKEN, creds, "A"))
    assert long["android"]["ttl"] == f"{28 * 24 * 3600}s"  # FCM's maximum


@pytest.mark.parametrize("key", ["from", "gcm", "google.sent_time", "googlefoo", "mqttpush_id"])
def test_reserved_data_keys_are_refused(creds: FcmCredentials, key: str) -> None:
    with pytest.raises(InvalidContent) as caught:
        build_request(message(data={key: "x"}), TOKEN, creds, "A")
    assert caught.value.code == "reserved_data_key"


@pytest.mark.parametrize("token", ["", " padded ", "line\nbreak"])
def test_unusable_registration_token_is_refused(creds: FcmCredentials, token: str) -> None:
    with pytest.raises(InvalidContent) as caught:
        build_request(message(), token, creds, "A")
    assert caught.value.code == "bad_device_token"


@given(extra=st.integers(min_value=-200, max_value=200), wide=st.booleans())
def test_payload_limit_is_4096_bytes_of_notification_and_data(
    creds: FcmCredentials, extra: int, wide: bool
) -> None:
    def size(msg: PushMessage) -> int:
        return fcm.payload_size(sent(build_request(msg, TOKEN, creds, "A")))

    base = size(message(data={"f": ""}))
    char, width = ("€", 3) if wide else ("x", 1)
    count, rest = divmod(fcm.MAX_PAYLOAD_BYTES + extra - base, width)
    msg = message(data={"f": char * count + "x" * rest})
    expected = base + count * width + rest
    if expected > fcm.MAX_PAYLOAD_BYTES:
        with pytest.raises(PayloadTooLargeForVendor):
            build_request(msg, TOKEN, creds, "A")
    else:
        assert size(msg) == expected


# --- classify ------------------------------------------------------------------------------------


def google(
    code: int, status: str, message: str, error_code: str | None = None, headers: dict[str, str] | None = None
) -> VendorResponse:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if error_code:
        error["details"] = [{"@type": fcm.FCM_ERROR_TYPE, "errorCode": error_code}]
    return VendorResponse(code, headers or {}, json.dumps({"error": error}).encode())


def field_violation(path: str, description: str) -> VendorResponse:
    detail = {"@type": fcm.BAD_REQUEST_TYPE, "fieldViolations": [{"field": path, "description": description}]}
    error = {"code": 400, "message": description, "status": "INVALID_ARGUMENT", "details": [detail]}
    return VendorResponse(400, {}, json.dumps({"error": error}).encode())


BAD_TOKEN = "The registration token is not a valid FCM registration token"


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (
            VendorResponse(200, {}, b'{"name": "projects/p/messages/0:1%ab"}'),
            Delivered("projects/p/messages/0:1%ab"),
        ),
        (
            google(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED"),
            DropToken("UNREGISTERED: Requested entity was not found."),
        ),
        (
            google(400, "INVALID_ARGUMENT", BAD_TOKEN, "INVALID_ARGUMENT"),
            DropToken(f"INVALID_ARGUMENT: {BAD_TOKEN}"),
        ),
        (field_violation("message.token", "Invalid value"), DropToken("INVALID_ARGUMENT: Invalid value")),
        (
            field_violation(
                "message.data[0].value", "Invalid value at 'message.data[0].value' (TYPE_STRING), 12"
            ),
            Fail("INVALID_ARGUMENT: Invalid value at 'message.data[0].value' (TYPE_STRING), 12"),
        ),
        (
            google(400, "INVALID_ARGUMENT", "Message is too big", "INVALID_ARGUMENT"),
            Fail("INVALID_ARGUMENT: Message is too big"),
        ),
        (
            google(403, "PERMISSION_DENIED", "SenderId mismatch", "SENDER_ID_MISMATCH"),
            Fail("SENDER_ID_MISMATCH: SenderId mismatch", auth=True),
        ),
        (
            google(403, "PERMISSION_DENIED", "Permission denied"),
            Fail("PERMISSION_DENIED: Permission denied", auth=True),
        ),
        (
            google(401, "UNAUTHENTICATED", "Request had invalid authentication credentials."),
            Fail("UNAUTHENTICATED: Request had invalid authentication credentials.", auth=True),
        ),
        (
            google(
                401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service", "THIRD_PARTY_AUTH_ERROR"
            ),
            Fail("THIRD_PARTY_AUTH_ERROR: Auth error from APNS or Web Push Service", auth=True),
        ),
        (
            google(429, "RESOURCE_EXHAUSTED", "Quota exceeded", "QUOTA_EXCEEDED", {"retry-after": "30"}),
            Retry("QUOTA_EXCEEDED: Quota exceeded", after=30.0),
        ),
        (
            google(429, "RESOURCE_EXHAUSTED", "Quota exceeded", "QUOTA_EXCEEDED"),
            Retry("QUOTA_EXCEEDED: Quota exceeded", after=60.0),
        ),
        (
            google(503, "UNAVAILABLE", "The service is currently unavailable.", "UNAVAILABLE"),
            Retry("UNAVAILABLE: The service is currently unavailable."),
        ),
        (
            google(503, "UNAVAILABLE", "Busy", None, {"retry-after": "12"}),
            Retry("UNAVAILABLE: Busy", after=12.0),
        ),
        (
            google(500, "INTERNAL", "Internal error encountered.", "INTERNAL"),
            Retry("INTERNAL: Internal error encountered."),
        ),
        (VendorResponse(502, {}, b"<html>Bad Gateway</html>"), Retry("HTTP 502")),
        (
            google(404, "NOT_FOUND", "Requested entity was not found."),
            Fail("NOT_FOUND: Requested entity was not found."),
        ),
        (VendorResponse(400, {}, b"not json"), Fail("HTTP 400")),
    ],
)
def test_classify_follows_the_error_code_reference(response: VendorResponse, expected: object) -> None:
    assert classify(response) == expected


def test_only_a_plain_401_asks_for_a_new_access_token() -> None:
    assert fcm.needs_new_access_token(
        google(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
    )
    assert fcm.needs_new_access_token(VendorResponse(401, {}, b""))
    assert not fcm.needs_new_access_token(
        google(401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service", "THIRD_PARTY_AUTH_ERROR")
    )
    assert not fcm.needs_new_access_token(
        google(403, "PERMISSION_DENIED", "SenderId mismatch", "SENDER_ID_MISMATCH")
    )


@given(status=st.integers(min_value=100, max_value=599), body=st.binary(max_size=64))
def test_classify_never_raises(status: int, body: bytes) -> None:
    assert isinstance(classify(VendorResponse(status, {}, body)), Delivered | Retry | DropToken | Fail)


# --- OAuth2 access token -------------------------------------------------------------------------


def test_token_request_is_a_signed_jwt_bearer_grant(
    creds: FcmCredentials, rsa_key: rsa.RSAPrivateKey
) -> None:
    request = fcm.build_token_request(creds, NOW + 0.7)
    assert (request.method, request.url) == ("POST", TOKEN_URI)
    assert request.headers == {"content-type": "application/x-www-form-urlencoded"}
    form = parse_qs(request.body.decode())
    assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
    [assertion] = form["assertion"]
    assert jwt.get_unverified_header(assertion) == {"alg": "RS256", "kid": "0123456789abcdef", "typ": "JWT"}
    claims = jwt.decode(
        assertion,
        rsa_key.public_key(),
        algorithms=["RS256"],
        audience=TOKEN_URI,
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims == {
        "iss": EMAIL,
        "scope": "https://www.googleapis.com/auth/firebase.messaging",
        "aud": TOKEN_URI,
        "iat": int(NOW),
        "exp": int(NOW) + 3600,
    }


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (
            VendorResponse(
                200, {}, b'{"access_token": "ya29.a", "expires_in": 3599, "token_type": "Bearer"}'
            ),
            AccessGrant("ya29.a", NOW + 3599),
        ),
        (
            VendorResponse(200, {}, b'{"access_token": "ya29.a"}'),
            Fail("oauth: token response without access_token/expires_in", auth=True),
        ),
        (
            VendorResponse(
                400, {}, b'{"error": "invalid_grant", "error_description": "Invalid JWT Signature."}'
            ),
            Fail("oauth invalid_grant: Invalid JWT Signature.", auth=True),
        ),
        (VendorResponse(503, {"retry-after": "3"}, b""), Retry("oauth HTTP 503", after=3.0)),
        (VendorResponse(429, {}, b'{"error": "rate_limit_exceeded"}'), Retry("oauth rate_limit_exceeded")),
    ],
)
def test_classify_token_response(response: VendorResponse, expected: object) -> None:
    assert fcm.classify_token_response(response, NOW) == expected


def test_access_grant_hides_the_token() -> None:
    assert "ya29" not in repr(AccessGrant("ya29.secret", NOW))


class TokenEndpoint:
    """A scripted token endpoint for AccessToken unit tests (no network)."""

    def __init__(self) -> None:
        self.calls = 0
        self.entered = asyncio.Event()
        self.gate: asyncio.Event | None = None
        self.answer: VendorResponse | None = None

    async def __call__(self, request: VendorRequest) -> VendorResponse:
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.answer is not None:
            return self.answer
        body = {"access_token": f"ya29.token{self.calls}", "expires_in": 3600}
        return VendorResponse(200, {}, json.dumps(body).encode())


async def test_access_token_is_cached_until_shortly_before_expiry(creds: FcmCredentials) -> None:
    clock = ManualClock(NOW)
    endpoint = TokenEndpoint()
    tokens = AccessTokenSource(creds, now=clock.now)
    assert await tokens.get(endpoint) == "ya29.token1"
    clock.advance(3600 - 301)
    assert await tokens.get(endpoint) == "ya29.token1"
    clock.advance(2)  # inside the 5-minute margin
    assert tokens.cached() is None
    assert await tokens.get(endpoint) == "ya29.token2"
    assert endpoint.calls == tokens.fetched == 2


async def test_rejected_access_token_is_fetched_again_once(creds: FcmCredentials) -> None:
    endpoint = TokenEndpoint()
    tokens = AccessTokenSource(creds, now=ManualClock(NOW).now)
    first = await tokens.get(endpoint)
    assert isinstance(first, str)
    tokens.invalidate(first)
    second = await tokens.get(endpoint)
    assert second != first
    tokens.invalidate(first)  # a concurrent send's stale rejection changes nothing
    assert await tokens.get(endpoint) == second
    assert endpoint.calls == 2


async def test_concurrent_first_sends_share_one_token_fetch(creds: FcmCredentials) -> None:
    endpoint = TokenEndpoint()
    endpoint.gate = asyncio.Event()
    tokens = AccessTokenSource(creds, now=ManualClock(NOW).now)
    waiters = [asyncio.create_task(tokens.get(endpoint)) for _ in range(50)]
    await asyncio.wait_for(endpoint.entered.wait(), 5)  # the first holds the fetch, the rest queue behind it
    endpoint.gate.set()
    assert set(await asyncio.gather(*waiters)) == {"ya29.token1"}
    assert endpoint.calls == 1


async def test_token_endpoint_refusal_is_returned_not_cached(creds: FcmCredentials) -> None:
    endpoint = TokenEndpoint()
    endpoint.answer = VendorResponse(
        400, {}, b'{"error": "invalid_grant", "error_description": "Invalid JWT Signature."}'
    )
    tokens = AccessTokenSource(creds, now=ManualClock(NOW).now)
    assert await tokens.get(endpoint) == Fail("oauth invalid_grant: Invalid JWT Signature.", auth=True)
    assert tokens.cached() is None
    endpoint.answer = None
    assert await tokens.get(endpoint) == "ya29.token2"


# --- real sends over TLS + HTTP/2 ----------------------------------------------------------------


@dataclass
class Env:
    fake: FakeFcm
    channel: FcmChannel
    clock: ManualClock
    base_url: str
    ca_file: str
    directory: Path


@pytest.fixture
async def env(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> AsyncIterator[Env]:
    clock = ManualClock(NOW)
    fake = FakeFcm(PROJECT, EMAIL, rsa_key.public_key(), now=clock.now)
    async with tls_server(fake) as (base_url, ca_file):
        write_service_account(tmp_path / "sa.json", token_uri=f"{base_url}/token", key=rsa_key)
        live = fcm.load_credentials(
            {"service_account_file": "sa.json", "base_url": base_url, "ca_file": ca_file}, tmp_path
        )
        async with FcmChannel(live, now=clock.now) as channel:
            yield Env(fake, channel, clock, base_url, ca_file, tmp_path)


async def test_send_delivers_over_http2(env: Env) -> None:
    outcome = await env.channel.send(message(priority="high", data={"n": 1}), TOKEN)
    [got] = env.fake.received
    assert outcome == Delivered(got.name)
    assert got.http_version == "2"
    assert got.message["token"] == TOKEN
    assert got.message["notification"] == {"title": "Hello", "body": "World"}
    assert got.message["data"] == {"n": "1", "mqttpush_id": "m1"}
    assert got.headers["authorization"].startswith("Bearer ya29.")
    assert env.fake.token_requests == 1
    assert env.channel.stats.sent == env.channel.stats.delivered == 1


async def test_200_concurrent_sends_share_one_http2_connection_and_one_token(env: Env) -> None:
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(env.channel.send(message("message"), f"{TOKEN}-{n}") for n in range(200))), 15
    )
    assert all(isinstance(o, Delivered) for o in outcomes)
    assert len({o.vendor_id for o in outcomes if isinstance(o, Delivered)}) == 200
    assert env.fake.http_versions == {"2"}
    assert len(env.fake.connections) == 1  # token endpoint and messages:send on the same connection
    assert env.fake.token_requests == 1
    assert env.channel.stats.delivered == 200


async def test_vendor_answers_become_outcomes(env: Env) -> None:
    env.fake.unregistered.add("gone")
    env.fake.invalid.add("garbage")
    env.fake.sender_mismatch.add("other-project")
    env.fake.third_party_auth.add("ios-device")
    assert await env.channel.send(message(), "gone") == DropToken(
        "UNREGISTERED: Requested entity was not found."
    )
    assert await env.channel.send(message(), "garbage") == DropToken(f"INVALID_ARGUMENT: {BAD_TOKEN}")
    assert await env.channel.send(message(), "other-project") == Fail(
        "SENDER_ID_MISMATCH: SenderId mismatch", auth=True
    )
    third = await env.channel.send(message(), "ios-device")
    assert isinstance(third, Fail) and third.auth and third.reason.startswith("THIRD_PARTY_AUTH_ERROR")
    assert env.fake.token_requests == 1  # THIRD_PARTY_AUTH_ERROR is not cured by a new access token
    assert env.channel.stats.dropped_tokens == 2
    assert env.channel.stats.failed == 2


async def test_quota_and_unavailability_are_retried(env: Env) -> None:
    env.fake.quota_once.add(TOKEN)
    env.fake.unavailable_once.add("busy")
    quota = await env.channel.send(message(), TOKEN)
    assert isinstance(quota, Retry) and quota.reason.startswith("QUOTA_EXCEEDED") and quota.after == 30.0
    assert isinstance(await env.channel.send(message(), TOKEN), Delivered)
    unavailable = await env.channel.send(message(), "busy")
    assert isinstance(unavailable, Retry) and unavailable.reason.startswith("UNAVAILABLE")
    assert isinstance(await env.channel.send(message(), "busy"), Delivered)
    assert env.channel.stats.retried == 2


async def test_401_gets_a_new_access_token_and_the_send_repeated(env: Env) -> None:
    assert isinstance(await env.channel.send(message(), TOKEN), Delivered)
    env.fake.revoke_access_tokens()
    assert isinstance(await env.channel.send(message(), TOKEN), Delivered)
    assert [status for status, _ in env.fake.answers] == [200, 401, 200]
    assert env.fake.token_requests == 2
    assert env.channel.stats.extra["auth_resends"] == 1
    assert env.channel.stats.sent == env.channel.stats.delivered == 2


async def test_access_token_is_renewed_before_it_expires(env: Env) -> None:
    await env.channel.send(message(), TOKEN)
    env.clock.advance(3599 - 200)
    await env.channel.send(message(), TOKEN)
    assert env.fake.token_requests == 2
    assert [status for status, _ in env.fake.answers] == [200, 200]  # never sent an expired one


async def test_token_endpoint_refusal_is_an_auth_failure(env: Env) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    write_service_account(env.directory / "wrong.json", token_uri=f"{env.base_url}/token", key=other)
    wrong = fcm.load_credentials(
        {"service_account_file": "wrong.json", "base_url": env.base_url, "ca_file": env.ca_file},
        env.directory,
    )
    async with FcmChannel(wrong) as channel:
        assert await channel.send(message(), TOKEN) == Fail(
            "oauth invalid_grant: Invalid JWT Signature.", auth=True
        )
        assert channel.stats.failed == 1
    assert env.fake.answers == []  # nothing reached messages:send


async def test_oversized_or_malformed_input_fails_before_sending(env: Env) -> None:
    outcome = await env.channel.send(message(data={"blob": "x" * 5000}), TOKEN)
    assert isinstance(outcome, Fail) and outcome.reason.startswith("payload_too_large")
    assert isinstance(await env.channel.send(message(), ""), DropToken)
    reserved = await env.channel.send(message(data={"google.x": "1"}), TOKEN)
    assert isinstance(reserved, Fail) and reserved.reason.startswith("reserved_data_key")
    assert env.fake.answers == []


async def test_network_errors_become_retry(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    fake = FakeFcm(PROJECT, EMAIL, rsa_key.public_key())
    async with tls_server(fake, cert_dir=tmp_path / "tls") as (base_url, ca_file):
        pass  # the server is gone: connections are refused
    write_service_account(tmp_path / "sa.json", token_uri=f"{base_url}/token", key=rsa_key)
    live = fcm.load_credentials(
        {"service_account_file": "sa.json", "base_url": base_url, "ca_file": ca_file}, tmp_path
    )
    async with FcmChannel(live, timeout=5) as channel:
        assert await channel.send(message(), TOKEN) == Retry("network")
        assert channel.stats.extra["network_errors"] == 1
        assert channel.stats.retried == 1
