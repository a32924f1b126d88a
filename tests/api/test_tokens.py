"""Issue 17 part 1: app access tokens — the CLI, bearer auth beside HMAC, scopes, revocation and
expiry, against the real server and store."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mqttpush.cli import tokens as cli_tokens
from mqttpush.store import Store
from mqttpush.store import tokens as store_tokens
from tests.conftest import Running, ServeProcess, _serve, cli, cli_json


def _create(r: Running, *args: str) -> dict[str, Any]:
    doc: dict[str, Any] = cli_json("app", "token", "create", r.app_key, "--data-dir", str(r.data_dir), *args)
    return doc


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _server_token(r: Running, scope: str, **kwargs: Any) -> str:
    """A token made by the server's own store (its clock, its cache)."""
    store = r.server.store
    new = r.call(store.run(store.tokens.create, r.app_key, scope, **kwargs))
    return str(new.token)


def _code(resp: httpx.Response) -> tuple[int, str]:
    return resp.status_code, resp.json()["error"]["code"]


def test_cli_creates_lists_and_revokes_and_never_shows_or_stores_the_token(running: Running) -> None:
    r = running
    made = _create(r, "--scope", "read", "--expires", "30d", "--name", "ci")
    token = made["token"]
    assert token.startswith("mpt_") and len(token) == 47
    assert made["scope"] == "read" and made["name"] == "ci" and made["state"] == "active"
    assert made["expires_at"] - made["created_at"] == pytest.approx(30 * 86400)
    assert made["prefix"] == token[:8] + "…"
    other = _create(r)
    assert other["scope"] == "push" and other["expires_at"] is None and other["token"] != token

    listing = cli("app", "token", "list", r.app_key, "--data-dir", str(r.data_dir), "--json")
    assert listing.returncode == 0 and token not in listing.stdout
    rows = {
        t["token_id"]: t
        for t in cli_json("app", "token", "list", r.app_key, "--data-dir", str(r.data_dir))["tokens"]
    }
    assert set(rows) == {made["token_id"], other["token_id"]}
    assert set(rows[made["token_id"]]) >= {
        "token_id",
        "name",
        "scope",
        "prefix",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    }
    for name in ("mqttpush.db", "mqttpush.db-wal"):
        path = r.data_dir / name
        assert not path.exists() or token.encode() not in path.read_bytes()

    by_id = cli_json("app", "token", "revoke", r.app_key, made["token_id"], "--data-dir", str(r.data_dir))
    assert by_id["state"] == "revoked" and by_id["revoked_at"] is not None
    by_token = cli_json("app", "token", "revoke", r.app_key, other["token"], "--data-dir", str(r.data_dir))
    assert by_token["token_id"] == other["token_id"] and by_token["state"] == "revoked"
    again = cli_json("app", "token", "revoke", r.app_key, made["token_id"], "--data-dir", str(r.data_dir))
    assert again["revoked_at"] == by_id["revoked_at"]  # revoking twice changes nothing


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--expires", "3x"], "--expires"),
        (["--expires", "0d"], "--expires"),
        (["--expires", "-1h"], "--expires"),
        (["--expires", "9999d"], "--expires"),
        (["--scope", "root"], "--scope"),
        (["--name", ""], "--name"),
    ],
)
def test_cli_refuses_bad_flags_naming_them(tmp_path: Path, args: list[str], flag: str) -> None:
    store = Store(tmp_path / "data")
    app_key = store.apps.create_app("x").app_key
    store.close()
    proc = cli("app", "token", "create", app_key, "--data-dir", str(tmp_path / "data"), *args, "--json")
    assert proc.returncode == 2 and flag in proc.stderr and "Traceback" not in proc.stderr


def test_cli_refuses_unknown_apps_and_tokens(running: Running) -> None:
    r = running
    unknown_app = cli("app", "token", "create", "anothing", "--data-dir", str(r.data_dir), "--json")
    assert unknown_app.returncode == 2 and "[unknown_app]" in unknown_app.stderr
    unknown = cli("app", "token", "revoke", r.app_key, "tok_0000", "--data-dir", str(r.data_dir), "--json")
    assert unknown.returncode == 2 and "[unknown_token]" in unknown.stderr
    # another app's token is not this app's to revoke
    other = Store(r.data_dir).apps.create_app("other")
    theirs = cli_json("app", "token", "create", other.app_key, "--data-dir", str(r.data_dir))
    crossed = cli("app", "token", "revoke", r.app_key, theirs["token_id"], "--data-dir", str(r.data_dir))
    assert crossed.returncode == 2 and "[unknown_token]" in crossed.stderr


def test_the_cli_and_the_store_agree_on_scopes() -> None:
    assert cli_tokens.SCOPES == store_tokens.SCOPES
    assert cli_tokens.MAX_NAME == store_tokens.MAX_NAME


def test_a_read_token_reads_but_does_not_push(running: Running) -> None:
    r = running
    ((device, _),) = r.register()
    msg_id = r.push([device])
    token = _create(r, "--scope", "read")["token"]
    with httpx.Client(base_url=r.url, headers=_bearer(token)) as http:
        status = http.get(f"/api/v1/messages/{msg_id}")
        assert status.status_code == 200 and status.json()["msg_id"] == msg_id
        assert http.get(f"/api/v1/devices/{device}").status_code == 200
        body = {"target": {"devices": [device]}, "notification": {"title": "t"}}
        refused = http.post("/api/v1/push", json=body)
        assert _code(refused) == (403, "insufficient_scope")
        assert _code(http.post(f"/api/v1/push/device/{device}", content=b"x")) == (403, "insufficient_scope")
        assert _code(http.delete(f"/api/v1/messages/{msg_id}")) == (403, "insufficient_scope")


def test_push_and_admin_scopes(running: Running, tmp_path: Path) -> None:
    r = running
    ((device, _),) = r.register()
    push = _create(r, "--scope", "push")["token"]
    admin = _create(r, "--scope", "admin")["token"]
    body = {"target": {"devices": [device]}, "notification": {"title": "t"}}
    with httpx.Client(base_url=r.url, headers=_bearer(push)) as http:
        sent = http.post("/api/v1/push", json=body)
        assert sent.status_code == 202, sent.text
        r.wait_state(sent.json()["msg_id"], device, "published")
        assert http.get("/api/v1/settings").status_code == 200
        assert _code(http.put("/api/v1/settings", json={"daily_cap": 5})) == (403, "insufficient_scope")
        assert _code(http.post(f"/api/v1/devices/{device}/tags", json={"add": ["x"]})) == (
            403,
            "insufficient_scope",
        )
        upload = http.post("/api/v1/files", content=f"{device}\n".encode())  # streamed, push scope
        assert upload.status_code == 201 and upload.json()["lines"] == 1
    with httpx.Client(base_url=r.url, headers=_bearer(admin)) as http:
        assert http.put("/api/v1/settings", json={"daily_cap": 5}).json()["daily_cap"] == 5
        tagged = http.post(f"/api/v1/devices/{device}/tags", json={"add": ["x"]})
        assert tagged.status_code == 200 and tagged.json()["tags"] == ["x"]
        assert http.post("/api/v1/push", json=body).status_code == 202


def test_device_tokens_keep_working_beside_app_tokens(running: Running) -> None:
    r = running
    ((device, device_token),) = r.register()
    with httpx.Client(base_url=r.url, headers=_bearer(device_token)) as http:
        assert http.get(f"/api/v1/devices/{device}").status_code == 200
        assert http.get("/api/v1/devices/me").json()["device_id"] == device
    token = _create(r, "--scope", "admin")["token"]
    # an app token is no device token: the device-only route refuses it
    assert _code(httpx.get(f"{r.url}/api/v1/devices/me", headers=_bearer(token))) == (401, "bad_token")


def test_unknown_and_malformed_tokens_are_401_bad_token(running: Running) -> None:
    r = running
    for token in (b"mpt_" + b"A" * 43, b"mpt_short", b"mpt_" + "é".encode() * 43):
        resp = httpx.get(f"{r.url}/api/v1/settings", headers={"Authorization": b"Bearer " + token})
        assert _code(resp) == (401, "bad_token"), token


def test_a_revoke_in_this_process_holds_at_once(running: Running) -> None:
    r = running
    store = r.server.store
    token = _server_token(r, "read")
    with httpx.Client(base_url=r.url, headers=_bearer(token)) as http:
        assert http.get("/api/v1/settings").status_code == 200  # now cached
        r.call(store.run(store.tokens.revoke, r.app_key, token))
        refused = http.get("/api/v1/settings")
        assert _code(refused) == (401, "bad_token") and "revoked" in refused.json()["error"]["message"]


def test_a_cli_revoke_beside_the_running_server_holds_within_2_s(tmp_path: Path) -> None:
    """Server and CLI as separate processes, as an operator runs them."""
    data = tmp_path / "data"
    server = ServeProcess(data)
    try:
        app_key = cli_json("app", "create", "ops", "--data-dir", str(data))["app_key"]
        made = cli_json("app", "token", "create", app_key, "--data-dir", str(data), "--scope", "read")
        with httpx.Client(base_url=server.url, headers=_bearer(made["token"])) as http:
            assert http.get("/api/v1/settings").status_code == 200  # cached by the server
            cli_json("app", "token", "revoke", app_key, made["token_id"], "--data-dir", str(data))
            deadline = time.monotonic() + 2.0
            while (resp := http.get("/api/v1/settings")).status_code == 200:
                assert time.monotonic() < deadline, "the revoked token still works after 2 s"
            assert _code(resp) == (401, "bad_token")
        listed = cli_json("app", "token", "list", app_key, "--data-dir", str(data))["tokens"]
        assert listed[0]["last_used_at"] is not None  # the server's record of its use is on disk
    finally:
        assert server.stop(signal.SIGTERM) == 0


def test_an_expired_token_is_401_bad_token(clocked: Running) -> None:
    r = clocked
    token = _server_token(r, "read", expires_in=60)
    with httpx.Client(base_url=r.url, headers=_bearer(token)) as http:
        assert http.get("/api/v1/settings").status_code == 200
        r.advance(61)
        refused = http.get("/api/v1/settings")
        assert _code(refused) == (401, "bad_token") and "expired" in refused.json()["error"]["message"]


def test_last_use_is_recorded_without_a_write_per_request(clocked: Running) -> None:
    r = clocked
    store = r.server.store
    token = _server_token(r, "read")

    def last_used() -> float | None:
        (info,) = r.call(store.run(store.tokens.for_app, r.app_key))
        return info.last_used_at  # type: ignore[no-any-return]

    with httpx.Client(base_url=r.url, headers=_bearer(token)) as http:
        assert last_used() is None
        assert http.get("/api/v1/settings").status_code == 200
        first = last_used()
        assert first == store.clock.now()
        r.advance(30)
        assert http.get("/api/v1/settings").status_code == 200
        assert last_used() == first  # within a minute: not written again
        r.advance(31)
        assert http.get("/api/v1/settings").status_code == 200
        assert last_used() == store.clock.now()


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[Running]:
    yield from _serve(tmp_path / "data", None, api_rate=0.01, api_burst=2)


def test_tokens_count_against_the_apps_rate_limit(limited: Running) -> None:
    r = limited
    token = _create(r, "--scope", "read")["token"]
    with httpx.Client(base_url=r.url, headers=_bearer(token)) as http:
        assert [http.get("/api/v1/settings").status_code for _ in range(2)] == [200, 200]
        over = http.get("/api/v1/settings")
        assert _code(over) == (429, "rate_limited") and int(over.headers["retry-after"]) >= 1
    # a bad token counts nothing
    with httpx.Client(base_url=r.url, headers=_bearer("mpt_" + "B" * 43)) as http:
        assert _code(http.get("/api/v1/settings")) == (401, "bad_token")
