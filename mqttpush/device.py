"""``DeviceClient``: a device of the push service in Python (paho-mqtt), per docs/protocol.md.

    client = DeviceClient.from_server("http://127.0.0.1:8080", device_id, device_token,
                                      on_message=lambda msg: print(msg["title"]))
    client.connect()          # CONNECT, SUBSCRIBE inbox + broadcast, presence "online"
    ...
    client.opened(msg_id)     # receipts: arrived is sent for you after on_message returns
    client.disconnect()

Messages may come twice (MQTT redelivery, a retained copy after reconnect): the client
drops repeats by envelope ``id`` before calling ``on_message``; a re-push of a notification
not opened yet (``"repush": n``) is shown again. A ``revoke`` envelope (the app recalled the
message) calls ``on_revoke(msg_id)``. A message whose ``expires_at`` has passed (a retained copy
the broker still held, a foreign broker that cannot expire it) is dropped: not shown, no receipt.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from mqttpush import envelope, topics
from mqttpush.client import device_info
from mqttpush.errors import ClientError

log = logging.getLogger("mqttpush.device")

OnMessage = Callable[[dict[str, Any]], None]


class DeviceClient:
    def __init__(
        self,
        *,
        host: str,
        port: int,
        app_key: str,
        device_id: str,
        device_token: str,
        on_message: OnMessage | None = None,
        on_revoke: Callable[[str], None] | None = None,
        clean_session: bool = True,
        keepalive: int = 60,
        auto_arrived: bool = True,
        remember: int = 10_000,
        now: Callable[[], float] = time.time,
    ) -> None:
        """``now`` is the clock expiry is judged by (unix seconds; tests pass their own)."""
        self.app_key = app_key
        self.device_id = device_id
        self.on_message = on_message
        self.on_revoke = on_revoke
        self.auto_arrived = auto_arrived
        self._host, self._port, self._keepalive = host, port, keepalive
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._remember = remember
        self._now = now
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._refused: str | None = None
        self._sub_mid: int | None = None

        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=device_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        c.username_pw_set(device_id, device_token)
        c.will_set(topics.presence_topic(app_key, device_id), b"offline", qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_mqtt_message
        self._mqtt = c

    @classmethod
    def from_server(cls, url: str, device_id: str, device_token: str, **kwargs: Any) -> DeviceClient:
        """Ask the server (``GET /api/v1/devices/me``) for the app key and MQTT address, then build a client."""
        info = device_info(url, device_token)
        mqtt_url = urlparse(info["mqtt_url"])
        if info["device_id"] != device_id:
            raise ClientError("the token belongs to another device", code="bad_token")
        return cls(
            host=mqtt_url.hostname or "127.0.0.1",
            port=mqtt_url.port or 1883,
            app_key=info["app_key"],
            device_id=device_id,
            device_token=device_token,
            **kwargs,
        )

    # --- lifecycle --------------------------------------------------------------------------

    def connect(self, timeout: float = 10.0) -> None:
        """Connect and subscribe; returns when both are acknowledged. Reconnects on its own afterwards."""
        self._ready.clear()
        self._refused = None
        try:
            self._mqtt.connect(self._host, self._port, self._keepalive)
        except OSError as exc:
            raise ClientError(
                f"cannot reach MQTT {self._host}:{self._port}: {exc}", code="unreachable"
            ) from None
        self._mqtt.loop_start()
        if not self._ready.wait(timeout) or self._refused:
            self._mqtt.loop_stop()
            reason = self._refused or f"no CONNACK/SUBACK within {timeout}s"
            raise ClientError(f"device {self.device_id}: {reason}", code="mqtt_refused")

    def disconnect(self) -> None:
        """Say ``offline`` on the presence topic and disconnect cleanly."""
        if self._mqtt.is_connected():
            self._mqtt.publish(
                topics.presence_topic(self.app_key, self.device_id), b"offline", qos=1, retain=True
            )
            self._mqtt.disconnect()
        self._mqtt.loop_stop()

    def __enter__(self) -> DeviceClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    # --- receipts ---------------------------------------------------------------------------

    def arrived(self, msg_id: str) -> None:
        self._receipt(msg_id, "arrived")

    def opened(self, msg_id: str) -> None:
        """The user opened the notification."""
        self._receipt(msg_id, "opened")

    def dismissed(self, msg_id: str) -> None:
        """The user dismissed the notification."""
        self._receipt(msg_id, "dismissed")

    def _receipt(self, msg_id: str, event: str) -> None:
        payload = json.dumps({"id": msg_id, "event": event}).encode()
        self._mqtt.publish(topics.receipt_topic(self.app_key, self.device_id), payload, qos=1)

    # --- paho callbacks (network thread) ------------------------------------------------------

    def _on_connect(self, c: mqtt.Client, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self._refused = f"CONNECT refused: {reason}"
            self._ready.set()
            c.disconnect()
            return
        c.publish(topics.presence_topic(self.app_key, self.device_id), b"online", qos=1, retain=True)
        _, self._sub_mid = c.subscribe(
            [
                (topics.inbox_filter(self.app_key, self.device_id), 1),
                (topics.broadcast_filter(self.app_key), 1),
            ]
        )

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, codes: list[Any], _p: Any) -> None:
        if mid != self._sub_mid:
            return
        if any(code.is_failure for code in codes):
            self._refused = "SUBSCRIBE refused"
        self._ready.set()

    def _on_mqtt_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        env = envelope.decode(bytes(msg.payload))
        if env is None:
            return  # an empty publish clears a retained inbox topic; nothing to show
        msg_id = env["id"]
        if env.get("type") == "revoke":
            # The app took the message back: take it off the screen, and acknowledge the revoke.
            if self.on_revoke is not None:
                try:
                    self.on_revoke(str(env.get("revokes", msg_id)))
                except Exception:
                    log.exception("on_revoke failed for msg_id=%s", msg_id)
            self.arrived(msg_id)
            return
        expires_at = env.get("expires_at")
        if isinstance(expires_at, int | float) and expires_at <= self._now():
            log.info("dropped expired message msg_id=%s", msg_id)
            return
        # A re-push of a notification not opened yet is shown again: (id, repush) is what repeats.
        key = f"{msg_id}#{env.get('repush', 0)}"
        with self._lock:
            if key in self._seen:
                self._seen.move_to_end(key)
                return
            self._seen[key] = None
            if len(self._seen) > self._remember:
                self._seen.popitem(last=False)
        if self.on_message is not None:
            try:
                self.on_message(env)
            except Exception:
                log.exception("on_message failed for msg_id=%s", msg_id)
        if self.auto_arrived:
            self.arrived(msg_id)
