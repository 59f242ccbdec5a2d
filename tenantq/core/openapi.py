"""The OpenAPI document as a contract: one error model, the error answers of every operation, security.

FastAPI describes what a route declares: its parameters, its body and its ``response_model``. What the
layers around a route add stays invisible to it, so ``install_openapi`` adds it from the route's
dependencies, after FastAPI built the document:

- every operation may answer 400 (malformed JSON, duplicate ``Content-Type``), 413 (body over
  ``TENANTQ_MAX_BODY_BYTES``) and 422 (invalid input, NUL in the URL): the request guard and the
  validation handler in ``core.errors`` answer them for every route;
- an operation with a path parameter answers 404 for an id that is missing or another tenant's;
- an operation behind a credential (a ``Credential``, declared by ``tenants.access``, which the app
  passes in) gets that credential's security requirement and its errors (401, 403, 429);
- every error answer, also those a router declares with ``errors(...)``, has the one error model
  ``ErrorResponse``, which replaces FastAPI's ``{"detail": ...}`` validation model.

A route declares only the errors its service raises (409, 402, 429 ``rate_limited``, 503) with
``errors(...)``; the rest follow from what it depends on, so a new route cannot forget them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel, ConfigDict, Field

ERROR_SCHEMA = "ErrorResponse"
JSON = "application/json"


class ErrorInfo(BaseModel):
    code: str = Field(
        description="Machine-readable error code, stable across releases (e.g. `not_found`, "
        "`invalid_input`, `quota_exceeded`).",
        examples=["not_found"],
    )
    message: str = Field(description="A sentence for humans; may change between releases.")
    details: Any = Field(
        default=None,
        description="Structured context, or null. For `invalid_input` a list of `{loc, msg, type}`, one per "
        "failed check; for a 500 `{request_id}`.",
    )


class ErrorResponse(BaseModel):
    """The body of every error answer (4xx and 5xx)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"error": {"code": "not_found", "message": "Job not found.", "details": {"id": "j1"}}}
            ]
        }
    )

    error: ErrorInfo


# What each error status means in this API, and the code of its example.
ERROR_STATUSES: dict[int, tuple[str, str, str]] = {
    400: (
        "Malformed request: the body is not valid JSON or UTF-8, or a header is duplicated or invalid.",
        "malformed_json",
        "Request body is not valid JSON.",
    ),
    401: (
        "No valid credential: missing, unknown, revoked or expired.",
        "invalid_api_key",
        "Invalid API key.",
    ),
    402: (
        "A hard quota of the plan is used up for this period (code `quota_exceeded`).",
        "quota_exceeded",
        "Monthly job quota exhausted.",
    ),
    403: ("The credential is valid but not allowed to do this.", "forbidden", "Forbidden."),
    404: (
        "No such resource; another tenant's resource answers the same.",
        "not_found",
        "Not found.",
    ),
    409: ("The request conflicts with the resource's current state.", "conflict", "Conflict."),
    413: (
        "The request body is larger than the server accepts (code `payload_too_large`).",
        "payload_too_large",
        "Request body exceeds 1048576 bytes.",
    ),
    422: (
        (
            "The request failed validation (code `invalid_input`, `details` lists each failed check), or "
            "a value was refused by a rule of the service (a more specific code)."
        ),
        "invalid_input",
        "Request failed validation.",
    ),
    429: (
        "Too many requests; retry after the `Retry-After` header's seconds.",
        "rate_limited",
        "Submission rate limit exceeded.",
    ),
    503: (
        (
            "A backing service (Redis, the broker) is unavailable; nothing was changed. Retry after "
            "`Retry-After` seconds."
        ),
        "unavailable",
        "Service unavailable; retry later.",
    ),
}

# Answered for every operation by the request guard and the validation handler (core.errors).
EVERY_OPERATION = (400, 413, 422)


def errors(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for the errors a route's service raises, e.g. ``errors(409)`` or
    ``errors(409, s409="...codes...")`` for a description naming the codes."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description = descriptions.get(f"s{status}", ERROR_STATUSES[status][0])
        out[status] = {"model": ErrorResponse, "description": description}
    return out


def error_example(status: int) -> dict[str, Any]:
    _description, code, message = ERROR_STATUSES[status]
    details: Any = None
    if status == 422:
        details = [
            {
                "loc": ["body", "priority"],
                "msg": "Input should be less than or equal to 9",
                "type": "less_than_equal",
            }
        ]
    return {"error": {"code": code, "message": message, "details": details}}


@dataclass(frozen=True)
class Credential:
    """How one kind of caller authenticates, for the document: the dependency that checks it, the
    security schemes it accepts (any one of them), and the errors it answers.

    ``scope_of`` names the scope a dependency requires, if it is a scope check; the requirement then
    lists it (OpenAPI 3.1 allows role names on any scheme type)."""

    dependency: Callable[..., Any]
    schemes: dict[str, dict[str, Any]]
    errors: tuple[int, ...] = (401, 403, 429)
    scope_of: Callable[[Any], str | None] = field(default=lambda _call: None)

    def requirement(self, calls: list[Any]) -> list[dict[str, list[str]]] | None:
        # A dependency may authenticate by calling the credential's own (``authenticates_with``).
        if not any(
            c is self.dependency or getattr(c, "authenticates_with", None) is self.dependency for c in calls
        ):
            return None
        scopes = sorted({s for s in (self.scope_of(c) for c in calls) if s})
        return [{name: scopes} for name in self.schemes]


def _calls(dependant: Dependant) -> Iterator[Any]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from _calls(sub)


def _route_operations(app: FastAPI) -> Iterator[tuple[Any, str]]:
    """(route, method) of every documented operation. Included routers stay nested in ``app.routes``;
    a route context is the route as included (prefix and router dependencies applied)."""
    for context in iter_route_contexts(app.routes):
        if isinstance(context.original_route, APIRoute) and context.include_in_schema:
            for method in sorted(context.methods or ()):
                yield context, method.lower()


def _json_error(status: int, description: str | None = None) -> dict[str, Any]:
    return {
        "description": description or ERROR_STATUSES[status][0],
        "content": {
            JSON: {
                "schema": {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"},
                "example": error_example(status),
            }
        },
    }


def _set_error(responses: dict[str, Any], status: int) -> None:
    existing = responses.get(str(status))
    description = existing.get("description") if existing else None
    schema = ((existing or {}).get("content") or {}).get(JSON, {}).get("schema", {})
    if schema.get("$ref", "").rsplit("/", 1)[-1] not in ("", ERROR_SCHEMA, "HTTPValidationError"):
        return  # a body of its own, declared by the route (readiness answers 503 with its checks)
    if status == 422 and description == "Validation Error":  # FastAPI's default, for its own model
        description = None
    responses[str(status)] = _json_error(status, description)


def complete_schema(
    app: FastAPI,
    schema: dict[str, Any],
    credentials: Iterable[Credential],
    schemes: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Add security, error answers and the error model to FastAPI's document (see the module).
    ``schemes`` are security schemes that routes name themselves (``openapi_extra``)."""
    credentials = list(credentials)
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas[ERROR_SCHEMA] = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schemas[ERROR_SCHEMA].pop("$defs", {})
    schemas.update(defs)
    security_schemes = components.setdefault("securitySchemes", {})
    security_schemes.update(schemes or {})
    for credential in credentials:
        security_schemes.update(credential.schemes)

    for route, method in _route_operations(app):
        operation = schema["paths"][route.path_format][method]
        responses = operation.setdefault("responses", {})
        calls = list(_calls(route.dependant))
        statuses = set(EVERY_OPERATION)
        if route.dependant.path_params:
            statuses.add(404)
        if "security" not in operation:
            for credential in credentials:
                requirement = credential.requirement(calls)
                if requirement is not None:
                    operation["security"] = requirement
                    statuses.update(credential.errors)
                    break
            else:
                operation["security"] = []
        # Errors the router declared (errors(...)) or FastAPI added (422) get the one model too.
        statuses.update(int(code) for code in responses if code[0] in "45")
        for status in sorted(statuses):
            _set_error(responses, status)
        operation["responses"] = dict(sorted(responses.items()))
    return schema


def install_openapi(
    app: FastAPI, credentials: Iterable[Credential], schemes: dict[str, dict[str, Any]] | None = None
) -> None:
    """Serve the completed document at ``app.openapi_url`` (built once, on first request)."""
    credentials = list(credentials)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                openapi_version=app.openapi_version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
                servers=app.servers,
            )
            app.openapi_schema = complete_schema(app, schema, credentials, schemes)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
