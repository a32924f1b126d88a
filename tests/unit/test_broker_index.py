"""Topic indexes of the broker (mqttpush.broker.index): agreement with MQTT 3.1.1 §4.7, pruning, scale."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqttpush.broker.index import RetainedIndex, SubscriptionIndex, matches
from mqttpush.topics import inbox_filter, inbox_topic

PROPS = settings(max_examples=300, deadline=None)

# A small alphabet so that random topics and filters often meet; "$SYS" exercises the "$" rule
# both as a first level (where it matters) and further down (where it does not).
TOPIC_LEVELS = ["", "a", "b", "$SYS"]
KEYS = ["c1", "c2", "c3"]

topics = st.lists(st.sampled_from(TOPIC_LEVELS), min_size=1, max_size=5).map("/".join).filter(bool)


@st.composite
def filters(draw: st.DrawFn) -> str:
    """A valid filter of 1-5 levels: literals and "+" anywhere, "#" only last."""
    size = draw(st.integers(1, 5))
    multi = draw(st.booleans())
    body = draw(st.lists(st.sampled_from([*TOPIC_LEVELS, "+"]), min_size=size - multi, max_size=size - multi))
    topic_filter = "/".join([*body, "#"] if multi else body)
    return topic_filter or "+"  # a lone empty level is no filter (§4.7.3)


@st.composite
def filters_for(draw: st.DrawFn, topic: str) -> str:
    """A filter built from ``topic`` (some levels made "+", maybe cut short with "#"): mostly a match."""
    levels = [draw(st.sampled_from([level, "+"])) for level in topic.split("/")]
    if draw(st.booleans()):
        levels = [*levels[: draw(st.integers(0, len(levels)))], "#"]
    return "/".join(levels)


def regex_matches(topic: str, topic_filter: str) -> bool:
    """§4.7 as a regular expression, independent of the code under test."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    levels = topic_filter.split("/")
    multi = levels[-1] == "#"
    if multi:
        levels = levels[:-1]
    pattern = "/".join("[^/]*" if level == "+" else re.escape(level) for level in levels)
    if multi:
        # "#" matches its parent level too: "a/#" matches "a"; a lone "#" matches everything.
        pattern = pattern + "(/.*)?" if levels else ".*"
    return re.fullmatch(pattern, topic, re.DOTALL) is not None


def filter_prefixes(topic_filters: list[str]) -> set[tuple[str, ...]]:
    """The trie paths these wildcard filters need: a node per prefix of levels; "#" needs none."""
    paths: set[tuple[str, ...]] = set()
    for topic_filter in topic_filters:
        levels = topic_filter.split("/")
        if levels[-1] == "#":
            levels.pop()
        paths.update(tuple(levels[:i]) for i in range(1, len(levels) + 1))
    return paths


# --- the reference rules -----------------------------------------------------------------------


@PROPS
@given(data=st.data())
def test_matches_agrees_with_a_regex_translation(data: st.DataObject) -> None:
    topic = data.draw(topics)
    topic_filter = data.draw(st.one_of(filters(), filters_for(topic)))
    assert matches(topic, topic_filter) == regex_matches(topic, topic_filter)


# Spec §4.7 examples, plus empty levels and case: (filter, topic, matches).
SPEC_CASES = [
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/tennis/player1/#", "sport/tennis/player2", False),
    ("sport/tennis/player1/#", "sport/tennis", False),
    ("sport/#", "sport", True),
    ("#", "sport/tennis/player1", True),
    ("+/tennis/#", "sport/tennis", True),
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("+", "finance", True),
    ("#", "$SYS/x", False),
    ("+/#", "$SYS/x", False),
    ("+/x", "$SYS/x", False),
    ("$SYS/#", "$SYS/x", True),
    ("$SYS/#", "$SYS", True),
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("a/+/$SYS", "a/b/$SYS", True),
    ("a/+/b", "a//b", True),
    ("a/b", "a//b", False),
    ("a//b", "a//b", True),
    ("Sport/#", "sport/tennis", False),
    ("sport/tennis", "sport/tennis", True),
]


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), SPEC_CASES)
def test_spec_examples_hold_for_the_rules_and_both_indexes(
    topic_filter: str, topic: str, expected: bool
) -> None:
    assert matches(topic, topic_filter) is expected

    subscriptions: SubscriptionIndex[str] = SubscriptionIndex()
    subscriptions.add(topic_filter, "c1", 1)
    assert subscriptions.match(topic) == ({"c1": 1} if expected else {})

    retained: RetainedIndex[str] = RetainedIndex()
    retained.set(topic, "payload")
    assert retained.match(topic_filter) == ([(topic, "payload")] if expected else [])


@pytest.mark.parametrize(
    "topic_filter", ["", "sport/tennis#", "sport/tennis/#/ranking", "sport+", "#/a", "a/#b", "+a"]
)
def test_invalid_filters_are_refused_and_match_nothing(topic_filter: str) -> None:
    subscriptions: SubscriptionIndex[str] = SubscriptionIndex()
    with pytest.raises(ValueError, match="invalid topic filter"):
        subscriptions.add(topic_filter, "c1", 0)
    assert len(subscriptions) == 0
    assert subscriptions.filters_of("c1") == {}

    retained: RetainedIndex[int] = RetainedIndex()
    for topic in ("sport/tennis/player1/ranking", "sport/tennis", "sport", "a", "a/b"):
        retained.set(topic, 1)
    assert retained.match(topic_filter) == []


@pytest.mark.parametrize("topic", ["", "a/+", "a/#", "sport/tennis#"])
def test_retained_topics_hold_no_wildcard(topic: str) -> None:
    retained: RetainedIndex[int] = RetainedIndex()
    with pytest.raises(ValueError, match="invalid topic name"):
        retained.set(topic, 1)
    assert len(retained) == 0


def test_qos_outside_0_to_2_is_refused() -> None:
    subscriptions: SubscriptionIndex[str] = SubscriptionIndex()
    with pytest.raises(ValueError, match="invalid qos"):
        subscriptions.add("a/b", "c1", 3)
    assert len(subscriptions) == 0
    assert subscriptions._debug_sizes()["keys"] == 0


# --- SubscriptionIndex -------------------------------------------------------------------------


def test_overlapping_filters_of_one_key_give_one_entry_at_the_max_qos() -> None:
    subscriptions: SubscriptionIndex[str] = SubscriptionIndex()
    assert subscriptions.add("a/+", "c1", 0)
    assert subscriptions.add("a/#", "c1", 2)
    assert subscriptions.add("a/b", "c1", 1)
    assert subscriptions.add("+/b", "c2", 1)
    assert subscriptions.match("a/b") == {"c1": 2, "c2": 1}
    assert subscriptions.match("a") == {"c1": 2}

    assert not subscriptions.add("a/#", "c1", 0)  # re-subscribing updates the QoS
    assert len(subscriptions) == 4
    assert subscriptions.filters_of("c1") == {"a/+": 0, "a/#": 0, "a/b": 1}
    assert subscriptions.match("a/b") == {"c1": 1, "c2": 1}


def test_remove_all_returns_the_filters_of_that_key_only() -> None:
    subscriptions: SubscriptionIndex[str] = SubscriptionIndex()
    for topic_filter in ("a/b", "a/+", "#"):
        subscriptions.add(topic_filter, "c1", 1)
    subscriptions.add("a/b", "c2", 0)
    assert subscriptions.remove_all("c1") == ["a/b", "a/+", "#"]
    assert subscriptions.remove_all("c1") == []
    assert subscriptions.match("a/b") == {"c2": 0}
    assert len(subscriptions) == 1
    assert not subscriptions.remove("a/b", "c1")
    assert subscriptions.remove("a/b", "c2")
    assert len(subscriptions) == 0


def test_removing_subscriptions_prunes_the_trie_as_it_goes() -> None:
    subscriptions: SubscriptionIndex[str] = SubscriptionIndex()
    subscriptions.add("a/b/+/d", "c1", 1)
    subscriptions.add("a/b/#", "c2", 1)
    subscriptions.add("a/b", "c3", 1)
    assert subscriptions._debug_sizes() == {"exact_filters": 1, "trie_nodes": 4, "keys": 3, "empty_dicts": 0}

    assert subscriptions.remove("a/b/+/d", "c1")
    # "a/b/#" still needs the nodes a and b; "+" and "d" are gone.
    assert subscriptions._debug_sizes() == {"exact_filters": 1, "trie_nodes": 2, "keys": 2, "empty_dicts": 0}
    assert subscriptions.match("a/b/x/d") == {"c2": 1}

    assert subscriptions.remove("a/b/#", "c2")
    assert subscriptions.remove_all("c3") == ["a/b"]
    assert len(subscriptions) == 0
    assert subscriptions._debug_sizes() == {"exact_filters": 0, "trie_nodes": 0, "keys": 0, "empty_dicts": 0}
    assert subscriptions.match("a/b") == {}


@PROPS
@given(data=st.data())
def test_subscription_index_agrees_with_brute_force(data: st.DataObject) -> None:
    pool = data.draw(st.lists(filters(), min_size=1, max_size=6, unique=True), label="filters")
    ops = data.draw(
        st.lists(
            st.one_of(
                st.tuples(st.just("add"), st.sampled_from(pool), st.sampled_from(KEYS), st.integers(0, 2)),
                st.tuples(st.just("remove"), st.sampled_from(pool), st.sampled_from(KEYS)),
                st.tuples(st.just("remove_all"), st.sampled_from(KEYS)),
            ),
            max_size=30,
        ),
        label="ops",
    )
    index: SubscriptionIndex[str] = SubscriptionIndex()
    model: dict[tuple[str, str], int] = {}  # (filter, key) -> qos
    for op in ops:
        match op:
            case ("add", str(topic_filter), str(key), int(qos)):
                assert index.add(topic_filter, key, qos) is ((topic_filter, key) not in model)
                model[(topic_filter, key)] = qos
            case ("remove", str(topic_filter), str(key)):
                assert index.remove(topic_filter, key) is ((topic_filter, key) in model)
                model.pop((topic_filter, key), None)
            case ("remove_all", str(key)):
                theirs = [f for (f, k) in model if k == key]
                assert index.remove_all(key) == theirs
                for topic_filter in theirs:
                    del model[(topic_filter, key)]
            case _:
                raise AssertionError(op)
        assert len(index) == len(model)

    for key in KEYS:
        assert index.filters_of(key) == {f: q for (f, k), q in model.items() if k == key}

    probes = data.draw(st.lists(topics, max_size=8), label="topics")
    # Topics built from the filters, so that most filters are seen matching something.
    probes += [f.replace("+", "a").removesuffix("/#").replace("#", "b") for f in pool]
    probes += [f.replace("+", "").replace("#", "$SYS/a") for f in pool]
    for topic in filter(None, probes):
        expected: dict[str, int] = {}
        for (topic_filter, key), qos in model.items():
            if matches(topic, topic_filter):
                expected[key] = max(qos, expected.get(key, 0))
        assert index.match(topic) == expected, topic

    wildcard = {f for (f, _) in model if "+" in f or "#" in f}
    assert index._debug_sizes() == {
        "exact_filters": len({f for (f, _) in model} - wildcard),
        "trie_nodes": len(filter_prefixes(sorted(wildcard))),
        "keys": len({k for (_, k) in model}),
        "empty_dicts": 0,
    }

    for key in KEYS:
        index.remove_all(key)
    assert len(index) == 0
    assert index._debug_sizes() == {"exact_filters": 0, "trie_nodes": 0, "keys": 0, "empty_dicts": 0}


# --- RetainedIndex -----------------------------------------------------------------------------


def test_retained_set_replaces_get_and_discard() -> None:
    retained: RetainedIndex[str] = RetainedIndex()
    retained.set("a/b", "one")
    retained.set("a/b", "two")
    retained.set("a", "parent")
    assert len(retained) == 2
    assert retained.get("a/b") == "two"
    assert retained.get("a/c") is None
    assert retained.topics() == ["a/b", "a"]
    assert sorted(retained.match("a/#")) == [("a", "parent"), ("a/b", "two")]
    assert retained.discard("a/b")
    assert not retained.discard("a/b")
    assert not retained.discard("never")
    assert retained.get("a/b") is None
    assert retained.match("a/#") == [("a", "parent")]


def test_discarding_retained_topics_prunes_the_trie_as_it_goes() -> None:
    retained: RetainedIndex[int] = RetainedIndex()
    retained.set("a/b/c", 1)
    retained.set("a/b", 2)
    retained.set("$SYS/x", 3)
    assert retained._debug_sizes() == {"topics": 3, "trie_nodes": 5, "empty_dicts": 0}

    assert retained.discard("a/b/c")
    # "a/b" still holds a message, so its path stays; "c" goes.
    assert retained._debug_sizes() == {"topics": 2, "trie_nodes": 4, "empty_dicts": 0}
    assert retained.discard("a/b")
    assert retained.discard("$SYS/x")
    assert len(retained) == 0
    assert retained._debug_sizes() == {"topics": 0, "trie_nodes": 0, "empty_dicts": 0}
    assert retained.match("#") == []


@PROPS
@given(data=st.data())
def test_retained_index_agrees_with_brute_force(data: st.DataObject) -> None:
    pool = data.draw(st.lists(topics, min_size=1, max_size=8, unique=True), label="topics")
    ops = data.draw(
        st.lists(
            st.one_of(
                st.tuples(st.just("set"), st.sampled_from(pool), st.integers(0, 3)),
                st.tuples(st.just("discard"), st.sampled_from(pool)),
            ),
            max_size=30,
        ),
        label="ops",
    )
    index: RetainedIndex[int] = RetainedIndex()
    model: dict[str, int] = {}
    for op in ops:
        match op:
            case ("set", str(topic), int(value)):
                index.set(topic, value)
                model[topic] = value
            case ("discard", str(topic)):
                assert index.discard(topic) is (topic in model)
                model.pop(topic, None)
            case _:
                raise AssertionError(op)
        assert len(index) == len(model)

    assert index.topics() == list(model)
    for topic in pool:
        assert index.get(topic) == model.get(topic)

    probes = data.draw(st.lists(filters(), max_size=8), label="filters")
    probes += [data.draw(filters_for(topic), label="filter from topic") for topic in pool]
    for topic_filter in probes:
        found = index.match(topic_filter)
        assert len(found) == len(set(found)), topic_filter  # nothing twice
        assert set(found) == {(t, v) for t, v in model.items() if matches(t, topic_filter)}, topic_filter

    assert index._debug_sizes() == {
        "topics": len(model),
        "trie_nodes": len(filter_prefixes(list(model))),
        "empty_dicts": 0,
    }

    for topic in list(model):
        assert index.discard(topic)
    assert index._debug_sizes() == {"topics": 0, "trie_nodes": 0, "empty_dicts": 0}


# --- scale ---------------------------------------------------------------------------------------

DEVICES = 10_000
MESSAGES_PER_DEVICE = 10


def device_id(n: int) -> str:
    return f"dev{n:018d}"  # 21 characters, like ids.new_device_id()


def message_id(device: int, n: int) -> str:
    return f"{device:013d}{n:013d}"  # 26 characters, like a ULID


def test_an_inbox_filter_finds_its_own_messages_among_100k_retained() -> None:
    retained: RetainedIndex[int] = RetainedIndex()
    for device in range(DEVICES):
        for n in range(MESSAGES_PER_DEVICE):
            retained.set(inbox_topic("app", device_id(device), message_id(device, n)), n)
    assert len(retained) == DEVICES * MESSAGES_PER_DEVICE

    found = retained.match(inbox_filter("app", device_id(4242)))
    assert sorted(found) == [
        (inbox_topic("app", device_id(4242), message_id(4242, n)), n) for n in range(MESSAGES_PER_DEVICE)
    ]
    assert retained.match(inbox_filter("app", device_id(DEVICES))) == []
    assert retained.match(inbox_filter("other", device_id(4242))) == []
    assert retained.match("mqttpush/app/b/+") == []


def test_an_inbox_topic_reaches_only_its_device_among_10k_subscriptions() -> None:
    subscriptions: SubscriptionIndex[str] = SubscriptionIndex()
    for device in range(DEVICES):
        subscriptions.add(inbox_filter("app", device_id(device)), f"client-{device}", 1)
    subscriptions.add("mqttpush/app/d/+/r", "bridge", 1)
    assert len(subscriptions) == DEVICES + 1

    assert subscriptions.match(inbox_topic("app", device_id(4242), message_id(4242, 0))) == {"client-4242": 1}
    assert subscriptions.match(f"mqttpush/app/d/{device_id(4242)}/r") == {"bridge": 1}
    assert subscriptions.match(inbox_topic("app", device_id(DEVICES), message_id(0, 0))) == {}
