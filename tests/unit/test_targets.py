"""Push targets (docs/api.md, docs/targeting.md): parse_target of the ``target`` object."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.targets import DevicesTarget, parse_target
from mqttpush.errors import InvalidContent

PROPS = settings(max_examples=200, deadline=None)

device_ids = st.text(alphabet="abcdefghijkmnpqrstvwxyz0123456789", min_size=1, max_size=23)


def refused(obj: Any, code: str) -> None:
    with pytest.raises(InvalidContent) as info:
        parse_target(obj)
    assert info.value.code == code
    assert info.value.status == 422


def test_single_device() -> None:
    target = parse_target({"devices": ["dev1"]})
    assert target == DevicesTarget(("dev1",))
    assert target.kind == "devices"


def test_device_list_keeps_order() -> None:
    assert parse_target({"devices": ["c", "a", "b"]}).device_ids == ("c", "a", "b")


def test_device_list_is_deduplicated_keeping_first_occurrence_order() -> None:
    assert parse_target({"devices": ["b", "a", "b", "c", "a", "b"]}).device_ids == ("b", "a", "c")


def test_device_ids_may_use_the_whole_url_safe_alphabet() -> None:
    assert parse_target({"devices": ["A-z_09"]}).device_ids == ("A-z_09",)


def test_thousand_devices_is_the_limit() -> None:
    many = [f"d{i}" for i in range(1000)]
    assert parse_target({"devices": many}).device_ids == tuple(many)


def test_more_than_thousand_devices_is_too_many() -> None:
    refused({"devices": [f"d{i}" for i in range(1001)]}, "too_many_targets")


def test_empty_device_list_is_invalid() -> None:
    refused({"devices": []}, "invalid_target")


@pytest.mark.parametrize("value", ["dev1", None, 1, {"dev1": True}, ("dev1",)])
def test_devices_must_be_a_list(value: Any) -> None:
    refused({"devices": value}, "invalid_target")


@pytest.mark.parametrize("bad", [1, None, True, 1.5, ["dev1"], {"id": "dev1"}, b"dev1"])
def test_non_string_device_id_is_invalid(bad: Any) -> None:
    refused({"devices": ["dev1", bad]}, "invalid_target")


@pytest.mark.parametrize(
    "bad",
    ["a/b", "dev+", "dev#", "+", "#", "/", "", " ", "dev 1", "dév", "dev.1", "x" * 65, "dev1\n", "\ndev1"],
)
def test_device_id_that_is_not_an_id_is_invalid(bad: str) -> None:
    refused({"devices": ["dev1", bad]}, "invalid_target")


def test_two_kinds_at_once_is_invalid() -> None:
    refused({"devices": ["dev1"], "alias": "bob"}, "invalid_target")


def test_no_kind_is_invalid() -> None:
    refused({}, "invalid_target")


@pytest.mark.parametrize(
    ("obj", "kind"),
    [
        ({"alias": "bob"}, "alias"),
        ({"alias": ["bob", "ann"], "alias_type": "user"}, "alias"),
        ({"tags": "vip and not churned"}, "tags"),
        ({"tags": {"tag": "vip"}}, "tags"),
        ({"broadcast": True}, "broadcast"),
        ({"filter": {"platform": "ios"}}, "filter"),
        ({"filter": {"platform": "ios"}, "tags": "vip"}, "filter"),
        ({"file_id": "f1"}, "file"),
    ],
)
def test_every_documented_kind_parses(obj: dict[str, Any], kind: str) -> None:
    target = parse_target(obj)
    assert target.kind == kind
    assert target.is_task == (kind not in ("devices", "alias"))


@pytest.mark.parametrize(
    ("obj", "code"),
    [
        ({"broadcast": False}, "invalid_target"),
        ({"alias": []}, "invalid_target"),
        ({"alias": "x", "alias_type": "a/b"}, "invalid_target"),
        ({"tags": "a &&"}, "bad_tag_expr"),
        ({"filter": {"colour": "red"}}, "bad_filter"),
        ({"filter": {"app_version": ">=?"}}, "bad_filter"),
        ({"filter": {"last_seen_within": "soon"}}, "bad_filter"),
        ({"filter": {"test": "yes"}}, "bad_filter"),
        ({"file_id": "a/b"}, "invalid_target"),
    ],
)
def test_malformed_group_targets(obj: dict[str, Any], code: str) -> None:
    refused(obj, code)


@pytest.mark.parametrize("obj", [{"device": ["dev1"]}, {"everyone": True}, {"Devices": ["dev1"]}, {"": 1}])
def test_unknown_kind_is_invalid(obj: dict[str, Any]) -> None:
    refused(obj, "invalid_target")


@PROPS
@given(st.lists(device_ids, min_size=1, max_size=60))
def test_any_valid_list_is_accepted_and_deduplicated(ids: list[str]) -> None:
    expected: list[str] = []
    for i in ids:
        if i not in expected:
            expected.append(i)
    assert parse_target({"devices": ids}).device_ids == tuple(expected)
