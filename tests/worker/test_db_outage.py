"""A database failure in the attempt pipeline: starts are deferred, outcomes kept in Redis and settled.

Driven in-process: the SQL status write is made to fail with the error a lost database raises
(sqlalchemy's OperationalError), everything else (Redis, the real database afterwards) is real. The
tenants are paused, so the session's dispatcher leaves their queues alone. tests/faults runs the same
with real processes and a real outage.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import select

from tenantq.core.db import utcnow
from tenantq.core.keys import DELAYED, OUTBOX, OUTCOMES, PAYLOAD, lease_key, started_key
from tenantq.ops.metrics import overdue_jobs
from tenantq.platform.dispatch.models import Released
from tenantq.platform.dispatch.repository import TenantQueues
from tenantq.platform.jobs import lifecycle, outbox, outcomes
from tenantq.platform.jobs.messages import JobMessage
from tenantq.platform.jobs.models import Job
from tenantq.platform.jobs.service import job_message
from tenantq.platform.jobs.tasks import sweep_outbox
from tenantq.worker import pipeline
from tests.conftest import wait_until
from tests.factories import JobFactory, TenantFactory


def outage(*_args, **_kwargs):
    raise sa_exc.OperationalError("UPDATE job ...", {}, Exception("connection refused"))


def paused_tenant(redis_client):
    tenant = TenantFactory()
    TenantQueues(redis_client).pause(tenant.id, "test")
    return tenant


def running_job(tenant, **extra) -> tuple[Job, JobMessage]:
    job = JobFactory(tenant=tenant, status="running", attempts=1, started_at=utcnow(), **extra)
    wire = job_message(job, attempt=1)
    return job, JobMessage.from_job(wire["task"], {**wire["job"], "dispatch": "77"}, wire["args"])


def status_of(db_session, job_id: str) -> tuple[str, object]:
    db_session.expire_all()
    job = db_session.get(Job, job_id)
    return job.status, job.result


def attempt_state(message: JobMessage, **extra) -> pipeline.AttemptState:
    return pipeline.AttemptState(
        message=message, task_id=f"{message.id}-1", worker="w", time_limit=60, timelimit=(60, None), **extra
    )


class TestDeferredStart:
    def test_a_start_that_cannot_be_recorded_does_not_run_and_comes_back_later(
        self, redis_client, monkeypatch
    ):
        tenant = paused_tenant(redis_client)
        job = JobFactory(tenant=tenant, status="queued")
        wire = job_message(job, attempt=1)
        message = JobMessage.from_job(wire["task"], {**wire["job"], "dispatch": "41", "cap": 5}, wire["args"])
        attempt = attempt_state(message)
        pipeline._start_guard(attempt)
        assert attempt.guard == "ok" and redis_client.zcard(lease_key(tenant.id)) == 1
        monkeypatch.setattr(lifecycle, "attempt_started", outage)
        before = time.time()
        pipeline._status_started(attempt)
        assert attempt.deferred and attempt.skip == "deferred"  # the task wrapper will not run it
        # The slot and the start record are given back; the same attempt waits in the delayed queue.
        assert redis_client.zcard(lease_key(tenant.id)) == 0
        assert redis_client.get(started_key(job.id, 1)) is None
        due = redis_client.zscore(DELAYED, job.id)
        assert due is not None and due >= before + pipeline.DEFER_START_S - 1
        payload = json.loads(redis_client.hget(PAYLOAD, job.id))
        assert payload["job"]["attempt"] == 1 and "dispatch" not in payload["job"]
        assert payload["task_id"] == attempt.task_id and payload["options"] == {"time_limit": 60}
        # Not metered, not counted: nothing ran.
        pipeline._redis_started(attempt)
        pipeline._metrics_started(attempt)
        assert attempt.usage is None and attempt.running is None

    def test_the_dispatchers_late_ack_keeps_the_payload_a_worker_put_back(self, redis_client):
        tenant = paused_tenant(redis_client)
        queues = TenantQueues(redis_client)
        job = JobFactory(tenant=tenant, status="queued")
        wire = job_message(job, attempt=1)
        message = JobMessage.from_job(wire["task"], {**wire["job"], "dispatch": "42"}, wire["args"])
        from tenantq.platform.dispatch.deferral import defer_attempt

        defer_attempt(message, f"{job.id}-1", None, 60)
        other = JobFactory(tenant=tenant, status="queued")
        redis_client.hset(PAYLOAD, other.id, "{}")
        queues.ack([Released(job.id, "42", wire), Released(other.id, "43", job_message(other))])
        assert redis_client.hget(PAYLOAD, job.id) is not None  # deferred: still needed
        assert redis_client.hget(PAYLOAD, other.id) is None  # published: forgotten


class TestWriteBehind:
    def test_an_outcome_sql_refused_is_kept_in_redis_and_settled_once(
        self, db_session, redis_client, monkeypatch
    ):
        tenant = paused_tenant(redis_client)
        job, message = running_job(tenant)
        attempt = attempt_state(message, state="SUCCESS", retval={"answer": 42})
        with monkeypatch.context() as patch:
            patch.setattr(lifecycle, "attempt_succeeded", outage)
            pipeline._status_finished(attempt)
        assert attempt.outcome is None and attempt.durable  # kept, hooks deferred to the settler
        assert status_of(db_session, job.id)[0] == "running"
        outcomes.Settler().settle()  # the session's dispatcher may get there first: same code
        assert status_of(db_session, job.id) == ("succeeded", {"answer": 42})
        assert all(json.loads(f["job"])["id"] != job.id for _, f in redis_client.xrange(OUTCOMES))
        outcomes.record(message, "failed", error="late duplicate")  # applying again changes nothing
        outcomes.Settler().settle()
        assert status_of(db_session, job.id) == ("succeeded", {"answer": 42})

    def test_a_failure_is_kept_with_its_error(self, db_session, redis_client, monkeypatch):
        tenant = paused_tenant(redis_client)
        job, message = running_job(tenant)
        attempt = attempt_state(message, state="FAILURE", retval=ValueError("bad input"))
        with monkeypatch.context() as patch:
            patch.setattr(lifecycle, "attempt_failed", outage)
            pipeline._status_finished(attempt)
        outcomes.Settler().settle()
        db_session.expire_all()
        failed = db_session.get(Job, job.id)
        assert failed.status == "failed" and failed.error.startswith("ValueError: bad input")

    def test_the_settler_waits_while_the_database_is_down(self, db_session, redis_client, monkeypatch):
        tenant = paused_tenant(redis_client)
        job, message = running_job(tenant)
        outcomes.record(message, "succeeded", result={"n": 1})
        settler = outcomes.Settler()
        with monkeypatch.context() as patch:
            patch.setattr(outcomes, "_apply", outage)
            assert settler.settle() == 0  # stops at the first failure, raises nothing
        wait_until(lambda: settler.settle() >= 0 and status_of(db_session, job.id)[0] == "succeeded")

    def test_neither_sql_nor_redis_logs_the_outcome_as_lost_not_succeeded(
        self, redis_client, monkeypatch, caplog
    ):
        tenant = paused_tenant(redis_client)
        _job, message = running_job(tenant)
        attempt = attempt_state(message, state="SUCCESS", retval={})
        monkeypatch.setattr(lifecycle, "attempt_succeeded", outage)
        monkeypatch.setattr(outcomes, "RECORD_ATTEMPTS", 2)
        monkeypatch.setattr(outcomes, "RECORD_PAUSE_S", 0.01)

        def redis_down(*_a, **_k):
            import redis

            raise redis.ConnectionError("down")

        monkeypatch.setattr(outcomes, "record", redis_down)
        pipeline._status_finished(attempt)
        assert not attempt.durable
        caplog.clear()
        with caplog.at_level("INFO", logger="tenantq.worker.jobs"):
            pipeline._metrics_finished(attempt)
        messages = [r.getMessage() for r in caplog.records if r.name == "tenantq.worker.jobs"]
        assert "job outcome_lost" in messages and "job succeeded" not in messages


class TestOutbox:
    def test_a_committed_job_never_enqueued_is_queued_by_the_sweep(self, db_session, redis_client):
        tenant = paused_tenant(redis_client)
        job = JobFactory(tenant=tenant, status="queued")
        queues = TenantQueues(redis_client)
        redis_client.zadd(OUTBOX, {job.id: time.time() - 10})  # noted, committed, the API died
        sweep_outbox()  # the session's dispatcher may sweep it first: same code
        wait_until(lambda: queues.is_pending(tenant.id, job.id), message="the job to be queued")
        assert redis_client.zscore(OUTBOX, job.id) is None

    def test_notes_of_jobs_never_committed_are_dropped_after_a_while(self, redis_client):
        redis_client.zadd(OUTBOX, {"never-committed": time.time() - outbox.ABANDON_AFTER_S - 5})
        sweep_outbox()
        assert redis_client.zscore(OUTBOX, "never-committed") is None

    def test_submit_clears_its_note(self, redis_client, db_session):
        from tenantq.platform.jobs.schemas import JobCreate
        from tenantq.platform.jobs.service import submit_job

        tenant = paused_tenant(redis_client)
        result = submit_job(db_session, tenant, JobCreate(task="demo.echo"))
        assert result.created and redis_client.zscore(OUTBOX, result.job.id) is None


class TestOverdue:
    def test_jobs_running_past_their_limit_and_margin_are_overdue(self, db_session):
        before = overdue_jobs()
        tenant = TenantFactory()
        long_ago = utcnow() - timedelta(hours=3)
        JobFactory(tenant=tenant, status="running", started_at=long_ago, time_limit=60)
        JobFactory(tenant=tenant, status="running", started_at=utcnow(), time_limit=60)
        JobFactory(tenant=tenant, status="succeeded", started_at=long_ago, time_limit=60)
        assert overdue_jobs() == before + 1
        assert db_session.scalar(select(Job.id).where(Job.tenant_id == tenant.id).limit(1))


@pytest.mark.parametrize("state", ["IGNORED"])
def test_a_deferred_attempt_ends_without_counting_or_logging_an_end(state, caplog):
    message = JobMessage.from_job("demo.echo", {"id": "x", "tenant_id": "t"}, {})
    attempt = attempt_state(message, deferred=True, state=state, retval=SimpleNamespace())
    with caplog.at_level("INFO", logger="tenantq.worker.jobs"):
        pipeline._metrics_finished(attempt)
    assert not [r for r in caplog.records if r.name.startswith("tenantq.worker")]


def test_a_retry_queued_while_sql_is_down_stays_a_retry(db_session, redis_client, monkeypatch):
    tenant = paused_tenant(redis_client)
    job, message = running_job(tenant, max_retries=3)
    monkeypatch.setattr(lifecycle, "_record_retry", outage)
    assert lifecycle.schedule_retry(message, ValueError("flaky"), delay=60)
    payload = json.loads(redis_client.hget(PAYLOAD, job.id))
    assert payload["job"]["attempt"] == 2 and redis_client.zscore(DELAYED, job.id) is not None
    # SQL still says running attempt 1: attempt 2's start moves it on, as after a worker crash.
    assert status_of(db_session, job.id)[0] == "running"
