"""The HTTP side of the error shape: exception handlers, the request id and the JSON 500.

Expected errors are :class:`~tenantq.core.errors.TenantqError` subclasses, answered by the handlers
``install_error_handlers`` registers. Anything else a route raises is caught by ``ErrorTrap``, the
outermost middleware: it logs the traceback and answers 500 ``internal_error`` in the same shape,
never Starlette's text/plain page. Every request gets a request id (``X-Request-ID``, taken from the
client when it is a short token, else generated); it is bound to the log context of the request, so
the request log line and the traceback carry it, and a 500 names it in ``details.request_id`` for the
caller to quote.

An infrastructure failure is not a bug of the request: ``infrastructure_error`` maps it to a 503 in the
same shape, with ``Retry-After``: ``database_unavailable`` (the database refused, dropped or timed out a
connection or a statement, or no pooled connection came free in time) and ``queue_unavailable`` (Redis
refused, dropped, timed out, or is still loading its data). Both the exception handlers and
``ErrorTrap`` use it, so a failure raised in a dependency or a middleware answers the same way.

Only the app imports this module: FastAPI and Starlette take a quarter of a second to load, which the
CLI's operator commands, the worker and the services raising these errors need not pay.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tenantq.core.db import is_database_outage
from tenantq.core.errors import ServiceUnavailable, TenantqError, error_body
from tenantq.core.logging import bind_context
from tenantq.core.metrics import rejection

REQUEST_ID_HEADER = "X-Request-ID"
# An id from the client (or the ingress in front) is kept only when it cannot smuggle anything into
# a log line or a header.
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

# The logger keeps the name of the module it started in: log queries and alerts filter on it.
error_log = logging.getLogger("tenantq.errors")


# How long a client should wait before retrying after each kind of outage (seconds, as sent).
DATABASE_RETRY_AFTER = "5"
QUEUE_RETRY_AFTER = "2"
OVERLOADED_RETRY_AFTER = "1"


def _is_queue_failure(exc: BaseException) -> bool:
    # BusyLoadingError (Redis loading its AOF) is a ConnectionError; TimeoutError covers a stalled Redis.
    return isinstance(exc, redis.ConnectionError | redis.TimeoutError)


def infrastructure_error(exc: BaseException) -> TenantqError | None:
    """The 503 an infrastructure failure answers, or None when ``exc`` is not one. Looks through
    exception groups (anyio task groups) and the ``__cause__`` chain, where middlewares wrap it."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if is_database_outage(current):
            return ServiceUnavailable(
                "The database is unavailable. Retry later.",
                code="database_unavailable",
                headers={"Retry-After": DATABASE_RETRY_AFTER},
            )
        if _is_queue_failure(current):
            return ServiceUnavailable(
                "The queue is unavailable. Retry later.",
                code="queue_unavailable",
                headers={"Retry-After": QUEUE_RETRY_AFTER},
            )
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        todo.extend(nxt for nxt in (current.__cause__, current.__context__) if nxt is not None)
    return None


def error_response(exc: TenantqError) -> JSONResponse:
    return JSONResponse(
        error_body(exc.code, exc.message, exc.details), status_code=exc.status_code, headers=exc.headers
    )


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
        return error_response(exc)

    async def _infrastructure_error(request: Request, exc: Exception) -> JSONResponse:
        mapped = infrastructure_error(exc)
        if mapped is None:  # a subclass registered below that is not an outage: a bug after all
            raise exc
        error_log.warning(
            "%s %s: %s (%s)",
            request.method,
            request.url.path,
            mapped.code,
            exc,
            extra={"method": request.method, "path": request.url.path, "status": 503},
        )
        return error_response(mapped)

    for exc_class in (sa_exc.DBAPIError, sa_exc.TimeoutError, sa_exc.DisconnectionError, redis.RedisError):
        app.add_exception_handler(exc_class, _infrastructure_error)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _clean_validation_errors(list(exc.errors()))
        malformed = any(e["type"] == "json_invalid" for e in errors)
        if malformed:
            return JSONResponse(error_body("malformed_json", "Request body is not valid JSON.", errors), 400)
        return JSONResponse(error_body("invalid_input", "Request failed validation.", errors), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 403: "forbidden"}
        code = codes.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else "HTTP error"
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request))
        return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=headers)


def allowed_methods(request: Request) -> list[str]:
    """Every method served at the path template the request matched (``/v1/jobs``: GET and POST).
    Starlette's 405 names only the methods of the first route whose path matched, while
    ``GET /v1/jobs`` and ``POST /v1/jobs`` are two routes. The template is the first match's, as routing
    picks it: ``/v1/jobs/batch`` is POST only, though ``GET /v1/jobs/{job_id}`` would take the path."""
    routes = [r for r in iter_route_contexts(request.app.router.routes) if r.methods and r.path_format]
    template = next((r.path_format for r in routes if r.matches(request.scope)[0] != Match.NONE), None)
    return sorted({m for r in routes if r.path_format == template for m in r.methods or ()})


def _incoming_request_id(scope: Scope) -> str:
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
    for name, value in headers:
        if name.lower() == b"x-request-id":
            candidate = value.decode("latin-1")
            if _CLIENT_REQUEST_ID.match(candidate):
                return candidate
            break
    return uuid.uuid4().hex


class ErrorTrap:
    """Outermost middleware: a request id for every HTTP request, and a JSON 500 for any exception
    nothing else handled (pure ASGI, so it sees exceptions from every middleware inside it too)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.lower().encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        with bind_context(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception as exc:
                mapped = infrastructure_error(exc)
                if mapped is not None and not started:
                    error_log.warning(
                        "%s %s: %s (%s)",
                        scope.get("method", ""),
                        scope.get("path", ""),
                        mapped.code,
                        exc,
                        extra={"method": scope.get("method"), "path": scope.get("path"), "status": 503},
                    )
                    await error_response(mapped)(scope, receive, send_with_id)
                    return
                error_log.exception(
                    "unhandled error in %s %s",
                    scope.get("method", ""),
                    scope.get("path", ""),
                    extra={"method": scope.get("method"), "path": scope.get("path"), "status": 500},
                )
                if started:
                    raise  # part of a response is out: only dropping the connection can signal the error
                response = JSONResponse(
                    error_body(
                        "internal_error",
                        "Internal server error. Quote the request id when reporting it.",
                        {"request_id": request_id},
                    ),
                    status_code=500,
                )
                await response(scope, receive, send_with_id)
