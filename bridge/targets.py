"""Push targets (DESIGN §4): parsed and checked without I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mqttpush import ids
from mqttpush.errors import InvalidContent

MAX_LIST = 1000
_LATER = ("alias", "tags", "filter", "file_id", "broadcast")


@dataclass(frozen=True, slots=True)
class DevicesTarget:
    """A device or a list of devices (unicast / listcast)."""

    device_ids: tuple[str, ...]

    kind = "devices"


Target = DevicesTarget


def parse_target(obj: dict[str, Any]) -> Target:
    """Parse the ``target`` object of a push request; raises :class:`InvalidContent`."""
    if len(obj) != 1:
        raise InvalidContent(
            "target needs exactly one of: devices, " + ", ".join(_LATER), code="invalid_target"
        )
    ((kind, value),) = obj.items()
    if kind == "devices":
        if not isinstance(value, list) or not value:
            raise InvalidContent(
                "target.devices must be a non-empty list of device ids", code="invalid_target"
            )
        if len(value) > MAX_LIST:
            raise InvalidContent(
                f"target.devices has {len(value)} ids, at most {MAX_LIST} per request",
                code="too_many_targets",
            )
        bad = [v for v in value if not isinstance(v, str) or not ids.is_valid_id(v)]
        if bad:
            raise InvalidContent(f"not a device id: {bad[0]!r}", code="invalid_target")
        return DevicesTarget(tuple(dict.fromkeys(value)))
    if kind in _LATER:
        raise InvalidContent(
            f"target kind {kind!r} is not supported by this server yet", code="unsupported_target"
        )
    raise InvalidContent(f"unknown target kind {kind!r}", code="invalid_target")
