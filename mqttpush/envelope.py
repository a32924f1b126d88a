"""The envelope a device receives (docs/protocol.md): built and size-checked here, no I/O."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from mqttpush.errors import InvalidContent, PayloadTooLarge

DEFAULT_MAX_BYTES = 4096
RICH_FIELDS = ("image", "url", "sound", "badge", "category")
UP_TYPE = "up"
"""A message pushed to a UnifiedPush / Web Push endpoint (docs/webpush.md)."""


@dataclass(frozen=True, slots=True)
class Envelope:
    id: str
    app: str
    type: str
    title: str | None
    body: str | None
    data: dict[str, Any]
    sent_at: float
    expires_at: float
    rich: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "app": self.app,
            "type": self.type,
            "title": self.title,
            "body": self.body,
            "data": self.data,
            "sent_at": self.sent_at,
            "expires_at": self.expires_at,
        }
        out.update(self.rich)
        return out

    def encode(self, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
        """UTF-8 JSON that every JSON parser reads (no NaN or Infinity, no lone surrogates);
        raises :class:`PayloadTooLarge` above ``max_bytes``, :class:`InvalidContent` for a value
        JSON cannot carry (``invalid_json_number``, ``invalid_unicode``)."""
        try:
            raw = json.dumps(
                self.to_dict(), ensure_ascii=False, allow_nan=False, separators=(",", ":")
            ).encode()
        except UnicodeEncodeError:
            raise InvalidContent(
                "the envelope holds a lone UTF-16 surrogate", code="invalid_unicode"
            ) from None
        except ValueError:
            raise InvalidContent(
                "the envelope holds NaN or Infinity, which JSON cannot carry", code="invalid_json_number"
            ) from None
        if len(raw) > max_bytes:
            raise PayloadTooLarge(
                f"envelope is {len(raw)} bytes, the limit is {max_bytes}", code="envelope_too_large"
            )
        return raw


def up_envelope(
    *,
    msg_id: str,
    app: str,
    endpoint_id: str,
    instance: str,
    payload: bytes,
    encoding: str | None,
    sent_at: float,
    expires_at: float,
) -> bytes:
    """The envelope of a message pushed to an endpoint: the sender's bytes unchanged, standard
    base64 in ``body``; ``endpoint_id`` and ``instance`` say which app on the device it is for,
    ``encoding`` is ``aes128gcm`` (RFC 8291: the device decrypts) or null (plain bytes).

    Its size is bounded by the pushed bytes' own limit, not by the envelope limit: 4096 bytes
    pushed make about 5.5 KB of base64."""
    doc: dict[str, Any] = {
        "id": msg_id,
        "app": app,
        "type": UP_TYPE,
        "title": None,
        "body": base64.b64encode(payload).decode("ascii"),
        "data": {},
        "sent_at": sent_at,
        "expires_at": expires_at,
        "endpoint_id": endpoint_id,
        "instance": instance,
        "encoding": encoding,
    }
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def decode(payload: bytes) -> dict[str, Any] | None:
    """Parse an envelope a device received; None for anything that is not one (e.g. an empty clear)."""
    if not payload:
        return None
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
        return None
    return obj
