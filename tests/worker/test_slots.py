"""Dispatch to free slots: workers publish pool size and busy slots, the dispatcher fills each execution
queue to the free slots behind it plus one, with ``dispatch_depth`` as the ceiling."""

from __future__ import annotations

import json
import time

import pytest

from tenantq.core.keys import SLOTS, SLOTS_BUSY
from tenantq.platform.dispatch import slots
from tenantq.platform.dispatch.dispatcher import SPARE, Dispatcher, exec_queue_depth
from tenantq.platform.dispatch.limits import LimitsCache
from tests.conftest import wait_until
from tests.factories import ApiKeyFactory
from tests.platform.helpers import submit, wait_job


class TestFreeSlots:
    def test_sums_live_workers_per_queue_and_forgets_stale_ones(self, iso_redis):
        now = time.time()
        slots.publish_pool(iso_redis, "w1@h", 4, ["tq.exec", "tq.system"])
        slots.publish_pool(iso_redis, "w2@h", 2, ["tq.exec"])
        iso_redis.hset(SLOTS, "dead@h", json.dumps({"size": 8, "queues": ["tq.exec"], "at": now - 3600}))
        iso_redis.hset(SLOTS_BUSY, "dead@h", 0)
        for _ in range(3):
            slots.add_busy(iso_redis, "w1@h", 1)
        slots.add_busy(iso_redis, "w2@h", 1)
        assert slots.free_slots(iso_redis) == {"tq.exec": 1 + 1, "tq.system": 1}
        assert not iso_redis.hexists(SLOTS, "dead@h") and not iso_redis.hexists(SLOTS_BUSY, "dead@h")

    def test_a_drifted_count_is_clamped_and_an_idle_reset_heals_it(self, iso_redis):
        slots.publish_pool(iso_redis, "w1@h", 2, ["tq.exec"])
        iso_redis.hset(SLOTS_BUSY, "w1@h", -3)  # ends counted for attempts whose start was never
        assert slots.free_slots(iso_redis) == {"tq.exec": 2}
        iso_redis.hset(SLOTS_BUSY, "w1@h", 9)
        assert slots.free_slots(iso_redis) == {"tq.exec": 0}
        slots.reset_busy(iso_redis, "w1@h")
        assert slots.free_slots(iso_redis) == {"tq.exec": 2}
        slots.forget(iso_redis, "w1@h")
        assert slots.free_slots(iso_redis) == {}


class TestDispatcherRoom:
    def make(self, client, depth):
        # The depth read from a Redis list on either broker: these tests are about the room it leaves.
        return Dispatcher(
            client=client,
            queue="tq.exec",
            depth=depth,
            publisher=lambda m, q: None,
            limits=LimitsCache(),
            queue_depth=client.llen,
        )

    def test_fills_to_free_slots_plus_spare_under_the_ceiling(self, iso_redis):
        slots.publish_pool(iso_redis, "w1@h", 4, ["tq.exec"])
        iso_redis.hset(SLOTS_BUSY, "w1@h", 1)
        d = self.make(iso_redis, depth=32)
        d._free = None
        assert d._room("tq.exec") == 3 + SPARE
        iso_redis.rpush("tq.exec", "m1", "m2")  # two already waiting
        d._free = None
        assert d._room("tq.exec") == 3 + SPARE - 2
        low = self.make(iso_redis, depth=2)  # the ceiling
        low._free = None
        assert low._room("tq.exec") == 0

    def test_all_slots_busy_keeps_only_the_spare(self, iso_redis):
        slots.publish_pool(iso_redis, "w1@h", 2, ["tq.exec"])
        iso_redis.hset(SLOTS_BUSY, "w1@h", 2)
        d = self.make(iso_redis, depth=32)
        d._free = None
        assert d._room("tq.exec") == SPARE

    def test_without_published_slots_the_adaptive_depth_applies(self, iso_redis):
        d = self.make(iso_redis, depth=32)
        d._free = None
        assert d._room("tq.exec") == 4  # the adaptive depth's start: min(depth, 4)


@pytest.mark.e2e
def test_a_real_worker_publishes_its_pool_and_busy_slots(api, redis_client, platform_processes):
    def own_entry():
        for host, raw in redis_client.hgetall(SLOTS).items():
            pool = json.loads(raw)
            if "tq.exec" in pool["queues"]:
                return host, pool
        return None

    host, pool = wait_until(own_entry, timeout=60, message="the worker's slots")
    assert pool["size"] == 2 and "tq.system" in pool["queues"]
    key = ApiKeyFactory()
    job = submit(api, key, {"task": "demo.sleep", "args": {"seconds": 3}})
    wait_job(api, key, job["id"], statuses=("running",))
    assert int(redis_client.hget(SLOTS_BUSY, host) or 0) >= 1
    assert slots.free_slots(redis_client)["tq.exec"] <= 1
    assert wait_job(api, key, job["id"])["status"] == "succeeded"
    wait_until(lambda: int(redis_client.hget(SLOTS_BUSY, host) or 0) == 0, timeout=60, message="slot freed")
    assert exec_queue_depth(redis_client, "tq.exec") <= SPARE + 2
