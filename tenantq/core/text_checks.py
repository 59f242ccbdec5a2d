"""Text that may be stored, and stored data that may be shown: the checks shared by the request guard
and the schemas.

The request guard (``core/request_guard.py``) checks every JSON body before a route runs. The request
schemas check again (``SafeRequest``), so a body that reached a model some other way (a form, a
header the guard read differently, a CLI call) still cannot carry text the database rejects:
PostgreSQL stores no NUL character in text or JSON and raises ``DataError`` on one, a lone UTF-16
surrogate cannot be encoded as UTF-8 anywhere, and ``NaN``/``Infinity`` are not JSON.

Response schemas (``SafeResponse``) make whatever was stored before these checks existed, or what a
task returned, encodable: one odd record must never make a whole list endpoint fail.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, SerializerFunctionWrapHandler, model_serializer, model_validator

MAX_DEPTH = 64


class TextProblem(ValueError):
    """``code`` is the error code, ``loc`` the path to the offending value inside the checked value."""

    def __init__(self, code: str, message: str, loc: list[Any]) -> None:
        super().__init__(message)
        self.code, self.message, self.loc = code, message, loc


def text_problem(value: str) -> str | None:
    if "\x00" in value:
        return "NUL characters are not allowed in text."
    if value.isascii():
        return None
    try:
        value.encode("utf-8")  # in C: fails only on a lone surrogate
    except UnicodeEncodeError:
        return "Text contains an unpaired UTF-16 surrogate."
    return None


def check_value(root: Any, max_depth: int = MAX_DEPTH) -> None:
    """Walk a value iteratively (no recursion) and raise ``TextProblem`` on the first string with NUL
    or a lone surrogate, non-finite float, or nesting deeper than ``max_depth``."""
    stack: list[tuple[Any, int, list[Any]]] = [(root, 1, [])]
    while stack:
        value, depth, loc = stack.pop()
        if depth > max_depth:
            raise TextProblem("too_deeply_nested", f"JSON nesting deeper than {max_depth} levels.", loc)
        if isinstance(value, str):
            problem = text_problem(value)
            if problem:
                raise TextProblem("invalid_text", problem, loc)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise TextProblem("invalid_number", "NaN and Infinity are not valid JSON numbers.", loc)
        elif isinstance(value, BaseModel):
            for name, v in value.__dict__.items():
                stack.append((v, depth, [*loc, name]))
        elif isinstance(value, dict):
            for k, v in value.items():
                if isinstance(k, str):
                    problem = text_problem(k)
                    if problem:
                        raise TextProblem("invalid_text", problem, loc)
                stack.append((v, depth + 1, [*loc, k]))
        elif isinstance(value, list | tuple | set | frozenset):
            for i, v in enumerate(value):
                stack.append((v, depth + 1, [*loc, i]))


def _clean_text(value: str) -> str:
    # "?" for what UTF-8 cannot encode (a lone surrogate); NUL stays (JSON escapes it as \u0000).
    return value.encode("utf-8", "replace").decode("utf-8") if not value.isascii() else value


def json_safe(value: Any) -> Any:
    """A copy of ``value`` that JSON encodes: lone surrogates become "?", NaN and Infinity null."""
    if isinstance(value, str):
        return _clean_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {(_clean_text(k) if isinstance(k, str) else k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


class SafeRequest(BaseModel):
    """Base of request bodies: every string (keys included), number and nested value in every field
    is checked; a problem is a validation error (422) before anything is written."""

    @model_validator(mode="after")
    def _stored_text_is_valid(self) -> SafeRequest:
        try:
            check_value(self)
        except TextProblem as exc:
            where = ".".join(str(part) for part in exc.loc)
            raise ValueError(f"{exc.message} (at {where})" if where else exc.message) from None
        return self


class SafeResponse(BaseModel):
    """Base of responses that show stored free-form data (args, results, errors, names)."""

    # No return annotation on purpose: pydantic would publish it as the response's OpenAPI schema.
    @model_serializer(mode="wrap")
    def _encodable(self, handler: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]
        return json_safe(handler(self))
