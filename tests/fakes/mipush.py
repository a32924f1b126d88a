"""A local Xiaomi MiPush: ``POST /v3/message/regid``.

Serve it with ``tests.fakes.tls.tls_server(fake.app)``. It checks what Xiaomi checks (the
``Authorization: key=<app_secret>`` header, the package name, the notification title/description
rules, the payload size) and answers with MiPush's documented JSON and error codes. Script it:

- ``invalid_tokens``: sends to these regids answer 20301 "No valid targets!";
- ``bad_regids``: these regids are accepted but listed in ``data.bad_regids`` (code 0);
- ``throttle_once``: the next send to each of these regids answers 10027 (calls too frequent);
- ``reject_auth_once``: the next send answers 22000 "Invalid application secret!".

``messages`` holds every accepted form (a ``dict[str, str]``); ``http_versions`` what each request used.
"""

from __future__ import annotations

import itertools
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

SEND_PATH = "/v3/message/regid"


class FakeMiPush:
    def __init__(
        self, *, app_secret: str = "mipush-app-secret==", package_name: str = "com.example.push"
    ) -> None:
        self.app_secret = app_secret
        self.package_name = package_name
        self.invalid_tokens: set[str] = set()
        self.bad_regids: set[str] = set()
        self.throttle_once: set[str] = set()
        self.reject_auth_once = False
        self.messages: list[dict[str, str]] = []
        self.http_versions: list[str] = []
        self._ids = itertools.count(1)
        self.app = Starlette(routes=[Route("/{path:path}", self._route, methods=["POST"])])

    def vendor_config(self, base_url: str, ca_file: str) -> dict[str, str]:
        """The VENDORS.json ``mipush`` object that points at this fake."""
        return {
            "app_secret": self.app_secret,
            "package_name": self.package_name,
            "base_url": base_url,
            "ca_file": ca_file,
        }

    async def _route(self, request: Request) -> Response:
        self.http_versions.append(request.scope.get("http_version", ""))
        # Read the whole body first: hypercorn's HTTP/2 stream breaks on DATA after the answer.
        raw = await request.body()
        if request.url.path != SEND_PATH:
            return JSONResponse(
                {"result": "error", "code": 10012, "description": "非法请求"}, status_code=404
            )
        if request.headers.get("authorization") != f"key={self.app_secret}" or self.reject_auth_once:
            self.reject_auth_once = False
            return self._error(22000, "非法应用", "Invalid application secret!")
        form = {k: v[0] for k, v in parse_qs(raw.decode(), keep_blank_values=True).items()}
        problem = self._check(form)
        if problem is not None:
            return self._error(*problem)
        regid = form["registration_id"]
        if regid in self.invalid_tokens:
            return self._error(20301, "发送消息失败", "No valid targets!")
        if regid in self.throttle_once:
            self.throttle_once.discard(regid)
            return self._error(10027, "应用的API调用太频繁", "Too many requests")
        self.messages.append(form)
        data: dict[str, Any] = {"id": f"slm{next(self._ids):020d}"}
        if regid in self.bad_regids:
            data["bad_regids"] = regid
        return JSONResponse(
            {
                "result": "ok",
                "trace_id": f"Xlm{next(self._ids):020d}",
                "code": 0,
                "data": data,
                "description": "成功",
                "info": "Received push messages for 1 REGID",
            }
        )

    def _check(self, form: dict[str, str]) -> tuple[int, str, str] | None:
        for key in ("registration_id", "restricted_package_name", "payload", "pass_through"):
            if not form.get(key):
                return (21305, "缺少必要的参数", f"missing {key}")
        if form["restricted_package_name"] != self.package_name:
            return (22022, "应用程序package name不合法", "Invalid package name")
        if form["pass_through"] not in ("0", "1"):
            return (10017, "参数值非法", "pass_through must be 0 or 1")
        if len(form["payload"].encode()) > 4096:
            return (65009, "消息内容太长", "payload is too long")
        if form["pass_through"] == "0":
            title, description = form.get("title", ""), form.get("description", "")
            if not title.strip() or len(title) >= 50:
                return (10017, "参数值非法", "title must be non-blank and shorter than 50")
            if not description.strip() or len(description) >= 128:
                return (10017, "参数值非法", "description must be non-blank and shorter than 128")
        if not form.get("time_to_live", "0").isdigit():
            return (10017, "参数值非法", "time_to_live must be milliseconds")
        return None

    def _error(self, code: int, description: str, reason: str) -> Response:
        return JSONResponse(
            {
                "result": "error",
                "reason": reason,
                "trace_id": f"Xcm{next(self._ids):020d}",
                "code": code,
                "description": description,
            }
        )
