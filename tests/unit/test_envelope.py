"""The envelope a device receives (docs/protocol.md): UTF-8 JSON, size-limited in bytes, tolerant decode."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqttpush import envelope
from mqttpush.envelope import DEFAULT_MAX_BYTES, Envelope
from mqttpush.errors import PayloadTooLarge

PROPS = settings(max_examples=200, deadline=None)


def make(body: str = "", title: str | None = "Hello", **kwargs: Any) -> Envelope:
    fields: dict[str, Any] = {
        "id": "01hx0000000000abcdefghjkmn",
        "app": "a1234567890abcde",
        "type": "notification",
        "title": title,
        "body": body,
        "data": {"k": "v"},
        "sent_at": 1700000000.0,
        "expires_at": 1700259200.0,
    }
    fields.update(kwargs)
    return Envelope(**fields)


def size(env: Envelope) -> int:
    """The encoded size, measured independently of ``encode``."""
    text = json.dumps(env.to_dict(), ensure_ascii=False, separators=(",", ":"))
    return len(text.encode("utf-8"))


def padded_to(total: int, char: str = "x") -> Envelope:
    """An envelope exactly ``total`` bytes long, padded in the body with ``char``."""
    base = size(make())
    per = len(char.encode())
    assert (total - base) % per == 0
    env = make(body=char * ((total - base) // per))
    assert size(env) == total
    return env


def test_encode_is_utf8_json_with_every_field() -> None:
    env = make(body="World", rich={"image": "https://example.com/i.png", "badge": 3})
    obj = json.loads(env.encode().decode("utf-8"))
    assert obj == {
        "id": "01hx0000000000abcdefghjkmn",
        "app": "a1234567890abcde",
        "type": "notification",
        "title": "Hello",
        "body": "World",
        "data": {"k": "v"},
        "sent_at": 1700000000.0,
        "expires_at": 1700259200.0,
        "image": "https://example.com/i.png",
        "badge": 3,
    }


def test_default_limit_is_4096_bytes() -> None:
    assert DEFAULT_MAX_BYTES == 4096


def test_exactly_at_the_default_limit_passes() -> None:
    env = padded_to(4096)
    assert len(env.encode()) == 4096


def test_one_byte_over_the_default_limit_is_refused() -> None:
    env = padded_to(4097)
    with pytest.raises(PayloadTooLarge) as info:
        env.encode()
    assert info.value.code == "envelope_too_large"
    assert info.value.status == 413


@pytest.mark.parametrize("limit", [200, 512, 1000, 10_000])
def test_configurable_limit_is_inclusive(limit: int) -> None:
    assert len(padded_to(limit).encode(max_bytes=limit)) == limit
    with pytest.raises(PayloadTooLarge) as info:
        padded_to(limit + 1).encode(max_bytes=limit)
    assert info.value.code == "envelope_too_large"


@pytest.mark.parametrize("char", ["é", "€", "😀"])
def test_multibyte_characters_count_in_bytes(char: str) -> None:
    per = len(char.encode())
    base = size(make())
    n = (4096 - base) // per + 1  # one character too many, in bytes
    env = make(body=char * n)
    encoded_chars = len(json.dumps(env.to_dict(), ensure_ascii=False, separators=(",", ":")))
    assert encoded_chars <= 4096  # would pass if characters were counted
    with pytest.raises(PayloadTooLarge):
        env.encode()
    fits = make(body=char * (n - 1))
    assert len(fits.encode()) <= 4096


def test_non_ascii_is_sent_as_utf8_not_escaped() -> None:
    raw = make(body="café 😀").encode()
    assert "café 😀".encode() in raw
    assert b"\\u" not in raw


@PROPS
@given(
    title=st.one_of(st.none(), st.text(max_size=300)),
    body=st.text(max_size=1500),
    limit=st.integers(min_value=0, max_value=8000),
)
def test_encode_refuses_exactly_when_bytes_exceed_limit(title: str | None, body: str, limit: int) -> None:
    env = make(title=title, body=body)
    n = size(env)
    if n <= limit:
        raw = env.encode(max_bytes=limit)
        assert len(raw) == n
        assert envelope.decode(raw) == env.to_dict()
    else:
        with pytest.raises(PayloadTooLarge) as info:
            env.encode(max_bytes=limit)
        assert info.value.code == "envelope_too_large"


# --- decode -------------------------------------------------------------------------------------


def test_decode_round_trips_encode() -> None:
    env = make(body="World", rich={"url": "https://example.com"})
    assert envelope.decode(env.encode()) == env.to_dict()


def test_decode_accepts_any_object_with_a_string_id() -> None:
    assert envelope.decode(b'{"id": "m1"}') == {"id": "m1"}


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"garbage",
        b"{",
        b'{"id": "m1"',
        b"\xff\xfe\x00",
        b"\x80abc",
        b"null",
        b"true",
        b"42",
        b'"m1"',
        b'["m1"]',
        b"[]",
        b"{}",
        b'{"title": "no id"}',
        b'{"id": null}',
        b'{"id": 5}',
        b'{"id": ["m1"]}',
        b'{"id": {"id": "m1"}}',
        b"NaN",
    ],
)
def test_decode_returns_none_for_anything_but_an_envelope(payload: bytes) -> None:
    assert envelope.decode(payload) is None


@pytest.mark.parametrize("payload", [b"[" * 100_000, b'{"id":' * 100_000])
def test_decode_returns_none_for_deeply_nested_garbage(payload: bytes) -> None:
    assert envelope.decode(payload) is None


@PROPS
@given(st.binary(max_size=200))
def test_decode_never_raises(payload: bytes) -> None:
    result = envelope.decode(payload)
    assert result is None or isinstance(result.get("id"), str)
