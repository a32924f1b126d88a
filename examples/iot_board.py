#!/usr/bin/env python3
"""An IoT board that sends push notifications itself, over MQTT alone (the MQTT publish API,
docs/targeting.md): a greenhouse thermometer that alerts the grower's phone when it gets too hot.

    python examples/iot_board.py --mqtt mqtt://127.0.0.1:1883 --app-key a… --app-secret … \\
        --device d… --alarm-above 30 --interval 5
    # a fixed series of readings instead of the simulated sensor, then exit:
    python examples/iot_board.py … --readings 24,31,33,28,35

It logs in to the broker with username = app key and password = app secret (any client id),
subscribes to mqttpush/{app}/api/result/+ and, each time a reading crosses the limit upwards,
publishes a push request — the JSON body of POST /api/v1/push plus a "request_id" — to
mqttpush/{app}/api/push with QoS 1. The answer comes on mqttpush/{app}/api/result/{request_id}:
{"request_id", "msg_id"} (a tag expression: "task_id" too) or {"request_id", "error": {"code",
"message"}}. It prints one JSON line per reading and per answer; the exit status is 2 if any push
was refused or went unanswered. Only paho-mqtt (pip install paho-mqtt==2.2.0), nothing of
mqttpush: what a Raspberry Pi would run. `--app-key` and `--app-secret` also come from
MQTTPUSH_APP_KEY and MQTTPUSH_APP_SECRET. paho reconnects by itself after a network loss (and
subscribes again); requests published meanwhile are queued and sent then.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import secrets
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ANSWER_TIMEOUT = 10.0


class Board:
    """The MQTT side: one connection as the app, results collected by request id."""

    def __init__(self, url: str, app_key: str, app_secret: str) -> None:
        self.app_key = app_key
        self.board_id = f"board-{secrets.token_hex(4)}"
        self._results: dict[str, dict[str, Any]] = {}
        self._changed = threading.Condition()
        self._ready = threading.Event()
        self._refused: str | None = None
        where = urlparse(url)
        self._host, self._port = (
            where.hostname or "127.0.0.1",
            where.port or (8883 if where.scheme == "mqtts" else 1883),
        )
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.board_id, clean_session=True, protocol=mqtt.MQTTv311
        )
        if where.scheme == "mqtts":
            self._client.tls_set()  # the system's CAs
        self._client.username_pw_set(app_key, app_secret)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def start(self) -> None:
        self._client.connect(self._host, self._port, keepalive=30)
        self._client.loop_start()
        if not self._ready.wait(ANSWER_TIMEOUT) or self._refused:
            self._client.loop_stop()
            raise ConnectionError(self._refused or f"no answer from {self._host}:{self._port}")

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def push(self, request: dict[str, Any]) -> dict[str, Any]:
        """Publish one push request and wait for its answer."""
        request_id = f"{self.board_id}-{secrets.token_hex(6)}"
        payload = json.dumps({"request_id": request_id, **request})
        self._client.publish(f"mqttpush/{self.app_key}/api/push", payload, qos=1)
        deadline = time.monotonic() + ANSWER_TIMEOUT
        with self._changed:
            while request_id not in self._results:
                left = deadline - time.monotonic()
                if left <= 0:
                    return {
                        "request_id": request_id,
                        "error": {"code": "no_answer", "message": "no answer in time"},
                    }
                self._changed.wait(left)
            return self._results.pop(request_id)

    # paho's network thread

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self._refused = f"the broker refused the app's login: {reason}"
            self._ready.set()
            client.disconnect()
            return
        client.subscribe(f"mqttpush/{self.app_key}/api/result/+", qos=1)  # again after each reconnect

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        if any(code.is_failure for code in codes):
            self._refused = "the broker refused the results subscription"
        self._ready.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            answer = json.loads(msg.payload)
        except ValueError:
            return
        with self._changed:
            self._results[str(answer.get("request_id"))] = answer
            self._changed.notify_all()


def simulated_sensor(seed: int | None) -> Iterator[float]:
    """A greenhouse on a sunny day: a random walk around 26 °C."""
    rng = random.Random(seed)
    celsius = 26.0
    while True:
        celsius += rng.uniform(-1.5, 1.6)
        yield round(celsius, 1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mqtt", default="mqtt://127.0.0.1:1883", help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    p.add_argument("--app-key", default=os.environ.get("MQTTPUSH_APP_KEY"))
    p.add_argument("--app-secret", default=os.environ.get("MQTTPUSH_APP_SECRET"))
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--device", action="append", help="a device id to alert (repeatable)")
    target.add_argument("--tag-expr", help="alert every device the tag expression selects")
    p.add_argument("--alarm-above", type=float, default=30.0, metavar="CELSIUS")
    p.add_argument("--interval", type=float, default=5.0, metavar="SECONDS", help="between two readings")
    p.add_argument("--readings", help="comma-separated readings to use instead of the simulated sensor")
    p.add_argument("--count", type=int, help="stop after this many readings")
    p.add_argument("--seed", type=int, help="make the simulated sensor repeatable")
    args = p.parse_args(argv)
    if not args.app_key or not args.app_secret:
        p.error("--app-key and --app-secret are needed (or MQTTPUSH_APP_KEY, MQTTPUSH_APP_SECRET)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.readings:
        try:
            readings: Iterator[float] = iter([float(v) for v in args.readings.split(",")])
        except ValueError:
            print("error: --readings takes numbers separated by commas", file=sys.stderr)
            return 2
    else:
        readings = simulated_sensor(args.seed)
    if args.count is not None:
        readings = itertools.islice(readings, args.count)
    target: dict[str, Any] = {"devices": args.device} if args.device else {"tags": args.tag_expr}

    board = Board(args.mqtt, args.app_key, args.app_secret)
    try:
        board.start()
    except (OSError, ConnectionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = False
    too_hot = False
    try:
        for n, celsius in enumerate(readings):
            if n:
                time.sleep(args.interval)  # the sensor's pace
            print(json.dumps({"reading": celsius}), flush=True)
            crossed = celsius > args.alarm_above and not too_hot
            too_hot = celsius > args.alarm_above
            if not crossed:
                continue
            answer = board.push(
                {
                    "target": target,
                    "notification": {
                        "title": "Greenhouse too hot",
                        "body": f"{celsius:.1f} °C, above {args.alarm_above:g} °C",
                    },
                    "data": {"sensor": board.board_id, "celsius": celsius},
                    # An alarm an hour old is no use; high priority wakes the phone.
                    "policy": {"ttl": 3600, "priority": "high"},
                }
            )
            print(json.dumps(answer), flush=True)
            failed = failed or "error" in answer
    except KeyboardInterrupt:
        pass
    finally:
        board.stop()
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
