"""Group sends (tag, filter, file, broadcast): resolve the audience in batches, in the background.

The API answers with a ``task_id`` as soon as the message and its task are committed; the
runner then walks the app's devices (keyset pagination, a batch at a time, the store thread
doing the SQL), commits each batch of deliveries and hands it to the dispatcher. Between
batches it yields to the event loop, so other requests keep being served.

A task is walked by the one bridge holding its lease (mqttpush/store/leases.py): each batch's
deliveries, the task's progress (the last device id or file line walked) and the renewed lease are
committed together, so a task whose bridge died is claimed by another (or by this one after a
restart) and resumed exactly after the last committed batch; delivery inserts are idempotent too.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator

from bridge import tagexpr
from bridge.dispatcher import Dispatcher, Outbound
from bridge.leases import LEASE_SECONDS, new_owner
from bridge.policy import SendPolicy
from bridge.targets import AudienceTarget, FileTarget, Target, filter_matches, parse_target
from mqttpush.clock import Clock
from mqttpush.errors import StoreUnavailable
from mqttpush.store import Store

log = logging.getLogger("mqttpush.tasks")

BATCH = 2000


class TaskRunner:
    def __init__(
        self,
        store: Store,
        dispatcher: Dispatcher,
        clock: Clock,
        batch: int = BATCH,
        *,
        owner: str | None = None,
        lease: float = LEASE_SECONDS,
    ) -> None:
        self._store = store
        self.owner = owner or new_owner()
        """Who holds the leases of the tasks this runner walks (one id per bridge process)."""
        self._lease = lease
        self._queued: set[str] = set()
        self._dispatcher = dispatcher
        self._clock = clock
        self._batch = batch
        self._queue: asyncio.PriorityQueue[tuple[int, int, str, SendPolicy | None]] = asyncio.PriorityQueue()
        self._seq = itertools.count()
        self._cancelled: set[str] = set()

    def start(self, task_id: str, policy: SendPolicy | None = None) -> None:
        """Resolve a task's audience in the background (``high`` priority tasks first)."""
        if task_id in self._queued:
            return
        self._queued.add(task_id)
        priority = policy.priority if policy is not None else 1
        self._queue.put_nowait((priority, next(self._seq), task_id, policy))

    def queued(self) -> int:
        """Tasks started and waiting for their audience to be resolved (GET /metrics)."""
        return self._queue.qsize()

    def cancelled(self, task_id: str) -> None:
        """The store already says cancelled; stop adding deliveries at the next batch."""
        self._cancelled.add(task_id)

    async def resume(self, *, alone: bool = False) -> int:
        """Claim the open tasks no bridge holds (or whose bridge's lease lapsed; ``alone``: every
        open task, when no other bridge can be running) and walk them from their progress;
        returns how many were claimed. Called at start and then every third of a lease
        (bridge/leases.py)."""
        claimed = await self._store.run(self._store.leases.claim_tasks, self.owner, self._lease, alone=alone)
        for task_id in claimed:
            self.start(task_id)
        return len(claimed)

    async def idle(self) -> None:
        """Wait until every started task has resolved its audience (then the dispatcher's queue)."""
        await self._queue.join()
        await self._dispatcher.drained()

    async def run(self) -> None:
        """Resolve started tasks until cancelled. A task the store could not go on with (disk full,
        locked) is not failed: it goes back in the queue (its delivery inserts are idempotent) and
        the error propagates to the supervisor (bridge/supervisor.py), which runs this again."""
        while True:
            priority, seq, task_id, policy = await self._queue.get()
            requeued = False
            try:
                await self._execute(task_id, policy)
            except StoreUnavailable:
                self._queue.put_nowait((priority, seq, task_id, policy))
                requeued = True
                raise
            except Exception as exc:
                log.exception("task failed task_id=%s", task_id, extra={"task_id": task_id})
                await self._store.run(self._store.tasks.finish_task, task_id, "failed", repr(exc))
            finally:
                if not requeued:
                    self._queued.discard(task_id)
                self._queue.task_done()

    async def _execute(self, task_id: str, policy: SendPolicy | None) -> None:
        store = self._store
        claim = await store.run(store.leases.claim_task, task_id, self.owner, self._lease)
        if claim is None:  # finished, or another bridge walks it
            return
        rec = await store.run(store.tasks.task_record, task_id)
        if rec is None or rec.state not in ("pending", "running"):
            return
        if policy is None:  # resumed after a restart
            policy = SendPolicy.of(rec.policy, await store.settings(rec.app_key))
        target = parse_target(rec.target)
        production = bool(rec.policy.get("production", True))
        targeted = 0
        # Spreading over N minutes needs the audience's size: collect it first, then hand it on whole.
        collect = policy.pace is not None and policy.pace.over_seconds is not None
        collected: list[str] = []
        async for device_ids, progress in self._audience(rec.app_key, target, production, claim.progress):
            if task_id in self._cancelled:
                log.info(
                    "task cancelled task_id=%s targeted=%d", task_id, targeted, extra={"task_id": task_id}
                )
                return
            fresh = await store.run(
                store.leases.add_task_batch,
                task_id,
                self.owner,
                self._lease,
                rec.msg_id,
                device_ids,
                progress,
            )
            if fresh is None:
                log.info(
                    "task no longer ours task_id=%s targeted=%d",
                    task_id,
                    targeted,
                    extra={"task_id": task_id},
                )
                return
            targeted += len(fresh)
            if collect:
                collected += fresh
            elif fresh and rec.fanout == "inbox":
                self._dispatcher.submit(
                    Outbound(rec.msg_id, rec.app_key, rec.payload, tuple(fresh), policy=policy)
                )
            await asyncio.sleep(0)  # let API requests in between batches
        if task_id in self._cancelled:
            return
        if collected and rec.fanout == "inbox":
            self._dispatcher.submit(
                Outbound(rec.msg_id, rec.app_key, rec.payload, tuple(collected), policy=policy)
            )
        if rec.fanout == "topic":
            self._dispatcher.submit(
                Outbound(rec.msg_id, rec.app_key, rec.payload, (), broadcast=True, policy=policy)
            )
        await self._store.run(self._store.tasks.finish_task, task_id, "done")
        log.info(
            "task resolved task_id=%s kind=%s targeted=%d",
            task_id,
            rec.kind,
            targeted,
            extra={"task_id": task_id},
        )

    async def _audience(
        self, app_key: str, target: Target, production: bool, progress: str | None
    ) -> AsyncIterator[tuple[list[str], str]]:
        """Device ids of the target a batch at a time (only test devices unless ``production``),
        each with the progress to checkpoint once they are committed, starting after ``progress``.
        A batch the filters leave empty still comes, so progress and the lease move on."""
        if isinstance(target, FileTarget):
            async for batch in self._file_audience(app_key, target, production, int(progress or 0)):
                yield batch
            return
        after = progress or ""
        now = self._clock.now()
        store = self._store
        flt = target.filter if isinstance(target, AudienceTarget) else None
        tags = target.tags if isinstance(target, AudienceTarget) else None
        platforms = sorted(flt.platforms) if flt is not None and flt.platforms is not None else None
        while True:
            rows = await store.run(
                store.devices.audience_batch,
                app_key,
                after,
                self._batch,
                platforms=platforms,
                test_only=not production,
            )
            if not rows:
                return
            after = rows[-1].device_id
            if flt is not None:
                rows = [
                    r
                    for r in rows
                    if filter_matches(
                        flt,
                        platform=r.platform,
                        app_version=r.app_version,
                        channel=r.channel,
                        locale=r.locale,
                        last_seen=r.last_seen,
                        is_test=r.is_test,
                        online=r.online,
                        now=now,
                    )
                ]
            if tags is not None and rows:
                device_tags = await store.run(store.devices.tags_for, [r.device_id for r in rows])
                rows = [r for r in rows if tagexpr.evaluate(tags, device_tags[r.device_id])]
            yield [r.device_id for r in rows], after

    async def _file_audience(
        self, app_key: str, target: FileTarget, production: bool, after: int
    ) -> AsyncIterator[tuple[list[str], str]]:
        store = self._store
        info = await store.run(store.tasks.file_info, app_key, target.file_id)
        while True:
            lines = await store.run(store.tasks.file_values, target.file_id, after, self._batch)
            if not lines:
                return
            after = lines[-1][0]
            values = [v for _, v in lines]
            if info.kind == "aliases":
                bound = await store.run(
                    store.devices.devices_for_aliases, app_key, info.alias_type or "user", values
                )
                device_ids = list(dict.fromkeys(d for ds in bound.values() for d in ds))
            else:
                known = await store.run(store.devices.known_devices, app_key, values)
                device_ids = [v for v in dict.fromkeys(values) if v in known]
            if not production and device_ids:
                test = await store.run(store.devices.test_devices, app_key, device_ids)
                device_ids = [d for d in device_ids if d in test]
            yield device_ids, str(after)
