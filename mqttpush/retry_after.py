"""``Retry-After`` (RFC 9110 §10.2.3) read the same way by the vendor channels and the API clients.

Pure: headers in, seconds out; no clock of ours is involved.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Mapping
from datetime import UTC, datetime

MAX_RETRY_AFTER = 3600.0
"""The longest ``Retry-After`` honoured, in seconds: a wrong header must not park a retry for days."""

_DELAY_SECONDS = re.compile(r"[0-9]+")


def retry_after(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` in seconds, within ``[0, MAX_RETRY_AFTER]``, or None.

    Delay-seconds are taken as they are. An HTTP-date (IMF-fixdate, or the obsolete RFC 850 and
    asctime forms) is measured against the response's own ``Date``, so our clock does not matter;
    without a usable ``Date`` it gives None (the caller's backoff). Never raises.
    """
    value = headers.get("retry-after", "").strip()
    if not value:
        return None
    if _DELAY_SECONDS.fullmatch(value):
        digits = value.lstrip("0") or "0"
        return min(float(digits), MAX_RETRY_AFTER) if len(digits) <= 9 else MAX_RETRY_AFTER
    when, sent = _http_date(value), _http_date(headers.get("date", ""))
    if when is None or sent is None:
        return None
    return min(max(0.0, (when - sent).total_seconds()), MAX_RETRY_AFTER)


def _http_date(value: str) -> datetime | None:
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)  # HTTP-dates are GMT
