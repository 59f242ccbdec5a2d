"""ASGI guard in front of every route: body size and text that must never reach the database.

- Body size: ``Content-Length`` over the limit answers 413 at once; a chunked body (no length) is
  counted while it arrives and answers 413 as soon as it crosses the limit, so neither can make the
  process buffer more than ``max_body_bytes``.
- JSON bodies (and bodies without a content type, which FastAPI parses as JSON) are checked once,
  for every route, before any handler runs: NUL characters (PostgreSQL text and JSON cannot store
  them), lone UTF-16 surrogates (not encodable as UTF-8: SQLite, PostgreSQL and Redis writes would
  fail halfway), ``NaN``/``Infinity`` (Python's parser accepts them, JSON does not, and they compare
  false against every bound) and nesting deeper than ``MAX_DEPTH`` (the parser's recursion limit
  would otherwise surface as a 500). Each answers 422 in the one error shape, and nothing is written.
- More than one ``Content-Type`` or ``Content-Length`` header answers 400: the framework reads the
  first, so the guard must not decide on a different one.
- NUL (``%00``) in the path or query string answers 422 for the same reason as in bodies.
Malformed JSON is left to FastAPI (400 ``malformed_json``), so that answer stays the same everywhere.
"""

from __future__ import annotations

import email.message
import json
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tenantq.core.errors import error_body
from tenantq.core.settings import get_settings
from tenantq.core.text_checks import MAX_DEPTH, TextProblem, check_value


class _Reject(Exception):
    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


class _Disconnected(Exception):
    pass


def _reject_constant(name: str) -> Any:
    raise _Reject(422, "invalid_number", f"{name} is not a valid JSON number.")


def check_json_value(root: Any) -> None:
    """Raise _Reject (422) on the first bad string, non-finite number or too deep nesting."""
    try:
        check_value(root, MAX_DEPTH)
    except TextProblem as exc:
        details = {"max_depth": MAX_DEPTH} if exc.code == "too_deeply_nested" else {"loc": exc.loc}
        raise _Reject(422, exc.code, exc.message, details) from None


def _is_json(content_type: str | None) -> bool:
    """Decide as FastAPI does (``fastapi.routing``), so the guard checks every body FastAPI parses."""
    if not content_type:
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


def check_json_body(body: bytes) -> None:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _Reject(400, "malformed_json", "Request body is not valid UTF-8.") from None
    try:
        parsed = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise _Reject(
            422,
            "too_deeply_nested",
            f"JSON nesting deeper than {MAX_DEPTH} levels.",
            {"max_depth": MAX_DEPTH},
        ) from None
    except ValueError:
        return  # malformed JSON: FastAPI answers it (400 malformed_json) like everywhere else
    check_json_value(parsed)


_SINGLE_HEADERS = frozenset({b"content-type", b"content-length"})


class RequestGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            body, more = await self._read_body(scope, receive)
        except _Disconnected:
            return
        except _Reject as exc:
            response = JSONResponse(error_body(exc.code, exc.message, exc.details), status_code=exc.status)
            await response(scope, receive, send)
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": more}
            return await receive()

        await self.app(scope, replay, send)

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[bytes, bool]:
        raw_path: bytes = scope.get("raw_path") or scope.get("path", "").encode("utf-8", "surrogateescape")
        query: bytes = scope.get("query_string", b"")
        if b"%00" in raw_path or b"\x00" in raw_path or b"%00" in query or b"\x00" in query:
            raise _Reject(422, "invalid_text", "NUL characters are not allowed in the URL.")
        limit = get_settings().max_body_bytes
        headers: dict[bytes, bytes] = {}
        for raw_name, value in scope.get("headers", []):
            name = raw_name.lower()
            if name in _SINGLE_HEADERS and name in headers:
                # Starlette reads the first of two, this guard the last: a second header could route
                # a body past the checks. One of each, or 400.
                raise _Reject(400, "bad_request", f"More than one {name.decode('latin-1').title()} header.")
            headers[name] = value
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise _Reject(400, "bad_request", "Invalid Content-Length header.") from None
            if declared < 0:
                raise _Reject(400, "bad_request", "Invalid Content-Length header.")
            if declared > limit:
                raise _Reject(
                    413, "payload_too_large", f"Request body exceeds {limit} bytes.", {"limit": limit}
                )
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                # The client left mid-body: a truncated body must not be processed.
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _Reject(
                    413, "payload_too_large", f"Request body exceeds {limit} bytes.", {"limit": limit}
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        content_type = headers.get(b"content-type")
        if body and _is_json(content_type.decode("latin-1") if content_type else None):
            check_json_body(body)
        return body, False
