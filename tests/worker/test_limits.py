"""The worker's start guard and lease release, driven in-process with a stand-in task object.

The tenants are paused so the session's dispatcher leaves their queues alone.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

from tenantq.core.celery import app as celery_app
from tenantq.core.db import utcnow
from tenantq.core.keys import cancel_key, lease_key, wait_key
from tenantq.core.redis import get_redis
from tenantq.platform.dispatch import limits
from tenantq.platform.dispatch.dispatcher import Dispatcher
from tenantq.platform.dispatch.repository import TenantQueues
from tenantq.platform.jobs.messages import JobMessage
from tenantq.platform.jobs.registry import NotStarted
from tenantq.platform.jobs.tasks import queued_before
from tenantq.worker import pipeline
from tests.factories import JobFactory, TenantFactory


def paused_tenant(redis_client, **overrides):
    tenant = TenantFactory(overrides=overrides)
    TenantQueues(redis_client).pause(tenant.id, "test")
    return tenant


def message(tenant_id: str, job_id: str, token: str, attempt: int = 1, **extra) -> JobMessage:
    job = {
        "id": job_id,
        "tenant_id": tenant_id,
        "priority": 5,
        "attempt": attempt,
        "dispatch": token,
        **extra,
    }
    return JobMessage.from_job("demo.echo", job, {})


def guard(msg: JobMessage, task_id: str = "t") -> str | None:
    """The start guard's verdict as the task wrapper sees it: None when the attempt may run."""
    verdict = limits.start_guard(msg, task_id)
    return None if verdict in ("ok", "unguarded") else verdict


class TestStartGuard:
    def test_first_start_takes_a_lease_and_records_the_wait(self, redis_client):
        t = paused_tenant(redis_client, concurrency=2)
        assert guard(message(t.id, "j1", "10", enqueued_at=1.0)) is None
        assert redis_client.get("tq:started:j1:1") == "10"
        assert redis_client.zscore(lease_key(t.id), "j1:10") is not None
        assert redis_client.llen(wait_key(t.id)) == 1
        limits.release_lease(message(t.id, "j1", "10"))
        assert redis_client.zcard(lease_key(t.id)) == 0

    def test_duplicate_dispatch_is_skipped_and_redelivery_is_told_apart(self, redis_client):
        t = paused_tenant(redis_client, concurrency=5)
        assert guard(message(t.id, "j2", "20")) is None
        assert guard(message(t.id, "j2", "21")) == "dup"  # another release of attempt 1
        # The same message delivered again while the first delivery holds its lease: held back.
        assert guard(message(t.id, "j2", "20")) == "busy"
        # Once the first delivery's lease is gone (its worker died and the lease lapsed), the same
        # message is a redelivery: the pipeline records attempt 1 as lost and queues attempt 2
        # (tests/billing/test_quota_holes.py, TestLostAttempts).
        redis_client.zrem(lease_key(t.id), "j2:20")
        assert guard(message(t.id, "j2", "20")) == "redelivered"
        assert guard(message(t.id, "j2", "20", attempt=2)) is None  # attempt 2 is new

    def test_redelivery_whose_holder_stopped_beating_takes_the_live_lease_over(self, redis_client):
        """A killed worker's lease lives on for up to lease_ttl_seconds, but its process stops beating
        within seconds: the redelivery does not wait for the lease to lapse."""
        t = paused_tenant(redis_client, concurrency=5)
        assert guard(message(t.id, "j11", "110")) is None
        assert guard(message(t.id, "j11", "110")) == "busy"  # its holder (this process) beats
        redis_client.delete(f"tq:alive:{limits.process_id()}")  # ... until it dies
        assert redis_client.zscore(lease_key(t.id), "j11:110") is not None  # the lease still lives
        assert guard(message(t.id, "j11", "110")) == "redelivered"

    def test_redelivery_after_the_holder_died_runs_once_its_lease_lapsed(self, redis_client):
        t = paused_tenant(redis_client, concurrency=5)
        assert guard(message(t.id, "j8", "80")) is None
        # The holder died: no heartbeat, so its lease's expiry passes.
        redis_client.zadd(lease_key(t.id), {"j8:80": 1.0})
        assert guard(message(t.id, "j8", "80")) == "redelivered"
        assert redis_client.zscore(lease_key(t.id), "j8:80") > 1.0  # the redelivery holds it now

    def test_no_slot_sends_the_job_back_to_the_head_of_its_queue(self, redis_client):
        t = paused_tenant(redis_client, concurrency=1)
        redis_client.zadd(lease_key(t.id), {"other:1": 9_999_999_999})  # the only slot is taken
        queues = TenantQueues(redis_client)
        queues.enqueue(t.id, "waiting", 5, {"task": "demo.echo", "args": {}, "job": {"id": "waiting"}})
        assert guard(message(t.id, "j3", "30", attempt=3)) == "full"
        assert redis_client.zrange(f"tq:q:{t.id}", 0, -1) == ["j3", "waiting"]
        requeued = json.loads(redis_client.hget("tq:payload", "j3"))
        assert requeued["job"]["attempt"] == 3 and "dispatch" not in requeued["job"]  # attempt 3 again
        assert redis_client.get("tq:started:j3:3") is None  # the re-release may start it

    def test_cap_stamped_by_the_dispatcher_wins_over_the_cache(self, redis_client):
        t = paused_tenant(redis_client, concurrency=5)
        redis_client.zadd(lease_key(t.id), {"other:1": 9_999_999_999})
        assert guard(message(t.id, "j6", "60", cap=1)) == "full"
        assert guard(message(t.id, "j7", "70", cap=2)) is None

    def test_jobs_not_released_by_the_dispatcher_are_not_guarded(self, redis_client):
        t = paused_tenant(redis_client, concurrency=1)
        msg = message(t.id, "j4", "")
        assert limits.start_guard(msg, "t") == "unguarded"
        assert redis_client.zcard(lease_key(t.id)) == 0

    def test_revoked_releases_the_lease(self, redis_client):
        t = paused_tenant(redis_client, concurrency=1)
        msg = message(t.id, "j5", "50")
        guard(msg)
        request = SimpleNamespace(id="t", kwargs={"job": dict(msg.job), "args": {}})
        pipeline.on_revoked(sender=SimpleNamespace(name="demo.echo"), request=request)
        assert redis_client.zcard(lease_key(t.id)) == 0


def rabbitmq_dispatcher(client) -> Dispatcher:
    """A dispatcher configured for TENANTQ_BROKER_URL=amqp://... (its publisher is never called)."""
    import os

    from tenantq.core.settings import reset_settings_cache

    saved = os.environ.get("TENANTQ_BROKER_URL")
    os.environ["TENANTQ_BROKER_URL"] = "amqp://guest:guest@127.0.0.1:5672/unused"
    reset_settings_cache()
    try:
        return Dispatcher(client=client, use_leader_lock=False, publisher=lambda _m, _q: None)
    finally:
        if saved is None:
            os.environ.pop("TENANTQ_BROKER_URL")
        else:
            os.environ["TENANTQ_BROKER_URL"] = saved
        reset_settings_cache()


class TestLostJobs:
    def test_sql_queued_job_missing_from_redis_is_requeued(self, iso_redis):
        tenant = TenantFactory()
        old = utcnow().replace(year=utcnow().year - 1)
        lost = JobFactory(tenant=tenant, status="queued", created_at=old)
        d = Dispatcher(client=iso_redis, use_leader_lock=False, queued_in_sql=queued_before)
        d.lost_grace = 60
        assert d.requeue_lost_sql_jobs(limit=10_000) >= 1
        assert iso_redis.zscore(f"tq:q:{tenant.id}", lost.id) is not None
        # Published recently (waiting in Celery): left alone.
        recent = JobFactory(tenant=tenant, status="queued", created_at=old)
        iso_redis.hset("tq:disp:at", recent.id, 9_999_999_999)
        d.requeue_lost_sql_jobs(limit=10_000)
        assert iso_redis.zscore(f"tq:q:{tenant.id}", recent.id) is None

    def test_a_rerun_of_a_job_cancelled_before_it_started_is_requeued_past_the_cancelled_attempt(
        self, iso_redis
    ):
        """Attempt 1 was cancelled before it started (its cancel marker covers attempt 1), then the job
        was re-run and lost from Redis: the reconciler queues attempt 2, which the marker does not
        cover, and bills it as the job's first run (it never ran)."""
        tenant = TenantFactory()
        old = utcnow().replace(year=utcnow().year - 1)
        rerun = JobFactory(tenant=tenant, status="queued", created_at=old, attempts=0)
        get_redis().set(cancel_key(rerun.id), 1)
        d = Dispatcher(client=iso_redis, use_leader_lock=False, queued_in_sql=queued_before)
        d.lost_grace = 60
        assert d.requeue_lost_sql_jobs(limit=10_000) >= 1
        job = json.loads(iso_redis.hget("tq:payload", rerun.id))["job"]
        assert (job["attempt"], job["first_attempt"], job["first_run"]) == (2, 2, 2)

    def test_a_published_job_is_published_again_after_the_grace_on_redis_the_consumer_timeout_on_rabbitmq(
        self, iso_redis
    ):
        """On Redis a message taken by a worker that died before starting it is invisible until the
        visibility timeout: after the grace the reconciler publishes the job again. RabbitMQ redelivers
        such a message when that worker's connection closes: only one the broker lost is still
        unstarted after the consumer timeout, and only then is the job published again."""
        import time

        from tenantq.core.celery import CONSUMER_TIMEOUT_MS

        tenant = TenantFactory()
        old = utcnow().replace(year=utcnow().year - 1)
        d = Dispatcher(client=iso_redis, use_leader_lock=False, queued_in_sql=queued_before)
        d.lost_grace = 60
        on_rabbitmq = rabbitmq_dispatcher(iso_redis).republish_after
        assert on_rabbitmq == CONSUMER_TIMEOUT_MS / 1000
        cases = [  # (republish after, published seconds ago, published again?)
            (d.lost_grace, 600, True),
            (on_rabbitmq, 600, False),
            (on_rabbitmq, CONSUMER_TIMEOUT_MS / 1000 + 60, True),
        ]
        for republish_after, ago, expected in cases:
            job = JobFactory(tenant=tenant, status="queued", created_at=old)
            iso_redis.hset("tq:disp:at", job.id, time.time() - ago)
            d.republish_after = republish_after
            d.requeue_lost_sql_jobs(limit=10_000)
            again = iso_redis.zscore(f"tq:q:{tenant.id}", job.id) is not None
            assert again is expected, (republish_after, ago)


class TestHeldBackCopy:
    """A copy of a delivery whose first delivery still runs (a broker restored its message after a
    connection loss) must neither run nor be lost: it goes back to its queue for later."""

    def test_busy_copy_is_sent_back_and_leaves_the_first_deliverys_lease(self, redis_client, monkeypatch):
        t = paused_tenant(redis_client, concurrency=5)
        first = message(t.id, "j9", "90")
        assert guard(first) is None
        sent: list[tuple[dict, str]] = []
        monkeypatch.setattr(pipeline, "publish", lambda msg, queue: sent.append((msg, queue)))
        request = SimpleNamespace(
            hostname="w@h", timelimit=(30, 20), id="t9", delivery_info={"routing_key": "tq.exec"}
        )
        task = SimpleNamespace(name="demo.echo", request=request, app=celery_app)
        pipeline.on_prerun(task_id="t9", task=task, kwargs={"job": dict(first.job), "args": {"a": 1}})
        assert request.tq_skip == "busy"
        assert len(sent) == 1
        copy, queue = sent[0]
        assert queue == "tq.exec"
        assert copy["task_id"] == "t9" and copy["job"]["dispatch"] == "90" and copy["args"] == {"a": 1}
        assert copy["options"]["time_limit"] == 30 and copy["options"]["soft_time_limit"] == 20
        assert copy["options"]["countdown"] >= 1.0
        pipeline.on_postrun(task_id="t9", state="IGNORED", retval=NotStarted())
        # The first delivery still holds its slot, and no usage was opened for the copy.
        assert redis_client.zscore(lease_key(t.id), "j9:90") is not None
        assert redis_client.exists("tq:usage:att:j9") == 0

    def test_copy_that_cannot_be_sent_back_is_rejected_to_the_broker(self, redis_client, monkeypatch):
        t = paused_tenant(redis_client, concurrency=5)
        first = message(t.id, "j10", "100")
        assert guard(first) is None

        def broken(msg, queue):
            raise ConnectionError("broker away")

        monkeypatch.setattr(pipeline, "publish", broken)
        request = SimpleNamespace(hostname="w@h", timelimit=(None, None), id="t10", delivery_info={})
        task = SimpleNamespace(name="demo.echo", request=request, app=celery_app)
        pipeline.on_prerun(task_id="t10", task=task, kwargs={"job": dict(first.job), "args": {}})
        assert request.tq_skip == "requeue"
        pipeline.on_postrun(task_id="t10", state="REJECTED", retval=None)
        assert redis_client.zscore(lease_key(t.id), "j10:100") is not None
