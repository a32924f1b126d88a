"""Accounts outside the apps: the bridge's privileged MQTT identity (the service account), and
what a foreign broker needs to check logins (docs/split.md)."""

from __future__ import annotations

import hmac

from mqttpush import ids
from mqttpush.store.core import Repository

SERVICE_USERNAME = "mqttpush-service"


class AccountRepository(Repository):
    """``store.accounts``: the service account and the broker's view of every login."""

    def service_credentials(self) -> tuple[str, str]:
        """The bridge's privileged MQTT identity, created on first use."""
        row = self._conn.execute(
            "SELECT password_enc FROM service_accounts WHERE username = ?", (SERVICE_USERNAME,)
        ).fetchone()
        if row is not None:
            return SERVICE_USERNAME, self._unseal(row[0])
        password = ids.new_secret()
        self._conn.execute(
            "INSERT INTO service_accounts (username, password_enc, created_at) VALUES (?, ?, ?)"
            " ON CONFLICT (username) DO NOTHING",
            (SERVICE_USERNAME, self._seal(password), self.clock.now()),
        )
        return self.service_credentials()

    def rotate_service_credentials(self) -> tuple[str, str]:
        """Replace the service password; whatever logs in with the old one (a split bridge, a
        mosquitto password file) needs the new one (docs/operations.md, "Rotating secrets")."""
        password = ids.new_secret()
        with self._tx():
            self._conn.execute(
                "INSERT INTO service_accounts (username, password_enc, created_at) VALUES (?, ?, ?)"
                " ON CONFLICT (username) DO UPDATE SET password_enc = excluded.password_enc,"
                " created_at = excluded.created_at",
                (SERVICE_USERNAME, self._seal(password), self.clock.now()),
            )
        return SERVICE_USERNAME, password

    def broker_accounts(self) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]], tuple[str, str]]:
        """What a foreign broker needs to check logins: ``(app, device_id, broker_hash)`` per device,
        ``(app_key, app_secret)`` per app, and the service ``(username, password)``."""
        devices = [
            (r[0], r[1], r[2])
            for r in self._conn.execute(
                "SELECT app_key, device_id, broker_hash FROM devices WHERE broker_hash IS NOT NULL ORDER BY device_id"
            )
        ]
        apps = [
            (key, self._unseal(sealed))
            for key, sealed in self._conn.execute("SELECT app_key, secret_enc FROM apps ORDER BY app_key")
        ]
        return devices, apps, self.service_credentials()

    def accounts_version(self) -> tuple[int, int, float]:
        """Changes whenever a device or app is added or re-registered (cheap to poll)."""
        d = self._conn.execute("SELECT count(*), max(updated_at) FROM devices").fetchone()
        a = self._conn.execute("SELECT count(*) FROM apps").fetchone()
        return int(d[0]), int(a[0]), float(d[1] or 0)

    def authenticate_service(self, username: str, password: str) -> bool:
        row = self._conn.execute(
            "SELECT password_enc FROM service_accounts WHERE username = ?", (username,)
        ).fetchone()
        return row is not None and hmac.compare_digest(self._unseal(row[0]), password)
