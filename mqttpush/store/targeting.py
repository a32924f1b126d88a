"""Store queries for targeting (issue 4): tags, aliases, audiences, files, tasks, templates, import."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mqttpush import ids
from mqttpush.errors import InvalidContent, NotFound
from mqttpush.store.core import StoreCore, chunks

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


class TargetingQueries(StoreCore):
    # --- devices: attributes, tags, aliases -----------------------------------------------------

    def _device_app(self, device_id: str) -> str:
        row = self._conn.execute("SELECT app_key FROM devices WHERE device_id = ?", (device_id,)).fetchone()
        if row is None:
            raise NotFound(f"no device {device_id!r}", code="unknown_device")
        return str(row[0])

    def device_doc(self, app_key: str, device_id: str) -> dict[str, Any]:
        """A device as the API shows it: attributes, tags, aliases, presence."""
        row = self._conn.execute(
            "SELECT device_id, install_id, platform, app_version, channel, locale, is_test, online, last_seen,"
            " created_at, timezone FROM devices WHERE device_id = ? AND app_key = ?",
            (device_id, app_key),
        ).fetchone()
        if row is None:
            raise NotFound(f"no device {device_id!r} in this app", code="unknown_device")
        keys = (
            "device_id",
            "install_id",
            "platform",
            "app_version",
            "channel",
            "locale",
            "test",
            "online",
            "last_seen",
            "created_at",
            "timezone",
        )
        doc = dict(zip(keys, row, strict=True))
        doc["test"], doc["online"] = bool(doc["test"]), bool(doc["online"])
        doc["tags"] = self.tags_of(device_id)
        doc["aliases"] = [
            {"alias": a, "alias_type": t}
            for t, a in self._conn.execute(
                "SELECT alias_type, alias FROM aliases WHERE device_id = ? ORDER BY alias_type, alias",
                (device_id,),
            )
        ]
        return doc

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
        from mqttpush.store.store import hash_token

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
                broker_hash = self.broker_hasher(token) if self.broker_hasher else None
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

    # --- messages -------------------------------------------------------------------------------

    def publish_all(self, msg_id: str) -> int:
        """After the one broadcast publish: every ``accepted`` delivery of the message is ``published``."""
        now = self.clock.now()
        with self._tx():
            accepted = self._conn.execute(
                "SELECT device_id FROM deliveries WHERE msg_id = ? AND state = 'accepted'", (msg_id,)
            ).fetchall()
            self._events([(msg_id, r[0], "published", now, None) for r in accepted])
            cur = self._conn.execute(
                "UPDATE deliveries SET state = 'published', updated_at = ? WHERE msg_id = ? AND state = 'accepted'",
                (now, msg_id),
            )
        return cur.rowcount

    # --- templates --------------------------------------------------------------------------------

    def put_template(self, app_key: str, name: str, template: dict[str, Any]) -> bool:
        """Create or replace a template; True if it is new."""
        now = self.clock.now()
        with self._tx():
            exists = self._conn.execute(
                "SELECT 1 FROM templates WHERE app_key = ? AND name = ?", (app_key, name)
            ).fetchone()
            self._conn.execute(
                "INSERT INTO templates (app_key, name, template, created_at, updated_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (app_key, name) DO UPDATE SET template = excluded.template,"
                " updated_at = excluded.updated_at",
                (app_key, name, json.dumps(template), now, now),
            )
        return exists is None

    def get_template(self, app_key: str, name: str) -> dict[str, Any]:
        row = self._conn.execute(
            "SELECT template FROM templates WHERE app_key = ? AND name = ?", (app_key, name)
        ).fetchone()
        if row is None:
            raise NotFound(f"no template {name!r} in this app", code="unknown_template")
        result: dict[str, Any] = json.loads(row[0])
        return result

    def list_templates(self, app_key: str) -> list[dict[str, Any]]:
        return [
            {"name": r[0], **json.loads(r[1]), "updated_at": r[2]}
            for r in self._conn.execute(
                "SELECT name, template, updated_at FROM templates WHERE app_key = ? ORDER BY name", (app_key,)
            )
        ]
