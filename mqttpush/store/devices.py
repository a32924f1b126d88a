"""Devices: registration and authentication, presence, attributes, tags and aliases, the
audiences group sends walk, a fleet imported at once, and each device's vendor tokens and the
routing facts the dispatcher decides on."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mqttpush import ids
from mqttpush.errors import InvalidContent, NotFound
from mqttpush.models import Device, Registration
from mqttpush.store.core import Repository, chunks
from mqttpush.store.vendors import mask_token, vendor_token_hash

MAX_TAGS_PER_DEVICE = 100
MAX_ALIASES_PER_DEVICE = 10


@dataclass(frozen=True, slots=True)
class AudienceRow:
    """What audience filters look at, for one device."""

    device_id: str
    platform: str
    app_version: str | None
    channel: str | None
    locale: str | None
    last_seen: float | None
    is_test: bool
    online: bool


# Registering a token again revives it if a vendor had declared it dead.
_ADD_TOKEN = (
    "INSERT INTO vendor_tokens (device_id, vendor, token_hash, token_enc, updated_at) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (device_id, vendor, token_hash) DO UPDATE SET updated_at = excluded.updated_at,"
    " removed_at = NULL, removed_reason = NULL"
)


def hash_token(salt: bytes, token: str) -> bytes:
    # Tokens are 256-bit random values, so a salted SHA-256 is enough (nothing to brute-force)
    # and keeps CONNECT cheap when thousands of devices reconnect at once.
    return hashlib.sha256(salt + token.encode()).digest()


@dataclass(frozen=True, slots=True)
class DeviceAlias:
    alias: str
    alias_type: str


@dataclass(frozen=True, slots=True)
class DeviceDetail:
    """A device as the API shows it: attributes, tags, aliases, presence."""

    device_id: str
    install_id: str
    platform: str
    app_version: str | None
    channel: str | None
    locale: str | None
    test: bool
    online: bool
    last_seen: float | None
    created_at: float
    timezone: str | None
    tags: tuple[str, ...]
    aliases: tuple[DeviceAlias, ...]
    """By alias type, then alias."""


@dataclass(frozen=True, slots=True)
class VendorToken:
    """A live vendor token of a device (what forwards use)."""

    vendor: str
    token: str
    updated_at: float


@dataclass(frozen=True, slots=True)
class MaskedVendorToken:
    """A vendor token as ``device show`` tells it: masked, when added and last used, and when and
    why a vendor declared it dead."""

    vendor: str
    token: str
    """``…`` and the last 6 characters (:func:`~mqttpush.store.vendors.mask_token`)."""
    added_at: float
    last_used_at: float | None
    removed_at: float | None
    removed_reason: str | None


@dataclass(frozen=True, slots=True)
class DeviceRouting:
    """One device's routing facts (what ``bridge.router.route`` decides on)."""

    device_id: str
    platform: str
    channel: str | None
    online: bool
    last_seen: float | None
    tokens: tuple[tuple[str, str], ...]  # (vendor, token), newest first


class DeviceRepository(Repository):
    """``store.devices``: everything the store keeps of a device and asks of many devices at once."""

    # --- registration, authentication, presence -------------------------------------------------

    def register_device(
        self,
        app_key: str,
        install_id: str,
        platform: str,
        app_version: str | None = None,
        locale: str | None = None,
        channel: str | None = None,
        timezone: str | None = None,
    ) -> Registration:
        """Register (or re-register) the device of one install; re-registering keeps the id, rotates the token."""
        now = self.clock.now()
        with self._tx():
            row = self._conn.execute(
                "SELECT device_id FROM devices WHERE app_key = ? AND install_id = ?", (app_key, install_id)
            ).fetchone()
            device_id = row[0] if row else ids.new_device_id()
            token = f"{device_id}.{ids.new_secret()}"
            salt = secrets.token_bytes(16)
            broker_hash = self._store.broker_hasher(token) if self._store.broker_hasher else None
            if row is None:
                self._conn.execute(
                    "INSERT INTO devices (device_id, app_key, install_id, platform, app_version, locale, channel,"
                    " token_salt, token_hash, broker_hash, created_at, updated_at, timezone)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        device_id,
                        app_key,
                        install_id,
                        platform,
                        app_version,
                        locale,
                        channel,
                        salt,
                        hash_token(salt, token),
                        broker_hash,
                        now,
                        now,
                        timezone,
                    ),
                )
            else:
                self._conn.execute(
                    "UPDATE devices SET platform = ?, app_version = coalesce(?, app_version),"
                    " locale = coalesce(?, locale), channel = coalesce(?, channel), token_salt = ?,"
                    " token_hash = ?, broker_hash = ?, updated_at = ?, timezone = coalesce(?, timezone) WHERE device_id = ?",
                    (
                        platform,
                        app_version,
                        locale,
                        channel,
                        salt,
                        hash_token(salt, token),
                        broker_hash,
                        now,
                        timezone,
                        device_id,
                    ),
                )
        return Registration(device_id=device_id, device_token=token, created=row is None)

    def authenticate_device(self, device_id: str, token: str) -> str | None:
        """The device's app key if ``token`` is its current token, else None."""
        row = self._conn.execute(
            "SELECT app_key, token_salt, token_hash FROM devices WHERE device_id = ?", (device_id,)
        ).fetchone()
        if row is None or not hmac.compare_digest(hash_token(row[1], token), row[2]):
            return None
        return str(row[0])

    def get_device(self, device_id: str) -> Device | None:
        row = self._conn.execute(
            "SELECT device_id, app_key, install_id, platform, app_version, locale, online, last_seen, created_at"
            " FROM devices WHERE device_id = ?",
            (device_id,),
        ).fetchone()
        if row is None:
            return None
        return Device(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]), row[7], row[8])

    def list_devices(self, app_key: str, limit: int = 1000) -> list[Device]:
        rows = self._conn.execute(
            "SELECT device_id, app_key, install_id, platform, app_version, locale, online, last_seen, created_at"
            " FROM devices WHERE app_key = ? ORDER BY created_at LIMIT ?",
            (app_key, limit),
        )
        return [Device(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), r[7], r[8]) for r in rows]

    def require_known(self, app_key: str, device_ids: list[str]) -> None:
        """Raise :class:`NotFound` (``unknown_device``) unless every id is a device of ``app_key``."""
        known = self.known_devices(app_key, device_ids)
        unknown = [d for d in device_ids if d not in known]
        if unknown:
            shown = ", ".join(unknown[:5]) + (" …" if len(unknown) > 5 else "")
            raise NotFound(f"{len(unknown)} unknown device(s): {shown}", code="unknown_device")

    def known_devices(self, app_key: str, device_ids: Iterable[str]) -> set[str]:
        """The subset of ``device_ids`` registered to ``app_key``."""
        wanted = list(dict.fromkeys(device_ids))
        found: set[str] = set()
        for chunk, marks in chunks(wanted):
            rows = self._conn.execute(
                f"SELECT device_id FROM devices WHERE app_key = ? AND device_id IN ({marks})",
                (app_key, *chunk),
            )
            found.update(r[0] for r in rows)
        return found

    def set_presence(self, device_id: str, online: bool) -> None:
        self._conn.execute(
            "UPDATE devices SET online = ?, last_seen = ? WHERE device_id = ?",
            (int(online), self.clock.now(), device_id),
        )

    def reset_presence(self) -> None:
        """At start nobody is connected yet, whatever the last run left behind."""
        self._conn.execute("UPDATE devices SET online = 0 WHERE online = 1")

    # --- attributes, tags, aliases, audiences ----------------------------------------------------

    def _device_app(self, device_id: str) -> str:
        row = self._conn.execute("SELECT app_key FROM devices WHERE device_id = ?", (device_id,)).fetchone()
        if row is None:
            raise NotFound(f"no device {device_id!r}", code="unknown_device")
        return str(row[0])

    def device_doc(self, app_key: str, device_id: str) -> DeviceDetail:
        """A device of ``app_key`` with its tags and aliases (:class:`NotFound` for another app's)."""
        row = self._conn.execute(
            "SELECT device_id, install_id, platform, app_version, channel, locale, is_test, online, last_seen,"
            " created_at, timezone FROM devices WHERE device_id = ? AND app_key = ?",
            (device_id, app_key),
        ).fetchone()
        if row is None:
            raise NotFound(f"no device {device_id!r} in this app", code="unknown_device")
        aliases = self._conn.execute(
            "SELECT alias, alias_type FROM aliases WHERE device_id = ? ORDER BY alias_type, alias",
            (device_id,),
        )
        return DeviceDetail(
            device_id=row[0],
            install_id=row[1],
            platform=row[2],
            app_version=row[3],
            channel=row[4],
            locale=row[5],
            test=bool(row[6]),
            online=bool(row[7]),
            last_seen=row[8],
            created_at=row[9],
            timezone=row[10],
            tags=tuple(self.tags_of(device_id)),
            aliases=tuple(DeviceAlias(a, t) for a, t in aliases),
        )

    def update_device(self, app_key: str, device_id: str, **attrs: Any) -> None:
        """Set attributes (``test``, ``app_version``, ``channel``, ``locale``) of a device of ``app_key``."""
        columns = {
            "test": "is_test",
            "app_version": "app_version",
            "channel": "channel",
            "locale": "locale",
            "timezone": "timezone",
        }
        sets = [(columns[k], int(v) if k == "test" else v) for k, v in attrs.items() if k in columns]
        if not sets:
            return
        assignments = ", ".join(f"{c} = ?" for c, _ in sets)
        cur = self._conn.execute(
            f"UPDATE devices SET {assignments}, updated_at = ? WHERE device_id = ? AND app_key = ?",
            (*(v for _, v in sets), self.clock.now(), device_id, app_key),
        )
        if cur.rowcount == 0:
            raise NotFound(f"no device {device_id!r} in this app", code="unknown_device")

    def tags_of(self, device_id: str) -> list[str]:
        return [
            r[0]
            for r in self._conn.execute(
                "SELECT tag FROM device_tags WHERE device_id = ? ORDER BY tag", (device_id,)
            )
        ]

    def update_tags(
        self,
        app_key: str,
        device_id: str,
        add: Iterable[str],
        remove: Iterable[str],
        limit: int = MAX_TAGS_PER_DEVICE,
    ) -> list[str]:
        """Add and remove tags of one device (atomically); returns its tags after the change."""
        now = self.clock.now()
        with self._tx():
            if self._device_app(device_id) != app_key:
                raise NotFound(f"no device {device_id!r} in this app", code="unknown_device")
            self._conn.executemany(
                "DELETE FROM device_tags WHERE device_id = ? AND tag = ?", [(device_id, t) for t in remove]
            )
            self._conn.executemany(
                "INSERT INTO device_tags (device_id, tag, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                [(device_id, t, now) for t in add],
            )
            count = self._conn.execute(
                "SELECT count(*) FROM device_tags WHERE device_id = ?", (device_id,)
            ).fetchone()
            if count[0] > limit:
                raise InvalidContent(
                    f"a device has at most {limit} tags ({count[0]} asked)", code="too_many_tags"
                )
        return self.tags_of(device_id)

    def tags_for(self, device_ids: list[str]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {d: set() for d in device_ids}
        for chunk, marks in chunks(device_ids):
            for device_id, tag in self._conn.execute(
                f"SELECT device_id, tag FROM device_tags WHERE device_id IN ({marks})", chunk
            ):
                out[device_id].add(tag)
        return out

    def bind_alias(self, app_key: str, device_id: str, alias_type: str, alias: str, *, replace: bool) -> None:
        """Bind ``alias`` to a device. ``replace`` (set): the alias then means this device only, and the
        device has no other alias of this type. Otherwise (add): one more device for the alias."""
        now = self.clock.now()
        with self._tx():
            if self._device_app(device_id) != app_key:
                raise NotFound(f"no device {device_id!r} in this app", code="unknown_device")
            if replace:
                self._conn.execute(
                    "DELETE FROM aliases WHERE app_key = ? AND alias_type = ? AND (alias = ? OR device_id = ?)",
                    (app_key, alias_type, alias, device_id),
                )
            self._conn.execute(
                "INSERT INTO aliases (app_key, alias_type, alias, device_id, created_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (app_key, alias_type, alias, device_id, now),
            )
            count = self._conn.execute(
                "SELECT count(*) FROM aliases WHERE device_id = ?", (device_id,)
            ).fetchone()
            if count[0] > MAX_ALIASES_PER_DEVICE:
                raise InvalidContent(
                    f"a device has at most {MAX_ALIASES_PER_DEVICE} aliases", code="too_many_aliases"
                )

    def unbind_alias(self, app_key: str, device_id: str, alias_type: str, alias: str) -> bool:
        cur = self._conn.execute(
            "DELETE FROM aliases WHERE app_key = ? AND alias_type = ? AND alias = ? AND device_id = ?",
            (app_key, alias_type, alias, device_id),
        )
        return cur.rowcount > 0

    def devices_for_aliases(self, app_key: str, alias_type: str, aliases: list[str]) -> dict[str, list[str]]:
        """alias → its device ids (aliases bound to no device are absent)."""
        out: dict[str, list[str]] = {}
        for chunk, marks in chunks(aliases):
            for alias, device_id in self._conn.execute(
                f"SELECT alias, device_id FROM aliases WHERE app_key = ? AND alias_type = ? AND alias IN ({marks})"
                " ORDER BY alias, device_id",
                (app_key, alias_type, *chunk),
            ):
                out.setdefault(alias, []).append(device_id)
        return out

    def test_devices(self, app_key: str, device_ids: list[str]) -> set[str]:
        found: set[str] = set()
        for chunk, marks in chunks(device_ids):
            found.update(
                r[0]
                for r in self._conn.execute(
                    f"SELECT device_id FROM devices WHERE app_key = ? AND is_test = 1 AND device_id IN ({marks})",
                    (app_key, *chunk),
                )
            )
        return found

    def audience_batch(
        self,
        app_key: str,
        after: str,
        limit: int,
        *,
        platforms: list[str] | None = None,
        test_only: bool = False,
    ) -> list[AudienceRow]:
        """The next ``limit`` devices of an app after device id ``after`` (keyset pagination)."""
        where = ["app_key = ?", "device_id > ?"]
        args: list[Any] = [app_key, after]
        if platforms:
            where.append(f"platform IN ({','.join('?' * len(platforms))})")
            args += platforms
        if test_only:
            where.append("is_test = 1")
        rows = self._conn.execute(
            "SELECT device_id, platform, app_version, channel, locale, last_seen, is_test, online FROM devices"
            f" WHERE {' AND '.join(where)} ORDER BY device_id LIMIT ?",
            (*args, limit),
        )
        return [AudienceRow(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), bool(r[7])) for r in rows]

    def import_devices(self, app_key: str, rows: list[dict[str, Any]]) -> list[dict[str, str]]:
        """Register many devices at once (one transaction): a fleet migrating in, or a benchmark.

        Set-based: one query finds the install ids already known, then each table gets one
        ``executemany`` (on PostgreSQL a statement per device was a network round trip each)."""
        now = self.clock.now()
        out = []
        known: dict[str, str] = {}
        with self._tx():
            install_ids = list(dict.fromkeys(str(row["install_id"]) for row in rows))
            for chunk, marks in chunks(install_ids):
                known.update(
                    self._conn.execute(
                        f"SELECT install_id, device_id FROM devices WHERE app_key = ? AND install_id IN ({marks})",
                        (app_key, *chunk),
                    ).fetchall()
                )
            inserts: list[tuple[Any, ...]] = []
            updates: list[tuple[Any, ...]] = []
            tags: list[tuple[Any, ...]] = []
            aliases: list[tuple[Any, ...]] = []
            for row in rows:
                install_id = row["install_id"]
                existing = known.get(install_id)
                device_id = existing or ids.new_device_id()
                token = f"{device_id}.{ids.new_secret()}"
                salt = secrets.token_bytes(16)
                broker_hash = self._store.broker_hasher(token) if self._store.broker_hasher else None
                values = (
                    row["platform"],
                    row.get("app_version"),
                    row.get("locale"),
                    row.get("channel"),
                    int(bool(row.get("test", False))),
                    salt,
                    hash_token(salt, token),
                    broker_hash,
                )
                if existing:  # known before, or earlier in these rows: the last line wins
                    updates.append((*values, now, device_id))
                else:
                    known[install_id] = device_id
                    inserts.append((*values, device_id, app_key, install_id, now, now))
                tags += [(device_id, t, now) for t in row.get("tags") or []]
                if row.get("alias"):
                    aliases.append((app_key, row.get("alias_type") or "user", row["alias"], device_id, now))
                out.append({"install_id": install_id, "device_id": device_id, "device_token": token})
            self._conn.executemany(
                "INSERT INTO devices (platform, app_version, locale, channel, is_test, token_salt, token_hash,"
                " broker_hash, device_id, app_key, install_id, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                inserts,
            )
            self._conn.executemany(
                "UPDATE devices SET platform = ?, app_version = ?, locale = ?, channel = ?, is_test = ?,"
                " token_salt = ?, token_hash = ?, broker_hash = ?, updated_at = ? WHERE device_id = ?",
                updates,
            )
            self._conn.executemany(
                "INSERT INTO device_tags (device_id, tag, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                tags,
            )
            self._conn.executemany(
                "INSERT INTO aliases (app_key, alias_type, alias, device_id, created_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                aliases,
            )
        return out

    def device_zones(self, device_ids: list[str]) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for chunk, marks in chunks(device_ids):
            out.update(
                {
                    r[0]: r[1]
                    for r in self._conn.execute(
                        f"SELECT device_id, timezone FROM devices WHERE device_id IN ({marks})", chunk
                    )
                }
            )
        return out

    # --- vendor tokens and routing facts ---------------------------------------------------------

    def set_vendor_token(self, app_key: str, device_id: str, vendor: str, token: str) -> None:
        row = self._conn.execute("SELECT app_key FROM devices WHERE device_id = ?", (device_id,)).fetchone()
        if row is None or row[0] != app_key:
            raise NotFound(f"no device {device_id!r} in this app", code="unknown_device")
        self._conn.execute(_ADD_TOKEN, self._token_row(device_id, vendor, token, self.clock.now()))

    def set_vendor_tokens(self, rows: list[tuple[str, str, str]]) -> None:
        """Many ``(device_id, vendor, token)`` at once (a fleet migrating in, benchmarks)."""
        now = self.clock.now()
        with self._tx():
            self._conn.executemany(_ADD_TOKEN, [self._token_row(d, v, t, now) for d, v, t in rows])

    def _token_row(
        self, device_id: str, vendor: str, token: str, now: float
    ) -> tuple[str, str, str, bytes, float]:
        return (device_id, vendor, vendor_token_hash(token), self._seal(token), now)

    def remove_vendor_token(self, device_id: str, vendor: str, token: str | None = None) -> int:
        if token is None:
            cur = self._conn.execute(
                "DELETE FROM vendor_tokens WHERE device_id = ? AND vendor = ?", (device_id, vendor)
            )
        else:
            cur = self._conn.execute(
                "DELETE FROM vendor_tokens WHERE device_id = ? AND vendor = ? AND token_hash = ?",
                (device_id, vendor, vendor_token_hash(token)),
            )
        return cur.rowcount

    def vendor_tokens(self, device_id: str) -> list[VendorToken]:
        """A device's live tokens (the ones forwards use), newest first."""
        return [
            VendorToken(r[0], self._unseal(r[1]), r[2])
            for r in self._conn.execute(
                "SELECT vendor, token_enc, updated_at FROM vendor_tokens"
                " WHERE device_id = ? AND removed_at IS NULL ORDER BY updated_at DESC",
                (device_id,),
            )
        ]

    def masked_vendor_tokens(self, device_id: str) -> list[MaskedVendorToken]:
        """A device's tokens, masked, as ``device show`` tells them: live ones first, then newest first."""
        rows = self._conn.execute(
            "SELECT vendor, token_enc, updated_at, last_used_at, removed_at, removed_reason FROM vendor_tokens"
            " WHERE device_id = ? ORDER BY removed_at IS NOT NULL, updated_at DESC",
            (device_id,),
        )
        return [
            MaskedVendorToken(r[0], mask_token(r[0], self._unseal(r[1])), r[2], r[3], r[4], r[5])
            for r in rows
        ]

    def route_facts(self, device_ids: list[str]) -> dict[str, DeviceRouting]:
        out: dict[str, DeviceRouting] = {}
        tokens: dict[str, list[tuple[str, str]]] = {}
        for chunk, marks in chunks(device_ids):
            for device_id, vendor, sealed in self._conn.execute(
                "SELECT device_id, vendor, token_enc FROM vendor_tokens"
                f" WHERE removed_at IS NULL AND device_id IN ({marks}) ORDER BY updated_at DESC",
                chunk,
            ):
                tokens.setdefault(device_id, []).append((vendor, self._unseal(sealed)))
            for device_id, platform, channel, online, last_seen in self._conn.execute(
                f"SELECT device_id, platform, channel, online, last_seen FROM devices WHERE device_id IN ({marks})",
                chunk,
            ):
                out[device_id] = DeviceRouting(
                    device_id, platform, channel, bool(online), last_seen, tuple(tokens.get(device_id, ()))
                )
        return out
