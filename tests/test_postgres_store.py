"""The whole server on the PostgreSQL store (``--store postgresql://…``): pushes, receipts and
the local admin commands, as on SQLite."""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mqttpush import signing
from mqttpush.device import DeviceClient
from mqttpush.store import Store
from tests.conftest import Running, _serve, cli, cli_json
from tests.pg import PgServer, pg_server


@pytest.fixture
def on_postgres(tmp_path: Path, pg: PgServer) -> Iterator[Running]:
    yield from _serve(tmp_path / "data", store=pg.fresh_url())


def test_a_push_through_postgresql_arrives_and_its_receipt_is_stored(on_postgres: Running) -> None:
    r = on_postgres
    ((device, token),) = r.register()
    got: queue.Queue[dict[str, Any]] = queue.Queue()
    client = DeviceClient.from_server(r.url, device, token, on_message=got.put)
    client.connect()
    try:
        msg_id = r.push([device], title="over postgres")
        assert got.get(timeout=10)["id"] == msg_id
        delivery = r.wait_state(msg_id, device, "arrived")
        assert [h["state"] for h in delivery["history"]][-1] == "arrived"
    finally:
        client.disconnect()
    # The rows are in PostgreSQL, not in a SQLite file beside the key.
    assert not (r.data_dir / "mqttpush.db").exists()
    store = Store(r.data_dir, url=r.server.config.store)
    try:
        status = store.messages.message_status(r.app_key, msg_id)
        assert status is not None
    finally:
        store.close()


def test_an_offline_device_gets_its_inbox_from_postgresql_on_connect(on_postgres: Running) -> None:
    r = on_postgres
    ((device, token),) = r.register()
    msg_id = r.push([device], title="while offline")
    got: queue.Queue[dict[str, Any]] = queue.Queue()
    client = DeviceClient.from_server(r.url, device, token, on_message=got.put)
    client.connect()
    try:
        assert got.get(timeout=10)["id"] == msg_id
        r.wait_state(msg_id, device, "arrived")
    finally:
        client.disconnect()


def test_local_admin_commands_take_store(tmp_path: Path, pg: PgServer) -> None:
    url = pg.fresh_url()
    created = cli_json("app", "create", "shop", "--data-dir", str(tmp_path / "d"), "--store", url)
    listed = cli_json("app", "list", "--data-dir", str(tmp_path / "d"), "--store", url)
    assert created["app_key"] in [a["app_key"] for a in listed["apps"]]
    # The same data dir without --store is another (SQLite) store: the app is not there.
    alone = cli_json("app", "list", "--data-dir", str(tmp_path / "d"))
    assert created["app_key"] not in [a["app_key"] for a in alone["apps"]]


def test_a_bad_store_url_names_the_flag(tmp_path: Path) -> None:
    proc = cli("app", "list", "--data-dir", str(tmp_path / "d"), "--store", "mysql://x/y")
    assert proc.returncode == 2
    assert "--store" in proc.stderr and "Traceback" not in proc.stderr


def test_sqlite_url_names_the_data_dir(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/d/mqttpush.db"
    created = cli_json("app", "create", "shop", "--store", url)
    assert (tmp_path / "d" / "mqttpush.db").exists()
    listed = cli_json("app", "list", "--data-dir", str(tmp_path / "d"))
    assert created["app_key"] in [a["app_key"] for a in listed["apps"]]


def test_postgresql_stopped_answers_503_with_retry_after_then_resumes(tmp_path: Path) -> None:
    with pg_server() as server:
        for r in _serve(tmp_path / "data", store=server.fresh_url()):
            ((device, _token),) = r.register()
            before = r.push([device], title="before")
            server.stop()
            with httpx.Client(base_url=r.url) as http:
                body = json.dumps({"target": {"devices": [device]}, "notification": {"title": "down"}})
                answer = http.post(
                    "/api/v1/push",
                    content=body,
                    headers={
                        **signing.signed_headers(
                            r.app_key, r.app_secret, "POST", "/api/v1/push", body.encode(), time.time()
                        ),
                        "Content-Type": "application/json",
                    },
                )
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "store_unavailable"
            assert int(answer.headers["Retry-After"]) >= 1
            server.start()
            after = r.push([device], title="after")  # the store connects again by itself
            with r.client() as c:
                assert c.message(before)["deliveries"][0]["device_id"] == device
                assert c.message(after)["deliveries"][0]["device_id"] == device


def test_backup_of_a_postgresql_store_points_to_pg_dump(tmp_path: Path, pg: PgServer) -> None:
    proc = cli("backup", str(tmp_path / "b"), "--data-dir", str(tmp_path / "d"), "--store", pg.fresh_url())
    assert proc.returncode == 2
    assert "--store" in proc.stderr and "pg_dump" in proc.stderr
    assert not (tmp_path / "b").exists()


def test_doctor_reads_the_apps_of_the_postgresql_store(tmp_path: Path, pg: PgServer) -> None:
    url = pg.fresh_url()
    app = cli_json("app", "create", "shop", "--data-dir", str(tmp_path / "d"), "--store", url)
    proc = cli(
        "doctor",
        "--data-dir",
        str(tmp_path / "d"),
        "--store",
        url,
        "--json",
        "--http-port",
        "0",
        "--mqtt-port",
        "0",
    )
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks[f"vendors {app['app_key']}"]["status"] == "ok"  # the app lives only in PostgreSQL
