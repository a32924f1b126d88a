"""Apps: their keys and sealed secrets (rotated with an overlap), request nonces, settings and
message templates."""

from __future__ import annotations

import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any

from mqttpush import ids
from mqttpush.errors import NotFound
from mqttpush.models import App
from mqttpush.store.core import Repository


@dataclass(frozen=True, slots=True)
class AppSummary:
    """One line of ``app list``: an app and how many devices it has."""

    app_key: str
    name: str
    created_at: float
    devices: int


@dataclass(frozen=True, slots=True)
class Template:
    """A stored message template (``notification``, ``data``…, as ``PUT /api/v1/templates/{name}``
    took it) under its name."""

    name: str
    template: dict[str, Any]
    updated_at: float


class AppRepository(Repository):
    """``store.apps``: the apps and what belongs to each. Reads on the hot path go through the
    store's cache (``Store.app``, ``Store.settings``); the writes here invalidate it."""

    def create_app(self, name: str) -> App:
        app = App(app_key=ids.new_app_key(), name=name, secret=ids.new_secret())
        with self._tx():  # one transaction (a savepoint inside a group commit)
            self._conn.execute(
                "INSERT INTO apps (app_key, name, secret_enc, created_at) VALUES (?, ?, ?, ?)",
                (app.app_key, name, self._seal(app.secret), self.clock.now()),
            )
        return app

    def get_app(self, app_key: str) -> App | None:
        row = self._conn.execute(
            "SELECT name, secret_enc, previous_secret_enc, previous_until FROM apps WHERE app_key = ?",
            (app_key,),
        ).fetchone()
        if row is None:
            return None
        return App(
            app_key=app_key,
            name=row[0],
            secret=self._unseal(row[1]),
            previous_secret=self._unseal(row[2]) if row[2] is not None else None,
            previous_until=float(row[3] or 0.0),
        )

    def rotate_app_secret(self, app_key: str, overlap: float) -> App:
        """Give the app a new secret; the old one keeps verifying for ``overlap`` seconds
        (docs/operations.md, "Rotating secrets"). A rotation within an overlap drops the oldest."""
        secret = ids.new_secret()
        now = self.clock.now()
        with self._tx():
            row = self._conn.execute("SELECT secret_enc FROM apps WHERE app_key = ?", (app_key,)).fetchone()
            if row is None:
                raise NotFound(f"unknown app key {app_key}", code="unknown_app")
            self._conn.execute(
                "UPDATE apps SET secret_enc = ?, previous_secret_enc = ?, previous_until = ? WHERE app_key = ?",
                (self._seal(secret), row[0], now + max(0.0, overlap), app_key),
            )
        self._store._apps.pop(app_key, None)
        app = self.get_app(app_key)
        assert app is not None
        return app

    def authenticate_app(self, app_key: str, secret: str) -> bool:
        """True if ``secret`` is one of the app's secrets now (MQTT publish API login)."""
        app = self.get_app(app_key)
        return app is not None and any(
            hmac.compare_digest(s.encode(), secret.encode()) for s in app.secrets_at(self.clock.now())
        )

    def list_apps(self) -> list[AppSummary]:
        rows = self._conn.execute(
            "SELECT a.app_key, a.name, a.created_at, (SELECT count(*) FROM devices d WHERE d.app_key = a.app_key)"
            " FROM apps a ORDER BY a.created_at"
        )
        return [AppSummary(r[0], r[1], r[2], r[3]) for r in rows]

    def use_nonce(self, app_key: str, nonce: str, window: float) -> bool:
        """Record a request nonce; False if it was already used within the window (a replay)."""
        now = self.clock.now()
        with self._tx():
            if secrets.randbelow(64) == 0:
                self._conn.execute("DELETE FROM nonces WHERE expires_at < ?", (now,))
            row = self._conn.execute(
                "SELECT expires_at FROM nonces WHERE app_key = ? AND nonce = ?", (app_key, nonce)
            ).fetchone()
            if row is not None and row[0] >= now:
                return False
            self._conn.execute(
                "INSERT INTO nonces (app_key, nonce, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT (app_key, nonce) DO UPDATE SET expires_at = excluded.expires_at",
                (app_key, nonce, now + window),
            )
        return True

    # --- settings ---------------------------------------------------------------------------------

    def app_settings(self, app_key: str) -> dict[str, Any]:
        row = self._conn.execute("SELECT settings FROM app_settings WHERE app_key = ?", (app_key,)).fetchone()
        result: dict[str, Any] = json.loads(row[0]) if row else {}
        return result

    def put_app_settings(self, app_key: str, settings: dict[str, Any]) -> None:
        self._store._settings_changes += 1  # a read in flight must not cache what this replaces
        self._store._settings.pop(app_key, None)  # the next read sees the change, not the cache
        self._conn.execute(
            "INSERT INTO app_settings (app_key, settings, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (app_key) DO UPDATE SET settings = excluded.settings, updated_at = excluded.updated_at",
            (app_key, json.dumps(settings), self.clock.now()),
        )

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

    def list_templates(self, app_key: str) -> list[Template]:
        return [
            Template(r[0], json.loads(r[1]), r[2])
            for r in self._conn.execute(
                "SELECT name, template, updated_at FROM templates WHERE app_key = ? ORDER BY name", (app_key,)
            )
        ]
