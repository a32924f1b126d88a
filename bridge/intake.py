"""Accepting a push: validate, build the envelope, commit, then hand it to the dispatcher."""

from __future__ import annotations

from dataclasses import dataclass

from bridge.dispatcher import Dispatcher, Outbound
from bridge.targets import parse_target
from mqttpush import ids
from mqttpush.clock import Clock
from mqttpush.envelope import RICH_FIELDS, Envelope
from mqttpush.errors import InvalidContent, NotFound
from mqttpush.models import App, PushRequest
from mqttpush.store import Store

DEFAULT_TTL = 3 * 24 * 3600
MAX_TTL = 10 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Limits:
    max_envelope_bytes: int = 4096
    default_ttl: int = DEFAULT_TTL
    max_ttl: int = MAX_TTL


class Intake:
    def __init__(
        self, store: Store, dispatcher: Dispatcher, clock: Clock, limits: Limits | None = None
    ) -> None:
        self._store = store
        self._dispatcher = dispatcher
        self._clock = clock
        self.limits = limits or Limits()

    async def push(self, app: App, req: PushRequest) -> str:
        """Accept one push for ``app``; returns its msg_id once it is committed to the store."""
        target = parse_target(req.target)
        ttl = req.policy.ttl if req.policy.ttl is not None else self.limits.default_ttl
        if ttl > self.limits.max_ttl:
            raise InvalidContent(
                f"policy.ttl {ttl}s is above the maximum {self.limits.max_ttl}s", code="ttl_too_long"
            )
        kind = req.type or ("notification" if req.notification is not None else "message")
        if kind not in ("notification", "message"):
            raise InvalidContent("type must be 'notification' or 'message'", code="invalid_type")
        note = req.notification
        if kind == "notification" and (note is None or (note.title is None and note.body is None)):
            raise InvalidContent("a notification needs a title or a body", code="empty_notification")
        if kind == "message" and req.data is None and note is None:
            raise InvalidContent("a message needs data", code="empty_message")

        known = await self._store.run(self._store.known_devices, app.app_key, target.device_ids)
        unknown = [d for d in target.device_ids if d not in known]
        if unknown:
            shown = ", ".join(unknown[:5]) + (" …" if len(unknown) > 5 else "")
            raise NotFound(f"{len(unknown)} unknown device(s): {shown}", code="unknown_device")

        now = self._clock.now()
        msg_id = ids.new_msg_id(now)
        rich = {}
        if note is not None:
            rich = {f: getattr(note, f) for f in RICH_FIELDS if getattr(note, f) is not None}
        envelope = Envelope(
            id=msg_id,
            app=app.app_key,
            type=kind,
            title=note.title if note else None,
            body=note.body if note else None,
            data=req.data or {},
            sent_at=now,
            expires_at=now + ttl,
            rich=rich,
        )
        payload = envelope.encode(self.limits.max_envelope_bytes)
        policy = req.policy.model_dump(exclude_none=True) | {"ttl": ttl}
        await self._store.run(
            self._store.accept_message,
            msg_id=msg_id,
            app_key=app.app_key,
            kind=target.kind,
            target=req.target,
            envelope=payload,
            policy=policy,
            expires_at=now + ttl,
            device_ids=list(target.device_ids),
        )
        self._dispatcher.submit(Outbound(msg_id, app.app_key, payload, target.device_ids))
        return msg_id
