"""The webhook sender's pure parts: the signature as docs/webhooks.md defines it, the backoff's
bounds, and reading Retry-After."""

from __future__ import annotations

import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st

from bridge.webhooks import FIRST_BACKOFF, MAX_BACKOFF, _retry_after, backoff, signature
from tests.webhook_receiver import verify


@given(st.text(min_size=1, max_size=80), st.integers(min_value=0, max_value=10**10), st.binary(max_size=2000))
def test_signature_is_hmac_of_timestamp_dot_body(secret: str, ts: int, body: bytes) -> None:
    sig = signature(secret, str(ts), body)
    assert sig == hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    assert verify(secret, str(ts), body, sig, now=ts)
    assert not verify(secret, str(ts), body + b" ", sig, now=ts)
    assert not verify(secret, str(ts), body, sig, now=ts + 301)  # a stale replay


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    for failures in range(1, 40):
        nominal = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (failures - 1))
        for _ in range(20):
            assert nominal / 2 <= backoff(failures) <= nominal
    assert backoff(1, retry_after=30) >= 30
    assert backoff(1, retry_after=10**9) == MAX_BACKOFF


def test_retry_after_reads_seconds_and_dates() -> None:
    assert _retry_after("120", 0) == 120
    assert _retry_after(None, 0) is None
    assert _retry_after("soon", 0) is None
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == 10.0
