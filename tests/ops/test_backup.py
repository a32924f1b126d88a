"""Issue 18 item 6: online backup under load, verified restore, refusals (in use, tampered, non-empty)."""

from __future__ import annotations

import hashlib
import json
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mqttpush.client import PushClient
from mqttpush.errors import ClientError, StoreError
from mqttpush.store import Store
from mqttpush.store.backup import backup, restore
from mqttpush.store.store import DB_FILE, KEY_FILE
from tests.conftest import ServeProcess, cli, cli_json


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _seeded(data: Path) -> tuple[str, str, str]:
    """A store with one app and one device: (app_key, app_secret, device_id)."""
    store = Store(data)
    try:
        app = store.apps.create_app("shop")
        device = store.devices.import_devices(app.app_key, [{"install_id": "i1", "platform": "iot"}])[0]
    finally:
        store.close()
    return app.app_key, app.secret, device["device_id"]


def test_backup_then_restore_round_trip(tmp_path: Path) -> None:
    data, dest, again = tmp_path / "data", tmp_path / "bk", tmp_path / "restored"
    app_key, secret, _ = _seeded(data)
    manifest = backup(data, dest, "9.9", 1_800_000_000.0)
    assert manifest["counts"] == {"apps": 1, "devices": 1, "messages": 0}
    assert manifest["mqttpush_version"] == "9.9" and manifest["created_at"].startswith("2027-01-15")
    assert manifest["schema_version"] >= 6
    assert _mode(dest) == 0o700
    for name in (DB_FILE, KEY_FILE, "manifest.json"):
        assert _mode(dest / name) == 0o600
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == hashlib.sha256((dest / name).read_bytes()).hexdigest()
        assert entry["size"] == (dest / name).stat().st_size
    assert json.loads((dest / "manifest.json").read_text()) == manifest

    assert restore(dest, again) == manifest
    assert _mode(again) == 0o700 and _mode(again / DB_FILE) == 0o600 and _mode(again / KEY_FILE) == 0o600
    store = Store(again)
    try:
        app = store.apps.get_app(app_key)
        assert app is not None and app.secret == secret  # the key came along: sealed secrets open
    finally:
        store.close()


def test_backup_refuses_a_non_empty_destination_and_a_missing_store(tmp_path: Path) -> None:
    data, dest = tmp_path / "data", tmp_path / "bk"
    _seeded(data)
    dest.mkdir()
    (dest / "other").write_text("x")
    proc = cli("backup", str(dest), "--data-dir", str(data), "--json")
    assert proc.returncode == 2 and "[backup_dest_not_empty]" in proc.stderr
    proc = cli("backup", str(tmp_path / "bk2"), "--data-dir", str(tmp_path / "nothing"), "--json")
    assert proc.returncode == 2 and "[no_store]" in proc.stderr
    assert not (tmp_path / "nothing").exists()


def test_restore_refuses_a_tampered_backup(tmp_path: Path) -> None:
    data, dest = tmp_path / "data", tmp_path / "bk"
    _seeded(data)
    backup(data, dest, "9.9", 1_800_000_000.0)
    db = dest / DB_FILE
    raw = bytearray(db.read_bytes())
    raw[-1] ^= 0xFF  # same size, other content
    db.write_bytes(bytes(raw))
    proc = cli("restore", str(dest), "--data-dir", str(tmp_path / "new"), "--json")
    assert proc.returncode == 2 and "[bad_backup]" in proc.stderr
    assert not (tmp_path / "new" / DB_FILE).exists()
    (dest / "manifest.json").unlink()
    with pytest.raises(StoreError) as refused:
        restore(dest, tmp_path / "new")
    assert refused.value.code == "bad_backup"


def test_restore_refuses_a_non_empty_data_dir_unless_forced(tmp_path: Path) -> None:
    data, dest, other = tmp_path / "data", tmp_path / "bk", tmp_path / "other"
    app_key, _, _ = _seeded(data)
    backup(data, dest, "9.9", 1_800_000_000.0)
    _seeded(other)
    proc = cli("restore", str(dest), "--data-dir", str(other), "--json")
    assert proc.returncode == 2 and "[data_dir_not_empty]" in proc.stderr
    doc = cli_json("restore", str(dest), "--data-dir", str(other), "--force")
    assert doc["restored"] == str(other) and doc["manifest"]["counts"]["apps"] == 1
    assert not (other / f"{DB_FILE}-wal").exists()
    store = Store(other)
    try:
        assert [a.app_key for a in store.apps.list_apps()] == [app_key]
    finally:
        store.close()


def _pusher(url: str, key: str, secret: str, device: str, accepted: list[str], stop: threading.Event) -> None:
    with PushClient(url, key, secret, timeout=10, retries=0) as c:  # every refusal seen, none waited out
        while not stop.is_set():
            try:
                accepted.append(
                    c.push({"target": {"devices": [device]}, "notification": {"title": "n"}})["msg_id"]
                )
            except ClientError as exc:
                assert exc.code == "overloaded", exc  # the only refusal a busy server may give


def test_backup_under_load_holds_every_push_accepted_before_it(tmp_path: Path) -> None:
    data, dest, restored = tmp_path / "data", tmp_path / "bk", tmp_path / "restored"
    app_key, secret, device = _seeded(data)
    server = ServeProcess(data)
    stop = threading.Event()
    accepted: list[str] = []
    pusher = threading.Thread(target=_pusher, args=(server.url, app_key, secret, device, accepted, stop))
    try:
        pusher.start()
        with PushClient(server.url, app_key, secret) as c:  # at least one push is in before the backup
            accepted.append(
                c.push({"target": {"devices": [device]}, "notification": {"title": "first"}})["msg_id"]
            )
        before = list(accepted)  # every push answered 202 before the backup begins
        proc = subprocess.run(
            [sys.executable, "-m", "mqttpush", "backup", str(dest), "--data-dir", str(data), "--json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert doc["backup"] == str(dest)
        assert doc["manifest"]["counts"]["messages"] >= len(before)
        with PushClient(server.url, app_key, secret) as c:  # the server kept accepting meanwhile
            c.push({"target": {"devices": [device]}, "notification": {"title": "after"}})
        assert len(accepted) > len(before)

        refused = cli("restore", str(dest), "--data-dir", str(data), "--force", "--json")
        assert refused.returncode == 2 and "[store_in_use]" in refused.stderr
    finally:
        stop.set()
        pusher.join(30)
        server.stop(signal.SIGTERM)

    assert cli_json("restore", str(dest), "--data-dir", str(restored))["restored"] == str(restored)
    store = Store(restored)
    try:
        missing = [m for m in before if store.messages.message_status(app_key, m) is None]
    finally:
        store.close()
    assert not missing, f"{len(missing)} of {len(before)} pushes accepted before the backup are not in it"


def test_restore_refuses_a_store_open_without_a_lock_file(tmp_path: Path) -> None:
    """A process that holds the database open (not only a server with its lock file) is seen."""
    data, dest = tmp_path / "data", tmp_path / "bk"
    _seeded(data)
    backup(data, dest, "9.9", 1_800_000_000.0)
    assert not list(data.glob(".lock*"))
    store = Store(data)
    try:
        with pytest.raises(StoreError) as refused:
            restore(dest, data, force=True)
        assert refused.value.code == "store_in_use"
    finally:
        store.close()
    assert restore(dest, data, force=True)["counts"]["apps"] == 1
