"""``mqttpush doctor`` (docs/operations.md, "mqttpush doctor"), run as an operator runs it."""

from __future__ import annotations

import datetime as dt
import json
import socket
import subprocess
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bridge.vendors import check_vendor_config
from mqttpush.store import Store
from tests.conftest import ServeProcess, cli, cli_json
from tests.fakes.apns import write_auth_key

MIPUSH_SECRET = "mipush-app-secret-do-not-print-5f2c"
HMS_SECRET = "hms-client-secret-do-not-print-9a1e"


def doctor(data_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return cli("doctor", "--data-dir", str(data_dir), "--http-port", "0", "--mqtt-port", "0", *extra)


def doctor_json(data_dir: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    proc = doctor(data_dir, "--json", *extra)
    return proc.returncode, json.loads(proc.stdout)


def status(doc: dict[str, Any], name: str) -> tuple[str, str]:
    (check,) = [c for c in doc["checks"] if c["name"] == name]
    return check["status"], check["detail"]


def _cert(path: Path, days: int) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "doctor test CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=400))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _data_dir(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A data dir with one app that has APNs (key file + CA file), MiPush and HMS credentials."""
    data = tmp_path / "data"
    app = cli_json("app", "create", "shop", "--data-dir", str(data))
    vendors = tmp_path / "vendors"
    vendors.mkdir()
    write_auth_key(vendors / "AuthKey.p8")
    _cert(vendors / "ca.pem", days=365)
    store = Store(data)
    try:
        for vendor, obj in (
            (
                "apns",
                {
                    "team_id": "TEAM123456",
                    "key_id": "KEY1234567",
                    "key_file": "AuthKey.p8",
                    "topic": "com.example.app",
                    "ca_file": "ca.pem",
                },
            ),
            ("mipush", {"app_secret": MIPUSH_SECRET, "package_name": "com.example.app"}),
            ("hms", {"app_id": "10293847", "client_secret": HMS_SECRET}),
        ):
            store.vendors.put_vendor_config(
                app["app_key"], vendor, check_vendor_config(vendor, obj, vendors, None)
            )
    finally:
        store.close()
    return data, app


def _assert_no_secret(text: str, app: dict[str, str], data: Path) -> None:
    secrets = [MIPUSH_SECRET, HMS_SECRET, app["app_secret"], (data / "master.key").read_bytes().hex()]
    assert not [s for s in secrets if s in text]


def test_a_healthy_data_dir_passes_and_no_secret_is_printed(tmp_path: Path) -> None:
    data, app = _data_dir(tmp_path)
    code, doc = doctor_json(data)
    assert code == 0 and doc["ok"] is True, doc
    assert status(doc, "data dir")[0] == "ok"
    assert status(doc, "file modes")[0] == "ok"
    assert status(doc, "schema")[0] == "ok"
    assert status(doc, "master.key")[0] == "ok"
    assert status(doc, f"apns {app['app_key']}") == ("ok", "ca_file, key_file load")
    assert status(doc, f"apns {app['app_key']} ca_file")[0] == "ok"
    assert status(doc, f"mipush {app['app_key']}")[0] == "ok"
    assert status(doc, f"hms {app['app_key']}")[0] == "ok"
    table = doctor(data)
    assert table.returncode == 0 and "all good" in table.stdout
    for text in (json.dumps(doc), table.stdout + table.stderr):
        _assert_no_secret(text, app, data)


def test_a_missing_data_dir_fails(tmp_path: Path) -> None:
    code, doc = doctor_json(tmp_path / "nothing-here")
    assert code == 1 and doc["ok"] is False
    assert status(doc, "data dir")[0] == "fail"


def test_a_damaged_store_fails(tmp_path: Path) -> None:
    data, _ = _data_dir(tmp_path)
    (data / "mqttpush.db").write_bytes(b"this is no SQLite database, it is a truncated mess " * 100)
    code, doc = doctor_json(data)
    assert code == 1
    state, detail = status(doc, "store")
    assert state == "fail" and "backup" in detail


def test_a_too_open_file_mode_and_data_dir_fail(tmp_path: Path) -> None:
    data, app = _data_dir(tmp_path)
    (data / "master.key").chmod(0o644)
    data.chmod(0o755)
    code, doc = doctor_json(data)
    assert code == 1
    assert status(doc, "data dir") == ("fail", f"{data} has mode 0755; want 0700 (chmod 700 {data})")
    state, detail = status(doc, "file modes")
    assert state == "fail" and "master.key has mode 0644" in detail
    # the doctor only looks: the modes are as it found them
    assert (data / "master.key").stat().st_mode & 0o777 == 0o644
    _assert_no_secret(json.dumps(doc), app, data)


def test_a_missing_vendor_key_file_fails_without_printing_secrets(tmp_path: Path) -> None:
    data, app = _data_dir(tmp_path)
    (tmp_path / "vendors" / "AuthKey.p8").unlink()
    code, doc = doctor_json(data)
    assert code == 1
    state, detail = status(doc, f"apns {app['app_key']}")
    assert state == "fail" and "key_file" in detail and "AuthKey.p8 does not exist" in detail
    assert status(doc, f"mipush {app['app_key']}")[0] == "ok"
    table = doctor(data)
    assert table.returncode == 1 and "a check failed" in table.stdout
    for text in (json.dumps(doc), table.stdout + table.stderr):
        _assert_no_secret(text, app, data)


def test_an_expired_ca_certificate_fails(tmp_path: Path) -> None:
    data, app = _data_dir(tmp_path)
    _cert(tmp_path / "vendors" / "ca.pem", days=-1)
    code, doc = doctor_json(data)
    assert code == 1
    state, detail = status(doc, f"apns {app['app_key']} ca_file")
    assert state == "fail" and "expired" in detail


def test_ports_free_held_by_mqttpush_or_by_another_program(tmp_path: Path) -> None:
    data, _ = _data_dir(tmp_path)
    server = ServeProcess(data, 0, 0)
    try:
        ports = ("--http-port", str(server.http_port), "--mqtt-port", str(server.mqtt_port))
        proc = cli("doctor", "--data-dir", str(data), "--json", *ports)
        doc = json.loads(proc.stdout)
        assert proc.returncode == 0, doc
        assert "held by a running mqttpush" in status(doc, "http_port")[1]
        assert "this data dir's broker runs" in status(doc, "mqtt_port")[1]
        assert "held by a running mqttpush" in status(doc, "lock broker")[1]
    finally:
        server.stop(15)
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        proc = cli("doctor", "--data-dir", str(data), "--json", "--http-port", str(port), "--mqtt-port", "0")
        doc = json.loads(proc.stdout)
    assert proc.returncode == 1
    assert status(doc, "http_port") == ("fail", f"127.0.0.1:{port} is in use by another program")
    assert "free" in status(doc, "lock broker")[1]


def test_a_bad_flag_is_exit_status_2(tmp_path: Path) -> None:
    proc = cli("doctor", "--data-dir", str(tmp_path), "--http-port", "not-a-port")
    assert proc.returncode == 2
    assert "--http-port" in proc.stderr and "Traceback" not in proc.stderr
