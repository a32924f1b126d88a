"""A local Huawei Push Kit: the OAuth token endpoint and ``/v1/{app_id}/messages:send``.

Serve it with ``tests.fakes.tls.tls_server(fake.app)``. It checks what Huawei checks (client
credentials, the Bearer access token, the app id in the path, the message structure and its 4096-byte
limit) and answers with Push Kit's documented result codes. Script it per test:

- ``invalid_tokens``: sends to these tokens answer 80300007 (all tokens invalid);
- ``throttle_once``: the next send to each of these tokens answers HTTP 503 (traffic control);
- ``expire_auth_once``: the next send answers 80200003 and revokes the token it carried;
- ``hold``: when set to an unset ``asyncio.Event``, sends wait for it (to observe concurrency).

``messages`` holds every accepted ``message`` object; ``token_requests`` counts OAuth grants.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import secrets
import time
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

TOKEN_PATH = "/oauth2/v3/token"
_SEND_PATH = re.compile(r"^/v1/(?P<app_id>[^/]+)/messages:send$")
_TTL = re.compile(r"^\d+(\.\d{1,9})?[sS]?$")


class FakeHms:
    def __init__(
        self,
        *,
        app_id: str = "104012345",
        client_id: str = "104012345",
        client_secret: str = "hms-client-secret",
        token_lifetime: int = 3600,
    ) -> None:
        self.app_id = app_id
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_lifetime = token_lifetime
        self.invalid_tokens: set[str] = set()
        self.throttle_once: set[str] = set()
        self.expire_auth_once = False
        self.hold: asyncio.Event | None = None
        self.messages: list[dict[str, Any]] = []
        self.http_versions: list[str] = []
        self.token_requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._access_tokens: dict[str, float] = {}
        self._request_ids = itertools.count(1)
        self._in_flight_changed = asyncio.Condition()
        self.app = Starlette(routes=[Route("/{path:path}", self._route, methods=["POST"])])

    def vendor_config(self, base_url: str, ca_file: str) -> dict[str, str]:
        """The VENDORS.json ``hms`` object that points at this fake."""
        return {
            "app_id": self.app_id,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "base_url": base_url,
            "token_url": base_url + TOKEN_PATH,
            "ca_file": ca_file,
        }

    async def wait_in_flight(self, count: int) -> None:
        """Return once ``count`` sends are being held at the same time."""
        async with self._in_flight_changed:
            await self._in_flight_changed.wait_for(lambda: self.in_flight >= count)

    async def _route(self, request: Request) -> Response:
        self.http_versions.append(request.scope.get("http_version", ""))
        # Read the whole body before answering: hypercorn's HTTP/2 stream breaks (KeyError on the
        # stream id) when DATA frames arrive for a request that was already answered.
        await request.body()
        if request.url.path == TOKEN_PATH:
            return await self._token(request)
        match = _SEND_PATH.match(request.url.path)
        if match is None:
            return JSONResponse({"code": "80100001", "msg": "unknown path"}, status_code=404)
        return await self._send(request, match.group("app_id"))

    async def _token(self, request: Request) -> Response:
        self.token_requests += 1
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        if form.get("grant_type") != "client_credentials":
            return JSONResponse(
                {"error": 1102, "error_description": "unsupported grant_type"}, status_code=400
            )
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return JSONResponse(
                {"error": 1101, "error_description": "invalid client", "sub_error": 20152}, status_code=400
            )
        token = "CV" + secrets.token_urlsafe(48) + "/+="
        self._access_tokens[token] = time.time() + self.token_lifetime
        return JSONResponse(
            {"access_token": token, "expires_in": self.token_lifetime, "token_type": "Bearer"}
        )

    async def _send(self, request: Request, app_id: str) -> Response:
        auth = request.headers.get("authorization", "")
        access = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""
        if app_id != self.app_id or self._access_tokens.get(access, 0.0) < time.time():
            return self._answer("80200001", "Oauth authentication error", status=401)
        if self.expire_auth_once:
            self.expire_auth_once = False
            del self._access_tokens[access]
            return self._answer("80200003", "Oauth token expired", status=401)
        try:
            body = json.loads(await request.body())
        except ValueError:
            return self._answer("80100003", "Incorrect message structure", status=400)
        message = body.get("message") if isinstance(body, dict) else None
        problem = _check_message(message)
        if problem is not None:
            return self._answer(*problem, status=400)
        assert isinstance(message, dict)
        content = {k: v for k, v in message.items() if k != "token"}
        if len(json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()) > 4096:
            return self._answer("80300008", "The message body size exceeds the default value", status=400)
        token = message["token"][0]
        if token in self.invalid_tokens:
            return self._answer("80300007", "All the tokens are invalid", status=400)
        if token in self.throttle_once:
            self.throttle_once.discard(token)
            return JSONResponse({"msg": "traffic control"}, status_code=503, headers={"Retry-After": "3"})
        await self._held()
        self.messages.append(message)
        return self._answer("80000000", "Success")

    async def _held(self) -> None:
        if self.hold is None:
            return
        async with self._in_flight_changed:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self._in_flight_changed.notify_all()
        try:
            await self.hold.wait()
        finally:
            self.in_flight -= 1

    def _answer(self, code: str, msg: str, *, status: int = 200) -> Response:
        request_id = f"{int(time.time() * 1000)}{next(self._request_ids):06d}"
        return JSONResponse({"code": code, "msg": msg, "requestId": request_id}, status_code=status)


def _check_message(message: Any) -> tuple[str, str] | None:
    """What Push Kit refuses with 80100001/80100003/80300010 before it looks at tokens."""
    if not isinstance(message, dict):
        return ("80100003", "Incorrect message structure")
    tokens = message.get("token")
    if not isinstance(tokens, list) or not 1 <= len(tokens) <= 1000:
        return ("80300010", "The number of tokens in the message body exceeds the default value")
    data = message.get("data")
    if data is not None and not isinstance(data, str):
        return ("80100001", "message.data must be a string")
    android = message.get("android", {})
    if not isinstance(android, dict):
        return ("80100003", "Incorrect message structure")
    if android.get("urgency", "NORMAL") not in ("HIGH", "NORMAL"):
        return ("80100001", "Illegal urgency")
    ttl = android.get("ttl", "86400s")
    if not isinstance(ttl, str) or not _TTL.match(ttl) or float(ttl.rstrip("sS")) > 15 * 24 * 3600:
        return ("80100001", "Illegal ttl")
    collapse_key = android.get("collapse_key", -1)
    if not isinstance(collapse_key, int) or not -1 <= collapse_key <= 100:
        return ("80100013", "Illegal collapse_key")
    notification = android.get("notification")
    if notification is not None:
        if not isinstance(notification, dict) or not isinstance(notification.get("click_action"), dict):
            return ("80100003", "click_action is mandatory for a notification")
        if notification["click_action"].get("type") not in (1, 2, 3, 4):
            return ("80100001", "Illegal click_action type")
        if not notification.get("default_sound") and not notification.get("sound"):
            return ("80100001", "sound is mandatory when default_sound is false")
    elif data is None:
        return ("80100003", "a message needs data or a notification")
    return None
