"""The OpenAPI document says what the server does: checks on the document itself, in process.

schemathesis (``test_schemathesis.py``) checks the server against the document by sampling; these
check the document's own promises on every operation: security, the error model on every error, a
schema for every success, true constraints, unique names, examples that validate.
"""

from __future__ import annotations

import os
import re
from typing import Any

import jsonschema_rs
import pytest

from tenantq.core.errors import InvalidInput
from tenantq.core.periods import PERIOD_PATTERN, Period
from tenantq.core.repository import encode_cursor
from tenantq.platform.jobs.registry import all_task_types
from tenantq.tenants.access.keys import ALL_SCOPES

ERROR_REF = "#/components/schemas/ErrorResponse"
METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from tenantq.app import create_app

    with TestClient(create_app()) as client:
        return client.get("/openapi.json").json()


def operations(document: dict[str, Any]):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield path, method, operation


def validator(document: dict[str, Any], ref: str) -> Any:
    return jsonschema_rs.Draft202012Validator({"$ref": ref, "components": document["components"]})


def test_every_operation_declares_its_security(document) -> None:
    schemes = document["components"]["securitySchemes"]
    assert set(schemes) == {
        "ApiKey",
        "SessionCookie",
        "OperatorToken",
        "OperatorSessionCookie",
        "MetricsToken",
    }
    assert schemes["ApiKey"] == {**schemes["ApiKey"], "type": "http", "scheme": "bearer"}
    assert schemes["SessionCookie"]["in"] == "cookie"
    public = {"/healthz", "/readyz", "/metrics", "/v1/stripe/webhook", "/v1/auth/session"}
    for path, method, operation in operations(document):
        names = {name for requirement in operation["security"] for name in requirement}
        if path.startswith("/admin/v1/"):
            assert names == {"OperatorToken", "OperatorSessionCookie"}, (method, path)
        elif path == "/metrics":
            assert operation["security"] == [{"MetricsToken": []}, {}]
        elif path in public:
            assert names <= {"ApiKey"}, (method, path)
        else:
            assert names == {"ApiKey", "SessionCookie"}, (method, path)
            assert "401" in operation["responses"], (method, path)
    # Scope checks are part of the requirement.
    create_job = document["paths"]["/v1/jobs"]["post"]
    assert create_job["security"] == [{"ApiKey": ["jobs:write"]}, {"SessionCookie": ["jobs:write"]}]


def test_every_error_answer_has_the_one_error_model(document) -> None:
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert "ValidationError" not in schemas
    assert set(schemas["ErrorResponse"]["required"]) == {"error"}
    for path, method, operation in operations(document):
        responses = operation["responses"]
        assert {"400", "413", "422"} <= set(responses), (method, path)
        if "{" in path:
            assert "404" in responses, (method, path)
        for status, response in responses.items():
            if status[0] in "45" and not (path == "/readyz" and status == "503"):
                media = response["content"]["application/json"]
                assert media["schema"] == {"$ref": ERROR_REF}, (method, path, status)
                assert media["example"]["error"]["code"], (method, path, status)
                validator(document, ERROR_REF).validate(media["example"])
    invalid = document["paths"]["/v1/jobs"]["post"]["responses"]["422"]
    assert "invalid_input" in invalid["description"]


def test_every_success_has_a_response_model(document) -> None:
    for path, method, operation in operations(document):
        for status, response in operation["responses"].items():
            if status.startswith("2") and status != "204":
                for media_type, media in response["content"].items():
                    schema = media.get("schema")
                    assert schema, (method, path, status, media_type)
                    if media_type == "application/json":
                        assert "$ref" in schema or schema.get("type") == "array", (method, path, status)
    create_job = document["paths"]["/v1/jobs"]["post"]["responses"]
    for status in ("200", "202"):
        assert create_job[status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/JobOut"
        }
    deliveries = document["paths"]["/v1/webhooks/{webhook_id}/deliveries"]["get"]["responses"]["200"]
    assert deliveries["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/DeliveryList"
    }
    close = document["paths"]["/admin/v1/billing/close"]["post"]["responses"]
    assert {"200", "201"} <= set(close)


def test_component_names_and_operation_ids_are_unique_and_plain(document) -> None:
    for name in document["components"]["schemas"]:
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]*", name), name
    ids = [operation["operationId"] for _path, _method, operation in operations(document)]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", i) for i in ids), ids
    assert document["paths"]["/v1/jobs"]["post"]["operationId"] == "create_job"
    assert {"JobAttemptOut", "DeliveryAttemptOut"} <= set(document["components"]["schemas"])


def test_request_bodies_and_main_answers_have_examples_that_validate(document) -> None:
    schemas = document["components"]["schemas"]
    for path, method, operation in operations(document):
        body = operation.get("requestBody")
        if body:
            schema = body["content"]["application/json"]["schema"]
            # An optional body is anyOf [the model, null].
            ref = schema.get("$ref") or next(s["$ref"] for s in schema["anyOf"] if "$ref" in s)
            examples = schemas[ref.rsplit("/", 1)[-1]].get("examples")
            assert examples, (method, path)
            for example in examples:
                validator(document, ref).validate(example)
    for name in ("JobOut", "CancelOut", "WebhookCreated", "ErrorResponse"):
        assert schemas[name]["examples"], name
        for example in schemas[name]["examples"]:
            validator(document, f"#/components/schemas/{name}").validate(example)


def test_constraints_are_the_servers(document) -> None:
    schemas = document["components"]["schemas"]
    # Scopes: exactly the known ones.
    assert schemas["KeyCreate"]["properties"]["scopes"]["items"]["enum"] == list(ALL_SCOPES)
    # Task names: exactly the registered task types, wherever a request names one.
    registered = sorted(t.name for t in all_task_types())
    assert schemas["JobCreate"]["properties"]["task"]["enum"] == registered
    assert schemas["StepTask"]["properties"]["task"]["enum"] == registered
    assert schemas["ScheduleCreate"]["properties"]["task"]["enum"] == registered
    # Periods: the pattern accepts exactly what Period.parse accepts.
    for path in ("/v1/usage/report", "/admin/v1/reports/usage"):
        parameters = document["paths"][path]["get"]["parameters"]
        period = next(p for p in parameters if p["name"] == "period")
        assert period["schema"]["pattern"] == PERIOD_PATTERN, path
    assert schemas["CloseIn"]["properties"]["period"]["pattern"] == PERIOD_PATTERN
    # Python's re and the document's ECMA regex agree on this pattern's syntax (no flags, no lookaround).
    pattern = re.compile(PERIOD_PATTERN)
    samples = ("1969-12", "1970-01", "2026-11", "2026-13", "2026-00", "9998-12", "9999-01", "226-01", "x")
    for text in (*samples, "2026-11\n", " 2026-11"):
        try:
            Period.parse(text)
            accepted = True
        except InvalidInput:
            accepted = False
        assert bool(pattern.fullmatch(text)) == accepted, text
    # Cursors: what the server hands out matches, anything else does not.
    listing = document["paths"]["/v1/jobs"]["get"]["parameters"]
    cursor = next(p for p in listing if p["name"] == "cursor")["schema"]["anyOf"][0]
    cursor_re = re.compile(cursor["pattern"])
    assert cursor_re.match(
        encode_cursor(Period.parse("2026-11").start, "0192f3c4-8a1b-7d2e-9f00-5b6c7d8e9f01")
    )
    assert not cursor_re.match("not a cursor!")
    # Webhook URLs: http(s) with a host, no credentials; the service refuses what the pattern refuses.
    url = re.compile(schemas["WebhookCreate"]["properties"]["url"]["pattern"])
    assert url.match("https://hooks.example.com/tenantq?x=1")
    for bad in ("ftp://example.com/", "https://user:pw@example.com/", "https:///path", "example.com"):
        assert not url.match(bad), bad


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/v1/jobs", "GET, POST"),
        ("DELETE", "/v1/jobs/batch", "POST"),
        ("PUT", "/v1/jobs/j1", "GET"),
        ("GET", "/v1/jobs/j1/cancel", "POST"),
        ("POST", "/v1/schedules/s1", "DELETE, GET, PATCH"),
    ],
)
def test_405_allow_lists_every_method_of_the_path(api, method, path, allow) -> None:
    response = api.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    "url",
    ["https://user:pw@hooks.example.com/", "https://hooks.example.com/a b", "https:///hook", "ftp://h/"],
)
def test_the_service_refuses_what_the_url_pattern_refuses(api, url) -> None:
    from tests.factories import ApiKeyFactory, auth

    response = api.post(
        "/v1/webhooks", json={"url": url, "events": ["job.failed"]}, headers=auth(ApiKeyFactory())
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "webhook_url_not_allowed"


def operator() -> dict[str, str]:
    return {"Authorization": f"Bearer {os.environ['TENANTQ_ADMIN_TOKEN']}"}


def test_an_empty_period_is_malformed_not_the_current_month(api) -> None:
    from tests.factories import ApiKeyFactory, auth

    tenant = api.get("/v1/usage/report?period=", headers=auth(ApiKeyFactory()))
    everyone = api.get("/admin/v1/reports/usage?period=", headers=operator())
    for response in (tenant, everyone):
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "invalid_period"


@pytest.mark.parametrize("field", ["included_jobs", "included_compute_seconds"])
def test_plan_quotas_are_bounded_by_their_column(api, field) -> None:
    # Found by schemathesis on PostgreSQL: 10**12 passed the schema and overflowed the INTEGER column.
    response = api.patch("/admin/v1/plans/free", json={field: 2**31}, headers=operator())
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_input"
    schema = api.get("/openapi.json").json()["components"]["schemas"]["PlanUpdate"]["properties"][field]
    assert schema["anyOf"][0]["maximum"] == 2**31 - 1
