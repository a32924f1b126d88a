"""The server-side client of the HTTP API (what the CLI and app servers use)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from mqttpush.api import signing
from mqttpush.errors import ClientError


class PushClient:
    """Signed calls to one mqttpush server: ``PushClient(url, app_key, app_secret)``."""

    def __init__(self, url: str, app_key: str, app_secret: str | None = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.app_key = app_key
        self._secret = app_secret
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

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
        """``POST /api/v1/push`` with a request of DESIGN §3.1 → ``{"msg_id"}``."""
        result: dict[str, Any] = self._call("POST", "/api/v1/push", request)
        return result

    def message(self, msg_id: str) -> dict[str, Any]:
        """``GET /api/v1/messages/{msg_id}`` → ``{"msg_id", "deliveries": [...]}``."""
        result: dict[str, Any] = self._call("GET", f"/api/v1/messages/{msg_id}")
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
