"""Quotas: per-period limits enforced at submission from Redis counters reconciled to SQL."""

from __future__ import annotations

import sys
import threading
import time
import uuid

import httpx
import pytest
from sqlalchemy import func, select

from tenantq.billing.usage.buffer import insert_events
from tenantq.billing.usage.metering import Meter
from tenantq.billing.usage.quotas import sync_counters_from_sql
from tenantq.core.db import utcnow
from tenantq.core.keys import quota_compute_key, quota_jobs_key, quota_tenants_key
from tenantq.core.periods import current_period, period_bounds
from tenantq.platform.jobs.messages import JobMessage
from tenantq.platform.jobs.models import Job
from tests.conftest import ProcessGroup, free_port, wait_until
from tests.factories import ApiKeyFactory, JobFactory, TenantFactory, auth

ECHO = {"task": "demo.echo", "args": {}}


def next_month_start() -> str:
    return period_bounds(current_period())[1].isoformat().replace("+00:00", "Z")


def compute_events(tenant_id: str, ms: int) -> list[dict]:
    job_id = str(uuid.uuid4())
    return [
        {
            "id": f"{job_id}:1:compute_ms",
            "tenant_id": tenant_id,
            "job_id": job_id,
            "attempt": 1,
            "task": "demo.cpu",
            "metric": "compute_ms",
            "quantity": ms,
            "state": "succeeded",
            "worker": "w",
            "occurred_at": utcnow(),
        }
    ]


class TestJobsQuota:
    def test_hard_limit_answers_402_with_details(self, api, make_plan):
        plan = make_plan(included_jobs=3, hard_limits=True)
        key = ApiKeyFactory(tenant=TenantFactory(plan_name=plan.name))
        for _ in range(3):
            assert api.post("/v1/jobs", json=ECHO, headers=auth(key)).status_code == 202
        refused = api.post("/v1/jobs", json=ECHO, headers=auth(key))
        assert refused.status_code == 402
        error = refused.json()["error"]
        assert error["code"] == "quota_exceeded"
        assert error["details"] == {
            "quota": "jobs",
            "used": 3,
            "limit": 3,
            "requested": 1,
            "remaining": 0,
            "resets_at": next_month_start(),
        }

    def test_idempotent_resubmission_does_not_count_again(self, api, make_plan):
        plan = make_plan(included_jobs=1, hard_limits=True)
        key = ApiKeyFactory(tenant=TenantFactory(plan_name=plan.name))
        body = {**ECHO, "idempotency_key": "once"}
        assert api.post("/v1/jobs", json=body, headers=auth(key)).status_code == 202
        assert api.post("/v1/jobs", json=body, headers=auth(key)).status_code == 200

    def test_soft_limit_accepts_overage(self, api, make_plan):
        plan = make_plan(included_jobs=2, hard_limits=False)
        key = ApiKeyFactory(tenant=TenantFactory(plan_name=plan.name))
        assert [api.post("/v1/jobs", json=ECHO, headers=auth(key)).status_code for _ in range(4)] == [202] * 4
        jobs = next(
            q for q in api.get("/v1/usage", headers=auth(key)).json()["quotas"] if q["name"] == "jobs"
        )
        assert jobs == {
            "name": "jobs",
            "used": 4,
            "limit": 2,
            "unit": "jobs",
            "hard": False,
            "resets_at": next_month_start(),
        }

    def test_tenant_override_beats_the_plan(self, api, make_plan):
        plan = make_plan(included_jobs=100, hard_limits=True)
        key = ApiKeyFactory(tenant=TenantFactory(plan_name=plan.name, overrides={"included_jobs": 1}))
        assert api.post("/v1/jobs", json=ECHO, headers=auth(key)).status_code == 202
        assert api.post("/v1/jobs", json=ECHO, headers=auth(key)).json()["error"]["details"]["limit"] == 1


class TestComputeQuota:
    def test_hard_compute_limit_refuses_new_jobs(self, api, db_session, redis_client, make_plan):
        plan = make_plan(included_compute_seconds=2, hard_limits=True)
        tenant = TenantFactory(plan_name=plan.name)
        key = ApiKeyFactory(tenant=tenant)
        assert api.post("/v1/jobs", json=ECHO, headers=auth(key)).status_code == 202
        # An attempt that burned 2.5 s of CPU closes: the worker adds it to the (existing) counter in
        # the transaction that records its usage, before any flusher ran.
        job = {"id": str(uuid.uuid4()), "tenant_id": tenant.id, "attempt": 1}
        meter = Meter(redis_client)
        attempt = meter.open(JobMessage.from_job("demo.cpu", job), worker="w", time_limit=60)
        meter.close(attempt, state="succeeded", finished=time.time(), wall_ms=2600, compute_ms=2500)
        assert int(redis_client.get(quota_compute_key(tenant.id, current_period()))) == 2500
        refused = api.post("/v1/jobs", json=ECHO, headers=auth(key))
        assert refused.status_code == 402
        assert refused.json()["error"]["details"] == {
            "quota": "compute_seconds",
            "used": 2.5,
            "limit": 2,
            "resets_at": next_month_start(),
        }


class TestCounterReconciliation:
    def test_missing_counters_are_seeded_from_sql(self, api, db_session, redis_client, make_plan):
        plan = make_plan(included_jobs=5, hard_limits=True)
        tenant = TenantFactory(plan_name=plan.name)
        key = ApiKeyFactory(tenant=tenant)
        for status in ("queued", "succeeded", "failed", "rejected"):
            JobFactory(tenant=tenant, status=status)
        JobFactory(tenant=tenant, status="cancelled", started_at=None)  # dropped before it ran: not counted
        JobFactory(tenant=tenant, status="cancelled", started_at=utcnow())  # cancelled while running: counted
        redis_client.delete(quota_jobs_key(tenant.id, current_period()))  # e.g. Redis lost its data
        jobs = next(
            q for q in api.get("/v1/usage", headers=auth(key)).json()["quotas"] if q["name"] == "jobs"
        )
        assert jobs["used"] == 4

    def test_periodic_sync_resets_counters_from_sql(self, db_session, redis_client, make_plan):
        tenant = TenantFactory(plan_name=make_plan().name)
        for _ in range(3):
            JobFactory(tenant=tenant, status="queued")
        insert_events(db_session, compute_events(tenant.id, 1234))
        db_session.commit()
        period = current_period()
        redis_client.set(quota_jobs_key(tenant.id, period), 99)  # drifted: e.g. refused by a later check
        redis_client.set(quota_compute_key(tenant.id, period), 7)
        stale = str(uuid.uuid4())
        redis_client.set(quota_jobs_key(stale, period), 5)  # a tenant with nothing in SQL
        redis_client.sadd(quota_tenants_key(period), stale)
        sync_counters_from_sql(redis_client)
        assert redis_client.get(quota_jobs_key(tenant.id, period)) == "3"
        assert redis_client.get(quota_compute_key(tenant.id, period)) == "1234"
        assert redis_client.get(quota_jobs_key(stale, period)) == "0"


class TestUsageEndpoint:
    def test_shape_and_tenant_scoping(self, api, make_plan):
        plan = make_plan(
            included_jobs=10, included_compute_seconds=60, hard_limits=True, concurrency=3, max_queued=50
        )
        mine = ApiKeyFactory(tenant=TenantFactory(plan_name=plan.name))
        other = ApiKeyFactory(tenant=TenantFactory(plan_name=plan.name))
        api.post("/v1/jobs", json=ECHO, headers=auth(mine))
        for _ in range(2):
            api.post("/v1/jobs", json=ECHO, headers=auth(other))
        body = api.get("/v1/usage", headers=auth(mine)).json()
        start, _end = period_bounds(current_period())
        assert body["period"] == {
            "start": start.isoformat().replace("+00:00", "Z"),
            "end": next_month_start(),
        }
        by_name = {q["name"]: q for q in body["quotas"]}
        assert (
            by_name["jobs"]["used"] == 1
            and by_name["jobs"]["limit"] == 10
            and by_name["jobs"]["hard"] is True
        )
        # A session worker may have run the job already: its CPU counts as soon as the attempt ends.
        assert 0.0 <= by_name["compute_seconds"].pop("used") < 5
        assert by_name["compute_seconds"] == {
            "name": "compute_seconds",
            "limit": 60,
            "unit": "seconds",
            "hard": True,
            "resets_at": next_month_start(),
        }
        assert by_name["concurrent_jobs"]["limit"] == 3 and by_name["queued_jobs"]["limit"] == 50
        assert by_name["queued_jobs"]["used"] in (0, 1)  # a session dispatcher may have released it already

    def test_requires_usage_scope_and_credentials(self, api):
        key = ApiKeyFactory(scopes=["jobs:read"])
        denied = api.get("/v1/usage", headers=auth(key))
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "missing_scope"
        assert api.get("/v1/usage").status_code == 401


@pytest.mark.e2e
class TestConcurrentSubmits:
    def test_many_threads_never_exceed_a_hard_quota(self, db_session, make_plan, platform_env, tmp_path):
        limit, attempts = 10, 40
        plan = make_plan(included_jobs=limit, hard_limits=True)
        tenant = TenantFactory(plan_name=plan.name)
        key = ApiKeyFactory(tenant=tenant)
        port = free_port()
        group = ProcessGroup(platform_env, tmp_path)
        group.start("api", [sys.executable, "-m", "tenantq.cli", "api", "--port", str(port)])
        base = f"http://127.0.0.1:{port}"
        try:

            def up():
                try:
                    return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(up, timeout=60, message="the API to listen")
            codes: list[int] = []
            lock = threading.Lock()
            barrier = threading.Barrier(attempts)

            def submit() -> None:
                with httpx.Client(base_url=base, timeout=60) as client:
                    barrier.wait()
                    status = client.post("/v1/jobs", json=ECHO, headers=auth(key)).status_code
                with lock:
                    codes.append(status)

            threads = [threading.Thread(target=submit) for _ in range(attempts)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
        finally:
            group.stop_all()
        assert sorted(codes) == [202] * limit + [402] * (attempts - limit)
        db_session.expire_all()
        stored = db_session.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant.id))
        assert stored == limit
