"""Device registration, token authentication, known_devices and presence."""

from __future__ import annotations

from mqttpush import ids
from mqttpush.store.store import Store
from tests.store.fake_clock import START, FakeClock


def test_first_registration_creates_a_device(store: Store) -> None:
    app = store.apps.create_app("shop")
    reg = store.devices.register_device(
        app.app_key, "install-1", "android", app_version="1.2", locale="de-DE"
    )
    assert reg.created is True
    assert ids.is_valid_id(reg.device_id)
    assert reg.device_token.startswith(reg.device_id + ".")
    assert len(reg.device_token) > len(reg.device_id) + 32
    device = store.devices.get_device(reg.device_id)
    assert device is not None
    assert (device.app_key, device.install_id, device.platform) == (app.app_key, "install-1", "android")
    assert (device.app_version, device.locale) == ("1.2", "de-DE")
    assert device.created_at == START
    assert device.online is False
    assert device.last_seen is None


def test_reregistration_keeps_the_id_and_rotates_the_token(store: Store, clock: FakeClock) -> None:
    app = store.apps.create_app("shop")
    first = store.devices.register_device(app.app_key, "install-1", "android", app_version="1.0", locale="en")
    clock.advance(10)
    second = store.devices.register_device(app.app_key, "install-1", "android", app_version="2.0")

    assert second.device_id == first.device_id
    assert second.created is False
    assert second.device_token != first.device_token
    assert second.device_token.startswith(second.device_id + ".")

    assert store.devices.authenticate_device(first.device_id, first.device_token) is None
    assert store.devices.authenticate_device(second.device_id, second.device_token) == app.app_key

    device = store.devices.get_device(first.device_id)
    assert device is not None
    assert device.app_version == "2.0"
    assert device.locale == "en"  # not given again: kept
    assert device.created_at == START
    assert len(store.devices.list_devices(app.app_key)) == 1


def test_token_authenticates_only_its_own_device(store: Store) -> None:
    app = store.apps.create_app("shop")
    a = store.devices.register_device(app.app_key, "install-a", "android")
    b = store.devices.register_device(app.app_key, "install-b", "ios")
    assert a.device_id != b.device_id
    assert store.devices.authenticate_device(a.device_id, a.device_token) == app.app_key
    assert store.devices.authenticate_device(b.device_id, b.device_token) == app.app_key
    assert store.devices.authenticate_device(b.device_id, a.device_token) is None
    assert store.devices.authenticate_device(a.device_id, b.device_token) is None
    # The secret part of a's token with b's id prefix is not b's token either.
    forged = b.device_id + "." + a.device_token.split(".", 1)[1]
    assert store.devices.authenticate_device(b.device_id, forged) is None


def test_authenticate_unknown_device_or_bad_token(store: Store) -> None:
    app = store.apps.create_app("shop")
    reg = store.devices.register_device(app.app_key, "install-1", "android")
    assert store.devices.authenticate_device("dunknowndevice000000", reg.device_token) is None
    assert store.devices.authenticate_device(reg.device_id, "") is None
    assert store.devices.authenticate_device(reg.device_id, reg.device_token + "x") is None
    assert store.devices.authenticate_device(reg.device_id, reg.device_token[:-1]) is None


def test_same_install_id_in_two_apps_gives_two_devices(store: Store) -> None:
    shop = store.apps.create_app("shop")
    news = store.apps.create_app("news")
    a = store.devices.register_device(shop.app_key, "install-1", "android")
    b = store.devices.register_device(news.app_key, "install-1", "android")
    assert a.created is True
    assert b.created is True
    assert a.device_id != b.device_id
    assert store.devices.authenticate_device(a.device_id, a.device_token) == shop.app_key
    assert store.devices.authenticate_device(b.device_id, b.device_token) == news.app_key
    assert [d.device_id for d in store.devices.list_devices(shop.app_key)] == [a.device_id]
    assert [d.device_id for d in store.devices.list_devices(news.app_key)] == [b.device_id]


def test_known_devices_only_returns_ids_of_that_app(store: Store) -> None:
    shop = store.apps.create_app("shop")
    news = store.apps.create_app("news")
    mine = [store.devices.register_device(shop.app_key, f"i-{i}", "android").device_id for i in range(530)]
    theirs = [store.devices.register_device(news.app_key, f"i-{i}", "android").device_id for i in range(5)]
    unknown = [f"dunknown{i:012d}" for i in range(5)]
    # Foreign and unknown ids first so the app's own ids straddle the 500-id chunk boundary,
    # and duplicates that must not count twice.
    asked = theirs + unknown + mine + mine[:20] + mine[-3:]
    assert len(asked) > 500

    assert store.devices.known_devices(shop.app_key, asked) == set(mine)
    assert store.devices.known_devices(news.app_key, asked) == set(theirs)
    assert store.devices.known_devices(shop.app_key, iter(mine[495:505])) == set(mine[495:505])
    assert store.devices.known_devices(shop.app_key, []) == set()
    assert store.devices.known_devices("another-app-key", asked) == set()


def test_set_presence_updates_online_and_last_seen(store: Store, clock: FakeClock) -> None:
    app = store.apps.create_app("shop")
    a = store.devices.register_device(app.app_key, "install-a", "android").device_id
    b = store.devices.register_device(app.app_key, "install-b", "android").device_id

    t1 = clock.advance(5)
    store.devices.set_presence(a, True)
    da = store.devices.get_device(a)
    assert da is not None
    assert (da.online, da.last_seen) == (True, t1)
    db = store.devices.get_device(b)
    assert db is not None
    assert (db.online, db.last_seen) == (False, None)

    t2 = clock.advance(60)
    store.devices.set_presence(a, False)
    da = store.devices.get_device(a)
    assert da is not None
    assert (da.online, da.last_seen) == (False, t2)


def test_reset_presence_sets_everyone_offline_and_keeps_last_seen(store: Store, clock: FakeClock) -> None:
    app = store.apps.create_app("shop")
    a = store.devices.register_device(app.app_key, "install-a", "android").device_id
    b = store.devices.register_device(app.app_key, "install-b", "android").device_id
    t1 = clock.advance(5)
    store.devices.set_presence(a, True)
    store.devices.set_presence(b, True)
    clock.advance(3600)

    store.devices.reset_presence()

    for device_id in (a, b):
        device = store.devices.get_device(device_id)
        assert device is not None
        assert device.online is False
        # Nobody was seen at reset time: last_seen stays the last real sighting.
        assert device.last_seen == t1


def test_import_is_one_device_per_install_id_and_the_last_line_wins(store: Store) -> None:
    """``device import``: an install id known before keeps its device, one given twice in the
    same import is one device whose last token and fields count; tags and aliases of every line."""
    app = store.apps.create_app("shop")
    before = store.devices.register_device(app.app_key, "known", "android")
    out = store.devices.import_devices(
        app.app_key,
        [
            {"install_id": "known", "platform": "ios", "tags": ["a"]},
            {"install_id": "twice", "platform": "android", "app_version": "1.0", "tags": ["b"]},
            {"install_id": "new", "platform": "android", "alias": "u1"},
            {"install_id": "twice", "platform": "android", "app_version": "2.0", "tags": ["c"]},
        ],
    )
    known, twice_1, new, twice_2 = out
    assert known["device_id"] == before.device_id
    assert twice_1["device_id"] == twice_2["device_id"] != new["device_id"]
    assert len(store.devices.list_devices(app.app_key)) == 3
    assert store.devices.authenticate_device(before.device_id, before.device_token) is None
    assert store.devices.authenticate_device(known["device_id"], known["device_token"]) == app.app_key
    assert store.devices.authenticate_device(twice_2["device_id"], twice_1["device_token"]) is None
    assert store.devices.authenticate_device(twice_2["device_id"], twice_2["device_token"]) == app.app_key
    twice = store.devices.get_device(twice_2["device_id"])
    assert twice is not None and twice.app_version == "2.0"
    device = store.devices.get_device(known["device_id"])
    assert device is not None and device.platform == "ios"
    assert store.devices.known_devices(app.app_key, [d["device_id"] for d in out]) == {
        d["device_id"] for d in out
    }
    assert sorted(store.devices.tags_of(twice_2["device_id"])) == ["b", "c"]
