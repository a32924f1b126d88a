"""Indexes for MQTT 3.1.1 topic matching (§4.7): who gets a PUBLISH, which retained messages a SUBSCRIBE gets.

amqtt matches every PUBLISH against every subscription filter and scans every retained message
on each SUBSCRIBE. These two structures make a publish cost O(topic levels + matches) and a
subscribe cost O(matching retained messages) for the filters devices use. Pure: no I/O, no
locking; the broker calls them from its event loop.

* :class:`SubscriptionIndex` — filters without wildcards in one dict (a publish is one lookup);
  wildcard filters in a trie of levels walked along the topic.
* :class:`RetainedIndex` — retained topics in a trie of levels, walked along the filter.
* :func:`matches` — the rules on one (topic, filter) pair, the reference both indexes agree with.

Filters handed to :meth:`SubscriptionIndex.add` must be valid and topics handed to
:meth:`RetainedIndex.set` must hold no wildcard (``ValueError`` otherwise: the broker refuses
those on the wire before they get here). Queries never raise: an invalid filter given to
:meth:`RetainedIndex.match` matches what :func:`matches` says it does (``"a/#/b"``: nothing).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

from mqttpush.topics import topic_matches as matches
from mqttpush.topics import valid_filter

__all__ = ["RetainedIndex", "SubscriptionIndex", "matches"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_QOS_LEVELS = (0, 1, 2)


class _FilterNode(Generic[K]):
    """One level of the wildcard-filter trie.

    Every container starts as None and goes back to None when emptied: most nodes of an inbox
    filter use one or two of them, and an empty dict still costs 64 bytes.
    """

    __slots__ = ("children", "hash_subs", "plus", "subs")

    def __init__(self) -> None:
        self.children: dict[str, _FilterNode[K]] | None = None  # literal next levels
        self.plus: _FilterNode[K] | None = None  # the "+" next level
        self.subs: dict[K, int] | None = None  # filters that end at this level
        # Filters "<this level>/#": "#" is always last, so it needs subscribers, not a node.
        self.hash_subs: dict[K, int] | None = None

    def is_empty(self) -> bool:
        return self.children is None and self.plus is None and self.subs is None and self.hash_subs is None


def _merge_max(found: dict[K, int], subs: dict[K, int]) -> None:
    """Add ``subs`` to ``found`` keeping the highest QoS per key (MQTT-3.3.5-1: one delivery, max QoS)."""
    if not found:
        found.update(subs)
        return
    for key, qos in subs.items():
        if found.get(key, -1) < qos:
            found[key] = qos


class SubscriptionIndex(Generic[K]):
    """Exact filters in a dict, wildcard filters in a trie.

    ``K`` identifies a subscriber (e.g. a client id). A key holds at most one QoS per filter;
    a key's overlapping filters yield one entry in :meth:`match`, at the highest QoS.
    """

    __slots__ = ("_by_key", "_count", "_exact", "_root")

    def __init__(self) -> None:
        self._exact: dict[str, dict[K, int]] = {}
        self._root: _FilterNode[K] = _FilterNode()
        # key -> its filters, so that a disconnecting client costs O(its filters), not O(all).
        self._by_key: dict[K, dict[str, int]] = {}
        self._count = 0

    def __len__(self) -> int:
        """The number of (filter, key) subscriptions."""
        return self._count

    def add(self, topic_filter: str, key: K, qos: int) -> bool:
        """Subscribe ``key`` to ``topic_filter``; True if new, False if it only updated the QoS.

        Raises ``ValueError`` for an invalid filter (§4.7.1) or a QoS outside 0-2.
        """
        if not valid_filter(topic_filter):
            raise ValueError(f"invalid topic filter {topic_filter!r}")
        if qos not in _QOS_LEVELS:
            raise ValueError(f"invalid qos {qos!r}")
        filters = self._by_key.get(key)
        if filters is None:
            filters = self._by_key[key] = {}
        is_new = topic_filter not in filters
        filters[topic_filter] = qos
        if "+" in topic_filter or "#" in topic_filter:
            subs = self._wildcard_subs(topic_filter)
        else:
            exact = self._exact.get(topic_filter)
            if exact is None:
                exact = self._exact[topic_filter] = {}
            subs = exact
        subs[key] = qos
        if is_new:
            self._count += 1
        return is_new

    def remove(self, topic_filter: str, key: K) -> bool:
        """Unsubscribe ``key`` from ``topic_filter``; True if it was subscribed."""
        filters = self._by_key.get(key)
        if filters is None or filters.pop(topic_filter, None) is None:
            return False
        if not filters:
            del self._by_key[key]
        self._unlink(topic_filter, key)
        return True

    def remove_all(self, key: K) -> list[str]:
        """Unsubscribe ``key`` from everything; its filters, in the order they were added."""
        filters = self._by_key.pop(key, None)
        if filters is None:
            return []
        for topic_filter in filters:
            self._unlink(topic_filter, key)
        return list(filters)

    def filters_of(self, key: K) -> dict[str, int]:
        """``{filter: qos}`` of ``key`` (a copy; empty for an unknown key)."""
        filters = self._by_key.get(key)
        return {} if filters is None else dict(filters)

    def match(self, topic: str) -> dict[K, int]:
        """Every key with a filter matching ``topic`` -> the highest QoS among its matching filters."""
        found: dict[K, int] = {}
        exact = self._exact.get(topic)
        if exact is not None:
            found.update(exact)
        root = self._root
        levels = iter(topic.split("/"))
        first = next(levels)
        # The frontier: trie nodes whose path matches the topic's levels so far.
        nodes: list[_FilterNode[K]] = []
        # §4.7.2: a "$" topic is never matched by a filter whose first level is a wildcard.
        if first[:1] != "$":
            if root.hash_subs is not None:
                _merge_max(found, root.hash_subs)
            if root.plus is not None:
                nodes.append(root.plus)
        if root.children is not None:
            child = root.children.get(first)
            if child is not None:
                nodes.append(child)
        for level in levels:
            if not nodes:
                return found
            step: list[_FilterNode[K]] = []
            for node in nodes:
                if node.hash_subs is not None:
                    _merge_max(found, node.hash_subs)
                if node.plus is not None:
                    step.append(node.plus)
                if node.children is not None:
                    child = node.children.get(level)
                    if child is not None:
                        step.append(child)
            nodes = step
        for node in nodes:
            if node.subs is not None:
                _merge_max(found, node.subs)
            # "a/#" also matches "a" itself (the parent level, §4.7.1.2).
            if node.hash_subs is not None:
                _merge_max(found, node.hash_subs)
        return found

    def _wildcard_subs(self, topic_filter: str) -> dict[K, int]:
        """The subscriber dict of a wildcard filter, creating its trie path as needed."""
        node = self._root
        *path, last = topic_filter.split("/")
        for level in path:
            node = self._child(node, level)
        if last == "#":
            if node.hash_subs is None:
                node.hash_subs = {}
            return node.hash_subs
        node = self._child(node, last)
        if node.subs is None:
            node.subs = {}
        return node.subs

    @staticmethod
    def _child(node: _FilterNode[K], level: str) -> _FilterNode[K]:
        if level == "+":
            if node.plus is None:
                node.plus = _FilterNode()
            return node.plus
        if node.children is None:
            node.children = {}
        child = node.children.get(level)
        if child is None:
            child = node.children[level] = _FilterNode()
        return child

    def _unlink(self, topic_filter: str, key: K) -> None:
        """Drop ``key`` from the filter's subscribers, pruning what is left empty.

        Only called for a (filter, key) that ``_by_key`` held, so the path and the key exist.
        """
        self._count -= 1
        if "+" not in topic_filter and "#" not in topic_filter:
            exact = self._exact[topic_filter]
            del exact[key]
            if not exact:
                del self._exact[topic_filter]
            return
        *path, last = topic_filter.split("/")
        trail: list[tuple[_FilterNode[K], str]] = []  # (parent, level) down to the filter's node
        node = self._root
        for level in path:
            trail.append((node, level))
            node = _existing_child(node, level)
        if last == "#":
            subs = node.hash_subs
        else:
            trail.append((node, last))
            node = _existing_child(node, last)
            subs = node.subs
        assert subs is not None, "index out of step with _by_key"
        del subs[key]
        if not subs:
            if last == "#":
                node.hash_subs = None
            else:
                node.subs = None
        for parent, level in reversed(trail):
            if not node.is_empty():
                return
            if level == "+":
                parent.plus = None
            else:
                assert parent.children is not None, "index out of step with _by_key"
                del parent.children[level]
                if not parent.children:
                    parent.children = None
            node = parent

    def _debug_sizes(self) -> dict[str, int]:
        """Sizes of the internal structures, for tests: all zero once everything is removed."""
        trie_nodes = -1  # the root is always there
        empty_dicts = 0
        stack = [self._root]
        while stack:
            node = stack.pop()
            trie_nodes += 1
            empty_dicts += sum(
                1 for d in (node.children, node.subs, node.hash_subs) if d is not None and not d
            )
            if node.plus is not None:
                stack.append(node.plus)
            if node.children is not None:
                stack.extend(node.children.values())
        return {
            "exact_filters": len(self._exact),
            "trie_nodes": trie_nodes,
            "keys": len(self._by_key),
            "empty_dicts": empty_dicts,
        }


def _existing_child(node: _FilterNode[K], level: str) -> _FilterNode[K]:
    child = node.plus if level == "+" else None if node.children is None else node.children.get(level)
    assert child is not None, "index out of step with _by_key"
    return child


class _TopicNode(Generic[V]):
    """One level of the retained-topic trie."""

    __slots__ = ("children", "entry")

    def __init__(self) -> None:
        self.children: dict[str, _TopicNode[V]] | None = None  # None until needed: most nodes are leaves
        # (topic, value) of the retained message at this exact topic; match() hands out this very
        # tuple, so a SUBSCRIBE allocates nothing per retained message but the result list.
        self.entry: tuple[str, V] | None = None


class RetainedIndex(Generic[V]):
    """Retained messages by topic, findable by filter in O(matches) for the filters devices use.

    A literal level follows one child, ``+`` visits every child at its level and ``#`` takes a
    whole subtree, so a filter costs the size of what it matches — except a ``+`` followed by
    more levels, which visits every child at the ``+`` even if few of them go on to match.
    """

    __slots__ = ("_nodes", "_root")

    def __init__(self) -> None:
        self._root: _TopicNode[V] = _TopicNode()
        # topic -> its trie node: get() and replacing a retained message are one dict lookup.
        self._nodes: dict[str, _TopicNode[V]] = {}

    def __len__(self) -> int:
        """The number of retained topics."""
        return len(self._nodes)

    def set(self, topic: str, value: V) -> None:
        """Retain ``value`` at ``topic``, replacing what was there.

        Raises ``ValueError`` for an empty topic or one holding a wildcard (MQTT-3.3.2-2).
        """
        node = self._nodes.get(topic)
        if node is None:
            if not topic or "+" in topic or "#" in topic:
                raise ValueError(f"invalid topic name {topic!r}")
            node = self._root
            for level in topic.split("/"):
                if node.children is None:
                    node.children = {}
                child = node.children.get(level)
                if child is None:
                    child = node.children[level] = _TopicNode()
                node = child
            self._nodes[topic] = node
        node.entry = (topic, value)

    def discard(self, topic: str) -> bool:
        """Forget the retained message at ``topic``; True if there was one."""
        if self._nodes.pop(topic, None) is None:
            return False
        trail: list[tuple[_TopicNode[V], str]] = []
        node = self._root
        for level in topic.split("/"):
            trail.append((node, level))
            assert node.children is not None, "trie out of step with _nodes"
            node = node.children[level]
        node.entry = None
        for parent, level in reversed(trail):
            if node.entry is not None or node.children is not None:
                return True
            assert parent.children is not None, "trie out of step with _nodes"
            del parent.children[level]
            if not parent.children:
                parent.children = None
            node = parent
        return True

    def get(self, topic: str) -> V | None:
        """The value retained at ``topic``, or None."""
        node = self._nodes.get(topic)
        if node is None or node.entry is None:
            return None
        return node.entry[1]

    def topics(self) -> list[str]:
        """Every retained topic, in the order first retained."""
        return list(self._nodes)

    def match(self, topic_filter: str) -> list[tuple[str, V]]:
        """Every retained ``(topic, value)`` that ``topic_filter`` matches, in no particular order."""
        found: list[tuple[str, V]] = []
        levels = topic_filter.split("/")
        last = len(levels) - 1
        nodes: list[_TopicNode[V]] = [self._root]
        for depth, level in enumerate(levels):
            if level == "#":
                if depth != last:
                    return []  # "#" anywhere but last is no filter at all (§4.7.1.2)
                for node in nodes:
                    _collect(node, found, skip_dollar=depth == 0)
                return found
            step: list[_TopicNode[V]] = []
            if level == "+":
                for node in nodes:
                    if node.children is not None:
                        if depth == 0:
                            # §4.7.2: a leading wildcard never matches a "$" topic.
                            step.extend(c for name, c in node.children.items() if name[:1] != "$")
                        else:
                            step.extend(node.children.values())
            else:
                for node in nodes:
                    if node.children is not None:
                        child = node.children.get(level)
                        if child is not None:
                            step.append(child)
            if not step:
                return found
            nodes = step
        for node in nodes:
            if node.entry is not None:
                found.append(node.entry)
        return found

    def _debug_sizes(self) -> dict[str, int]:
        """Sizes of the internal structures, for tests: all zero once everything is discarded."""
        trie_nodes = -1  # the root is always there
        empty_dicts = 0
        stack = [self._root]
        while stack:
            node = stack.pop()
            trie_nodes += 1
            if node.children is not None:
                empty_dicts += not node.children
                stack.extend(node.children.values())
        return {"topics": len(self._nodes), "trie_nodes": trie_nodes, "empty_dicts": empty_dicts}


def _collect(node: _TopicNode[V], found: list[tuple[str, V]], *, skip_dollar: bool) -> None:
    """Append every entry in the subtree of ``node``, ``node`` included ("a/#" matches "a")."""
    stack = [node]
    if skip_dollar:
        # Only ever the root: its own entry is always None, and its "$" children are out of reach.
        stack = [] if node.children is None else [c for name, c in node.children.items() if name[:1] != "$"]
    while stack:
        current = stack.pop()
        if current.entry is not None:
            found.append(current.entry)
        if current.children is not None:
            stack.extend(current.children.values())
