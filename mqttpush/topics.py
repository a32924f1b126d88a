"""Device protocol v1 topics (docs/protocol.md) and the access rules over them. Pure: no I/O.

| topic                                   | who publishes | who receives          |
|-----------------------------------------|---------------|-----------------------|
| ``mqttpush/{app}/d/{device}/m/{msg}``   | service       | that device           |
| ``mqttpush/{app}/b/{msg}``              | service       | every device of app   |
| ``mqttpush/{app}/d/{device}/r``         | that device   | service               |
| ``mqttpush/{app}/d/{device}/s``         | that device   | service               |
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

ROOT = "mqttpush"


def inbox_topic(app: str, device: str, msg_id: str) -> str:
    """The retained inbox topic of one message for one device."""
    return f"{ROOT}/{app}/d/{device}/m/{msg_id}"


def inbox_filter(app: str, device: str) -> str:
    """What a device subscribes to for its own inbox."""
    return f"{ROOT}/{app}/d/{device}/m/+"


def broadcast_topic(app: str, msg_id: str) -> str:
    return f"{ROOT}/{app}/b/{msg_id}"


def broadcast_filter(app: str) -> str:
    return f"{ROOT}/{app}/b/+"


def receipt_topic(app: str, device: str) -> str:
    return f"{ROOT}/{app}/d/{device}/r"


def presence_topic(app: str, device: str) -> str:
    return f"{ROOT}/{app}/d/{device}/s"


def api_push_topic(app: str) -> str:
    """Where an app's server publishes push requests (the MQTT publish API, docs/targeting.md)."""
    return f"{ROOT}/{app}/api/push"


def api_result_topic(app: str, request_id: str) -> str:
    return f"{ROOT}/{app}/api/result/{request_id}"


def api_result_filter(app: str) -> str:
    return f"{ROOT}/{app}/api/result/+"


RECEIPT_FILTER = f"{ROOT}/+/d/+/r"
PRESENCE_FILTER = f"{ROOT}/+/d/+/s"
API_PUSH_FILTER = f"{ROOT}/+/api/push"


class TopicKind(Enum):
    INBOX = "inbox"
    BROADCAST = "broadcast"
    RECEIPT = "receipt"
    PRESENCE = "presence"


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    kind: TopicKind
    app: str
    device: str | None = None
    msg_id: str | None = None


def parse_topic(topic: str) -> ParsedTopic | None:
    """Parse a concrete topic of the device protocol; None if it is not one."""
    parts = topic.split("/")
    if len(parts) < 4 or parts[0] != ROOT or not _level_ok(parts[1]):
        return None
    app = parts[1]
    if parts[2] == "b" and len(parts) == 4 and _level_ok(parts[3]):
        return ParsedTopic(TopicKind.BROADCAST, app, msg_id=parts[3])
    if parts[2] != "d" or not _level_ok(parts[3]):
        return None
    device = parts[3]
    if len(parts) == 6 and parts[4] == "m" and _level_ok(parts[5]):
        return ParsedTopic(TopicKind.INBOX, app, device, parts[5])
    if len(parts) == 5 and parts[4] == "r":
        return ParsedTopic(TopicKind.RECEIPT, app, device)
    if len(parts) == 5 and parts[4] == "s":
        return ParsedTopic(TopicKind.PRESENCE, app, device)
    return None


def _level_ok(level: str) -> bool:
    return bool(level) and "+" not in level and "#" not in level


def topic_matches(topic: str, topic_filter: str) -> bool:
    """MQTT 3.1.1 matching (4.7): ``+`` one level, ``#`` the rest; ``$`` topics never match a leading wildcard."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    t_levels = topic.split("/")
    f_levels = topic_filter.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return i == len(f_levels) - 1
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(t_levels) == len(f_levels)


def valid_filter(topic_filter: str) -> bool:
    """True if ``topic_filter`` is a well-formed MQTT 3.1.1 topic filter (4.7.1)."""
    if not topic_filter:
        return False
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


# --- access control ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """A device connected with its own credentials."""

    app: str
    device: str


@dataclass(frozen=True, slots=True)
class ServiceIdentity:
    """The bridge (or an operator tool) with the service credentials: everything under ``mqttpush/``."""

    username: str


@dataclass(frozen=True, slots=True)
class AppIdentity:
    """An app's server on MQTT (username = app key, password = app secret): the MQTT publish API."""

    app: str


Identity = DeviceIdentity | ServiceIdentity | AppIdentity


def may_subscribe(who: Identity, topic_filter: str) -> bool:
    """SUBSCRIBE rule: a device gets exactly its inbox filter and its app's broadcast filter."""
    if isinstance(who, ServiceIdentity):
        return topic_filter.startswith(ROOT + "/")
    if isinstance(who, AppIdentity):
        prefix = api_result_filter(who.app)[:-1]
        rest = topic_filter[len(prefix) :]
        # Its results filter, or one result topic: exactly one level below the prefix.
        return topic_filter.startswith(prefix) and (rest == "+" or ("/" not in rest and _level_ok(rest)))
    return topic_filter in (inbox_filter(who.app, who.device), broadcast_filter(who.app))


def may_publish(who: Identity, topic: str) -> bool:
    """PUBLISH rule: a device publishes only its own receipt and presence topics."""
    if isinstance(who, ServiceIdentity):
        return topic.startswith(ROOT + "/")
    if isinstance(who, AppIdentity):
        return topic == api_push_topic(who.app)
    return topic in (receipt_topic(who.app, who.device), presence_topic(who.app, who.device))


def receive_implied_by_subscribe(topic: str) -> bool:
    """True when, for every identity, a granted filter that matches ``topic`` already implies
    ``may_receive`` (the broker then skips the per-subscriber check, docs/protocol.md: "decided once at
    SUBSCRIBE"). False for the odd topics where it does not: outside ``mqttpush/`` (``$``-topics,
    the bare root a ``mqttpush/#`` filter matches) and topics with an empty level. Proved by
    ``tests/unit/test_topics.py::test_subscribe_implies_receive``."""
    return topic.startswith(ROOT + "/") and "//" not in topic and not topic.endswith("/")


def may_receive(who: Identity, topic: str) -> bool:
    """Delivery rule, applied to live and retained messages alike."""
    if isinstance(who, ServiceIdentity):
        return topic.startswith(ROOT + "/")
    if isinstance(who, AppIdentity):
        prefix = api_result_filter(who.app)[:-1]
        return (
            topic.startswith(prefix) and _level_ok(topic[len(prefix) :]) and "/" not in topic[len(prefix) :]
        )
    parsed = parse_topic(topic)
    if parsed is None or parsed.app != who.app:
        return False
    if parsed.kind is TopicKind.BROADCAST:
        return True
    return parsed.kind is TopicKind.INBOX and parsed.device == who.device


TOPIC_CLASSES = ("inbox", "broadcast", "receipts", "presence", "api", "other")
"""What the metrics count messages by (docs/operations.md, "Metrics"): few values, whatever the topic."""

_DEVICE_CLASSES = {"m": "inbox", "r": "receipts", "s": "presence"}


def topic_class(topic: str) -> str:
    """One of :data:`TOPIC_CLASSES` for a concrete topic, by its shape alone (no id checks): cheap
    enough to call once per message the broker routes."""
    parts = topic.split("/", 5)
    if len(parts) < 3 or parts[0] != ROOT:
        return "other"
    kind = parts[2]
    if kind == "d":
        return _DEVICE_CLASSES.get(parts[4], "other") if len(parts) > 4 else "other"
    if kind == "b":
        return "broadcast"
    return "api" if kind == "api" else "other"
