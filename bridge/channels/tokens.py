"""Which device tokens each vendor can take, checked when a device registers one (pure).

Each channel module knows its vendor's token (``validate_token``); this maps vendor names onto
them, so registration refuses with 422 what a send could never deliver.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from bridge.channels import apns, fcm, hms, mipush, webpush
from mqttpush.errors import InvalidContent

VALIDATORS: Mapping[str, Callable[[str], str]] = {
    "apns": apns.validate_token,
    "fcm": fcm.validate_token,
    "hms": hms.validate_token,
    "mipush": mipush.validate_token,
    "webpush": webpush.validate_token,
}


def validate_vendor_token(vendor: str, token: str) -> str:
    """``token`` in the form to store for ``vendor``; 422 ``bad_vendor_token`` (``bad_subscription``
    for WebPush) with what is wrong, or for a vendor we do not know."""
    validate = VALIDATORS.get(vendor)
    if validate is None:
        raise InvalidContent(
            f"unknown vendor {vendor!r}; known: {', '.join(VALIDATORS)}", code="bad_vendor_token"
        )
    return validate(token)
