"""Device authentication and ACL on a foreign mosquitto 2.x broker (docs/split.md, docs/protocol.md).

When the bridge runs against mosquitto instead of our embedded broker, mosquitto itself must
refuse unknown clients and keep each device inside its own topics. We do that with mosquitto's
built-in ``password_file`` and ``acl_file``: this module renders both from the store (pure
functions, no I/O), renders a matching ``mosquitto.conf``, and has the two I/O steps needed to
roll out a change: replace a file atomically and SIGHUP the broker, which re-reads both files
without a restart (clients whose identity is gone are disconnected; the others stay connected).

What mosquitto 2.0's ``acl_file`` does and does not do (verified in tests/foreign):

- ``read`` is checked on every delivery, live and retained, so a device never receives a message
  outside its inbox and its app's broadcast, whatever it subscribed to;
- ``write`` is checked on every PUBLISH and Will; a forbidden one is acknowledged and dropped;
- SUBSCRIBE is *not* checked: every filter gets its QoS granted, never SUBACK 0x80. That part of
  docs/protocol.md holds only on our own broker; here a forbidden filter is accepted and stays silent.

Identities, one ``user`` block each in the ACL file (no ``pattern`` lines, so nothing is derived
from a client-chosen id):

=========================  ======================  ==================================================
who                        username / password     topics
=========================  ======================  ==================================================
device                     device_id / token       read ``…/d/{device}/m/+`` and ``…/b/+``;
                                                   write ``…/d/{device}/r`` and ``…/d/{device}/s``
app publisher (MQTT API)   app_key / app_secret    write ``…/api/push``; read ``…/api/result/+``
service (the bridge)       ``mqttpush-service``    readwrite ``mqttpush/#``
=========================  ======================  ==================================================
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import pwd
import secrets
import signal
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mqttpush import ids, topics
from mqttpush.errors import InvalidContent
from mqttpush.store import Store

log = logging.getLogger("mqttpush.mosquitto")

MOSQUITTO_ITERATIONS = 101
"""PBKDF2 iterations ``mosquitto_passwd`` uses for ``$7$`` hashes (mosquitto 2.0)."""

SALT_BYTES = 12
"""Salt length ``mosquitto_passwd`` uses (16 base64 characters in the file)."""

_HASH_BYTES = 64  # SHA-512 output: mosquitto compares exactly this many bytes
_HASH_ID = "7"  # mosquitto's id for sha512-pbkdf2 ("6" is 1.x's single-round salted sha512)

MAX_QUEUED_MESSAGES = 1000
"""Per-client queue bound in the generated config; matches the default per-device inbox bound."""


def password_hash(password: str, *, salt: bytes | None = None, iterations: int = MOSQUITTO_ITERATIONS) -> str:
    """Hash ``password`` the way ``mosquitto_passwd`` does (mosquitto 2.x, sha512-pbkdf2).

    Returns ``$7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512(password, salt, iterations, 64)>``,
    the part after ``username:`` in a mosquitto password file. ``salt`` defaults to 12 random bytes.
    """
    if iterations < 1:
        raise InvalidContent(f"iterations must be at least 1, not {iterations}")
    if salt is None:
        salt = secrets.token_bytes(SALT_BYTES)
    if not salt:
        raise InvalidContent("salt must not be empty")
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, _HASH_BYTES)
    b64 = base64.b64encode
    return f"${_HASH_ID}${iterations}${b64(salt).decode()}${b64(digest).decode()}"


@dataclass(frozen=True)
class DeviceEntry:
    """One registered device: its app, its id (= MQTT username) and its token's ``password_hash``."""

    app_key: str
    device_id: str
    password_hash: str


@dataclass(frozen=True)
class AppEntry:
    """One app's MQTT publish API identity: its key (= MQTT username) and its secret's ``password_hash``."""

    app_key: str
    password_hash: str


def password_file(devices: Iterable[DeviceEntry], apps: Iterable[AppEntry], service: tuple[str, str]) -> str:
    """Render a mosquitto ``password_file``: one ``username:hash`` line per identity.

    ``service`` is ``(username, password_hash)`` of the bridge. Raises :class:`InvalidContent`
    for a username that is not a valid id, a malformed hash, or a username listed twice (mosquitto
    would silently keep one of them).
    """
    service_user, service_hash = service
    entries = [(service_user, service_hash)]
    entries += [(a.app_key, a.password_hash) for a in apps]
    for d in devices:
        # Not written here, but checked like acl_file does: an entry refused by one of the two
        # files must not be half-deployed through the other.
        _check_id(d.app_key)
        entries.append((d.device_id, d.password_hash))
    seen: set[str] = set()
    lines = []
    for username, hashed in entries:
        _check_id(username)
        _check_unique(username, seen)
        # ':' ends the username field and whitespace/newlines would break or extend the line.
        if not hashed.startswith("$") or any(c in hashed for c in ": \t\r\n"):
            raise InvalidContent(f"not a mosquitto password hash for {username!r}")
        lines.append(f"{username}:{hashed}\n")
    return "".join(lines)


def acl_file(devices: Iterable[DeviceEntry], apps: Iterable[AppEntry], service_user: str) -> str:
    """Render a mosquitto ``acl_file`` with one ``user`` block of explicit topics per identity.

    mosquitto checks ``read`` on every delivery (live and retained) and ``write`` on every PUBLISH;
    it does not check SUBSCRIBE at all (see the module docstring). Raises :class:`InvalidContent`
    like :func:`password_file`.
    """
    seen: set[str] = set()
    blocks = [
        "# Generated by mqttpush from its store; local edits are overwritten.\n",
        _user_block(service_user, seen, [("readwrite", f"{topics.ROOT}/#")]),
    ]
    for app in apps:
        _check_id(app.app_key)
        api = f"{topics.ROOT}/{app.app_key}/api"
        blocks.append(_user_block(app.app_key, seen, [("write", f"{api}/push"), ("read", f"{api}/result/+")]))
    for device in devices:
        _check_id(device.app_key)
        app_key, device_id = device.app_key, device.device_id
        rules = [
            ("read", topics.inbox_filter(app_key, device_id)),
            ("read", topics.broadcast_filter(app_key)),
            ("write", topics.receipt_topic(app_key, device_id)),
            ("write", topics.presence_topic(app_key, device_id)),
        ]
        blocks.append(_user_block(device_id, seen, rules))
    return "\n".join(blocks)


def mosquitto_conf(
    *,
    host: str,
    port: int,
    password_file: str,
    acl_file: str,
    pid_file: str | None = None,
    persistence_dir: str | None = None,
    user: str | None = None,
) -> str:
    """Render a ``mosquitto.conf`` for one MQTT 3.1.1 listener guarded by our password and ACL files.

    ``pid_file`` lets :func:`reload` find the broker; ``persistence_dir`` keeps sessions and
    retained messages across broker restarts (the store would re-publish them anyway). ``user``
    is who a broker started as root switches to; it must be able to read both files and write the
    pid file and persistence directory. It defaults to :func:`files_owner`, not to mosquitto's own
    default ``mosquitto``, which can read none of the owner-only files we write.
    """
    if user is None:
        user = files_owner()
    for name, value in (
        ("host", host),
        ("password_file", password_file),
        ("acl_file", acl_file),
        ("pid_file", pid_file),
        ("persistence_dir", persistence_dir),
        ("user", user),
    ):
        # One option per line: a newline in a value would inject further options.
        if value is not None and (not value or any(c in value for c in "\r\n")):
            raise InvalidContent(f"{name} must be a non-empty single line")
    if not 0 < port < 65536:
        raise InvalidContent(f"port must be 1-65535, not {port}")
    lines = [
        "# Generated by mqttpush; see bridge/mosquitto.py.",
        # The options below apply to every listener, so no listener can forget them.
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {password_file}",
        f"acl_file {acl_file}",
        # Bounds memory for a device offline with a persistent session; its inbox stays retained.
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        # Offline sessions of vanished devices would otherwise be kept forever; the store and the
        # retained inbox still hold their messages when they come back.
        "persistent_client_expiration 14d",
        # Pushes are small and latency-sensitive: do not let Nagle hold them back.
        "set_tcp_nodelay true",
    ]
    if user is not None:
        lines.append(f"user {user}")
    if pid_file is not None:
        lines.append(f"pid_file {pid_file}")
    if persistence_dir is not None:
        lines += ["persistence true", f"persistence_location {persistence_dir.rstrip('/')}/"]
    lines += [
        f"listener {port} {host}",
        # Listener options go after their `listener` line: above it they would configure (and open)
        # mosquitto's default listener on port 1883 as well.
        # The device protocol (docs/protocol.md) wants client_id == device_id. mosquitto cannot check that, but it can replace
        # whatever id a client sends by its authenticated username, so no identity can take over
        # (or kick off) another's session by claiming its client id. The price: one connection
        # at a time per username, the service and each app publisher included.
        "use_username_as_clientid true",
    ]
    return "\n".join(lines) + "\n"


def files_owner() -> str | None:
    """The account that writes mosquitto's files here (this process's): who mosquitto should run as.

    The bridge rewrites ``passwords`` and ``acl`` owner-only (:func:`write_atomically`), so the
    broker must run as their owner to re-read them after a SIGHUP. As root that is ``root``: the
    broker keeps its privileges instead of dropping to ``mosquitto`` and failing on the pid file
    and the password file. ``None`` if the account has no name (no ``user`` line is written then).
    """
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "root" if uid == 0 else None


def write_atomically(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace ``path`` with ``text`` so that a reader (mosquitto on SIGHUP) sees the old or the new
    file, never a partial one: write a temporary file in the same directory, fsync, ``os.replace``.

    ``mode`` defaults to owner-only because the files hold password hashes; if mosquitto runs as
    another user, give it a group-readable mode and a shared group.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), mode)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def reload(pid_file: Path) -> bool:
    """Ask the mosquitto whose pid is in ``pid_file`` to re-read its password and ACL files (SIGHUP).

    Returns False if there is no such process: no pid file, no valid pid in it, the process is
    gone, or (on Linux) the pid now belongs to a program other than mosquitto, which SIGHUP might
    kill. The reload happens asynchronously in the broker, after this returns.
    """
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return False
    if pid <= 0:  # 0 and negatives would signal whole process groups
        return False
    comm = Path(f"/proc/{pid}/comm")
    try:
        if not comm.read_text().startswith("mosquitto"):
            return False
    except FileNotFoundError:
        # No /proc (not Linux) or no such process; os.kill tells the two apart.
        pass
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return False
    return True


def _user_block(username: str, seen: set[str], rules: list[tuple[str, str]]) -> str:
    _check_id(username)
    _check_unique(username, seen)
    return f"user {username}\n" + "".join(f"topic {access} {topic}\n" for access, topic in rules)


def _check_id(value: str) -> None:
    # Ids are also topic levels and file fields: no '/', '+', '#', ':', spaces or newlines.
    if not ids.is_valid_id(value):
        raise InvalidContent(f"not a valid mqttpush id: {value!r}")


def _check_unique(username: str, seen: set[str]) -> None:
    if username in seen:
        raise InvalidContent(f"username {username!r} listed twice")
    seen.add(username)


class MosquittoSync:
    """Keeps mosquitto's ``passwords`` and ``acl`` files (in ``folder``) in step with the store.

    Rewritten at start, soon after a registration through our API, and whenever the store's
    accounts change otherwise (``mqttpush device import`` or ``app create`` from the shell,
    noticed by polling); then mosquitto is told to reload (SIGHUP via ``pid_file``).
    """

    def __init__(self, store: Store, folder: Path, pid_file: Path | None, poll: float = 5.0) -> None:
        self._store = store
        self.folder = Path(folder)
        self.pid_file = pid_file
        self._poll = poll
        self._changed = asyncio.Event()
        self._version: tuple[int, int, float] | None = None

    @property
    def password_path(self) -> Path:
        return self.folder / "passwords"

    @property
    def acl_path(self) -> Path:
        return self.folder / "acl"

    def changed(self) -> None:
        self._changed.set()

    def write(self) -> int:
        """Rewrite both files from the store (blocking: call on the store thread); returns the device count."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._version = self._store.accounts.accounts_version()
        devices, apps, (service_user, service_password) = self._store.accounts.broker_accounts()
        device_entries = [DeviceEntry(app, device, hashed) for app, device, hashed in devices]
        app_entries = [AppEntry(key, password_hash(secret)) for key, secret in apps]
        write_atomically(
            self.password_path,
            password_file(device_entries, app_entries, (service_user, password_hash(service_password))),
        )
        write_atomically(self.acl_path, acl_file(device_entries, app_entries, service_user))
        return len(device_entries)

    async def sync(self) -> None:
        count = await self._store.run(self.write)
        reloaded = reload(self.pid_file) if self.pid_file is not None else False
        log.info("mosquitto files written devices=%d reloaded=%s", count, reloaded)

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._poll)
            self._changed.clear()
            if await self._store.run(self._store.accounts.accounts_version) != self._version:
                await self.sync()
