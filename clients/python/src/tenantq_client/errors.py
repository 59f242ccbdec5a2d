"""Exceptions raised for the API's error answers, one class per error code.

Every error answer of tenantq has the shape ``{"error": {"code", "message", "details"}}``. The SDK raises
the class named after ``code`` (``queue_full`` -> :class:`QueueFull`), a subclass of the class for the
HTTP status (:class:`TooManyRequests` for 429), itself a subclass of :class:`ApiError`. A code this SDK
does not know yet raises the status class, so ``except TooManyRequests`` keeps working.
"""

from __future__ import annotations

from typing import Any


class TenantqClientError(Exception):
    """Base of everything this SDK raises."""


class ApiError(TenantqClientError):
    """An error answer from the API."""

    status_code: int = 0

    def __init__(
        self,
        message: str,
        *,
        code: str,
        status_code: int,
        details: Any = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status_code} {code}: {message}")
        self.message = message
        self.code = code
        self.status_code = status_code
        self.details = details
        self.request_id = request_id
        self.retry_after = retry_after


class ConnectionFailed(TenantqClientError):
    """The API could not be reached (after the retries)."""


class JobNotFinished(TenantqClientError):
    """``wait()`` ran out of time before the job finished; ``job`` is its last known state."""

    def __init__(self, job: Any) -> None:
        super().__init__(f"job {job.id} is still {job.status}")
        self.job = job


# -- by HTTP status ----------------------------------------------------------------------------------
class BadRequest(ApiError):
    status_code = 400


class Unauthorized(ApiError):
    status_code = 401


class PaymentRequired(ApiError):
    status_code = 402


class Forbidden(ApiError):
    status_code = 403


class NotFound(ApiError):
    status_code = 404


class Conflict(ApiError):
    status_code = 409


class PayloadTooLarge(ApiError):
    status_code = 413


class InvalidInput(ApiError):
    status_code = 422


class TooManyRequests(ApiError):
    status_code = 429


class ServerError(ApiError):
    status_code = 500


class ServiceUnavailable(ServerError):
    status_code = 503


# -- by error code (the codes a tenant's calls can meet) ----------------------------------------------
class MalformedJson(BadRequest): ...


class InvalidCursor(BadRequest): ...


class InvalidApiKey(Unauthorized): ...


class ExpiredApiKey(Unauthorized): ...


class RevokedApiKey(Unauthorized): ...


class InvalidSession(Unauthorized): ...


class QuotaExceeded(PaymentRequired): ...


class MissingScope(Forbidden): ...


class TenantSuspended(Forbidden): ...


class IdempotencyConflict(Conflict): ...


class NotRerunnable(Conflict): ...


class NotCancellable(Conflict): ...


class CancelRace(Conflict): ...


class UnknownTask(InvalidInput): ...


class InvalidArgs(InvalidInput): ...


class PriorityNotAllowed(InvalidInput): ...


class InvalidWorkflow(InvalidInput): ...


class InvalidCron(InvalidInput): ...


class WebhookUrlNotAllowed(InvalidInput): ...


class QueueFull(TooManyRequests): ...


class RateLimited(TooManyRequests): ...


class QueueUnavailable(ServiceUnavailable): ...


class InternalError(ServerError): ...


def _code_name(cls: type) -> str:
    """``QueueFull`` -> ``queue_full``."""
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in cls.__name__).lstrip("_")


_STATUS_CLASSES: list[type[ApiError]] = [
    BadRequest,
    Unauthorized,
    PaymentRequired,
    Forbidden,
    NotFound,
    Conflict,
    PayloadTooLarge,
    InvalidInput,
    TooManyRequests,
    ServerError,
    ServiceUnavailable,
]
BY_STATUS: dict[int, type[ApiError]] = {cls.status_code: cls for cls in _STATUS_CLASSES}
BY_CODE: dict[str, type[ApiError]] = {
    _code_name(cls): cls
    for cls in [
        MalformedJson,
        InvalidCursor,
        InvalidApiKey,
        ExpiredApiKey,
        RevokedApiKey,
        InvalidSession,
        QuotaExceeded,
        MissingScope,
        TenantSuspended,
        IdempotencyConflict,
        NotRerunnable,
        NotCancellable,
        CancelRace,
        UnknownTask,
        InvalidArgs,
        PriorityNotAllowed,
        InvalidWorkflow,
        InvalidCron,
        WebhookUrlNotAllowed,
        QueueFull,
        RateLimited,
        QueueUnavailable,
        InternalError,
    ]
}
# The status classes' own codes (``not_found``, ``invalid_input``...) map to them too.
BY_CODE.update(
    {
        "bad_request": BadRequest,
        "unauthorized": Unauthorized,
        "forbidden": Forbidden,
        "not_found": NotFound,
        "conflict": Conflict,
        "payload_too_large": PayloadTooLarge,
        "invalid_input": InvalidInput,
        "unavailable": ServiceUnavailable,
    }
)


def error_for(status_code: int, body: Any, request_id: str | None, retry_after: float | None) -> ApiError:
    """The exception for an error answer (any body: a proxy's HTML error page too)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"code": f"http_{status_code}", "message": str(body)[:500] if body else "", "details": None}
    code = str(error.get("code") or f"http_{status_code}")
    cls = BY_CODE.get(code)
    if cls is None or (cls.status_code and cls.status_code != status_code):
        cls = BY_STATUS.get(status_code) or (ServerError if status_code >= 500 else ApiError)
    return cls(
        str(error.get("message") or ""),
        code=code,
        status_code=status_code,
        details=error.get("details"),
        request_id=request_id,
        retry_after=retry_after,
    )
