"""Store queries for targeting (issue 4): tags, aliases, audiences, files, tasks, templates, import."""

from __future__ import annotations

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
