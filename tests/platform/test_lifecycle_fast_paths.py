"""The worker's per-attempt SQL fast paths (bench/overhead.py): the one-statement attempt open, the
webhook hint (the finish hooks' probe) taken from the finish transaction, and the idle-only connection
ping. Run on SQLite and on PostgreSQL (the single-statement path there)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import redis
from sqlalchemy import select, text

from tenantq.core.db import get_engine, utcnow
from tenantq.core.redis import REDIS_RETRY_DELAYS_S
from tenantq.platform.jobs import lifecycle
from tenantq.platform.jobs.hooks import AttemptOutcome
from tenantq.platform.jobs.messages import JobMessage
from tenantq.platform.jobs.models import Job, JobAttempt
from tenantq.platform.jobs.registry import NotStarted
from tenantq.platform.webhooks.models import WebhookEndpoint
from tenantq.worker import app as celery_app
from tenantq.worker import pipeline  # the worker's assembly: its finish hooks are subscribed
from tests.factories import JobFactory, TenantFactory


def _meta(job: Job, attempt: int = 1) -> JobMessage:
    return JobMessage.from_job("demo.echo", {"id": job.id, "tenant_id": job.tenant_id, "attempt": attempt})


def _attempts(db_session, job_id: str) -> list[JobAttempt]:
    db_session.expire_all()
    return list(
        db_session.scalars(select(JobAttempt).where(JobAttempt.job_id == job_id).order_by(JobAttempt.attempt))
    )


class TestAttemptStarted:
    def test_opens_the_job_and_one_attempt_row(self, db_session):
        job = JobFactory(status="queued", attempts=0)
        assert lifecycle.attempt_started(_meta(job), "task-1", "w1@host") is True
        db_session.expire_all()
        row = db_session.get(Job, job.id)
        assert (row.status, row.attempts, row.worker, row.task_id) == ("running", 1, "w1@host", "task-1")
        assert row.started_at is not None
        (attempt,) = _attempts(db_session, job.id)
        assert (attempt.attempt, attempt.status, attempt.task_id, attempt.worker) == (
            1,
            "running",
            "task-1",
            "w1@host",
        )
        assert attempt.finished_at is None and attempt.error is None

    def test_a_redelivered_attempt_reopens_its_row(self, db_session):
        job = JobFactory(status="queued", attempts=0)
        assert lifecycle.attempt_started(_meta(job), "task-1", "w1@host")
        # The worker died mid-run; the attempt row was left with an error (as a lost attempt might be).
        db_session.execute(
            text("UPDATE job_attempt SET status='failed', error='lost', finished_at=:t WHERE job_id=:j"),
            {"t": utcnow(), "j": job.id},
        )
        db_session.commit()
        assert lifecycle.attempt_started(_meta(job), "task-1", "w2@host") is True
        (attempt,) = _attempts(db_session, job.id)
        assert (attempt.status, attempt.worker, attempt.finished_at, attempt.error) == (
            "running",
            "w2@host",
            None,
            None,
        )
        assert attempt.task_id == "task-1"

    def test_refused_for_a_finished_job_or_an_older_attempt(self, db_session):
        done = JobFactory(status="succeeded", attempts=1)
        assert lifecycle.attempt_started(_meta(done), "task-d", "w") is False
        assert _attempts(db_session, done.id) == []
        # Through the pipeline: the task wrapper is told not to run it.
        task = SimpleNamespace(
            name="demo.echo", request=SimpleNamespace(hostname="w", timelimit=None), app=celery_app
        )
        pipeline.on_prerun(task_id="task-d", task=task, kwargs={"job": dict(_meta(done).job), "args": {}})
        assert task.request.tq_skip == "refused"
        pipeline.on_postrun(task_id="task-d", state="IGNORED", retval=NotStarted())
        assert _attempts(db_session, done.id) == []

        moved_on = JobFactory(status="running", attempts=3)
        assert lifecycle.attempt_started(_meta(moved_on, attempt=2), "task-old", "w") is False
        db_session.expire_all()
        assert db_session.get(Job, moved_on.id).attempts == 3
        assert _attempts(db_session, moved_on.id) == []


class TestAttemptSucceeded:
    def test_result_expiry_follows_the_plan_at_finish_time(self, db_session):
        from datetime import timedelta

        from tenantq.tenants.accounts.models import Plan

        tenant = TenantFactory()
        plan = db_session.get(Plan, tenant.plan_name)
        job = JobFactory(tenant=tenant, status="queued", attempts=0)
        meta = _meta(job)
        assert lifecycle.attempt_started(meta, "t", "w")
        before = utcnow()
        lifecycle.attempt_succeeded(meta, [1, "two"])
        db_session.expire_all()
        row = db_session.get(Job, job.id)
        assert row.status == "succeeded" and row.result == [1, "two"] and row.error is None
        if plan.result_ttl_s:
            expected = row.finished_at + timedelta(seconds=plan.result_ttl_s)
            assert abs((row.result_expires_at - expected).total_seconds()) < 0.01
            assert row.finished_at >= before - timedelta(seconds=1)
        else:
            assert row.result_expires_at is None
        assert [(a.status, a.finished_at) for a in _attempts(db_session, job.id)] == [
            ("succeeded", row.finished_at)
        ]

    def test_a_late_success_never_moves_a_finished_job(self, db_session):
        job = JobFactory(status="queued", attempts=0)
        meta = _meta(job)
        assert lifecycle.attempt_started(meta, "t", "w")
        lifecycle.attempt_terminated(meta, "terminated by cancellation")
        lifecycle.attempt_succeeded(meta, {"late": True})
        db_session.expire_all()
        row = db_session.get(Job, job.id)
        assert row.status == "cancelled" and row.result is None
        assert [a.status for a in _attempts(db_session, job.id)] == ["cancelled"]


class TestWebhookHint:
    def test_no_endpoint_seen_at_finish_means_no_lookup(self, db_session):
        job = JobFactory(status="queued", attempts=0)
        meta = _meta(job)
        assert lifecycle.attempt_started(meta, "t", "w")
        outcome = lifecycle.attempt_succeeded(meta, {"ok": True})
        assert outcome.probes == {"webhooks": False} and outcome.concerns("webhooks") is False
        # An outcome applied elsewhere was not probed: the hook falls back to its own lookup.
        assert AttemptOutcome(meta, "succeeded").concerns("webhooks") is True
        db_session.expire_all()
        row = db_session.get(Job, job.id)
        assert row.status == "succeeded" and row.result == {"ok": True}
        assert [a.status for a in _attempts(db_session, job.id)] == ["succeeded"]

    def test_an_enabled_endpoint_keeps_the_lookup(self, db_session):
        tenant = TenantFactory()
        db_session.add(
            WebhookEndpoint(
                tenant_id=tenant.id, url="http://127.0.0.1:9/", events=["job.failed"], secret="whsec_x"
            )
        )
        db_session.commit()
        job = JobFactory(tenant=tenant, status="queued", attempts=0)
        meta = _meta(job)
        assert lifecycle.attempt_started(meta, "t", "w")
        outcome = lifecycle.attempt_failed(meta, "ValueError: boom")
        assert outcome.probes == {"webhooks": True} and outcome.concerns("webhooks") is True
        db_session.expire_all()
        assert db_session.get(Job, job.id).status == "failed"
        assert [(a.status, a.error) for a in _attempts(db_session, job.id)] == [
            ("failed", "ValueError: boom")
        ]

    def test_a_disabled_endpoint_counts_as_none(self, db_session):
        tenant = TenantFactory()
        db_session.add(
            WebhookEndpoint(
                tenant_id=tenant.id,
                url="http://127.0.0.1:9/",
                events=["job.succeeded"],
                secret="whsec_y",
                enabled=False,
            )
        )
        db_session.commit()
        job = JobFactory(tenant=tenant, status="queued", attempts=0)
        meta = _meta(job)
        assert lifecycle.attempt_started(meta, "t", "w")
        outcome = lifecycle.attempt_succeeded(meta, None)
        assert outcome.concerns("webhooks") is False


class TestIdlePing:
    def test_a_connection_killed_while_idle_is_replaced(self, db_session):
        import time

        engine = get_engine()
        if engine.dialect.name != "postgresql":
            pytest.skip("SQLite has no server connection to lose")
        with engine.connect() as killer:
            with engine.connect() as victim:
                pid = victim.execute(text("select pg_backend_pid()")).scalar()
            # The victim is back in the pool, idle; the server drops it.
            killer.execute(text("select pg_terminate_backend(:p)"), {"p": pid})
        time.sleep(1.2)  # past PING_IF_IDLE_SECONDS: each check-out pings and finds a dead one
        with engine.connect() as a, engine.connect() as b:
            pids = {
                a.execute(text("select pg_backend_pid()")).scalar(),
                b.execute(text("select pg_backend_pid()")).scalar(),
            }
        assert pid not in pids and len(pids) == 2


class TestAttemptKilled:
    """The pool's backstop kill, recorded by the worker's main process (``attempt_killed``)."""

    def test_a_kill_that_cut_the_start_short_fails_the_waiting_job(self, db_session):
        job = JobFactory(status="queued", attempts=0)
        outcome = lifecycle.attempt_killed(_meta(job), "TimeLimitExceeded: killed")
        assert outcome.status == "failed"
        db_session.expire_all()
        row = db_session.get(Job, job.id)
        assert (row.status, row.attempts, row.error) == ("failed", 1, "TimeLimitExceeded: killed")
        assert row.finished_at is not None
        (attempt,) = _attempts(db_session, job.id)
        assert (attempt.attempt, attempt.status, attempt.error) == (1, "failed", "TimeLimitExceeded: killed")
        assert attempt.finished_at is not None

    def test_a_kill_of_a_running_attempt_closes_its_row(self, db_session):
        job = JobFactory(status="queued", attempts=0)
        assert lifecycle.attempt_started(_meta(job), "task-1", "w1@host")
        lifecycle.attempt_killed(_meta(job), "killed")
        db_session.expire_all()
        assert db_session.get(Job, job.id).status == "failed"
        (attempt,) = _attempts(db_session, job.id)
        assert (attempt.status, attempt.worker, attempt.error) == ("failed", "w1@host", "killed")

    @pytest.mark.parametrize(
        ("status", "attempts"),
        [("succeeded", 1), ("retrying", 1), ("running", 2), ("cancelled", 0)],
    )
    def test_leaves_a_job_that_moved_on_alone(self, db_session, status, attempts):
        job = JobFactory(status=status, attempts=attempts)
        lifecycle.attempt_killed(_meta(job), "killed")
        db_session.expire_all()
        row = db_session.get(Job, job.id)
        assert (row.status, row.attempts) == (status, attempts)
        assert _attempts(db_session, job.id) == []


class TestCancelGateAcrossARedisRestart:
    """The wrapper's gate reads the cancel marker itself only when prerun's Redis round trip failed
    (Redis was away a moment ago). A Redis restart must not fail an attempt whose start is recorded:
    the gate waits it out (found in a fault run: two jobs failed for good with ConnectionError)."""

    @staticmethod
    def _flaky(monkeypatch, failures: int) -> list[float]:
        real = lifecycle.cancelled_up_to
        calls = {"n": 0}
        pauses: list[float] = []

        def flaky(job_id, client=None):
            calls["n"] += 1
            if calls["n"] <= failures:
                raise redis.ConnectionError("Connection refused")
            return real(job_id, client)

        monkeypatch.setattr(lifecycle, "cancelled_up_to", flaky)
        monkeypatch.setattr("time.sleep", pauses.append)
        return pauses

    def test_waits_out_a_restart_then_lets_the_attempt_run(self, db_session, monkeypatch):
        job = JobFactory(status="running", attempts=1)
        pauses = self._flaky(monkeypatch, failures=3)
        assert lifecycle.may_start(_meta(job)) is True
        assert pauses == list(REDIS_RETRY_DELAYS_S[:3])

    def test_a_cancel_set_before_the_outage_still_stops_the_attempt(self, db_session, monkeypatch):
        job = JobFactory(status="running", attempts=1)
        lifecycle.mark_cancelled(job.id, 1)
        self._flaky(monkeypatch, failures=2)
        assert lifecycle.may_start(_meta(job)) is False
        db_session.expire_all()
        assert db_session.get(Job, job.id).status == "cancelled"

    def test_redis_away_past_every_retry_fails_as_before(self, db_session, monkeypatch):
        job = JobFactory(status="running", attempts=1)
        pauses = self._flaky(monkeypatch, failures=100)
        with pytest.raises(redis.ConnectionError):
            lifecycle.may_start(_meta(job))
        assert pauses == list(REDIS_RETRY_DELAYS_S)

    def test_the_marker_read_by_prerun_is_used_without_a_round_trip(self, db_session, monkeypatch):
        job = JobFactory(status="running", attempts=1)
        self._flaky(monkeypatch, failures=100)  # any read would fail
        assert lifecycle.may_start(_meta(job), cancelled=0) is True
