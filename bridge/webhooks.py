"""The webhook sender: posts the outbox's events to the app servers' endpoints (docs/webhooks.md).

One worker per webhook with events waiting, so a slow or dead endpoint delays only its own
events; at most ``MAX_IN_FLIGHT`` POSTs at once over all of them, each with timeouts. Delivery
itself never waits for any of this: events are rows the store wrote with the transitions.

A batch is one event type (the ``X-MQTTPush-Event`` header is true for all of it), at most
``MAX_BATCH`` events, or fewer if no more came within ``LINGER_SECONDS``. A batch that failed is
sent again, the same events under the same ``X-MQTTPush-Delivery``, after a backoff that doubles
from ``FIRST_BACKOFF`` to ``MAX_BACKOFF`` (with jitter, on the store's clock) before any newer
event of that webhook; events retried for 24 h are given up, kept and counted as ``failed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import hmac
import logging
import random
import secrets
import time

import httpx

from mqttpush import __version__
from mqttpush.clock import Clock
from mqttpush.store import Store
from mqttpush.store.webhooks import MAX_BATCH, WebhookBatch

log = logging.getLogger("mqttpush.webhooks")

EVENT_HEADER = "X-MQTTPush-Event"
DELIVERY_HEADER = "X-MQTTPush-Delivery"
TIMESTAMP_HEADER = "X-MQTTPush-Timestamp"
SIGNATURE_HEADER = "X-MQTTPush-Signature"

LINGER_SECONDS = 1.0
"""How long events may wait for company before a batch of fewer than ``MAX_BATCH`` goes out."""
POLL_SECONDS = 2.0
"""How often the outbox is looked at without being told (events written by another process)."""
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 600.0
MAX_IN_FLIGHT = 16
TIMEOUT = httpx.Timeout(10.0, connect=5.0)
PRUNE_SECONDS = 3600.0
_ERROR_BODY_BYTES = 200
_ANSWER_BYTES = 64 * 1024


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``X-MQTTPush-Signature``: lowercase hex HMAC-SHA256(secret, TIMESTAMP + "." + body)."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def backoff(failures: int, retry_after: float | None = None) -> float:
    """Seconds to wait after ``failures`` failures in a row: doubling from ``FIRST_BACKOFF``,
    capped at ``MAX_BACKOFF``, the upper half jittered; at least the endpoint's ``Retry-After``
    (itself capped)."""
    delay = min(MAX_BACKOFF, FIRST_BACKOFF * 2.0 ** min(max(0, failures - 1), 30))
    delay *= random.uniform(0.5, 1.0)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_BACKOFF))
    return delay


def _retry_after(value: str | None, now: float) -> float | None:
    """A ``Retry-After`` header's seconds (delta or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError):
        return max(0.0, float(email.utils.parsedate_to_datetime(value).timestamp()) - now)
    return None


class WebhookSender:
    """``run()`` is the supervised loop; ``close()`` releases the HTTP connections."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        http: httpx.AsyncClient | None = None,
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
        linger: float = LINGER_SECONDS,
        sender: str | None = None,
    ) -> None:
        self._store = store
        self.sender = sender or secrets.token_hex(8)
        """This bridge's id on the webhooks it posts (a lease each: one bridge posts a webhook)."""
        self._repo = store.webhooks
        self._clock = clock
        self._http = http or httpx.AsyncClient(
            timeout=TIMEOUT,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=max_in_flight * 2, max_keepalive_connections=max_in_flight),
            headers={"User-Agent": f"mqttpush/{__version__}"},
        )
        self._slots = asyncio.Semaphore(max_in_flight)
        self._linger = linger
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._news = asyncio.Event()
        self._changed = asyncio.Event()
        self.failures: dict[str, int] = {}
        """Failed POSTs in a row, per webhook (0 after a success)."""
        self.retry_at: dict[str, float] = {}
        """Per webhook in backoff: when (store clock) its next attempt is due."""
        self.posts = 0
        """POSTs made, for tests and metrics."""

    # --- supervision -----------------------------------------------------------------------

    async def run(self) -> None:
        """Start a worker for each webhook with events waiting, whenever told or every
        ``POLL_SECONDS``; prune given-up events now and then. Never returns."""
        loop = asyncio.get_running_loop()

        def told() -> None:  # on the store thread
            loop.call_soon_threadsafe(self._news.set)

        self._repo.on_outbox = told
        pruned_at = -PRUNE_SECONDS
        try:
            while True:
                self._news.clear()
                for webhook_id in await self._store.run(self._repo.with_pending):
                    worker = self._workers.get(webhook_id)
                    if worker is None or worker.done():
                        self._workers[webhook_id] = asyncio.create_task(
                            self._work(webhook_id), name=f"mqttpush-webhook-{webhook_id}"
                        )
                if time.monotonic() - pruned_at >= PRUNE_SECONDS:
                    pruned_at = time.monotonic()
                    if dropped := await self._store.run(self._repo.prune):
                        log.info("pruned webhook events given up on count=%d", dropped)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._news.wait(), POLL_SECONDS)
        finally:
            self._repo.on_outbox = None
            workers = list(self._workers.values())
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            self._workers.clear()

    async def close(self) -> None:
        await self._http.aclose()

    async def changed(self) -> None:
        """Wait for the next attempt's outcome to be known (tests: await it with a timeout)."""
        event = self._changed
        await event.wait()

    def _pulse(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # --- one webhook -------------------------------------------------------------------------

    async def _work(self, webhook_id: str) -> None:
        """Send this webhook's events until none waits. A failure backs off (only this webhook)."""
        try:
            seen: float | None = None
            while True:
                due = self.retry_at.get(webhook_id)
                if due is not None and due > self._clock.now():
                    # Woken, it is time (not checked again: clock.now() may land a rounding short).
                    await self._clock.sleep(due - self._clock.now())
                retry, fresh = await self._store.run(self._repo.outlook, webhook_id)
                if not retry and fresh == 0:
                    return
                if not retry and fresh < MAX_BATCH:
                    seen = time.monotonic() if seen is None else seen
                    left = seen + self._linger - time.monotonic()
                    if left > 0:
                        await asyncio.sleep(left)  # a moment for company: fuller, fewer POSTs
                        continue
                seen = None
                batch = await self._store.run(self._repo.take_batch, webhook_id, self.sender)
                if batch is None:
                    return
                await self._attempt(batch)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The run loop starts a new worker on its next look at the outbox.
            log.exception("webhook worker failed webhook=%s", webhook_id)

    async def _attempt(self, batch: WebhookBatch) -> None:
        error, retry_after = await self._post(batch)
        webhook_id = batch.webhook_id
        if error is None:
            await self._store.run(self._repo.delivered, webhook_id, batch.batch_id)
            self.failures.pop(webhook_id, None)
            self.retry_at.pop(webhook_id, None)
            self._pulse()
            return
        given_up = await self._store.run(self._repo.failed, webhook_id, batch.batch_id, error)
        failures = self.failures.get(webhook_id, 0) + 1
        self.failures[webhook_id] = failures
        delay = backoff(failures, retry_after)
        self.retry_at[webhook_id] = self._clock.now() + delay
        level = logging.WARNING if failures == 1 else logging.DEBUG
        log.log(
            level,
            "webhook POST failed webhook=%s delivery=%s events=%d failures=%d retry_in=%.1fs: %s",
            webhook_id,
            batch.batch_id,
            len(batch.event_ids),
            failures,
            delay,
            error,
        )
        if given_up:
            log.warning("webhook events given up after 24 h webhook=%s count=%d", webhook_id, given_up)
        self._pulse()

    async def _post(self, batch: WebhookBatch) -> tuple[str | None, float | None]:
        """POST one batch → (None, None) on 2xx, else (why, the endpoint's Retry-After if any)."""
        timestamp = str(int(time.time()))  # the receiver checks it against its own wall clock
        headers = {
            "Content-Type": "application/json",
            EVENT_HEADER: batch.event_type,
            DELIVERY_HEADER: batch.batch_id,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: signature(batch.secret, timestamp, batch.body),
        }
        async with self._slots:
            self.posts += 1
            try:
                async with self._http.stream("POST", batch.url, content=batch.body, headers=headers) as resp:
                    head = b""
                    async for chunk in resp.aiter_bytes():  # read a small answer whole: the
                        head += chunk  # connection is kept for the next POST
                        if len(head) > _ANSWER_BYTES:
                            break
                    if resp.is_success:
                        return None, None
                    text = head[:_ERROR_BODY_BYTES].decode("utf-8", "replace").strip()
                    wait = _retry_after(resp.headers.get("retry-after"), time.time())
                    return f"HTTP {resp.status_code}" + (f": {text}" if text else ""), wait
            except Exception as exc:  # whatever stops a POST (refused, timeout, TLS, a URL httpx
                # cannot use) is the endpoint's failure, retried like any other
                return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, None
