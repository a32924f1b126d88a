"""Huawei Push Kit: credentials, the pure request builder and classifier, the token cache, and real
sends to the local fake over TLS + HTTP/2."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.channels import hms
from bridge.channels.base import (
    AccessGrant,
    Delivered,
    DropToken,
    Fail,
    PayloadTooLargeForVendor,
    PushMessage,
    Retry,
    VendorResponse,
)
from mqttpush.errors import InvalidContent
from tests.fakes.hms import FakeHms
from tests.fakes.tls import make_ca, tls_server

T = TypeVar("T")
TOKEN = "AKz9ZQxHMS-device-token-0001"
CREDS = hms.HmsCredentials(app_id="104012345", client_id="104012345", client_secret="s3cr3t")


def envelope(kind: str = "notification", **extra: Any) -> dict[str, Any]:
    return {
        "id": "m1",
        "app": "app1",
        "type": kind,
        "title": "Hello",
        "body": "World",
        "data": {"k": "v"},
        "sent_at": 1_800_000_000,
        "expires_at": 1_800_003_600,
        **extra,
    }


def push(
    kind: str = "notification",
    *,
    ttl: int = 3600,
    priority: str = "normal",
    collapse_key: str | None = None,
    **extra: Any,
) -> PushMessage:
    return PushMessage(
        msg_id="m1", envelope=envelope(kind, **extra), ttl=ttl, priority=priority, collapse_key=collapse_key
    )


def answer(status: int, body: Any = None, **headers: str) -> VendorResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
    return VendorResponse(status=status, headers=headers, body=raw)


def sent_body(message: PushMessage, token: str = TOKEN) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(hms.build_request(message, token, CREDS, "access").body)
    return result


async def within(awaitable: Awaitable[T], seconds: float = 10.0) -> T:
    return await asyncio.wait_for(awaitable, seconds)


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


# --- credentials ---------------------------------------------------------------------------


def test_load_credentials_reads_every_key(tmp_path: Path) -> None:
    ca_file, _, _ = make_ca(tmp_path / "ca")
    creds = hms.load_credentials(
        {
            "app_id": "104012345",
            "client_id": "104099999",
            "client_secret": "s3cr3t",
            "base_url": "https://push.example/",
            "token_url": "https://oauth.example/token",
            "ca_file": "ca/ca.pem",
        },
        tmp_path,
    )
    assert creds == hms.HmsCredentials(
        app_id="104012345",
        client_id="104099999",
        client_secret="s3cr3t",
        base_url="https://push.example",
        token_url="https://oauth.example/token",
        ca_file=ca_file,
    )
    assert "s3cr3t" not in repr(creds)


def test_load_credentials_defaults_to_huawei_production(tmp_path: Path) -> None:
    creds = hms.load_credentials({"app_id": "104012345", "client_secret": "s"}, tmp_path)
    assert creds.client_id == "104012345"
    assert creds.base_url == "https://push-api.cloud.huawei.com"
    assert creds.token_url == "https://oauth-login.cloud.huawei.com/oauth2/v3/token"
    assert creds.ca_file is None


@pytest.mark.parametrize(
    ("obj", "names"),
    [
        ({"client_secret": "s"}, "app_id"),
        ({"app_id": "1"}, "client_secret"),
        ({"app_id": "1", "client_secret": " "}, "client_secret"),
        ({"app_id": 1, "client_secret": "s"}, "app_id"),
        ({"app_id": "1", "client_secret": "s", "base_url": "http://push.example"}, "base_url"),
        ({"app_id": "1", "client_secret": "s", "token_url": "ftp://x"}, "token_url"),
        ({"app_id": "1", "client_secret": "s", "ca_file": "missing.pem"}, "ca_file"),
        (["app_id"], "object"),
    ],
)
def test_load_credentials_rejects_bad_config(tmp_path: Path, obj: Any, names: str) -> None:
    with pytest.raises(InvalidContent) as info:
        hms.load_credentials(obj, tmp_path)
    assert info.value.code == "bad_vendor_config"
    assert names in info.value.message


# --- build_request -------------------------------------------------------------------------


def test_notification_request_follows_push_kit() -> None:
    request = hms.build_request(
        push(priority="high", image="https://img.example/a.png"), TOKEN, CREDS, "tok/+="
    )
    assert request.method == "POST"
    assert request.url == "https://push-api.cloud.huawei.com/v1/104012345/messages:send"
    assert request.headers["authorization"] == "Bearer tok/+="
    assert request.headers["content-type"].startswith("application/json")
    body = json.loads(request.body)
    assert body["validate_only"] is False
    message = body["message"]
    assert message["token"] == [TOKEN]
    assert json.loads(message["data"]) == envelope(image="https://img.example/a.png")
    assert message["android"] == {
        "urgency": "HIGH",
        "ttl": "3600s",
        "notification": {
            "title": "Hello",
            "body": "World",
            "click_action": {"type": 3},
            "image": "https://img.example/a.png",
            "default_sound": True,
        },
    }


def test_data_message_has_no_notification() -> None:
    message = sent_body(push("message"))["message"]
    assert message["android"] == {"urgency": "NORMAL", "ttl": "3600s"}
    assert json.loads(message["data"])["type"] == "message"


def test_collapse_key_becomes_group_and_tag() -> None:
    android = sent_body(push(collapse_key="score"))["message"]["android"]
    assert android["collapse_key"] == hms.collapse_group("score")
    assert android["notification"]["tag"] == "score"


@given(st.text(min_size=1))
def test_collapse_group_is_stable_and_in_push_kit_range(key: str) -> None:
    assert 1 <= hms.collapse_group(key) <= 100
    assert hms.collapse_group(key) == hms.collapse_group(key)


@pytest.mark.parametrize(("ttl", "sent"), [(0, "1s"), (60, "60s"), (40 * 86400, "1296000s")])
def test_ttl_is_clamped_to_what_push_kit_accepts(ttl: int, sent: str) -> None:
    assert sent_body(push(ttl=ttl))["message"]["android"]["ttl"] == sent


def test_custom_sound_and_non_https_image() -> None:
    notification = sent_body(push(sound="chime", image="http://img.example/a.png"))["message"]["android"][
        "notification"
    ]
    assert notification["sound"] == "/raw/chime"
    assert notification["default_sound"] is False
    assert "image" not in notification


def test_payload_limit() -> None:
    # The limit counts the message content (data + android), not the token list.
    fits = push("message", body="")
    base = len(
        json.dumps(
            {
                "data": json.dumps(fits.envelope, separators=(",", ":")),
                "android": {"urgency": "NORMAL", "ttl": "3600s"},
            },
            separators=(",", ":"),
        )
    )
    hms.build_request(push("message", body="x" * (4096 - base)), TOKEN * 50, CREDS, "a")
    with pytest.raises(PayloadTooLargeForVendor):
        hms.build_request(push("message", body="x" * (4097 - base)), TOKEN, CREDS, "a")


# --- classify ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "outcome"),
    [
        (answer(200, {"code": "80000000", "msg": "Success", "requestId": "1570"}), Delivered("1570")),
        (answer(400, {"code": "80300007", "msg": "All the tokens are invalid"}), DropToken("invalid_token")),
        (
            answer(401, {"code": "80200001", "msg": "Oauth authentication error"}),
            Fail("oauth_error", auth=True),
        ),
        (
            answer(401, {"code": "80200003", "msg": "Oauth token expired"}),
            Fail("oauth_token_expired", auth=True),
        ),
        (answer(403, {"code": "80300002", "msg": "no permission"}), Fail("no_push_permission", auth=True)),
        (answer(400, {"code": "80300008", "msg": "too big"}), Fail("payload_too_large")),
        (answer(500, {"code": "81000001", "msg": "internal"}), Retry("vendor_internal_error")),
        (answer(400, {"code": "80100001", "msg": "param"}), Fail("parameter_error")),
        (answer(400, {"code": "80100003", "msg": "structure"}), Fail("incorrect_message_structure")),
        (answer(400, {"code": "80100013", "msg": "collapse"}), Fail("invalid_collapse_key")),
        (answer(400, {"code": "80100016", "msg": "sensitive"}), Fail("sensitive_content")),
        (answer(400, {"code": "80300010", "msg": "count"}), Fail("token_count_out_of_range")),
        (answer(400, {"code": "80300011", "msg": "high"}), Fail("no_high_priority_permission")),
        (answer(503, b"traffic control", **{"retry-after": "7"}), Retry("rate_limited", after=7.0)),
        (answer(429, b""), Retry("rate_limited")),
        (answer(502, b"<html>bad gateway</html>"), Retry("http_502")),
        (answer(401, b""), Fail("unauthorized", auth=True)),
        (answer(404, b"not found"), Fail("http_404")),
        (answer(400, {"code": "89999999", "msg": "new"}), Fail("http_400_code_89999999")),
    ],
)
def test_classify(response: VendorResponse, outcome: object) -> None:
    assert hms.classify(response) == outcome


@pytest.mark.parametrize(
    ("msg", "outcome"),
    [
        (json.dumps({"success": 0, "failure": 1, "illegal_tokens": [TOKEN]}), DropToken("illegal_token")),
        (json.dumps({"success": 0, "failure": 1}), DropToken("illegal_token")),
        ("Check Parameter Partial Success.", DropToken("illegal_token")),
        (json.dumps({"success": 1, "failure": 0, "illegal_tokens": []}), Delivered("77")),
    ],
)
def test_partial_success_drops_our_single_token(msg: str, outcome: object) -> None:
    assert hms.classify(answer(200, {"code": "80100000", "msg": msg, "requestId": "77"})) == outcome


@given(st.integers(100, 599), st.binary(max_size=200))
def test_classify_never_raises(status: int, body: bytes) -> None:
    assert isinstance(hms.classify(answer(status, body)), Delivered | Retry | DropToken | Fail)


# --- OAuth ---------------------------------------------------------------------------------


def test_token_request_is_client_credentials_grant() -> None:
    request = hms.build_token_request(CREDS)
    assert request.url == hms.DEFAULT_TOKEN_URL
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.body == b"grant_type=client_credentials&client_id=104012345&client_secret=s3cr3t"


def test_classify_token_response() -> None:
    ok = hms.classify_token_response(answer(200, {"access_token": "CV1/2+", "expires_in": 3600}), 1000.0)
    assert ok == AccessGrant("CV1/2+", 4600.0)
    assert "CV1" not in repr(ok)
    refused = answer(400, {"error": 1101, "error_description": "invalid client", "sub_error": 20152})
    assert hms.classify_token_response(refused, 0) == Fail("oauth_rejected: invalid client", auth=True)
    assert hms.classify_token_response(answer(503, b"", **{"retry-after": "2"}), 0) == Retry(
        "oauth_unavailable", 2.0
    )
    assert isinstance(hms.classify_token_response(answer(200, b"not json"), 0), Fail)


def test_token_cache_expires_early_and_invalidates_only_the_refused_token() -> None:
    clock = Clock(1000.0)
    cache = hms.AccessTokenCache(clock.now, margin=300)
    assert cache.get() is None
    cache.put(AccessGrant("a", 4600.0))
    assert cache.get() == "a"
    clock.t = 4299.0
    assert cache.get() == "a"
    clock.t = 4300.0
    assert cache.get() is None
    cache.put(AccessGrant("b", 9000.0))
    cache.invalidate("a")  # a late refusal of the old token keeps the new one
    assert cache.get() == "b"
    cache.invalidate("b")
    assert cache.get() is None


# --- the channel against the fake over TLS + HTTP/2 -----------------------------------------


@dataclass
class Rig:
    fake: FakeHms
    channel: hms.HmsChannel
    clock: Clock
    base_url: str
    ca_file: str


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    fake = FakeHms()
    clock = Clock()
    async with tls_server(fake.app) as (base_url, ca_file):
        creds = hms.load_credentials(fake.vendor_config(base_url, ca_file), tmp_path)
        async with hms.HmsChannel(creds, now=clock.now) as channel:
            yield Rig(fake, channel, clock, base_url, ca_file)


async def test_send_delivers_over_http2_with_one_token_fetch(rig: Rig) -> None:
    first = await within(rig.channel.send(push(), TOKEN))
    second = await within(rig.channel.send(push("message"), TOKEN))
    assert isinstance(first, Delivered) and first.vendor_id
    assert isinstance(second, Delivered)
    assert rig.fake.token_requests == 1
    assert set(rig.fake.http_versions) == {"2"}
    assert [json.loads(m["data"])["type"] for m in rig.fake.messages] == ["notification", "message"]
    assert rig.fake.messages[0]["android"]["notification"]["title"] == "Hello"
    assert rig.channel.stats.sent == 2 and rig.channel.stats.delivered == 2


async def test_invalid_token_is_dropped(rig: Rig) -> None:
    rig.fake.invalid_tokens.add("gone-token")
    assert await within(rig.channel.send(push(), "gone-token")) == DropToken("invalid_token")
    assert rig.channel.stats.dropped_tokens == 1
    assert rig.fake.messages == []


async def test_expired_access_token_is_refetched_once(rig: Rig) -> None:
    assert isinstance(await within(rig.channel.send(push(), TOKEN)), Delivered)
    rig.fake.expire_auth_once = True
    assert isinstance(await within(rig.channel.send(push(), TOKEN)), Delivered)
    assert rig.fake.token_requests == 2
    assert rig.channel.stats.extra["auth_refreshes"] == 1
    assert len(rig.fake.messages) == 2


async def test_token_is_refreshed_before_it_expires(rig: Rig) -> None:
    await within(rig.channel.send(push(), TOKEN))
    rig.clock.t += 3600 - hms.TOKEN_REFRESH_MARGIN - 1
    await within(rig.channel.send(push(), TOKEN))
    assert rig.fake.token_requests == 1
    rig.clock.t += 1
    await within(rig.channel.send(push(), TOKEN))
    assert rig.fake.token_requests == 2


async def test_traffic_control_retries_then_delivers(rig: Rig) -> None:
    rig.fake.throttle_once.add(TOKEN)
    assert await within(rig.channel.send(push(), TOKEN)) == Retry("rate_limited", after=3.0)
    assert isinstance(await within(rig.channel.send(push(), TOKEN)), Delivered)
    assert rig.channel.stats.retried == 1 and rig.channel.stats.delivered == 1


async def test_too_large_is_failed_without_sending(rig: Rig) -> None:
    outcome = await within(rig.channel.send(push("message", body="x" * 5000), TOKEN))
    assert outcome == Fail("payload_too_large")
    assert rig.fake.messages == []
    assert rig.channel.stats.failed == 1


async def test_wrong_client_secret_is_an_app_alarm_held_for_a_minute(rig: Rig, tmp_path: Path) -> None:
    config = {**rig.fake.vendor_config(rig.base_url, rig.ca_file), "client_secret": "wrong"}
    refused = Fail("oauth_rejected: invalid client", auth=True)
    async with hms.HmsChannel(hms.load_credentials(config, tmp_path), now=rig.clock.now) as channel:
        assert await within(channel.send(push(), TOKEN)) == refused
        assert await within(channel.send(push(), TOKEN)) == refused
        assert rig.fake.token_requests == 1  # the refusal is reused, Huawei is not asked per message
        rig.clock.t += hms.TOKEN_REFUSAL_HOLD
        assert await within(channel.send(push(), TOKEN)) == refused
        assert rig.fake.token_requests == 2
        assert channel.stats.failed == 3
    assert rig.fake.messages == []


async def test_concurrency_is_bounded(rig: Rig, tmp_path: Path) -> None:
    rig.fake.hold = asyncio.Event()
    creds = hms.load_credentials(rig.fake.vendor_config(rig.base_url, rig.ca_file), tmp_path)
    async with hms.HmsChannel(creds, max_concurrency=3) as channel:
        sends = [asyncio.create_task(channel.send(push(), f"{TOKEN}-{i}")) for i in range(8)]
        await within(rig.fake.wait_in_flight(3))
        rig.fake.hold.set()
        outcomes = await within(asyncio.gather(*sends))
    assert all(isinstance(o, Delivered) for o in outcomes)
    assert rig.fake.max_in_flight == 3
    assert len(rig.fake.messages) == 8


async def test_network_error_is_retry(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    creds = hms.HmsCredentials(
        app_id="1",
        client_id="1",
        client_secret="s",
        base_url=f"https://127.0.0.1:{port}",
        token_url=f"https://127.0.0.1:{port}/t",
    )
    async with hms.HmsChannel(creds) as channel:
        assert await within(channel.send(push(), TOKEN)) == Retry("network")
        assert channel.stats.retried == 1
