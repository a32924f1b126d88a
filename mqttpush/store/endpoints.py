"""Push endpoints of the UnifiedPush / Web Push distributor (docs/webpush.md): which device and
app instance each ``/up/<endpoint_id>`` URL leads to, and the messages sent through it (their
``Topic``, for replacement)."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mqttpush.errors import Conflict, Gone, InvalidContent, NotFound
from mqttpush.models import PENDING_STATES, DeliveryState
from mqttpush.store.core import Repository

ENDPOINT_ID_BYTES = 20
"""160 random bits, base64url (27 characters): not guessable, and nothing in it says whose it is."""

_PENDING = tuple(s.value for s in PENDING_STATES)
_COLUMNS = "endpoint_id, app_key, device_id, instance, vapid_key, created_at, removed_at"


@dataclass(frozen=True, slots=True)
class Endpoint:
    endpoint_id: str
    app_key: str
    device_id: str
    instance: str
    vapid_key: str | None
    """The application server's VAPID public key (base64url) every push must be signed with."""
    created_at: float
    removed_at: float | None

    @property
    def active(self) -> bool:
        return self.removed_at is None


def new_endpoint_id() -> str:
    return secrets.token_urlsafe(ENDPOINT_ID_BYTES)


def _endpoint(row: Any) -> Endpoint:
    return Endpoint(row[0], row[1], row[2], row[3], row[4], float(row[5]), row[6])


class EndpointRepository(Repository):
    """``store.endpoints``: create, list and remove endpoints; accept a message sent through one."""

    def create(
        self, app_key: str, device_id: str, instance: str, vapid_key: str | None, most: int
    ) -> tuple[Endpoint, bool]:
        """The device's live endpoint for ``instance``, made if there is none. Returns
        (endpoint, created). The same instance with another VAPID key is a conflict the device
        settles by removing the endpoint first; more than ``most`` live endpoints is refused."""
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM push_endpoints"
                " WHERE device_id = ? AND instance = ? AND removed_at IS NULL",
                (device_id, instance),
            ).fetchone()
            if row is not None:
                found = _endpoint(row)
                if vapid_key is not None and found.vapid_key != vapid_key:
                    raise Conflict(
                        f"instance {instance!r} already has an endpoint with another VAPID key;"
                        " delete it first to get one for this key",
                        code="endpoint_key_conflict",
                    )
                return found, False
            (count,) = conn.execute(
                "SELECT count(*) FROM push_endpoints WHERE device_id = ? AND removed_at IS NULL",
                (device_id,),
            ).fetchone()
            if count >= most:
                raise InvalidContent(
                    f"a device has at most {most} endpoints; delete one first", code="too_many_endpoints"
                )
            endpoint = Endpoint(
                new_endpoint_id(), app_key, device_id, instance, vapid_key, self.clock.now(), None
            )
            conn.execute(
                f"INSERT INTO push_endpoints ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    endpoint.endpoint_id,
                    app_key,
                    device_id,
                    instance,
                    vapid_key,
                    endpoint.created_at,
                    None,
                ),
            )
        return endpoint, True

    def get(self, endpoint_id: str) -> Endpoint | None:
        """The endpoint, live or removed; None if it was never issued."""
        row = self._conn.execute(
            f"SELECT {_COLUMNS} FROM push_endpoints WHERE endpoint_id = ?", (endpoint_id,)
        ).fetchone()
        return _endpoint(row) if row is not None else None

    def of_device(self, device_id: str) -> list[Endpoint]:
        """The device's live endpoints, oldest first."""
        rows = self._conn.execute(
            f"SELECT {_COLUMNS} FROM push_endpoints WHERE device_id = ? AND removed_at IS NULL"
            " ORDER BY created_at, endpoint_id",
            (device_id,),
        ).fetchall()
        return [_endpoint(r) for r in rows]

    def remove(self, device_id: str, endpoint_id: str) -> tuple[Endpoint, list[str]]:
        """Unregister one of the device's endpoints: senders get 410 from now on, and what still
        waits for the device through it is cancelled. Returns (the endpoint, the cancelled msg ids,
        whose retained inbox copies the caller clears). Removing it again changes nothing."""
        now = self.clock.now()
        with self._tx() as conn:
            found = self.get(endpoint_id)
            if found is None or found.device_id != device_id:
                raise NotFound(f"no endpoint {endpoint_id!r} of this device", code="unknown_endpoint")
            if not found.active:
                return found, []
            conn.execute("UPDATE push_endpoints SET removed_at = ? WHERE endpoint_id = ?", (now, endpoint_id))
            waiting = self._waiting(endpoint_id, None)
            self._cancel(waiting, device_id, "endpoint removed", now)
        return dataclasses.replace(found, removed_at=now), waiting

    def accept(
        self, endpoint_id: str, msg_id: str, topic: str | None, commit_message: Callable[[], None]
    ) -> list[str]:
        """In one transaction: the endpoint is still live (else 410), ``commit_message`` stores the
        message and its delivery (``store.messages.accept_message``), and a message with the same ``topic``
        still waiting for the device is cancelled (``replaced``). Returns the replaced msg ids,
        whose retained inbox copies the caller clears."""
        now = self.clock.now()
        with self._tx() as conn:
            found = self.get(endpoint_id)
            if found is None:
                raise NotFound("no such push endpoint", code="unknown_endpoint")
            if not found.active:
                raise Gone("this push endpoint was unregistered", code="endpoint_gone")
            replaced = self._waiting(endpoint_id, topic) if topic is not None else []
            self._cancel(replaced, found.device_id, "replaced", now)
            commit_message()
            conn.execute(
                "INSERT INTO push_endpoint_messages (msg_id, endpoint_id, topic) VALUES (?, ?, ?)",
                (msg_id, endpoint_id, topic),
            )
        return replaced

    def message_owner(self, msg_id: str) -> tuple[str, str] | None:
        """``(app_key, device_id)`` of a message sent through an endpoint; None for any other id."""
        row = self._conn.execute(
            "SELECT e.app_key, e.device_id FROM push_endpoint_messages pm"
            " JOIN push_endpoints e ON e.endpoint_id = pm.endpoint_id WHERE pm.msg_id = ?",
            (msg_id,),
        ).fetchone()
        return (row[0], row[1]) if row is not None else None

    def cancel_message(self, msg_id: str) -> tuple[str, str, bool]:
        """The application server takes back a message it sent (``DELETE`` on its ``Location``).
        Returns (app_key, device_id, whether it was still waiting)."""
        now = self.clock.now()
        with self._tx():
            owner = self.message_owner(msg_id)
            if owner is None:
                raise NotFound("no such push message", code="unknown_message")
            app_key, device_id = owner
            waiting = self._still_waiting(msg_id)
            self._cancel([msg_id] if waiting else [], device_id, "cancelled by the sender", now)
        return app_key, device_id, waiting

    def _waiting(self, endpoint_id: str, topic: str | None) -> list[str]:
        """Messages of the endpoint (with that topic, if given) whose delivery still waits."""
        marks = ",".join("?" * len(_PENDING))
        sql = (
            "SELECT pm.msg_id FROM push_endpoint_messages pm JOIN deliveries d ON d.msg_id = pm.msg_id"
            f" WHERE pm.endpoint_id = ? AND d.state IN ({marks})"
        )
        params: tuple[Any, ...] = (endpoint_id, *_PENDING)
        if topic is not None:
            sql += " AND pm.topic = ?"
            params += (topic,)
        return [r[0] for r in self._conn.execute(sql, params).fetchall()]

    def _still_waiting(self, msg_id: str) -> bool:
        marks = ",".join("?" * len(_PENDING))
        row = self._conn.execute(
            f"SELECT 1 FROM deliveries WHERE msg_id = ? AND state IN ({marks})", (msg_id, *_PENDING)
        ).fetchone()
        return row is not None

    def _cancel(self, msg_ids: list[str], device_id: str, why: str, now: float) -> None:
        for msg_id in msg_ids:
            self._record(msg_id, device_id, DeliveryState.CANCELLED, now, why)
            self._conn.execute(
                "UPDATE messages SET state = 'cancelled', next_run_at = NULL WHERE msg_id = ?", (msg_id,)
            )
