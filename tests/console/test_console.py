"""The web console in a real headless browser against a real server (docs/console.md): sign in,
compose and send to a connected device, watch it arrive, bad input refused with nothing stored,
and the console API's own refusals (401, CSRF 403). Each page's screenshot goes to docs/screenshots."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from queue import Queue
from typing import Any, TypeVar

import httpx
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from mqttpush.device import DeviceClient
from mqttpush.store import Store
from tests.conftest import Running

T = TypeVar("T")
WAIT = 30  # a loaded CI machine; the statistics are flushed every 5 s


def until(driver: Chrome, check: Callable[[Chrome], T], timeout: float = WAIT) -> T:
    """Poll the page until ``check`` returns something truthy (the page is live: it re-renders)."""
    return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(check)


def text_of(driver: Chrome, css: str) -> str:
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].text if found and found[0].is_displayed() else ""


def open_console(driver: Chrome, r: Running) -> None:
    driver.get(r.url + "/console")
    driver.delete_all_cookies()  # another test's server had the same host
    driver.execute_script("localStorage.clear()")
    driver.get(r.url + "/console")
    until(driver, lambda d: d.find_elements(By.ID, "signin-form"))


def sign_in(driver: Chrome, r: Running, secret: str | None = None) -> None:
    open_console(driver, r)
    driver.find_element(By.ID, "signin-key").send_keys(r.app_key)
    driver.find_element(By.ID, "signin-secret").send_keys(secret if secret is not None else r.app_secret)
    driver.find_element(By.ID, "signin-submit").click()


def shoot(driver: Chrome, shots: Path, name: str) -> None:
    driver.save_screenshot(str(shots / f"{name}.png"))


def stored_messages(r: Running) -> list[dict[str, Any]]:
    store = Store(r.data_dir)
    try:
        return store.console.messages_page(r.app_key)["messages"]
    finally:
        store.close()


def test_wrong_credentials_show_an_error_and_sign_in_works(
    running: Running, browser: Chrome, shots: Path
) -> None:
    r = running
    sign_in(browser, r, secret="not-the-secret")
    error = until(browser, lambda d: text_of(d, "#signin-error"))
    assert "wrong app key, secret or token" in error and "bad_credentials" in error
    assert browser.find_element(By.ID, "nav").get_attribute("hidden") is not None
    shoot(browser, shots, "signin")

    secret = browser.find_element(By.ID, "signin-secret")
    secret.clear()
    secret.send_keys(r.app_secret)
    browser.find_element(By.ID, "signin-submit").click()
    until(browser, lambda d: d.find_elements(By.ID, "target-kind"))
    assert r.app_key in browser.find_element(By.ID, "who").text
    cookie = browser.get_cookie("mqttpush_console")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly: no script reads it
    # A script on the page (the cookie rides along) without the CSRF header is refused, nothing sent.
    status = browser.execute_async_script(
        """const done = arguments[arguments.length - 1];
        fetch("/console/api/push", {method: "POST", headers: {"Content-Type": "application/json"},
              body: JSON.stringify({target: {broadcast: true}, notification: {title: "x"}})})
          .then(async (res) => done([res.status, (await res.json()).error.code]));"""
    )
    assert status == [403, "bad_csrf"]
    assert stored_messages(r) == []

    browser.find_element(By.ID, "signout").click()
    until(browser, lambda d: d.find_elements(By.ID, "signin-form"))
    browser.get(r.url + "/console#/messages")
    until(browser, lambda d: d.find_elements(By.ID, "signin-form"))  # the session is gone server-side


def test_send_to_a_connected_device_and_watch_it_arrive(
    running: Running, browser: Chrome, shots: Path
) -> None:
    r = running
    ((device, token), (other, _)) = r.register(2)
    got: Queue[dict[str, Any]] = Queue()
    client = DeviceClient.from_server(r.url, device, token, on_message=got.put)
    client.connect()
    try:
        sign_in(browser, r)
        until(browser, lambda d: d.find_elements(By.ID, "target-kind"))
        browser.find_element(By.ID, "test-devices").send_keys(device)
        browser.find_element(By.ID, "target-devices").send_keys(other)
        browser.find_element(By.ID, "c-title").send_keys("Hello from the console")
        browser.find_element(By.ID, "c-body").send_keys("It works")
        browser.find_element(By.ID, "c-data").send_keys('{"order": 42}')
        preview = until(
            browser,
            lambda d: "Hello from the console" in text_of(d, "#preview-json") and text_of(d, "#preview-json"),
        )
        assert '"order": 42' in preview
        size = text_of(browser, "#preview-bytes")
        assert size.endswith("/ 4096 bytes") and 100 < int(size.split()[0]) < 400
        shoot(browser, shots, "compose")

        # "Send to test devices first" goes to the test list, not to the target.
        browser.find_element(By.ID, "send-test").click()
        link = until(browser, lambda d: d.find_elements(By.ID, "result-link"))[0]
        msg_id = link.text
        envelope = got.get(timeout=WAIT)
        assert (envelope["id"], envelope["title"], envelope["data"]) == (
            msg_id,
            "Hello from the console",
            {"order": 42},
        )
        link.click()

        until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f'tr.delivery[data-device="{device}"]'))
        state = until(
            browser,
            lambda d: text_of(d, f'tr.delivery[data-device="{device}"] .d-state') == "arrived",
        )
        assert state
        assert browser.find_elements(By.CSS_SELECTOR, f'tr.delivery[data-device="{other}"]') == []
        timeline = text_of(browser, f'tr.delivery[data-device="{device}"] .timeline')
        assert [w for w in timeline.split() if w in ("accepted", "published", "arrived")] == [
            "accepted",
            "published",
            "arrived",
        ]
        # The funnel chart follows the delivery: its "arrived" bar is drawn once the receipt is in.
        until(browser, lambda d: "arrived: 1" in text_of(d, "#message-counts"))
        bar = browser.find_element(By.CSS_SELECTOR, '#message-funnel rect[data-bar^="arrived"]')
        assert float(bar.get_attribute("width") or 0) > 1
        shoot(browser, shots, "message")

        # The open is a new receipt: the page (polling every 2 s) shows it without a reload.
        client.opened(msg_id)
        until(browser, lambda d: text_of(d, f'tr.delivery[data-device="{device}"] .d-state') == "opened")

        browser.get(r.url + "/console#/messages")
        row = until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f'tr[data-msg="{msg_id}"]'))[0]
        assert "Hello from the console" in row.text
        shoot(browser, shots, "messages")

        browser.get(r.url + f"/console#/devices/{device}")
        card = until(browser, lambda d: text_of(d, "#device-card"))
        assert "online" in card and msg_id in card and "Hello from the console" in card
        shoot(browser, shots, "devices")

        # The statistics are flushed every few seconds: the page (polling) draws the arrival then.
        browser.get(r.url + "/console#/stats")
        until(browser, lambda d: "arrived: 1" in text_of(d, "#stats-totals"))
        until(browser, lambda d: "opened: 1" in text_of(d, "#stats-totals"))
        line = browser.find_element(By.CSS_SELECTOR, '#stats-series path[data-series="arrived"]')
        assert line.get_attribute("d")
        shoot(browser, shots, "stats")
    finally:
        client.disconnect()


def test_a_bad_tag_expression_is_refused_inline_and_nothing_is_sent(
    running: Running, browser: Chrome, shots: Path
) -> None:
    r = running
    sign_in(browser, r)
    kind = until(browser, lambda d: d.find_elements(By.ID, "target-kind"))[0]
    Select(kind).select_by_value("tags")
    browser.find_element(By.ID, "target-tags").send_keys("beta and (android or")
    browser.find_element(By.ID, "c-title").send_keys("Never sent")
    # The live preview is the server's check of the push: the error shows while typing.
    until(browser, lambda d: "bad_tag_expr" in text_of(d, "#preview-error"))
    browser.find_element(By.ID, "send").click()
    until(browser, lambda d: "bad_tag_expr" in text_of(d, "#compose-error"))
    browser.execute_script("window.scrollTo(0, 0)")
    shoot(browser, shots, "compose-error")
    assert not browser.find_elements(By.ID, "result-link")

    # Bad JSON in data never leaves the browser.
    tags = browser.find_element(By.ID, "target-tags")
    tags.clear()
    tags.send_keys("beta")
    browser.find_element(By.ID, "c-data").send_keys("{not json")
    browser.find_element(By.ID, "send").click()
    until(browser, lambda d: "data is not valid JSON" in text_of(d, "#compose-error"))
    assert stored_messages(r) == []


def test_every_target_kind_previews_and_sends(running: Running, browser: Chrome) -> None:
    r = running
    ((device, _),) = r.register()
    store = Store(r.data_dir)
    try:
        store.devices.bind_alias(r.app_key, device, "user", "alice", replace=True)
        store.devices.update_tags(r.app_key, device, ["beta"], [])
        file_id = store.tasks.create_file(r.app_key, "devices", None)
        store.tasks.append_file_lines(file_id, 1, [device])
        store.tasks.finish_file(file_id, 1)
    finally:
        store.close()
    sign_in(browser, r)
    kind = Select(until(browser, lambda d: d.find_elements(By.ID, "target-kind"))[0])
    browser.find_element(By.ID, "c-title").send_keys("Every kind")
    fill = {
        "alias": ("target-alias", "alice"),
        "tags": ("target-tags", "beta and not churned"),
        "filter": ("target-filter", '{"platform": "android"}'),
        "file": ("target-file", file_id),
        "broadcast": None,
    }
    for value, typed in fill.items():
        kind.select_by_value(value)
        if typed is not None:
            browser.find_element(By.ID, typed[0]).send_keys(typed[1])
        until(
            browser,
            lambda d: "Every kind" in text_of(d, "#preview-json") and not text_of(d, "#preview-error"),
        )
        for old in browser.find_elements(By.ID, "result-link"):
            browser.execute_script("arguments[0].remove()", old)
        browser.find_element(By.ID, "send").click()
        until(browser, lambda d: d.find_elements(By.ID, "result-link"))
    kinds = sorted(m["kind"] for m in stored_messages(r))
    assert kinds == sorted(["alias", "tags", "filter", "file", "broadcast"])


def test_approval_queue_and_task_progress(running: Running, browser: Chrome, shots: Path) -> None:
    r = running
    (device, token), (offline, _), (untagged, _) = r.register(3)
    store = Store(r.data_dir)
    try:
        for tagged in (device, offline):
            store.devices.update_tags(r.app_key, tagged, ["beta"], [])
    finally:
        store.close()
    client = DeviceClient.from_server(r.url, device, token)
    client.connect()
    try:
        with r.client() as c:
            draft = c.push(
                {
                    "target": {"devices": [untagged]},
                    "notification": {"title": "Needs a yes"},
                    "policy": {"approval": True},
                }
            )["msg_id"]
            task = c.push({"target": {"tags": "beta"}, "notification": {"title": "A group send"}})["task_id"]
        sign_in(browser, r)
        until(browser, lambda d: d.find_elements(By.ID, "target-kind"))
        browser.get(r.url + "/console#/tasks")
        # Live progress: two targeted, the connected one arrives, the bar stands at half.
        cells = f'tr[data-task="{task}"] td'
        until(browser, lambda d: [c.text for c in d.find_elements(By.CSS_SELECTOR, cells)][5:7] == ["2", "1"])
        bar = browser.find_element(By.CSS_SELECTOR, f'tr[data-task="{task}"] .progress')
        inner = bar.find_element(By.CSS_SELECTOR, "div")
        assert abs(inner.size["width"] - bar.size["width"] / 2) <= 2
        shoot(browser, shots, "tasks")
    finally:
        client.disconnect()

    browser.get(r.url + "/console#/approval")
    row = until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, f'tr[data-msg="{draft}"]'))[0]
    assert not browser.find_elements(By.CSS_SELECTOR, f'tr[data-msg="{task[1:]}"]')  # only drafts
    shoot(browser, shots, "approval")
    row.find_element(By.CSS_SELECTOR, "input.approver").send_keys("alice")
    row.find_element(By.CSS_SELECTOR, "button.approve").click()
    until(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, f'tr[data-msg="{draft}"]'))
    with r.client() as c:
        doc = c.message(draft)
    assert (doc["state"], doc["approved_by"]) in {("approved", "alice"), ("active", "alice")}


# --- the console API without a browser ---------------------------------------------------------


def _signed_in(r: Running, http: httpx.Client) -> dict[str, Any]:
    res = http.post(
        "/console/api/session",
        json={"app_key": r.app_key, "app_secret": r.app_secret},
        headers={"Origin": r.url},
    )
    assert res.status_code == 201, res.text
    doc: dict[str, Any] = res.json()
    return doc


def test_console_api_refusals(running: Running) -> None:
    r = running
    ((device, _),) = r.register()
    push = {"target": {"devices": [device]}, "notification": {"title": "csrf"}}
    with httpx.Client(base_url=r.url) as http:
        wrong = http.post("/console/api/session", json={"app_key": r.app_key, "app_secret": "nope"})
        assert wrong.status_code == 401
        assert wrong.json()["error"]["code"] == "bad_credentials"
        anonymous = http.get("/console/api/messages")
        assert (anonymous.status_code, anonymous.json()["error"]["code"]) == (401, "no_session")

        session = _signed_in(r, http)
        cookie = http.cookies.get("mqttpush_console")
        assert cookie and cookie not in str(session)

        no_token = http.post("/console/api/push", json=push, headers={"Origin": r.url})
        assert (no_token.status_code, no_token.json()["error"]["code"]) == (403, "bad_csrf")
        wrong_token = http.post(
            "/console/api/push", json=push, headers={"Origin": r.url, "X-CSRF-Token": "x" * 43}
        )
        assert wrong_token.status_code == 403
        other_site = http.post(
            "/console/api/push",
            json=push,
            headers={"Origin": "http://evil.example", "X-CSRF-Token": session["csrf_token"]},
        )
        assert (other_site.status_code, other_site.json()["error"]["code"]) == (403, "bad_origin")
        assert stored_messages(r) == []

        ok = http.post(
            "/console/api/push", json=push, headers={"Origin": r.url, "X-CSRF-Token": session["csrf_token"]}
        )
        assert ok.status_code == 202
        assert [m["msg_id"] for m in stored_messages(r)] == [ok.json()["msg_id"]]

        bad_range = http.get("/console/api/messages", params={"since": "20", "until": "10"})
        assert (bad_range.status_code, bad_range.json()["error"]["code"]) == (422, "bad_range")
        bad_cursor = http.get("/console/api/messages", params={"cursor": "yesterday"})
        assert (bad_cursor.status_code, bad_cursor.json()["error"]["code"]) == (422, "bad_cursor")

        out = http.request("DELETE", "/console/api/session", headers={"X-CSRF-Token": session["csrf_token"]})
        assert out.status_code == 200
        http.cookies.set("mqttpush_console", cookie, domain="127.0.0.1", path="/console")
        after = http.get("/console/api/session")
        assert (after.status_code, after.json()["error"]["code"]) == (401, "no_session")


def test_sign_in_with_an_admin_access_token(running: Running) -> None:
    r = running
    store = Store(r.data_dir)
    try:
        admin = store.tokens.create(r.app_key, "admin").token
        push_only = store.tokens.create(r.app_key, "push").token
    finally:
        store.close()
    with httpx.Client(base_url=r.url) as http:
        small = http.post("/console/api/session", json={"token": push_only})
        assert (small.status_code, small.json()["error"]["code"]) == (401, "bad_credentials")
        assert "admin" in small.json()["error"]["message"]
        unknown = http.post("/console/api/session", json={"token": "mpt_" + "x" * 43})
        assert (unknown.status_code, unknown.json()["error"]["code"]) == (401, "bad_credentials")

        signed = http.post("/console/api/session", json={"token": admin})
        assert signed.status_code == 201
        assert (signed.json()["app_key"], signed.json()["via"]) == (r.app_key, "token")
        assert http.get("/console/api/messages").status_code == 200

        store = Store(r.data_dir)
        try:
            store.tokens.revoke(r.app_key, admin)
        finally:
            store.close()
        revoked = http.get("/console/api/messages")  # a revoked token ends its console sessions
        assert (revoked.status_code, revoked.json()["error"]["code"]) == (401, "no_session")


def test_the_cookie_is_secure_behind_https(running: Running) -> None:
    """Behind a TLS-terminating proxy (X-Forwarded-Proto from a trusted address) the cookie is Secure."""
    r = running
    creds = {"app_key": r.app_key, "app_secret": r.app_secret}
    with httpx.Client(base_url=r.url) as http:
        plain = http.post("/console/api/session", json=creds)
        tls = http.post("/console/api/session", json=creds, headers={"X-Forwarded-Proto": "https"})
    assert plain.status_code == tls.status_code == 201
    plain_cookie, tls_cookie = plain.headers["set-cookie"].lower(), tls.headers["set-cookie"].lower()
    for cookie in (plain_cookie, tls_cookie):
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie
    assert "secure" not in plain_cookie and "secure" in tls_cookie


def test_console_pages_list_with_keyset_cursors(running: Running) -> None:
    r = running
    devices = [d for d, _ in r.register(3)]
    with r.client() as c:
        sent = [
            c.push({"target": {"devices": devices}, "notification": {"title": f"n{i}"}})["msg_id"]
            for i in range(5)
        ]
    with httpx.Client(base_url=r.url) as http:
        _signed_in(r, http)
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
            page = http.get("/console/api/messages", params=params).json()
            seen += [m["msg_id"] for m in page["messages"]]
            cursor = page["next"]
            if cursor is None:
                break
        assert seen == sorted(sent, reverse=True)
        rows: list[str] = []
        cursor = None
        while True:
            params = {"limit": "1"} | ({"cursor": cursor} if cursor else {})
            page = http.get(f"/console/api/messages/{sent[0]}/deliveries", params=params).json()
            rows += [d["device_id"] for d in page["deliveries"]]
            assert all(d["history"] and d["history"][0]["state"] == "accepted" for d in page["deliveries"])
            cursor = page["next"]
            if cursor is None:
                break
        assert rows == sorted(devices)
        other = http.get("/console/api/messages/01nosuchmessage0000000000")
        assert (other.status_code, other.json()["error"]["code"]) == (404, "unknown_message")


def test_assets_are_served_from_the_package(running: Running) -> None:
    with httpx.Client(base_url=running.url) as http:
        page = http.get("/console")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        for name in ("app.js", "charts.js", "console.css"):
            asset = http.get(f"/console/static/{name}")
            assert asset.status_code == 200 and asset.content
        assert http.get("/console/static/nope.js").status_code == 404
        assert http.get("/console/static/..%2Fconsole.py").status_code == 404
