#!/usr/bin/env python3
"""A device in Python on mqttpush.device.DeviceClient: registers (or reuses its id and token),
connects, prints each push, acknowledges it, and reports it opened when you press Enter.

    # a new device: prints its id and token (pass them next time instead of registering again)
    python examples/device.py --url http://127.0.0.1:8080 --app-key a… --install-id my-laptop
    # a device registered before
    python examples/device.py --url http://127.0.0.1:8080 --device-id d… --device-token 'd….…'

    # then, from another shell
    mqttpush push --device d… --title Hi --body 'from the CLI'

Enter reports the latest push not opened yet as `opened` (what a tap on a notification does);
`--open-after 3` does that 3 s after each push instead. `--count N` exits once N pushes are
opened. Ctrl-C stops. `--url` and `--app-key` also come from MQTTPUSH_URL and MQTTPUSH_APP_KEY.

The client sends the `arrived` receipt itself, drops repeats and expired messages, and keeps the
connection: after a network loss (or another login with the same id) it reconnects by itself with
a growing delay (1 s up to 2 min) and subscribes again. Pushes sent meanwhile wait in the device's
retained inbox on the broker (docs/protocol.md), so none is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from mqttpush.client import PushClient
from mqttpush.device import DeviceClient
from mqttpush.errors import ClientError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=os.environ.get("MQTTPUSH_URL", "http://127.0.0.1:8080"))
    p.add_argument("--app-key", default=os.environ.get("MQTTPUSH_APP_KEY"), help="to register")
    p.add_argument("--install-id", help="to register: an id this installation keeps for good")
    p.add_argument("--platform", default="iot", choices=["android", "ios", "web", "iot"])
    p.add_argument("--device-id", help="a device registered before (with --device-token)")
    p.add_argument("--device-token")
    p.add_argument("--open-after", type=float, metavar="SECONDS", help="open each push after this long")
    p.add_argument("--count", type=int, metavar="N", help="exit once N pushes are opened")
    args = p.parse_args(argv)
    if bool(args.device_id) != bool(args.device_token):
        p.error("--device-id and --device-token go together")
    if not args.device_id and not (args.app_key and args.install_id):
        p.error("give --device-id and --device-token, or --app-key and --install-id to register")
    return args


def register(args: argparse.Namespace) -> tuple[str, str]:
    """``POST /api/v1/devices`` with the app key; the same install id gives the same device id
    (with a new token: the old one stops working)."""
    with PushClient(args.url, args.app_key) as server:
        reg = server.register_device(args.install_id, args.platform)
    print(f"registered: --device-id {reg['device_id']} --device-token {reg['device_token']}", flush=True)
    return reg["device_id"], reg["device_token"]


def show(msg: dict[str, Any]) -> None:
    text = " — ".join(str(part) for part in (msg.get("title"), msg.get("body")) if part)
    data = f"  data={json.dumps(msg['data'], ensure_ascii=False)}" if msg.get("data") else ""
    print(f"push {msg['id']}: {text}{data}", flush=True)


def connect(client_of: Callable[[], DeviceClient]) -> DeviceClient:
    """Build and connect the client; while the server cannot be reached, try again (1 s … 30 s)."""
    delay = 1.0
    while True:
        try:
            client = client_of()
            client.connect()
            return client
        except ClientError as exc:
            if exc.code != "unreachable":
                raise
            print(f"{exc}; trying again in {delay:.0f} s", file=sys.stderr, flush=True)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    lock = threading.Lock()
    unopened: list[str] = []
    opened = 0
    done = threading.Event()
    client: DeviceClient | None = None

    def open_(msg_id: str) -> None:
        nonlocal opened
        assert client is not None
        client.opened(msg_id)
        print(f"opened {msg_id}", flush=True)
        with lock:
            opened += 1
            if args.count is not None and opened >= args.count:
                done.set()

    def on_message(msg: dict[str, Any]) -> None:
        if args.open_after is None:
            with lock:
                unopened.append(msg["id"])
        show(msg)
        if args.open_after is not None:
            threading.Timer(args.open_after, open_, (msg["id"],)).start()

    def on_revoke(msg_id: str) -> None:
        print(f"recalled {msg_id}", flush=True)
        with lock:
            if msg_id in unopened:
                unopened.remove(msg_id)

    def read_enter() -> None:
        for _ in sys.stdin:
            with lock:
                latest = unopened.pop() if unopened else None
            if latest is None:
                print("nothing to open yet", flush=True)
            else:
                open_(latest)

    def make_client() -> DeviceClient:
        nonlocal client  # set before it connects: a retained push may arrive at once
        client = DeviceClient.from_server(
            args.url, device_id, token, on_message=on_message, on_revoke=on_revoke
        )
        return client

    try:
        device_id, token = (args.device_id, args.device_token) if args.device_id else register(args)
        connected = connect(make_client)
    except ClientError as exc:
        print(f"error: {exc} [{exc.code}]", file=sys.stderr)
        return 2
    print(f"connected as {device_id} (app {connected.app_key}); waiting for pushes, Ctrl-C stops", flush=True)
    if args.open_after is None:
        threading.Thread(target=read_enter, daemon=True).start()
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        connected.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
