"""Batch submission, the tenant's queue figures, queue bounds and the operator's queue controls (HTTP).

Tenants here are paused first, so the session's dispatcher (if running) leaves their queues alone and
depths are exact.
"""

from __future__ import annotations

from tenantq.platform.dispatch.repository import TenantQueues
from tenantq.platform.jobs.models import Job
from tests.factories import ApiKeyFactory, TenantFactory, auth

ADMIN = {"Authorization": "Bearer test-admin-token-0123456789abcdef"}


def paused_key(redis_client, **overrides):
    tenant = TenantFactory(overrides=overrides)
    TenantQueues(redis_client).pause(tenant.id, "test")
    return ApiKeyFactory(tenant=tenant)


class TestBatch:
    def test_batch_jobs_get_the_same_policy_as_single_submits(self, api, redis_client):
        # Retry and time-limit fields are resolved against the plan exactly as POST /v1/jobs does.
        key = paused_key(redis_client)
        item = {
            "task": "demo.sleep",
            "args": {"seconds": 0},
            "max_retries": 2,
            "soft_time_limit": 4,
            "time_limit": 5,
        }
        single = api.post("/v1/jobs", json=item, headers=auth(key)).json()
        batch = api.post("/v1/jobs/batch", json={"jobs": [item]}, headers=auth(key)).json()["items"][0]["job"]
        fields = ("max_retries", "soft_time_limit", "time_limit")
        assert (
            {f: batch[f] for f in fields}
            == {f: single[f] for f in fields}
            == {"max_retries": 2, "soft_time_limit": 4, "time_limit": 5}
        )
        too_long = api.post(
            "/v1/jobs/batch", json={"jobs": [{**item, "time_limit": 10**6}]}, headers=auth(key)
        )
        assert too_long.json()["items"][0]["error"]["code"] == "time_limit_not_allowed"

    def test_each_job_gets_its_own_answer(self, api, redis_client, db_session):
        key = paused_key(redis_client)
        body = {
            "jobs": [
                {"task": "demo.echo", "args": {"n": 1}},
                {"task": "demo.nope"},
                {"task": "demo.sleep", "args": {"seconds": "x"}},
                {"task": "demo.echo", "priority": 12},
                {"task": "demo.echo", "args": {"n": 2}, "priority": 9},
                {"task": "demo.echo", "countdown": 30},
            ]
        }
        res = api.post("/v1/jobs/batch", json=body, headers=auth(key))
        assert res.status_code == 200
        items = res.json()["items"]
        assert [i["index"] for i in items] == list(range(6))
        assert [i["status_code"] for i in items] == [202, 422, 422, 422, 202, 202]
        assert items[1]["error"]["code"] == "unknown_task"
        assert items[2]["error"]["code"] == "invalid_args"
        assert items[3]["error"]["code"] == "validation_error"
        assert items[0]["job"]["status"] == "queued" and items[5]["job"]["status"] == "scheduled"
        queues = TenantQueues(redis_client)
        assert queues.depth(key.tenant_id) == 2  # the scheduled one waits in tq:delayed
        # The urgent job sits at the head of the tenant's queue.
        assert redis_client.zrange(f"tq:q:{key.tenant_id}", 0, 0) == [items[4]["job"]["id"]]
        assert db_session.get(Job, items[0]["job"]["id"]).tenant_id == key.tenant_id

    def test_idempotency_keys(self, api, redis_client):
        key = paused_key(redis_client)
        first = api.post(
            "/v1/jobs", json={"task": "demo.echo", "idempotency_key": "k1"}, headers=auth(key)
        ).json()
        items = api.post(
            "/v1/jobs/batch",
            headers=auth(key),
            json={
                "jobs": [
                    {"task": "demo.echo", "idempotency_key": "k1"},
                    {"task": "demo.echo", "idempotency_key": "k2"},
                    {"task": "demo.echo", "idempotency_key": "k2"},
                    {"task": "demo.echo", "args": {"other": 1}, "idempotency_key": "k1"},
                ]
            },
        ).json()["items"]
        assert [i["status_code"] for i in items] == [200, 202, 409, 409]
        assert items[0]["job"]["id"] == first["id"]

    def test_limits_of_the_call(self, api, redis_client):
        key = paused_key(redis_client)
        too_many = api.post(
            "/v1/jobs/batch", json={"jobs": [{"task": "demo.echo"}] * 1001}, headers=auth(key)
        )
        assert too_many.status_code == 422 and too_many.json()["error"]["code"]
        assert api.post("/v1/jobs/batch", json={"jobs": []}, headers=auth(key)).status_code == 422
        assert api.post("/v1/jobs/batch", json={"jobs": [{"task": "demo.echo"}]}).status_code == 401

    def test_thousand_jobs_in_one_call(self, api, redis_client):
        # A 1,000-job batch needs a submission bucket of at least 1,000 (pro's burst is 200).
        key = paused_key(redis_client, submit_rate=1_000, submit_burst=1_000)
        res = api.post(
            "/v1/jobs/batch",
            json={"jobs": [{"task": "demo.echo", "args": {"i": i}} for i in range(1000)]},
            headers=auth(key),
        )
        assert res.status_code == 200
        assert {i["status_code"] for i in res.json()["items"]} == {202}
        assert TenantQueues(redis_client).depth(key.tenant_id) == 1000


class TestQueueBound:
    def test_full_queue_answers_429(self, api, redis_client):
        key = paused_key(redis_client, max_queued=3)
        for _ in range(3):
            assert api.post("/v1/jobs", json={"task": "demo.echo"}, headers=auth(key)).status_code == 202
        res = api.post("/v1/jobs", json={"task": "demo.echo"}, headers=auth(key))
        assert res.status_code == 429
        assert res.json()["error"]["code"] == "queue_full"
        assert res.json()["error"]["details"] == {"depth": 3, "limit": 3, "requested": 1}
        assert res.headers["Retry-After"] == "1"
        batch = api.post("/v1/jobs/batch", json={"jobs": [{"task": "demo.echo"}]}, headers=auth(key))
        assert batch.status_code == 429
        assert TenantQueues(redis_client).depth(key.tenant_id) == 3


class TestQueueFigures:
    def test_tenant_sees_its_own_queue_only(self, api, redis_client):
        key = paused_key(redis_client, concurrency=3, exec_rate=20)
        other = paused_key(redis_client)
        api.post("/v1/jobs/batch", json={"jobs": [{"task": "demo.echo"}] * 4}, headers=auth(key))
        mine = api.get("/v1/queue", headers=auth(key)).json()
        assert mine == {
            "depth": 4,
            "running": 0,
            "concurrency_limit": 3,
            "rate_limit": 20.0,
            "paused": True,
            "recent_wait_ms": {"p50": None, "p95": None},
            "held": None,
        }
        assert api.get("/v1/queue", headers=auth(other)).json()["depth"] == 0

    def test_wait_percentiles(self, api, redis_client):
        key = paused_key(redis_client)
        redis_client.lpush(f"tq:wait:{key.tenant_id}", *[float(i) for i in range(1, 101)])
        waits = api.get("/v1/queue", headers=auth(key)).json()["recent_wait_ms"]
        assert waits == {"p50": 50.0, "p95": 95.0}


class TestOperator:
    def test_list_pause_resume_purge(self, api, redis_client, db_session):
        key = paused_key(redis_client)
        tid = key.tenant_id
        jobs = api.post(
            "/v1/jobs/batch", json={"jobs": [{"task": "demo.echo"}] * 3}, headers=auth(key)
        ).json()["items"]
        listed = api.get("/admin/v1/queues", headers=ADMIN)
        assert listed.status_code == 200
        row = next(i for i in listed.json()["items"] if i["tenant_id"] == tid)
        assert (
            row["depth"] == 3 and row["paused"] and row["paused_reason"] == "test" and row["pool"] == "shared"
        )
        assert "tq.exec" in listed.json()["exec_queue_depth"]

        res = api.post(f"/admin/v1/tenants/{tid}/queue/pause", headers=ADMIN)
        assert res.json() == {"tenant_id": tid, "paused": True, "paused_reason": "operator_pause"}
        assert redis_client.hget("tq:paused:why", tid) == "operator_pause"

        res = api.post(f"/admin/v1/tenants/{tid}/queue/purge", headers=ADMIN)
        assert res.json() == {"tenant_id": tid, "purged": 3}
        assert TenantQueues(redis_client).depth(tid) == 0
        db_session.expire_all()
        assert {db_session.get(Job, j["job"]["id"]).status for j in jobs} == {"cancelled"}

        res = api.post(f"/admin/v1/tenants/{tid}/queue/resume", headers=ADMIN)
        assert res.status_code == 200 and not redis_client.sismember("tq:paused", tid)

    def test_resume_refused_while_suspended(self, api, redis_client):
        tenant = TenantFactory(status="suspended")
        TenantQueues(redis_client).pause(tenant.id, "suspended")
        res = api.post(f"/admin/v1/tenants/{tenant.id}/queue/resume", headers=ADMIN)
        assert res.status_code == 409 and res.json()["error"]["code"] == "tenant_not_active"
        assert redis_client.sismember("tq:paused", tenant.id)

    def test_dedicated_pool_route(self, api, redis_client):
        tenant = TenantFactory()
        res = api.put(f"/admin/v1/tenants/{tenant.id}/queue/pool", headers=ADMIN)
        assert res.json() == {"tenant_id": tenant.id, "pool": f"tq.exec.t.{tenant.id}"}
        assert redis_client.hget("tq:route", tenant.id) == f"tq.exec.t.{tenant.id}"
        assert (
            api.delete(f"/admin/v1/tenants/{tenant.id}/queue/pool", headers=ADMIN).json()["pool"] == "shared"
        )
        assert redis_client.hget("tq:route", tenant.id) is None

    def test_operator_credential_and_unknown_tenant(self, api):
        key = ApiKeyFactory()
        assert api.get("/admin/v1/queues").status_code == 401
        assert api.get("/admin/v1/queues", headers=auth(key)).status_code == 401
        assert api.post("/admin/v1/tenants/nope/queue/pause", headers=ADMIN).status_code == 404
