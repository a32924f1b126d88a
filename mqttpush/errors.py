"""The exception tree of mqttpush.

Every error the library raises on purpose is a subclass of :class:`MqttPushError`
and carries a stable snake_case ``code``; the edges translate it (HTTP status and
``{"error": {"code", "message"}}`` in the API, exit status 2 in the CLI)::

    MqttPushError
    ├── BadRequest            400  malformed input (JSON, headers)
    ├── AuthError             401  unknown_app, bad_signature, stale_timestamp, replayed_nonce, ...
    ├── Forbidden             403  not_your_device
    ├── NotFound              404  unknown_device, unknown_message, ...
    ├── Conflict              409
    ├── Gone                  410  a push endpoint that was unregistered (Web Push, UnifiedPush)
    ├── PayloadTooLarge       413  envelope or request body over its limit
    ├── UnsupportedMediaType  415  a body on a JSON route declared as something else
    ├── InvalidContent        422  valid JSON that breaks a rule (ttl, platform, target)
    ├── RateLimited           429  rate_limited: an app or a client IP over its request rate; retry after
    ├── Overloaded            503  overloaded: pushes would wait too long to go out; retry after
    ├── StoreUnavailable      503  store_unavailable: the store cannot write (disk full, I/O error,
    │                              locked beyond the busy timeout); nothing was accepted; retry after
    ├── StartupError               a server part could not start (port in use, ...)
    ├── StoreError                 the SQLite store refused (schema too new, ...); at start-up:
    │                              data_dir_locked, data_dir_unwritable, store_corrupt,
    │                              store_foreign, schema_too_new, store_busy, master_key_missing,
    │                              master_key_wrong, master_key_invalid (docs/operations.md)
    └── ClientError                the server client or CLI could not complete a call
"""

from __future__ import annotations


class MqttPushError(Exception):
    """Root of every error mqttpush raises on purpose."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_json(self) -> dict[str, dict[str, str]]:
        """The wire form of docs/api.md."""
        return {"error": {"code": self.code, "message": self.message}}


class BadRequest(MqttPushError):
    status = 400
    code = "bad_request"


class AuthError(MqttPushError):
    status = 401
    code = "unauthorized"


class Forbidden(MqttPushError):
    status = 403
    code = "forbidden"


class NotFound(MqttPushError):
    status = 404
    code = "not_found"


class Conflict(MqttPushError):
    status = 409
    code = "conflict"


class Gone(MqttPushError):
    """The object existed and was removed for good (an unregistered push endpoint)."""

    status = 410
    code = "gone"


class PayloadTooLarge(MqttPushError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(MqttPushError):
    """A body on a JSON route declared as something else (``text/plain``, a form)."""

    status = 415
    code = "unsupported_media_type"


class InvalidContent(MqttPushError):
    status = 422
    code = "invalid_request"


class RateLimited(MqttPushError):
    """Refused for now: the app (or, before authentication, the client IP) is over its request
    rate. ``retry_after`` (whole seconds, at least 1) goes out as the ``Retry-After`` header."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class Overloaded(MqttPushError):
    """Refused for now: accepted pushes already wait longer than the configured bound to be
    published. ``retry_after`` (seconds) goes out as the ``Retry-After`` header."""

    status = 503
    code = "overloaded"

    def __init__(self, message: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class StoreUnavailable(MqttPushError):
    """The store cannot write now (disk full, I/O error, locked beyond the busy timeout): nothing
    of the call is on disk. Transient: ``retry_after`` (seconds) goes out as ``Retry-After``."""

    status = 503
    code = "store_unavailable"

    def __init__(self, message: str, *, retry_after: int = 5, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class StartupError(MqttPushError):
    """A server part could not start (port in use, bad address)."""

    code = "cannot_start"


class StoreError(MqttPushError):
    code = "store_error"


class ClientError(MqttPushError):
    """A call from the server client (or CLI) failed; ``status`` is the HTTP status, 0 if none;
    ``retry_after`` the seconds the server's ``Retry-After`` asked for, None if it sent none."""

    def __init__(
        self, message: str, *, code: str = "client_error", status: int = 0, retry_after: float | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.retry_after = retry_after
