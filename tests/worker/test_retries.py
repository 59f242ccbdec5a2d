"""Retries: backoff policy (unit) and retries observed end to end on a real worker, with their delays,
through tenantq's own delayed queue; dead letters and re-runs."""

from __future__ import annotations

import time
from itertools import pairwise

import pytest
from sqlalchemy import select

from tenantq.platform.jobs.models import JobAttempt
from tenantq.platform.jobs.registry import AnyArgs, TaskType
from tests.factories import ApiKeyFactory, JobFactory, auth
from tests.platform.helpers import get_job, submit, ts, wait_job


def spec(**kw) -> TaskType:
    return TaskType(name="t", func=lambda a, c: None, args_model=AnyArgs, description="", **kw)


class TestBackoff:
    def test_first_retry_waits_exactly_the_floor(self):
        assert all(spec(retry_backoff=2.0).backoff(0) == 2.0 for _ in range(50))

    def test_jitter_stays_between_floor_and_capped_ceiling(self):
        s = spec(retry_backoff=1.0, retry_backoff_max=5.0)
        for retries, ceiling in ((1, 2.0), (2, 4.0), (3, 5.0), (10, 5.0), (200, 5.0)):
            delays = [s.backoff(retries) for _ in range(300)]
            assert min(delays) >= 1.0 and max(delays) <= ceiling
            assert max(delays) - min(delays) > 0.1 * (ceiling - 1.0)  # really jittered, not constant

    def test_per_job_overrides_and_no_jitter(self):
        s = spec(retry_backoff=1.0, retry_backoff_max=60.0, retry_jitter=False)
        assert s.backoff(3) == 8.0
        assert s.backoff(3, base=0.5, cap=3.0) == 3.0

    def test_cap_below_floor_never_goes_under_floor(self):
        assert spec(retry_backoff=4.0, retry_backoff_max=1.0).backoff(5) == 4.0


@pytest.fixture
def defaults_type():
    """A task type registered only in this (API) process, removed afterwards; its jobs never run."""
    from tenantq.core.celery import app
    from tenantq.platform.jobs.registry import REGISTRY, task_type

    spec = task_type("test.retry_defaults", max_retries=5)(lambda args, ctx: None)
    yield spec
    REGISTRY.pop(spec.name, None)
    app.tasks.pop(spec.name, None)


class TestRetryValidation:
    def test_task_type_default_applies_and_is_clamped_to_the_plan(self, api, defaults_type):
        pro = ApiKeyFactory()  # pro plan: max_retries 10
        free = ApiKeyFactory(tenant__plan_name="free")  # free plan: max_retries 3
        body = {"task": defaults_type.name, "countdown": 3600}
        assert submit(api, pro, body)["max_retries"] == 5
        assert submit(api, free, body)["max_retries"] == 3
        assert submit(api, pro, {**body, "max_retries": 0})["max_retries"] == 0

    def test_backoff_fields_validated(self, api):
        key = ApiKeyFactory()
        resp = api.post(
            "/v1/jobs",
            json={"task": "demo.flaky", "args": {"failures": 1}, "retry_backoff": 5, "retry_backoff_max": 1},
            headers=auth(key),
        )
        assert resp.status_code == 422 and resp.json()["error"]["code"] == "invalid_input"

    def test_max_retries_bounded_by_plan(self, api):
        key = ApiKeyFactory(tenant__plan_name="free")  # free plan: max_retries 3
        resp = api.post(
            "/v1/jobs",
            json={"task": "demo.flaky", "args": {"failures": 1}, "max_retries": 4},
            headers=auth(key),
        )
        assert resp.status_code == 422 and resp.json()["error"]["code"] == "max_retries_not_allowed"

    def test_rerun_refuses_unfinished_and_succeeded_jobs(self, api):
        key = ApiKeyFactory()
        for status in ("succeeded", "queued", "running"):
            job = JobFactory(tenant=key.tenant, status=status)
            resp = api.post(f"/v1/jobs/{job.id}/retry", headers=auth(key))
            assert resp.status_code == 409, resp.text
            assert resp.json()["error"]["code"] == "not_rerunnable"

    def test_rerun_of_another_tenants_job_is_404(self, api):
        key = ApiKeyFactory()
        other = JobFactory(status="failed")
        assert api.post(f"/v1/jobs/{other.id}/retry", headers=auth(key)).status_code == 404


@pytest.mark.e2e
class TestRetriesEndToEnd:
    def test_retries_are_spaced_by_the_backoff_and_logged(self, api, db_session, platform_processes):
        key = ApiKeyFactory()
        job = submit(
            api,
            key,
            {
                "task": "demo.flaky",
                "args": {"failures": 2},
                "max_retries": 3,
                "retry_backoff": 1.0,
                "retry_backoff_max": 1.5,
            },
        )
        done = wait_job(api, key, job["id"])
        assert done["status"] == "succeeded" and done["result"] == {"attempt": 3}
        log = done["attempt_log"]
        assert [a["attempt"] for a in log] == [1, 2, 3]
        assert [a["status"] for a in log] == ["failed", "failed", "succeeded"]
        assert "FlakyError: attempt 1 fails on purpose" in log[0]["error"]
        assert all(a["worker"] and a["finished_at"] for a in log)
        # Each retry waited at least the floor (1.0 s) after the failed attempt ended.
        for before, after in pairwise(log):
            assert (ts(after["started_at"]) - ts(before["finished_at"])).total_seconds() >= 1.0
        # One Celery task id per attempt, so results and revokes are per attempt.
        db_session.expire_all()
        ids = db_session.scalars(select(JobAttempt.task_id).where(JobAttempt.job_id == job["id"])).all()
        assert sorted(ids) == [f"{job['id']}-{n}" for n in (1, 2, 3)]

    def test_exhausted_retries_land_in_dead_letters_and_rerun_continues_numbering(
        self, api, platform_processes
    ):
        key = ApiKeyFactory()
        # Fails attempts 1-3; max_retries=1 gives attempts 1 and 2, then the job is dead.
        job = submit(
            api, key, {"task": "demo.flaky", "args": {"failures": 3}, "max_retries": 1, "retry_backoff": 0.2}
        )
        dead = wait_job(api, key, job["id"])
        assert dead["status"] == "failed" and dead["attempts"] == 2
        assert "attempt 2 fails on purpose" in dead["error"]
        letters = api.get("/v1/jobs?status=failed", headers=auth(key)).json()["items"]
        assert [j["id"] for j in letters] == [job["id"]]
        # Re-run: attempt 3 fails, the fresh retry budget gives attempt 4, which succeeds.
        resp = api.post(f"/v1/jobs/{job['id']}/retry", headers=auth(key))
        assert resp.status_code == 202 and resp.json()["status"] == "queued"
        again = wait_job(api, key, job["id"])
        assert again["status"] == "succeeded" and again["result"] == {"attempt": 4}
        assert [(a["attempt"], a["status"]) for a in again["attempt_log"]] == [
            (1, "failed"),
            (2, "failed"),
            (3, "failed"),
            (4, "succeeded"),
        ]
        assert api.get("/v1/jobs?status=failed", headers=auth(key)).json()["items"] == []

    def test_retry_waits_in_the_tenant_queue_and_obeys_a_pause(self, api, redis_client, platform_processes):
        # The retry is an ordinary entry of the tenant's delayed queue: a paused tenant's retry waits.
        key = ApiKeyFactory()
        job = submit(
            api, key, {"task": "demo.flaky", "args": {"failures": 1}, "max_retries": 1, "retry_backoff": 3.0}
        )
        wait_job(api, key, job["id"], statuses=("retrying",))
        redis_client.sadd("tq:paused", key.tenant_id)
        try:
            waiting = (
                redis_client.hget("tq:delayed:t", job["id"]) == key.tenant_id
                or redis_client.zscore(f"tq:q:{key.tenant_id}", job["id"]) is not None
            )
            assert waiting, "the retry should wait in the tenant's own queues"
            time.sleep(4.0)  # past the 3 s backoff
            body = get_job(api, key, job["id"])
            assert body["status"] == "retrying" and len(body["attempt_log"]) == 1
        finally:
            redis_client.srem("tq:paused", key.tenant_id)
        done = wait_job(api, key, job["id"], timeout=180)  # generous: the shared session worker may be busy
        assert done["status"] == "succeeded" and done["result"] == {"attempt": 2}

    def test_non_retryable_error_is_not_retried(self, api, platform_processes):
        key = ApiKeyFactory()
        job = submit(
            api,
            key,
            {"task": "demo.fail", "args": {"message": "bad input"}, "max_retries": 5, "retry_backoff": 0.1},
        )
        done = wait_job(api, key, job["id"])
        assert done["status"] == "failed" and done["attempts"] == 1
        assert done["error"].startswith("RuntimeError: bad input")
        assert get_job(api, key, job["id"])["attempt_log"][0]["status"] == "failed"
