#!/usr/bin/env python3
"""Push from asyncio server code (an aiohttp or FastAPI app, a worker) with
mqttpush.client.AsyncPushClient: one message per device, sent concurrently, each followed until
its device has it.

    export MQTTPUSH_URL=http://127.0.0.1:8080 MQTTPUSH_APP_KEY=a… MQTTPUSH_APP_SECRET=…
    python examples/publish_async.py --device d1… --device d2… --title 'Your order' \\
        --body 'Order {n} has shipped' --wait arrived
    # with an app access token instead of the secret (mqttpush app token create APP_KEY --scope push)
    python examples/publish_async.py --token mpt_… --device d… --title Hi --body 'for {device}'

Signed with the app key and secret by default; `--token` (or MQTTPUSH_TOKEN) sends `Authorization:
Bearer mpt_…`. `{device}` and `{n}` in the title and body become each device's id and its number:
one message each. It prints one `{"device_id", "msg_id"}` line per push, then with `--wait
arrived|opened` each status once its device got there (exit 2 if a push was refused, a delivery
failed or expired, or after `--timeout`). One client serves every call at once: create it once per
process and share it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from mqttpush.client import AsyncPushClient
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
    p.add_argument("--title", default="")
    p.add_argument("--body", default="")
    p.add_argument("--wait", choices=sorted(REACHED), help="follow each status until its device got there")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds --wait waits")
    return p.parse_args(argv)


async def push_one(client: AsyncPushClient, args: argparse.Namespace, n: int, device_id: str) -> str:
    def fill(text: str) -> str:
        return text.replace("{device}", device_id).replace("{n}", str(n))

    notification = {"title": fill(args.title), "body": fill(args.body)}
    pushed = await client.push(
        {"target": {"devices": [device_id]}, "notification": {k: v for k, v in notification.items() if v}}
    )
    print(json.dumps({"device_id": device_id, "msg_id": pushed["msg_id"]}), flush=True)
    return str(pushed["msg_id"])


async def follow(client: AsyncPushClient, msg_id: str, state: str) -> dict[str, Any]:
    """Poll the message's status until its delivery reached ``state`` or gave up."""
    while True:
        status = await client.message(msg_id)
        states = {d["state"] for d in status["deliveries"]}
        if states <= REACHED[state] or states & GAVE_UP:
            print(json.dumps(status), flush=True)
            return status
        await asyncio.sleep(0.5)


async def run(args: argparse.Namespace) -> int:
    if args.token:
        client = AsyncPushClient(args.url, token=args.token)
    else:
        client = AsyncPushClient(args.url, args.app_key, args.app_secret)
    async with client:
        sent = await asyncio.gather(
            *(push_one(client, args, n, device) for n, device in enumerate(args.device, 1)),
            return_exceptions=True,
        )
        failed = [exc for exc in sent if isinstance(exc, BaseException)]
        for exc in failed:
            if not isinstance(exc, ClientError):
                raise exc
            print(f"error: {exc} [{exc.code}]", file=sys.stderr)
        if args.wait is None:
            return 2 if failed else 0
        msg_ids = [m for m in sent if isinstance(m, str)]
        try:
            async with asyncio.timeout(args.timeout):
                statuses = await asyncio.gather(*(follow(client, m, args.wait) for m in msg_ids))
        except TimeoutError:
            print(f"error: not every device got there within {args.timeout:g} s", file=sys.stderr)
            return 2
        reached = all({d["state"] for d in s["deliveries"]} <= REACHED[args.wait] for s in statuses)
        return 0 if reached and not failed else 2


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(run(args))
    except ClientError as exc:
        print(f"error: {exc} [{exc.code}]", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
