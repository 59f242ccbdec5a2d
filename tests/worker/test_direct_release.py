"""Direct release (``platform.dispatch.direct``): on an idle system the submitter releases a new job
itself; whenever a decision is left to make it enqueues the job for the dispatcher as before.

The Lua call is tested against a Redis of its own (``iso_redis``), every condition on its own; the
end-to-end test runs a real worker with no dispatcher at all, so a job that runs proves the direct path
and a job that stays queued proves the fallback.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import redis as redis_lib

from tenantq.core.celery import PRIORITY_LEVELS
from tenantq.core.keys import (
    ACTIVE,
    INFLIGHT,
    OUTBOX,
    OUTBOX_TENANT,
    PAYLOAD,
    ROUTES,
    SLOTS,
    SLOTS_BUSY,
    WAKE,
)
from tenantq.platform.dispatch import direct
from tenantq.platform.dispatch.limits import TenantLimits
from tenantq.platform.dispatch.repository import TenantQueues, lease_key, queue_key
from tests.conftest import ROOT, ProcessGroup, start_worker, wait_until

EXEC = "tq.exec"


def declare_pool(client, host="w1", size=2, busy=0, queues=(EXEC,), at=None):
    client.hset(SLOTS, host, json.dumps({"size": size, "queues": list(queues), "at": at or time.time()}))
    client.hset(SLOTS_BUSY, host, busy)


def message(tenant_id, job_id, priority=5):
    return {
        "task": "demo.echo",
        "args": {},
        "task_id": job_id,
        "job": {"id": job_id, "tenant_id": tenant_id, "priority": priority, "attempt": 1, "max_retries": 0},
    }


def submit(client, tenant_id, job_id, *, cap=0, rate=0.0, burst=0.0, compute_key="", compute_limit_ms=0):
    """The enqueue step of a submission, as ``direct.enqueue_or_release`` calls it."""
    client.zadd(OUTBOX, {job_id: time.time()})
    client.hset(OUTBOX_TENANT, job_id, tenant_id)
    return TenantQueues(client).enqueue_or_release(
        tenant_id,
        job_id,
        5,
        message(tenant_id, job_id),
        cap=cap,
        rate=rate,
        burst=burst,
        lease_ttl=30,
        inflight_deadline=30,
        compute_key=compute_key,
        compute_limit_ms=compute_limit_ms,
        default_queue=EXEC,
        priority_levels=PRIORITY_LEVELS,
        stale_after=20,
    )


def enqueued(client, tenant_id, job_id) -> bool:
    return client.zscore(queue_key(tenant_id), job_id) is not None and client.sismember(ACTIVE, tenant_id)


class TestReleasedAtOnce:
    def test_an_idle_system_with_a_free_slot_releases_the_job_in_the_same_call(self, iso_redis):
        declare_pool(iso_redis, size=2, busy=1)
        released = submit(iso_redis, "t1", "j1", cap=5)
        assert released is not None
        item, queue = released
        assert (item.job_id, queue) == ("j1", EXEC)
        assert item.message["job"]["id"] == "j1" and item.message["enqueued_at"] > 0
        # Recorded in flight exactly like the dispatcher's release, and never queued.
        assert iso_redis.zscore(INFLIGHT, "j1") is not None
        assert iso_redis.zscore(lease_key("t1"), f"j1:{item.token}") is not None
        assert iso_redis.hget(PAYLOAD, "j1") is not None
        assert not enqueued(iso_redis, "t1", "j1") and iso_redis.scard(ACTIVE) == 0
        # The outbox note goes in the same call; the dispatcher is not woken for it.
        assert iso_redis.zscore(OUTBOX, "j1") is None and iso_redis.hget(OUTBOX_TENANT, "j1") is None
        assert iso_redis.llen(WAKE) == 0

    def test_a_tenant_routed_to_a_dedicated_pool_is_released_to_that_pool(self, iso_redis):
        declare_pool(iso_redis, host="shared", size=2, queues=(EXEC,))
        declare_pool(iso_redis, host="dedicated", size=1, queues=("tq.pool.big",))
        iso_redis.hset(ROUTES, "t1", "tq.pool.big")
        released = submit(iso_redis, "t1", "j1")
        assert released is not None and released[1] == "tq.pool.big"

    def test_only_paused_tenants_waiting_leaves_the_system_idle(self, iso_redis):
        declare_pool(iso_redis)
        TenantQueues(iso_redis).pause("t2", "operator_pause")
        submit(iso_redis, "t2", "held")  # t2 is paused: queued, but nothing could take it anyway
        assert enqueued(iso_redis, "t2", "held")
        assert submit(iso_redis, "t1", "j1") is not None

    def test_the_ack_after_the_publish_forgets_the_in_flight_record(self, iso_redis):
        declare_pool(iso_redis)
        item, _queue = submit(iso_redis, "t1", "j1")
        TenantQueues(iso_redis).ack([item])
        assert iso_redis.zscore(INFLIGHT, "j1") is None and iso_redis.hget(PAYLOAD, "j1") is None


class TestLeftToTheDispatcher:
    """Every case where a decision is left to make: the job is enqueued exactly as before."""

    def assert_enqueued(self, client, tenant_id, job_id, released):
        assert released is None
        assert enqueued(client, tenant_id, job_id)
        assert client.zscore(INFLIGHT, job_id) is None
        assert client.llen(WAKE) == 1  # the dispatcher is woken for it
        assert client.zscore(OUTBOX, job_id) is None  # the note is taken away on this path too

    def test_another_tenant_has_a_job_waiting(self, iso_redis):
        declare_pool(iso_redis, size=8)
        submit(iso_redis, "t2", "first", cap=1)
        iso_redis.zadd(lease_key("t2"), {"other:1": time.time() + 60})  # t2 at its cap: it waits
        submit(iso_redis, "t2", "waiting", cap=1)
        assert enqueued(iso_redis, "t2", "waiting")
        self.assert_enqueued(iso_redis, "t1", "j1", submit(iso_redis, "t1", "j1"))

    def test_its_own_tenant_is_paused(self, iso_redis):
        declare_pool(iso_redis)
        TenantQueues(iso_redis).pause("t1", "suspended")
        self.assert_enqueued(iso_redis, "t1", "j1", submit(iso_redis, "t1", "j1"))

    def test_its_tenant_is_at_its_concurrency_cap(self, iso_redis):
        declare_pool(iso_redis, size=8)
        iso_redis.zadd(lease_key("t1"), {"running:1": time.time() + 60})
        self.assert_enqueued(iso_redis, "t1", "j1", submit(iso_redis, "t1", "j1", cap=1))

    def test_its_tenant_has_no_execution_token_left(self, iso_redis):
        declare_pool(iso_redis, size=8)
        iso_redis.hset("tq:rl:t1", mapping={"tokens": "0", "ts": str(time.time())})
        self.assert_enqueued(iso_redis, "t1", "j1", submit(iso_redis, "t1", "j1", rate=0.1, burst=1))

    def test_its_tenant_used_up_its_hard_compute_quota(self, iso_redis):
        declare_pool(iso_redis)
        iso_redis.set("cpu-counter", 5000)
        released = submit(iso_redis, "t1", "j1", compute_key="cpu-counter", compute_limit_ms=5000)
        self.assert_enqueued(iso_redis, "t1", "j1", released)

    def test_no_worker_declared_its_slots(self, iso_redis):
        self.assert_enqueued(iso_redis, "t1", "j1", submit(iso_redis, "t1", "j1"))

    def test_the_only_worker_stopped_beating(self, iso_redis):
        declare_pool(iso_redis, at=time.time() - 60)
        self.assert_enqueued(iso_redis, "t1", "j1", submit(iso_redis, "t1", "j1"))

    def test_every_slot_is_busy(self, iso_redis):
        declare_pool(iso_redis, size=2, busy=2)
        self.assert_enqueued(iso_redis, "t1", "j1", submit(iso_redis, "t1", "j1"))

    def test_the_free_slots_already_have_a_message_waiting_each(self, iso_redis):
        declare_pool(iso_redis, size=2, busy=0)
        iso_redis.lpush(EXEC, "m1")
        iso_redis.lpush(f"{EXEC}:3", "m2")  # a priority list of the same queue counts too
        self.assert_enqueued(iso_redis, "t1", "j1", submit(iso_redis, "t1", "j1"))

    def test_a_free_slot_beyond_the_waiting_messages_is_used(self, iso_redis):
        declare_pool(iso_redis, size=3, busy=0)
        iso_redis.lpush(EXEC, "m1")
        iso_redis.lpush(f"{EXEC}:3", "m2")
        assert submit(iso_redis, "t1", "j1") is not None


class TestPublishFailure:
    @pytest.fixture
    def limits(self):
        return TenantLimits(tenant_id="t1", weight=1, exec_rate=0, exec_burst=0, concurrency=0, max_queued=0)

    def test_a_failed_publish_puts_the_job_back_in_its_tenant_queue_at_once(
        self, iso_redis, monkeypatch, limits
    ):
        declare_pool(iso_redis)

        def broken(_message, _queue):
            raise redis_lib.ConnectionError("broker went away")

        monkeypatch.setattr(direct, "publish", broken)
        queues = TenantQueues(iso_redis)
        assert direct.enqueue_or_release(queues, limits, "j1", 5, message("t1", "j1")) is False
        assert enqueued(iso_redis, "t1", "j1")
        assert iso_redis.zscore(INFLIGHT, "j1") is None and iso_redis.zcard(lease_key("t1")) == 0
        assert iso_redis.llen(WAKE) == 1  # the dispatcher takes it from here
        assert iso_redis.hget(PAYLOAD, "j1") is not None

    def test_a_release_left_in_flight_is_put_back_by_the_reconciler(self, iso_redis):
        """The submitter died between its Lua call and the publish: nothing but the entry is left."""
        declare_pool(iso_redis)
        assert submit(iso_redis, "t1", "j1") is not None
        queues = TenantQueues(iso_redis)
        assert queues.reclaim_inflight() == 0  # its deadline has not passed
        iso_redis.zadd(INFLIGHT, {"j1": time.time() - 1})
        assert queues.reclaim_inflight() == 1
        assert enqueued(iso_redis, "t1", "j1") and iso_redis.zcard(lease_key("t1")) == 0

    def test_a_failed_acknowledgement_still_counts_as_published(self, iso_redis, monkeypatch, limits):
        declare_pool(iso_redis)
        sent = []
        monkeypatch.setattr(direct, "publish", lambda message, queue: sent.append((queue, message)))

        def ack_fails(self, released):
            raise redis_lib.ConnectionError("redis went away")

        monkeypatch.setattr(TenantQueues, "ack", ack_fails)
        assert (
            direct.enqueue_or_release(TenantQueues(iso_redis), limits, "j1", 5, message("t1", "j1")) is True
        )
        ((queue, sent_message),) = sent
        assert queue == EXEC and sent_message["job"]["dispatch"] and sent_message["job"]["cap"] == 0


SUBMIT = """
import sys
import tenantq.worker  # noqa: F401 - task types and assembly, like every entry point
from tenantq.core.db import unscoped_session
from tenantq.platform.jobs.schemas import JobCreate
from tenantq.platform.jobs.service import submit_job
from tenantq.tenants.accounts.models import Tenant

with unscoped_session() as session:
    job = submit_job(session, session.get(Tenant, sys.argv[1]), JobCreate(task="demo.echo")).job
    print(job.id)
"""


def test_a_job_submitted_to_an_idle_stack_runs_without_any_dispatcher(
    db_session, platform_env, redis_server, tmp_path
):
    """A worker on a Redis database of its own and no dispatcher: a job submitted while the system is
    idle runs (only the direct release can have published it); a job submitted while another tenant
    has one waiting stays queued (nobody decides for it)."""
    from tenantq.core.db import unscoped_session
    from tenantq.platform.jobs.models import Job
    from tests.factories import TenantFactory

    if not direct.available():
        pytest.skip(
            "the execution queues are on a broker of their own (TENANTQ_BROKER_URL): no direct release"
        )
    private = redis_server.url.rsplit("/", 1)[0] + "/9"
    client = redis_lib.Redis.from_url(private, decode_responses=True)
    client.flushdb()
    env = {"TENANTQ_REDIS_URL": private}
    group = ProcessGroup({**platform_env, **env}, tmp_path)
    start_worker(group, "direct", concurrency=2, queues=EXEC)
    try:
        wait_until(lambda: client.hlen(SLOTS) == 1, 60, message="the worker's slots")
        idle, busy = TenantFactory(), TenantFactory()

        def submit_in_subprocess(tenant_id: str) -> str:
            out = subprocess.run(
                [sys.executable, "-c", SUBMIT, tenant_id],
                env=group.env | env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            return out.stdout.strip().splitlines()[-1]

        def status(job_id: str) -> str:
            with unscoped_session() as s:
                return s.get(Job, job_id).status

        job_id = submit_in_subprocess(idle.id)
        wait_until(lambda: status(job_id) == "succeeded", 60, message="the directly released job")

        # Another tenant's job waits, so the system is not idle: the next job is left to a dispatcher,
        # and there is none.
        TenantQueues(client).enqueue(busy.id, "someone-else", 5, message(busy.id, "someone-else"))
        waiting = submit_in_subprocess(idle.id)
        time.sleep(1.0)
        assert status(waiting) == "queued"
        assert client.zscore(queue_key(idle.id), waiting) is not None
    finally:
        group.stop_all()
        client.flushdb()
        client.close()
