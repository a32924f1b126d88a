"""Accepting a push: validate, build the envelope, commit, then hand it on (dispatcher or task runner)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bridge import templates
from bridge.dispatcher import Dispatcher, Outbound
from bridge.policy import Schedule, SendPolicy
from bridge.publisher import Publisher
from bridge.targets import AliasTarget, BroadcastTarget, DevicesTarget, FileTarget, parse_target
from bridge.tasks import TaskRunner
from mqttpush import ids, topics
from mqttpush.clock import Clock
from mqttpush.envelope import RICH_FIELDS, Envelope
from mqttpush.errors import Conflict, InvalidContent, MqttPushError, NotFound, Overloaded
from mqttpush.models import App, BatchRequest, Content, Notification, Policy, PushRequest
from mqttpush.store import Store
from mqttpush.store.messages import MessageRecord

log = logging.getLogger("mqttpush.intake")

DEFAULT_TTL = 3 * 24 * 3600
MAX_TTL = 10 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Limits:
    max_envelope_bytes: int = 4096
    default_ttl: int = DEFAULT_TTL
    max_ttl: int = MAX_TTL
    max_publish_lag: float = 1.0
    """Refuse new pushes (503 ``overloaded``) while accepted ones wait longer than this to be
    published; 0 turns the bound off."""


@dataclass(frozen=True, slots=True)
class _Body:
    """Resolved content of one message: template applied, type decided."""

    kind: str
    notification: Notification | None
    data: dict[str, Any]


class Intake:
    def __init__(
        self,
        store: Store,
        dispatcher: Dispatcher,
        tasks: TaskRunner,
        clock: Clock,
        limits: Limits | None = None,
    ) -> None:
        self._store = store
        self._dispatcher = dispatcher
        self._tasks = tasks
        self._clock = clock
        self.limits = limits or Limits()
        self.on_scheduled: Callable[[], None] | None = None
        """Told when a message is stored for later (draft, start time, series): the scheduler wakes."""

    # --- content -----------------------------------------------------------------------------------

    async def _template(self, app: App, content: Content) -> dict[str, Any] | None:
        if content.template is None:
            return None
        if content.notification is not None or content.data is not None:
            raise InvalidContent(
                "give either a template or notification/data, not both", code="invalid_request"
            )
        return await self._store.run(self._store.apps.get_template, app.app_key, content.template)

    def _body(self, content: Content, template: dict[str, Any] | None, variables: dict[str, Any]) -> _Body:
        if template is not None:
            rendered = templates.render(template, variables)
            note = (
                Notification.model_validate(rendered["notification"])
                if rendered.get("notification")
                else None
            )
            data = rendered.get("data")
            kind_given = rendered.get("type")
        else:
            note, data, kind_given = content.notification, content.data, content.type
        kind = kind_given or ("notification" if note is not None else "message")
        if kind not in ("notification", "message"):
            raise InvalidContent("type must be 'notification' or 'message'", code="invalid_type")
        if kind == "notification" and (note is None or (note.title is None and note.body is None)):
            raise InvalidContent("a notification needs a title or a body", code="empty_notification")
        if kind == "message" and data is None and note is None:
            raise InvalidContent("a message needs data", code="empty_message")
        return _Body(kind, note, data or {})

    def _ttl(self, policy: Policy) -> int:
        ttl = policy.ttl if policy.ttl is not None else self.limits.default_ttl
        if ttl > self.limits.max_ttl:
            raise InvalidContent(
                f"policy.ttl {ttl}s is above the maximum {self.limits.max_ttl}s", code="ttl_too_long"
            )
        return ttl

    def _envelope(self, app: App, msg_id: str, body: _Body, now: float, ttl: int) -> bytes:
        note = body.notification
        rich = {f: getattr(note, f) for f in RICH_FIELDS if getattr(note, f) is not None} if note else {}
        envelope = Envelope(
            id=msg_id,
            app=app.app_key,
            type=body.kind,
            title=note.title if note else None,
            body=note.body if note else None,
            data=body.data,
            sent_at=now,
            expires_at=now + ttl,
            rich=rich,
        )
        return envelope.encode(self.limits.max_envelope_bytes)

    # --- audiences known at once ---------------------------------------------------------------------

    async def _devices_now(
        self, app: App, target: DevicesTarget | AliasTarget, production: bool
    ) -> list[str]:
        """The devices a push goes to now. A production push to a device list is checked inside
        its accept transaction instead (``check_devices``), one store call fewer on the hot path."""
        store = self._store
        if isinstance(target, DevicesTarget):
            device_ids = list(target.device_ids)
            if not production:
                await store.run(store.devices.require_known, app.app_key, device_ids)
        else:
            bound = await store.run(
                store.devices.devices_for_aliases, app.app_key, target.alias_type, list(target.aliases)
            )
            if not bound:
                raise NotFound(
                    f"no device is bound to alias(es) {', '.join(target.aliases[:5])} of type {target.alias_type!r}",
                    code="unknown_alias",
                )
            device_ids = list(dict.fromkeys(d for a in target.aliases for d in bound.get(a, [])))
        if not production:
            test = await store.run(store.devices.test_devices, app.app_key, device_ids)
            device_ids = [d for d in device_ids if d in test]
            if not device_ids:
                raise InvalidContent(
                    "production: false, and none of the target devices is a test device",
                    code="no_test_devices",
                )
        return device_ids

    # --- the entry points ------------------------------------------------------------------------------

    async def push(self, app: App, req: PushRequest) -> dict[str, str]:
        """Accept one push. Returns ``{"msg_id"}`` (devices, aliases) or ``{"task_id", "msg_id"}`` (groups)
        once the message is committed to the store. The same ``biz_id`` returns the same answer."""
        store = self._store
        if req.policy.biz_id is not None:
            known = await store.run(store.messages.find_biz_id, app.app_key, req.policy.biz_id)
            if known is not None:
                return _answer(known.msg_id, known.task_id)
        self._admit()
        target = parse_target(req.target)
        ttl = self._ttl(req.policy)
        body = self._body(req, await self._template(app, req), req.vars or {})
        policy = req.policy.model_dump(exclude_none=True) | {"ttl": ttl}
        settings = await store.settings(app.app_key)
        send = SendPolicy.of(policy, settings)
        schedule = Schedule.parse(req.policy.schedule) if req.policy.schedule is not None else None
        now = self._clock.now()
        production = req.policy.production
        if isinstance(target, FileTarget):
            await store.run(store.tasks.file_info, app.app_key, target.file_id)  # 404 before accepting
        device_ids: list[str] = []
        if not target.is_task and schedule is None:
            assert isinstance(target, DevicesTarget | AliasTarget)
            device_ids = await self._devices_now(app, target, production)
        msg_id = ids.new_msg_id(now)
        start = max(req.policy.start_at or now, now)
        if schedule is not None:
            first = schedule.next_after(max(now, start) - 60 if req.policy.start_at else now)
            if first is None:
                raise InvalidContent("policy.schedule has no future occurrence", code="bad_schedule")
            start = first
        payload = self._envelope(app, msg_id, body, start, ttl)
        needs_approval = bool(req.policy.approval or settings.get("require_approval"))
        state = (
            "draft" if needs_approval else ("scheduled" if start > now or schedule is not None else "active")
        )
        task_id = "t" + msg_id if target.is_task and schedule is None else None
        fanout = "topic" if isinstance(target, BroadcastTarget) and production else "inbox"
        try:
            await store.run(
                store.messages.accept_message,
                msg_id=msg_id,
                app_key=app.app_key,
                kind=target.kind,
                target=req.target,
                envelope=payload,
                policy=policy,
                expires_at=start + ttl,
                device_ids=device_ids,
                fanout=fanout,
                task_id=task_id,
                state=state,
                priority=send.priority,
                next_run_at=start if state != "active" else None,
                check_devices=isinstance(target, DevicesTarget) and production and schedule is None,
            )
        except Conflict:  # the same biz_id, accepted by a concurrent request
            assert req.policy.biz_id is not None
            known = await store.run(store.messages.find_biz_id, app.app_key, req.policy.biz_id)
            if known is None:
                raise
            return _answer(known.msg_id, known.task_id)
        result = _answer(msg_id, task_id)
        if state == "active":
            self._dispatch(app.app_key, msg_id, payload, device_ids, task_id, send)
        elif self.on_scheduled is not None:
            self.on_scheduled()
        return result

    async def preview(self, app: App, req: PushRequest) -> bytes:
        """The envelope :meth:`push` would build for ``req``, with every check that needs no
        audience (target shape and tag expression, TTL, content, policy, schedule, size): the
        console's live preview. Nothing is stored; the id is a fresh one that no message gets."""
        parse_target(req.target)
        ttl = self._ttl(req.policy)
        body = self._body(req, await self._template(app, req), req.vars or {})
        policy = req.policy.model_dump(exclude_none=True) | {"ttl": ttl}
        SendPolicy.of(policy, await self._store.settings(app.app_key))
        if req.policy.schedule is not None:
            Schedule.parse(req.policy.schedule)
        now = self._clock.now()
        return self._envelope(app, ids.new_msg_id(now), body, max(req.policy.start_at or now, now), ttl)

    def _admit(self) -> None:
        """Refuse a new push while the dispatcher is behind by more than ``max_publish_lag``."""
        bound = self.limits.max_publish_lag
        lag = self._dispatcher.lag()
        if bound > 0 and lag > bound:
            raise Overloaded(
                f"pushes wait {lag:.1f}s to be published (bound {bound:g}s); retry later",
                retry_after=max(1, math.ceil(lag)),
            )

    def _dispatch(
        self,
        app_key: str,
        msg_id: str,
        payload: bytes,
        device_ids: list[str],
        task_id: str | None,
        send: SendPolicy,
    ) -> None:
        if task_id is not None:
            self._tasks.start(task_id, send)
        else:
            self._dispatcher.submit(Outbound(msg_id, app_key, payload, tuple(device_ids), policy=send))

    async def activate(self, msg_id: str) -> None:
        """A scheduled (or approved) message whose time has come goes out; a series sends one occurrence."""
        store = self._store
        rec = await store.run(store.messages.message_record, msg_id)
        if rec is None or rec.state not in ("scheduled", "approved"):
            return
        now = self._clock.now()
        settings = await store.settings(rec.app_key)
        send = SendPolicy.of(rec.policy, settings)
        ttl = int(rec.policy.get("ttl", self.limits.default_ttl))
        if rec.policy.get("schedule") is not None:
            schedule = Schedule.parse(rec.policy["schedule"])
            try:
                await self._occurrence(rec, now, ttl, send)
            except MqttPushError as exc:  # e.g. every alias unbound since: skip this one, keep the series
                log.warning("series %s: occurrence skipped: %s", msg_id, exc.message)
            nxt = schedule.next_after(now, rec.occurrences + 1)
            await store.run(store.messages.set_message_state, msg_id, "scheduled" if nxt else "done", nxt)
            return
        payload = _restamp(rec.envelope, msg_id, now, ttl)
        await store.run(store.messages.activate, msg_id, payload, now + ttl)
        devices = [] if rec.task_id else await store.run(store.messages.accepted_devices, msg_id)
        self._dispatch(rec.app_key, msg_id, payload, devices, rec.task_id, send)

    async def cancel(self, app: App, msg_id: str) -> None:
        """Stop a message not yet (fully) sent: a draft, a scheduled send, a series, a running task."""
        task_id, _ = await self._store.run(self._store.messages.cancel_message, app.app_key, msg_id)
        if task_id:
            self._tasks.cancelled(task_id)

    async def recall(self, app: App, msg_id: str, publisher: Publisher) -> int:
        """Take a message back from devices that have not opened it: its retained copy is replaced by a
        ``revoke`` envelope the device client honours. Returns how many devices were told."""
        fanout, devices = await self._store.run(self._store.messages.recall, app.app_key, msg_id)
        revoke = json.dumps(
            {
                "id": msg_id,
                "app": app.app_key,
                "type": "revoke",
                "revokes": msg_id,
                "sent_at": self._clock.now(),
            },
            separators=(",", ":"),
        ).encode()
        if fanout == "topic":
            await publisher.publish(topics.broadcast_topic(app.app_key, msg_id), revoke, qos=1, retain=True)
        else:
            for device_id in devices:
                await publisher.publish(
                    topics.inbox_topic(app.app_key, device_id, msg_id), revoke, qos=1, retain=True
                )
        return len(devices)

    async def _occurrence(self, rec: MessageRecord, now: float, ttl: int, send: SendPolicy) -> None:
        store = self._store
        app = await store.run(store.apps.get_app, rec.app_key)
        assert app is not None
        target = parse_target(rec.target)
        production = bool(rec.policy.get("production", True))
        device_ids: list[str] = []
        if not target.is_task:
            assert isinstance(target, DevicesTarget | AliasTarget)
            device_ids = await self._devices_now(app, target, production)
        child = ids.new_msg_id(now)
        payload = _restamp(rec.envelope, child, now, ttl)
        task_id = "t" + child if target.is_task else None
        policy = {
            k: v for k, v in rec.policy.items() if k not in ("schedule", "start_at", "approval", "biz_id")
        }
        await store.run(
            store.messages.accept_message,
            msg_id=child,
            app_key=rec.app_key,
            kind=target.kind,
            target=rec.target,
            envelope=payload,
            policy=policy,
            expires_at=now + ttl,
            device_ids=device_ids,
            fanout=rec.fanout,
            task_id=task_id,
            priority=send.priority,
            parent_msg_id=rec.msg_id,
        )
        self._dispatch(rec.app_key, child, payload, device_ids, task_id, send)

    async def push_batch(self, app: App, req: BatchRequest) -> list[str]:
        """One message per item, each rendered with the item's variables; all validated before any is stored.

        A batch goes out now: schedules, approval and idempotency keys belong to single pushes."""
        later = [
            k for k in ("schedule", "start_at", "approval", "biz_id") if getattr(req.policy, k) is not None
        ]
        if later:
            raise InvalidContent(f"policy.{later[0]} is not available for batch pushes", code="bad_policy")
        ttl = self._ttl(req.policy)
        template = await self._template(app, req)
        prepared = []
        for n, item in enumerate(req.items):
            if (item.device is None) == (item.alias is None):
                raise InvalidContent(
                    f"items[{n}] needs exactly one of device or alias", code="invalid_target"
                )
            raw_target: dict[str, Any] = (
                {"devices": [item.device]}
                if item.device is not None
                else {"alias": item.alias, "alias_type": item.alias_type}
            )
            target = parse_target(raw_target)
            assert isinstance(target, DevicesTarget | AliasTarget)
            body = self._body(req, template, (req.vars or {}) | item.vars)
            device_ids = await self._devices_now(app, target, req.policy.production)
            prepared.append((target, raw_target, body, device_ids))
        policy = req.policy.model_dump(exclude_none=True) | {"ttl": ttl}
        send = SendPolicy.of(policy, await self._store.settings(app.app_key))
        msg_ids = []
        for target, raw_target, body, device_ids in prepared:
            now = self._clock.now()
            msg_id = ids.new_msg_id(now)
            payload = self._envelope(app, msg_id, body, now, ttl)
            await self._store.run(
                self._store.messages.accept_message,
                msg_id=msg_id,
                app_key=app.app_key,
                kind=target.kind,
                target=raw_target,
                envelope=payload,
                policy=policy,
                expires_at=now + ttl,
                device_ids=device_ids,
                priority=send.priority,
            )
            self._dispatch(app.app_key, msg_id, payload, device_ids, None, send)
            msg_ids.append(msg_id)
        return msg_ids


def _restamp(envelope: bytes, msg_id: str, sent_at: float, ttl: int) -> bytes:
    """The stored envelope, sent now: its id, ``sent_at`` and ``expires_at`` follow."""
    doc = json.loads(envelope)
    doc.update(id=msg_id, sent_at=sent_at, expires_at=sent_at + ttl)
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def _answer(msg_id: str, task_id: str | None) -> dict[str, str]:
    """What an accepted push answers: ``{"msg_id"}``, or ``{"task_id", "msg_id"}`` for a group send."""
    return {"task_id": task_id, "msg_id": msg_id} if task_id else {"msg_id": msg_id}
