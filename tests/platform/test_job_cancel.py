"""Cancellation: a waiting job never starts (even if Celery already has it), a running one is killed or
marked, a finished one is left alone; re-running a cancelled job."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from tenantq.billing.usage.buffer import Flusher
from tenantq.billing.usage.metering import STREAM
from tenantq.platform.dispatch.dispatcher import publish
from tenantq.platform.dispatch.repository import TenantQueues
from tenantq.platform.jobs.lifecycle import cancel_key
from tenantq.platform.jobs.models import JobAttempt
from tests.billing.conftest import usage_of
from tests.conftest import wait_until
from tests.factories import ApiKeyFactory, JobFactory, auth
from tests.platform.helpers import get_job, submit, wait_job


def cancel(api, key, job_id, status=200):
    resp = api.post(f"/v1/jobs/{job_id}/cancel", headers=auth(key))
    assert resp.status_code == status, resp.text
    return resp.json()


def attempt_rows(session, job_id) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(JobAttempt).where(JobAttempt.job_id == job_id))


class TestCancelApi:
    def test_scheduled_job_is_dequeued(self, api, redis_client):
        key = ApiKeyFactory()
        job = submit(api, key, {"task": "demo.echo", "countdown": 3600})
        body = cancel(api, key, job["id"])
        assert body == {"id": job["id"], "status": "cancelled", "cancellation": "dequeued"}
        assert redis_client.zscore("tq:delayed", job["id"]) is None
        assert redis_client.hget("tq:payload", job["id"]) is None
        assert int(redis_client.get(cancel_key(job["id"]))) == 1
        assert get_job(api, key, job["id"])["finished_at"]

    def test_finished_job_is_already_finished_and_unchanged(self, api):
        key = ApiKeyFactory()
        for status in ("succeeded", "failed", "cancelled"):
            job = JobFactory(tenant=key.tenant, status=status)
            assert cancel(api, key, job.id) == {
                "id": job.id,
                "status": status,
                "cancellation": "already_finished",
            }

    def test_running_uninterruptible_job_is_marked_requested(self, api, db_session):
        key = ApiKeyFactory()
        job = JobFactory(
            tenant=key.tenant, task="demo.sleep_uninterruptible", status="running", attempts=1, task_id="x-1"
        )
        body = cancel(api, key, job.id)
        assert body["cancellation"] == "requested" and body["status"] == "running"
        assert get_job(api, key, job.id)["cancel_requested"] is True

    def test_another_tenants_job_is_404(self, api):
        key = ApiKeyFactory()
        other = JobFactory(status="queued")
        resp = api.post(f"/v1/jobs/{other.id}/cancel", headers=auth(key))
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"

    def test_needs_write_scope(self, api):
        key = ApiKeyFactory(scopes=["jobs:read"])
        job = JobFactory(tenant=key.tenant, status="queued")
        assert api.post(f"/v1/jobs/{job.id}/cancel", headers=auth(key)).status_code == 403


@pytest.mark.e2e
class TestCancelEndToEnd:
    def test_cancelled_queued_job_never_runs(self, api, db_session, redis_client, platform_processes):
        key = ApiKeyFactory()
        redis_client.sadd("tq:paused", key.tenant_id)  # the dispatcher leaves this tenant's queue alone
        try:
            job = submit(api, key, {"task": "demo.echo", "args": {"n": 1}})
            assert cancel(api, key, job["id"])["cancellation"] == "dequeued"
            control = submit(api, key, {"task": "demo.echo", "args": {"n": 2}})
        finally:
            redis_client.srem("tq:paused", key.tenant_id)
        # The un-paused tenant's next job runs; the cancelled one never does.
        assert wait_job(api, key, control["id"])["status"] == "succeeded"
        time.sleep(1.0)
        body = get_job(api, key, job["id"])
        assert body["status"] == "cancelled" and body["started_at"] is None and body["attempt_log"] == []
        assert attempt_rows(db_session, job["id"]) == 0

    def test_cancelled_job_already_handed_to_celery_never_starts(
        self, api, db_session, redis_client, platform_processes
    ):
        key = ApiKeyFactory()
        redis_client.sadd("tq:paused", key.tenant_id)
        try:
            job = submit(api, key, {"task": "demo.echo", "args": {"n": 1}})
            # Play the dispatcher: take the message off the tenant queue, as if already released.
            [message] = TenantQueues(redis_client).pop(key.tenant_id, 1)
            assert cancel(api, key, job["id"])["cancellation"] == "dequeued"
            publish(message, "tq.exec")  # ...and Celery delivers it after the cancellation
        finally:
            redis_client.srem("tq:paused", key.tenant_id)
        wait_until(
            lambda: f"[{message['task_id']}] ignored" in platform_processes.log("worker"),
            timeout=60,
            message="the worker to receive and ignore the cancelled attempt",
        )
        body = get_job(api, key, job["id"])
        assert body["status"] == "cancelled" and body["started_at"] is None and body["attempt_log"] == []

    def test_replayed_attempt_of_a_finished_job_does_not_run(self, api, platform_processes):
        # E.g. a message redelivered after its ack was lost: prerun refuses it and the wrapper skips it.
        key = ApiKeyFactory()
        job = submit(api, key, {"task": "demo.echo", "args": {"once": True}})
        done = wait_job(api, key, job["id"])
        from tenantq.platform.jobs.messages import message_for_attempt

        message = message_for_attempt(
            "demo.echo",
            {"twice": True},
            {"id": job["id"], "tenant_id": key.tenant_id, "priority": 5, "max_retries": 0},
            1,
        )
        publish(message, "tq.exec")
        wait_until(
            lambda: f"[{message['task_id']}] ignored" in platform_processes.log("worker"),
            timeout=60,
            message="the worker to ignore the replayed attempt",
        )
        again = get_job(api, key, job["id"])
        assert again["result"] == {"once": True} and again["attempt_log"] == done["attempt_log"]

    def test_cancel_while_waiting_for_a_retry(self, api, redis_client, platform_processes):
        key = ApiKeyFactory()
        job = submit(
            api, key, {"task": "demo.flaky", "args": {"failures": 1}, "max_retries": 2, "retry_backoff": 60}
        )
        waiting = wait_job(api, key, job["id"], statuses=("retrying",))
        assert waiting["run_at"] and redis_client.zscore("tq:delayed", job["id"]) is not None
        assert cancel(api, key, job["id"])["cancellation"] == "dequeued"
        assert redis_client.zscore("tq:delayed", job["id"]) is None
        assert int(redis_client.get(cancel_key(job["id"]))) == 2  # the pending retry is attempt 2
        body = get_job(api, key, job["id"])
        assert body["status"] == "cancelled" and [a["status"] for a in body["attempt_log"]] == ["failed"]

    def test_running_job_is_terminated(self, api, db_session, redis_client, platform_processes):
        key = ApiKeyFactory()
        job = submit(api, key, {"task": "demo.sleep", "args": {"seconds": 60}, "max_retries": 3})
        wait_job(api, key, job["id"], statuses=("running",))
        body = cancel(api, key, job["id"])
        assert body == {"id": job["id"], "status": "cancelled", "cancellation": "terminated"}

        def attempt_closed():
            log = get_job(api, key, job["id"])["attempt_log"]
            return log if log and log[0]["status"] == "cancelled" else None

        log = wait_until(attempt_closed, timeout=30, message="the worker to report the terminated attempt")
        assert "terminated by cancellation" in log[0]["error"]
        done = get_job(api, key, job["id"])
        assert done["status"] == "cancelled" and done["result"] is None and len(done["attempt_log"]) == 1
        # Billed as what it was, a cancellation (issue 14 item 10: it used to say `terminated`).
        wait_until(
            lambda: any(job["id"] in f.get("events", "") for _id, f in redis_client.xrange(STREAM)),
            timeout=30,
            message="the attempt's usage in the stream",
        )
        Flusher(redis_client).drain()
        assert {e.state for e in usage_of(db_session, job["id"])} == {"cancelled"}

    def test_uninterruptible_job_finishes_early_and_is_not_retried(self, api, platform_processes):
        key = ApiKeyFactory()
        job = submit(api, key, {"task": "demo.sleep_uninterruptible", "args": {"seconds": 60}})
        wait_job(api, key, job["id"], statuses=("running",))
        assert cancel(api, key, job["id"])["cancellation"] == "requested"
        done = wait_job(api, key, job["id"], timeout=30)
        # It stopped at its own safe point (it polls JobContext.cancel_requested()).
        assert done["status"] == "succeeded" and done["result"]["stopped_early"] is True
        assert done["cancel_requested"] is True

    def test_cancelled_job_can_be_rerun_as_a_new_attempt(self, api, redis_client, platform_processes):
        key = ApiKeyFactory()
        job = submit(api, key, {"task": "demo.echo", "args": {"again": True}, "countdown": 3600})
        cancel(api, key, job["id"])
        resp = api.post(f"/v1/jobs/{job['id']}/retry", headers=auth(key))
        assert resp.status_code == 202 and resp.json()["status"] == "queued"
        done = wait_job(api, key, job["id"])
        # Attempt 1 was cancelled before it started, so the re-run is attempt 2.
        assert done["status"] == "succeeded" and done["result"] == {"again": True}
        assert [a["attempt"] for a in done["attempt_log"]] == [2]
