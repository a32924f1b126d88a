"""Push targets (docs/targeting.md): parsed, checked and matched without I/O.

| target JSON                                   | kind      | answer     |
|-----------------------------------------------|-----------|------------|
| ``{"devices": [id, ...]}`` (≤ 1000)           | devices   | ``msg_id`` |
| ``{"alias": A or [A, ...], "alias_type": T}`` | alias     | ``msg_id`` |
| ``{"tags": EXPR}``                            | tags      | ``task_id``|
| ``{"filter": {...}}`` (+ optional ``tags``)   | filter    | ``task_id``|
| ``{"file_id": F}``                            | file      | ``task_id``|
| ``{"broadcast": true}``                       | broadcast | ``task_id``|
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bridge import tagexpr
from mqttpush import ids
from mqttpush.errors import InvalidContent

MAX_LIST = 1000
TAG_RE = re.compile(r"[^\x00-\x1f\x7f]{1,64}")
ALIAS_RE = re.compile(r"[^\x00-\x1f\x7f]{1,128}")
ALIAS_TYPE_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}")


@dataclass(frozen=True, slots=True)
class DevicesTarget:
    """A device or a list of devices (unicast / listcast)."""

    device_ids: tuple[str, ...]
    kind = "devices"
    is_task = False


@dataclass(frozen=True, slots=True)
class AliasTarget:
    """Every device bound to one of the aliases (customizedcast)."""

    alias_type: str
    aliases: tuple[str, ...]
    kind = "alias"
    is_task = False


@dataclass(frozen=True, slots=True)
class Filter:
    """Device attributes a groupcast selects on; None means "any"."""

    platforms: frozenset[str] | None = None
    versions: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    channels: frozenset[str] | None = None
    locales: tuple[str, ...] | None = None
    last_seen_within: float | None = None
    test: bool | None = None
    online: bool | None = None


@dataclass(frozen=True, slots=True)
class AudienceTarget:
    """Devices matching a tag expression and/or a filter (groupcast)."""

    tags: tagexpr.Expr | None
    filter: Filter

    @property
    def kind(self) -> str:
        return "tags" if self.filter == Filter() else "filter"

    is_task = True


@dataclass(frozen=True, slots=True)
class FileTarget:
    """Devices (or aliases) listed in an uploaded file (filecast)."""

    file_id: str
    kind = "file"
    is_task = True


@dataclass(frozen=True, slots=True)
class BroadcastTarget:
    """Every device of the app, through the app's broadcast topic."""

    kind = "broadcast"
    is_task = True


Target = DevicesTarget | AliasTarget | AudienceTarget | FileTarget | BroadcastTarget

_SHAPES = "devices, alias (+ alias_type), tags, filter (+ tags), file_id, broadcast"


def _bad(message: str, code: str = "invalid_target") -> InvalidContent:
    return InvalidContent(message, code=code)


def _id_list(value: Any, what: str, pattern: re.Pattern[str] | None = None) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise _bad(f"target.{what} must not be empty")
    if len(items) > MAX_LIST:
        raise _bad(
            f"target.{what} has {len(items)} entries, at most {MAX_LIST} per request", "too_many_targets"
        )
    for item in items:
        valid = isinstance(item, str) and (
            ids.is_valid_id(item) if pattern is None else pattern.fullmatch(item)
        )
        if not valid:
            raise _bad(f"not a valid {what} entry: {item!r}")
    return tuple(dict.fromkeys(items))


def parse_target(obj: dict[str, Any]) -> Target:
    """Parse the ``target`` object of a push request; raises :class:`InvalidContent`."""
    keys = set(obj)
    if keys == {"devices"}:
        if not isinstance(obj["devices"], list):
            raise _bad("target.devices must be a list of device ids")
        return DevicesTarget(_id_list(obj["devices"], "devices"))
    if keys in ({"alias"}, {"alias", "alias_type"}):
        alias_type = obj.get("alias_type", "user")
        if not isinstance(alias_type, str) or not ALIAS_TYPE_RE.fullmatch(alias_type):
            raise _bad("target.alias_type must be 1-32 of A-Z a-z 0-9 _ . -")
        return AliasTarget(alias_type, _id_list(obj["alias"], "alias", ALIAS_RE))
    if keys in ({"tags"}, {"filter"}, {"filter", "tags"}):
        tags = tagexpr.parse(obj["tags"]) if "tags" in obj else None
        return AudienceTarget(tags, parse_filter(obj.get("filter", {})))
    if keys == {"file_id"}:
        if not isinstance(obj["file_id"], str) or not ids.is_valid_id(obj["file_id"]):
            raise _bad("target.file_id must be an id from POST /api/v1/files")
        return FileTarget(obj["file_id"])
    if keys == {"broadcast"}:
        if obj["broadcast"] is not True:
            raise _bad("target.broadcast must be true")
        return BroadcastTarget()
    raise _bad(f"target needs exactly one of: {_SHAPES}; got {sorted(keys) or 'nothing'}")


# --- filters ----------------------------------------------------------------------------------------

_VERSION_OPS = (">=", "<=", "!=", "==", ">", "<", "=")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_FILTER_KEYS = ("platform", "app_version", "channel", "locale", "last_seen_within", "test", "online")


def version_key(version: str) -> tuple[Any, ...]:
    """Order versions as people mean them: ``1.10 > 1.9``, ``2.0 == 2.0.0``, ``2.0.0-beta < 2.0.0``."""
    main, _, pre = version.strip().partition("-")
    parts: list[Any] = []
    for piece in re.split(r"[.+]", main):
        parts.append((0, int(piece), "") if piece.isdigit() else (1, 0, piece))
    while parts and parts[-1] == (0, 0, ""):
        parts.pop()
    return (tuple(parts), 0 if pre else 1, pre)


def _strings(value: Any, key: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v for v in items):
        raise _bad(f"filter.{key} must be a string or a list of strings", "bad_filter")
    return items


def parse_duration(value: Any, key: str = "last_seen_within") -> float:
    """Seconds from ``3600``, ``"90m"``, ``"12h"``, ``"7d"``, ``"2w"``."""
    if isinstance(value, bool):
        raise _bad(f"filter.{key} must be seconds or a duration like '7d'", "bad_filter")
    if isinstance(value, int | float) and value > 0:
        return float(value)
    match = _DURATION.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None or float(match.group(1)) <= 0:
        raise _bad(f"filter.{key} must be seconds or a duration like '7d'", "bad_filter")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_version_constraint(text: str) -> tuple[str, tuple[Any, ...]]:
    for op in _VERSION_OPS:
        if text.startswith(op):
            rest = text[len(op) :].strip()
            if rest and re.fullmatch(r"[0-9A-Za-z.+-]{1,64}", rest):
                return ("==" if op == "=" else op, version_key(rest))
    if re.fullmatch(r"[0-9A-Za-z.+-]{1,64}", text):
        return ("==", version_key(text))
    raise _bad(f"filter.app_version: {text!r} is not like '>=2.1.0'", "bad_filter")


def parse_filter(obj: Any) -> Filter:
    """Parse ``{"platform", "app_version", "channel", "locale", "last_seen_within", "test", "online"}``."""
    if not isinstance(obj, dict):
        raise _bad("target.filter must be an object", "bad_filter")
    unknown = sorted(set(obj) - set(_FILTER_KEYS))
    if unknown:
        raise _bad(f"unknown filter key {unknown[0]!r}; known: {', '.join(_FILTER_KEYS)}", "bad_filter")
    platforms = frozenset(_strings(obj["platform"], "platform")) if "platform" in obj else None
    versions = (
        tuple(parse_version_constraint(v) for v in _strings(obj["app_version"], "app_version"))
        if "app_version" in obj
        else ()
    )
    channels = frozenset(_strings(obj["channel"], "channel")) if "channel" in obj else None
    locales = tuple(v.lower() for v in _strings(obj["locale"], "locale")) if "locale" in obj else None
    within = parse_duration(obj["last_seen_within"]) if "last_seen_within" in obj else None
    flags = {}
    for key in ("test", "online"):
        if key in obj:
            if not isinstance(obj[key], bool):
                raise _bad(f"filter.{key} must be true or false", "bad_filter")
            flags[key] = obj[key]
    return Filter(platforms, versions, channels, locales, within, flags.get("test"), flags.get("online"))


_FLAG_RE = re.compile(r"^\s*([a-z_]+)\s*(>=|<=|!=|==|=|>|<)\s*(.+?)\s*$")
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def parse_filter_flags(items: Iterable[str]) -> dict[str, Any]:
    """The ``KEY=VALUE`` mini-language of ``mqttpush push --filter`` → a target ``filter`` object.

    ``platform=android,ios`` (a comma means any of), ``app_version>=2.1`` (any of ``= == != > >= < <=``;
    repeatable, all must hold), ``test=true``, ``online=no``, ``last_seen_within=7d``. Only the syntax
    is checked here; :func:`parse_filter` checks keys and values. Raises :class:`InvalidContent`
    (``bad_filter``).
    """
    out: dict[str, Any] = {}
    for item in items:
        m = _FLAG_RE.match(item)
        if m is None:
            raise _bad(f"{item!r} is not KEY=VALUE (or app_version>=X)", "bad_filter")
        key, op, value = m.groups()
        if key == "app_version":
            out.setdefault("app_version", []).append(("" if op == "=" else op) + value)
        elif op != "=":
            raise _bad(f"only app_version takes {op}", "bad_filter")
        elif key in ("test", "online"):
            if value.lower() not in _TRUE + _FALSE:
                raise _bad(f"{key} must be true or false", "bad_filter")
            out[key] = value.lower() in _TRUE
        elif key == "last_seen_within":
            out[key] = value
        else:
            out[key] = value.split(",") if "," in value else value
    return out


_COMPARE = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}


def filter_matches(
    f: Filter,
    *,
    platform: str,
    app_version: str | None,
    channel: str | None,
    locale: str | None,
    last_seen: float | None,
    is_test: bool,
    online: bool,
    now: float,
) -> bool:
    """Does one device (its attributes) pass the filter? A device without a version never passes a version test."""
    if f.platforms is not None and platform not in f.platforms:
        return False
    if f.versions:
        if not app_version:
            return False
        key = version_key(app_version)
        if not all(_COMPARE[op](key, want) for op, want in f.versions):
            return False
    if f.channels is not None and channel not in f.channels:
        return False
    if f.locales is not None:
        loc = (locale or "").lower()
        if not any(loc == p or loc.startswith(p + "-") for p in f.locales):
            return False
    if f.last_seen_within is not None and (last_seen is None or now - last_seen > f.last_seen_within):
        return False
    if f.test is not None and is_test != f.test:
        return False
    return f.online is None or online == f.online
