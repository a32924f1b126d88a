#!/usr/bin/env python3
"""Push from Python server code with mqttpush.client.PushClient (blocking), and follow the
message until its devices have it.

    export MQTTPUSH_URL=http://127.0.0.1:8080 MQTTPUSH_APP_KEY=a… MQTTPUSH_APP_SECRET=…
    python examples/publish_sync.py --device d… --title Sale --body '50% off' --data '{"sku": 42}' --wait arrived
    # with an app access token instead of the secret (mqttpush app token create APP_KEY --scope push)
    python examples/publish_sync.py --token mpt_… --device d… --title Hi --wait arrived

Requests are signed with the app key and secret by default (a fresh timestamp and nonce each);
`--token` (or MQTTPUSH_TOKEN) sends `Authorization: Bearer mpt_…` instead. One message goes to
every `--device`; it prints `{"msg_id": …}`, then with `--wait arrived|opened` polls the status
until every delivery got there and prints it (exit 2 if one failed or expired, or after
`--timeout`). The client retries by itself where that is safe (429/503, and pushes with a biz id
after a broken connection). For events without polling, see webhook_receiver.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from mqttpush.client import PushClient
from mqttpush.errors import ClientError

REACHED = {"arrived": {"arrived", "opened", "dismissed"}, "opened": {"opened"}}
GAVE_UP = {"expired", "failed", "cancelled", "dropped"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=os.environ.get("MQTTPUSH_URL", "http://127.0.0.1:8080"))
    p.add_argument("--app-key", default=os.environ.get("MQTTPUSH_APP_KEY"))
    p.add_argument("--app-secret", default=os.environ.get("MQTTPUSH_APP_SECRET"))
    p.add_argument("--token", default=os.environ.get("MQTTPUSH_TOKEN"), help="an app access token, mpt_…")
    p.add_argument("--device", action="append", required=True, help="a device id (repeatable)")
    p.add_argument("--title")
    p.add_argument("--body")
    p.add_argument("--data", type=json.loads, help="a JSON object")
    p.add_argument("--ttl", type=int, help="seconds the message may wait for an offline device")
    p.add_argument("--biz-id", help="an idempotency key: the same key never sends twice")
    p.add_argument("--wait", choices=sorted(REACHED), help="follow the status until every device got there")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds --wait waits")
    return p.parse_args(argv)


def request_of(args: argparse.Namespace) -> dict[str, Any]:
    """The body of POST /api/v1/push (docs/api.md)."""
    request: dict[str, Any] = {
        "target": {"devices": args.device},
        "notification": {k: v for k, v in (("title", args.title), ("body", args.body)) if v},
    }
    if args.data is not None:
        request["data"] = args.data
    policy = {k: v for k, v in (("ttl", args.ttl), ("biz_id", args.biz_id)) if v is not None}
    if policy:
        request["policy"] = policy
    return request


def wait_for(client: PushClient, msg_id: str, state: str, timeout: float) -> tuple[bool, dict[str, Any]]:
    """Poll ``GET /api/v1/messages/{msg_id}`` until every delivery reached ``state`` (True), one
    gave up, or ``timeout`` passed (False)."""
    deadline = time.monotonic() + timeout
    while True:
        status = client.message(msg_id)
        states = {d["state"] for d in status["deliveries"]}
        if states <= REACHED[state]:
            return True, status
        if states & GAVE_UP or time.monotonic() > deadline:
            return False, status
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.token:
        client = PushClient(args.url, token=args.token)
    else:
        client = PushClient(args.url, args.app_key, args.app_secret)
    try:
        with client:
            pushed = client.push(request_of(args))
            print(json.dumps(pushed), flush=True)
            if args.wait is None:
                return 0
            reached, status = wait_for(client, pushed["msg_id"], args.wait, args.timeout)
            print(json.dumps(status), flush=True)
            return 0 if reached else 2
    except ClientError as exc:
        print(f"error: {exc} [{exc.code}]", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
