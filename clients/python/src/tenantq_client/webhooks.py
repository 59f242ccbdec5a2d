"""Checking that a webhook delivery comes from tenantq.

tenantq signs every delivery: header ``tenantq-signature: t=<unix seconds>,v1=<hex>``, where the hex is
HMAC-SHA256 of ``"<t>." + raw body`` keyed with the endpoint's secret (returned once, when the webhook
is created). Verify the *raw* body, before parsing it: re-serialised JSON would not match.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

SIGNATURE_HEADER = "tenantq-signature"
DEFAULT_TOLERANCE = 300.0


class InvalidSignature(Exception):
    """The delivery is not signed with this secret, or its timestamp is too old or too new."""


def sign(secret: str, body: str | bytes, timestamp: int | None = None) -> str:
    """The header value tenantq would send for ``body`` (for tests of a receiver)."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    raw = body.encode() if isinstance(body, str) else body
    return f"t={t},v1={hmac.new(secret.encode(), f'{t}.'.encode() + raw, hashlib.sha256).hexdigest()}"


def verify_signature(
    secret: str,
    header: str | None,
    body: str | bytes,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> bool:
    """True if ``header`` signs ``body`` with ``secret`` and its timestamp is within ``tolerance``
    seconds of now (which stops replays of an old delivery). Several ``v1=`` values may be present
    (during a secret rotation); any match is enough."""
    if not header:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    raw = body.encode() if isinstance(body, str) else body
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + raw, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)


def construct_event(
    secret: str, header: str | None, body: str | bytes, *, tolerance: float = DEFAULT_TOLERANCE
) -> dict[str, Any]:
    """The delivery's JSON event, once its signature checks out (else :class:`InvalidSignature`)."""
    if not verify_signature(secret, header, body, tolerance=tolerance):
        raise InvalidSignature("the tenantq-signature header does not match this body and secret")
    event: dict[str, Any] = json.loads(body)
    return event
