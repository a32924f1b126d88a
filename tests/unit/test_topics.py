"""Device protocol topics (docs/protocol.md), MQTT 3.1.1 §4.7 matching, and the topic ACL."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mqttpush.topics import (
    PRESENCE_FILTER,
    RECEIPT_FILTER,
    AppIdentity,
    DeviceIdentity,
    ParsedTopic,
    ServiceIdentity,
    TopicKind,
    broadcast_filter,
    broadcast_topic,
    inbox_filter,
    inbox_topic,
    may_publish,
    may_receive,
    may_subscribe,
    parse_topic,
    presence_topic,
    receipt_topic,
    receive_implied_by_subscribe,
    topic_matches,
    valid_filter,
)

PROPS = settings(max_examples=200, deadline=None)

# ids as docs/protocol.md allows them: URL-safe, no "/ + #"
ids = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=1, max_size=24
)


# --- builders ----------------------------------------------------------------------------------


def test_builders_follow_the_protocol_table() -> None:
    assert inbox_topic("app1", "dev1", "m1") == "mqttpush/app1/d/dev1/m/m1"
    assert inbox_filter("app1", "dev1") == "mqttpush/app1/d/dev1/m/+"
    assert broadcast_topic("app1", "m1") == "mqttpush/app1/b/m1"
    assert broadcast_filter("app1") == "mqttpush/app1/b/+"
    assert receipt_topic("app1", "dev1") == "mqttpush/app1/d/dev1/r"
    assert presence_topic("app1", "dev1") == "mqttpush/app1/d/dev1/s"


def test_service_filters_cover_every_device_receipt_and_presence() -> None:
    assert topic_matches(receipt_topic("app1", "dev1"), RECEIPT_FILTER)
    assert topic_matches(presence_topic("app1", "dev1"), PRESENCE_FILTER)
    assert not topic_matches(presence_topic("app1", "dev1"), RECEIPT_FILTER)
    assert not topic_matches(inbox_topic("app1", "dev1", "m1"), RECEIPT_FILTER)


def test_filters_match_the_topics_they_are_for() -> None:
    assert topic_matches(inbox_topic("app1", "dev1", "m1"), inbox_filter("app1", "dev1"))
    assert not topic_matches(inbox_topic("app1", "dev2", "m1"), inbox_filter("app1", "dev1"))
    assert topic_matches(broadcast_topic("app1", "m1"), broadcast_filter("app1"))
    assert not topic_matches(broadcast_topic("app2", "m1"), broadcast_filter("app1"))


# --- parse_topic -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("mqttpush/app1/d/dev1/m/m1", ParsedTopic(TopicKind.INBOX, "app1", "dev1", "m1")),
        ("mqttpush/app1/b/m1", ParsedTopic(TopicKind.BROADCAST, "app1", None, "m1")),
        ("mqttpush/app1/d/dev1/r", ParsedTopic(TopicKind.RECEIPT, "app1", "dev1", None)),
        ("mqttpush/app1/d/dev1/s", ParsedTopic(TopicKind.PRESENCE, "app1", "dev1", None)),
        # level names that look like the fixed levels are still just ids
        ("mqttpush/d/d/b/m/m", ParsedTopic(TopicKind.INBOX, "d", "b", "m")),
        ("mqttpush/b/b/r", ParsedTopic(TopicKind.BROADCAST, "b", None, "r")),
    ],
)
def test_parse_topic_recognises_protocol_topics(topic: str, expected: ParsedTopic) -> None:
    assert parse_topic(topic) == expected


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "mqttpush",
        "mqttpush/app1",
        "mqttpush/app1/b",
        "other/app1/b/m1",
        "MQTTPUSH/app1/b/m1",
        "/mqttpush/app1/b/m1",
        "mqttpush//b/m1",
        "mqttpush/app1/b/",
        "mqttpush/app1/b/m1/x",
        "mqttpush/app1/b/+",
        "mqttpush/app1/b/#",
        "mqttpush/app1/b/a+b",
        "mqttpush/app1/x/m1",
        "mqttpush/app1/d/dev1",
        "mqttpush/app1/d/dev1/m",
        "mqttpush/app1/d/dev1/m/",
        "mqttpush/app1/d/dev1/m/+",
        "mqttpush/app1/d/dev1/m/#",
        "mqttpush/app1/d/dev1/m/m1/x",
        "mqttpush/app1/d/dev1/r/x",
        "mqttpush/app1/d/dev1/s/x",
        "mqttpush/app1/d/dev1/x",
        "mqttpush/app1/d//r",
        "mqttpush/app1/d/+/r",
        "mqttpush/app1/d/#",
        "mqttpush/app1/d/dev#/s",
        "mqttpush/app1/d/dev1/m/m1/",
        # wildcards are never part of a concrete topic, in any level (ids have no "+ #", docs/protocol.md)
        "mqttpush/+/b/m1",
        "mqttpush/+/d/dev1/r",
        "mqttpush/#/d/dev1/m/m1",
    ],
)
def test_parse_topic_rejects_everything_else(topic: str) -> None:
    assert parse_topic(topic) is None


@PROPS
@given(app=ids, device=ids, msg=ids)
def test_parse_topic_round_trips_the_builders(app: str, device: str, msg: str) -> None:
    assert parse_topic(inbox_topic(app, device, msg)) == ParsedTopic(TopicKind.INBOX, app, device, msg)
    assert parse_topic(broadcast_topic(app, msg)) == ParsedTopic(TopicKind.BROADCAST, app, None, msg)
    assert parse_topic(receipt_topic(app, device)) == ParsedTopic(TopicKind.RECEIPT, app, device, None)
    assert parse_topic(presence_topic(app, device)) == ParsedTopic(TopicKind.PRESENCE, app, device, None)


# --- topic_matches: MQTT 3.1.1 §4.7 --------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "topic_filter", "expected"),
    [
        # §4.7.1.2 multi-level wildcard
        ("sport/tennis/player1", "sport/tennis/player1/#", True),
        ("sport/tennis/player1/ranking", "sport/tennis/player1/#", True),
        ("sport/tennis/player1/score/wimbledon", "sport/tennis/player1/#", True),
        ("sport", "sport/#", True),
        ("sport/", "sport/#", True),
        ("sports", "sport/#", False),
        ("anything/at/all", "#", True),
        ("/", "#", True),
        # §4.7.1.3 single-level wildcard
        ("sport/tennis/player1", "sport/tennis/+", True),
        ("sport/tennis/player2", "sport/tennis/+", True),
        ("sport/tennis/player1/ranking", "sport/tennis/+", False),
        ("sport", "sport/+", False),
        ("sport/", "sport/+", True),
        ("/finance", "+/+", True),
        ("/finance", "/+", True),
        ("/finance", "+", False),
        ("a", "+", True),
        ("a/b/c", "a/+/c", True),
        ("a/b/c", "+/+/+/#", True),
        ("a/b", "+/+/+", False),
        # exact levels, case-sensitive
        ("a/b", "a/b", True),
        ("a/b", "a/B", False),
        ("a/b", "a", False),
        ("a", "a/b", False),
        ("a/b/", "a/b", False),
        # §4.7.2 topics beginning with $
        ("$SYS/broker/clients", "#", False),
        ("$SYS/monitor/Clients", "+/monitor/Clients", False),
        ("$SYS", "+", False),
        ("$SYS/monitor/Clients", "$SYS/#", True),
        ("$SYS/monitor/Clients", "$SYS/monitor/+", True),
        ("$SYS", "$SYS/#", True),
        ("a/$SYS", "a/+", True),
        ("a/$SYS", "#", True),
    ],
)
def test_topic_matches_spec_examples(topic: str, topic_filter: str, expected: bool) -> None:
    assert topic_matches(topic, topic_filter) is expected


def reference_matches(topic: str, topic_filter: str) -> bool:
    """An independent §4.7 matcher: translate the (valid) filter into a regular expression."""
    if topic.startswith("$") and topic_filter[0] in "+#":
        return False
    levels = topic_filter.split("/")
    multi = levels[-1] == "#"
    if multi:
        levels = levels[:-1]
    pattern = "/".join("[^/]*" if lv == "+" else re.escape(lv) for lv in levels)
    if multi:
        # "#" also matches the parent level: "a/#" matches "a"; a bare "#" matches everything
        pattern = f"{pattern}(?:/.*)?" if levels else ".*"
    return re.fullmatch(pattern, topic, flags=re.DOTALL) is not None


TOPIC_LEVELS = st.sampled_from(["", "$SYS", "a", "b"])
FILTER_LEVELS = st.sampled_from(["", "$SYS", "a", "b", "+"])

topic_names = st.lists(TOPIC_LEVELS, min_size=1, max_size=5).map("/".join).filter(bool)
topic_filters = st.builds(
    lambda levels, hash_: "/".join(levels + (["#"] if hash_ else [])),
    st.lists(FILTER_LEVELS, min_size=0, max_size=5),
    st.booleans(),
).filter(bool)


def test_reference_matcher_sanity() -> None:
    assert reference_matches("a", "a/#")
    assert reference_matches("a/b/c", "a/#")
    assert not reference_matches("ab", "a/#")
    assert not reference_matches("$SYS/a", "#")
    assert reference_matches("/", "+/+")


@PROPS
@given(topic=topic_names, topic_filter=topic_filters)
def test_topic_matches_agrees_with_reference(topic: str, topic_filter: str) -> None:
    assert valid_filter(topic_filter)
    assert topic_matches(topic, topic_filter) is reference_matches(topic, topic_filter)


@PROPS
@given(topic=topic_names)
def test_a_topic_used_as_its_own_filter_matches_itself(topic: str) -> None:
    assert topic_matches(topic, topic)


# --- valid_filter -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic_filter",
    ["#", "+", "a", "a/b", "a/+", "+/+", "a/#", "+/#", "/", "/+", "a//b", "$SYS/#", "sport/tennis/+/#"],
)
def test_valid_filters(topic_filter: str) -> None:
    assert valid_filter(topic_filter)


@pytest.mark.parametrize(
    "topic_filter",
    ["", "a#", "#a", "a/#/b", "#/a", "#/#", "a/b#", "a+", "+a", "a/+b/c", "a/b+/#", "++", "##"],
)
def test_invalid_filters(topic_filter: str) -> None:
    assert not valid_filter(topic_filter)


def reference_valid(levels: list[str]) -> bool:
    for i, level in enumerate(levels):
        if level == "#":
            if i != len(levels) - 1:
                return False
        elif level != "+" and ("+" in level or "#" in level):
            return False
    return True


@PROPS
@given(st.lists(st.sampled_from(["", "a", "$SYS", "+", "#", "a+", "#b", "++"]), min_size=1, max_size=5))
def test_valid_filter_agrees_with_reference(levels: list[str]) -> None:
    topic_filter = "/".join(levels)
    assume(topic_filter)
    assert valid_filter(topic_filter) is reference_valid(levels)


# --- ACL: devices --------------------------------------------------------------------------------

ME = DeviceIdentity(app="app1", device="dev1")


@pytest.mark.parametrize("topic_filter", [inbox_filter("app1", "dev1"), broadcast_filter("app1")])
def test_device_may_subscribe_to_its_two_filters(topic_filter: str) -> None:
    assert may_subscribe(ME, topic_filter)


@pytest.mark.parametrize(
    "topic_filter",
    [
        inbox_filter("app1", "dev2"),
        inbox_filter("app2", "dev1"),
        broadcast_filter("app2"),
        "#",
        "+",
        "$SYS/#",
        "mqttpush/#",
        "mqttpush/app1/#",
        "mqttpush/app1/d/#",
        "mqttpush/app1/d/+/m/+",
        "mqttpush/app1/d/dev1/#",
        "mqttpush/app1/d/dev1/m/#",
        "mqttpush/app1/d/dev1/+",
        "mqttpush/app1/d/dev1/+/+",
        "mqttpush/+/d/dev1/m/+",
        "mqttpush/+/b/+",
        "mqttpush/app1/b/#",
        "mqttpush/app1/+/+",
        inbox_topic("app1", "dev1", "m1"),
        inbox_topic("app1", "dev2", "m1"),
        broadcast_topic("app1", "m1"),
        receipt_topic("app1", "dev1"),
        presence_topic("app1", "dev1"),
        presence_topic("app1", "dev2"),
        RECEIPT_FILTER,
        PRESENCE_FILTER,
        "mqttpush/app1/api/result/+",
    ],
)
def test_device_may_not_subscribe_elsewhere(topic_filter: str) -> None:
    assert not may_subscribe(ME, topic_filter)


@pytest.mark.parametrize("topic", [receipt_topic("app1", "dev1"), presence_topic("app1", "dev1")])
def test_device_may_publish_its_receipts_and_presence(topic: str) -> None:
    assert may_publish(ME, topic)


@pytest.mark.parametrize(
    "topic",
    [
        receipt_topic("app1", "dev2"),
        presence_topic("app1", "dev2"),
        receipt_topic("app2", "dev1"),
        presence_topic("app2", "dev1"),
        inbox_topic("app1", "dev1", "m1"),
        inbox_topic("app1", "dev2", "m1"),
        broadcast_topic("app1", "m1"),
        "mqttpush/app1/d/dev1/r/x",
        "mqttpush/app1/d/dev1/s/x",
        "mqttpush/app1/d/dev1/x",
        "mqttpush/app1/api/push",
        "$SYS/broker",
        "other",
        "mqttpush/app1/d/+/r",
        "mqttpush/app1/d/dev1/#",
    ],
)
def test_device_may_not_publish_elsewhere(topic: str) -> None:
    assert not may_publish(ME, topic)


@pytest.mark.parametrize("topic", [inbox_topic("app1", "dev1", "m1"), broadcast_topic("app1", "m1")])
def test_device_receives_its_inbox_and_its_apps_broadcasts(topic: str) -> None:
    assert may_receive(ME, topic)


@pytest.mark.parametrize(
    "topic",
    [
        inbox_topic("app1", "dev2", "m1"),
        inbox_topic("app2", "dev1", "m1"),
        broadcast_topic("app2", "m1"),
        receipt_topic("app1", "dev1"),
        presence_topic("app1", "dev1"),
        receipt_topic("app1", "dev2"),
        presence_topic("app1", "dev2"),
        "mqttpush/app1/d/dev1/m/m1/x",
        "mqttpush/app1/api/result/r1",
        "mqttpush/app1",
        "$SYS/broker/clients",
        "other/app1/b/m1",
        "",
    ],
)
def test_device_receives_nothing_else(topic: str) -> None:
    assert not may_receive(ME, topic)


@PROPS
@given(app=ids, device=ids, other=ids, msg=ids)
def test_device_never_receives_another_devices_topics(app: str, device: str, other: str, msg: str) -> None:
    assume(device != other)
    me = DeviceIdentity(app=app, device=device)
    assert may_receive(me, inbox_topic(app, device, msg))
    assert not may_receive(me, inbox_topic(app, other, msg))
    assert not may_receive(me, receipt_topic(app, other))
    assert not may_receive(me, presence_topic(app, other))
    assert not may_subscribe(me, inbox_filter(app, other))
    assert not may_publish(me, receipt_topic(app, other))
    assert not may_publish(me, presence_topic(app, other))


@PROPS
@given(app=ids, other_app=ids, device=ids, msg=ids)
def test_device_never_receives_another_apps_topics(app: str, other_app: str, device: str, msg: str) -> None:
    assume(app != other_app)
    me = DeviceIdentity(app=app, device=device)
    assert may_receive(me, broadcast_topic(app, msg))
    assert not may_receive(me, broadcast_topic(other_app, msg))
    assert not may_receive(me, inbox_topic(other_app, device, msg))
    assert not may_subscribe(me, broadcast_filter(other_app))
    assert not may_subscribe(me, inbox_filter(other_app, device))
    assert not may_publish(me, receipt_topic(other_app, device))


# --- ACL: the service identity -------------------------------------------------------------------

SERVICE = ServiceIdentity(username="svc")


@pytest.mark.parametrize(
    "topic_filter", ["mqttpush/#", RECEIPT_FILTER, PRESENCE_FILTER, inbox_filter("app1", "dev1")]
)
def test_service_may_subscribe_under_root(topic_filter: str) -> None:
    assert may_subscribe(SERVICE, topic_filter)


@pytest.mark.parametrize("topic_filter", ["$SYS/#", "other/#", "mqttpushx/#", "+/app1/b/+"])
def test_service_may_not_subscribe_outside_root(topic_filter: str) -> None:
    assert not may_subscribe(SERVICE, topic_filter)


@pytest.mark.parametrize(
    "topic", [inbox_topic("app1", "dev1", "m1"), broadcast_topic("app1", "m1"), "mqttpush/app1/api/result/r1"]
)
def test_service_may_publish_and_receive_under_root(topic: str) -> None:
    assert may_publish(SERVICE, topic)
    assert may_receive(SERVICE, topic)


@pytest.mark.parametrize("topic", ["$SYS/broker", "other/x", "mqttpushx/a/b/m", "mqttpush"])
def test_service_may_not_publish_or_receive_outside_root(topic: str) -> None:
    assert not may_publish(SERVICE, topic)
    assert not may_receive(SERVICE, topic)


# --- the broker's shortcut: a granted SUBSCRIBE implies RECEIVE for ordinary topics ---------------

protocol_levels = st.sampled_from(
    ["mqttpush", "a1", "a2", "d", "b", "m", "r", "s", "api", "result", "d1", "x", "", "$SYS"]
)
granted_filters = st.one_of(
    st.sampled_from(
        [
            inbox_filter("a1", "d1"),
            broadcast_filter("a1"),
            "mqttpush/a1/api/result/+",
            "mqttpush/a1/api/result/x",
            "mqttpush/#",
            "mqttpush/+",
            "mqttpush/+/#",
            "mqttpush/+/d/+/r",
            "mqttpush/+/+/+/m/+",
        ]
    ),
    st.lists(st.one_of(protocol_levels, st.just("+")), min_size=1, max_size=6).map(
        lambda levels: "mqttpush/" + "/".join(levels)
    ),
)


@st.composite
def filter_and_matching_topic(draw: st.DrawFn) -> tuple[str, str]:
    """A filter, and a topic made by filling its wildcards (``#`` with zero or more levels)."""
    topic_filter = draw(granted_filters)
    levels = [draw(protocol_levels) if level == "+" else level for level in topic_filter.split("/")]
    if levels[-1] == "#":
        levels = levels[:-1] + draw(st.lists(protocol_levels, max_size=3))  # none: the parent level
    return topic_filter, "/".join(levels)


@PROPS
@given(
    who=st.one_of(
        st.just(DeviceIdentity("a1", "d1")), st.just(AppIdentity("a1")), st.just(ServiceIdentity("svc"))
    ),
    pair=filter_and_matching_topic(),
)
def test_subscribe_implies_receive(
    who: DeviceIdentity | AppIdentity | ServiceIdentity, pair: tuple[str, str]
) -> None:
    topic_filter, topic = pair
    assume(valid_filter(topic_filter) and may_subscribe(who, topic_filter))
    assert topic_matches(topic, topic_filter)
    if receive_implied_by_subscribe(topic):
        assert may_receive(who, topic), (who, topic_filter, topic)


def test_an_app_subscribes_only_one_level_below_its_results() -> None:
    # Found by test_subscribe_implies_receive: the last level alone was checked, so a deeper
    # filter was granted while may_receive refused its topics.
    app = AppIdentity("a1")
    assert may_subscribe(app, "mqttpush/a1/api/result/+")
    assert may_subscribe(app, "mqttpush/a1/api/result/r1")
    assert not may_subscribe(app, "mqttpush/a1/api/result/mqttpush/mqttpush")
    assert not may_subscribe(app, "mqttpush/a1/api/result/r1/#")
    assert not may_subscribe(app, "mqttpush/a1/api/result/")


def test_subscribe_implies_receive_examples() -> None:
    device = DeviceIdentity("a1", "d1")
    inbox = inbox_filter("a1", "d1")
    assert may_subscribe(device, inbox) and receive_implied_by_subscribe(inbox_topic("a1", "d1", "m1"))
    # the odd topics the broker still checks one by one
    assert topic_matches("mqttpush/a1/d/d1/m/", inbox) and not may_receive(device, "mqttpush/a1/d/d1/m/")
    assert not receive_implied_by_subscribe("mqttpush/a1/d/d1/m/")
    assert topic_matches("mqttpush", "mqttpush/#") and not may_receive(ServiceIdentity("s"), "mqttpush")
    assert not receive_implied_by_subscribe("mqttpush")
