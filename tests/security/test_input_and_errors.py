"""Suspended tenants only read, typed request bodies, security
headers, and no unhandled error outside the one JSON error shape."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tenantq.core.db import utcnow
from tenantq.core.settings import reset_settings_cache
from tenantq.platform.jobs.models import Job
from tenantq.platform.schedules.models import Schedule
from tenantq.platform.webhooks.models import WebhookEndpoint
from tenantq.tenants.access.models import ApiKey
from tests.factories import ApiKeyFactory, auth


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {os.environ['TENANTQ_ADMIN_TOKEN']}"}


def assert_error(resp, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    error = resp.json()["error"]
    assert set(error) == {"code", "message", "details"}
    if code is not None:
        assert error["code"] == code, error
    return error


def count(session, model, tenant_id: str) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(model).where(model.tenant_id == tenant_id))


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The API's request and error log lines, formatted as in production (context fields included)."""
    from tenantq.core.logging import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    loggers = [logging.getLogger("tenantq.http"), logging.getLogger("tenantq.errors")]
    saved = [(lg, lg.level) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    yield stream
    for lg, level in saved:
        lg.removeHandler(handler)
        lg.setLevel(level)


# ------------------------------------------------------------------------------- 500s
class TestUnhandledErrors:
    def test_unhandled_exception_is_a_json_500_with_a_logged_request_id(self, json_log):
        from tenantq.app import create_app

        app = create_app()

        @app.get("/v1/_test_boom")
        def boom() -> None:
            raise RuntimeError("internal detail /srv/secret/path")

        with TestClient(app, raise_server_exceptions=False) as client:
            resp = client.get("/v1/_test_boom")
        error = assert_error(resp, 500, "internal_error")
        request_id = error["details"]["request_id"]
        assert request_id and resp.headers["x-request-id"] == request_id
        assert "/srv/secret/path" not in resp.text  # the traceback stays in the log
        assert resp.headers["x-content-type-options"] == "nosniff"
        lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
        traceback_lines = [x for x in lines if x["logger"] == "tenantq.errors"]
        request_lines = [x for x in lines if x["logger"] == "tenantq.http"]
        assert len(traceback_lines) == 1 and traceback_lines[0]["request_id"] == request_id
        assert "RuntimeError: internal detail" in traceback_lines[0]["exc"]
        assert len(request_lines) == 1
        assert request_lines[0]["request_id"] == request_id and request_lines[0]["status"] == 500

    def test_every_response_names_its_request_id_and_a_sane_client_id_is_kept(self, api):
        generated = api.get("/healthz")
        other = api.get("/healthz")
        assert generated.headers["x-request-id"] != other.headers["x-request-id"]
        kept = api.get("/healthz", headers={"X-Request-ID": "ingress-42.a:b"})
        assert kept.headers["x-request-id"] == "ingress-42.a:b"
        # A header that could forge a log line is replaced, not echoed.
        replaced = api.get("/healthz", headers={"X-Request-ID": "x y\tz" + "a" * 80})
        assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["x-request-id"])

    @pytest.mark.parametrize("period", ["0000-01", "9999-12", "0001-01"])
    def test_out_of_range_periods_answer_422_everywhere(self, api, period):
        key = ApiKeyFactory()
        assert_error(api.get(f"/v1/usage/report?period={period}", headers=auth(key)), 422, "invalid_period")
        assert_error(
            api.get(f"/admin/v1/reports/usage?period={period}", headers=admin()), 422, "invalid_period"
        )
        resp = api.post("/admin/v1/billing/close", json={"period": period}, headers=admin())
        assert_error(resp, 422, "invalid_period")

    def test_periods_inside_the_range_still_answer(self, api):
        key = ApiKeyFactory()
        assert api.get("/v1/usage/report?period=1970-01", headers=auth(key)).status_code == 200
        assert api.get("/admin/v1/reports/usage?period=9998-12", headers=admin()).status_code == 200


# --------------------------------------------------------------------------- datetimes
class TestDatetimes:
    def test_naive_expires_at_answers_422_and_creates_no_key(self, api, db_session):
        key = ApiKeyFactory()
        before = count(db_session, ApiKey, key.tenant_id)
        naive = (utcnow() + timedelta(days=1)).replace(tzinfo=None).isoformat()
        resp = api.post("/v1/keys", json={"scopes": ["jobs:read"], "expires_at": naive}, headers=auth(key))
        error = assert_error(resp, 422, "invalid_input")
        assert error["details"][0]["loc"] == ["body", "expires_at"]
        assert count(db_session, ApiKey, key.tenant_id) == before

    def test_aware_expires_at_is_accepted(self, api):
        key = ApiKeyFactory()
        aware = (utcnow() + timedelta(days=1)).isoformat().replace("+00:00", "Z")
        resp = api.post("/v1/keys", json={"scopes": ["jobs:read"], "expires_at": aware}, headers=auth(key))
        assert resp.status_code == 201, resp.text

    def test_operator_key_creation_refuses_naive_expiry_too(self, api):
        key = ApiKeyFactory()
        naive = (utcnow() + timedelta(days=1)).replace(tzinfo=None).isoformat()
        resp = api.post(
            f"/admin/v1/tenants/{key.tenant_id}/keys",
            json={"scopes": ["jobs:read"], "expires_at": naive},
            headers=admin(),
        )
        assert_error(resp, 422, "invalid_input")


# ------------------------------------------------------------------------ strict types
class TestStrictTypes:
    @pytest.mark.parametrize(
        "body",
        [
            {"task": "demo.echo", "priority": True},
            {"task": "demo.echo", "priority": "5"},
            {"task": "demo.echo", "priority": 5.0},
            {"task": "demo.echo", "countdown": False},
            {"task": "demo.echo", "max_retries": True},
        ],
    )
    def test_job_numbers_refuse_booleans_and_strings(self, api, db_session, body):
        key = ApiKeyFactory()
        assert_error(api.post("/v1/jobs", json=body, headers=auth(key)), 422, "invalid_input")
        assert count(db_session, Job, key.tenant_id) == 0

    def test_plan_and_override_rates_refuse_booleans(self, api):
        key = ApiKeyFactory()
        resp = api.patch("/admin/v1/plans/pro", json={"exec_rate": True}, headers=admin())
        assert_error(resp, 422)
        resp = api.patch(
            f"/admin/v1/tenants/{key.tenant_id}", json={"overrides": {"exec_rate": True}}, headers=admin()
        )
        assert_error(resp, 422, "invalid_overrides")
        assert api.get("/admin/v1/plans", headers=admin()).status_code == 200
        # A real number still goes through (an int where a float is expected too).
        resp = api.patch(
            f"/admin/v1/tenants/{key.tenant_id}", json={"overrides": {"exec_rate": 7}}, headers=admin()
        )
        assert resp.status_code == 200, resp.text

    def test_rotate_grace_seconds_false_is_not_zero(self, api):
        key = ApiKeyFactory()
        resp = api.post(f"/v1/keys/{key.id}/rotate", json={"grace_seconds": False}, headers=auth(key))
        assert_error(resp, 422, "invalid_input")
        # Coerced to 0 it would have stopped the key at once.
        assert api.get("/v1/keys", headers=auth(key)).status_code == 200

    def test_schedule_booleans_refuse_numbers(self, api, db_session):
        key = ApiKeyFactory()
        body = {"task": "demo.echo", "interval_seconds": 3600, "enabled": 1}
        assert_error(api.post("/v1/schedules", json=body, headers=auth(key)), 422, "invalid_input")
        body = {"task": "demo.echo", "interval_seconds": True}
        assert_error(api.post("/v1/schedules", json=body, headers=auth(key)), 422, "invalid_input")
        assert count(db_session, Schedule, key.tenant_id) == 0

    def test_billing_close_force_refuses_a_string(self, api):
        resp = api.post(
            "/admin/v1/billing/close", json={"period": "2020-01", "force": "yes"}, headers=admin()
        )
        assert_error(resp, 422, "invalid_input")


# ---------------------------------------------------------------------- response headers
class TestResponseHeaders:
    def test_json_answers_are_nosniff_and_no_store(self, api):
        key = ApiKeyFactory()
        for resp in (
            api.get("/v1/jobs", headers=auth(key)),
            api.get("/v1/jobs"),  # 401
            api.post("/v1/jobs", json={"task": "demo.echo", "priority": 99}, headers=auth(key)),  # 422
            api.get("/v1/nope"),  # 404
        ):
            assert resp.headers["content-type"].startswith("application/json")
            assert resp.headers["x-content-type-options"] == "nosniff"
            assert resp.headers["cache-control"] == "no-store"
            assert "strict-transport-security" not in resp.headers

    def test_hsts_only_when_configured_and_over_https(self, monkeypatch):
        from tenantq.app import create_app

        with TestClient(create_app(), base_url="https://testserver") as client:
            assert "strict-transport-security" not in client.get("/healthz").headers  # default: off
        monkeypatch.setenv("TENANTQ_HSTS_SECONDS", "31536000")
        reset_settings_cache()
        try:
            with TestClient(create_app(), base_url="https://testserver") as client:
                assert client.get("/healthz").headers["strict-transport-security"] == "max-age=31536000"
            with TestClient(create_app()) as client:  # plain http: the header would be ignored anyway
                assert "strict-transport-security" not in client.get("/healthz").headers
        finally:
            monkeypatch.delenv("TENANTQ_HSTS_SECONDS")
            reset_settings_cache()


# -------------------------------------------------------------------- suspended tenants
class TestSuspendedTenant:
    def test_suspended_tenant_reads_but_every_write_is_refused(self, api, db_session):
        key = ApiKeyFactory()
        tid = key.tenant_id
        job = api.post("/v1/jobs", json={"task": "demo.echo", "countdown": 3600}, headers=auth(key))
        assert job.status_code in (201, 202), job.text
        job_id = job.json()["id"]
        assert api.post(f"/admin/v1/tenants/{tid}/suspend", headers=admin()).status_code == 200
        counts = {m: count(db_session, m, tid) for m in (ApiKey, Job, Schedule, WebhookEndpoint)}

        for path in (
            "/v1/jobs",
            f"/v1/jobs/{job_id}",
            "/v1/keys",
            "/v1/schedules",
            "/v1/webhooks",
            "/v1/usage",
        ):
            assert api.get(path, headers=auth(key)).status_code == 200, path

        writes = [
            ("POST", "/v1/keys", {"scopes": ["jobs:read"]}),
            ("POST", f"/v1/keys/{key.id}/rotate", {"grace_seconds": 60}),
            ("DELETE", f"/v1/keys/{key.id}", None),
            ("POST", "/v1/auth/session", None),
            ("POST", "/v1/jobs", {"task": "demo.echo"}),
            ("POST", "/v1/jobs/batch", {"jobs": [{"task": "demo.echo"}]}),
            ("POST", f"/v1/jobs/{job_id}/cancel", None),
            ("POST", "/v1/workflows", {"steps": [{"task": "demo.echo"}]}),
            ("POST", "/v1/schedules", {"task": "demo.echo", "interval_seconds": 3600}),
            ("POST", "/v1/webhooks", {"url": "https://example.com/hook", "events": ["job.failed"]}),
        ]
        for method, path, body in writes:
            resp = api.request(method, path, json=body, headers=auth(key))
            assert_error(resp, 403, "tenant_suspended")
        # The session route also refuses the key sent in the body.
        resp = api.post("/v1/auth/session", json={"api_key": key.plaintext})
        assert_error(resp, 403, "tenant_suspended")
        assert "set-cookie" not in resp.headers

        assert {m: count(db_session, m, tid) for m in counts} == counts
        assert api.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()["status"] != "cancelled"

        assert api.post(f"/admin/v1/tenants/{tid}/reactivate", headers=admin()).status_code == 200
        assert api.post("/v1/keys", json={"scopes": ["jobs:read"]}, headers=auth(key)).status_code == 201
        assert api.post("/v1/auth/session", headers=auth(key)).status_code == 200
