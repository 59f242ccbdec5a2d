"""The dispatcher's decisions, counted from the dispatcher itself (no timing involved).

Each test runs a Dispatcher in-process against a private Redis with a recording publisher, so the
release order is exactly what the scheduler decided.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from tenantq.platform.dispatch.dispatcher import LEADER_KEY, Dispatcher
from tenantq.platform.dispatch.limits import LimitsCache
from tenantq.platform.dispatch.repository import INFLIGHT, TenantQueues, lease_key
from tests.factories import TenantFactory

# Limits too high to bind (0 is not a valid limit: see LimitOverrides).
UNLIMITED = {"exec_rate": 1_000_000, "concurrency": 100_000, "max_queued": 1_000_000_000}


def tenant(**overrides):
    return TenantFactory(overrides={**UNLIMITED, **overrides})


def fill(client, tenant_id, n, priority=5, task="demo.echo"):
    queues = TenantQueues(client)
    ids = []
    for i in range(n):
        job_id = f"{tenant_id}-{priority}-{i}-{time.monotonic_ns()}"
        queues.enqueue(
            tenant_id,
            job_id,
            priority,
            {
                "task": task,
                "args": {"i": i},
                "task_id": job_id,
                "job": {
                    "id": job_id,
                    "tenant_id": tenant_id,
                    "priority": priority,
                    "max_retries": 0,
                    "attempt": 1,
                },
            },
        )
        ids.append(job_id)
    return ids


class Recorder:
    def __init__(self):
        self.messages = []

    def __call__(self, message, queue):
        self.messages.append((queue, message))


def nothing_waiting(_queue: str) -> int:
    """No worker consumes what a Recorder records: as far as the dispatcher knows, nothing waits."""
    return 0


def make(client, depth=10_000, **kwargs):
    rec = Recorder()
    d = Dispatcher(
        client=client,
        depth=depth,
        publisher=rec,
        limits=LimitsCache(ttl=0.2),
        queue_depth=nothing_waiting,
        **kwargs,
    )
    d.decisions = []
    return d, rec


def run_until(d, n, timeout=20.0):
    deadline = time.monotonic() + timeout
    while len(d.decisions) < n and time.monotonic() < deadline:
        if d.tick() == 0:
            time.sleep(0.002)
    return d.decisions[:n]


class TestFairShare:
    def test_equal_weights_alternate(self, iso_redis):
        a, b, c = sorted((tenant(weight=1), tenant(weight=1), tenant(weight=1)), key=lambda t: t.id)
        fill(iso_redis, a.id, 6)
        fill(iso_redis, b.id, 6)
        fill(iso_redis, c.id, 6)
        d, _ = make(iso_redis, use_leader_lock=False)
        order = run_until(d, 18)
        assert order == [a.id, b.id, c.id] * 6

    def test_light_tenant_is_not_stuck_behind_a_flood(self, iso_redis):
        heavy, light = tenant(weight=1), tenant(weight=1)
        fill(iso_redis, heavy.id, 300)
        d, _ = make(iso_redis, depth=1, use_leader_lock=False)  # one release per tick, like a busy cluster
        run_until(d, 50)
        fill(iso_redis, light.id, 3)
        order = run_until(d, 56)[50:]
        assert order.count(light.id) == 3  # its 3 jobs leave within the next 6 releases

    def test_weights_5_3_2(self, iso_redis):
        ts = [tenant(weight=5), tenant(weight=3), tenant(weight=2)]
        for t in ts:
            fill(iso_redis, t.id, 120)
        d, _ = make(iso_redis, use_leader_lock=False)
        counts = Counter(run_until(d, 200))
        assert [counts[t.id] for t in ts] == pytest.approx([100, 60, 40], abs=1)

    def test_returning_tenant_gets_no_hoarded_credit(self, iso_redis):
        busy, sleeper = tenant(weight=1), tenant(weight=1)
        fill(iso_redis, busy.id, 200)
        d, _ = make(iso_redis, depth=1, use_leader_lock=False)
        run_until(d, 100)
        fill(iso_redis, sleeper.id, 50)
        window = Counter(run_until(d, 140)[100:])
        # After 100 releases of `busy`, the newcomer gets a fair half, not 100 releases in a row.
        assert window[busy.id] == pytest.approx(20, abs=1) and window[sleeper.id] == pytest.approx(20, abs=1)


class TestPriority:
    def test_urgent_job_leaves_first_then_arrival_order(self, iso_redis):
        t = tenant()
        low = fill(iso_redis, t.id, 20, priority=1)
        urgent = fill(iso_redis, t.id, 1, priority=9)
        mid = fill(iso_redis, t.id, 2, priority=5)
        d, rec = make(iso_redis, use_leader_lock=False)
        run_until(d, 23)
        released = [m["job"]["id"] for _, m in rec.messages]
        assert released == urgent + mid + low


class TestLimits:
    def test_concurrency_cap_and_release(self, iso_redis):
        t = tenant(concurrency=2)
        fill(iso_redis, t.id, 5)
        d, rec = make(iso_redis, use_leader_lock=False)
        for _ in range(5):
            d.tick()
        assert len(rec.messages) == 2
        assert rec.messages[0][1]["job"]["cap"] == 2  # stamped for the worker's start guard
        assert iso_redis.zcard(lease_key(t.id)) == 2
        first = rec.messages[0][1]["job"]
        iso_redis.zrem(lease_key(t.id), f"{first['id']}:{first['dispatch']}")  # what task_postrun does
        d.blocked_until.clear()
        d.tick()
        assert len(rec.messages) == 3

    def test_expired_lease_is_reclaimed(self, iso_redis, monkeypatch):
        t = tenant(concurrency=1)
        fill(iso_redis, t.id, 2)
        d, rec = make(iso_redis, use_leader_lock=False)
        d.lease_ttl = 0.5  # nobody heartbeats it: a crashed worker
        d.tick()
        assert len(rec.messages) == 1
        time.sleep(0.7)
        d.blocked_until.clear()
        d.tick()
        assert len(rec.messages) == 2

    def test_rate_is_cluster_wide(self, iso_redis):
        """Two dispatchers (no leader lock) share one bucket: 10/s, burst 2, never more than 10*T + 2."""
        t = tenant(exec_rate=10, exec_burst=2)
        fill(iso_redis, t.id, 200)
        d1, rec1 = make(iso_redis, use_leader_lock=False)
        d2, rec2 = make(iso_redis, use_leader_lock=False)
        times = []
        start = time.monotonic()
        while time.monotonic() - start < 2.0:
            for d in (d1, d2):
                before = len(d.decisions)
                d.blocked_until.clear()
                d.tick()
                times.extend([time.monotonic()] * (len(d.decisions) - before))
        assert rec1.messages and rec2.messages  # both released some: the bucket is shared, not per process
        for i, t0 in enumerate(times):
            in_window = sum(1 for x in times[i:] if x - t0 <= 1.0)
            assert in_window <= 10 * 1 + 2
        assert len(times) <= 10 * 2.0 + 2 + 1
        assert len(times) >= 10 * 2.0 * 0.8  # and the rate is actually reached

    def test_paused_tenant_gets_no_turns(self, iso_redis):
        paused, other = tenant(), tenant()
        fill(iso_redis, paused.id, 3)
        fill(iso_redis, other.id, 3)
        TenantQueues(iso_redis).pause(paused.id, "operator_pause")
        d, _ = make(iso_redis, use_leader_lock=False)
        for _ in range(5):
            d.tick()
        assert set(d.decisions) == {other.id}
        TenantQueues(iso_redis).resume(paused.id)
        d.tick()
        assert Counter(d.decisions)[paused.id] == 3

    def test_new_tenant_served_on_next_tick(self, iso_redis):
        old = tenant()
        fill(iso_redis, old.id, 1)
        d, _ = make(iso_redis, use_leader_lock=False)
        d.tick()
        new = tenant()  # created after the dispatcher warmed its cache: a cache miss loads it
        fill(iso_redis, new.id, 2)
        d.tick()
        assert d.decisions == [old.id, new.id, new.id]


class TestCrashSafety:
    def test_failed_publish_is_requeued_at_the_front(self, iso_redis):
        t = tenant()
        ids = fill(iso_redis, t.id, 3)
        calls = []

        def broken(message, queue):
            calls.append(message["job"]["id"])
            raise ConnectionError("broker down")

        d = Dispatcher(
            client=iso_redis,
            depth=10,
            publisher=broken,
            limits=LimitsCache(ttl=0.2),
            use_leader_lock=False,
            queue_depth=nothing_waiting,
        )
        d.inflight_deadline = 0.3
        with pytest.raises(ConnectionError):
            d.tick()
        assert calls == [ids[0]]
        assert iso_redis.zscore(INFLIGHT, ids[0]) is not None  # popped, not lost
        assert iso_redis.zcard(lease_key(t.id)) == 1
        time.sleep(0.5)
        assert TenantQueues(iso_redis).reclaim_inflight() == 1
        assert iso_redis.zcard(lease_key(t.id)) == 0  # its lease went with it
        d2, rec = make(iso_redis, use_leader_lock=False)
        run_until(d2, 3)
        assert [m["job"]["id"] for _, m in rec.messages] == ids
        assert iso_redis.zcard(INFLIGHT) == 0

    def test_tokens_are_unique_per_release(self, iso_redis):
        t = tenant()
        fill(iso_redis, t.id, 5)
        d, rec = make(iso_redis, use_leader_lock=False)
        run_until(d, 5)
        tokens = [m["job"]["dispatch"] for _, m in rec.messages]
        assert len(set(tokens)) == 5


class TestLeadership:
    def test_only_the_leader_releases_and_a_standby_takes_over(self, iso_redis):
        t = tenant()
        fill(iso_redis, t.id, 4)
        leader, rec1 = make(iso_redis, depth=1)
        standby, rec2 = make(iso_redis, depth=1)
        leader.leader_ttl = standby.leader_ttl = 0.5
        assert leader.tick() == 1
        assert standby.tick() == 0 and not standby.is_leader
        assert iso_redis.get(LEADER_KEY) == leader.instance_id
        # The leader dies (stops renewing); its lock expires and the standby takes over.
        time.sleep(0.7)
        standby.depth = 10
        assert standby.tick() == 3
        assert len(rec1.messages) == 1 and len(rec2.messages) == 3

    def test_fenced_ex_leader_cannot_release(self, iso_redis):
        t = tenant()
        fill(iso_redis, t.id, 2)
        old, rec = make(iso_redis)
        assert old.ensure_leader()
        iso_redis.set(LEADER_KEY, "someone-else")  # lock lost while `old` still believes it leads
        old.tick()
        assert rec.messages == [] and not old.is_leader
        assert TenantQueues(iso_redis).depth(t.id) == 2
