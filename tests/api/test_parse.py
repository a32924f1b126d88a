"""Request bodies are parsed in one pass by pydantic (``mqttpush.api.common.parse``, issue 14): for
any bytes it gives what the reference way gives (Python's json, the strict value check, then the
model), the same model or the same refusal, code and message."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from mqttpush.api.common import parse
from mqttpush.models import AppSettings, BatchRequest, PushRequest, parse_json_object, validate_request

MODELS: list[type[BaseModel]] = [PushRequest, BatchRequest, AppSettings]
KEYS = st.sampled_from(
    [
        *("target", "devices", "notification", "title", "badge", "data", "type", "policy", "ttl"),
        *("start_at", "production", "priority", "daily_cap", "schedule", "items", "device", "vars", "x"),
    ]
)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=15,
)
# Pieces that take parsers apart: escapes, surrogates, non-finite and huge numbers, BOM, bad UTF-8.
SPLICES = st.sampled_from(
    [
        *(b"{", b"}", b"[", b",", b":", b'"', b"\\", b"\\ud800", b"\\udc00", b"NaN", b"-Infinity"),
        *(b"1e400", b"1E308", b"1e-400", b"-0", b"1.", b".5", b"+1", b"01", b"9" * 250, b"true", b"null"),
        *(b"\x00", b"\t", b"\xff", b"\xef\xbb\xbf", b"\xc3\xa9", b'"target"', b'"devices"'),
    ]
)


def _outcome(read: Callable[[], BaseModel]) -> tuple[Any, ...]:
    try:
        model = read()
    except Exception as exc:
        return ("refused", type(exc).__name__, getattr(exc, "code", None), str(exc))
    return ("read", type(model).__name__, repr(model.model_dump()))


@settings(max_examples=1500, deadline=None)
@given(
    st.sampled_from(MODELS),
    VALUES | st.fixed_dictionaries({"target": VALUES}, optional={"notification": VALUES, "data": VALUES}),
    st.booleans(),
    st.lists(st.tuples(st.integers(0, 10_000), SPLICES), max_size=3),
)
def test_one_pass_parsing_agrees_with_the_reference(
    model: type[BaseModel], value: Any, ascii_only: bool, splices: list[tuple[int, bytes]]
) -> None:
    body = bytearray(json.dumps(value, ensure_ascii=ascii_only).encode())
    for at, piece in splices:
        body[at % (len(body) + 1) : at % (len(body) + 1)] = piece
    raw = bytes(body)
    assert _outcome(lambda: parse(model, raw)) == _outcome(
        lambda: validate_request(model, parse_json_object(raw))
    )


@pytest.mark.parametrize(
    "body",
    [
        b'{"target": {"devices": ["d1"]}, "data": {"v": NaN}}',
        b'{"target": {"devices": ["d1"]}, "data": {"v": [1, 1e400]}}',
        b'{"target": {"devices": ["d1"]}, "data": {"v": 1' + b"0" * 300 + b".5e9}}",
        b'{"target": {"devices": ["d1"]}, "policy": {"start_at": Infinity}}',
        b'{"target": {"devices": ["d1"]}, "data": {"\\ud800": 1}}',
        b'\xef\xbb\xbf{"target": {"devices": ["d1"]}}',
        b'{"target": {"devices": ["d1"]}, "data": {"big": 1.7e308, "small": -5e-324, "n": -0.0}}',
    ],
)
def test_what_only_the_reference_reads_right_goes_its_way(body: bytes) -> None:
    assert _outcome(lambda: parse(PushRequest, body)) == _outcome(
        lambda: validate_request(PushRequest, parse_json_object(body))
    )
