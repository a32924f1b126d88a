"""Receipts devices publish on ``mqttpush/{app}/d/{device}/r`` (docs/protocol.md): parse_receipt."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.receipts import Receipt, parse_receipt
from mqttpush import topics
from mqttpush.models import ReceiptEvent

PROPS = settings(max_examples=200, deadline=None)

TOPIC = topics.receipt_topic("app1", "dev1")


def payload(obj: Any) -> bytes:
    return json.dumps(obj).encode()


@pytest.mark.parametrize("event", ["arrived", "opened", "dismissed"])
def test_valid_receipt(event: str) -> None:
    assert parse_receipt(TOPIC, payload({"id": "m1", "event": event})) == Receipt(
        "app1", "dev1", "m1", ReceiptEvent(event)
    )


def test_extra_fields_are_ignored() -> None:
    r = parse_receipt(TOPIC, payload({"id": "m1", "event": "opened", "at": 1700000000, "x": [1]}))
    assert r == Receipt("app1", "dev1", "m1", ReceiptEvent.OPENED)


def test_app_and_device_come_from_the_topic() -> None:
    r = parse_receipt(topics.receipt_topic("appX", "devY"), payload({"id": "m1", "event": "arrived"}))
    assert r is not None
    assert (r.app_key, r.device_id) == ("appX", "devY")


@pytest.mark.parametrize(
    "topic",
    [
        topics.presence_topic("app1", "dev1"),
        topics.inbox_topic("app1", "dev1", "m1"),
        topics.broadcast_topic("app1", "m1"),
        "mqttpush/app1/d/dev1/r/x",
        "mqttpush/app1/d/+/r",
        "mqttpush/app1/d//r",
        "other/app1/d/dev1/r",
        "",
    ],
)
def test_wrong_topic_kind_is_ignored(topic: str) -> None:
    assert parse_receipt(topic, payload({"id": "m1", "event": "arrived"})) is None


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"garbage",
        b'{"id": "m1", "event": "arrived"',
        b"\xff\xfe",
        b"null",
        b"42",
        b'"arrived"',
        b"[]",
        b'["m1", "arrived"]',
        b"{}",
    ],
)
def test_malformed_payload_is_ignored(raw: bytes) -> None:
    assert parse_receipt(TOPIC, raw) is None


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"id":' * 100_000])
def test_deeply_nested_payload_is_ignored(raw: bytes) -> None:
    # a device controls this payload: it must be dropped, not raise into the broker's publish path
    assert parse_receipt(TOPIC, raw) is None


@pytest.mark.parametrize("event", ["delivered", "ARRIVED", "Opened", "", None, 1, ["arrived"], {"e": 1}])
def test_unknown_event_is_ignored(event: Any) -> None:
    assert parse_receipt(TOPIC, payload({"id": "m1", "event": event})) is None


def test_missing_event_is_ignored() -> None:
    assert parse_receipt(TOPIC, payload({"id": "m1"})) is None


def test_missing_id_is_ignored() -> None:
    assert parse_receipt(TOPIC, payload({"event": "arrived"})) is None


@pytest.mark.parametrize(
    "msg_id", ["m/1", "m+", "m#", "", " ", "m 1", "x" * 65, "m1\n", None, 5, ["m1"], {"id": "m1"}]
)
def test_bad_id_is_ignored(msg_id: Any) -> None:
    assert parse_receipt(TOPIC, payload({"id": msg_id, "event": "arrived"})) is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


@PROPS
@given(
    obj=st.one_of(
        json_values,
        st.fixed_dictionaries({"id": json_values, "event": json_values}),
        st.fixed_dictionaries(
            {"id": st.text(max_size=70), "event": st.sampled_from(["arrived", "opened", "x"])}
        ),
    )
)
def test_parse_receipt_accepts_only_well_formed_receipts(obj: Any) -> None:
    r = parse_receipt(TOPIC, payload(obj))
    ok = (
        isinstance(obj, dict)
        and obj.get("event") in ("arrived", "opened", "dismissed")
        and isinstance(obj.get("id"), str)
        and 1 <= len(obj["id"]) <= 64
        and all(c.isascii() and (c.isalnum() or c in "_-") for c in obj["id"])
    )
    if ok:
        assert r == Receipt("app1", "dev1", obj["id"], ReceiptEvent(obj["event"]))
    else:
        assert r is None


@PROPS
@given(st.binary(max_size=200))
def test_parse_receipt_never_raises_on_bytes(raw: bytes) -> None:
    parse_receipt(TOPIC, raw)
