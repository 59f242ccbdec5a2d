"""The worker's start guard and lease release, driven in-process with a stand-in task object.

The tenants are paused so the session's dispatcher leaves their queues alone.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

from tenantq.core.db import utcnow
from tenantq.core.keys import lease_key, wait_key
from tenantq.platform.dispatch import limits
from tenantq.platform.dispatch.dispatcher import Dispatcher
from tenantq.platform.dispatch.repository import TenantQueues
from tenantq.platform.jobs.messages import JobMessage
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
        # The same message redelivered (its process died): the pipeline records attempt 1 as lost
        # and queues attempt 2 (tests/billing/test_quota_holes.py, TestLostAttempts).
        assert guard(message(t.id, "j2", "20")) == "redelivered"
        assert guard(message(t.id, "j2", "20", attempt=2)) is None  # attempt 2 is new

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
