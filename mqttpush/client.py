"""The server-side clients of the HTTP API: :class:`PushClient` (blocking) and
:class:`AsyncPushClient` (asyncio), for app servers, scripts and the CLI (docs/api.md, "Clients").

Both are one set of route methods (:class:`Routes`) over one exchange: a route method describes
its request as a :class:`Call`; :class:`Attempts` builds each attempt (signed afresh, or with the
app token) and reads each answer: the result, a typed :class:`~mqttpush.errors.ClientError`, or how
long to wait before trying again. The two clients differ only in how they send and wait.

Retries (:class:`RetryPolicy`): ``429`` and ``503`` answers mean the server did nothing, so every
call is sent again after the answer's ``Retry-After`` (else a jittered backoff), at most
``retries`` more times and ``max_wait`` seconds of waiting in all. A connection that fails or
breaks is retried only for a call that may safely run twice: ``GET``, ``PUT`` and ``DELETE``,
device registration, and pushes that carry a ``biz_id`` (the server answers a repeat with the first
message's id). Any other call whose answer was lost raises ``no_answer``: it may have been carried
out; one that could not connect raises ``unreachable``.
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import json
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote, urlencode

import httpx

from mqttpush import signing
from mqttpush.errors import ClientError
from mqttpush.retry_after import retry_after

DEFAULT_RETRIES = 4
"""Attempts after the first: at most 5 in all."""
DEFAULT_MAX_WAIT = 60.0
"""Seconds a call may spend waiting between its attempts, in all."""
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 8.0
RETRY_STATUSES = frozenset({429, 503})
"""Answers that say nothing was done (rate_limited, overloaded, store_unavailable, …)."""
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)
_CHUNK = 1 << 16


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a call is tried again (see the module's docstring)."""

    retries: int = DEFAULT_RETRIES
    max_wait: float = DEFAULT_MAX_WAIT

    def __post_init__(self) -> None:
        if self.retries < 0 or not self.max_wait >= 0:
            raise ValueError("retries and max_wait must be >= 0")

    def backoff(self, attempt: int) -> float:
        """Seconds before attempt ``attempt + 1`` when the server named none: doubling from
        ``FIRST_BACKOFF`` up to ``MAX_BACKOFF``, the upper half jittered."""
        return min(MAX_BACKOFF, FIRST_BACKOFF * 2.0 ** min(attempt - 1, 16)) * random.uniform(0.5, 1.0)


@dataclass(frozen=True)
class Call:
    """One API call as data: what to send, how to authenticate it, what to return."""

    method: str
    path: str
    """Path and query, exactly as sent and signed."""
    body: bytes = b""
    headers: Mapping[str, str | bytes] = field(default_factory=dict)
    auth: Literal["app", "key"] = "app"
    """``app``: the signature or the app token; ``key``: ``X-MQTTPush-Key`` only (registration)."""
    member: str | None = None
    """Return this member of the answer's JSON object rather than the whole of it."""
    replayable: bool = False
    """May be sent again after a connection broke: running it twice does what running it once does."""
    body_sha256: str | None = None
    stream: Callable[[], Any] | None = None
    """For a streamed body: makes the chunks anew for each attempt (``body_sha256`` is their hash)."""


def json_call(
    method: str,
    path: str,
    body: Any = None,
    *,
    member: str | None = None,
    replayable: bool = False,
    auth: Literal["app", "key"] = "app",
) -> Call:
    """A call with a JSON body (or none); replayable if its method is idempotent or ``replayable``."""
    raw = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
    return Call(
        method,
        path,
        raw,
        {"Content-Type": "application/json"} if raw else {},
        auth,
        member,
        replayable or method in IDEMPOTENT_METHODS,
    )


@dataclass(frozen=True)
class Credentials:
    """An app's credentials: key and secret (signing, the default) or an app access token."""

    app_key: str | None
    app_secret: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    def headers(self, call: Call, now: float) -> dict[str, str]:
        """The authentication headers of one attempt of ``call`` made at ``now`` (a fresh nonce)."""
        if call.auth == "key":
            if not self.app_key:
                raise ClientError("this call needs the app key (--app-key)", code="missing_app_key")
            return {signing.KEY_HEADER: self.app_key}
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        if not self.app_key or not self.app_secret:
            raise ClientError(
                "this call needs the app key and secret (--app-key, --app-secret) or an app token (--token)",
                code="missing_secret",
            )
        digest = call.body_sha256 or hashlib.sha256(call.body).hexdigest()
        return signing.signed_headers_digest(
            self.app_key, self.app_secret, call.method, call.path, digest, now
        )


class Attempts:
    """The attempts of one call, without I/O: :meth:`request` makes the next one, :meth:`after`
    reads what came of it."""

    def __init__(self, call: Call, credentials: Credentials, policy: RetryPolicy, url: str) -> None:
        self.call, self.credentials, self.policy, self.url = call, credentials, policy, url
        self.attempt = 0
        self.waited = 0.0
        self.result: Any = None

    def request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        """The next attempt, authenticated afresh: a signature's nonce is never sent twice."""
        self.attempt += 1
        call = self.call
        headers = [
            (name.encode(), value if isinstance(value, bytes) else value.encode())
            for name, value in {**call.headers, **self.credentials.headers(call, time.time())}.items()
        ]
        content = call.stream() if call.stream is not None else call.body
        return http.build_request(call.method, call.path, content=content, headers=headers)

    def after(self, answer: httpx.Response | httpx.TransportError) -> float | None:
        """None when the call is done (its value in :attr:`result`), else the seconds to wait before
        the next attempt. Raises :class:`ClientError` for a refusal or when giving up."""
        if isinstance(answer, httpx.TransportError):
            error = self._transport_error(answer)
            if not self.call.replayable:
                raise error
            return self._again(self.policy.backoff(self.attempt), error)
        if answer.status_code in RETRY_STATUSES:
            wait = retry_after(answer.headers)
            refusal = refused(answer)
            return self._again(self.policy.backoff(self.attempt) if wait is None else wait, refusal)
        self.result = interpret(answer, self.call.member)
        return None

    def _again(self, wait: float, error: ClientError) -> float:
        if self.attempt > self.policy.retries or self.waited + wait > self.policy.max_wait:
            if self.attempt > 1:
                error.message = f"{error.message} (gave up after {self.attempt} attempts)"
                error.args = (error.message,)
            raise error
        self.waited += wait
        return wait

    def _transport_error(self, exc: httpx.TransportError) -> ClientError:
        if isinstance(exc, _NOT_SENT):
            return ClientError(f"cannot reach {self.url}: {exc}", code="unreachable")
        return ClientError(
            f"no answer from {self.url} ({type(exc).__name__}: {exc}); the request may or may not have"
            " been carried out",
            code="no_answer",
        )


def interpret(resp: httpx.Response, member: str | None = None) -> Any:
    """An answer's JSON document (or its ``member``); a refusal raises :class:`ClientError`."""
    if not resp.is_success:
        raise refused(resp)
    try:
        doc = resp.json()
    except ValueError:
        doc = None
    return doc[member] if member is not None and isinstance(doc, dict) else doc


def refused(resp: httpx.Response) -> ClientError:
    """The :class:`ClientError` for an error answer: the server's code and message, its status and
    ``Retry-After``."""
    try:
        doc = resp.json()
    except ValueError:
        doc = None
    err = doc.get("error") if isinstance(doc, dict) else None
    after = retry_after(resp.headers)
    if isinstance(err, dict):
        return ClientError(
            str(err.get("message")), code=str(err.get("code")), status=resp.status_code, retry_after=after
        )
    return ClientError(
        f"HTTP {resp.status_code}: {resp.text[:200]}",
        code="http_error",
        status=resp.status_code,
        retry_after=after,
    )


def quick_call(target: str | Mapping[str, Any], text: str, headers: Mapping[str, Any]) -> Call:
    """The quick form (``POST /api/v1/push/{device,alias,tag,broadcast}``) for ``target``: a device
    id, or a target of ``POST /api/v1/push`` that the quick form has a route for. ``headers``:
    ``Title``, ``Priority``, ``TTL``, ``Data``, ``Biz-Id`` (None: not sent)."""
    sent: dict[str, str | bytes] = {"Content-Type": "text/plain; charset=utf-8"}
    for name, value in headers.items():
        if isinstance(value, Mapping):
            sent[name] = json.dumps(value, separators=(",", ":"))
        elif value is not None:
            sent[name] = str(value).encode()  # UTF-8 bytes, as the server reads them
    replayable = headers.get("Biz-Id") is not None
    return Call("POST", _quick_path(target), text.encode(), sent, replayable=replayable)


def _quick_path(target: str | Mapping[str, Any]) -> str:
    def segment(value: Any) -> str:
        return quote(str(value), safe="")

    if isinstance(target, str):
        return "/api/v1/push/device/" + segment(target)
    devices = target.get("devices")
    if set(target) == {"devices"} and isinstance(devices, list | tuple) and len(devices) == 1:
        return "/api/v1/push/device/" + segment(devices[0])
    if "alias" in target and set(target) <= {"alias", "alias_type"}:
        return f"/api/v1/push/alias/{segment(target.get('alias_type', 'user'))}/{segment(target['alias'])}"
    if set(target) == {"tags"}:
        return "/api/v1/push/tag/" + segment(target["tags"])
    if dict(target) == {"broadcast": True}:
        return "/api/v1/push/broadcast"
    raise ClientError(
        'the quick form takes a device id, {"devices": [one id]}, {"alias", "alias_type"}, {"tags"}'
        ' or {"broadcast": true}; send other targets with push()',
        code="bad_quick_target",
    )


def upload_call(kind: str, alias_type: str, body_sha256: str, chunks: Callable[[], Any]) -> Call:
    """``POST /api/v1/files`` with a streamed body (``chunks`` makes it anew for each attempt)."""
    query = f"/api/v1/files?kind={kind}" + (f"&alias_type={alias_type}" if kind == "aliases" else "")
    return Call("POST", query, body_sha256=body_sha256, stream=chunks)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _nodelay() -> list[tuple[int, int, int]]:
    # httpcore writes a request's head and body separately; without TCP_NODELAY, Nagle holds
    # the body until the server's delayed ACK (40 ms on Linux): every call took ~40 ms.
    return [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


Doc = TypeVar("Doc")
"""What a route answering one JSON object returns: the object, or an awaitable of it."""
Docs = TypeVar("Docs")
"""… a list of objects."""
Names = TypeVar("Names")
"""… a list of strings (ids, tags)."""


class Routes(abc.ABC, Generic[Doc, Docs, Names]):
    """Every route of the API, written once: each method describes its :class:`Call`; the client
    (:class:`PushClient` or :class:`AsyncPushClient`) runs it and returns the value or its awaitable.

    Credentials: ``app_key`` + ``app_secret`` sign every call (the default); ``token="mpt_…"`` sends
    an app access token instead (``Authorization: Bearer``), with the scope the route needs
    (docs/api.md). Registering a device needs only ``app_key``.
    """

    def __init__(
        self,
        url: str,
        app_key: str | None = None,
        app_secret: str | None = None,
        *,
        token: str | None = None,
        retries: int = DEFAULT_RETRIES,
        max_wait: float = DEFAULT_MAX_WAIT,
        timeout: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.app_key = app_key
        self.retry = RetryPolicy(retries, max_wait)
        self._credentials = Credentials(app_key, app_secret, token)
        self._open(timeout)

    @abc.abstractmethod
    def _open(self, timeout: float) -> None:
        """Make the client's connection pool (``timeout``: seconds per attempt)."""

    def _attempts(self, call: Call) -> Attempts:
        return Attempts(call, self._credentials, self.retry, self.url)

    @abc.abstractmethod
    def _doc(self, call: Call) -> Doc: ...

    @abc.abstractmethod
    def _docs(self, call: Call) -> Docs: ...

    @abc.abstractmethod
    def _names(self, call: Call) -> Names: ...

    def register_device(self, install_id: str, platform: str, **attrs: str | None) -> Doc:
        """``POST /api/v1/devices`` (app key only) → ``{"device_id", "device_token", ...}``;
        idempotent per install id, so it is retried after a broken connection too."""
        body = {"install_id": install_id, "platform": platform} | {
            k: v for k, v in attrs.items() if v is not None
        }
        return self._doc(json_call("POST", "/api/v1/devices", body, replayable=True, auth="key"))

    def push(self, request: Mapping[str, Any]) -> Doc:
        """``POST /api/v1/push`` with a request as docs/api.md describes → ``{"msg_id"}`` or
        ``{"task_id", …}``. Retried after a broken connection only with a ``policy.biz_id``."""
        policy = request.get("policy")
        has_biz_id = isinstance(policy, Mapping) and policy.get("biz_id") is not None
        return self._doc(json_call("POST", "/api/v1/push", dict(request), replayable=has_biz_id))

    def push_text(
        self,
        target: str | Mapping[str, Any],
        text: str,
        *,
        title: str | None = None,
        priority: str | None = None,
        ttl: int | str | None = None,
        data: Mapping[str, Any] | None = None,
        biz_id: str | None = None,
    ) -> Doc:
        """The quick form: ``text`` as the notification's body to ``target`` — a device id, or
        ``{"alias": A, "alias_type": T}``, ``{"tags": EXPR}``, ``{"broadcast": True}`` →
        ``{"msg_id"}`` (device, alias) or ``{"task_id", "msg_id"}`` (tag, broadcast).
        ``priority``: high, normal, low or 1-5; ``ttl``: seconds or ``90m``, ``12h``, ``3d``."""
        headers = {"Title": title, "Priority": priority, "TTL": ttl, "Data": data, "Biz-Id": biz_id}
        return self._doc(quick_call(target, text, headers))

    def push_batch(self, request: Mapping[str, Any]) -> Names:
        """``POST /api/v1/push/batch`` → one msg_id per item, in order."""
        return self._names(json_call("POST", "/api/v1/push/batch", dict(request), member="msg_ids"))

    def message(self, msg_id: str) -> Doc:
        """``GET /api/v1/messages/{msg_id}`` → ``{"msg_id", "deliveries": [...]}``."""
        return self._doc(json_call("GET", f"/api/v1/messages/{msg_id}"))

    def messages(self, state: str | None = None, limit: int = 100) -> Docs:
        query = f"/api/v1/messages?limit={limit}" + (f"&state={state}" if state else "")
        return self._docs(json_call("GET", query, member="messages"))

    def cancel(self, msg_id: str) -> Doc:
        """Stop a message not yet (fully) sent: draft, scheduled, series, running task."""
        return self._doc(json_call("DELETE", f"/api/v1/messages/{msg_id}"))

    def approve(self, msg_id: str, approver: str) -> Doc:
        return self._doc(json_call("POST", f"/api/v1/messages/{msg_id}/approve", {"approver": approver}))

    def recall(self, msg_id: str) -> Doc:
        """Take a sent message back from the devices that have not opened it."""
        return self._doc(json_call("POST", f"/api/v1/messages/{msg_id}/recall"))

    def set_vendor_token(
        self,
        device_id: str,
        vendor: str,
        token: str | None = None,
        subscription: Mapping[str, Any] | None = None,
    ) -> Doc:
        body: dict[str, Any] = {"vendor": vendor}
        if token is not None:
            body["token"] = token
        if subscription is not None:
            body["subscription"] = dict(subscription)
        return self._doc(json_call("PUT", f"/api/v1/devices/{device_id}/tokens", body))

    def vendors(self) -> Doc:
        return self._doc(json_call("GET", "/api/v1/vendors"))

    def settings(self) -> Doc:
        return self._doc(json_call("GET", "/api/v1/settings"))

    def put_settings(self, settings: Mapping[str, Any]) -> Doc:
        return self._doc(json_call("PUT", "/api/v1/settings", dict(settings)))

    def task(self, task_id: str) -> Doc:
        """``GET /api/v1/tasks/{task_id}`` → progress of a group send."""
        return self._doc(json_call("GET", f"/api/v1/tasks/{task_id}"))

    def cancel_task(self, task_id: str) -> Doc:
        return self._doc(json_call("DELETE", f"/api/v1/tasks/{task_id}"))

    def stats(
        self,
        since: str | float | None = None,
        until: str | float | None = None,
        by: str | list[str] | None = None,
        step: str | None = None,
    ) -> Doc:
        """``GET /api/v1/stats`` → ``{"since", "until", "step", "by", "series", "totals"}``
        (docs/statistics.md); times as unix seconds, ISO 8601 or relative (``24h``)."""
        query = {
            "since": since,
            "until": until,
            "by": ",".join(by) if isinstance(by, list) else by,
            "step": step,
        }
        params = urlencode({k: str(v) for k, v in query.items() if v is not None and v != ""})
        return self._doc(json_call("GET", "/api/v1/stats" + (f"?{params}" if params else "")))

    def funnel(self, msg_id: str | None = None, task_id: str | None = None) -> Doc:
        """``GET /api/v1/messages/{msg_id}/funnel`` or ``/api/v1/tasks/{task_id}/funnel``."""
        path = f"/api/v1/tasks/{task_id}/funnel" if task_id else f"/api/v1/messages/{msg_id}/funnel"
        return self._doc(json_call("GET", path))

    def put_template(self, name: str, template: Mapping[str, Any]) -> Doc:
        return self._doc(json_call("PUT", f"/api/v1/templates/{name}", dict(template)))

    def templates(self) -> Docs:
        return self._docs(json_call("GET", "/api/v1/templates", member="templates"))

    def device(self, device_id: str) -> Doc:
        """A device with its attributes, tags and aliases."""
        return self._doc(json_call("GET", f"/api/v1/devices/{device_id}"))

    def update_device(self, device_id: str, **attrs: Any) -> Doc:
        """Change ``test``, ``app_version``, ``channel`` or ``locale`` of a device."""
        return self._doc(json_call("PATCH", f"/api/v1/devices/{device_id}", attrs))

    def update_tags(self, device_id: str, add: list[str] = [], remove: list[str] = []) -> Names:  # noqa: B006
        body = {"add": list(add), "remove": list(remove)}
        return self._names(json_call("POST", f"/api/v1/devices/{device_id}/tags", body, member="tags"))

    def bind_alias(self, device_id: str, alias: str, alias_type: str = "user", mode: str = "set") -> Docs:
        body = {"alias": alias, "alias_type": alias_type, "mode": mode}
        return self._docs(json_call("POST", f"/api/v1/devices/{device_id}/aliases", body, member="aliases"))

    def unbind_alias(self, device_id: str, alias: str, alias_type: str = "user") -> Docs:
        path = f"/api/v1/devices/{device_id}/aliases/{quote(alias_type, safe='')}/{quote(alias, safe='')}"
        return self._docs(json_call("DELETE", path, member="aliases"))

    def add_webhook(self, url: str, events: list[str]) -> Doc:
        """``POST /api/v1/webhooks`` → ``{"webhook_id", "secret"}`` (docs/webhooks.md)."""
        return self._doc(json_call("POST", "/api/v1/webhooks", {"url": url, "events": list(events)}))

    def list_webhooks(self) -> Docs:
        """The app's webhooks with their health (last success, last error, backlog, state)."""
        return self._docs(json_call("GET", "/api/v1/webhooks", member="webhooks"))

    def remove_webhook(self, webhook_id: str) -> Doc:
        return self._doc(json_call("DELETE", f"/api/v1/webhooks/{quote(webhook_id, safe='')}"))


class PushClient(Routes[dict[str, Any], list[dict[str, Any]], list[str]]):
    """The blocking client: ``PushClient(url, app_key, app_secret)`` or ``PushClient(url, token="mpt_…")``;
    ``with`` closes its connections. Each method returns the answer's JSON (see :class:`Routes`)."""

    _http: httpx.Client

    def _open(self, timeout: float) -> None:
        transport = httpx.HTTPTransport(socket_options=_nodelay())
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PushClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, call: Call) -> Any:
        attempts = self._attempts(call)
        while True:
            try:
                answer: httpx.Response | httpx.TransportError = self._http.send(attempts.request(self._http))
            except httpx.TransportError as exc:
                answer = exc
            wait = attempts.after(answer)
            if wait is None:
                return attempts.result
            time.sleep(wait)

    def _doc(self, call: Call) -> dict[str, Any]:
        doc: dict[str, Any] = self._run(call)
        return doc

    def _docs(self, call: Call) -> list[dict[str, Any]]:
        docs: list[dict[str, Any]] = self._run(call)
        return docs

    def _names(self, call: Call) -> list[str]:
        names: list[str] = self._run(call)
        return names

    def upload_file(
        self, path: str | Path, kind: str = "devices", alias_type: str = "user"
    ) -> dict[str, Any]:
        """``POST /api/v1/files``: stream a file of ids (or aliases), one a line → ``{"file_id", "lines"}``."""
        file = Path(path)

        def chunks() -> Iterator[bytes]:
            with file.open("rb") as f:
                yield from iter(lambda: f.read(_CHUNK), b"")

        return self._doc(upload_call(kind, alias_type, file_sha256(file), chunks))


class AsyncPushClient(
    Routes[Awaitable[dict[str, Any]], Awaitable[list[dict[str, Any]]], Awaitable[list[str]]]
):
    """The asyncio client: the methods of :class:`PushClient`, awaited; ``async with`` closes it."""

    _http: httpx.AsyncClient

    def _open(self, timeout: float) -> None:
        transport = httpx.AsyncHTTPTransport(socket_options=_nodelay())
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout, transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncPushClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _run(self, call: Call) -> Any:
        attempts = self._attempts(call)
        while True:
            try:
                answer: httpx.Response | httpx.TransportError = await self._http.send(
                    attempts.request(self._http)
                )
            except httpx.TransportError as exc:
                answer = exc
            wait = attempts.after(answer)
            if wait is None:
                return attempts.result
            await asyncio.sleep(wait)

    def _doc(self, call: Call) -> Awaitable[dict[str, Any]]:
        return self._run(call)

    def _docs(self, call: Call) -> Awaitable[list[dict[str, Any]]]:
        return self._run(call)

    def _names(self, call: Call) -> Awaitable[list[str]]:
        return self._run(call)

    async def upload_file(
        self, path: str | Path, kind: str = "devices", alias_type: str = "user"
    ) -> dict[str, Any]:
        """``POST /api/v1/files``, as :meth:`PushClient.upload_file`; the file is read off the loop."""
        file = Path(path)

        async def chunks() -> AsyncIterator[bytes]:
            f = await asyncio.to_thread(file.open, "rb")
            try:
                while chunk := await asyncio.to_thread(f.read, _CHUNK):
                    yield chunk
            finally:
                f.close()

        digest = await asyncio.to_thread(file_sha256, file)
        return await self._doc(upload_call(kind, alias_type, digest, chunks))


def device_info(url: str, device_token: str, timeout: float = 10.0) -> dict[str, Any]:
    """``GET /api/v1/devices/me`` with the device's own token: app key, MQTT URL and topics."""
    result: dict[str, Any] = device_call(url, device_token, "GET", "/api/v1/devices/me", timeout=timeout)
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
    return interpret(resp)
