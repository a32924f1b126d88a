"""Vendor channels in the store (issue 6): an app's vendor credentials, alarms and counters, what
vendors said of deliveries; how a vendor token is found (hashed) and shown (masked). The tokens
themselves belong to devices (:mod:`mqttpush.store.devices`)."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mqttpush.models import DeliveryState
from mqttpush.store.core import Repository

VENDORS = ("apns", "fcm", "hms", "mipush", "webpush")


def vendor_token_hash(token: str) -> str:
    """How the store finds a vendor token by value, the token itself being sealed: hex SHA-256.

    Unsalted so one token has one hash (de-duplication, "remove this dead token"); vendor tokens
    and WebPush subscriptions carry far too much randomness to be guessed from it.
    """
    return hashlib.sha256(token.encode()).hexdigest()


def mask_token(vendor: str, token: str) -> str:
    """``…`` and the last 6 characters: enough to tell tokens apart, too little to use one.

    A WebPush subscription (JSON) is shown by its endpoint.
    """
    if vendor == "webpush":
        with contextlib.suppress(ValueError, TypeError, KeyError):
            token = str(json.loads(token)["endpoint"])
    return "…" + token[-6:]


@dataclass(frozen=True, slots=True)
class VendorOutcome:
    """What a vendor said about one delivery, after ``attempts`` sends."""

    msg_id: str
    device_id: str
    kind: str
    """``forwarded``, ``failed`` or ``dropped_token`` (the token is dead: removed from the registry)."""
    detail: str | None
    token: str | None
    attempts: int = 1
    fallback: bool = False
    """On failure the MQTT inbox takes over (``mqtt_else_vendor``): the delivery does not fail."""


@dataclass(frozen=True, slots=True)
class VendorAlarm:
    """A vendor refused an app's credentials: the last reason, when, and how many times."""

    vendor: str
    reason: str
    at: float
    count: int


@dataclass(frozen=True, slots=True)
class VendorCounters:
    """What one vendor did for an app: forwards, tokens it declared dead, failures."""

    forwarded: int
    dropped_tokens: int
    failed: int


class VendorRepository(Repository):
    """``store.vendors``: each app's vendor credentials (sealed), the alarms raised when a vendor
    refuses them, the per-vendor counters, and what vendors said of deliveries."""

    def put_vendor_config(self, app_key: str, vendor: str, config: dict[str, Any]) -> None:
        self._conn.execute(
            "INSERT INTO vendor_credentials (app_key, vendor, config_enc, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (app_key, vendor) DO UPDATE SET config_enc = excluded.config_enc,"
            " updated_at = excluded.updated_at",
            (app_key, vendor, self._seal(json.dumps(config)), self.clock.now()),
        )
        self._conn.execute("DELETE FROM vendor_alarms WHERE app_key = ? AND vendor = ?", (app_key, vendor))

    def vendor_config(self, app_key: str, vendor: str) -> dict[str, Any] | None:
        row = self._conn.execute(
            "SELECT config_enc FROM vendor_credentials WHERE app_key = ? AND vendor = ?", (app_key, vendor)
        ).fetchone()
        result: dict[str, Any] | None = json.loads(self._unseal(row[0])) if row else None
        return result

    def vendor_credentials_version(self, app_key: str) -> list[tuple[str, float]]:
        """``(vendor, updated_at)`` of each credential of an app: changes whenever one is set."""
        return [
            (r[0], r[1])
            for r in self._conn.execute(
                "SELECT vendor, updated_at FROM vendor_credentials WHERE app_key = ? ORDER BY vendor",
                (app_key,),
            )
        ]

    def vendors_configured(self, app_key: str) -> list[str]:
        return [
            r[0]
            for r in self._conn.execute(
                "SELECT vendor FROM vendor_credentials WHERE app_key = ? ORDER BY vendor", (app_key,)
            )
        ]

    def raise_alarm(self, app_key: str, vendor: str, reason: str) -> None:
        self._store.webhooks.alarm_raised(app_key, vendor, reason)
        self._conn.execute(
            "INSERT INTO vendor_alarms (app_key, vendor, reason, at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (app_key, vendor) DO UPDATE SET reason = excluded.reason, at = excluded.at,"
            " count = vendor_alarms.count + 1",
            (app_key, vendor, reason, self.clock.now()),
        )

    def alarms(self, app_key: str) -> list[VendorAlarm]:
        return [
            VendorAlarm(r[0], r[1], r[2], r[3])
            for r in self._conn.execute(
                "SELECT vendor, reason, at, count FROM vendor_alarms WHERE app_key = ? ORDER BY vendor",
                (app_key,),
            )
        ]

    def vendor_counters(self, app_key: str) -> dict[str, VendorCounters]:
        return {
            r[0]: VendorCounters(r[1], r[2], r[3])
            for r in self._conn.execute(
                "SELECT vendor, forwarded, dropped_tokens, failed FROM vendor_counters WHERE app_key = ?",
                (app_key,),
            )
        }

    def record_vendor_outcomes(
        self, app_key: str, vendor: str, outcomes: Iterable[VendorOutcome]
    ) -> list[VendorOutcome]:
        """Store what the vendor said, one transaction per batch; returns the failures to put in the
        MQTT inbox instead (``fallback`` ones whose delivery is not on MQTT yet).

        Every outcome adds its attempts to the delivery and its vendor to the delivery's ``channel``
        (which says what was used: ``apns``, ``fcm,mqtt``); one not published on MQTT yet (still
        accepted or held) has the vendor as its only channel so far.
        """
        now = self.clock.now()
        counts = {"forwarded": 0, "dropped_tokens": 0, "failed": 0}
        to_inbox: list[VendorOutcome] = []
        with self._tx():
            for o in outcomes:
                msg_id, device_id = o.msg_id, o.device_id
                row = self._conn.execute(
                    "SELECT state, channel FROM deliveries WHERE msg_id = ? AND device_id = ?",
                    (msg_id, device_id),
                ).fetchone()
                if row is None:
                    continue
                waiting = row[0] in ("accepted", "queued")
                channels = {vendor} if waiting else set(filter(None, (row[1] or "").split(","))) | {vendor}
                if o.kind != "forwarded" and waiting and o.fallback:
                    channels.add("mqtt")
                self._conn.execute(
                    "UPDATE deliveries SET channel = ?, attempts = attempts + ? WHERE msg_id = ? AND device_id = ?",
                    (",".join(sorted(channels)), o.attempts, msg_id, device_id),
                )
                if o.kind == "forwarded":
                    counts["forwarded"] += 1
                    if o.token is not None:
                        self._conn.execute(
                            "UPDATE vendor_tokens SET last_used_at = ?"
                            " WHERE device_id = ? AND vendor = ? AND token_hash = ?",
                            (now, device_id, vendor, vendor_token_hash(o.token)),
                        )
                    if waiting:
                        self._record(msg_id, device_id, DeliveryState.FORWARDED, now, vendor)
                    else:
                        self._events([(msg_id, device_id, "forwarded", now, vendor)])
                    continue
                if o.kind == "dropped_token" and o.token is not None:
                    counts["dropped_tokens"] += 1
                    self._store.webhooks.token_removed(app_key, device_id, vendor, o.token, o.detail)
                    self._conn.execute(  # a tombstone: `device show` tells when and why it went
                        "UPDATE vendor_tokens SET removed_at = ?, removed_reason = ?"
                        " WHERE device_id = ? AND vendor = ? AND token_hash = ? AND removed_at IS NULL",
                        (now, o.detail, device_id, vendor, vendor_token_hash(o.token)),
                    )
                counts["failed"] += 1
                if waiting and o.fallback:
                    to_inbox.append(o)  # its history entry comes with the MQTT publish
                elif waiting:
                    self._record(msg_id, device_id, DeliveryState.FAILED, now, f"{vendor}: {o.detail}")
                else:  # also on MQTT: the delivery goes on; the vendor copy failed
                    self._events([(msg_id, device_id, "failed", now, f"{vendor}: {o.detail}")])
            self._conn.execute(
                "INSERT INTO vendor_counters (app_key, vendor, forwarded, dropped_tokens, failed) VALUES (?,?,?,?,?)"
                " ON CONFLICT (app_key, vendor) DO UPDATE SET forwarded = vendor_counters.forwarded + excluded.forwarded,"
                " dropped_tokens = vendor_counters.dropped_tokens + excluded.dropped_tokens,"
                " failed = vendor_counters.failed + excluded.failed",
                (app_key, vendor, counts["forwarded"], counts["dropped_tokens"], counts["failed"]),
            )
        return to_inbox
