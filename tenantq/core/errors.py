"""One error hierarchy, one JSON shape: ``{"error": {"code", "message", "details"}}``.

Services, the worker and the CLI raise ``TenantqError`` subclasses; the HTTP side (handlers, the
request id, the JSON 500) is in :mod:`tenantq.core.http_errors`, which only the app imports. This
module imports nothing beyond the standard library, so an operator command that raises or catches
these errors does not load FastAPI and Starlette.
"""

from __future__ import annotations

from typing import Any


class TenantqError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        details: Any = None,
        code: str | None = None,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        if code:
            self.code = code
        if status_code:
            self.status_code = status_code
        self.headers = headers or {}


class Unauthorized(TenantqError):
    status_code = 401
    code = "unauthorized"


class Forbidden(TenantqError):
    status_code = 403
    code = "forbidden"


class NotFound(TenantqError):
    status_code = 404
    code = "not_found"


class Conflict(TenantqError):
    status_code = 409
    code = "conflict"


class InvalidInput(TenantqError):
    status_code = 422
    code = "invalid_input"


class TooManyRequests(TenantqError):
    status_code = 429
    code = "rate_limited"


class PaymentRequired(TenantqError):
    status_code = 402
    code = "quota_exceeded"


class PayloadTooLarge(TenantqError):
    status_code = 413
    code = "payload_too_large"


class ServiceUnavailable(TenantqError):
    status_code = 503
    code = "unavailable"


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}
