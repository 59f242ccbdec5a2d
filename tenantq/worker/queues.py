"""Per-tenant pending queues in Redis.

Layout (all keys under ``tq:``):
- ``tq:q:{tenant}``   ZSET of job ids; score orders by priority (9 first) then arrival sequence.
- ``tq:payload``      HASH job id -> JSON message (task, args, meta) the dispatcher publishes.
- ``tq:delayed``      ZSET of job ids scored by the unix time they become runnable (countdown/eta).
- ``tq:delayed:t``    HASH job id -> tenant id for delayed jobs.
- ``tq:active``       SET of tenants whose queue is non-empty (the dispatcher's work list).
- ``tq:seq``          arrival counter.
- ``tq:paused``       SET of tenants whose queue is paused (suspended tenant or operator pause):
                      their jobs stay queued and the dispatcher skips them until removed.
The SQL ``job`` row is written and committed first; these keys only say what is runnable.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

PRIORITY_SPAN = 10**13  # arrival sequence numbers stay below this


def queue_key(tenant_id: str) -> str:
    return f"tq:q:{tenant_id}"


def score(priority: int, seq: int) -> int:
    return (9 - priority) * PRIORITY_SPAN + seq


_ENQUEUE = """
local seq = redis.call('INCR', 'tq:seq')
local prio = tonumber(ARGV[2])
local score = (9 - prio) * 10000000000000 + seq
redis.call('HSET', 'tq:payload', ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], score, ARGV[1])
redis.call('SADD', 'tq:active', ARGV[4])
return seq
"""

_PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', 'tq:delayed', '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(due) do
  local tenant = redis.call('HGET', 'tq:delayed:t', id)
  local prio = tonumber(redis.call('HGET', 'tq:delayed:p', id) or '5')
  redis.call('ZREM', 'tq:delayed', id)
  redis.call('HDEL', 'tq:delayed:t', id)
  redis.call('HDEL', 'tq:delayed:p', id)
  if tenant then
    local seq = redis.call('INCR', 'tq:seq')
    redis.call('ZADD', 'tq:q:' .. tenant, (9 - prio) * 10000000000000 + seq, id)
    redis.call('SADD', 'tq:active', tenant)
  end
end
return #due
"""

_POP = """
local items = redis.call('ZPOPMIN', KEYS[1], tonumber(ARGV[1]))
local out = {}
for i = 1, #items, 2 do
  local id = items[i]
  local payload = redis.call('HGET', 'tq:payload', id)
  redis.call('HDEL', 'tq:payload', id)
  if payload then
    table.insert(out, payload)
  end
end
if redis.call('ZCARD', KEYS[1]) == 0 then
  redis.call('SREM', 'tq:active', ARGV[2])
end
return out
"""


class TenantQueues:
    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._enqueue = client.register_script(_ENQUEUE)
        self._promote = client.register_script(_PROMOTE)
        self._pop = client.register_script(_POP)

    def enqueue(self, tenant_id: str, job_id: str, priority: int, message: dict[str, Any]) -> None:
        self._enqueue(keys=[queue_key(tenant_id)], args=[job_id, priority, json.dumps(message), tenant_id])

    def schedule(self, tenant_id: str, job_id: str, priority: int, message: dict[str, Any], run_at: float) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.hset("tq:payload", job_id, json.dumps(message))
        pipe.hset("tq:delayed:t", job_id, tenant_id)
        pipe.hset("tq:delayed:p", job_id, priority)
        pipe.zadd("tq:delayed", {job_id: run_at})
        pipe.execute()

    def promote_due(self, now: float | None = None, limit: int = 1000) -> int:
        return int(self._promote(args=[now if now is not None else time.time(), limit]))

    def pop(self, tenant_id: str, count: int = 1) -> list[dict[str, Any]]:
        raw = self._pop(keys=[queue_key(tenant_id)], args=[count, tenant_id])
        return [json.loads(p) for p in raw]

    def active_tenants(self) -> list[str]:
        return sorted(self.r.smembers("tq:active"))

    def depth(self, tenant_id: str) -> int:
        return int(self.r.zcard(queue_key(tenant_id)))

    def remove(self, tenant_id: str, job_id: str) -> bool:
        """Take a pending or delayed job out (cancellation). True if it was still waiting."""
        pipe = self.r.pipeline(transaction=True)
        pipe.zrem(queue_key(tenant_id), job_id)
        pipe.zrem("tq:delayed", job_id)
        pipe.hdel("tq:payload", job_id)
        pipe.hdel("tq:delayed:t", job_id)
        pipe.hdel("tq:delayed:p", job_id)
        removed_q, removed_d, *_ = pipe.execute()
        return bool(removed_q or removed_d)
