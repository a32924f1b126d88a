"""The server-side client of the HTTP API (what the CLI and app servers use)."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from mqttpush import signing
from mqttpush.errors import ClientError


class PushClient:
    """Signed calls to one mqttpush server: ``PushClient(url, app_key, app_secret)``."""

    def __init__(self, url: str, app_key: str, app_secret: str | None = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.app_key = app_key
        self._secret = app_secret
        # httpcore writes a request's head and body separately; without TCP_NODELAY, Nagle holds
        # the body until the server's delayed ACK (40 ms on Linux): every call took ~40 ms.
        transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PushClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: Any = None, *, signed: bool = True) -> Any:
        raw = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"} if raw else {}
        if signed:
            if not self._secret:
                raise ClientError("this call needs the app secret (--app-secret)", code="missing_secret")
            headers |= signing.signed_headers(self.app_key, self._secret, method, path, raw, time.time())
        else:
            headers[signing.KEY_HEADER] = self.app_key
        try:
            resp = self._http.request(method, path, content=raw, headers=headers)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach {self.url}: {exc}", code="unreachable") from None
        return _result(resp)

    def register_device(self, install_id: str, platform: str, **attrs: str | None) -> dict[str, Any]:
        """``POST /api/v1/devices`` → ``{"device_id", "device_token", ...}``."""
        body = {"install_id": install_id, "platform": platform} | {
            k: v for k, v in attrs.items() if v is not None
        }
        result: dict[str, Any] = self._call("POST", "/api/v1/devices", body, signed=False)
        return result

    def push(self, request: dict[str, Any]) -> dict[str, Any]:
        """``POST /api/v1/push`` with a request as docs/api.md describes → ``{"msg_id"}``."""
        result: dict[str, Any] = self._call("POST", "/api/v1/push", request)
        return result

    def message(self, msg_id: str) -> dict[str, Any]:
        """``GET /api/v1/messages/{msg_id}`` → ``{"msg_id", "deliveries": [...]}``."""
        result: dict[str, Any] = self._call("GET", f"/api/v1/messages/{msg_id}")
        return result

    def messages(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        query = f"/api/v1/messages?limit={limit}" + (f"&state={state}" if state else "")
        result: list[dict[str, Any]] = self._call("GET", query)["messages"]
        return result

    def cancel(self, msg_id: str) -> dict[str, Any]:
        """Stop a message not yet (fully) sent: draft, scheduled, series, running task."""
        result: dict[str, Any] = self._call("DELETE", f"/api/v1/messages/{msg_id}")
        return result

    def approve(self, msg_id: str, approver: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            "POST", f"/api/v1/messages/{msg_id}/approve", {"approver": approver}
        )
        return result

    def recall(self, msg_id: str) -> dict[str, Any]:
        """Take a sent message back from the devices that have not opened it."""
        result: dict[str, Any] = self._call("POST", f"/api/v1/messages/{msg_id}/recall")
        return result

    def set_vendor_token(
        self,
        device_id: str,
        vendor: str,
        token: str | None = None,
        subscription: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"vendor": vendor}
        if token is not None:
            body["token"] = token
        if subscription is not None:
            body["subscription"] = subscription
        result: dict[str, Any] = self._call("PUT", f"/api/v1/devices/{device_id}/tokens", body)
        return result

    def vendors(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/api/v1/vendors")
        return result

    def settings(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/api/v1/settings")
        return result

    def put_settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call("PUT", "/api/v1/settings", settings)
        return result

    def push_batch(self, request: dict[str, Any]) -> list[str]:
        """``POST /api/v1/push/batch`` → one msg_id per item, in order."""
        result: list[str] = self._call("POST", "/api/v1/push/batch", request)["msg_ids"]
        return result

    def task(self, task_id: str) -> dict[str, Any]:
        """``GET /api/v1/tasks/{task_id}`` → progress of a group send."""
        result: dict[str, Any] = self._call("GET", f"/api/v1/tasks/{task_id}")
        return result

    def cancel_task(self, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("DELETE", f"/api/v1/tasks/{task_id}")
        return result

    def stats(
        self,
        since: str | float | None = None,
        until: str | float | None = None,
        by: str | list[str] | None = None,
        step: str | None = None,
    ) -> dict[str, Any]:
        """``GET /api/v1/stats`` → ``{"since", "until", "step", "by", "series", "totals"}``
        (docs/statistics.md); times as unix seconds, ISO 8601 or relative (``24h``)."""
        query = {"since": since, "until": until, "by": ",".join(by) if isinstance(by, list) else by, "step": step}
        params = urlencode({k: str(v) for k, v in query.items() if v is not None and v != ""})
        result: dict[str, Any] = self._call("GET", "/api/v1/stats" + (f"?{params}" if params else ""))
        return result

    def funnel(self, msg_id: str | None = None, task_id: str | None = None) -> dict[str, Any]:
        """``GET /api/v1/messages/{msg_id}/funnel`` or ``/api/v1/tasks/{task_id}/funnel``."""
        path = f"/api/v1/tasks/{task_id}/funnel" if task_id else f"/api/v1/messages/{msg_id}/funnel"
        result: dict[str, Any] = self._call("GET", path)
        return result

    def upload_file(
        self, path: str | Path, kind: str = "devices", alias_type: str = "user"
    ) -> dict[str, Any]:
        """``POST /api/v1/files``: stream a file of ids (or aliases), one a line → ``{"file_id", "lines"}``."""
        if not self._secret:
            raise ClientError("this call needs the app secret (--app-secret)", code="missing_secret")
        file = Path(path)
        digest = hashlib.sha256()
        with file.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 16), b""):
                digest.update(chunk)
        query = f"/api/v1/files?kind={kind}" + (f"&alias_type={alias_type}" if kind == "aliases" else "")
        headers = signing.signed_headers_digest(
            self.app_key, self._secret, "POST", query, digest.hexdigest(), time.time()
        )

        def chunks() -> Iterator[bytes]:
            with file.open("rb") as f:
                yield from iter(lambda: f.read(1 << 16), b"")

        try:
            resp = self._http.post(query, content=chunks(), headers=headers)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach {self.url}: {exc}", code="unreachable") from None
        result: dict[str, Any] = _result(resp)
        return result

    def put_template(self, name: str, template: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call("PUT", f"/api/v1/templates/{name}", template)
        return result

    def templates(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/api/v1/templates")["templates"]
        return result

    def device(self, device_id: str) -> dict[str, Any]:
        """A device with its attributes, tags and aliases."""
        result: dict[str, Any] = self._call("GET", f"/api/v1/devices/{device_id}")
        return result

    def update_device(self, device_id: str, **attrs: Any) -> dict[str, Any]:
        """Change ``test``, ``app_version``, ``channel`` or ``locale`` of a device."""
        result: dict[str, Any] = self._call("PATCH", f"/api/v1/devices/{device_id}", attrs)
        return result

    def update_tags(self, device_id: str, add: list[str] = [], remove: list[str] = []) -> list[str]:  # noqa: B006
        result: list[str] = self._call(
            "POST", f"/api/v1/devices/{device_id}/tags", {"add": list(add), "remove": list(remove)}
        )["tags"]
        return result

    def bind_alias(
        self, device_id: str, alias: str, alias_type: str = "user", mode: str = "set"
    ) -> list[Any]:
        body = {"alias": alias, "alias_type": alias_type, "mode": mode}
        result: list[Any] = self._call("POST", f"/api/v1/devices/{device_id}/aliases", body)["aliases"]
        return result

    def unbind_alias(self, device_id: str, alias: str, alias_type: str = "user") -> list[Any]:
        path = f"/api/v1/devices/{device_id}/aliases/{quote(alias_type, safe='')}/{quote(alias, safe='')}"
        result: list[Any] = self._call("DELETE", path)["aliases"]
        return result

    def add_webhook(self, url: str, events: list[str]) -> dict[str, Any]:
        """``POST /api/v1/webhooks`` → ``{"webhook_id", "secret"}`` (docs/webhooks.md)."""
        result: dict[str, Any] = self._call("POST", "/api/v1/webhooks", {"url": url, "events": list(events)})
        return result

    def list_webhooks(self) -> list[dict[str, Any]]:
        """The app's webhooks with their health (last success, last error, backlog, state)."""
        result: list[dict[str, Any]] = self._call("GET", "/api/v1/webhooks")["webhooks"]
        return result

    def remove_webhook(self, webhook_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("DELETE", f"/api/v1/webhooks/{quote(webhook_id, safe='')}")
        return result


def device_info(url: str, device_token: str, timeout: float = 10.0) -> dict[str, Any]:
    """``GET /api/v1/devices/me`` with the device's own token: app key, MQTT URL and topics."""
    try:
        resp = httpx.get(
            url.rstrip("/") + "/api/v1/devices/me",
            headers={"Authorization": f"Bearer {device_token}"},
            timeout=timeout,
        )
    except httpx.HTTPError as exc:
        raise ClientError(f"cannot reach {url}: {exc}", code="unreachable") from None
    result: dict[str, Any] = _result(resp)
    return result


def device_call(
    url: str, device_token: str, method: str, path: str, body: Any = None, timeout: float = 10.0
) -> Any:
    """A device route (``/api/v1/devices/me/…``) with the device's own token; errors as ClientError."""
    try:
        resp = httpx.request(
            method,
            url.rstrip("/") + path,
            headers={"Authorization": f"Bearer {device_token}"},
            json=body,
            timeout=timeout,
        )
    except httpx.HTTPError as exc:
        raise ClientError(f"cannot reach {url}: {exc}", code="unreachable") from None
    return _result(resp)


def _result(resp: httpx.Response) -> Any:
    try:
        doc = resp.json()
    except ValueError:
        doc = None
    if resp.is_success:
        return doc
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict):
        raise ClientError(str(err.get("message")), code=str(err.get("code")), status=resp.status_code)
    raise ClientError(
        f"HTTP {resp.status_code}: {resp.text[:200]}", code="http_error", status=resp.status_code
    )
