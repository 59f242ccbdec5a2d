"""Per-tenant pending queues in Redis, and the atomic, crash-safe step that releases one job.

Layout (all keys under ``tq:``):
- ``tq:q:{tenant}``   ZSET of job ids; score orders by priority (9 first) then arrival sequence.
- ``tq:payload``      HASH job id -> JSON message (task, args, meta) the dispatcher publishes.
- ``tq:delayed``      ZSET of job ids scored by the unix time they become runnable (countdown/eta).
- ``tq:delayed:t``    HASH job id -> tenant id for delayed jobs.
- ``tq:delayed:p``    HASH job id -> priority for delayed jobs.
- ``tq:active``       SET of tenants whose queue is non-empty (the dispatcher's work list).
- ``tq:seq``          arrival counter.
- ``tq:paused``       SET of tenants whose queue is paused (suspended tenant or operator pause):
                      their jobs stay queued and the dispatcher skips them until removed.
                      ``tq:paused:why`` HASH tenant -> reason (``operator_pause``, ``suspended``...).
- ``tq:inflight``     ZSET job id -> deadline (unix s): popped by the dispatcher, publish not yet
                      acknowledged. ``tq:inflight:m`` HASH job id -> ``{tenant}|{dispatch token}``.
                      The payload stays in ``tq:payload`` until the ack, so a dispatcher that dies
                      between pop and publish loses nothing: the reconciler puts the job back.
- ``tq:dtok``         dispatch token counter: every release of a job gets a fresh token, carried in
                      the message (``job["dispatch"]``); the worker's start guard uses it to tell a
                      redelivery of the same message (runs) from a duplicate publish (skipped).
- ``tq:disp:at``      HASH job id -> unix time of its last publish, removed when the attempt starts:
                      lets the reconciler tell "waiting in Celery" from "lost".
- ``tq:rl:{tenant}``  HASH token bucket (``tokens``, ``ts``) for the tenant's execution rate.
- ``tq:cc:{tenant}``  ZSET of concurrency leases ``{job}:{token}`` -> expiry (unix s). Taken at
                      release, refreshed by the worker while the attempt runs, removed when it ends;
                      an expired lease (crashed worker) no longer counts.
The SQL ``job`` row is written and committed first; these keys only say what is runnable. Enqueueing
a job (``enqueue``, ``enqueue_many``, ``schedule``) also takes its note out of the submission outbox
(``tq:outbox``, ``tq:outbox:t``; ``tenantq.platform.jobs.outbox``) in the same call: an enqueued job no
longer waits for its enqueue, and the creator needs no round trip of its own to say so. Keys are
not hash-tagged: tenantq targets a single Redis (or Sentinel), not Redis Cluster.
"""

from __future__ import annotations

import json
import time
from typing import Any, cast

import redis

from tenantq.core import keys
from tenantq.core.keys import (
    DISPATCHED_AT,  # noqa: F401 - re-exported (the dispatcher and the jobs layer read it)
    INFLIGHT,
    PAUSED,
    PAUSED_WHY,
    WAKE,
    lease_key,
    queue_key,
)
from tenantq.platform.dispatch.models import Released

PRIORITY_SPAN = 10**13  # arrival sequence numbers stay below this


def score(priority: int, seq: int) -> int:
    return (9 - priority) * PRIORITY_SPAN + seq


_ENQUEUE = keys.lua("""
local seq = redis.call('INCR', '${SEQ}')
local prio = tonumber(ARGV[2])
local score = (9 - prio) * 10000000000000 + seq
redis.call('HSET', '${PAYLOAD}', ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], score, ARGV[1])
redis.call('ZREM', '${OUTBOX}', ARGV[1])
redis.call('HDEL', '${OUTBOX_TENANT}', ARGV[1])
redis.call('SADD', '${ACTIVE}', ARGV[4])
redis.call('LPUSH', '${WAKE}', '1')
redis.call('LTRIM', '${WAKE}', 0, 0)
return seq
""")

# ARGV: tenant, then (job id, priority, payload) triples. One round trip for a whole batch.
_ENQUEUE_MANY = keys.lua("""
local tenant = ARGV[1]
local key = '${QUEUE_PREFIX}' .. tenant
local n = 0
for i = 2, #ARGV, 3 do
  local seq = redis.call('INCR', '${SEQ}')
  local prio = tonumber(ARGV[i + 1])
  redis.call('HSET', '${PAYLOAD}', ARGV[i], ARGV[i + 2])
  redis.call('ZADD', key, (9 - prio) * 10000000000000 + seq, ARGV[i])
  redis.call('ZREM', '${OUTBOX}', ARGV[i])
  redis.call('HDEL', '${OUTBOX_TENANT}', ARGV[i])
  n = n + 1
end
if n > 0 then
  redis.call('SADD', '${ACTIVE}', tenant)
  redis.call('LPUSH', '${WAKE}', '1')
  redis.call('LTRIM', '${WAKE}', 0, 0)
end
return n
""")

_PROMOTE = keys.lua("""
local due = redis.call('ZRANGEBYSCORE', '${DELAYED}', '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(due) do
  local tenant = redis.call('HGET', '${DELAYED_TENANT}', id)
  local prio = tonumber(redis.call('HGET', '${DELAYED_PRIORITY}', id) or '5')
  redis.call('ZREM', '${DELAYED}', id)
  redis.call('HDEL', '${DELAYED_TENANT}', id)
  redis.call('HDEL', '${DELAYED_PRIORITY}', id)
  if tenant then
    local seq = redis.call('INCR', '${SEQ}')
    redis.call('ZADD', '${QUEUE_PREFIX}' .. tenant, (9 - prio) * 10000000000000 + seq, id)
    redis.call('SADD', '${ACTIVE}', tenant)
  end
end
return #due
""")

_POP = keys.lua("""
local items = redis.call('ZPOPMIN', KEYS[1], tonumber(ARGV[1]))
local out = {}
for i = 1, #items, 2 do
  local id = items[i]
  local payload = redis.call('HGET', '${PAYLOAD}', id)
  redis.call('HDEL', '${PAYLOAD}', id)
  if payload then
    table.insert(out, payload)
  end
end
if redis.call('ZCARD', KEYS[1]) == 0 then
  redis.call('SREM', '${ACTIVE}', ARGV[2])
end
return out
""")

# Lua functions shared by the dispatcher's release and the submitter's direct release (below): what
# may forbid releasing a tenant's job, and the release itself. The checks return a code (the outcome
# codes of ``models``) or nil; ``limited`` takes a rate token when it lets the job go.
_RELEASE_FUNCTIONS = keys.lua("""
local function held(tenant, compute_key, compute_limit)
  if redis.call('SISMEMBER', '${PAUSED}', tenant) == 1 then return {-4} end
  if compute_key ~= '' and tonumber(redis.call('GET', compute_key) or '0') >= compute_limit then
    return {-6}
  end
  return nil
end
local function limited(tenant, cap, rate, burst, now)
  local cc = '${LEASE_PREFIX}' .. tenant
  redis.call('ZREMRANGEBYSCORE', cc, '-inf', now)
  if cap > 0 and redis.call('ZCARD', cc) >= cap then return {-2} end
  if rate > 0 then
    local rl = '${BUCKET_PREFIX}' .. tenant
    local b = redis.call('HMGET', rl, 'tokens', 'ts')
    local tokens = tonumber(b[1]) or burst
    local ts = tonumber(b[2]) or now
    tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
    if tokens < 1 then
      redis.call('HSET', rl, 'tokens', tostring(tokens), 'ts', tostring(now))
      return {-5, math.ceil((1 - tokens) / rate * 1000)}
    end
    redis.call('HSET', rl, 'tokens', tostring(tokens - 1), 'ts', tostring(now))
    redis.call('EXPIRE', rl, math.ceil(burst / rate) + 60)
  end
  return nil
end
local function take(id, tenant, now, lease_ttl, deadline)
  local token = tostring(redis.call('INCR', '${DISPATCH_TOKEN}'))
  redis.call('ZADD', '${LEASE_PREFIX}' .. tenant, now + lease_ttl, id .. ':' .. token)
  redis.call('ZADD', '${INFLIGHT}', now + deadline, id)
  redis.call('HSET', '${INFLIGHT_META}', id, tenant .. '|' .. token)
  return token
end
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
""")

# Release one job of one tenant, atomically checking everything that may forbid it.
# ARGV: tenant, concurrency cap (0 = none), rate jobs/s (0 = none), burst, lease ttl s,
#       inflight deadline s, leader key, leader id ('' = no fencing), compute key ('' = none), compute limit.
# Returns {code, ...}: 1 released {1, id, token, payload}; -1 empty; -2 at concurrency cap;
#         -3 not the leader; -4 paused; -5 rate limited {-5, ms until a token}; -6 held; 0 stale entry.
_DISPATCH = _RELEASE_FUNCTIONS + keys.lua("""
local tenant = ARGV[1]
if ARGV[8] ~= '' and redis.call('GET', ARGV[7]) ~= ARGV[8] then return {-3} end
local no = held(tenant, ARGV[9], tonumber(ARGV[10]))
if no then return no end
local q = '${QUEUE_PREFIX}' .. tenant
local top = redis.call('ZRANGE', q, 0, 0)
if #top == 0 then
  redis.call('SREM', '${ACTIVE}', tenant)
  return {-1}
end
local now = clock()
no = limited(tenant, tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), now)
if no then return no end
local id = top[1]
redis.call('ZREM', q, id)
if redis.call('ZCARD', q) == 0 then redis.call('SREM', '${ACTIVE}', tenant) end
local payload = redis.call('HGET', '${PAYLOAD}', id)
if not payload then return {0} end
local token = take(id, tenant, now, tonumber(ARGV[5]), tonumber(ARGV[6]))
return {1, id, token, payload}
""")

# Enqueue a job, or release it at once when nothing could be waiting for it (the direct release of
# an idle system, see ``enqueue_or_release``): no tenant's queue holds a job that is not paused, the
# job's own tenant may run it now (the dispatcher's checks, above), and the workers consuming its
# execution queue have a free slot beyond the messages already waiting there.
# ARGV: job id, priority, payload, tenant, cap, rate, burst, lease ttl s, inflight deadline s,
#       compute key, compute limit, default execution queue, priority levels, stale-after s.
# Returns {1, token, queue} released (publish it, then ack), or {0} enqueued (the dispatcher's work).
_ENQUEUE_OR_RELEASE = _RELEASE_FUNCTIONS + keys.lua("""
local id, tenant = ARGV[1], ARGV[4]
-- The free slots of ``dispatch.slots.free_slots`` and the waiting messages of ``exec_queue_depth``,
-- read inside this call: keep the three in step.
local function free_slots(queue, now)
  local pools = redis.call('HGETALL', '${SLOTS}')
  local free = nil
  for i = 1, #pools, 2 do
    local ok, pool = pcall(cjson.decode, pools[i + 1])
    local at = ok and type(pool) == 'table' and tonumber(pool['at'])
    if at and now - at <= tonumber(ARGV[14]) then
      for _, q in ipairs(pool['queues'] or {}) do
        if q == queue then
          local size = tonumber(pool['size']) or 0
          local busy = tonumber(redis.call('HGET', '${SLOTS_BUSY}', pools[i]) or '0') or 0
          free = (free or 0) + size - math.min(size, math.max(0, busy))
        end
      end
    end
  end
  return free
end
local function direct()
  local active = redis.call('SCARD', '${ACTIVE}')
  if active > 0 then
    if active > redis.call('SCARD', '${PAUSED}') then return nil end
    if #redis.call('SDIFF', '${ACTIVE}', '${PAUSED}') > 0 then return nil end
  end
  if held(tenant, ARGV[10], tonumber(ARGV[11])) then return nil end
  local queue = redis.call('HGET', '${ROUTES}', tenant) or ARGV[12]
  local now = clock()
  local free = free_slots(queue, now)
  if not free then return nil end
  local waiting = redis.call('LLEN', queue)
  for level = 1, tonumber(ARGV[13]) - 1 do waiting = waiting + redis.call('LLEN', queue .. ':' .. level) end
  if free - waiting < 1 then return nil end
  if limited(tenant, tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), now) then return nil end
  return {1, take(id, tenant, now, tonumber(ARGV[8]), tonumber(ARGV[9])), queue}
end
redis.call('HSET', '${PAYLOAD}', id, ARGV[3])
redis.call('ZREM', '${OUTBOX}', id)
redis.call('HDEL', '${OUTBOX_TENANT}', id)
local released = direct()
if released then return released end
local seq = redis.call('INCR', '${SEQ}')
redis.call('ZADD', '${QUEUE_PREFIX}' .. tenant, (9 - tonumber(ARGV[2])) * 10000000000000 + seq, id)
redis.call('SADD', '${ACTIVE}', tenant)
redis.call('LPUSH', '${WAKE}', '1')
redis.call('LTRIM', '${WAKE}', 0, 0)
return {0}
""")

# Put back jobs whose publish was never acknowledged (dispatcher died between pop and ack). They go
# to the front of their priority level: they were already at the head once.
_PUT_BACK = keys.lua("""
local function put_back(id)
  local meta = redis.call('HGET', '${INFLIGHT_META}', id)
  local payload = redis.call('HGET', '${PAYLOAD}', id)
  redis.call('ZREM', '${INFLIGHT}', id)
  redis.call('HDEL', '${INFLIGHT_META}', id)
  if not (meta and payload) then return 0 end
  local sep = string.find(meta, '|', 1, true)
  local tenant = string.sub(meta, 1, sep - 1)
  local token = string.sub(meta, sep + 1)
  local prio = 5
  local ok, msg = pcall(cjson.decode, payload)
  if ok and msg['job'] and msg['job']['priority'] then prio = tonumber(msg['job']['priority']) end
  redis.call('ZREM', '${LEASE_PREFIX}' .. tenant, id .. ':' .. token)
  redis.call('ZADD', '${QUEUE_PREFIX}' .. tenant, (9 - prio) * 10000000000000, id)
  redis.call('SADD', '${ACTIVE}', tenant)
  return 1
end
""")

_RECLAIM_INFLIGHT = _PUT_BACK + keys.lua("""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ids = redis.call('ZRANGEBYSCORE', '${INFLIGHT}', '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local n = 0
for _, id in ipairs(ids) do n = n + put_back(id) end
return n
""")

# Undo one release whose publish failed (ARGV: job id): back at the head of its tenant's queue at once,
# its lease freed, the dispatcher woken. 0 if it was no longer in flight.
_UNRELEASE = _PUT_BACK + keys.lua("""
if not redis.call('ZSCORE', '${INFLIGHT}', ARGV[1]) then return 0 end
local n = put_back(ARGV[1])
if n > 0 then
  redis.call('LPUSH', '${WAKE}', '1')
  redis.call('LTRIM', '${WAKE}', 0, 0)
end
return n
""")

# Purge: drop every pending job of a tenant; returns the ids so SQL can mark them cancelled.
_PURGE = keys.lua("""
local q = '${QUEUE_PREFIX}' .. ARGV[1]
local ids = redis.call('ZRANGE', q, 0, -1)
for i = 1, #ids, 500 do
  redis.call('HDEL', '${PAYLOAD}', unpack(ids, i, math.min(i + 499, #ids)))
end
redis.call('DEL', q)
redis.call('SREM', '${ACTIVE}', ARGV[1])
return ids
""")


# Ack: the publish of these jobs succeeded. ARGV: now, then (job id, tenant id) pairs. A worker may have
# put a job back already, between the publish and this ack (no slot free at its start, or its start
# deferred while the database is down): its payload is then the one that worker wrote, and stays.
_ACK = keys.lua("""
for i = 2, #ARGV, 2 do
  local id, tenant = ARGV[i], ARGV[i + 1]
  redis.call('ZREM', '${INFLIGHT}', id)
  redis.call('HDEL', '${INFLIGHT_META}', id)
  local back = redis.call('ZSCORE', '${DELAYED}', id) or redis.call('ZSCORE', '${QUEUE_PREFIX}' .. tenant, id)
  if not back then
    redis.call('HDEL', '${PAYLOAD}', id)
  end
  redis.call('HSET', '${DISPATCHED_AT}', id, ARGV[1])
end
return 1
""")


class TenantQueues:
    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._enqueue = client.register_script(_ENQUEUE)
        self._enqueue_many = client.register_script(_ENQUEUE_MANY)
        self._promote = client.register_script(_PROMOTE)
        self._pop = client.register_script(_POP)
        self._dispatch = client.register_script(_DISPATCH)
        self._enqueue_or_release = client.register_script(_ENQUEUE_OR_RELEASE)
        self._reclaim = client.register_script(_RECLAIM_INFLIGHT)
        self._unrelease = client.register_script(_UNRELEASE)
        self._purge = client.register_script(_PURGE)
        self._ack = client.register_script(_ACK)

    @staticmethod
    def _dump(message: dict[str, Any]) -> str:
        # The enqueue time travels with the message so the worker can record the queue wait.
        message.setdefault("enqueued_at", time.time())
        return json.dumps(message)

    def enqueue(self, tenant_id: str, job_id: str, priority: int, message: dict[str, Any]) -> None:
        self._enqueue(keys=[queue_key(tenant_id)], args=[job_id, priority, self._dump(message), tenant_id])

    def enqueue_many(self, tenant_id: str, items: list[tuple[str, int, dict[str, Any]]]) -> int:
        """Enqueue (job id, priority, message) triples of one tenant in one atomic call."""
        if not items:
            return 0
        args: list[Any] = [tenant_id]
        for job_id, priority, message in items:
            args.extend((job_id, priority, self._dump(message)))
        return int(self._enqueue_many(args=args))

    def requeue_front(self, tenant_id: str, job_id: str, priority: int, message: dict[str, Any]) -> None:
        """Put a job back at the head of its priority level (it was released but could not start)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(keys.PAYLOAD, job_id, json.dumps(message))
        pipe.zadd(queue_key(tenant_id), {job_id: score(priority, 0)})
        pipe.sadd(keys.ACTIVE, tenant_id)
        pipe.lpush(WAKE, "1")
        pipe.ltrim(WAKE, 0, 0)
        pipe.execute()

    def schedule(
        self, tenant_id: str, job_id: str, priority: int, message: dict[str, Any], run_at: float
    ) -> None:
        self.schedule_many([(tenant_id, job_id, priority, message, run_at)])

    def schedule_many(self, items: list[tuple[str, str, int, dict[str, Any], float]]) -> None:
        """Put (tenant id, job id, priority, message, run at) on the delayed queue: one transaction."""
        if not items:
            return
        pipe = self.r.pipeline(transaction=True)
        for tenant_id, job_id, priority, message, run_at in items:
            pipe.hset(keys.PAYLOAD, job_id, self._dump(message))
            pipe.hset(keys.DELAYED_TENANT, job_id, tenant_id)
            pipe.hset(keys.DELAYED_PRIORITY, job_id, priority)
            pipe.zadd(keys.DELAYED, {job_id: run_at})
            pipe.zrem(keys.OUTBOX, job_id)
            pipe.hdel(keys.OUTBOX_TENANT, job_id)
        pipe.execute()

    def promote_due(self, now: float | None = None, limit: int = 1000) -> int:
        return int(self._promote(args=[now if now is not None else time.time(), limit]))

    def pop(self, tenant_id: str, count: int = 1) -> list[dict[str, Any]]:
        """Take jobs out unconditionally (no limits, no in-flight record). Tools and tests only."""
        raw = self._pop(keys=[queue_key(tenant_id)], args=[count, tenant_id])
        return [json.loads(p) for p in raw]

    def release(
        self,
        tenant_id: str,
        *,
        cap: int,
        rate: float,
        burst: float,
        lease_ttl: float,
        inflight_deadline: float,
        leader_key: str = "",
        leader_id: str = "",
        compute_key: str = "",
        compute_limit_ms: int = 0,
    ) -> Released | tuple[int, int]:
        """Try to release the tenant's next job. Returns a Released, or (code, retry_after_ms).
        ``compute_key``: the tenant's compute counter for the period (CPU ms); at or above
        ``compute_limit_ms`` nothing is released (HELD)."""
        res = self._dispatch(
            args=[
                tenant_id,
                cap,
                rate,
                burst,
                lease_ttl,
                inflight_deadline,
                leader_key,
                leader_id,
                compute_key,
                compute_limit_ms,
            ]
        )
        code = int(res[0])
        if code == 1:
            return Released(job_id=res[1], token=res[2], message=json.loads(res[3]))
        return code, int(res[1]) if len(res) > 1 else 0

    def enqueue_or_release(
        self,
        tenant_id: str,
        job_id: str,
        priority: int,
        message: dict[str, Any],
        *,
        cap: int,
        rate: float,
        burst: float,
        lease_ttl: float,
        inflight_deadline: float,
        compute_key: str,
        compute_limit_ms: int,
        default_queue: str,
        priority_levels: int,
        stale_after: float,
    ) -> tuple[Released, str] | None:
        """Enqueue the job like ``enqueue``, unless nothing could be waiting for it: then release it
        in the same call (recorded in flight exactly like the dispatcher's release) and return it
        with the execution queue to publish it to. The caller publishes, then ``ack``s; a caller that
        dies in between leaves an in-flight entry the reconciler puts back. Only valid where the
        execution queues live in this Redis (their lengths are read here)."""
        res = self._enqueue_or_release(
            args=[
                job_id,
                priority,
                self._dump(message),  # stamps message["enqueued_at"], which the release carries
                tenant_id,
                cap,
                rate,
                burst,
                lease_ttl,
                inflight_deadline,
                compute_key,
                compute_limit_ms,
                default_queue,
                priority_levels,
                stale_after,
            ]
        )
        if int(res[0]) != 1:
            return None
        return Released(job_id=job_id, token=str(res[1]), message=message), str(res[2])

    def ack(self, released: list[Released]) -> None:
        """The publish of these jobs succeeded: forget the in-flight records and payloads."""
        if not released:
            return
        args: list[Any] = [time.time()]
        for r in released:
            args.extend((r.job_id, r.message.get("job", {}).get("tenant_id", "")))
        self._ack(args=args)

    def reclaim_inflight(self, limit: int = 1000) -> int:
        return int(self._reclaim(args=[limit]))

    def unrelease(self, job_id: str) -> bool:
        """Put a released job whose publish failed back at the head of its tenant's queue now."""
        return bool(self._unrelease(args=[job_id]))

    def purge(self, tenant_id: str) -> list[str]:
        return list(self._purge(args=[tenant_id]))

    def active_tenants(self) -> list[str]:
        # The clients decode responses to str, which redis-py's bytes | str return types cannot express.
        return sorted(cast(set[str], self.r.smembers(keys.ACTIVE)))

    def depth(self, tenant_id: str) -> int:
        return int(self.r.zcard(queue_key(tenant_id)))

    def running(self, tenant_id: str) -> int:
        """Leases held now: jobs released to workers and not finished (includes those not yet started)."""
        return int(self.r.zcount(lease_key(tenant_id), time.time(), "+inf"))

    def is_pending(self, tenant_id: str, job_id: str) -> bool:
        pipe = self.r.pipeline(transaction=False)
        pipe.zscore(queue_key(tenant_id), job_id)
        pipe.zscore(keys.DELAYED, job_id)
        pipe.zscore(INFLIGHT, job_id)
        return any(v is not None for v in pipe.execute())

    def remove(self, tenant_id: str, job_id: str) -> bool:
        """Take a pending or delayed job out (cancellation). True if it was still waiting."""
        pipe = self.r.pipeline(transaction=True)
        pipe.zrem(queue_key(tenant_id), job_id)
        pipe.zrem(keys.DELAYED, job_id)
        pipe.hdel(keys.PAYLOAD, job_id)
        pipe.hdel(keys.DELAYED_TENANT, job_id)
        pipe.hdel(keys.DELAYED_PRIORITY, job_id)
        removed_q, removed_d, *_ = pipe.execute()
        return bool(removed_q or removed_d)

    # -- pause ------------------------------------------------------------------------------------
    def pause(self, tenant_id: str, reason: str) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.sadd(PAUSED, tenant_id)
        pipe.hset(PAUSED_WHY, tenant_id, reason)
        pipe.execute()

    def resume(self, tenant_id: str) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.srem(PAUSED, tenant_id)
        pipe.hdel(PAUSED_WHY, tenant_id)
        pipe.execute()

    def paused(self) -> set[str]:
        return cast(set[str], self.r.smembers(PAUSED))
