"""What every command shares: the CLI contract in README.md (options, error translation, output).

Errors go to stderr as ``error: <message> [<code>]`` with exit status 2; ``--json`` prints one JSON
document; ``--url``/``--app-key``/``--app-secret`` also come from ``MQTTPUSH_*`` variables.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from mqttpush.config import ServerConfig, load_toml
from mqttpush.errors import MqttPushError

if TYPE_CHECKING:
    from mqttpush.client import PushClient
    from mqttpush.store import Store

AUTH_HELP = "also from MQTTPUSH_URL / MQTTPUSH_APP_KEY / MQTTPUSH_APP_SECRET"


def fail(message: str) -> NoReturn:
    """End the command the contract's way: ``error: <message>`` on stderr, exit status 2."""
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


@contextlib.contextmanager
def errors() -> Iterator[None]:
    """Translate library errors into the CLI's contract: a message on stderr and exit status 2."""
    try:
        yield
    except MqttPushError as exc:
        fail(f"{exc.message} [{exc.code}]")


@contextlib.contextmanager
def local_store(data_dir: Path, app_key: str | None = None, **options: Any) -> Iterator[Store]:
    """The store in ``data_dir`` for a local admin command (works beside a running server); with
    ``app_key``, refuse an unknown app. Errors follow the CLI contract (message, exit status 2)."""
    from mqttpush.store import Store

    with errors():
        store = Store(data_dir, url=store_url(), **options)
        try:
            if app_key is not None and store.apps.get_app(app_key) is None:
                fail(f"unknown app key {app_key} [unknown_app]")
            yield store
        finally:
            store.close()


def push_client(url: str, app_key: str | None, app_secret: str | None = None) -> PushClient:
    """The server client, imported on first use so that local commands start fast. Under
    ``credential_options`` it sends the ``--token`` if one was given, else it needs the key and
    secret: a missing one ends the command naming its flag."""
    from mqttpush.client import PushClient

    ctx = click.get_current_context(silent=True)
    meta = ctx.meta if ctx is not None else {}
    if meta.get(_TOKEN_META):
        return PushClient(url, app_key, token=meta[_TOKEN_META])
    if _TOKEN_META in meta:
        for flag, env, value in (
            ("--app-key", "MQTTPUSH_APP_KEY", app_key),
            ("--app-secret", "MQTTPUSH_APP_SECRET", app_secret),
        ):
            if not value:
                fail(
                    f"missing {flag} (or {env}); or give an app access token with --token (or MQTTPUSH_TOKEN)"
                )
    return PushClient(url, app_key, app_secret)


def emit(doc: Any, as_json: bool, human: Callable[[], None] | None = None) -> None:
    """Print ``doc`` as one JSON document (``--json``, or no human form), else the human form."""
    if as_json or human is None:
        click.echo(json.dumps(doc))
    else:
        human()


def json_arg(value: str | None, flag: str) -> Any:
    """A flag's JSON value (None if not given); malformed JSON is a usage error naming the flag."""
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=flag) from None


STORE_HELP = (
    "The store: sqlite:///DIR/mqttpush.db (the default, in --data-dir) or postgresql://USER@HOST/DB"
    " (--data-dir then holds the master key and lock files only)."
)


def _remember_store(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        from mqttpush.store import check_store_url

        with errors():
            check_store_url(value)
    ctx.meta["mqttpush.store_url"] = value
    return value


def load_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """``--config F.toml``: its keys become the command's defaults (flags and variables still win)."""
    if value:
        try:
            ctx.default_map = {**(ctx.default_map or {}), **load_toml(value)}
        except MqttPushError as exc:
            raise click.BadParameter(exc.message, param_hint="--config") from None
    return value


def config_option(help_text: str = "TOML file with the options below.") -> Callable[..., Any]:
    """``--config F.toml`` (``MQTTPUSH_CONFIG``), read before the other options (:func:`load_config`)."""
    return click.option(
        "--config",
        type=click.Path(dir_okay=False),
        callback=load_config,
        is_eager=True,
        expose_value=False,
        envvar="MQTTPUSH_CONFIG",
        help=help_text,
    )


def store_url() -> str | None:
    """The command's ``--store`` (None: SQLite in ``--data-dir``)."""
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get("mqttpush.store_url") if ctx is not None else None


def data_dir_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--data-dir`` and ``--store`` (which local_store() reads from the command's context)."""
    f = click.option(
        "--store",
        "store_url",
        envvar="MQTTPUSH_STORE",
        expose_value=False,
        callback=_remember_store,
        help=STORE_HELP,
    )(f)
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=ServerConfig.data_dir,
        show_default=True,
        envvar="MQTTPUSH_DATA_DIR",
        help="Directory of the SQLite store (and of the master key, whatever the store).",
    )(f)


_TOKEN_META = "mqttpush.token"


def _remember_token(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value and not value.startswith("mpt_"):
        raise click.BadParameter(
            "an app access token starts with mpt_ (mqttpush app token create APP_KEY)", param_hint="--token"
        )
    ctx.meta[_TOKEN_META] = value or None
    return value


def credential_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--app-key``/``--app-secret`` (signing) or ``--token`` (an app access token, ``mpt_…``),
    which push_client() reads from the command's context: ``[auth]`` without ``--url``."""
    f = click.option(
        "--token",
        envvar="MQTTPUSH_TOKEN",
        expose_value=False,
        callback=_remember_token,
        help="An app access token (mpt_…) instead of --app-key/--app-secret; also from MQTTPUSH_TOKEN.",
    )(f)
    f = click.option(
        "--app-secret", envvar="MQTTPUSH_APP_SECRET", help=AUTH_HELP + "; not needed with --token"
    )(f)
    return click.option("--app-key", envvar="MQTTPUSH_APP_KEY", help=AUTH_HELP + "; not needed with --token")(
        f
    )


def auth_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``[auth]``: ``--url`` and the app's credentials (credential_options)."""
    f = credential_options(f)
    return click.option(
        "--url", envvar="MQTTPUSH_URL", required=True, help="Server URL, e.g. http://127.0.0.1:8080"
    )(f)


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
