"""Webhooks to the app server (issue 17, docs/webhooks.md): the registrations, and the outbox
their events wait in until the bridge's sender has posted them.

Events are written in the transaction of what caused them, so a crash loses none and a restart
sends what is still pending: delivery history rows reach :meth:`WebhookRepository._on_transitions`
(a transition listener of the store), the other events come through :meth:`WebhookRepository.emit`.
Which app wants which event is read from memory (refreshed on every change made here, and every
``REFRESH_SECONDS`` for changes made by another process), so a store whose apps have no webhooks
pays nothing for them.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from mqttpush.errors import InvalidContent, NotFound
from mqttpush.store.core import Event, Repository, StoreCore, chunks
from mqttpush.store.vendors import mask_token, vendor_token_hash

log = logging.getLogger("mqttpush.store")

EVENTS = (
    "delivery.arrived",
    "delivery.opened",
    "delivery.dismissed",
    "delivery.failed",
    "delivery.expired",
    "token.removed",
    "task.done",
    "alarm",
)
"""Every event type a webhook may subscribe to (docs/webhooks.md)."""

DELIVERY_EVENTS = {
    state: f"delivery.{state}" for state in ("arrived", "opened", "dismissed", "failed", "expired")
}
"""Delivery history state → the event it is."""

MAX_WEBHOOKS_PER_APP = 20
MAX_BATCH = 500
SENDER_LEASE_SECONDS = 60.0
"""How long a bridge holds a webhook after taking a batch of it: longer than a POST's timeout; a
dead bridge's webhooks go to another bridge after it."""
"""Events in one POST at most."""
RETRY_SECONDS = 24 * 3600.0
"""How long an event is retried after it was created; then it is kept, ``failed``."""
KEEP_FAILED_SECONDS = 7 * 24 * 3600.0
"""How long events given up on stay visible before they are pruned."""
REFRESH_SECONDS = 2.0
"""How old the in-memory map of subscriptions may get (changes made by other processes)."""
_MSG_APP_CACHE = 10_000

_INSERT = (
    "INSERT INTO webhook_outbox (webhook_id, event_id, event_type, payload, created_at)"
    " VALUES (?, ?, ?, ?, ?)"
)


@dataclass(frozen=True, slots=True)
class WebhookBatch:
    """One POST's worth of events of one type, as the sender sends it (and resends it, the same)."""

    webhook_id: str
    url: str
    secret: str
    batch_id: str
    """``X-MQTTPush-Delivery``: given when the batch is first taken, kept across its retries."""
    event_type: str
    event_ids: list[str]
    body: bytes
    first_created: float
    """When its oldest event was created: retried until ``RETRY_SECONDS`` after."""


class WebhookRepository(Repository):
    """Webhook registrations and their outbox (``store.webhooks``)."""

    def __init__(self, store: StoreCore) -> None:
        super().__init__(store)
        self._subs: dict[str, dict[str, list[str]]] = {}
        """app key → event type → webhook ids subscribed to it."""
        self._loaded_at: float | None = None
        self._msg_apps: dict[str, str] = {}
        # Event ids sort by creation: the time, then a counter (several events share a millisecond).
        self._seq = itertools.count(time.time_ns() // 1000 % (1 << 40))
        self._tag = secrets.token_hex(3)
        self.on_outbox: Callable[[], None] | None = None
        """Told (on the store thread, before the commit) when events were added to the outbox."""
        store.transition_listeners.append(self._on_transitions)

    # --- registrations ------------------------------------------------------------------------

    def create(self, app_key: str, url: str, events: list[str]) -> dict[str, str]:
        """Register a webhook → ``{"webhook_id", "secret"}`` (the secret is shown only here).
        Raises ``too_many_webhooks`` beyond ``MAX_WEBHOOKS_PER_APP``."""
        webhook_id = "wh" + secrets.token_hex(8)
        secret = "whsec_" + secrets.token_urlsafe(32)
        with self._tx() as conn:
            count = int(
                conn.execute("SELECT count(*) FROM webhooks WHERE app_key = ?", (app_key,)).fetchone()[0]
            )
            if count >= MAX_WEBHOOKS_PER_APP:
                raise InvalidContent(
                    f"an app has at most {MAX_WEBHOOKS_PER_APP} webhooks; remove one first",
                    code="too_many_webhooks",
                )
            conn.execute(
                "INSERT INTO webhooks (webhook_id, app_key, url, events, secret_enc, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (webhook_id, app_key, url, json.dumps(events), self._seal(secret), self.clock.now()),
            )
        self._loaded_at = None
        return {"webhook_id": webhook_id, "secret": secret}

    def remove(self, app_key: str, webhook_id: str) -> None:
        """Delete a webhook and every event still waiting for it."""
        with self._tx() as conn:
            row = conn.execute(
                "SELECT 1 FROM webhooks WHERE webhook_id = ? AND app_key = ?", (webhook_id, app_key)
            ).fetchone()
            if row is None:
                raise NotFound(f"no webhook {webhook_id!r} in this app", code="unknown_webhook")
            conn.execute("DELETE FROM webhook_outbox WHERE webhook_id = ?", (webhook_id,))
            conn.execute("DELETE FROM webhooks WHERE webhook_id = ?", (webhook_id,))
        self._loaded_at = None

    def for_app(self, app_key: str) -> list[dict[str, Any]]:
        """An app's webhooks with their health: last success, last error, backlog, state."""
        now = self.clock.now()
        out = []
        for row in self._conn.execute(
            "SELECT w.webhook_id, w.url, w.events, w.created_at, w.last_success_at, w.last_error,"
            " w.last_error_at, w.failing_since,"
            " (SELECT count(*) FROM webhook_outbox o WHERE o.webhook_id = w.webhook_id AND o.state = 'pending'),"
            " (SELECT count(*) FROM webhook_outbox o WHERE o.webhook_id = w.webhook_id AND o.state = 'failed'),"
            " (SELECT min(created_at) FROM webhook_outbox o WHERE o.webhook_id = w.webhook_id AND o.state = 'pending')"
            " FROM webhooks w WHERE w.app_key = ? ORDER BY w.created_at, w.webhook_id",
            (app_key,),
        ):
            failing_since = row[7]
            if failing_since is None:
                state = "active"
            elif now - failing_since >= RETRY_SECONDS:
                state = "failed"
            else:
                state = "failing"
            out.append(
                {
                    "webhook_id": row[0],
                    "url": row[1],
                    "events": json.loads(row[2]),
                    "created_at": row[3],
                    "last_success_at": row[4],
                    "last_error": row[5],
                    "last_error_at": row[6],
                    "failing_since": failing_since,
                    "backlog": int(row[8]),
                    "oldest_pending_at": row[10],
                    "failed_events": int(row[9]),
                    "state": state,
                }
            )
        return out

    # --- producing events (store thread, inside the caller's transaction) ----------------------

    def emit(self, app_key: str, event_type: str, fields: dict[str, Any]) -> None:
        """Queue one event of ``app_key`` for every webhook subscribed to it. Call inside the
        transaction that makes it true (a tombstoned token, a finished task, a raised alarm)."""
        hooks = self._subscriptions().get(app_key, {}).get(event_type)
        if not hooks:
            return
        now = self.clock.now()
        event_id = self._event_id(now)
        payload = json.dumps({"id": event_id, "type": event_type, "at": now, "app_key": app_key, **fields})
        self._conn.executemany(_INSERT, [(w, event_id, event_type, payload, now) for w in hooks])
        self._told()

    # Each hook below is called just before the write that makes its event true, in the same
    # transaction, and checks that the write will change something (no event for a repeat).

    def token_removed(
        self, app_key: str, device_id: str, vendor: str, token: str, reason: str | None
    ) -> None:
        """``token.removed``: a vendor said the device's live token is dead (about to be tombstoned)."""
        if not self._subscriptions().get(app_key, {}).get("token.removed"):
            return
        digest = vendor_token_hash(token)
        live = self._conn.execute(
            "SELECT 1 FROM vendor_tokens WHERE device_id = ? AND vendor = ? AND token_hash = ? AND removed_at IS NULL",
            (device_id, vendor, digest),
        ).fetchone()
        if live is not None:
            fields = {"device_id": device_id, "vendor": vendor, "reason": reason}
            self.emit(
                app_key,
                "token.removed",
                fields | {"token": mask_token(vendor, token), "token_sha256": digest},
            )

    def task_finished(self, task_id: str, state: str, error: str | None = None) -> None:
        """``task.done``: a group task still open is about to end as ``state`` (done, failed, cancelled)."""
        row = self._conn.execute(
            "SELECT app_key, msg_id, targeted FROM tasks WHERE task_id = ? AND state IN ('pending', 'running')",
            (task_id,),
        ).fetchone()
        if row is not None:
            fields = {
                "task_id": task_id,
                "msg_id": row[1],
                "state": state,
                "targeted": row[2],
                "error": error,
            }
            self.emit(str(row[0]), "task.done", fields)

    def message_tasks_finished(self, msg_id: str, state: str) -> None:
        """``task.done`` for each open task of a message about to end as ``state`` (a recall)."""
        for (task_id,) in self._conn.execute(
            "SELECT task_id FROM tasks WHERE msg_id = ? AND state IN ('pending', 'running')", (msg_id,)
        ).fetchall():
            self.task_finished(str(task_id), state)

    def alarm_raised(self, app_key: str, vendor: str, reason: str) -> None:
        """``alarm``: a vendor refused the app's credentials. Once per alarm, not for every send it
        refuses again: until the credentials are set again (which clears the alarm)."""
        row = self._conn.execute(
            "SELECT 1 FROM vendor_alarms WHERE app_key = ? AND vendor = ?", (app_key, vendor)
        ).fetchone()
        if row is None:
            self.emit(app_key, "alarm", {"vendor": vendor, "reason": reason})

    def _on_transitions(self, conn: object, rows: list[Event]) -> None:
        """The store's transition listener: delivery history rows → ``delivery.*`` events (on
        ``conn``, the store's own connection)."""
        subs = self._subscriptions()
        if not subs:
            return
        wanted = {t for per_app in subs.values() for t in per_app}
        picked = [r for r in rows if DELIVERY_EVENTS.get(r[2]) in wanted]
        if not picked:
            return
        apps = self._apps_of(list(dict.fromkeys(r[0] for r in picked)))
        now = self.clock.now()
        out: list[tuple[str, str, str, str, float]] = []
        for msg_id, device_id, state, at, detail in picked:
            app_key = apps.get(msg_id)
            event_type = DELIVERY_EVENTS[state]
            hooks = subs.get(app_key, {}).get(event_type) if app_key is not None else None
            if app_key is None or not hooks:
                continue
            event_id = self._event_id(now)
            # Written by hand (every receipt of a subscribed app passes here; json.dumps of a dict
            # was a third of the cost): ids are plain, the free-text detail is encoded.
            payload = (
                f'{{"id":"{event_id}","type":"{event_type}","at":{float(at)!r},"app_key":{_string(app_key)},'
                f'"msg_id":{_string(msg_id)},"device_id":{_string(device_id)},'
                f'"delivery_id":{_string(f"{msg_id}:{device_id}")}'
                + (f',"detail":{json.dumps(detail)}}}' if detail else "}")
            )
            out.extend((w, event_id, event_type, payload, now) for w in hooks)
        if out:
            self._conn.executemany(_INSERT, out)
            self._told()

    def _told(self) -> None:
        if self.on_outbox is not None:
            self.on_outbox()

    def _event_id(self, now: float) -> str:
        """``ev`` + the millisecond + this process's counter + its random tag: unique, and in the
        order written within a process."""
        return f"ev{int(now * 1000):011x}{next(self._seq) % (1 << 48):012x}{self._tag}"

    def _apps_of(self, msg_ids: list[str]) -> dict[str, str]:
        """``msg_id → app_key`` (remembered: a message's receipts come in many batches)."""
        cache = self._msg_apps
        missing = [m for m in msg_ids if m not in cache]
        if len(cache) + len(missing) > _MSG_APP_CACHE:
            cache.clear()
            missing = msg_ids
        for chunk, marks in chunks(missing):
            for msg_id, app_key in self._conn.execute(
                f"SELECT msg_id, app_key FROM messages WHERE msg_id IN ({marks})", chunk
            ):
                cache[str(msg_id)] = str(app_key)
        return {m: cache[m] for m in msg_ids if m in cache}

    def _subscriptions(self) -> dict[str, dict[str, list[str]]]:
        """The map of who wants what, read again when stale (another process may have changed it)."""
        now = time.monotonic()
        if self._loaded_at is None or not 0 <= now - self._loaded_at < REFRESH_SECONDS:
            subs: dict[str, dict[str, list[str]]] = {}
            for webhook_id, app_key, events in self._conn.execute(
                "SELECT webhook_id, app_key, events FROM webhooks ORDER BY created_at, webhook_id"
            ):
                per_app = subs.setdefault(str(app_key), {})
                for event_type in json.loads(events):
                    per_app.setdefault(str(event_type), []).append(str(webhook_id))
            self._subs, self._loaded_at = subs, now
        return self._subs

    # --- sending (the bridge's webhook sender) -------------------------------------------------

    def with_pending(self) -> list[str]:
        """Webhooks that have events waiting to be sent."""
        return [
            str(r[0])
            for r in self._conn.execute(
                "SELECT w.webhook_id FROM webhooks w WHERE EXISTS (SELECT 1 FROM webhook_outbox o"
                " WHERE o.webhook_id = w.webhook_id AND o.state = 'pending') ORDER BY w.webhook_id"
            )
        ]

    def outlook(self, webhook_id: str) -> tuple[bool, int]:
        """``(a batch is due for a retry, events not in a batch yet — at most MAX_BATCH)``: whether
        the sender should send now or wait a moment for a fuller batch."""
        head = self._conn.execute(
            "SELECT batch_id FROM webhook_outbox WHERE webhook_id = ? AND state = 'pending'"
            " ORDER BY event_id LIMIT 1",
            (webhook_id,),
        ).fetchone()
        if head is None:
            return False, 0
        fresh = self._conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM webhook_outbox WHERE webhook_id = ? AND state = 'pending'"
            " AND batch_id IS NULL LIMIT ?) t",
            (webhook_id, MAX_BATCH),
        ).fetchone()[0]
        return head[0] is not None, int(fresh)

    def take_batch(self, webhook_id: str, sender: str = "") -> WebhookBatch | None:
        """The next POST for a webhook: the oldest batch already sent (a retry, the same events
        under the same delivery id), else a new one of the oldest event's type (≤ ``MAX_BATCH``).
        None when nothing waits, the webhook is gone, or another bridge (``sender``: this one's
        id) holds the webhook's lease: one bridge at a time posts a webhook's batches."""
        now = self.clock.now()
        with self._tx() as conn:
            hook = conn.execute(
                "UPDATE webhooks SET sender = ?, sender_until = ? WHERE webhook_id = ?"
                " AND (sender IS NULL OR sender = ? OR sender_until < ?) RETURNING url, secret_enc",
                (sender, now + SENDER_LEASE_SECONDS, webhook_id, sender, now),
            ).fetchone()
            head = conn.execute(
                "SELECT event_type, batch_id FROM webhook_outbox WHERE webhook_id = ? AND state = 'pending'"
                " ORDER BY event_id LIMIT 1",
                (webhook_id,),
            ).fetchone()
            if hook is None or head is None:
                return None
            event_type, batch_id = str(head[0]), head[1]
            if batch_id is None:
                batch_id = "dl" + secrets.token_hex(12)
                fresh = [
                    str(r[0])
                    for r in conn.execute(
                        "SELECT event_id FROM webhook_outbox WHERE webhook_id = ? AND state = 'pending'"
                        " AND batch_id IS NULL AND event_type = ? ORDER BY event_id LIMIT ?",
                        (webhook_id, event_type, MAX_BATCH),
                    )
                ]
                for chunk, marks in chunks(fresh):
                    conn.execute(
                        f"UPDATE webhook_outbox SET batch_id = ? WHERE webhook_id = ? AND event_id IN ({marks})",
                        (batch_id, webhook_id, *chunk),
                    )
            rows = conn.execute(
                "SELECT event_id, payload, created_at FROM webhook_outbox WHERE batch_id = ? AND webhook_id = ?"
                " AND state = 'pending' ORDER BY event_id",
                (batch_id, webhook_id),
            ).fetchall()
        body = ("[" + ",".join(str(r[1]) for r in rows) + "]").encode()
        return WebhookBatch(
            webhook_id,
            str(hook[0]),
            self._unseal(bytes(hook[1])),
            str(batch_id),
            event_type,
            [str(r[0]) for r in rows],
            body,
            min(float(r[2]) for r in rows),
        )

    def release_senders(self, owners: list[str] | None = None) -> None:
        """Give up the webhooks these bridges hold (None: every bridge's, for a bridge that knows
        it is alone on the store), so another bridge — or this one, restarted — sends at once."""
        if owners is None:
            self._conn.execute("UPDATE webhooks SET sender = NULL, sender_until = NULL")
            return
        for chunk, marks in chunks(owners):
            self._conn.execute(
                f"UPDATE webhooks SET sender = NULL, sender_until = NULL WHERE sender IN ({marks})", chunk
            )

    def delivered(self, webhook_id: str, batch_id: str) -> None:
        """The endpoint answered 2xx: the batch's events are done (deleted) and the webhook healthy."""
        with self._tx() as conn:
            conn.execute(
                "DELETE FROM webhook_outbox WHERE webhook_id = ? AND batch_id = ?", (webhook_id, batch_id)
            )
            conn.execute(
                "UPDATE webhooks SET last_success_at = ?, failing_since = NULL WHERE webhook_id = ?",
                (self.clock.now(), webhook_id),
            )

    def failed(self, webhook_id: str, batch_id: str, error: str) -> int:
        """A POST failed: remember why and since when; events retried for ``RETRY_SECONDS`` are
        given up (kept, ``failed``). Returns how many were given up now."""
        now = self.clock.now()
        with self._tx() as conn:
            conn.execute(
                "UPDATE webhook_outbox SET attempts = attempts + 1 WHERE webhook_id = ? AND batch_id = ?",
                (webhook_id, batch_id),
            )
            conn.execute(
                "UPDATE webhooks SET last_error = ?, last_error_at = ?, failing_since = coalesce(failing_since, ?)"
                " WHERE webhook_id = ?",
                (error[:500], now, now, webhook_id),
            )
            cutoff = now - RETRY_SECONDS
            # Event ids begin with their creation's millisecond: the bound keeps this a range of
            # the pending index, not a pass over a dead endpoint's whole backlog.
            given_up = conn.execute(
                "UPDATE webhook_outbox SET state = 'failed' WHERE webhook_id = ? AND state = 'pending'"
                " AND event_id < ? AND created_at <= ?",
                (webhook_id, f"ev{int(cutoff * 1000) + 1:011x}", cutoff),
            ).rowcount
        return int(given_up)

    def prune(self) -> int:
        """Forget events given up on more than ``KEEP_FAILED_SECONDS`` ago; returns how many."""
        with self._tx() as conn:
            return int(
                conn.execute(
                    "DELETE FROM webhook_outbox WHERE state = 'failed' AND created_at <= ?",
                    (self.clock.now() - RETRY_SECONDS - KEEP_FAILED_SECONDS,),
                ).rowcount
            )


_PLAIN = re.compile(r"[A-Za-z0-9_.:-]*")


def _string(value: str) -> str:
    """``value`` as a JSON string (ids need no escaping; anything else goes through json)."""
    return f'"{value}"' if _PLAIN.fullmatch(value) else json.dumps(value)


def unknown_events(events: Iterable[str]) -> list[str]:
    """The names in ``events`` that are no event type."""
    return [e for e in events if e not in EVENTS]
