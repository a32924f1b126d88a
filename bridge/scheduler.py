"""Time-driven work of the bridge, on an injectable clock: TTL expiry, scheduled and recurring
sends, approved drafts, held deliveries (quiet hours, caps, pacing) and re-pushes.

With several bridges over one store each due message and re-push is claimed with a lease first
(mqttpush/store/leases.py), so it goes out once; held deliveries are claimed by clearing their
hold in one transaction."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from bridge.dispatcher import Dispatcher, Outbound
from bridge.intake import Intake
from bridge.leases import LEASE_SECONDS, new_owner
from bridge.policy import SendPolicy
from bridge.publisher import Publisher
from mqttpush import topics
from mqttpush.clock import Clock
from mqttpush.errors import MqttPushError
from mqttpush.store import Store
from mqttpush.store.messages import DueDelivery


class Scheduler:
    def __init__(
        self,
        store: Store,
        publisher: Publisher,
        dispatcher: Dispatcher,
        intake: Intake,
        clock: Clock,
        interval: float = 5.0,
        *,
        owner: str | None = None,
        lease: float = LEASE_SECONDS,
    ) -> None:
        self._store = store
        self._owner = owner or new_owner()
        self._lease = lease
        self._publisher = publisher
        self._dispatcher = dispatcher
        self._intake = intake
        self._clock = clock
        self._interval = interval
        self._wake = asyncio.Event()
        self._pass = asyncio.Lock()  # one pass at a time, whoever asks for it

    def wake(self) -> None:
        """Something new may be due sooner than the scheduler planned to look."""
        self._wake.set()

    async def tick(self) -> None:
        """One pass over everything due now."""
        async with self._pass:
            await self.sweep()
            store = self._store
            for msg_id in await store.run(store.leases.claim_due_messages, self._owner, self._lease):
                try:
                    await self._intake.activate(msg_id)
                finally:  # at once, so a series' next occurrence is not held up by this lease
                    with contextlib.suppress(MqttPushError):
                        await store.run(store.leases.release_message, msg_id, self._owner)
            await self._release_held()
            await self._repush()

    async def run(self) -> None:
        """Passes until cancelled. A failed pass propagates to the supervisor (bridge/supervisor.py),
        which logs it once and runs this again after a backoff on the same clock."""
        while True:
            self._wake.clear()
            await self.tick()
            nxt = await self._store.run(self._store.leases.next_wakeup)
            delay = self._interval if nxt is None else min(self._interval, max(0.0, nxt - self._clock.now()))
            sleeping = asyncio.ensure_future(self._clock.sleep(delay))
            woken = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({sleeping, woken}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for fut in (sleeping, woken):
                    fut.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await fut

    async def sweep(self) -> int:
        """Expire deliveries past their TTL and clear their retained topics."""
        return await self._dispatcher.expire()

    async def _policies(self, due: list[DueDelivery]) -> dict[str, SendPolicy]:
        settings: dict[str, dict[str, Any]] = {}
        out: dict[str, SendPolicy] = {}
        for d in due:
            if d.msg_id not in out:
                if d.app_key not in settings:
                    settings[d.app_key] = await self._store.settings(d.app_key)
                out[d.msg_id] = SendPolicy.of(d.policy, settings[d.app_key])
        return out

    async def _release_held(self) -> None:
        due = await self._store.run(self._store.messages.due_held)
        policies = await self._policies(due)
        by_msg: dict[str, list[DueDelivery]] = {}
        for d in due:
            by_msg.setdefault(d.msg_id, []).append(d)
        for msg_id, items in by_msg.items():
            first = items[0]
            self._dispatcher.submit(
                Outbound(
                    msg_id,
                    first.app_key,
                    first.envelope,
                    tuple(d.device_id for d in items),
                    policy=policies[msg_id],
                    released=True,
                )
            )

    async def _repush(self) -> None:
        due = await self._store.run(self._store.leases.claim_repushes, self._lease)
        policies = await self._policies(due)
        for d in due:
            sp = policies[d.msg_id]
            if d.fanout == "topic":  # a broadcast is not re-pushed device by device
                await self._store.run(self._store.messages.mark_repushed, d.msg_id, d.device_id, None)
                continue
            count = d.repushes + 1
            envelope = json.loads(d.envelope) | {"repush": count}
            payload = json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()
            topic = (
                topics.broadcast_topic(d.app_key, d.msg_id)
                if d.fanout == "topic"
                else topics.inbox_topic(d.app_key, d.device_id, d.msg_id)
            )
            expires_at = envelope.get("expires_at")
            await self._publisher.publish(
                topic,
                payload,
                qos=1,
                retain=True,
                expires_at=float(expires_at) if isinstance(expires_at, int | float) else None,
            )
            more = count < sp.repush_max and sp.repush_after is not None
            nxt = self._clock.now() + sp.repush_after if more and sp.repush_after is not None else None
            await self._store.run(self._store.messages.mark_repushed, d.msg_id, d.device_id, nxt)
