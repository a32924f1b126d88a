"""``mqttpush doctor --data-dir D [--json]``: is this data dir and machine fit to run mqttpush?
(docs/operations.md, "mqttpush doctor").

Looks without changing anything: the data dir and its files' modes, free disk space, the
configured ports (free, or held by a running mqttpush), the store's schema against this release,
the data dir's locks, master.key, and each app's vendor credentials (files there and parsing,
certificates not expired). Prints a table, or one JSON document with ``--json``; never a secret.
Exit status 0 when nothing failed (warnings allowed), 1 when a check failed, 2 for bad flags.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import stat
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from mqttpush import __version__
from mqttpush.cli.shell import config_option, data_dir_option, json_option, store_url
from mqttpush.config import ServerConfig
from mqttpush.errors import MqttPushError

MIN_FREE_BYTES = 100 * 1024 * 1024
"""Less free space than this fails: SQLite needs room for the WAL and its checkpoints."""
LOW_FREE_BYTES = 1024 * 1024 * 1024
LOW_FREE_SHARE = 0.05
"""Less than 1 GiB or 5 % free is a warning."""
CERT_WARN_DAYS = 30
PRIVATE_FILES = (
    "mqttpush.db",
    "mqttpush.db-wal",
    "mqttpush.db-shm",
    "master.key",
    ".lock-broker",
    ".lock-bridge",
)
SECRET_WORDS = ("secret", "password", "token", "private", "pem")
"""Vendor entry keys whose values are never shown (nor any string held in them)."""


@dataclass
class Check:
    name: str
    status: str
    """``ok``, ``warn`` or ``fail``."""
    detail: str


class Report:
    def __init__(self) -> None:
        self.checks: list[Check] = []
        self._secrets: set[str] = set()

    def hide(self, value: Any) -> None:
        """Never print ``value`` (nor any string inside it), whatever message it ends up in."""
        if isinstance(value, str) and len(value) >= 4:
            self._secrets.add(value)
        elif isinstance(value, dict):
            for v in value.values():
                self.hide(v)
        elif isinstance(value, list):
            for v in value:
                self.hide(v)

    def add(self, name: str, status: str, detail: str) -> None:
        for secret in sorted(self._secrets, key=len, reverse=True):
            detail = detail.replace(secret, "[hidden]")
        self.checks.append(Check(name, status, detail))

    @property
    def failed(self) -> bool:
        return any(c.status == "fail" for c in self.checks)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def check_data_dir(report: Report, data_dir: Path) -> bool:
    """Exists, is a directory, 0700, its files 0600, enough free space. False if unusable."""
    if not data_dir.exists():
        report.add(
            "data dir", "fail", f"{data_dir} does not exist (start mqttpush serve once, or restore a backup)"
        )
        return False
    if not data_dir.is_dir():
        report.add("data dir", "fail", f"{data_dir} is not a directory")
        return False
    if not os.access(data_dir, os.R_OK | os.W_OK | os.X_OK):
        report.add("data dir", "fail", f"{data_dir} is not readable and writable by this user")
        return False
    mode = _mode(data_dir)
    if mode & 0o077:
        report.add("data dir", "fail", f"{data_dir} has mode {mode:04o}; want 0700 (chmod 700 {data_dir})")
    else:
        report.add("data dir", "ok", f"{data_dir} mode {mode:04o}")
    loose = []
    for name in PRIVATE_FILES:
        path = data_dir / name
        if path.exists() and _mode(path) & 0o077:
            loose.append(f"{name} has mode {_mode(path):04o}")
    if loose:
        report.add("file modes", "fail", "; ".join(loose) + f"; want 0600 (chmod 600 {data_dir}/<file>)")
    else:
        report.add("file modes", "ok", "every file 0600")
    usage = shutil.disk_usage(data_dir)
    free = f"{usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.1f} GiB"
    if usage.free < MIN_FREE_BYTES:
        report.add("disk space", "fail", f"{free}: the store cannot grow its WAL")
    elif usage.free < LOW_FREE_BYTES or usage.free < usage.total * LOW_FREE_SHARE:
        report.add("disk space", "warn", free)
    else:
        report.add("disk space", "ok", free)
    return True


def check_postgres_store(report: Report, data_dir: Path, url: str) -> bool:
    """``--store postgresql://…``: the database answers, and master.key opens it (the store
    refuses a wrong or missing key itself). Opening it migrates an older schema, as any start of
    a cluster process would. True if the store can be opened."""
    from mqttpush.store import Store

    try:
        store = Store(data_dir, url=url)
    except MqttPushError as exc:
        report.add("store", "fail", f"{exc.message} [{exc.code}]")
        return False
    try:
        report.add(
            "schema", "ok", f"PostgreSQL store, schema {store.schema_version()}, opened with master.key"
        )
    finally:
        store.close()
    return True


def check_store(report: Report, data_dir: Path) -> bool:
    """Schema version against this release, and master.key. True if the store can be opened."""
    from mqttpush.store.checkup import schema_status
    from mqttpush.store.postgres import is_postgres_url

    url = store_url()
    if url is not None and is_postgres_url(url):
        return check_postgres_store(report, data_dir, url)
    try:
        status = schema_status(data_dir)
    except FileNotFoundError:
        report.add("store", "warn", "no mqttpush.db yet: the first start creates it")
        return False
    except Exception as exc:
        report.add("store", "fail", f"mqttpush.db cannot be read: {exc} (restore from a backup)")
        return False
    if status.found == 0 and status.tables:
        report.add("store", "fail", "mqttpush.db is another program's database [store_foreign]")
        return False
    if status.found > status.latest:
        report.add(
            "schema",
            "fail",
            f"schema {status.found} is newer than this mqttpush {__version__} knows ({status.latest})"
            " [schema_too_new]",
        )
        return False
    if status.found < status.latest:
        report.add("schema", "warn", f"schema {status.found}; the next start migrates it to {status.latest}")
        ok = False
    else:
        report.add("schema", "ok", f"schema {status.found}, current for mqttpush {__version__}")
        ok = True
    key = data_dir / "master.key"
    if not key.exists():
        report.add(
            "master.key",
            "fail",
            "master.key is missing: sealed secrets cannot be opened [master_key_missing]",
        )
        return False
    size = key.stat().st_size
    if size != 32:
        report.add("master.key", "fail", f"master.key holds {size} bytes, not 32 [master_key_invalid]")
        return False
    report.add("master.key", "ok", "32 bytes")
    return ok


def check_locks(report: Report, data_dir: Path) -> dict[str, str]:
    """Who holds the data dir's locks; returns role -> pid of the held ones."""
    from mqttpush.store.checkup import lock_status

    held = {}
    for lock in lock_status(data_dir):
        name = f"lock {lock.role}"
        if not lock.exists:
            report.add(name, "ok", f".lock-{lock.role}: no {lock.role} has run here yet")
        elif lock.held:
            held[lock.role] = lock.pid
            report.add(name, "ok", f".lock-{lock.role}: held by a running mqttpush (pid {lock.pid or '?'})")
        else:
            report.add(name, "ok", f".lock-{lock.role}: free (no {lock.role} runs on this data dir)")
    return held


def _mqttpush_health(host: str, port: int) -> str | None:
    """The version a running mqttpush's ``GET /healthz`` gives on ``host:port``, or None."""
    import httpx

    try:
        doc = httpx.get(f"http://{_url_host(host)}:{port}/healthz", timeout=3).json()
    except (httpx.HTTPError, ValueError):
        return None
    return str(doc.get("version")) if isinstance(doc, dict) and doc.get("ok") is True else None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _busy(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def check_ports(report: Report, config: ServerConfig, held: dict[str, str]) -> None:
    """Each configured port: free, or held by a running mqttpush (its /healthz answers, or this
    data dir's lock for that role is held)."""
    ports = [("http_port", config.http_port, "bridge"), ("mqtt_port", config.mqtt_port, "broker")]
    ports += [
        (n, p, "broker")
        for n, p in (
            ("ws_port", config.ws_port),
            ("mqtts_port", config.mqtts_port),
            ("wss_port", config.wss_port),
        )
        if p
    ]
    for name, port, role in ports:
        where = f"{config.host}:{port}"
        if not port:
            report.add(name, "ok", "0: a free port is picked at start")
            continue
        try:
            busy = _busy(config.host, port)
        except OSError as exc:
            report.add(name, "fail", f"{where} cannot be used: {exc.strerror or exc}")
            continue
        if not busy:
            report.add(name, "ok", f"{where} is free")
            continue
        version = _mqttpush_health(config.host, port) if name == "http_port" else None
        if version is not None:
            report.add(name, "ok", f"{where} is held by a running mqttpush {version} (GET /healthz answers)")
        elif role in held:
            report.add(
                name, "ok", f"{where} is in use; this data dir's {role} runs (pid {held[role] or '?'})"
            )
        else:
            report.add(name, "fail", f"{where} is in use by another program")


def _expiry(report: Report, name: str, path: Path) -> None:
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        report.add(name, "fail", f"{path} holds no readable PEM certificate: {exc}")
        return
    soonest = min(certs, key=lambda c: c.not_valid_after_utc)
    ends = soonest.not_valid_after_utc
    days = (ends - datetime.now(UTC)).total_seconds() / 86400
    subject = soonest.subject.rfc4514_string() or "(no subject)"
    when = ends.strftime("%Y-%m-%d")
    if days < 0:
        report.add(name, "fail", f"{path}: certificate {subject} expired on {when}")
    elif days < CERT_WARN_DAYS:
        report.add(name, "warn", f"{path}: certificate {subject} expires on {when} (in {days:.0f} days)")
    else:
        report.add(name, "ok", f"{path}: certificates valid until {when} or later")


def check_vendors(report: Report, data_dir: Path) -> None:
    """Each app's vendor credentials: files there, keys parse (as the channel would load them),
    CA certificates not expired. Secrets are hidden from every message."""
    from mqttpush.store import Store

    store = Store(data_dir, url=store_url())  # with --store postgresql://…, that database's apps
    try:
        apps = store.apps.list_apps()
        if not apps:
            report.add("vendors", "ok", "no apps yet")
        for app in apps:
            app_key = app.app_key
            vendors = store.vendors.vendors_configured(app_key)
            if not vendors:
                report.add(f"vendors {app_key}", "ok", "no vendor configured (MQTT only)")
            for vendor in vendors:
                config = store.vendors.vendor_config(app_key, vendor) or {}
                obj = config.get("obj") or {}
                for key, value in config.items() if isinstance(config, dict) else ():
                    if key != "obj" and key != "base_dir":
                        report.hide(value)
                if isinstance(obj, dict):
                    for key, value in obj.items():
                        if any(word in key for word in SECRET_WORDS):
                            report.hide(value)
                _check_vendor(report, f"{vendor} {app_key}", vendor, config, obj)
    finally:
        store.close()


def _check_vendor(report: Report, name: str, vendor: str, config: dict[str, Any], obj: Any) -> None:
    from bridge.vendors import vendor_credentials

    base_dir = Path(str(config.get("base_dir") or "."))
    files = {
        k: v
        for k, v in (obj.items() if isinstance(obj, dict) else ())
        if k.endswith("_file") and isinstance(v, str)
    }
    missing = []
    for key, value in files.items():
        path = Path(value) if Path(value).is_absolute() else base_dir / value
        if not path.is_file():
            missing.append(f"{key} {path} does not exist")
        elif not os.access(path, os.R_OK):
            missing.append(f"{key} {path} is not readable by this user")
    if missing:
        report.add(name, "fail", "; ".join(missing))
        return
    try:
        vendor_credentials(vendor, config)
    except MqttPushError as exc:
        report.add(name, "fail", exc.message)
        return
    except Exception as exc:  # a loader's surprise is a finding, not a crash of the doctor
        report.add(name, "fail", f"credentials do not load: {type(exc).__name__}")
        return
    loaded = ", ".join(sorted(files)) or "stored credentials"
    report.add(name, "ok", f"{loaded} load")
    ca = files.get("ca_file")
    if ca is not None:
        _expiry(report, f"{name} ca_file", Path(ca) if Path(ca).is_absolute() else base_dir / ca)


def run_checks(config: ServerConfig) -> Report:
    report = Report()
    data_dir = config.data_dir
    usable = check_data_dir(report, data_dir)
    held = check_locks(report, data_dir) if usable else {}
    check_ports(report, config, held)
    if config.tls_cert is not None:
        _expiry(report, "tls_cert", config.tls_cert)
    loose = any(c.status == "fail" for c in report.checks if c.name in ("data dir", "file modes"))
    if usable and check_store(report, data_dir):
        if loose:
            # Opening the store tightens modes (docs/operations.md): the doctor only looks.
            report.add("vendors", "warn", "not checked: opening the store would change the modes above")
            return report
        try:
            check_vendors(report, data_dir)
        except MqttPushError as exc:
            report.add("vendors", "fail", f"{exc.message} [{exc.code}]")
    return report


def _print_table(report: Report) -> None:
    from rich.console import Console
    from rich.table import Table

    colour = {"ok": "green", "warn": "yellow", "fail": "red"}
    table = Table(title=f"mqttpush doctor ({__version__})")
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    for c in report.checks:
        table.add_row(c.name, f"[{colour[c.status]}]{c.status}[/]", c.detail, style=None)
    console = Console(soft_wrap=False)
    console.print(table, markup=True, highlight=False)
    verdict = "a check failed" if report.failed else "all good"
    console.print(
        f"{verdict}: {sum(c.status == 'fail' for c in report.checks)} failed,"
        f" {sum(c.status == 'warn' for c in report.checks)} warnings"
    )


@click.command()
@config_option("The server's TOML file: its data dir, host, ports and TLS certificate are checked.")
@data_dir_option
@click.option("--host", default=ServerConfig.host, show_default=True, envvar="MQTTPUSH_HOST")
@click.option(
    "--mqtt-port",
    type=click.IntRange(0, 65535),
    default=ServerConfig.mqtt_port,
    show_default=True,
    envvar="MQTTPUSH_MQTT_PORT",
)
@click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    default=ServerConfig.http_port,
    show_default=True,
    envvar="MQTTPUSH_HTTP_PORT",
)
@click.option("--ws-port", type=click.IntRange(0, 65535), default=None, envvar="MQTTPUSH_WS_PORT")
@click.option("--mqtts-port", type=click.IntRange(0, 65535), default=None, envvar="MQTTPUSH_MQTTS_PORT")
@click.option("--wss-port", type=click.IntRange(0, 65535), default=None, envvar="MQTTPUSH_WSS_PORT")
@click.option(
    "--tls-cert", type=click.Path(dir_okay=False, path_type=Path), default=None, envvar="MQTTPUSH_TLS_CERT"
)
@json_option
def doctor(as_json: bool, **options: Any) -> None:
    """Check a data dir and this machine for running mqttpush (exit 1 if a check fails)."""
    config = ServerConfig(**options)
    report = run_checks(config)
    if as_json:
        doc = {"ok": not report.failed, "version": __version__, "checks": [asdict(c) for c in report.checks]}
        click.echo(json.dumps(doc))
    else:
        _print_table(report)
    sys.stdout.flush()
    sys.exit(1 if report.failed else 0)
