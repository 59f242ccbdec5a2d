"""Jobs API: submission, validation errors, reads, listing and tenant isolation (in-process ASGI)."""

from __future__ import annotations

import json

from sqlalchemy import func, select

from tenantq.platform.jobs.models import Job
from tests.factories import ApiKeyFactory, JobFactory, TenantFactory, auth


def job_count(session, tenant_id: str) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id))


class TestSubmit:
    def test_submit_queues_job_on_tenant_queue(self, api, db_session, redis_client, no_direct_release):
        key = ApiKeyFactory()
        # A session-wide dispatcher may already have released the job, so count enqueues instead of
        # looking for the job in the tenant's queue.
        seq_before = int(redis_client.get("tq:seq") or 0)
        resp = api.post(
            "/v1/jobs", json={"task": "demo.echo", "args": {"x": 1}, "priority": 7}, headers=auth(key)
        )
        assert resp.status_code == 202, resp.text
        body = resp.json()
        assert body["status"] == "queued" and body["priority"] == 7 and body["args"] == {"x": 1}
        assert body["created_at"].endswith("Z") or body["created_at"].endswith("+00:00")
        assert int(redis_client.get("tq:seq")) == seq_before + 1
        assert job_count(db_session, key.tenant_id) == 1

    def test_countdown_makes_job_scheduled(self, api, redis_client):
        key = ApiKeyFactory()
        resp = api.post("/v1/jobs", json={"task": "demo.echo", "countdown": 3600}, headers=auth(key))
        assert resp.status_code == 202
        assert resp.json()["status"] == "scheduled" and resp.json()["run_at"] is not None
        assert redis_client.zscore("tq:delayed", resp.json()["id"]) is not None

    def test_idempotency_key_returns_same_job(self, api, db_session):
        key = ApiKeyFactory()
        body = {"task": "demo.echo", "args": {"a": 1}, "idempotency_key": "order-42"}
        first = api.post("/v1/jobs", json=body, headers=auth(key))
        second = api.post("/v1/jobs", json=body, headers=auth(key))
        assert first.status_code == 202 and second.status_code == 200
        assert first.json()["id"] == second.json()["id"]
        conflict = api.post("/v1/jobs", json={**body, "args": {"a": 2}}, headers=auth(key))
        assert conflict.status_code == 409
        assert conflict.json()["error"]["code"] == "idempotency_conflict"
        assert job_count(db_session, key.tenant_id) == 1


class TestBadInput:
    def check(self, resp, status: int, code: str):
        assert resp.status_code == status, resp.text
        err = resp.json()["error"]
        assert err["code"] == code and err["message"]
        return err

    def test_unknown_task(self, api, db_session):
        key = ApiKeyFactory()
        err = self.check(
            api.post("/v1/jobs", json={"task": "nope.nothing"}, headers=auth(key)), 422, "unknown_task"
        )
        assert "nope.nothing" in err["message"]
        assert job_count(db_session, key.tenant_id) == 0

    def test_args_fail_schema(self, api, db_session):
        key = ApiKeyFactory()
        err = self.check(
            api.post("/v1/jobs", json={"task": "demo.sleep", "args": {"seconds": "soon"}}, headers=auth(key)),
            422,
            "invalid_args",
        )
        assert err["details"][0]["loc"][:2] == ["args", "seconds"]
        self.check(
            api.post(
                "/v1/jobs", json={"task": "demo.sleep", "args": {"seconds": 1, "extra": 1}}, headers=auth(key)
            ),
            422,
            "invalid_args",
        )
        assert job_count(db_session, key.tenant_id) == 0

    def test_priority_out_of_range(self, api):
        key = ApiKeyFactory()
        for prio in (-1, 10, "high"):
            self.check(
                api.post("/v1/jobs", json={"task": "demo.echo", "priority": prio}, headers=auth(key)),
                422,
                "invalid_input",
            )

    def test_priority_outside_plan_range(self, api):
        key = ApiKeyFactory(tenant=TenantFactory(plan_name="free"))
        self.check(
            api.post("/v1/jobs", json={"task": "demo.echo", "priority": 9}, headers=auth(key)),
            422,
            "priority_not_allowed",
        )

    def test_malformed_json(self, api):
        key = ApiKeyFactory()
        resp = api.post(
            "/v1/jobs",
            content=b'{"task": "demo.echo",',
            headers={**auth(key), "content-type": "application/json"},
        )
        self.check(resp, 400, "malformed_json")

    def test_unknown_field_and_negative_countdown(self, api):
        key = ApiKeyFactory()
        self.check(
            api.post("/v1/jobs", json={"task": "demo.echo", "colour": "red"}, headers=auth(key)),
            422,
            "invalid_input",
        )
        self.check(
            api.post("/v1/jobs", json={"task": "demo.echo", "countdown": -5}, headers=auth(key)),
            422,
            "invalid_input",
        )

    def test_body_too_large(self, api):
        key = ApiKeyFactory()
        big = json.dumps({"task": "demo.echo", "args": {"blob": "x" * 2_000_000}})
        resp = api.post("/v1/jobs", content=big, headers={**auth(key), "content-type": "application/json"})
        self.check(resp, 413, "payload_too_large")

    def test_missing_and_wrong_key(self, api):
        self.check(api.post("/v1/jobs", json={"task": "demo.echo"}), 401, "unauthorized")
        self.check(
            api.get("/v1/jobs", headers={"Authorization": "Bearer tq_live_nonsense"}), 401, "invalid_api_key"
        )
        key = ApiKeyFactory()
        other = key.plaintext[:-8] + ("A" * 8)
        self.check(api.get("/v1/jobs", headers={"Authorization": f"Bearer {other}"}), 401, "invalid_api_key")

    def test_revoked_key(self, api, db_session):
        from tenantq.core.db import utcnow

        key = ApiKeyFactory()
        key.revoked_at = utcnow()
        db_session.commit()
        self.check(api.get("/v1/jobs", headers=auth(key)), 401, "revoked_api_key")

    def test_missing_scope(self, api):
        key = ApiKeyFactory(scopes=["jobs:read"])
        self.check(api.post("/v1/jobs", json={"task": "demo.echo"}, headers=auth(key)), 403, "missing_scope")


class TestRead:
    def test_get_and_cross_tenant_404(self, api):
        key_a, key_b = ApiKeyFactory(), ApiKeyFactory()
        job_id = api.post("/v1/jobs", json={"task": "demo.echo"}, headers=auth(key_a)).json()["id"]
        assert api.get(f"/v1/jobs/{job_id}", headers=auth(key_a)).status_code == 200
        resp = api.get(f"/v1/jobs/{job_id}", headers=auth(key_b))
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
        assert job_id not in resp.text or resp.json()["error"]["details"] == {"id": job_id}

    def test_list_filters_paginates_and_isolates(self, api, db_session):
        key = ApiKeyFactory()
        other = ApiKeyFactory()
        for i in range(5):
            JobFactory(tenant=key.tenant, task="demo.echo", args={"i": i})
        JobFactory(tenant=key.tenant, task="demo.fail", status="failed")
        JobFactory(tenant=other.tenant)
        page1 = api.get("/v1/jobs?limit=4", headers=auth(key)).json()
        assert len(page1["items"]) == 4 and page1["next_cursor"]
        page2 = api.get(f"/v1/jobs?limit=4&cursor={page1['next_cursor']}", headers=auth(key)).json()
        assert len(page2["items"]) == 2 and page2["next_cursor"] is None
        ids = [j["id"] for j in page1["items"] + page2["items"]]
        assert len(set(ids)) == 6
        created = [j["created_at"] for j in page1["items"] + page2["items"]]
        assert created == sorted(created, reverse=True)
        failed = api.get("/v1/jobs?status=failed", headers=auth(key)).json()["items"]
        assert [j["task"] for j in failed] == ["demo.fail"]
        echo = api.get("/v1/jobs?task=demo.echo", headers=auth(key)).json()["items"]
        assert len(echo) == 5
        assert api.get("/v1/jobs?cursor=!!!", headers=auth(key)).status_code == 422
        assert api.get("/v1/jobs?status=bogus", headers=auth(key)).status_code == 422

    def test_task_types_lists_schemas(self, api):
        key = ApiKeyFactory()
        types = {t["name"]: t for t in api.get("/v1/task-types", headers=auth(key)).json()}
        assert {"demo.echo", "demo.sleep", "demo.cpu", "demo.flaky", "demo.fail"} <= set(types)
        assert types["demo.sleep"]["args_schema"]["properties"]["seconds"]["type"] == "number"


class TestHealth:
    def test_healthz_and_readyz(self, api):
        assert api.get("/healthz").json() == {"status": "ok"}
        ready = api.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "redis": "ok"}

    def test_openapi_documents_jobs(self, api):
        paths = api.get("/openapi.json").json()["paths"]
        assert "/v1/jobs" in paths and "/v1/jobs/{job_id}" in paths
