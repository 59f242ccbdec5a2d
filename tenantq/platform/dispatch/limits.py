"""Per-tenant execution limits: plan limits (cached), concurrency leases and the worker's start guard.

Where each limit is enforced:
- Execution rate: a token bucket per tenant (``tq:rl:{tenant}``) consumed by the dispatcher in the same
  Lua call that releases a job (``queues._DISPATCH``), so it holds cluster-wide for any number of workers.
- Concurrency: a lease (``tq:cc:{tenant}`` ZSET member ``{job}:{dispatch token}`` -> expiry) is taken at
  release, refreshed by the worker process while the attempt runs (heartbeat thread below), released on
  ``task_postrun`` whatever the state (also IGNORED, which is how retries and skipped duplicates end)
  and on ``task_revoked``. A SIGKILLed worker stops refreshing, so its leases expire and the slots return.
- The start guard (a ``task_prerun`` receiver connected before the status receivers) runs before an
  attempt starts, in one Lua call:
  * ``tq:started:{job}:{attempt}`` remembers which dispatch token started that attempt. Another token
    means a duplicate publish (e.g. the reconciler re-queued a job whose publish had in fact succeeded):
    the copy is skipped. The same token is a redelivery of the same message (acks_late after a crash):
    it runs again, as at-least-once delivery requires.
  * The attempt must hold a lease: its own if still alive, else a fresh one if the tenant is below its
    cap (redelivery after a crash, Celery-level retries). At the cap, the job goes back to the front of
    its tenant queue instead of running: a redelivered message never runs outside the cap.
  A skipped copy is flagged on ``task.request.tq_skip``; the task wrapper then raises ``Ignore`` and the
  status receivers leave SQL alone.

Plan limits come from SQL (``tenants.service.effective_limits``: plan + ``tenant.overrides``) and are cached for ``limits_refresh_seconds``; a tenant never seen
before is loaded on first use, so new tenants are served immediately.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from celery import signals
from sqlalchemy import select

from tenantq.core import keys
from tenantq.core.db import unscoped_session
from tenantq.core.keys import DISPATCHED_AT, lease_key, wait_key
from tenantq.core.redis import get_redis
from tenantq.core.settings import get_settings
from tenantq.platform.dispatch.repository import TenantQueues

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


def default_burst(rate: float) -> float:
    # A fifth of a second of tokens (at least one): bursts stay small, so "rate x T + burst" stays tight.
    return max(1.0, math.ceil(rate / 5)) if rate > 0 else 0.0


def _limits_from(tenant: Any, limits: Any) -> TenantLimits:
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
    )


def load_limits(tenant_ids: list[str]) -> dict[str, TenantLimits]:
    """Read the limits of these tenants from SQL (tenant and plan rows in one query). Unknown
    tenants are absent."""
    from tenantq.tenants.accounts.models import Plan, Tenant
    from tenantq.tenants.accounts.service import effective_limits

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
            return {
                t: self._items[t][1]
                for t in tenant_ids
                if self._items.get(t) and self._items[t][1] is not None
            }

    def get(self, tenant_id: str) -> TenantLimits | None:
        return self.get_many([tenant_id]).get(tenant_id)

    def invalidate(self, tenant_id: str | None = None) -> None:
        with self._lock:
            if tenant_id is None:
                self._items.clear()
            else:
                self._items.pop(tenant_id, None)


# -- worker side --------------------------------------------------------------------------------------

# ARGV: job, attempt, token, tenant, cap, lease ttl, started ttl, queue wait ms ('' = unknown), samples kept.
# Returns 'ok', 'dup' (another dispatch of this attempt started) or 'full' (no slot: re-queue).
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
if not redis.call('ZSCORE', cc, member) then
  if cap > 0 and redis.call('ZCARD', cc) >= cap then
    if prev then redis.call('DEL', started) end
    return 'full'
  end
end
redis.call('ZADD', cc, now + tonumber(ARGV[6]), member)
redis.call('SET', started, ARGV[3], 'EX', tonumber(ARGV[7]))
redis.call('HDEL', '${DISPATCHED_AT}', ARGV[1])
if ARGV[8] ~= '' then
  redis.call('LPUSH', '${WAIT_PREFIX}' .. ARGV[4], ARGV[8])
  redis.call('LTRIM', '${WAIT_PREFIX}' .. ARGV[4], 0, tonumber(ARGV[9]) - 1)
end
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
_held: dict[str, tuple[str, str]] = {}  # task id -> (tenant, lease member) of attempts running here
_held_lock = threading.Lock()
_heartbeat_pid: int | None = None


_guard: tuple[int, Any, Any] | None = None  # (pid, client, Script): EVALSHA, re-registered per pool process


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


def _heartbeat_loop(pid: int) -> None:
    client = get_redis()
    refresh = client.register_script(_REFRESH)
    while _heartbeat_pid == pid:
        ttl = get_settings().lease_ttl_seconds
        time.sleep(max(0.2, ttl / 3))
        with _held_lock:
            held = list(_held.values())
        if not held:
            continue
        try:
            refresh(keys=[lease_key(t) for t, _ in held], args=[ttl] + [m for _, m in held])
        except Exception as exc:  # noqa: BLE001 - a missed beat is survivable; the next one retries
            log.warning("lease heartbeat failed: %s", exc)


def _ensure_heartbeat() -> None:
    global _heartbeat_pid
    pid = os.getpid()
    if _heartbeat_pid != pid:  # first attempt in this (possibly freshly forked) pool process
        _heartbeat_pid = pid
        with _held_lock:
            _held.clear()
        threading.Thread(target=_heartbeat_loop, args=(pid,), name="tq-lease-heartbeat", daemon=True).start()


def _job_of(task: Any, kwargs: dict | None) -> dict[str, Any] | None:
    from tenantq.platform.jobs.registry import REGISTRY

    if task is None or getattr(task, "name", None) not in REGISTRY:
        return None
    job = (kwargs or {}).get("job")
    return job if isinstance(job, dict) and "id" in job and "tenant_id" in job else None


def attempt_of(job: dict[str, Any], retries: int) -> int:
    return int(job.get("attempt_base", 0)) + int(retries or 0) + 1


@signals.task_prerun.connect
def start_guard(task_id: str, task: Any, args: Any = None, kwargs: dict | None = None, **_: Any) -> None:
    job = _job_of(task, kwargs)
    if job is None or not job.get("dispatch"):
        return  # not released by the dispatcher (direct publish): nothing to guard
    client = get_redis()
    settings = get_settings()
    tenant, token = job["tenant_id"], str(job["dispatch"])
    attempt = attempt_of(job, task.request.retries)
    if "cap" in job:  # stamped by the dispatcher at release
        cap = int(job["cap"] or 0)
    else:
        limits = _cache().get(tenant)
        cap = limits.concurrency if limits else 0
    enqueued_at = job.get("enqueued_at")
    wait_ms = round((time.time() - float(enqueued_at)) * 1000, 1) if enqueued_at else ""
    verdict = _guard_script(client)(
        args=[
            job["id"],
            attempt,
            token,
            tenant,
            cap,
            settings.lease_ttl_seconds,
            STARTED_TTL,
            wait_ms,
            WAIT_SAMPLES,
        ]
    )
    if verdict == "ok":
        _ensure_heartbeat()
        with _held_lock:
            _held[task_id] = (tenant, f"{job['id']}:{token}")
        return
    task.request.tq_skip = verdict
    if verdict == "full":
        # Back to the head of the tenant's queue, with the attempt number preserved.
        # Same Celery task id (one per attempt) and the same per-job time limits as the original message.
        hard, soft = (getattr(task.request, "timelimit", None) or (None, None))[:2]
        options = {k: v for k, v in (("time_limit", hard), ("soft_time_limit", soft)) if v}
        message = {
            "task": task.name,
            "args": (kwargs or {}).get("args", {}),
            "task_id": task_id,
            "options": options,
            "job": {**{k: v for k, v in job.items() if k != "dispatch"}, "attempt_base": attempt - 1},
        }
        TenantQueues(client).requeue_front(tenant, job["id"], int(job.get("priority", 5)), message)
        log.info("job %s attempt %s found %s at its concurrency cap; re-queued", job["id"], attempt, tenant)
    else:
        log.warning(
            "job %s attempt %s already started under another dispatch; duplicate skipped", job["id"], attempt
        )


def _release(task_id: str | None, job: dict[str, Any] | None) -> None:
    if task_id is not None:
        with _held_lock:
            _held.pop(task_id, None)
    if job is None or not job.get("dispatch"):
        return
    try:
        get_redis().zrem(lease_key(job["tenant_id"]), f"{job['id']}:{job['dispatch']}")
    except Exception as exc:  # noqa: BLE001 - the lease expires on its own
        log.warning("could not release lease of job %s: %s", job.get("id"), exc)


@signals.task_postrun.connect
def release_on_postrun(
    task_id: str, task: Any, args: Any = None, kwargs: dict | None = None, **_: Any
) -> None:
    # Every end of an attempt (success, failure, retry, ignore, reject) frees its slot.
    _release(task_id, _job_of(task, kwargs))


@signals.task_revoked.connect
def release_on_revoked(request: Any = None, **_: Any) -> None:
    kwargs = getattr(request, "kwargs", None) or {}
    job = kwargs.get("job") if isinstance(kwargs, dict) else None
    if isinstance(job, dict) and "id" in job and "tenant_id" in job:
        _release(getattr(request, "id", None), job)


def recent_waits(client: Any, tenant_id: str) -> list[float]:
    return [float(x) for x in client.lrange(wait_key(tenant_id), 0, WAIT_SAMPLES - 1)]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]


__all__ = ["DISPATCHED_AT", "LimitsCache", "TenantLimits", "load_limits", "percentile", "recent_waits"]


def limits_for(session: Any, tenant: Any) -> TenantLimits:
    """Limits of one tenant read through the caller's session (the API's admission path)."""
    from tenantq.tenants.accounts.service import effective_limits

    return _limits_from(tenant, effective_limits(session, tenant))
