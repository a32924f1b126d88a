"""Store queries for targeting (issue 4): tags, aliases, audiences, files, tasks, templates, import."""

from __future__ import annotations

import json
from typing import Any

from mqttpush.errors import NotFound
from mqttpush.store.core import StoreCore


class TargetingQueries(StoreCore):
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
