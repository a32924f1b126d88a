"""Issue 17 part 3: mqttpush as a UnifiedPush distributor and Web Push (RFC 8030) push service.

Against the real server: a device asks for an endpoint, a real Web Push application-server
library (pywebpush, VAPID, RFC 8291 encryption) pushes to it over HTTP, and the device gets the
bytes over MQTT and decrypts them. Topic replacement, TTL 0, removal (410), size (413), rate
(429), VAPID (401/403) and every refusal's JSON shape are checked the same way.
"""

from __future__ import annotations

import base64
import json
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from py_vapid import Vapid01, Vapid02
from pywebpush import webpush

from mqttpush.device import DeviceClient
from mqttpush.errors import ClientError
from tests.conftest import Running, _serve

WAIT = 15.0


@dataclass
class Phone:
    """A registered device with a DeviceClient that records what it gets."""

    device_id: str
    token: str
    client: DeviceClient
    pushes: queue.Queue[tuple[dict[str, Any], bytes]] = field(default_factory=queue.Queue)
    messages: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)

    def next_push(self, timeout: float = WAIT) -> tuple[dict[str, Any], bytes]:
        try:
            return self.pushes.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no push within {timeout}s") from None


def new_phone(r: Running) -> Phone:
    ((device_id, token),) = r.register()
    pushes: queue.Queue[tuple[dict[str, Any], bytes]] = queue.Queue()
    messages: queue.Queue[dict[str, Any]] = queue.Queue()
    client = DeviceClient.from_server(
        r.url,
        device_id,
        token,
        on_push=lambda env, plain: pushes.put((env, plain)),
        on_message=messages.put,
    )
    return Phone(device_id, token, client, pushes, messages)


def vapid_key(v: Vapid01) -> str:
    raw = v.public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def new_vapid(cls: type[Vapid01] = Vapid02) -> Vapid01:
    v = cls()
    v.generate_keys()
    return v


def send(
    sub: dict[str, Any], data: str, v: Vapid01 | None = None, ttl: int = 60, **kw: Any
) -> httpx.Response:
    """pywebpush, as an application server runs it; the answer whatever its status."""
    from pywebpush import WebPushException

    claims = {"sub": "mailto:ops@example.com"} if v is not None else None
    try:
        resp = webpush(sub, data, vapid_private_key=v, vapid_claims=claims, ttl=ttl, **kw)
    except WebPushException as exc:
        assert exc.response is not None
        resp = exc.response
    return httpx.Response(resp.status_code, headers=dict(resp.headers), content=resp.content)


def endpoints(
    r: Running, token: str, body: dict[str, Any] | None = None, method: str = "POST"
) -> httpx.Response:
    return httpx.request(
        method,
        f"{r.url}/api/v1/devices/me/endpoints",
        headers={"Authorization": f"Bearer {token}"},
        json=body,
    )


def push_raw(endpoint: str, body: bytes = b"hi", **headers: str) -> httpx.Response:
    hdrs = {"TTL": "60"} | {k.replace("_", "-"): v for k, v in headers.items()}
    return httpx.post(endpoint, content=body, headers=hdrs)


def error_code(resp: httpx.Response) -> str:
    doc = resp.json()
    assert set(doc) == {"error"} and isinstance(doc["error"]["message"], str), resp.text
    return str(doc["error"]["code"])


def delivery(r: Running, msg_id: str) -> dict[str, Any]:
    with r.client() as c:
        (d,) = c.message(msg_id)["deliveries"]
        return dict(d)


@pytest.fixture
def phone(running: Running) -> Iterator[Phone]:
    p = new_phone(running)
    yield p
    p.client.disconnect()


# --- pywebpush with VAPID, through MQTT, decrypted on the device -------------------------------------


@pytest.mark.parametrize("vapid_form", [Vapid02, Vapid01], ids=["vapid-t-k", "webpush-crypto-key"])
def test_pywebpush_with_vapid_reaches_the_device_which_decrypts_it(
    running: Running, phone: Phone, vapid_form: type[Vapid01]
) -> None:
    v = new_vapid(vapid_form)
    sub = phone.client.subscribe("chat", vapid_key=vapid_key(v))
    assert sub.endpoint.startswith(running.url + "/up/")
    phone.client.connect()

    resp = send(sub.push_subscription(), "the original plaintext ✓", v, ttl=120)
    assert resp.status_code == 201, resp.text
    assert resp.headers["TTL"] == "120"
    msg_id = resp.json()["msg_id"]
    assert resp.headers["Location"] == f"/up/message/{msg_id}"

    env, plain = phone.next_push()
    assert plain == "the original plaintext ✓".encode()
    assert env["type"] == "up" and env["id"] == msg_id
    assert env["endpoint_id"] == sub.endpoint_id and env["instance"] == "chat"
    assert env["encoding"] == "aes128gcm"
    # The bytes travelled unchanged: what the device got is what pywebpush encrypted, not plaintext.
    assert b"original" not in base64.b64decode(env["body"])
    # An ordinary message: the device's arrived receipt moves its delivery like any push's.
    assert running.wait_state(msg_id, phone.device_id, "arrived")["channel"] == "mqtt"


def test_plain_unifiedpush_bytes_without_encoding_arrive_as_sent(running: Running, phone: Phone) -> None:
    sub = phone.client.subscribe()
    phone.client.connect()
    body = bytes(range(256)) * 4
    resp = push_raw(sub.endpoint, body, Urgency="high")
    assert resp.status_code == 201, resp.text
    env, plain = phone.next_push()
    assert plain == body and env["encoding"] is None


def test_the_same_instance_gets_the_same_endpoint_and_get_says_unifiedpush(running: Running) -> None:
    ((_, token),) = running.register()
    first = endpoints(running, token, {"instance": "a"})
    again = endpoints(running, token, {"instance": "a"})
    other = endpoints(running, token, {"instance": "b"})
    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 201)
    assert first.json()["endpoint"] == again.json()["endpoint"] != other.json()["endpoint"]
    opaque = first.json()["endpoint_id"]
    assert len(base64.urlsafe_b64decode(opaque + "=")) >= 16  # at least 128 random bits
    listed = endpoints(running, token, method="GET").json()["endpoints"]
    assert [e["instance"] for e in listed] == ["a", "b"]
    discover = httpx.get(first.json()["endpoint"])
    assert discover.status_code == 200 and discover.json() == {"unifiedpush": {"version": 1}}


def test_public_url_sets_the_endpoints_origin_and_vapid_audience(tmp_path: Path) -> None:
    for r in _serve(tmp_path / "data", public_url="https://push.example.com"):
        p = new_phone(r)
        v = new_vapid()
        sub = p.client.subscribe(vapid_key=vapid_key(v))
        assert sub.endpoint == f"https://push.example.com/up/{sub.endpoint_id}"
        local = f"{r.url}/up/{sub.endpoint_id}"
        # Signed for the public origin (what pywebpush derives from the endpoint), sent to the local port.
        token = v.sign({"aud": "https://push.example.com", "sub": "mailto:a@example.com"})["Authorization"]
        assert push_raw(local, Authorization=token).status_code == 201
        token = v.sign({"aud": r.url, "sub": "mailto:a@example.com"})["Authorization"]
        resp = push_raw(local, Authorization=token)
        assert resp.status_code == 403 and error_code(resp) == "bad_vapid"


# --- Topic, TTL (RFC 8030) ---------------------------------------------------------------------------


def test_a_topic_replaces_the_waiting_message_so_only_the_second_arrives(
    running: Running, phone: Phone
) -> None:
    sub = phone.client.subscribe()
    first = push_raw(sub.endpoint, b"score 1-0", Topic="score")
    second = push_raw(sub.endpoint, b"score 2-0", Topic="score")
    other = push_raw(sub.endpoint, b"kick-off", Topic="other")
    assert {first.status_code, second.status_code, other.status_code} == {201}
    assert delivery(running, first.json()["msg_id"])["state"] == "cancelled"
    assert delivery(running, second.json()["msg_id"])["state"] == "published"

    phone.client.connect()
    got = {phone.next_push()[1], phone.next_push()[1]}
    marker = push_raw(sub.endpoint, b"marker")  # sent after the retained ones came: arrives last
    assert marker.status_code == 201
    got.add(phone.next_push()[1])
    assert got == {b"score 2-0", b"kick-off", b"marker"}
    assert phone.pushes.empty()
    assert "replaced" in json.dumps(delivery(running, first.json()["msg_id"])["history"])


def test_ttl_zero_is_dropped_for_an_offline_device_and_delivered_to_a_connected_one(
    running: Running, phone: Phone
) -> None:
    sub = phone.client.subscribe()
    dropped = push_raw(sub.endpoint, b"now or never", TTL="0")
    assert dropped.status_code == 201 and dropped.headers["TTL"] == "0"
    assert dropped.json()["stored"] is False

    phone.client.connect()
    running.call(running.server.presence_idle())
    marker = push_raw(sub.endpoint, b"marker")
    assert phone.next_push()[1] == b"marker"  # the TTL 0 message never came before it

    live = push_raw(sub.endpoint, b"now", TTL="0")
    assert live.status_code == 201 and live.headers["TTL"] == "0" and live.json()["stored"] is True
    assert phone.next_push()[1] == b"now"
    assert phone.pushes.empty()
    with running.client() as c, pytest.raises(ClientError) as refused:
        c.message(dropped.json()["msg_id"])  # a dropped TTL 0 message was never stored
    assert refused.value.code == "unknown_message"
    assert marker.status_code == 201


def test_a_ttl_above_the_maximum_is_capped_and_the_answer_says_so(running: Running, phone: Phone) -> None:
    sub = phone.client.subscribe()
    resp = push_raw(sub.endpoint, TTL="99999999999999999999")
    assert resp.status_code == 201 and resp.headers["TTL"] == str(10 * 24 * 3600)
    plain = push_raw(sub.endpoint, b"no ttl header")  # plain UnifiedPush without TTL: the default
    assert plain.status_code == 201
    no_ttl = httpx.post(sub.endpoint, content=b"x")
    assert no_ttl.status_code == 201 and no_ttl.headers["TTL"] == str(3 * 24 * 3600)


def test_the_sender_can_take_back_a_waiting_message_by_its_location(running: Running, phone: Phone) -> None:
    sub = phone.client.subscribe()
    resp = push_raw(sub.endpoint, b"oops")
    gone = httpx.delete(running.url + resp.headers["Location"])
    assert gone.status_code == 200 and gone.json()["cancelled"] is True
    assert delivery(running, resp.json()["msg_id"])["state"] == "cancelled"
    phone.client.connect()
    push_raw(sub.endpoint, b"marker")
    assert phone.next_push()[1] == b"marker" and phone.pushes.empty()
    unknown = httpx.delete(f"{running.url}/up/message/01unknown")
    assert unknown.status_code == 404 and error_code(unknown) == "unknown_message"


# --- unregistering -----------------------------------------------------------------------------------


def test_a_deleted_endpoint_answers_410_and_one_never_issued_404(running: Running, phone: Phone) -> None:
    sub = phone.client.subscribe()
    waiting = push_raw(sub.endpoint, b"waits")
    phone.client.unsubscribe(sub.endpoint_id)
    resp = push_raw(sub.endpoint)
    assert resp.status_code == 410 and error_code(resp) == "endpoint_gone"
    assert httpx.get(sub.endpoint).status_code == 410
    assert delivery(running, waiting.json()["msg_id"])["state"] == "cancelled"
    never = push_raw(f"{running.url}/up/AAAAAAAAAAAAAAAAAAAAAAAAAAA")
    assert never.status_code == 404 and error_code(never) == "unknown_endpoint"
    # The same instance asked for again: a new endpoint; the old one stays gone.
    again = phone.client.subscribe()
    assert again.endpoint != sub.endpoint and push_raw(sub.endpoint).status_code == 410


def test_only_the_subscriber_may_delete_the_push_resource(running: Running, phone: Phone) -> None:
    sub = phone.client.subscribe()
    ((_, stranger),) = running.register()
    anonymous = httpx.delete(sub.endpoint)
    assert anonymous.status_code == 401 and error_code(anonymous) == "missing_token"
    other = httpx.delete(sub.endpoint, headers={"Authorization": f"Bearer {stranger}"})
    assert other.status_code == 403 and error_code(other) == "not_your_device"
    assert push_raw(sub.endpoint).status_code == 201
    own = httpx.delete(sub.endpoint, headers={"Authorization": f"Bearer {phone.token}"})
    assert own.status_code == 200 and own.json()["removed_at"] is not None
    assert push_raw(sub.endpoint).status_code == 410
    mine = endpoints(running, stranger, method="GET").json()["endpoints"]
    assert mine == []


# --- limits ------------------------------------------------------------------------------------------


def test_a_message_over_4096_bytes_is_413(running: Running, phone: Phone) -> None:
    sub = phone.client.subscribe()
    assert push_raw(sub.endpoint, b"x" * 4096).status_code == 201
    resp = push_raw(sub.endpoint, b"x" * 4097)
    assert resp.status_code == 413 and error_code(resp) == "push_too_large"

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield from (b"y" * 1000 for _ in range(5))

    resp = httpx.post(sub.endpoint, content=chunked(), headers={"TTL": "60"})
    assert resp.status_code == 413 and error_code(resp) == "push_too_large"


def test_an_endpoint_over_its_rate_gets_429_with_retry_after(tmp_path: Path) -> None:
    for r in _serve(tmp_path / "data", push_rate=0.01, push_burst=3):
        p = new_phone(r)
        sub, other = p.client.subscribe("a"), p.client.subscribe("b")
        assert [push_raw(sub.endpoint).status_code for _ in range(3)] == [201] * 3
        resp = push_raw(sub.endpoint)
        assert resp.status_code == 429 and error_code(resp) == "rate_limited"
        assert int(resp.headers["Retry-After"]) >= 1
        assert push_raw(other.endpoint).status_code == 201  # each endpoint has its own bucket


# --- VAPID (RFC 8292) --------------------------------------------------------------------------------


def _jwt(v: Vapid01, claims: dict[str, Any]) -> str:
    return jwt.encode(claims, v.private_key, algorithm="ES256")


def test_bad_vapid_is_refused_401_or_403(running: Running, phone: Phone) -> None:
    v, stranger = new_vapid(), new_vapid()
    restricted = phone.client.subscribe("restricted", vapid_key=vapid_key(v))
    open_sub = phone.client.subscribe("open")
    now = int(time.time())
    aud = running.url

    def auth(key: Vapid01, claims: dict[str, Any], k: Vapid01 | None = None) -> str:
        return f"vapid t={_jwt(key, claims)}, k={vapid_key(k or key)}"

    good = {"aud": aud, "exp": now + 600, "sub": "mailto:a@example.com"}
    cases = [
        (restricted, {}, 401, "vapid_required"),
        (restricted, {"Authorization": auth(stranger, good)}, 403, "vapid_key_mismatch"),
        (restricted, {"Authorization": auth(stranger, good, k=v)}, 403, "bad_vapid"),  # not signed by k
        (
            restricted,
            {"Authorization": auth(v, good | {"aud": "https://elsewhere.example"})},
            403,
            "bad_vapid",
        ),
        (restricted, {"Authorization": auth(v, good | {"exp": now - 10})}, 403, "bad_vapid"),
        (restricted, {"Authorization": auth(v, good | {"exp": now + 25 * 3600})}, 403, "bad_vapid"),
        (restricted, {"Authorization": auth(v, {"aud": aud})}, 403, "bad_vapid"),  # no exp
        (restricted, {"Authorization": "Bearer x"}, 403, "bad_vapid"),
        (restricted, {"Authorization": f"vapid t={_jwt(v, good)}"}, 403, "bad_vapid"),  # no k
        (open_sub, {"Authorization": auth(v, good | {"exp": now - 10})}, 403, "bad_vapid"),
        (open_sub, {"Authorization": "vapid t=not.a.jwt, k=" + vapid_key(v)}, 403, "bad_vapid"),
    ]
    for sub, headers, status, code in cases:
        resp = push_raw(sub.endpoint, **headers)
        assert (resp.status_code, error_code(resp)) == (status, code), (headers, resp.text)
    assert push_raw(restricted.endpoint, Authorization=auth(v, good)).status_code == 201
    assert push_raw(open_sub.endpoint, Authorization=auth(stranger, good)).status_code == 201
    assert push_raw(open_sub.endpoint).status_code == 201


# --- bad input on every new route --------------------------------------------------------------------


def test_bad_input_gets_a_stable_code_in_the_error_shape(running: Running, phone: Phone) -> None:
    sub = phone.client.subscribe()
    bearer = {"Authorization": f"Bearer {phone.token}"}
    base = f"{running.url}/api/v1/devices/me/endpoints"
    refusals = [
        (httpx.post(base, json={}), 401, "missing_token"),
        (httpx.post(base, json={}, headers={"Authorization": "Bearer d1.nope"}), 401, "bad_token"),
        (httpx.post(base, content=b"{", headers=bearer), 400, "malformed_json"),
        (httpx.post(base, json={"instance": "a", "extra": 1}, headers=bearer), 422, "invalid_request"),
        (httpx.post(base, json={"instance": ""}, headers=bearer), 422, "bad_instance"),
        (httpx.post(base, json={"instance": "x" * 129}, headers=bearer), 422, "bad_instance"),
        (httpx.post(base, json={"instance": "a\nb"}, headers=bearer), 422, "bad_instance"),
        (httpx.post(base, json={"vapid_key": "not-a-key"}, headers=bearer), 422, "bad_vapid_key"),
        (
            httpx.post(base, json={"vapid_key": vapid_key(new_vapid())}, headers=bearer),
            409,
            "endpoint_key_conflict",
        ),
        (httpx.get(base), 401, "missing_token"),
        (httpx.delete(f"{base}/nope", headers=bearer), 404, "unknown_endpoint"),
        (httpx.delete(f"{base}/{sub.endpoint_id}"), 401, "missing_token"),
        (httpx.put(base, headers=bearer), 405, "method_not_allowed"),
        (push_raw(sub.endpoint, TTL="soon"), 400, "bad_ttl"),
        (push_raw(sub.endpoint, TTL="-1"), 400, "bad_ttl"),
        (push_raw(sub.endpoint, Urgency="asap"), 400, "bad_urgency"),
        (push_raw(sub.endpoint, Topic="x" * 33), 400, "bad_topic"),
        (push_raw(sub.endpoint, Topic="a b"), 400, "bad_topic"),
        (push_raw(sub.endpoint, Content_Encoding="aesgcm"), 415, "unsupported_encoding"),
        (
            httpx.post(sub.endpoint, content=b"x", headers={"Content-Encoding": "aes128gcm"}),
            400,
            "missing_ttl",
        ),
        (httpx.put(sub.endpoint), 405, "method_not_allowed"),
        (httpx.get(f"{running.url}/up/nope"), 404, "unknown_endpoint"),
    ]
    for resp, status, code in refusals:
        assert (resp.status_code, error_code(resp)) == (status, code), (resp.request.url, resp.text)
    assert push_raw(sub.endpoint).status_code == 201  # the server carries on


def test_listen_with_webpush_keys_prints_the_decrypted_plaintext(running: Running, tmp_path: Path) -> None:
    import subprocess
    import sys

    ((device_id, token),) = running.register()
    keys = tmp_path / "keys.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mqttpush", "device", "listen", "--url", running.url, "--device-id", device_id,
         "--device-token", token, "--webpush-keys", str(keys), "--instance", "cli", "--count", "1",
         "--timeout", "30", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None and proc.stdout is not None
        line = proc.stderr.readline()
        assert line.startswith("subscription: "), line + proc.stderr.read()
        subscription = json.loads(line.removeprefix("subscription: "))
        assert oct(keys.stat().st_mode & 0o777) == "0o600"
        # TTL 60: the message waits in the inbox for the listener, connected yet or not.
        assert send(subscription, "hello from pywebpush").status_code == 201
        out, err = proc.communicate(timeout=WAIT)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    doc = json.loads(out.splitlines()[-1])
    assert doc["plaintext"] == "hello from pywebpush" and doc["instance"] == "cli"
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    from tests.conftest import cli

    refused = cli("device", "listen", "--url", running.url, "--device-id", device_id, "--device-token", token,
                  "--webpush-keys", str(bad))  # fmt: skip
    assert refused.returncode == 2 and "--webpush-keys" in refused.stderr
