"""Operator API /admin/v1: tenants, plans, a tenant's keys, suspension (with a real worker)."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import func, select

from tenantq.tenants.accounts.models import Plan, Tenant
from tests.conftest import wait_until
from tests.factories import ApiKeyFactory, TenantFactory, auth

ADMIN = {"Authorization": "Bearer test-admin-token-0123456789abcdef"}


def uniq(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def count(session, model) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(model))


def err(resp, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()["error"]
    if code:
        assert body["code"] == code, body
    return body


class TestCredentials:
    def test_operator_credential_required(self, api):
        key = ApiKeyFactory()
        err(api.get("/admin/v1/tenants"), 401, "unauthorized")
        err(api.get("/admin/v1/tenants", headers=auth(key)), 401, "invalid_operator_credential")
        err(api.get("/admin/v1/tenants", headers={"Authorization": "Bearer test-admin-tokeN"}), 401)
        assert api.get("/admin/v1/tenants", headers=ADMIN).status_code == 200


class TestTenants:
    def test_create_get_list_update(self, api):
        name = uniq("acme ✨")
        resp = api.post(
            "/admin/v1/tenants",
            json={"name": name, "plan": "pro", "overrides": {"submit_rate": 7}},
            headers=ADMIN,
        )
        assert resp.status_code == 201, resp.text
        tenant = resp.json()
        assert tenant["name"] == name and tenant["plan"] == "pro" and tenant["status"] == "active"
        assert tenant["overrides"] == {"submit_rate": 7}
        assert api.get(f"/admin/v1/tenants/{tenant['id']}", headers=ADMIN).json() == tenant
        names = [t["name"] for t in api.get("/admin/v1/tenants", headers=ADMIN).json()["items"]]
        assert name in names
        patched = api.patch(
            f"/admin/v1/tenants/{tenant['id']}",
            json={"plan": "enterprise", "overrides": {"concurrency": 3, "priority_max": 4}},
            headers=ADMIN,
        ).json()
        assert patched["plan"] == "enterprise" and patched["overrides"] == {
            "concurrency": 3,
            "priority_max": 4,
        }
        # Omitting overrides keeps them; {} clears them.
        kept = api.patch(f"/admin/v1/tenants/{tenant['id']}", json={"plan": "pro"}, headers=ADMIN).json()
        assert kept["overrides"] == {"concurrency": 3, "priority_max": 4}
        cleared = api.patch(f"/admin/v1/tenants/{tenant['id']}", json={"overrides": {}}, headers=ADMIN).json()
        assert cleared["overrides"] == {}

    def test_create_rejects_bad_input_and_writes_nothing(self, api, db_session):
        existing = TenantFactory()
        before = count(db_session, Tenant)
        cases = [
            ({"name": existing.name}, 409, "tenant_exists"),
            ({"name": uniq(), "plan": "platinum"}, 422, "unknown_plan"),
            ({"name": uniq(), "overrides": {"submit_rate": 0}}, 422, "invalid_overrides"),
            ({"name": uniq(), "overrides": {"colour": "red"}}, 422, "invalid_overrides"),
            ({"name": uniq(), "overrides": {"priority_min": 7, "priority_max": 3}}, 422, "invalid_overrides"),
            ({"name": uniq(), "plan": "free", "overrides": {"priority_min": 7}}, 422, "invalid_overrides"),
            ({"name": "  "}, 422, "invalid_input"),
            ({"name": "bell\u0007"}, 422, "invalid_input"),
            ({"name": "nul\u0000"}, 422, "invalid_text"),
            ({"name": uniq(), "tier": "gold"}, 422, "invalid_input"),
        ]
        for body, status, code in cases:
            err(api.post("/admin/v1/tenants", json=body, headers=ADMIN), status, code)
        assert count(db_session, Tenant) == before

    def test_unknown_tenant_404(self, api):
        for method, path in [
            ("GET", "/admin/v1/tenants/nope"),
            ("PATCH", "/admin/v1/tenants/nope"),
            ("POST", "/admin/v1/tenants/nope/suspend"),
            ("GET", "/admin/v1/tenants/nope/keys"),
        ]:
            err(
                api.request(method, path, json={} if method == "PATCH" else None, headers=ADMIN),
                404,
                "not_found",
            )

    def test_list_filter_by_status(self, api):
        t = TenantFactory()
        api.post(f"/admin/v1/tenants/{t.id}/suspend", headers=ADMIN)
        suspended = {
            x["id"] for x in api.get("/admin/v1/tenants?status=suspended", headers=ADMIN).json()["items"]
        }
        active = {x["id"] for x in api.get("/admin/v1/tenants?status=active", headers=ADMIN).json()["items"]}
        assert t.id in suspended and t.id not in active
        err(api.get("/admin/v1/tenants?status=deleted", headers=ADMIN), 422)

    def test_tenant_keys(self, api):
        key = ApiKeyFactory()
        created = api.post(
            f"/admin/v1/tenants/{key.tenant_id}/keys",
            json={"name": "onboarding", "scopes": ["jobs:read"]},
            headers=ADMIN,
        )
        assert created.status_code == 201
        assert (
            api.get("/v1/jobs", headers={"Authorization": f"Bearer {created.json()['key']}"}).status_code
            == 200
        )
        items = api.get(f"/admin/v1/tenants/{key.tenant_id}/keys", headers=ADMIN).json()["items"]
        assert {i["id"] for i in items} == {key.id, created.json()["id"]}
        assert "key" not in items[0] and key.plaintext not in str(items)


class TestSuspension:
    def test_suspend_refuses_submissions_and_pauses_queue(self, api, redis_client):
        key = ApiKeyFactory()
        tid = key.tenant_id
        body = api.post(f"/admin/v1/tenants/{tid}/suspend", headers=ADMIN).json()
        assert body["status"] == "suspended"
        assert (
            redis_client.sismember("tq:paused", tid)
            and redis_client.hget("tq:paused:why", tid) == "suspended"
        )
        resp = api.post("/v1/jobs", json={"task": "demo.echo"}, headers=auth(key))
        err(resp, 403, "tenant_suspended")
        # Reads still work: the tenant can see its jobs and usage while suspended.
        assert api.get("/v1/jobs", headers=auth(key)).status_code == 200
        # Idempotent.
        assert api.post(f"/admin/v1/tenants/{tid}/suspend", headers=ADMIN).status_code == 200
        api.post(f"/admin/v1/tenants/{tid}/reactivate", headers=ADMIN)
        assert (
            not redis_client.sismember("tq:paused", tid) and redis_client.hget("tq:paused:why", tid) is None
        )
        assert api.post("/v1/jobs", json={"task": "demo.echo"}, headers=auth(key)).status_code == 202

    def test_reactivation_keeps_an_operator_pause(self, api, redis_client):
        t = TenantFactory()
        redis_client.sadd("tq:paused", t.id)
        redis_client.hset("tq:paused:why", t.id, "operator_pause")
        api.post(f"/admin/v1/tenants/{t.id}/suspend", headers=ADMIN)
        assert redis_client.hget("tq:paused:why", t.id) == "operator_pause"
        assert api.post(f"/admin/v1/tenants/{t.id}/reactivate", headers=ADMIN).json()["status"] == "active"
        assert redis_client.sismember("tq:paused", t.id)
        assert redis_client.hget("tq:paused:why", t.id) == "operator_pause"

    @pytest.mark.e2e
    def test_queued_job_waits_while_suspended_and_runs_after(self, api, platform_processes, redis_client):
        key = ApiKeyFactory()
        tid = key.tenant_id

        def status(job_id):
            return api.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()["status"]

        # Control: the platform runs this tenant's jobs.
        control = api.post("/v1/jobs", json={"task": "demo.echo"}, headers=auth(key)).json()["id"]
        wait_until(lambda: status(control) == "succeeded", timeout=60, message="control job")
        # A job queued before the suspension (countdown: it becomes runnable while suspended).
        job = api.post(
            "/v1/jobs", json={"task": "demo.echo", "args": {"n": 1}, "countdown": 4}, headers=auth(key)
        ).json()
        api.post(f"/admin/v1/tenants/{tid}/suspend", headers=ADMIN)
        assert status(job["id"]) == "scheduled"
        # It is promoted to the tenant's queue by the dispatcher, and stays there.
        wait_until(
            lambda: redis_client.zscore(f"tq:q:{tid}", job["id"]) is not None,
            timeout=60,
            message="job promoted to the tenant queue",
        )
        time.sleep(2)  # several dispatcher ticks
        assert redis_client.zscore(f"tq:q:{tid}", job["id"]) is not None
        assert status(job["id"]) == "scheduled"
        api.post(f"/admin/v1/tenants/{tid}/reactivate", headers=ADMIN)
        wait_until(lambda: status(job["id"]) == "succeeded", timeout=60, message="job after reactivation")


class TestPlans:
    def test_list_create_update(self, api):
        names = {p["name"] for p in api.get("/admin/v1/plans", headers=ADMIN).json()["items"]}
        assert {"free", "pro", "enterprise"} <= names
        name = uniq("team")
        resp = api.post(
            "/admin/v1/plans",
            json={
                "name": name,
                "submit_rate": 12.5,
                "submit_burst": 30,
                "priority_min": 2,
                "priority_max": 7,
                "base_fee": "19.90",
            },
            headers=ADMIN,
        )
        assert resp.status_code == 201, resp.text
        plan = resp.json()
        assert plan["submit_rate"] == 12.5 and plan["concurrency"] == 2 and plan["display_name"] == name
        assert plan["base_fee"] in ("19.90", "19.9", "19.900000")
        updated = api.patch(
            f"/admin/v1/plans/{name}", json={"concurrency": 8, "base_fee": "21.00"}, headers=ADMIN
        ).json()
        assert updated["concurrency"] == 8 and updated["submit_rate"] == 12.5
        from decimal import Decimal

        assert Decimal(updated["base_fee"]) == Decimal("21.00")

    def test_plan_validation_writes_nothing(self, api, db_session):
        before = count(db_session, Plan)
        bad = [
            {"name": uniq("p"), "submit_rate": 0},
            {"name": uniq("p"), "exec_rate": -1},
            {"name": uniq("p"), "priority_min": 5, "priority_max": 4},
            {"name": uniq("p"), "priority_max": 10},
            {"name": uniq("p"), "concurrency": 0},
            {"name": uniq("p"), "currency": "EURO"},
            {"name": uniq("p"), "base_fee": "-1"},
            {"name": "Bad Name"},
            {"name": uniq("p"), "submit_rate": "fast"},
            {"name": uniq("p"), "price": 3},
        ]
        for body in bad:
            err(api.post("/admin/v1/plans", json=body, headers=ADMIN), 422)
        err(api.post("/admin/v1/plans", json={"name": "free"}, headers=ADMIN), 409, "plan_exists")
        assert count(db_session, Plan) == before
        err(api.patch("/admin/v1/plans/free", json={"priority_min": 9}, headers=ADMIN), 422, "invalid_plan")
        err(api.patch("/admin/v1/plans/nope", json={}, headers=ADMIN), 404)

    def test_update_refused_when_it_breaks_a_tenants_overrides(self, api):
        name = uniq("p")
        api.post("/admin/v1/plans", json={"name": name}, headers=ADMIN)
        tenant = api.post(
            "/admin/v1/tenants",
            json={"name": uniq(), "plan": name, "overrides": {"priority_min": 6}},
            headers=ADMIN,
        ).json()
        body = err(
            api.patch(f"/admin/v1/plans/{name}", json={"priority_max": 5}, headers=ADMIN),
            409,
            "override_conflict",
        )
        assert body["details"]["tenants"] == [tenant["id"]]
