"""Time limits (bounded by plan, enforced by a real worker) and results (expiry per plan, size bound)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tenantq.billing.usage.buffer import Flusher
from tenantq.billing.usage.metering import STREAM
from tenantq.core.db import utcnow
from tenantq.platform.jobs.models import Job
from tenantq.platform.jobs.service import purge_expired_results
from tests.billing.conftest import usage_of
from tests.conftest import wait_until
from tests.factories import ApiKeyFactory, JobFactory, auth
from tests.platform.helpers import get_job, submit, wait_job


class TestTimeLimitValidation:
    def err(self, api, key, body):
        resp = api.post(
            "/v1/jobs", json={"task": "demo.sleep", "args": {"seconds": 1}, **body}, headers=auth(key)
        )
        assert resp.status_code == 422, resp.text
        return resp.json()["error"]

    def test_above_plan_maximum_is_422(self, api):
        key = ApiKeyFactory(tenant__plan_name="free")  # free: max_time_limit_s 60
        err = self.err(api, key, {"time_limit": 61})
        assert err["code"] == "time_limit_not_allowed" and err["details"] == {
            "field": "time_limit",
            "max": 60,
        }
        assert self.err(api, key, {"soft_time_limit": 90})["details"]["field"] == "soft_time_limit"

    def test_soft_must_be_below_hard(self, api):
        key = ApiKeyFactory()
        assert self.err(api, key, {"soft_time_limit": 5, "time_limit": 5})["code"] == "invalid_time_limits"

    @pytest.mark.parametrize(
        "body",
        [
            {"time_limit": 0.001},
            {"time_limit": 5e-324},
            {"time_limit": 0.999},
            {"soft_time_limit": 0.001, "time_limit": 10.0},
            {"soft_time_limit": 0.5},
        ],
    )
    def test_below_the_floor_is_422(self, api, body):
        key = ApiKeyFactory()
        err = self.err(api, key, body)
        field = "soft_time_limit" if "soft_time_limit" in body else "time_limit"
        assert err["code"] == "time_limit_too_small"
        assert err["details"] == {"field": field, "min": 1.0}

    def test_the_floor_itself_is_allowed(self, api):
        key = ApiKeyFactory()
        job = submit(api, key, {"task": "demo.echo", "countdown": 3600, "time_limit": 1.0})
        assert job["time_limit"] == 1.0
        job = submit(
            api, key, {"task": "demo.echo", "countdown": 3600, "soft_time_limit": 1.0, "time_limit": 1.5}
        )
        assert (job["soft_time_limit"], job["time_limit"]) == (1.0, 1.5)

    def test_a_workflow_step_below_the_floor_is_422(self, api):
        key = ApiKeyFactory()
        resp = api.post(
            "/v1/workflows",
            json={"steps": [{"task": "demo.echo", "time_limit": 0.01}]},
            headers=auth(key),
        )
        assert resp.status_code == 422, resp.text
        assert resp.json()["error"]["code"] == "time_limit_too_small"

    def test_default_hard_limit_is_the_plans_maximum(self, api):
        key = ApiKeyFactory(tenant__plan_name="free")
        job = submit(api, key, {"task": "demo.echo", "countdown": 3600})
        assert job["time_limit"] == 60 and job["soft_time_limit"] is None
        job = submit(
            api, key, {"task": "demo.echo", "countdown": 3600, "soft_time_limit": 2.5, "time_limit": 4}
        )
        assert (job["soft_time_limit"], job["time_limit"]) == (2.5, 4)


class TestResults:
    def test_expired_result_says_so(self, api, db_session):
        key = ApiKeyFactory()
        job = JobFactory(
            tenant=key.tenant, result={"big": "answer"}, result_expires_at=utcnow() - timedelta(seconds=1)
        )
        body = get_job(api, key, job.id)
        assert body["result"] is None and body["result_expired"] is True and body["result_expires_at"]
        fresh = JobFactory(
            tenant=key.tenant, result={"x": 1}, result_expires_at=utcnow() + timedelta(hours=1)
        )
        body = get_job(api, key, fresh.id)
        assert body["result"] == {"x": 1} and body["result_expired"] is False

    def test_purge_drops_only_expired_results(self, db_session):
        old = JobFactory(result={"a": 1}, result_expires_at=utcnow() - timedelta(minutes=1))
        live = JobFactory(result={"b": 2}, result_expires_at=utcnow() + timedelta(minutes=1))
        assert purge_expired_results(db_session) >= 1
        db_session.expire_all()
        assert db_session.get(Job, old.id).result is None
        assert db_session.get(Job, live.id).result == {"b": 2}


@pytest.mark.e2e
class TestLimitsEndToEnd:
    def test_soft_time_limit_surfaces_as_a_clear_error(self, api, platform_processes):
        key = ApiKeyFactory()
        job = submit(
            api, key, {"task": "demo.sleep", "args": {"seconds": 20}, "soft_time_limit": 1, "time_limit": 30}
        )
        done = wait_job(api, key, job["id"], timeout=60)
        assert done["status"] == "failed"
        assert done["error"].startswith("SoftTimeLimitExceeded: soft time limit of 1s exceeded")
        assert done["attempt_log"][0]["status"] == "failed"

    def test_hard_time_limit_stops_the_attempt_and_says_why(
        self, api, db_session, redis_client, platform_processes
    ):
        key = ApiKeyFactory()
        job = submit(api, key, {"task": "demo.sleep", "args": {"seconds": 20}, "time_limit": 1})
        done = wait_job(api, key, job["id"], timeout=60)
        assert done["status"] == "failed", done
        assert done["error"].startswith(
            "TimeLimitExceeded: hard time limit of 1s exceeded; the attempt was stopped"
        )
        [attempt] = done["attempt_log"]
        assert attempt["status"] == "failed" and attempt["finished_at"]
        # Billed as failed, like the attempt (issue 14 item 10: it used to say `terminated`).
        wait_until(
            lambda: any(job["id"] in f.get("events", "") for _id, f in redis_client.xrange(STREAM)),
            timeout=30,
            message="the attempt's usage in the stream",
        )
        Flusher(redis_client).drain()
        assert {e.state for e in usage_of(db_session, job["id"])} == {"failed"}
        # The pool replaced the killed child: the worker still runs jobs.
        after = submit(api, key, {"task": "demo.echo", "args": {"still": "alive"}})
        assert wait_job(api, key, after["id"])["status"] == "succeeded"

    def test_success_sets_result_expiry_from_plan(self, api, platform_processes):
        key = ApiKeyFactory()
        job = submit(api, key, {"task": "demo.echo", "args": {"k": "v"}})
        done = wait_job(api, key, job["id"])
        from tests.platform.helpers import ts

        ttl = (ts(done["result_expires_at"]) - ts(done["finished_at"])).total_seconds()
        assert abs(ttl - 7 * 24 * 3600) < 5 and done["result"] == {"k": "v"}

    def test_result_over_the_size_limit_fails_the_job(self, api, platform_processes):
        key = ApiKeyFactory()
        job = submit(api, key, {"task": "demo.echo", "args": {"blob": "x" * 300_000}})
        done = wait_job(api, key, job["id"])
        assert done["status"] == "failed" and done["result"] is None
        assert done["error"].startswith("ResultTooLarge: result is 300")
        assert "larger than the limit of 262144 bytes" in done["error"].splitlines()[0]

    def test_purge_task_runs_on_the_worker(self, db_session, platform_processes):
        from tenantq.core.celery import app

        old = JobFactory(result={"a": 1}, result_expires_at=utcnow() - timedelta(minutes=1))
        purged = app.send_task("jobs.purge_expired_results", queue="tq.system").get(timeout=60)
        assert purged >= 1
        db_session.expire_all()
        assert db_session.get(Job, old.id).result is None


@pytest.mark.e2e
class TestSmallestLimits:
    def test_fifty_jobs_at_the_smallest_limits_all_finish(self, api, platform_processes):
        """The issue's stranded jobs: limits at the floor, every job reaches a final state with its
        attempt closed, and the worker never cut its own SQL in half (no connection left mid-command,
        no deadlock). On PostgreSQL when TENANTQ_DATABASE_URL points at it, as in CI."""
        key = ApiKeyFactory(tenant__plan_name="enterprise")
        hard = {"time_limit": 1.0, "max_retries": 0}
        both = {"soft_time_limit": 1.0, "time_limit": 1.5, "max_retries": 0}
        kinds = (
            [("echo-hard", {"task": "demo.echo", "args": {"n": i}, **hard}) for i in range(15)]
            + [("echo-both", {"task": "demo.echo", "args": {"n": i}, **both}) for i in range(15)]
            + [("sleep-hard", {"task": "demo.sleep", "args": {"seconds": 3}, **hard}) for _ in range(10)]
            + [("sleep-both", {"task": "demo.sleep", "args": {"seconds": 3}, **both}) for _ in range(10)]
        )
        jobs = [(kind, submit(api, key, body)["id"]) for kind, body in kinds]
        assert len(jobs) == 50
        for kind, job_id in jobs:
            done = wait_job(api, key, job_id, timeout=240)
            log = done["attempt_log"]
            assert len(log) == 1 and log[0]["status"] == done["status"] and log[0]["finished_at"], done
            if kind.startswith("echo"):
                assert done["status"] == "succeeded", done
            elif kind == "sleep-hard":
                assert done["status"] == "failed", done
                assert done["error"].startswith("TimeLimitExceeded: hard time limit of 1s exceeded"), done
            else:
                assert done["status"] == "failed", done
                assert done["error"].startswith("SoftTimeLimitExceeded: soft time limit of 1s exceeded"), done
        worker_log = platform_processes.log("worker")
        assert "another command is already in progress" not in worker_log
        assert "deadlock detected" not in worker_log
