"""Issue 18 item 6: rotating an app secret with an overlap, the service password, the VAPID keys."""

from __future__ import annotations

from pathlib import Path

from mqttpush.client import PushClient
from mqttpush.clock import ManualClock
from mqttpush.errors import ClientError
from mqttpush.store import Store
from tests.conftest import Running, cli, cli_json


def _settings_with(r: Running, secret: str) -> int:
    """The status of one signed request made with ``secret`` (200, or the refusal's status)."""
    with PushClient(r.url, r.app_key, secret) as c:
        try:
            c.settings()
        except ClientError as exc:
            assert exc.code == "bad_signature", exc
            return exc.status
    return 200


def test_old_secret_verifies_within_the_overlap_and_not_after(
    clocked: Running, manual_clock: ManualClock
) -> None:
    r = clocked
    old = r.app_secret
    store = Store(r.data_dir, clock=manual_clock)
    try:
        new = store.apps.rotate_app_secret(r.app_key, 3600).secret
    finally:
        store.close()
    assert new != old
    r.advance(5)  # past the API's app cache: it reads the rotated app
    assert _settings_with(r, new) == 200
    assert _settings_with(r, old) == 200
    r.advance(3590)
    assert _settings_with(r, old) == 200
    r.advance(10)
    assert _settings_with(r, old) == 401
    assert _settings_with(r, new) == 200


def test_rotation_without_overlap_cuts_the_old_secret_at_once(tmp_path: Path) -> None:
    clock = ManualClock()
    store = Store(tmp_path, clock=clock)
    try:
        app = store.apps.create_app("shop")
        rotated = store.apps.rotate_app_secret(app.app_key, 0)
        assert not store.apps.authenticate_app(app.app_key, app.secret)
        assert store.apps.authenticate_app(app.app_key, rotated.secret)
        again = store.apps.rotate_app_secret(app.app_key, 60)
        assert store.apps.authenticate_app(app.app_key, rotated.secret)
        assert not store.apps.authenticate_app(app.app_key, app.secret)  # only one previous secret
        clock.advance(60)
        assert not store.apps.authenticate_app(app.app_key, rotated.secret)
        assert store.apps.authenticate_app(app.app_key, again.secret)
    finally:
        store.close()


def test_cli_rotates_the_app_secret(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    created = cli_json("app", "create", "shop", "--data-dir", data)
    doc = cli_json("app", "secret", "rotate", created["app_key"], "--data-dir", data, "--overlap", "90m")
    assert doc["app_key"] == created["app_key"] and doc["app_secret"] != created["app_secret"]
    store = Store(tmp_path / "data")
    try:
        assert store.apps.authenticate_app(created["app_key"], doc["app_secret"])
        assert store.apps.authenticate_app(created["app_key"], created["app_secret"])
        assert 5300 < doc["previous_valid_until"] - store.clock.now() <= 5400
    finally:
        store.close()
    bad = cli("app", "secret", "rotate", created["app_key"], "--data-dir", data, "--overlap", "soon")
    assert bad.returncode == 2 and "--overlap" in bad.stderr
    unknown = cli("app", "secret", "rotate", "nope", "--data-dir", data, "--json")
    assert unknown.returncode == 2 and "[unknown_app]" in unknown.stderr


def test_cli_rotates_the_service_password(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    first = cli_json("service-credentials", "--data-dir", data)
    assert cli_json("service-credentials", "--data-dir", data) == first
    rotated = cli_json("service-credentials", "--data-dir", data, "--rotate")
    assert rotated["username"] == first["username"] and rotated["password"] != first["password"]
    store = Store(tmp_path / "data")
    try:
        assert store.accounts.authenticate_service(rotated["username"], rotated["password"])
        assert not store.accounts.authenticate_service(first["username"], first["password"])
    finally:
        store.close()


def test_cli_rotates_the_vapid_keys(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    key = cli_json("app", "create", "shop", "--data-dir", data)["app_key"]
    first = cli_json("app", "vapid", key, "--data-dir", data)["public_key"]
    assert cli_json("app", "vapid", key, "--data-dir", data)["public_key"] == first
    rotated = cli_json("app", "vapid", key, "--data-dir", data, "--rotate")["public_key"]
    assert rotated != first
    assert cli_json("app", "vapid", key, "--data-dir", data)["public_key"] == rotated
    store = Store(tmp_path / "data")
    try:
        config = store.vendors.vendor_config(key, "webpush")
        assert config is not None and config["vapid_public_key"] == rotated
        assert config["obj"] == {"subject": "mailto:push@localhost"}
    finally:
        store.close()
