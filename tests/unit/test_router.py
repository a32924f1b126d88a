"""The router (docs/vendors.md §3), without sockets: facts in, a route out."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.router import GRACE_SECONDS, STRATEGIES, Route, pick_token, route

NOW = 1_800_000_000.0
ALL = frozenset({"apns", "fcm", "hms", "mipush", "webpush"})


@dataclass(frozen=True)
class Facts:
    """What the router reads about one device (satisfies ``bridge.router.RouteFacts``)."""

    platform: str = "android"
    channel: str | None = None
    online: bool = False
    last_seen: float | None = None
    tokens: tuple[tuple[str, str], ...] = ()


ONLINE = {"online": True, "last_seen": NOW}
RECENT = {"online": False, "last_seen": NOW - GRACE_SECONDS}  # seen exactly at the edge of the grace
OFFLINE = {"online": False, "last_seen": NOW - GRACE_SECONDS - 1}
NEVER = {"online": False, "last_seen": None}
PRESENCE = {"online": ONLINE, "recent": RECENT, "offline": OFFLINE, "never": NEVER}

FCM = ("fcm", "f1")
APNS = ("apns", "a1")
HMS = ("hms", "h1")
MI = ("mipush", "m1")
WEB = ("webpush", "w1")


def facts(presence: str, tokens: tuple[tuple[str, str], ...] = (FCM,), **kw: object) -> Facts:
    return Facts(tokens=tokens, **PRESENCE[presence], **kw)  # type: ignore[arg-type]


MQTT = Route(mqtt=True)
VIA_FCM = Route(mqtt=False, vendor="fcm", token="f1")
BOTH_FCM = Route(mqtt=True, vendor="fcm", token="f1")
NO_TOKEN = Route(mqtt=False, failure="no_vendor_token")


# strategy × presence × tokens: the table of docs/vendors.md §3 ------------------------------------

TABLE = [
    # strategy, presence, tokens, configured, expected
    ("mqtt", "online", (FCM,), ALL, MQTT),
    ("mqtt", "offline", (FCM,), ALL, MQTT),
    ("mqtt", "never", (), ALL, MQTT),
    ("mqtt_else_vendor", "online", (FCM,), ALL, MQTT),
    ("mqtt_else_vendor", "recent", (FCM,), ALL, MQTT),
    ("mqtt_else_vendor", "offline", (FCM,), ALL, VIA_FCM),
    ("mqtt_else_vendor", "never", (FCM,), ALL, VIA_FCM),
    ("mqtt_else_vendor", "offline", (), ALL, MQTT),
    ("mqtt_else_vendor", "offline", (FCM,), frozenset({"apns"}), MQTT),  # fcm not configured
    ("mqtt_else_vendor", "offline", (FCM,), frozenset(), MQTT),
    (None, "online", (FCM,), ALL, MQTT),  # None is the default, mqtt_else_vendor
    (None, "offline", (FCM,), ALL, VIA_FCM),
    (None, "offline", (), ALL, MQTT),
    ("vendor_first", "online", (FCM,), ALL, BOTH_FCM),
    ("vendor_first", "recent", (FCM,), ALL, BOTH_FCM),
    ("vendor_first", "offline", (FCM,), ALL, BOTH_FCM),
    ("vendor_first", "offline", (), ALL, MQTT),
    ("vendor_first", "online", (FCM,), frozenset({"hms"}), MQTT),
    ("vendor", "online", (FCM,), ALL, VIA_FCM),
    ("vendor", "recent", (FCM,), ALL, VIA_FCM),
    ("vendor", "offline", (FCM,), ALL, VIA_FCM),
    ("vendor", "online", (), ALL, NO_TOKEN),
    ("vendor", "offline", (), ALL, NO_TOKEN),
    ("vendor", "offline", (FCM,), frozenset({"apns"}), NO_TOKEN),  # a token, but no credentials
    ("vendor", "offline", (FCM,), frozenset(), MQTT),  # no vendor configured at all: MQTT, always
]


@pytest.mark.parametrize(("strategy", "presence", "tokens", "configured", "expected"), TABLE)
def test_route_table(
    strategy: str | None,
    presence: str,
    tokens: tuple[tuple[str, str], ...],
    configured: frozenset[str],
    expected: Route,
) -> None:
    assert route(strategy, facts(presence, tokens), configured, NOW) == expected


def test_every_strategy_is_in_the_table() -> None:
    assert {row[0] for row in TABLE} == set(STRATEGIES) | {None}


@pytest.mark.parametrize(
    ("last_seen", "grace", "online"),
    [
        (NOW, 60.0, True),
        (NOW - 60.0, 60.0, True),
        (NOW - 60.001, 60.0, False),
        (NOW - 300.0, 600.0, True),
        (NOW - 1.0, 0.0, False),
        (None, 1e9, False),
    ],
)
def test_recently_seen_counts_as_online_within_the_grace(
    last_seen: float | None, grace: float, online: bool
) -> None:
    device = Facts(last_seen=last_seen, tokens=(FCM,))
    got = route("mqtt_else_vendor", device, ALL, NOW, grace=grace)
    assert got == (MQTT if online else VIA_FCM)


def test_connected_now_is_online_whatever_last_seen_says() -> None:
    device = Facts(online=True, last_seen=NOW - 10 * 86400, tokens=(FCM,))
    assert route("mqtt_else_vendor", device, ALL, NOW) == MQTT


# platform / channel × tokens: which vendor a device with several tokens gets ----------------------

SEVERAL = (WEB, FCM, MI, HMS, APNS)  # newest first, in an order no preference follows


@pytest.mark.parametrize(
    ("platform", "channel", "tokens", "configured", "expected"),
    [
        ("ios", None, SEVERAL, ALL, APNS),
        ("ios", None, (WEB, FCM), ALL, FCM),
        ("ios", None, (WEB, FCM), frozenset({"webpush"}), WEB),
        ("ios", "huawei", SEVERAL, ALL, APNS),  # the Android channel means nothing on iOS
        ("android", "huawei", SEVERAL, ALL, HMS),
        ("android", "HONOR", SEVERAL, ALL, HMS),  # case does not matter
        ("android", "xiaomi", SEVERAL, ALL, MI),
        ("android", "mi", SEVERAL, ALL, MI),
        ("android", "xiaomi", SEVERAL, frozenset({"fcm", "hms"}), FCM),  # mipush not configured: FCM
        ("android", "xiaomi", (FCM, HMS), ALL, FCM),  # no regid: the platform order, FCM first
        ("android", None, (HMS, MI), ALL, HMS),  # no FCM token: HMS before MiPush
        ("android", "samsung", (WEB, FCM), ALL, FCM),
        ("android", None, (WEB, FCM), ALL, FCM),
        ("android", None, (WEB, MI), ALL, MI),  # no FCM token: the regid beats WebPush
        ("web", None, SEVERAL, ALL, WEB),
        ("web", None, (FCM, APNS), ALL, FCM),
        ("web", None, (APNS,), ALL, APNS),  # not preferred, but the only one: still usable
        ("iot", None, SEVERAL, ALL, FCM),
        ("iot", None, (WEB, APNS), ALL, WEB),
        ("iot", None, (APNS,), frozenset({"fcm"}), None),
        ("symbian", None, (WEB, FCM), ALL, WEB),  # unknown platform: the newest usable token
        ("android", "huawei", (), ALL, None),
        ("android", "huawei", SEVERAL, frozenset(), None),
    ],
)
def test_pick_token(
    platform: str,
    channel: str | None,
    tokens: tuple[tuple[str, str], ...],
    configured: frozenset[str],
    expected: tuple[str, str] | None,
) -> None:
    assert pick_token(Facts(platform=platform, channel=channel, tokens=tokens), configured) == expected


@pytest.mark.parametrize("channel", [None, "samsung", "oppo"])
def test_android_without_a_vendor_channel_prefers_fcm(channel: str | None) -> None:
    device = Facts(platform="android", channel=channel, tokens=(HMS, MI, FCM))
    assert pick_token(device, ALL) == FCM


def test_among_tokens_of_one_vendor_the_newest_wins() -> None:
    device = Facts(platform="android", tokens=(("fcm", "new"), ("fcm", "old")))
    assert pick_token(device, ALL) == ("fcm", "new")


@pytest.mark.parametrize(
    ("platform", "channel", "vendor"),
    [
        ("ios", None, "apns"),
        ("android", "huawei", "hms"),
        ("android", "xiaomi", "mipush"),
        ("web", None, "webpush"),
    ],
)
def test_an_offline_device_gets_its_platforms_vendor(platform: str, channel: str | None, vendor: str) -> None:
    device = Facts(platform=platform, channel=channel, tokens=SEVERAL, **OFFLINE)  # type: ignore[arg-type]
    got = route("mqtt_else_vendor", device, ALL, NOW)
    assert (got.mqtt, got.vendor, got.token) == (False, vendor, dict(SEVERAL)[vendor])


# properties over all facts ------------------------------------------------------------------------

vendors = st.sampled_from([*sorted(ALL), "pushy"])
all_facts = st.builds(
    Facts,
    platform=st.sampled_from(["ios", "android", "web", "iot", "other"]),
    channel=st.sampled_from([None, "huawei", "honor", "xiaomi", "mi", "oppo", ""]),
    online=st.booleans(),
    last_seen=st.one_of(st.none(), st.floats(min_value=NOW - 3600, max_value=NOW)),
    tokens=st.lists(st.tuples(vendors, st.text("abc", min_size=1, max_size=3)), max_size=5).map(tuple),
)


@settings(max_examples=300)
@given(
    strategy=st.sampled_from([*STRATEGIES, None]),
    device=all_facts,
    configured=st.frozensets(vendors),
)
def test_every_route_carries_the_message_or_says_why_not(
    strategy: str | None, device: Facts, configured: frozenset[str]
) -> None:
    got = route(strategy, device, configured, NOW)
    pick = pick_token(device, configured)
    assert got.mqtt or got.vendor is not None or got.failure == "no_vendor_token"
    if got.vendor is not None:
        assert got.vendor in configured and (got.vendor, got.token) == pick
        assert (got.vendor, got.token) in device.tokens
    if got.failure is not None:
        assert strategy == "vendor" and pick is None and not got.mqtt
    if strategy == "mqtt" or not configured:
        assert got == MQTT
    if strategy == "vendor" and configured:
        assert not got.mqtt


@settings(max_examples=300)
@given(device=all_facts, configured=st.frozensets(vendors))
def test_pick_token_is_a_usable_token_of_the_device(device: Facts, configured: frozenset[str]) -> None:
    pick = pick_token(device, configured)
    usable = [t for t in device.tokens if t[0] in configured]
    assert (pick is None) == (not usable)
    if pick is not None:
        assert pick in usable
