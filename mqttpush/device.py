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

UnifiedPush / Web Push (docs/webpush.md): ``client.subscribe("my-app")`` makes an endpoint and
its keys and returns the browser's PushSubscription JSON for the application server; what that
server pushes arrives as an ``up`` message, is decrypted (RFC 8291) and handed to
``on_push(envelope, plaintext)``. Keep ``subscription.to_json()`` to decrypt after a restart
(``add_subscription``).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import http_ece
import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from paho.mqtt.enums import CallbackAPIVersion

from mqttpush import envelope, topics
from mqttpush.client import device_call, device_info
from mqttpush.errors import ClientError

log = logging.getLogger("mqttpush.device")

OnMessage = Callable[[dict[str, Any]], None]
OnPush = Callable[[dict[str, Any], bytes], None]
"""An ``up`` message's envelope and the bytes its sender pushed (decrypted when they were encrypted)."""


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class WebPushSubscription:
    """One endpoint and the keys its messages are encrypted for (RFC 8291): the device's P-256 key
    pair (``p256dh`` is its public half) and a 16-byte ``auth`` secret."""

    def __init__(self, endpoint: str, endpoint_id: str, private_key: ec.EllipticCurvePrivateKey, auth: bytes):
        self.endpoint = endpoint
        self.endpoint_id = endpoint_id
        self.private_key = private_key
        self.auth = auth

    @staticmethod
    def new_keys() -> tuple[ec.EllipticCurvePrivateKey, bytes]:
        return ec.generate_private_key(ec.SECP256R1()), secrets.token_bytes(16)

    @property
    def p256dh(self) -> str:
        point = self.private_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        return _b64url(point)

    def push_subscription(self) -> dict[str, Any]:
        """What a browser's ``PushSubscription.toJSON()`` gives: hand it to the application server."""
        return {
            "endpoint": self.endpoint,
            "expirationTime": None,
            "keys": {"p256dh": self.p256dh, "auth": _b64url(self.auth)},
        }

    def to_json(self) -> dict[str, Any]:
        """Everything needed to decrypt later, private key included: store it as a secret."""
        scalar = self.private_key.private_numbers().private_value.to_bytes(32, "big")
        return self.push_subscription() | {"endpoint_id": self.endpoint_id, "private_key": _b64url(scalar)}

    @classmethod
    def from_json(cls, doc: Any) -> WebPushSubscription:
        """The inverse of :meth:`to_json`; ClientError ``bad_subscription`` if it is not one."""
        try:
            scalar = int.from_bytes(_unb64url(doc["private_key"]), "big")
            auth = _unb64url(doc["keys"]["auth"])
            key = ec.derive_private_key(scalar, ec.SECP256R1())
            sub = cls(str(doc["endpoint"]), str(doc["endpoint_id"]), key, auth)
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise ClientError(f"not a saved subscription: {exc!r}", code="bad_subscription") from None
        if len(auth) != 16 or doc["keys"].get("p256dh") not in (None, sub.p256dh):
            raise ClientError("not a saved subscription: keys do not match", code="bad_subscription")
        return sub

    def decrypt(self, body: bytes) -> bytes:
        """The plaintext of an ``aes128gcm`` message (RFC 8291); ValueError if it does not decrypt."""
        try:
            plain: bytes = http_ece.decrypt(
                body, private_key=self.private_key, auth_secret=self.auth, version="aes128gcm"
            )
        except Exception as exc:  # http_ece raises its own, cryptography's and struct's errors
            raise ValueError(f"cannot decrypt: {exc!r}") from None
        return plain


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
        on_push: OnPush | None = None,
        api_url: str | None = None,
        clean_session: bool = True,
        keepalive: int = 60,
        auto_arrived: bool = True,
        remember: int = 10_000,
        now: Callable[[], float] = time.time,
    ) -> None:
        """``now`` is the clock expiry is judged by (unix seconds; tests pass their own).
        ``api_url``: the HTTP API, for :meth:`subscribe` (``from_server`` sets it)."""
        self.app_key = app_key
        self.device_id = device_id
        self.on_message = on_message
        self.on_revoke = on_revoke
        self.on_push = on_push
        self.api_url = api_url
        self._device_token = device_token
        self.subscriptions: dict[str, WebPushSubscription] = {}
        """By endpoint id: the keys ``up`` messages are decrypted with."""
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
            api_url=url,
            **kwargs,
        )

    # --- UnifiedPush / Web Push ---------------------------------------------------------------

    def subscribe(self, instance: str = "default", vapid_key: str | None = None) -> WebPushSubscription:
        """An endpoint for one of the device's apps, with fresh keys (asking again for the same
        instance gives the same endpoint, with new keys). ``vapid_key``: the application server's
        VAPID public key, to take only pushes it signed. ``.push_subscription()`` of the result is
        what the application server needs."""
        if self.api_url is None:
            raise ClientError(
                "subscribe needs the HTTP API: build the client with from_server", code="no_api_url"
            )
        body: dict[str, Any] = {"instance": instance}
        if vapid_key is not None:
            body["vapid_key"] = vapid_key
        doc = device_call(self.api_url, self._device_token, "POST", "/api/v1/devices/me/endpoints", body)
        key, auth = WebPushSubscription.new_keys()
        sub = WebPushSubscription(doc["endpoint"], doc["endpoint_id"], key, auth)
        self.add_subscription(sub)
        return sub

    def add_subscription(self, subscription: WebPushSubscription) -> None:
        """Decrypt this endpoint's messages with these keys (e.g. saved with ``to_json`` before)."""
        self.subscriptions[subscription.endpoint_id] = subscription

    def unsubscribe(self, endpoint_id: str) -> None:
        """Unregister an endpoint: its senders get 410 Gone from now on."""
        if self.api_url is None:
            raise ClientError(
                "unsubscribe needs the HTTP API: build the client with from_server", code="no_api_url"
            )
        device_call(self.api_url, self._device_token, "DELETE", f"/api/v1/devices/me/endpoints/{endpoint_id}")
        self.subscriptions.pop(endpoint_id, None)

    def _deliver_up(self, env: dict[str, Any]) -> None:
        """An ``up`` message: its bytes, decrypted with the endpoint's keys, to ``on_push``; one
        this client cannot read (no keys, no on_push, bytes that do not decrypt) to ``on_message``."""
        raw: bytes | None
        try:
            raw = base64.b64decode(str(env.get("body") or ""), validate=True)
        except (binascii.Error, ValueError):
            raw = None
        sub = self.subscriptions.get(str(env.get("endpoint_id")))
        plain: bytes | None = None
        if raw is not None and env.get("encoding") is None:
            plain = raw
        elif raw is not None and sub is not None:
            try:
                plain = sub.decrypt(raw)
            except ValueError as exc:
                log.warning("up message msg_id=%s: %s", env["id"], exc)
        if plain is not None and self.on_push is not None:
            self.on_push(env, plain)
        elif self.on_message is not None:
            self.on_message(env)

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
        try:
            if env.get("type") == envelope.UP_TYPE:
                self._deliver_up(env)
            elif self.on_message is not None:
                self.on_message(env)
        except Exception:
            log.exception("on_message failed for msg_id=%s", msg_id)
        if self.auto_arrived:
            self.arrived(msg_id)
