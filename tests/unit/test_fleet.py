"""Device import lines (mqttpush.fleet): what ``mqttpush device import`` accepts, without a store."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqttpush.errors import InvalidContent
from mqttpush.fleet import parse_import_lines

PROPS = settings(max_examples=200, deadline=None)


def test_rows_come_back_in_order_and_blank_lines_are_skipped() -> None:
    lines = [
        '{"install_id": "a", "platform": "ios", "tags": ["cs"], "alias": "u1"}',
        "",
        "   ",
        '{"install_id": "b", "platform": "android", "app_version": "1.9", "test": true}',
    ]
    assert parse_import_lines(lines) == [
        {"install_id": "a", "platform": "ios", "tags": ["cs"], "alias": "u1"},
        {"install_id": "b", "platform": "android", "app_version": "1.9", "test": True},
    ]


def test_nothing_is_nothing() -> None:
    assert parse_import_lines([]) == []


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("{bad", "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
        ("[1, 2]", "needs install_id"),
        ('"a"', "needs install_id"),
        ('{"platform": "ios"}', "needs install_id"),
        ('{"install_id": "", "platform": "ios"}', "needs install_id"),
        ('{"install_id": 7, "platform": "ios"}', "needs install_id"),
        ('{"install_id": "a"}', "'None' is not a valid Platform"),
        ('{"install_id": "a", "platform": "symbian"}', "'symbian' is not a valid Platform"),
        ('{"install_id": "a", "platform": "ios", "tags": "cs"}', "tags must be a list of strings"),
        ('{"install_id": "a", "platform": "ios", "tags": ["cs", 1]}', "tags must be a list of strings"),
        ('{"install_id": "a", "platform": "ios", "tags": [""]}', "tags must be a list of strings"),
        ('{"install_id": "a", "platform": "ios", "alias": 42}', "alias must be a string"),
        ('{"install_id": "a", "platform": "ios", "app_version": 2.1}', "app_version must be a string"),
    ],
)
def test_a_bad_line_is_named_with_why(line: str, why: str) -> None:
    good = '{"install_id": "ok", "platform": "web"}'
    with pytest.raises(InvalidContent) as info:
        parse_import_lines([good, "", line, good])
    assert (info.value.code, info.value.status) == ("bad_import_line", 422)
    assert info.value.message == f"line 3: {why}"


rows = st.fixed_dictionaries(
    {
        "install_id": st.text(min_size=1, max_size=20),
        "platform": st.sampled_from(["android", "ios", "web", "iot"]),
    },
    optional={
        "tags": st.lists(st.text(min_size=1, max_size=10), max_size=3),
        "alias": st.text(min_size=1, max_size=10),
        "alias_type": st.sampled_from(["user", "email"]),
        "app_version": st.text(max_size=8),
        "locale": st.sampled_from(["de", "en-GB"]),
        "test": st.booleans(),
    },
)


@PROPS
@given(st.lists(rows, max_size=5), st.lists(st.sampled_from(["", " ", "\t"]), max_size=3))
def test_valid_rows_round_trip_through_json_lines(good: list[dict[str, Any]], blanks: list[str]) -> None:
    assert parse_import_lines([json.dumps(r) for r in good] + blanks) == good


@PROPS
@given(st.lists(st.text(max_size=40), max_size=4))
def test_any_text_gives_rows_or_bad_import_line(lines: list[str]) -> None:
    try:
        parse_import_lines(lines)
    except InvalidContent as exc:
        assert exc.code == "bad_import_line" and exc.message.startswith("line ")
