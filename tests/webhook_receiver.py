"""A webhook endpoint for tests: a real HTTP server on 127.0.0.1 that checks every POST as an app
server should (docs/webhooks.md): the HMAC over ``TIMESTAMP + "." + body``, a fresh timestamp, a
JSON array of events of the announced type; and dedupes batches by ``X-MQTTPush-Delivery``.

It answers ``status`` (503 while "down"); ``stop()`` and ``start()`` again on the same port make
it refuse connections meanwhile. Tests wait for what it received with :meth:`Receiver.wait_for`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def verify(
    secret: str, timestamp: str, body: bytes, signature: str, now: float, tolerance: float = 300
) -> bool:
    """Written from the docs, independently of the server's code."""
    if not timestamp.isdigit() or abs(now - int(timestamp)) > tolerance:
        return False
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


@dataclass
class Post:
    """One POST as it came, and what the receiver made of it."""

    event_type: str
    delivery: str
    timestamp: str
    valid: bool
    status: int
    events: list[dict[str, Any]]


@dataclass
class Receiver:
    secret: str = ""
    status: int = 200
    port: int = 0
    posts: list[Post] = field(default_factory=list)
    accepted: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Delivery id → its events, for each batch answered 2xx (a repeat of one is not added again)."""
    _server: ThreadingHTTPServer | None = None
    _changed: threading.Condition = field(default_factory=threading.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver._take(self, body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _take(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        h = handler.headers
        timestamp, signature = h.get("X-MQTTPush-Timestamp", ""), h.get("X-MQTTPush-Signature", "")
        event_type, delivery = h.get("X-MQTTPush-Event", ""), h.get("X-MQTTPush-Delivery", "")
        valid = verify(self.secret, timestamp, body, signature, time.time())
        events: list[dict[str, Any]] = []
        if valid:
            events = json.loads(body)
            valid = isinstance(events, list) and all(e.get("type") == event_type for e in events)
        status = self.status if valid else 401
        with self._changed:
            self.posts.append(Post(event_type, delivery, timestamp, valid, status, events))
            if 200 <= status < 300:
                self.accepted.setdefault(delivery, events)
            self._changed.notify_all()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", "2")
        handler.end_headers()
        handler.wfile.write(b"{}")

    def events(self) -> list[dict[str, Any]]:
        """Every event of the accepted batches, each batch once (deduplicated by delivery id)."""
        with self._changed:
            return [e for batch in self.accepted.values() for e in batch]

    def wait_for(self, predicate: Callable[[Receiver], bool], timeout: float = 30) -> None:
        """Wait until ``predicate(self)`` holds, re-checked after each POST; AssertionError at the deadline."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"the receiver did not get what was awaited; posts: {self.posts[-5:]}"
                    )
                self._changed.wait(left)
