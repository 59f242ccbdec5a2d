"""Structured logs for every tenantq process: one JSON object per line, or readable text on a terminal.

Every line carries the context known where it was written: ``tenant_id``, ``job_id``, ``task_id`` and
``attempt`` inside a running job (bound by the worker's prerun receiver), ``method``/``path``/``status``
for a request. Context comes from two places, merged: a context variable (``bind_context``), so a
library's own log calls inside a task are tagged too, and the ``extra=`` of the log call.

Secrets and results stay out: both formatters redact token-like query parameters (``api_token``,
``token``, ``key``, ``secret``, ``password``, ``signature``, ...) and passwords in URLs, in the message,
the context fields and tracebacks (an HTTP client logs every URL it calls), and Celery's
"Task ... succeeded" line shows no return value (a job's result is the tenant's data).

JSON or text: ``TENANTQ_LOG_JSON`` (true/false) decides; unset means JSON unless stderr is a terminal,
so a developer running ``tenantq up`` reads text while containers and CI produce JSON.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tenantq.core.settings import get_settings

if TYPE_CHECKING:  # the CLI and the worker log through this module without loading Starlette
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


def set_context(**fields: Any) -> contextvars.Token[dict[str, Any] | None]:
    """Bind fields to every log line of this thread/task until ``reset_context(token)``."""
    merged = {**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}}
    return _context.set(merged)


def reset_context(token: contextvars.Token[dict[str, Any] | None] | None = None) -> None:
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


# A query parameter whose name says it carries a credential: its value is replaced.
_SECRET_PARAM = re.compile(
    r"(?P<name>[?&;](?:[\w.-]*(?:token|secret|passw(?:or)?d|pwd|signature|key|credential|auth)[\w.-]*"
    r"|sig|code|session|jwt|x-amz-[\w-]+)=)(?P<value>[^&#\s'\"<>]*)",
    re.IGNORECASE,
)
# user:password@ in a URL's authority.
_URL_PASSWORD = re.compile(
    r"(?P<head>[a-z][a-z0-9+.-]*://[^/\s:@'\"]*:)(?P<value>[^@/\s'\"]+)(?=@)", re.IGNORECASE
)
REDACTED = "[redacted]"
RESULT_HIDDEN = "[result not logged]"


def redact(text: str) -> str:
    """``text`` with credential-like URL query values and URL passwords replaced by ``[redacted]``."""
    if "=" not in text and "@" not in text:
        return text
    text = _SECRET_PARAM.sub(lambda m: m.group("name") + REDACTED, text)
    return _URL_PASSWORD.sub(lambda m: m.group("head") + REDACTED, text)


def _message(record: logging.LogRecord) -> str:
    args = record.args
    # Celery's success line: "Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s".
    if isinstance(args, dict) and "return_value" in args:
        try:
            return redact(str(record.msg) % {**args, "return_value": RESULT_HIDDEN})
        except (TypeError, ValueError, KeyError):
            return RESULT_HIDDEN
    return redact(record.getMessage())


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = current_context()
    for name in CONTEXT_FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            fields[name] = redact(value) if isinstance(value, str) else value
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, context fields, exc (traceback) if any."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _message(record),
        }
        payload.update(_fields(record))
        payload["pid"] = record.process
        if record.exc_info:
            payload["exc"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            payload["exc"] = redact(record.exc_text)
        # default=str: an unexpected object in ``extra`` must never make a log call raise.
        return json.dumps(payload, default=str, ensure_ascii=False)


class HumanFormatter(logging.Formatter):
    """``time LEVEL logger: message  key=value ...`` for people at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _message(record)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return redact(super().formatException(ei))

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

# Receives (method, route template, status, seconds) once per answered request: the metrics, which
# live above the core, hand it in when the app is assembled.
RequestObserver = Callable[[str, str, int, float], None]


class RequestLogMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware, which turns a client disconnect into a RuntimeError):
    one log line and one metrics observation per HTTP request."""

    def __init__(self, app: ASGIApp, observe: RequestObserver) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0  # 0 = no response sent (e.g. the client went away first)

        async def send_wrapper(message: Message) -> None:
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
                self.observe(method, route, status, elapsed)


def install_request_logging(app: Any, observe: RequestObserver) -> None:
    """One log line and one ``observe`` call per HTTP request (method, route, status, duration,
    tenant when authenticated). Added last, so it is the outermost middleware."""
    app.add_middleware(RequestLogMiddleware, observe=observe)
