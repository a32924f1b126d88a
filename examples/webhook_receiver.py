#!/usr/bin/env python3
"""A webhook receiver for mqttpush: checks each POST's signature and prints its events.

    python examples/webhook_receiver.py --port 8099 --secret-file hook.secret &
    mqttpush webhook add --url "$MQTTPUSH_URL" --app-key K --app-secret S \\
        --url http://127.0.0.1:8099/ --event delivery.arrived --event delivery.opened --json \\
      | python -c 'import json,sys; print(json.load(sys.stdin)["secret"])' > hook.secret

It prints ``listening on http://HOST:PORT/`` once, then one JSON line per event. The secret comes
from ``--secret`` or ``--secret-file`` (read again on each request, so the receiver may start
before the webhook is registered). A POST is accepted only if ``X-MQTTPush-Signature`` is the
HMAC-SHA256 of ``TIMESTAMP + "." + body`` with the secret and the timestamp is within 5 minutes;
a batch seen before (same ``X-MQTTPush-Delivery``, a retry) is acknowledged and not printed again.
Standard library only (docs/webhooks.md).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import hmac
import json
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

TOLERANCE_SECONDS = 300
MAX_BODY_BYTES = 10 * 1024 * 1024


def valid_signature(secret: str, timestamp: str, body: bytes, signature: str, now: float) -> bool:
    """True if the request was signed with ``secret`` within the last few minutes."""
    if not timestamp.isdigit() or abs(now - int(timestamp)) > TOLERANCE_SECONDS:
        return False
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


class Seen:
    """The delivery ids of recent batches (a retry of one that got through is not printed twice)."""

    def __init__(self, size: int = 10_000) -> None:
        self._ids: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def add(self, delivery: str) -> bool:
        """Remember ``delivery``; False if it was seen already."""
        with self._lock:
            if delivery in self._ids:
                return False
            self._ids[delivery] = None
            if len(self._ids) > self._size:
                self._ids.popitem(last=False)
            return True


def make_handler(secret: Callable[[], str], seen: Seen) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._answer(413)
                return
            body = self.rfile.read(length)
            timestamp = self.headers.get("X-MQTTPush-Timestamp", "")
            signature = self.headers.get("X-MQTTPush-Signature", "")
            key = secret()
            if not key:  # no secret yet: nothing can be checked
                self._answer(503)
                return
            if not valid_signature(key, timestamp, body, signature, time.time()):
                self._answer(401)
                return
            try:
                events = json.loads(body)
            except ValueError:
                self._answer(400)
                return
            if seen.add(self.headers.get("X-MQTTPush-Delivery", "")):
                for event in events:
                    print(json.dumps(event), flush=True)
            self._answer(200)

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass  # stdout is for events; stderr stays quiet

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description="Print mqttpush webhook events whose signature holds.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099, help="0: any free port (printed)")
    parser.add_argument("--secret", help="the webhook's secret (whsec_…)")
    parser.add_argument("--secret-file", type=Path, help="a file holding the secret, read on each request")
    args = parser.parse_args()
    if not args.secret and not args.secret_file:
        parser.error("give --secret or --secret-file")

    def secret() -> str:
        if args.secret:
            return str(args.secret)
        try:
            return str(args.secret_file.read_text().strip())
        except OSError:
            return ""

    server = ThreadingHTTPServer((args.host, args.port), make_handler(secret, Seen()))
    port = server.server_address[1]
    print(f"listening on http://{args.host}:{port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    sys.exit(0)


if __name__ == "__main__":
    main()
