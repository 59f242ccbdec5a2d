"""Structured logs for every tenantq process: one JSON object per line, or readable text on a terminal.

Every line carries the context known where it was written: ``tenant_id``, ``job_id``, ``task_id`` and
``attempt`` inside a running job (bound by the worker's prerun receiver), ``method``/``path``/``status``
for a request. Context comes from two places, merged: a context variable (``bind_context``), so a
library's own log calls inside a task are tagged too, and the ``extra=`` of the log call.

JSON or text: ``TENANTQ_LOG_JSON`` (true/false) decides; unset means JSON unless stderr is a terminal,
so a developer running ``tenantq up`` reads text while containers and CI produce JSON.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from tenantq.core import metrics
from tenantq.core.settings import get_settings

# Record attributes promoted to top-level JSON fields when a log call passes them in ``extra``.
CONTEXT_FIELDS = (
    "tenant_id",
    "job_id",
    "task_id",
    "task",
    "attempt",
    "worker",
    "state",
    "duration_ms",
    "wait_ms",
    "method",
    "path",
    "route",
    "status",
    "client",
    "event",
    "error",
)

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "tenantq_log_context", default=None
)


def current_context() -> dict[str, Any]:
    return dict(_context.get() or {})


def set_context(**fields: Any) -> contextvars.Token:
    """Bind fields to every log line of this thread/task until ``reset_context(token)``."""
    merged = {**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}}
    return _context.set(merged)


def reset_context(token: contextvars.Token | None = None) -> None:
    if token is not None:
        try:
            _context.reset(token)
            return
        except ValueError:  # token from another context (e.g. a signal fired in another thread)
            pass
    _context.set(None)


@contextmanager
def bind_context(**fields: Any) -> Iterator[None]:
    token = set_context(**fields)
    try:
        yield
    finally:
        reset_context(token)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = current_context()
    for name in CONTEXT_FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            fields[name] = value
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, context fields, exc (traceback) if any."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        payload.update(_fields(record))
        payload["pid"] = record.process
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            payload["exc"] = record.exc_text
        # default=str: an unexpected object in ``extra`` must never make a log call raise.
        return json.dumps(payload, default=str, ensure_ascii=False)


class HumanFormatter(logging.Formatter):
    """``time LEVEL logger: message  key=value ...`` for people at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = _fields(record)
        if fields:
            # Put the context before a traceback, not after it.
            head, sep, tail = text.partition("\n")
            text = head + "  " + " ".join(f"{k}={v}" for k, v in fields.items()) + sep + tail
        return text


def use_json(stream: Any = None) -> bool:
    forced = get_settings().log_json
    if forced is not None:
        return forced
    stream = stream if stream is not None else sys.stderr
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):
        return True


def make_formatter(stream: Any = None) -> logging.Formatter:
    return JsonFormatter() if use_json(stream) else HumanFormatter()


_HANDLER_MARK = "_tenantq_handler"


def configure(level: str | int = "INFO") -> logging.Handler:
    """Send the root logger to stderr through tenantq's formatter (idempotent: one handler)."""
    root = logging.getLogger()
    for handler in root.handlers:
        if getattr(handler, _HANDLER_MARK, False):
            handler.setFormatter(make_formatter(getattr(handler, "stream", None)))
            root.setLevel(level)
            return handler
    handler = logging.StreamHandler(sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(make_formatter(sys.stderr))
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def apply_formatter(logger: logging.Logger) -> None:
    """Give every handler on ``logger`` tenantq's formatter (used on the loggers Celery sets up)."""
    for handler in logger.handlers:
        handler.setFormatter(make_formatter(getattr(handler, "stream", None)))


def uvicorn_log_config(level: str = "INFO") -> dict[str, Any]:
    """A dictConfig for uvicorn: applied in every uvicorn worker process, so ``--workers N`` logs alike.

    uvicorn's access log stays off: tenantq's request middleware writes one richer line per request.
    """
    formatter = "json" if use_json() else "human"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {"()": "tenantq.core.logging.JsonFormatter"},
            "human": {"()": "tenantq.core.logging.HumanFormatter"},
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": formatter,
                "stream": "ext://sys.stderr",
            },
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            "uvicorn": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.error": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": True},
        },
    }


# Probes and scrapes arrive every few seconds; logging each at INFO would drown real traffic.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

request_log = logging.getLogger("tenantq.http")


class RequestLogMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware, which turns a client disconnect into a RuntimeError):
    one log line and one metrics observation per HTTP request."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0  # 0 = no response sent (e.g. the client went away first)

        async def send_wrapper(message: dict) -> None:
            nonlocal status
            if message.get("type") == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            status = status or 500
            raise
        finally:
            elapsed = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            tenant_id = (scope.get("state") or {}).get("tenant_id")
            path = scope.get("path", "")
            method = scope.get("method", "")
            client = scope.get("client")
            level = logging.DEBUG if path in QUIET_PATHS else logging.INFO
            request_log.log(
                level,
                "%s %s %s",
                method,
                path,
                status,
                extra={
                    "method": method,
                    "path": path,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                    "tenant_id": tenant_id,
                    "client": client[0] if client else None,
                },
            )
            if status:
                metrics.observe_request(method, route, status, elapsed)


def install_request_logging(app: Any) -> None:
    """One log line and one metrics observation per HTTP request (method, route, status, duration,
    tenant when authenticated). Added last, so it is the outermost middleware."""
    app.add_middleware(RequestLogMiddleware)
