"""Issue 18 item 4, HTTP side: limits with clear refusals.

Per-app and per-IP request rates (429 ``rate_limited`` + ``Retry-After``), a header timeout, a
keep-alive timeout, a connection cap and a header size cap, against the real server. The token
bucket itself is a pure class on a clock passed in: property-tested without any real time.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqttpush import signing
from mqttpush.api.limits import RateLimiter, TokenBucket, retry_after
from mqttpush.store import Store
from tests.conftest import Running, ServeProcess, _serve

# --- the token bucket (pure) -------------------------------------------------------------------------

rates = st.floats(min_value=0.01, max_value=1000, allow_nan=False)
bursts = st.integers(min_value=1, max_value=50)
steps = st.lists(st.floats(min_value=0, max_value=5, allow_nan=False), max_size=200)


@given(rates, bursts, steps)
def test_a_bucket_never_grants_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, gaps: list[float]
) -> None:
    now = 1000.0
    bucket = TokenBucket.full(rate, burst, now)
    granted = 0
    for gap in gaps:
        now += gap
        granted += bucket.take(now) == 0.0
    assert granted <= burst + rate * (now - 1000.0) + 1e-6


@given(rates, bursts, st.floats(min_value=0, max_value=100, allow_nan=False))
def test_a_refused_take_says_how_long_to_wait_and_is_granted_then(rate: float, burst: int, at: float) -> None:
    bucket = TokenBucket.full(rate, burst, at)
    assert all(bucket.take(at) == 0.0 for _ in range(burst))
    wait = bucket.take(at)
    assert wait > 0 and wait == pytest.approx(1 / rate)
    assert bucket.take(at + wait / 2) > 0  # refused takes cost nothing, and half the wait is not enough
    assert bucket.take(at + wait * (1 + 1e-9) + 1e-9) == 0.0


@given(rates, bursts, st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), max_size=100))
def test_a_clock_that_jumps_around_never_grants_extra_nor_waits_negative(
    rate: float, burst: int, times: list[float]
) -> None:
    bucket = TokenBucket.full(rate, burst, 0.0)
    for t in times:
        assert bucket.take(t) >= 0.0
        assert 0.0 <= bucket.tokens <= burst


@given(bursts, st.lists(st.sampled_from("abc"), max_size=300))
def test_keys_have_their_own_buckets(burst: int, keys: list[str]) -> None:
    limiter = RateLimiter(1.0, burst, lambda: 50.0)
    granted = {k: 0 for k in "abc"}
    for key in keys:
        granted[key] += limiter.take(key) == 0.0
    assert granted == {k: min(burst, keys.count(k)) for k in "abc"}


@given(st.integers(min_value=1, max_value=20), st.lists(st.integers(0, 100), max_size=300))
def test_a_limiter_keeps_at_most_max_keys_buckets(max_keys: int, keys: list[int]) -> None:
    limiter = RateLimiter(1.0, 1, lambda: 0.0, max_keys=max_keys)
    for key in keys:
        limiter.take(str(key))
        assert len(limiter) <= max_keys


@given(st.floats(min_value=1e-9, max_value=1e6, allow_nan=False))
def test_retry_after_is_whole_seconds_at_least_one_and_never_short(wait: float) -> None:
    seconds = retry_after(wait)
    assert isinstance(seconds, int) and seconds >= 1 and seconds >= wait


def test_rate_zero_is_no_limiter() -> None:
    assert RateLimiter.of(0, 10, time.monotonic) is None
    with pytest.raises(ValueError):
        RateLimiter(1.0, 0, time.monotonic)


# --- against the server ------------------------------------------------------------------------------


def _signed(url: str, key: str, secret: str, path: str = "/api/v1/settings") -> httpx.Response:
    headers = signing.signed_headers(key, secret, "GET", path, b"", time.time())
    return httpx.get(url + path, headers=headers, timeout=10)


def _limited(resp: httpx.Response) -> int:
    """The 429 of docs/api.md; returns its Retry-After."""
    assert resp.status_code == 429, resp.text
    assert resp.headers["content-type"] == "application/json"
    doc = resp.json()
    assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message"}
    assert doc["error"]["code"] == "rate_limited" and doc["error"]["message"]
    seconds = resp.headers["retry-after"]
    assert seconds.isdigit() and int(seconds) >= 1
    return int(seconds)


@pytest.fixture
def rate_limited(tmp_path: Path) -> Iterator[Running]:
    """A server where each app gets 3 requests, and each IP 2 unauthenticated ones, per ~100 s."""
    yield from _serve(tmp_path / "data", api_rate=0.01, api_burst=3, ip_rate=0.01, ip_burst=2)


def test_an_app_over_its_rate_gets_429_while_another_app_is_served(rate_limited: Running) -> None:
    r = rate_limited
    other = Store(r.data_dir).apps.create_app("other")
    assert [_signed(r.url, r.app_key, r.app_secret).status_code for _ in range(3)] == [200] * 3
    assert _limited(_signed(r.url, r.app_key, r.app_secret)) >= 99  # one token per 100 s
    assert [_signed(r.url, other.app_key, other.secret).status_code for _ in range(3)] == [200] * 3
    assert _limited(_signed(r.url, other.app_key, other.secret)) >= 1
    # Failed authentication takes nothing from the app: a bad signature is 401, not 429.
    bad = signing.signed_headers(r.app_key, "not-the-secret", "GET", "/api/v1/settings", b"", time.time())
    assert httpx.get(r.url + "/api/v1/settings", headers=bad).status_code == 401


def test_device_token_routes_count_against_their_app(tmp_path: Path) -> None:
    for r in _serve(tmp_path / "data", api_rate=0.01, api_burst=2):
        ((_, token),) = r.register()
        me = [
            httpx.get(r.url + "/api/v1/devices/me", headers={"Authorization": f"Bearer {token}"})
            for _ in range(3)
        ]
        assert [resp.status_code for resp in me[:2]] == [200, 200]
        _limited(me[2])
        _limited(_signed(r.url, r.app_key, r.app_secret))


def test_key_only_registration_is_limited_per_client_ip(rate_limited: Running) -> None:
    r = rate_limited
    body = {"install_id": "i-1", "platform": "android"}
    headers = {signing.KEY_HEADER: r.app_key}
    codes = [httpx.post(r.url + "/api/v1/devices", json=body, headers=headers).status_code for _ in range(2)]
    assert codes == [201, 200]
    _limited(httpx.post(r.url + "/api/v1/devices", json=body, headers=headers))
    _limited(httpx.get(r.url + "/api/v1/webpush/key", headers=headers))
    # Health probes are never limited: a refused liveness probe would restart a healthy server.
    assert httpx.get(r.url + "/healthz").status_code == 200
    assert httpx.get(r.url + "/readyz").status_code == 200
    # Signed routes are limited per app, not per IP: the same address is still served there.
    assert _signed(r.url, r.app_key, r.app_secret).status_code == 200


def test_the_rate_flags_reach_the_server(tmp_path: Path) -> None:
    s = ServeProcess(tmp_path / "data", 0, 0, "--ip-rate", "0.01", "--ip-burst", "1")
    try:
        key = {signing.KEY_HEADER: "no-such-app"}
        assert httpx.get(s.url + "/api/v1/webpush/key", headers=key).status_code == 401
        _limited(httpx.get(s.url + "/api/v1/webpush/key", headers=key))
    finally:
        assert s.stop(signal.SIGTERM) == 0


# --- connections: header timeout, keep-alive, cap, header size ---------------------------------------


def _connect(r: Running, timeout: float = 10) -> socket.socket:
    host, _, port = r.url.removeprefix("http://").partition(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def _until_closed(s: socket.socket) -> bytes:
    """Everything the server sends until it closes (the socket's timeout bounds the wait)."""
    answer = b""
    while chunk := s.recv(65536):
        answer += chunk
    return answer


def _json_refusal(answer: bytes, status: int, code: str) -> dict[str, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), answer[:300]
    assert b"content-type: application/json" in head.lower()
    assert b"connection: close" in head.lower()
    doc: dict[str, Any] = json.loads(body)
    assert set(doc) == {"error"} and doc["error"]["code"] == code and doc["error"]["message"]
    return doc


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Running]:
    yield from _serve(
        tmp_path / "data",
        http_header_timeout=0.5,
        http_keepalive_timeout=1,
        http_max_connections=3,
        http_max_header_bytes=4096,
    )


def test_a_slowloris_connection_is_closed_after_the_header_timeout(guarded: Running) -> None:
    with _connect(guarded, timeout=5) as s:
        started = time.monotonic()
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: a")
        answer = _until_closed(s)
        assert time.monotonic() - started < 4
    _json_refusal(answer, 408, "request_timeout")


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(guarded: Running) -> None:
    with _connect(guarded, timeout=5) as s:
        assert _until_closed(s) == b""


def test_an_idle_keep_alive_connection_is_closed(guarded: Running) -> None:
    with _connect(guarded, timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = _until_closed(s)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"}")


def test_the_next_request_on_a_kept_alive_connection_is_timed_too(guarded: Running) -> None:
    with _connect(guarded, timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while not first.endswith(b"}"):
            first += s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        s.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        _json_refusal(_until_closed(s), 408, "request_timeout")


def test_connections_beyond_the_cap_get_503_json(tmp_path: Path) -> None:
    for r in _serve(tmp_path / "data", http_max_connections=3):
        held = [_connect(r) for _ in range(3)]
        with _connect(r, timeout=5) as s:
            doc = _json_refusal(_until_closed(s), 503, "too_many_connections")
        assert "3" in doc["error"]["message"]
        for h in held:
            h.close()
        deadline = time.monotonic() + 10
        while True:  # the server sees the closes on its own loop: retried requests, no sleep
            try:
                if httpx.get(r.url + "/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "connections never freed"


@pytest.mark.parametrize(
    "head",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n",
        b"GET /healthz?" + b"q" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["200k-header", "101-headers", "100k-url"],
)
def test_a_head_over_the_limits_is_431_json(running: Running, head: bytes) -> None:
    with _connect(running, timeout=10) as s:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(head)  # may be refused before all of it is sent; the answer waits
        answer = _until_closed(s)
    _json_refusal(answer, 431, "headers_too_large")
    assert httpx.get(running.url + "/healthz").status_code == 200


def test_an_endless_header_line_is_refused_before_it_ends(guarded: Running) -> None:
    with _connect(guarded, timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(64):
                s.sendall(b"a" * 1024)
        answer = _until_closed(s)
    _json_refusal(answer, 431, "headers_too_large")


def test_a_head_within_the_limits_is_served(guarded: Running) -> None:
    headers = {f"X-{i}": "v" * 20 for i in range(50)}
    assert httpx.get(guarded.url + "/healthz", headers=headers).status_code == 200


def test_a_stalled_body_is_408_after_the_timeout(guarded: Running) -> None:
    with _connect(guarded, timeout=5) as s:
        started = time.monotonic()
        s.sendall(
            b"POST /api/v1/devices HTTP/1.1\r\nHost: x\r\nX-MQTTPush-Key: "
            + guarded.app_key.encode()
            + b'\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"install_id"'
        )
        answer = _until_closed(s)
        assert time.monotonic() - started < 4
    _json_refusal(answer, 408, "request_timeout")


def test_trickled_header_lines_do_not_reset_the_header_timeout(guarded: Running) -> None:
    """The slowloris of benchmarks/flood.py: one more header line now and then, never the blank one."""
    with _connect(guarded, timeout=5) as s:
        started = time.monotonic()
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        s.settimeout(0.1)  # a line each time 0.1 s pass without an answer: well inside the 0.5 s timeout
        answer = b""
        while time.monotonic() - started < 4:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                s.sendall(b"X-a: b\r\n")
                continue
            if not chunk:
                break
            answer += chunk
        assert time.monotonic() - started < 4
    _json_refusal(answer, 408, "request_timeout")
