"""The ``--filter KEY=VALUE`` mini-language (bridge.targets.parse_filter_flags), without a shell."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.targets import parse_filter, parse_filter_flags
from mqttpush.errors import InvalidContent

PROPS = settings(max_examples=200, deadline=None)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], {}),
        (["platform=ios"], {"platform": "ios"}),
        (["platform=android,ios"], {"platform": ["android", "ios"]}),
        (["  locale = de "], {"locale": "de"}),
        (["app_version>=2.1"], {"app_version": [">=2.1"]}),
        (["app_version=2.0"], {"app_version": ["2.0"]}),
        (["app_version==2.0", "app_version<3"], {"app_version": ["==2.0", "<3"]}),
        (["app_version != 1.9"], {"app_version": ["!=1.9"]}),
        (["test=true", "online=0"], {"test": True, "online": False}),
        (["test=YES", "online=False"], {"test": True, "online": False}),
        (["last_seen_within=7d"], {"last_seen_within": "7d"}),
        (["channel=a,b"], {"channel": ["a", "b"]}),
        (["platform=ios", "platform=android"], {"platform": "android"}),  # the last one wins
    ],
)
def test_flags_become_a_filter_object(flags: list[str], expected: dict[str, Any]) -> None:
    assert parse_filter_flags(flags) == expected


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("nonsense", "'nonsense' is not KEY=VALUE (or app_version>=X)"),
        ("=ios", "'=ios' is not KEY=VALUE (or app_version>=X)"),
        ("platform=", "'platform=' is not KEY=VALUE (or app_version>=X)"),
        ("Platform=ios", "'Platform=ios' is not KEY=VALUE (or app_version>=X)"),
        ("platform>=ios", "only app_version takes >="),
        ("test!=true", "only app_version takes !="),
        ("test=maybe", "test must be true or false"),
        ("online=2", "online must be true or false"),
    ],
)
def test_malformed_flags_are_bad_filter(flag: str, message: str) -> None:
    with pytest.raises(InvalidContent) as info:
        parse_filter_flags(["platform=ios", flag])
    assert (info.value.code, info.value.status, info.value.message) == ("bad_filter", 422, message)


def test_unknown_keys_pass_the_syntax_and_parse_filter_refuses_them() -> None:
    obj = parse_filter_flags(["colour=red"])
    with pytest.raises(InvalidContent) as info:
        parse_filter(obj)
    assert info.value.code == "bad_filter"


words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=12)
versions = st.lists(st.integers(0, 99), min_size=1, max_size=4).map(lambda p: ".".join(map(str, p)))
filters = st.fixed_dictionaries(
    {},
    optional={
        "platform": st.lists(st.sampled_from(["android", "ios", "web", "iot"]), min_size=1, max_size=4),
        "channel": st.lists(words, min_size=1, max_size=3),
        "locale": st.lists(words, min_size=1, max_size=3),
        "app_version": st.lists(
            st.tuples(st.sampled_from(["", ">=", "<=", "!=", "==", ">", "<"]), versions),
            min_size=1,
            max_size=3,
        ),
        "test": st.booleans(),
        "online": st.booleans(),
        "last_seen_within": st.sampled_from(["90", "90m", "12h", "7d", "2w"]),
    },
)


def _as_flags(obj: dict[str, Any]) -> list[str]:
    flags = []
    for key, value in obj.items():
        if key == "app_version":
            flags += [f"app_version{op or '='}{v}" for op, v in value]
        elif isinstance(value, bool):
            flags.append(f"{key}={str(value).lower()}")
        elif isinstance(value, list):
            flags.append(f"{key}={','.join(value)}")
        else:
            flags.append(f"{key}={value}")
    return flags


@PROPS
@given(filters)
def test_any_filter_written_as_flags_reads_back_and_is_a_valid_filter(obj: dict[str, Any]) -> None:
    parsed = parse_filter_flags(_as_flags(obj))
    expected = dict(obj)
    if "app_version" in obj:
        expected["app_version"] = [op + v for op, v in obj["app_version"]]
    for key in ("platform", "channel", "locale"):
        if key in obj and len(obj[key]) == 1:
            expected[key] = obj[key][0]
    assert parsed == expected
    parse_filter(parsed)


@PROPS
@given(st.lists(st.text(max_size=30), max_size=4))
def test_any_text_is_a_filter_object_or_bad_filter(flags: list[str]) -> None:
    try:
        obj = parse_filter_flags(flags)
    except InvalidContent as exc:
        assert exc.code == "bad_filter"
    else:
        assert isinstance(obj, dict)
