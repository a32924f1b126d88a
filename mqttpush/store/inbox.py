"""A device's pending inbox and its app's live broadcasts, as a broker node sends them on SUBSCRIBE.

In a cluster (docs/scale-out.md, "Processes") no broker keeps retained inbox messages: a device
may connect to any node, so the node reads what the device is owed from the store when the device
subscribes, and live pushes reach it through NATS.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from mqttpush.models import PENDING_STATES
from mqttpush.store.core import Repository

_PENDING = tuple(s.value for s in PENDING_STATES)
_MARKS = ",".join("?" * len(_PENDING))


@dataclass(frozen=True, slots=True)
class InboxMessage:
    msg_id: str
    payload: bytes
    expires_at: float


class InboxRepository(Repository):
    def pending(self, app_key: str, device_id: str, limit: int) -> list[InboxMessage]:
        """The device's deliveries not yet arrived nor ended, of active unexpired messages, held ones
        left out (they wait for their time); the newest ``limit`` (the inbox bound), oldest first.
        Messages routed to vendor channels only (strategy ``vendor``) are not the MQTT inbox's."""
        rows = self._conn.execute(
            "SELECT d.msg_id, m.envelope, m.expires_at, m.policy FROM deliveries d"
            " JOIN messages m ON m.msg_id = d.msg_id"
            f" WHERE d.device_id = ? AND d.state IN ({_MARKS}) AND (d.state != 'queued' OR d.not_before IS NULL)"
            " AND m.app_key = ? AND m.fanout = 'inbox' AND m.state = 'active' AND m.expires_at > ?"
            " ORDER BY d.msg_id DESC LIMIT ?",
            (device_id, *_PENDING, app_key, self.clock.now(), limit),
        ).fetchall()
        out = [InboxMessage(r[0], bytes(r[1]), float(r[2])) for r in reversed(rows) if _mqtt(r[3])]
        return out

    def broadcasts(self, app_key: str, device_id: str) -> list[InboxMessage]:
        """The app's live broadcasts (not cleared, unexpired) that ``device_id`` has not yet
        acknowledged (a device registered after one was sent has no delivery row: it gets it too)."""
        rows = self._conn.execute(
            "SELECT m.msg_id, m.envelope, m.expires_at FROM messages m"
            " LEFT JOIN deliveries d ON d.msg_id = m.msg_id AND d.device_id = ?"
            " WHERE m.app_key = ? AND m.fanout = 'topic' AND m.state = 'active' AND m.expires_at > ?"
            f" AND m.cleared_at IS NULL AND (d.state IS NULL OR d.state IN ({_MARKS}))"
            " ORDER BY m.msg_id",
            (device_id, app_key, self.clock.now(), *_PENDING),
        ).fetchall()
        return [InboxMessage(r[0], bytes(r[1]), float(r[2])) for r in rows]


def _mqtt(policy: str) -> bool:
    try:
        doc = json.loads(policy)
    except ValueError:
        return True
    return not (isinstance(doc, dict) and doc.get("strategy") == "vendor")
