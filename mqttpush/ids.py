"""Identifiers: short, URL-safe, valid as MQTT topic levels and client ids.

Device ids stay within MQTT 3.1.1's guaranteed client-id alphabet and length
(1-23 characters of ``[0-9a-zA-Z]``, MQTT-3.1.3-5) so any client library accepts them.
"""

from __future__ import annotations

import re
import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _random(n: int) -> str:
    # One urandom read, 5 bits a character (32 symbols: no bias), instead of a
    # secrets.choice (a getrandbits call) per character.
    bits = int.from_bytes(secrets.token_bytes((5 * n + 7) // 8), "big")
    out = []
    for _ in range(n):
        out.append(_ALPHABET[bits & 31])
        bits >>= 5
    return "".join(out)


def _time_prefix(now: float) -> str:
    ms = int(now * 1000)
    out = []
    for _ in range(10):
        out.append(_ALPHABET[ms & 31])
        ms >>= 5
    return "".join(reversed(out))


def new_app_key() -> str:
    """A new public app key, e.g. ``a7k2...`` (16 characters)."""
    return "a" + _random(15)


def new_device_id() -> str:
    """A new device id: 21 alphanumerics, a valid MQTT 3.1.1 client id everywhere."""
    return "d" + _random(20)


def new_msg_id(now: float | None = None) -> str:
    """A new message id, sortable by creation time (ms) then random (26 characters)."""
    return _time_prefix(time.time() if now is None else now) + _random(16)


def new_secret() -> str:
    """A new high-entropy secret (app secret, device token, service password); never starting
    with ``-``, which command lines (argparse, getopt) take for an option: one in 64 did, and
    ``--app-secret -x…`` was refused as a missing value."""
    while True:
        secret = secrets.token_urlsafe(32)
        if not secret.startswith("-"):
            return secret


def is_valid_id(value: str) -> bool:
    """True if ``value`` can be used as an id and as one MQTT topic level."""
    return _ID_RE.fullmatch(value) is not None
