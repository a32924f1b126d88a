"""Which channel each delivery takes (docs/vendors.md). Pure: facts in, a route out.

| strategy            | device online (or recently seen)  | device offline                          |
|---------------------|-----------------------------------|-----------------------------------------|
| ``mqtt``            | MQTT                              | MQTT (the retained inbox waits)         |
| ``mqtt_else_vendor``| MQTT                              | its vendor token, else MQTT             |
| ``vendor_first``    | vendor and MQTT (device dedupes)  | vendor and MQTT                         |
| ``vendor``          | vendor only (none: failed)        | vendor only (none: failed)              |

"Online" means connected now, or seen within ``grace`` seconds (a phone between two
connections, a persistent session that will get its queued messages).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

STRATEGIES = ("mqtt", "mqtt_else_vendor", "vendor_first", "vendor")
DEFAULT_STRATEGY = "mqtt_else_vendor"
GRACE_SECONDS = 60.0

# Which vendor a platform prefers when a device has several tokens.
_PREFERENCE = {
    "ios": ("apns", "fcm", "webpush"),
    "android": ("fcm", "hms", "mipush", "webpush"),  # HMS / MiPush first only by channel, below
    "web": ("webpush", "fcm"),
    "iot": ("fcm", "webpush"),
}
_ANDROID_CHANNEL = {"huawei": "hms", "honor": "hms", "xiaomi": "mipush", "mi": "mipush"}


class RouteFacts(Protocol):
    """What the router needs to know about one device (the store's routing record has these fields)."""

    @property
    def platform(self) -> str: ...
    @property
    def channel(self) -> str | None: ...
    @property
    def online(self) -> bool: ...
    @property
    def last_seen(self) -> float | None: ...
    @property
    def tokens(self) -> tuple[tuple[str, str], ...]:
        """``(vendor, token)`` pairs, newest first."""
        ...


@dataclass(frozen=True, slots=True)
class Route:
    mqtt: bool
    vendor: str | None = None
    token: str | None = None
    failure: str | None = None
    """Why nothing can carry the message (``vendor`` strategy without a usable token)."""


def pick_token(facts: RouteFacts, configured: frozenset[str]) -> tuple[str, str] | None:
    """The device's best (vendor, token) among vendors the app has credentials for."""
    usable = [(v, t) for v, t in facts.tokens if v in configured]
    if not usable:
        return None
    order = list(_PREFERENCE.get(facts.platform, ()))
    preferred = _ANDROID_CHANNEL.get((facts.channel or "").lower()) if facts.platform == "android" else None
    if preferred:
        order.insert(0, preferred)

    def rank(item: tuple[str, str]) -> int:
        return order.index(item[0]) if item[0] in order else len(order)

    return min(usable, key=rank)  # stable: among equals, the newest token (facts are newest first)


def route(
    strategy: str | None,
    facts: RouteFacts,
    configured: frozenset[str],
    now: float,
    grace: float = GRACE_SECONDS,
) -> Route:
    """Decide MQTT, vendor, or both for one device."""
    strategy = strategy or DEFAULT_STRATEGY
    if strategy == "mqtt" or not configured:
        return Route(mqtt=True)
    online = facts.online or (facts.last_seen is not None and now - facts.last_seen <= grace)
    pick = pick_token(facts, configured)
    if strategy == "mqtt_else_vendor":
        if online or pick is None:
            return Route(mqtt=True)
        return Route(mqtt=False, vendor=pick[0], token=pick[1])
    if pick is None:
        if strategy == "vendor":
            return Route(mqtt=False, failure="no_vendor_token")
        return Route(mqtt=True)
    return Route(mqtt=strategy == "vendor_first", vendor=pick[0], token=pick[1])
