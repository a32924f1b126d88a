"""Accepting a push: validate, build the envelope, commit, then hand it on (dispatcher or task runner)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bridge import templates
from bridge.dispatcher import Dispatcher, Outbound
from bridge.targets import AliasTarget, BroadcastTarget, DevicesTarget, FileTarget, Target, parse_target
from bridge.tasks import TaskRunner
from mqttpush import ids
from mqttpush.clock import Clock
from mqttpush.envelope import RICH_FIELDS, Envelope
from mqttpush.errors import InvalidContent, NotFound
from mqttpush.models import App, BatchRequest, Content, Notification, Policy, PushRequest
from mqttpush.store import Store

DEFAULT_TTL = 3 * 24 * 3600
MAX_TTL = 10 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Limits:
    max_envelope_bytes: int = 4096
    default_ttl: int = DEFAULT_TTL
    max_ttl: int = MAX_TTL


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

    # --- content -----------------------------------------------------------------------------------

    async def _template(self, app: App, content: Content) -> dict[str, Any] | None:
        if content.template is None:
            return None
        if content.notification is not None or content.data is not None:
            raise InvalidContent(
                "give either a template or notification/data, not both", code="invalid_request"
            )
        return await self._store.run(self._store.get_template, app.app_key, content.template)

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
        store = self._store
        if isinstance(target, DevicesTarget):
            known = await store.run(store.known_devices, app.app_key, target.device_ids)
            unknown = [d for d in target.device_ids if d not in known]
            if unknown:
                shown = ", ".join(unknown[:5]) + (" …" if len(unknown) > 5 else "")
                raise NotFound(f"{len(unknown)} unknown device(s): {shown}", code="unknown_device")
            device_ids = list(target.device_ids)
        else:
            bound = await store.run(
                store.devices_for_aliases, app.app_key, target.alias_type, list(target.aliases)
            )
            if not bound:
                raise NotFound(
                    f"no device is bound to alias(es) {', '.join(target.aliases[:5])} of type {target.alias_type!r}",
                    code="unknown_alias",
                )
            device_ids = list(dict.fromkeys(d for a in target.aliases for d in bound.get(a, [])))
        if not production:
            test = await store.run(store.test_devices, app.app_key, device_ids)
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
        once the message is committed to the store."""
        target = parse_target(req.target)
        ttl = self._ttl(req.policy)
        body = self._body(req, await self._template(app, req), req.vars or {})
        production = req.policy.production
        if isinstance(target, FileTarget):
            await self._store.run(self._store.file_info, app.app_key, target.file_id)  # 404 before accepting
        device_ids: list[str] = []
        if not target.is_task:
            assert isinstance(target, DevicesTarget | AliasTarget)
            device_ids = await self._devices_now(app, target, production)
        now = self._clock.now()
        msg_id = ids.new_msg_id(now)
        payload = self._envelope(app, msg_id, body, now, ttl)
        task_id = "t" + msg_id if target.is_task else None
        fanout = "topic" if isinstance(target, BroadcastTarget) and production else "inbox"
        await self._commit(
            app, msg_id, target, req.target, payload, req.policy, ttl, now, device_ids, fanout, task_id
        )
        if task_id is not None:
            self._tasks.start(task_id)
            return {"task_id": task_id, "msg_id": msg_id}
        self._dispatcher.submit(Outbound(msg_id, app.app_key, payload, tuple(device_ids)))
        return {"msg_id": msg_id}

    async def push_batch(self, app: App, req: BatchRequest) -> list[str]:
        """One message per item, each rendered with the item's variables; all validated before any is stored."""
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
        msg_ids = []
        for target, raw_target, body, device_ids in prepared:
            now = self._clock.now()
            msg_id = ids.new_msg_id(now)
            payload = self._envelope(app, msg_id, body, now, ttl)
            await self._commit(
                app, msg_id, target, raw_target, payload, req.policy, ttl, now, device_ids, "inbox", None
            )
            self._dispatcher.submit(Outbound(msg_id, app.app_key, payload, tuple(device_ids)))
            msg_ids.append(msg_id)
        return msg_ids

    async def _commit(
        self,
        app: App,
        msg_id: str,
        target: Target,
        raw_target: dict[str, Any],
        payload: bytes,
        policy: Policy,
        ttl: int,
        now: float,
        device_ids: list[str],
        fanout: str,
        task_id: str | None,
    ) -> None:
        await self._store.run(
            self._store.accept_message,
            msg_id=msg_id,
            app_key=app.app_key,
            kind=target.kind,
            target=raw_target,
            envelope=payload,
            policy=policy.model_dump(exclude_none=True) | {"ttl": ttl},
            expires_at=now + ttl,
            device_ids=device_ids,
            fanout=fanout,
            task_id=task_id,
        )
