"""Per-tenant execution limits: plan limits (cached), concurrency leases and the worker's start guard.

Where each limit is enforced:
- Execution rate: a token bucket per tenant (``tq:rl:{tenant}``) consumed by the dispatcher in the same
  Lua call that releases a job (``queues._DISPATCH``), so it holds cluster-wide for any number of workers.
- Concurrency: a lease (``tq:cc:{tenant}`` ZSET member ``{job}:{dispatch token}`` -> expiry) is taken at
  release, refreshed by the worker process while the attempt runs (heartbeat thread below), released
  at the end of every attempt whatever the state (also IGNORED, which is how retries and skipped
  duplicates end) and on a revoke. A SIGKILLed worker stops refreshing, so its leases expire and the
  slots return.
- The start guard (the first step of the worker's attempt pipeline) runs before an attempt starts, in
  one Lua call:
  * ``tq:started:{job}:{attempt}`` remembers which dispatch token started that attempt. Another token
    means a duplicate publish (e.g. the reconciler re-queued a job whose publish had in fact succeeded):
    the copy is skipped. The same token is a redelivery of the same message (acks_late after a crash):
    ``redelivered``. If metering had opened that attempt (it is billed as lost), the pipeline records
    it as lost and queues the job's *next* attempt, so the attempt log shows what metering bills;
    if the dead run never got that far, the redelivery runs as the same attempt.
  * The attempt must hold a lease: its own if still alive, else a fresh one if the tenant is below its
    cap (redelivery after a crash). At the cap, the job goes back to the front of its tenant queue
    instead of running: a redelivered message never runs outside the cap.
  A skipped copy never reaches the task function, and the status step leaves SQL alone.

Plan limits come from SQL (``tenants.service.effective_limits``: plan + ``tenant.overrides``) and are
cached for ``limits_refresh_seconds``; a tenant never seen before is loaded on first use, so new tenants
are served immediately.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from tenantq.core import keys
from tenantq.core.db import unscoped_session
from tenantq.core.keys import DISPATCHED_AT, lease_key, wait_key
from tenantq.core.redis import get_redis, new_redis
from tenantq.core.settings import get_settings
from tenantq.platform.dispatch.repository import TenantQueues
from tenantq.tenants.accounts.models import Plan, Tenant
from tenantq.tenants.accounts.service import EffectiveLimits, effective_limits

log = logging.getLogger("tenantq.limits")

WAIT_SAMPLES = 500  # queue-wait samples kept per tenant for GET /v1/queue
STARTED_TTL = 7 * 24 * 3600


@dataclass(frozen=True)
class TenantLimits:
    tenant_id: str
    weight: float
    exec_rate: float  # jobs/s, 0 = unlimited
    exec_burst: float
    concurrency: int  # 0 = unlimited
    max_queued: int  # 0 = unlimited
    status: str = "active"
    # Hard compute quota of the period in CPU milliseconds (None = none): the dispatcher holds the
    # tenant's queued jobs once the period's counter reached it.
    compute_limit_ms: int | None = None


def default_burst(rate: float) -> float:
    # A fifth of a second of tokens (at least one): bursts stay small, so "rate x T + burst" stays tight.
    return max(1.0, math.ceil(rate / 5)) if rate > 0 else 0.0


def _limits_from(tenant: Tenant, limits: EffectiveLimits) -> TenantLimits:
    """The dispatcher's view of a tenant's ``EffectiveLimits`` (plan + overrides, merged once, in
    ``tenants.service.effective_limits``)."""
    rate = float(limits.exec_rate or 0)
    burst = getattr(limits, "exec_burst", None)
    return TenantLimits(
        tenant_id=tenant.id,
        weight=max(0.01, float(limits.weight or 1)),
        exec_rate=rate,
        exec_burst=float(burst) if burst else default_burst(rate),
        concurrency=int(limits.concurrency or 0),
        max_queued=int(limits.max_queued or 0),
        status=tenant.status,
        compute_limit_ms=int(limits.included_compute_seconds or 0) * 1000 if limits.hard_limits else None,
    )


def load_limits(tenant_ids: list[str]) -> dict[str, TenantLimits]:
    """Read the limits of these tenants from SQL (tenant and plan rows in one query). Unknown
    tenants are absent."""
    out: dict[str, TenantLimits] = {}
    with unscoped_session() as session:
        for i in range(0, len(tenant_ids), 500):
            chunk = tenant_ids[i : i + 500]
            rows = session.execute(
                select(Tenant, Plan).join(Plan, Plan.name == Tenant.plan_name).where(Tenant.id.in_(chunk))
            ).all()
            for tenant, _plan in rows:  # the plan row is now in the session: effective_limits reads no more
                out[tenant.id] = _limits_from(tenant, effective_limits(session, tenant))
    return out


class LimitsCache:
    """Tenant limits with a short time-to-live; misses are loaded in bulk."""

    def __init__(self, ttl: float | None = None) -> None:
        self.ttl = ttl if ttl is not None else get_settings().limits_refresh_seconds
        self._items: dict[str, tuple[float, TenantLimits | None]] = {}
        self._lock = threading.Lock()

    def get_many(self, tenant_ids: list[str]) -> dict[str, TenantLimits]:
        now = time.monotonic()
        with self._lock:
            missing = [t for t in tenant_ids if t not in self._items or self._items[t][0] < now]
        if missing:
            try:
                loaded = load_limits(missing)
            except Exception as exc:  # noqa: BLE001 - keep dispatching on what we knew while SQL is away
                log.warning("could not load tenant limits (%s); using cached values", exc)
                with self._lock:
                    for t in missing:
                        if t in self._items:
                            self._items[t] = (now + min(self.ttl, 1.0), self._items[t][1])
            else:
                with self._lock:
                    for t in missing:
                        self._items[t] = (now + self.ttl, loaded.get(t))
        with self._lock:
            cached = {t: self._items[t][1] for t in tenant_ids if t in self._items}
        return {t: limits for t, limits in cached.items() if limits is not None}

    def get(self, tenant_id: str) -> TenantLimits | None:
        return self.get_many([tenant_id]).get(tenant_id)

    def invalidate(self, tenant_id: str | None = None) -> None:
        with self._lock:
            if tenant_id is None:
                self._items.clear()
            else:
                self._items.pop(tenant_id, None)


# -- worker side --------------------------------------------------------------------------------------

# ARGV: job, attempt, token, tenant, cap, lease ttl, started ttl, queue wait ms ('' = unknown), samples kept,
# this pool process (host:pid), its liveness ttl.
# Returns 'ok', 'dup' (another dispatch of this attempt started), 'busy' (this dispatch of the attempt
# started and its holder is alive: try again later), 'redelivered' (like 'ok', but this very dispatch
# started before and its lease lapsed: the process running it died) or 'full' (no slot: re-queue).
_START_GUARD = keys.lua("""
local started = '${STARTED_PREFIX}' .. ARGV[1] .. ':' .. ARGV[2]
local prev = redis.call('GET', started)
if prev and prev ~= ARGV[3] then return 'dup' end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cc = '${LEASE_PREFIX}' .. ARGV[4]
local member = ARGV[1] .. ':' .. ARGV[3]
local cap = tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', cc, '-inf', now)
local holder = '${HOLDER_PREFIX}' .. ARGV[1] .. ':' .. ARGV[2]
if prev and redis.call('ZSCORE', cc, member) then
  -- A redelivery of this very release while its lease is alive. If the process that started it still
  -- beats, it still runs it (e.g. the broker restored the message after a connection loss): hold this
  -- copy back. If that process stopped beating it died, and its lease merely has not lapsed yet: this
  -- copy takes the lease over (a redelivery after a crash, seconds after it, not a lease TTL later).
  local h = redis.call('GET', holder)
  if (not h) or redis.call('EXISTS', '${ALIVE_PREFIX}' .. h) == 1 then return 'busy' end
end
if not redis.call('ZSCORE', cc, member) then
  if cap > 0 and redis.call('ZCARD', cc) >= cap then
    if prev then redis.call('DEL', started) end
    return 'full'
  end
end
redis.call('ZADD', cc, now + tonumber(ARGV[6]), member)
redis.call('SET', started, ARGV[3], 'EX', tonumber(ARGV[7]))
redis.call('SET', holder, ARGV[10], 'EX', tonumber(ARGV[7]))
redis.call('SET', '${ALIVE_PREFIX}' .. ARGV[10], '1', 'EX', tonumber(ARGV[11]))
redis.call('HDEL', '${DISPATCHED_AT}', ARGV[1])
if ARGV[8] ~= '' then
  redis.call('LPUSH', '${WAIT_PREFIX}' .. ARGV[4], ARGV[8])
  redis.call('LTRIM', '${WAIT_PREFIX}' .. ARGV[4], 0, tonumber(ARGV[9]) - 1)
end
if prev then return 'redelivered' end
return 'ok'
""")

# Refresh leases that still exist (XX: a lease reclaimed meanwhile is not resurrected by a heartbeat).
_REFRESH = """
local t = redis.call('TIME')
local expiry = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', expiry, ARGV[i + 1])
end
return #KEYS
"""

_worker_limits: LimitsCache | None = None
_heartbeat_pid: int | None = None

_guard: tuple[int, Any, Any] | None = None  # (pid, client, Script): EVALSHA, re-registered per pool process


class AttemptMessage(Protocol):
    """What the start guard reads of an attempt's message (``platform.jobs.messages.JobMessage``,
    which sits above dispatch, has these)."""

    @property
    def task(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def priority(self) -> int: ...
    @property
    def dispatch(self) -> str | None: ...
    @property
    def cap(self) -> int | None: ...
    @property
    def enqueued_at(self) -> float | None: ...
    @property
    def args(self) -> Mapping[str, Any]: ...
    @property
    def job(self) -> Mapping[str, Any]: ...


# (tenant id, lease member) of the attempts running in this process; given by the attempt pipeline,
# which keeps each attempt's state.
Leases = Callable[[], list[tuple[str, str]]]


def _guard_script(client: Any) -> Any:
    global _guard
    if _guard is None or _guard[0] != os.getpid() or _guard[1] is not client:
        _guard = (os.getpid(), client, client.register_script(_START_GUARD))
    return _guard[2]


def _cache() -> LimitsCache:
    global _worker_limits
    if _worker_limits is None:
        _worker_limits = LimitsCache()
    return _worker_limits


# A pool process running attempts marks itself alive every ALIVE_BEAT_S; the mark lapses ALIVE_TTL_S
# after its last beat. The start guard reads it to tell a dead holder of a live lease from a running one.
ALIVE_BEAT_S = 1.0
ALIVE_TTL_S = 5


def process_id() -> str:
    """This pool process, as the start guard names an attempt's holder."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _heartbeat_loop(pid: int, leases: Leases) -> None:
    # Its own client: the task and the attempt pipeline use the process's client in the main thread.
    client = new_redis()
    refresh = client.register_script(_REFRESH)
    alive = keys.ALIVE_PREFIX + process_id()
    last_refresh = time.monotonic()
    while _heartbeat_pid == pid:
        time.sleep(ALIVE_BEAT_S)
        held = leases()
        if not held:
            continue
        ttl = get_settings().lease_ttl_seconds
        try:
            client.set(alive, "1", ex=ALIVE_TTL_S)
            if time.monotonic() - last_refresh >= ttl / 3:
                refresh(keys=[lease_key(t) for t, _ in held], args=[ttl] + [m for _, m in held])
                last_refresh = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - a missed beat is survivable; the next one retries
            log.warning("lease heartbeat failed: %s", exc)


def ensure_lease_heartbeat(leases: Leases) -> None:
    """Refresh the leases of this process's running attempts until the process ends."""
    global _heartbeat_pid
    pid = os.getpid()
    if _heartbeat_pid != pid:  # first attempt in this (possibly freshly forked) pool process
        _heartbeat_pid = pid
        threading.Thread(
            target=_heartbeat_loop, args=(pid, leases), name="tq-lease-heartbeat", daemon=True
        ).start()


def lease_of(message: AttemptMessage) -> tuple[str, str] | None:
    """The (tenant, member) of the lease the dispatcher took for this attempt, if it released it."""
    if message.dispatch is None:
        return None
    return message.tenant_id, f"{message.id}:{message.dispatch}"


def same_attempt(
    message: AttemptMessage, task_id: str, timelimit: Any, *, keep_dispatch: bool = False
) -> dict[str, Any]:
    """The message that runs this attempt again: same Celery task id (one per attempt) and the same
    per-job time limits (Celery's ``(hard, soft)`` of the delivery). Without its dispatch token unless
    ``keep_dispatch`` (a new release gets a new one)."""
    hard, soft = (timelimit or (None, None))[:2]
    options: dict[str, Any] = {k: v for k, v in (("time_limit", hard), ("soft_time_limit", soft)) if v}
    job = dict(message.job) if keep_dispatch else {k: v for k, v in message.job.items() if k != "dispatch"}
    return {
        "task": message.task,
        "args": dict(message.args),
        "task_id": task_id,
        "options": options,
        "job": job,
    }


def start_guard(message: AttemptMessage, task_id: str, timelimit: Any = None) -> str:
    """Before an attempt starts: 'ok' (it holds its lease and may run), 'unguarded' (not released by
    the dispatcher: a direct publish, nothing to guard), 'dup' (another dispatch of this attempt
    started: skip it), 'busy' (this very dispatch is running elsewhere, its lease alive: the caller
    sends this copy back for later, see the worker pipeline), 'redelivered' (it holds its lease, but
    this dispatch started before and its process died: the caller decides whether that run was lost)
    or 'full' (no slot: it went back to the head of its tenant queue)."""
    if message.dispatch is None:
        return "unguarded"
    client = get_redis()
    settings = get_settings()
    tenant, token, attempt = message.tenant_id, message.dispatch, message.attempt
    if message.cap is not None:  # stamped by the dispatcher at release
        cap = message.cap
    else:
        limits = _cache().get(tenant)
        cap = limits.concurrency if limits else 0
    enqueued_at = message.enqueued_at
    wait_ms = round((time.time() - enqueued_at) * 1000, 1) if enqueued_at else ""
    verdict = str(
        _guard_script(client)(
            args=[
                message.id,
                attempt,
                token,
                tenant,
                cap,
                settings.lease_ttl_seconds,
                STARTED_TTL,
                wait_ms,
                WAIT_SAMPLES,
                process_id(),
                ALIVE_TTL_S,
            ]
        )
    )
    if verdict == "full":
        # Back to the head of the tenant's queue, the same attempt again: same Celery task id (one per
        # attempt) and the same per-job time limits as the original message.
        requeued = same_attempt(message, task_id, timelimit)
        TenantQueues(client).requeue_front(tenant, message.id, message.priority, requeued)
        log.info("job %s attempt %s found %s at its concurrency cap; re-queued", message.id, attempt, tenant)
    elif verdict == "busy":
        log.warning(
            "job %s attempt %s delivered again while its first delivery still runs; held back",
            message.id,
            attempt,
        )
    elif verdict == "dup":
        log.warning(
            "job %s attempt %s already started under another dispatch; duplicate skipped", message.id, attempt
        )
    return verdict


def queue_release(pipe: Any, message: AttemptMessage) -> None:
    """:func:`release_lease` queued on the caller's pipeline (the attempt pipeline's last round trip)."""
    lease = lease_of(message)
    if lease is not None:
        pipe.zrem(lease_key(lease[0]), lease[1])


def release_lease(message: AttemptMessage) -> None:
    """Every end of an attempt (success, failure, retry, ignore, reject, revoke) frees its slot."""
    lease = lease_of(message)
    if lease is None:
        return
    try:
        get_redis().zrem(lease_key(lease[0]), lease[1])
    except Exception as exc:  # noqa: BLE001 - the lease expires on its own
        log.warning("could not release lease of job %s: %s", message.id, exc)


def recent_waits(client: Any, tenant_id: str) -> list[float]:
    return [float(x) for x in client.lrange(wait_key(tenant_id), 0, WAIT_SAMPLES - 1)]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]


__all__ = ["DISPATCHED_AT", "LimitsCache", "TenantLimits", "load_limits", "percentile", "recent_waits"]


def limits_for(session: Session, tenant: Tenant) -> TenantLimits:
    """Limits of one tenant read through the caller's session (the API's admission path)."""
    return _limits_from(tenant, effective_limits(session, tenant))
