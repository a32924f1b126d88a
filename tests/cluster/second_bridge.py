"""A second bridge over the same SQLite data dir, for the lease tests: ``mqttpush bridge`` itself
refuses to share a data dir (its bridge lock), so this process composes the same parts
(:class:`~mqttpush.server.BridgeNode` over a real store, a real MQTT publisher to the broker)
without taking the lock. Prints the ready line like ``mqttpush bridge --json``; SIGTERM stops it.

``python -m tests.cluster.second_bridge DATA_DIR mqtt://127.0.0.1:PORT LEASE_SECONDS``
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

from mqttpush.clock import SystemClock
from mqttpush.config import ServerConfig
from mqttpush.server import BridgeNode
from mqttpush.store import Store
from mqttpush.topics import API_PUSH_FILTER, PRESENCE_FILTER, RECEIPT_FILTER


async def main(data_dir: Path, broker_url: str, lease: float) -> None:
    config = ServerConfig(data_dir=data_dir, http_port=0, broker_url=broker_url, lease_seconds=lease)
    clock = SystemClock()
    store = Store(data_dir, clock)
    from bridge.publisher import MqttPublisher

    username, password = store.accounts.service_credentials()
    publisher = MqttPublisher(
        broker_url,
        username,
        password,
        subscriptions=(RECEIPT_FILTER, PRESENCE_FILTER, API_PUSH_FILTER),
        client_id="mqttpush-bridge-2",  # not the first bridge's: the broker would hand its session over
    )
    node = BridgeNode(config, store, publisher, clock, lambda: publisher.port)
    await publisher.start(node.on_message, on_session_lost=node.dispatcher.recover)
    await node.start()
    print(json.dumps({"event": "ready", "http_port": node.http_port, "owner": node.owner}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await node.stop()
    await publisher.stop()
    store.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])))
