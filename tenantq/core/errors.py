"""One error hierarchy, one JSON shape: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tenantq.core.metrics import rejection


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


def _clean_validation_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cleaned = []
    for err in errors:
        item = {"loc": list(err.get("loc", ())), "msg": err.get("msg"), "type": err.get("type")}
        cleaned.append(item)
    return cleaned


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TenantqError)
    async def _tenantq_error(request: Request, exc: TenantqError) -> JSONResponse:
        if exc.status_code in (402, 429):  # rate-limit and quota refusals are an operator signal
            rejection(getattr(request.state, "tenant_id", None), exc.code, exc.status_code)
        return JSONResponse(
            error_body(exc.code, exc.message, exc.details), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _clean_validation_errors(list(exc.errors()))
        malformed = any(e["type"] == "json_invalid" for e in errors)
        if malformed:
            return JSONResponse(error_body("malformed_json", "Request body is not valid JSON.", errors), 400)
        return JSONResponse(error_body("invalid_input", "Request failed validation.", errors), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 403: "forbidden"}
        code = codes.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else "HTTP error"
        return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=exc.headers)
