"""Split mode across a broker crash (issue 13, items 5 and 6), run the way users run it.

``mqttpush broker`` (or mosquitto from ``mqttpush mosquitto-config``) and ``mqttpush bridge`` are
separate processes. A push is accepted for an offline device and a broadcast has reached every
device there was; then the broker is killed with SIGKILL, losing its retained messages and the
bridge's session, and started again on the same port. The store is the source of truth: the
bridge, seeing CONNACK session present = 0, publishes both again, so the offline device gets its
message and a device registered after the crash still gets the live broadcast.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from queue import Queue
from typing import Any

from mqttpush.client import PushClient
from mqttpush.device import DeviceClient
from mqttpush.errors import ClientError
from mqttpush.store import Store
from tests.foreign.test_split import Proc, _bridge, _free_port, _Mosquitto, _mosquitto_config, _poll

TIMEOUT = 30.0


def _connected(url: str, device_id: str, token: str, got: Queue[dict[str, Any]]) -> DeviceClient:
    """A device logged in and subscribed (retried: the broker, or its password file, may lag)."""
    holder: list[DeviceClient] = []

    def connect() -> bool:
        client = DeviceClient.from_server(url, device_id, token, on_message=got.put)
        try:
            client.connect(timeout=5)
        except ClientError:
            return False
        holder.append(client)
        return True

    _poll(connect, f"device {device_id} to log in", TIMEOUT)
    return holder[0]


def _state(api: PushClient, msg_id: str, device_id: str) -> str | None:
    for d in api.message(msg_id)["deliveries"]:
        if d["device_id"] == device_id:
            return str(d["state"])
    return None


def _survives_broker_crash(
    data: Path, restart_broker: Callable[[], None], bridge_args: tuple[str, ...]
) -> None:
    """With the bridge running on ``data``: push, crash and restart the broker, receive."""
    store = Store(data)
    shop, news = store.apps.create_app("shop"), store.apps.create_app("news")
    store.close()
    bridge = _bridge(data, *bridge_args)
    url = bridge.ready["http_url"]
    try:
        with (
            PushClient(url, shop.app_key, shop.secret) as api,
            PushClient(url, news.app_key, news.secret) as news_api,
        ):
            offline = api.register_device("phone-offline", "android")
            early = news_api.register_device("reader-early", "ios")

            # A broadcast every device of its app has acknowledged: no delivery of it is pending.
            seen: Queue[dict[str, Any]] = Queue()
            reader = _connected(url, early["device_id"], early["device_token"], seen)
            try:
                sent = news_api.push({"target": {"broadcast": True}, "notification": {"title": "to all"}})
                broadcast = sent["msg_id"]
                assert seen.get(timeout=TIMEOUT)["id"] == broadcast
                _poll(
                    lambda: _state(news_api, broadcast, early["device_id"]) == "arrived", "arrived", TIMEOUT
                )
            finally:
                reader.disconnect()

            # A message for a device that is offline: retained in the broker only.
            msg_id = api.push(
                {"target": {"devices": [offline["device_id"]]}, "notification": {"title": "while offline"}}
            )["msg_id"]
            _poll(lambda: _state(api, msg_id, offline["device_id"]) == "published", "published", TIMEOUT)

            restart_broker()

            got: Queue[dict[str, Any]] = Queue()
            phone = _connected(url, offline["device_id"], offline["device_token"], got)
            try:
                assert got.get(timeout=TIMEOUT)["id"] == msg_id
                _poll(lambda: _state(api, msg_id, offline["device_id"]) == "arrived", "arrived", TIMEOUT)
            finally:
                phone.disconnect()

            late = news_api.register_device("reader-late", "web")
            got_late: Queue[dict[str, Any]] = Queue()
            reader = _connected(url, late["device_id"], late["device_token"], got_late)
            try:
                assert got_late.get(timeout=TIMEOUT)["id"] == broadcast
            finally:
                reader.disconnect()
    finally:
        assert bridge.stop() == 0


def test_bridge_republishes_after_our_broker_is_killed_and_restarted(tmp_path: Path) -> None:
    data = tmp_path / "data"
    Store(data).close()
    brokers = [Proc("broker", "--data-dir", str(data), "--mqtt-port", "0")]
    port = brokers[0].ready["mqtt_port"]

    def restart() -> None:
        brokers[-1].proc.kill()  # SIGKILL: nothing is saved or said on the way out
        brokers[-1].proc.wait(10)
        brokers.append(Proc("broker", "--data-dir", str(data), "--mqtt-port", str(port)))
        assert brokers[-1].ready["mqtt_port"] == port

    try:
        _survives_broker_crash(data, restart, ("--broker", f"mqtt://127.0.0.1:{port}"))
    finally:
        assert brokers[-1].stop() == 0


def test_generated_mosquitto_config_starts_as_documented(tmp_path: Path) -> None:
    """Started by root (CI), mosquitto used to drop to user ``mosquitto``, which can neither write
    the pid file nor read the owner-only password file: ``Unable to write pid file.``"""
    data, out, port = tmp_path / "data", tmp_path / "mosquitto", _free_port()
    app = Store(data).apps.create_app("docs")
    pid_file = tmp_path / "run" / "mosquitto-mqttpush.pid"
    pid_file.parent.mkdir(mode=0o755)
    broker = _Mosquitto(_mosquitto_config(data, out, port, pid_file), port, pid_file)
    broker.start()
    try:
        bridge = _bridge(data, *broker.bridge_flags())
        try:
            url = bridge.ready["http_url"]
            with PushClient(url, app.app_key, app.secret) as api:
                reg = api.register_device("phone-1", "android")
                got: Queue[dict[str, Any]] = Queue()
                # Logging in needs the rewritten password file, re-read after SIGHUP.
                phone = _connected(url, reg["device_id"], reg["device_token"], got)
                try:
                    msg_id = api.push(
                        {"target": {"devices": [reg["device_id"]]}, "notification": {"title": "hi"}}
                    )
                    assert got.get(timeout=TIMEOUT)["id"] == msg_id["msg_id"]
                finally:
                    phone.disconnect()
        finally:
            assert bridge.stop() == 0
        assert broker.proc is not None and broker.proc.poll() is None, broker.log.read_text()
    finally:
        broker.stop()


def test_bridge_republishes_after_mosquitto_is_killed_and_restarted(tmp_path: Path) -> None:
    data, out, port = tmp_path / "data", tmp_path / "mosquitto", _free_port()
    Store(data).close()
    pid_file = out / "mosquitto.pid"
    broker = _Mosquitto(_mosquitto_config(data, out, port, pid_file), port, pid_file)
    broker.start()

    def restart() -> None:
        broker.kill()
        broker.start()

    try:
        _survives_broker_crash(data, restart, broker.bridge_flags())
    finally:
        broker.stop()
