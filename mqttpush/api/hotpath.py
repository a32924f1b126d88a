"""The hot path (issue 14, docs/performance.md): the push routes answered straight from the ASGI
scope, in front of FastAPI.

``POST /api/v1/push``, ``/api/v1/push/batch`` and the quick form are what a busy server is asked
most. Through FastAPI each one crossed the middleware stack, the router, dependency handling and a
Starlette ``Request`` before its few lines of work: ~40 % of the event loop's time under load. Here
such a request goes straight to its :data:`Handler`, the same function its FastAPI route calls (the
route stays: it is the OpenAPI document's entry, and the reference the tests compare with), so the
guard, the parsing and the answers are one piece of code, and the request is counted in the same
HTTP metrics. Every other request goes on to FastAPI untouched.
"""

from __future__ import annotations

import posixpath
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from mqttpush.api.common import Incoming, crash_response, error_response
from mqttpush.api.metrics import HttpCounts, counted
from mqttpush.errors import MqttPushError

Handler = Callable[[Incoming, dict[str, Any]], Awaitable[JSONResponse]]
"""A hot route's work: the request and its path parameters in, the answer out; refusals are raised
as :class:`MqttPushError`, as in any route."""


class Call:
    """A request as :class:`Incoming` reads it: the ASGI scope, its headers and ``receive``."""

    __slots__ = ("_receive", "headers", "method", "scope")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self.method: str = scope["method"]
        self.headers = Headers(scope=scope)
        self._receive = receive

    async def _chunk(self) -> tuple[bytes, bool]:
        message = await self._receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        return message.get("body", b""), message.get("more_body", False)

    async def body(self) -> bytes:
        chunk, more = await self._chunk()
        if not more:
            return chunk
        chunks = [chunk]
        while more:
            chunk, more = await self._chunk()
            chunks.append(chunk)
        return b"".join(chunks)

    async def stream(self) -> AsyncGenerator[bytes, None]:
        more = True
        while more:
            chunk, more = await self._chunk()
            if chunk:
                yield chunk


@dataclass(frozen=True, slots=True)
class _HotRoute:
    route: Route
    handler: Handler
    before: tuple[BaseRoute, ...]
    """Routes FastAPI tries first that might take the same requests: when one does, FastAPI answers."""


def _may_take(earlier: BaseRoute, hot: Route) -> bool:
    """Whether ``earlier`` might match a request ``hot`` matches (when unsure: yes)."""
    path = getattr(earlier, "path", None)
    if not isinstance(path, str):
        return True
    literal, hot_literal = path.split("{", 1)[0], hot.path.split("{", 1)[0]
    if not (literal.startswith(hot_literal) or hot_literal.startswith(literal)):
        return False
    if isinstance(earlier, Route) and "{" not in path:  # a fixed path: only that one
        return hot.path_regex.match(path) is not None
    return True


class HotPath:
    """The hot routes of one app, in the router's order; an ASGI app for the requests :meth:`takes`."""

    def __init__(
        self, routes: list[BaseRoute], handlers: dict[Callable[..., Any], Handler], counts: HttpCounts | None
    ) -> None:
        hot: list[_HotRoute] = []
        for i, route in enumerate(routes):
            handler = handlers.get(getattr(route, "endpoint", None))  # type: ignore[arg-type]
            if handler is not None and isinstance(route, Route) and route.methods == {"POST"}:
                before = tuple(r for r in routes[:i] if _may_take(r, route))
                hot.append(_HotRoute(route, handler, before))
        self._routes = tuple(hot)
        self._handlers = {h.route.endpoint: h.handler for h in hot}
        # A fixed path is looked up; the others are matched in order, when the path starts as
        # they all do (whole segments: a URL path's).
        self._fixed = {h.route.path: h for h in hot if not h.route.param_convertors}
        self._parametric = tuple(h for h in hot if h.route.param_convertors)
        self._prefix = posixpath.commonpath(
            [h.route.path.split("{", 1)[0] for h in self._parametric] or ["/"]
        )
        self._app: ASGIApp = counted(self._answer, counts) if counts is not None else self._answer

    def takes(self, scope: Scope) -> bool:
        """True if FastAPI would give this request to a hot route; the scope then has the route
        and its path parameters, as FastAPI's router sets them."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return False
        path = scope["path"]
        hot = self._fixed.get(path)
        if hot is not None:
            child: Scope = {"endpoint": hot.route.endpoint, "path_params": {}}
        elif self._parametric and path.startswith(self._prefix):
            for hot in self._parametric:
                # Starlette's matching, without FastAPI's per-request route-context lookup
                match, child = Route.matches(hot.route, scope)
                if match is Match.FULL:
                    break
            else:
                return False
        else:
            return False
        if hot.before and any(r.matches(scope)[0] is Match.FULL for r in hot.before):
            return False
        child["route"] = hot.route
        scope.update(child)
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self._handlers[scope["endpoint"]]
        try:
            response = await handler(Call(scope, receive), scope["path_params"])
        except MqttPushError as exc:
            response = error_response(exc)
        except Exception:
            # As FastAPI's stack does it: the error answer, then the exception on to the server.
            await crash_response(scope["path"])(scope, receive, send)
            raise
        await response(scope, receive, send)


class HotApi(FastAPI):
    """FastAPI with a :class:`HotPath` in front. A route module marks a route with :meth:`hot`
    (its endpoint and the handler the endpoint calls); ``create_api`` calls :meth:`open_hot_path`
    once every route is declared."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._hot_handlers: dict[Callable[..., Any], Handler] = {}
        self.hot_path: HotPath | None = None

    def hot(self, endpoint: Callable[..., Any], handler: Handler) -> None:
        self._hot_handlers[endpoint] = handler

    def open_hot_path(self, counts: HttpCounts | None) -> None:
        self.hot_path = HotPath(self.router.routes, self._hot_handlers, counts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hot = self.hot_path
        if hot is not None and not self.root_path and hot.takes(scope):
            await hot(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)
