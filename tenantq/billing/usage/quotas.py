"""Usage quotas per billing period, enforced at submission from Redis counters reconciled to SQL.

Periods are calendar months in UTC (``YYYY-MM``); a quota resets at the start of the next month.
Limits come from the tenant's plan (``included_jobs``, ``included_compute_seconds``, ``hard_limits``),
overridable per tenant through ``Tenant.overrides`` (same keys).

- ``jobs``: jobs accepted in the period. The admission check increments the counter atomically with the
  limit test (one Lua script), so concurrent submits can never accept more than the limit. A workflow
  is admitted as all its jobs, every step and every group member, when it is created; a batch as all
  its accepted jobs (all or nothing). A re-run counts only a job that never ran (cancelled before it
  started); a re-run that resumes a stopped workflow counts the steps it was given back again.
  Jobs that will never run are given back at once (``release_jobs``): cancelled or purged before they
  started, refused after admission (enqueue failed), the steps a failed or cancelled workflow never
  created.
- ``compute_seconds``: CPU time of attempts that finished in the period. The worker adds each attempt's
  CPU time to the counter as it closes the attempt (in the same Redis transaction that records its
  usage); a hard limit refuses new jobs once the period's CPU time reached it, and the dispatcher
  holds the tenant's queued jobs (``platform.dispatch``). A running job is not stopped: its usage is
  known only when it ends, so the overshoot is bounded by the jobs already running.
Hard limits answer 402 ``quota_exceeded`` with details ``{"quota", "used", "limit", "resets_at"}``.
Soft limits accept the job; overage is billed by the plan's prices.

Counters are a cache of SQL. A missing counter is seeded from SQL before use, and the periodic task
``billing.sync_quota_counters`` (also run by the flusher) resets every counter of the current period from
SQL: jobs = jobs created in the period except rejected ones and ones cancelled before they started;
plus the steps of running workflows created in the period that have no jobs yet; compute = sum of
``compute_ms`` usage events in the period. A job that ran at least once stays counted, whatever happens
to it later. Between syncs a counter can be off by in-flight submissions during a sync (counted too
low) and by a process that died between its commit and its counter update.

Redis keys: ``tq:quota:{tenant}:{YYYY-MM}:jobs`` and ``tq:quota:{tenant}:{YYYY-MM}:compute_ms`` (strings),
``tq:quota:tenants:{YYYY-MM}`` (SET of tenants with counters); all expire ~2 months after use.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import cast

import redis
from sqlalchemy import and_, func, not_, select
from sqlalchemy.orm import Session

from tenantq.billing.usage.models import UsageEvent
from tenantq.core.db import unscoped_session
from tenantq.core.errors import PaymentRequired, ServiceUnavailable
from tenantq.core.keys import quota_compute_key, quota_jobs_key, quota_tenants_key
from tenantq.core.periods import current_period, period_bounds, period_of
from tenantq.core.redis import get_redis
from tenantq.platform.jobs.models import Job
from tenantq.platform.workflows.models import Workflow
from tenantq.tenants.accounts.models import Tenant
from tenantq.tenants.accounts.service import effective_limits

log = logging.getLogger("tenantq.quotas")

COUNTER_TTL_S = 62 * 24 * 3600


# -- limits ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuotaLimits:
    jobs: int
    compute_seconds: int
    hard: bool
    concurrency: int
    max_queued: int


def quota_limits(session: Session, tenant: Tenant) -> QuotaLimits:
    """The quota side of the tenant's effective limits (plan + overrides, read once per transaction)."""
    limits = effective_limits(session, tenant)
    return QuotaLimits(
        jobs=limits.included_jobs,
        compute_seconds=limits.included_compute_seconds,
        hard=limits.hard_limits,
        concurrency=limits.concurrency,
        max_queued=limits.max_queued,
    )


# -- counters -------------------------------------------------------------------------------------------


# Check and increment in one step: no interleaving of concurrent submits between test and increment.
# A counter missing (first use in a period, or Redis lost it) answers {-1, 'missing', 0} and counts
# nothing: the caller seeds the counters from SQL and asks again, so the usual case is one round trip.
_ADMIT = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('EXISTS', KEYS[2]) == 0 then return {-1, 'missing', 0} end
local n = tonumber(ARGV[1])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local cpu = tonumber(redis.call('GET', KEYS[2]) or '0')
if ARGV[4] == '1' then
  if cpu >= tonumber(ARGV[3]) then return {0, 'compute_seconds', cpu} end
  if used + n > tonumber(ARGV[2]) then return {0, 'jobs', used} end
end
redis.call('INCRBY', KEYS[1], n)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
return {1, 'ok', used + n}
"""

# Counters are only added to when they exist: a missing one is seeded from SQL, which already has it
# (the worker's compute time once flushed).
# Releases add a negative amount; a counter never goes below zero.
ADD_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  local v = redis.call('INCRBY', KEYS[1], tonumber(ARGV[1]))
  if v < 0 then redis.call('SET', KEYS[1], 0, 'KEEPTTL') return 0 end
  return v
end
return nil
"""


def sql_jobs_used(session: Session, tenant_id: str | None, period: str) -> dict[str, int]:
    """Jobs counted against the quota, per tenant: accepted in the period and not refused or dropped
    before they ever ran, plus the steps of running workflows created in the period that have no jobs
    yet (a workflow is admitted as all its jobs)."""
    start, end = period_bounds(period)
    stmt = (
        select(Job.tenant_id, func.count())
        .where(
            Job.created_at >= start,
            Job.created_at < end,
            Job.status != "rejected",
            # Cancelled before any attempt started (re-runs keep their attempt count).
            not_(and_(Job.status == "cancelled", Job.started_at.is_(None), Job.attempts == 0)),
        )
        .group_by(Job.tenant_id)
    )
    if tenant_id is not None:
        stmt = stmt.where(Job.tenant_id == tenant_id)
    used: dict[str, int] = defaultdict(int, {t: int(n) for t, n in session.execute(stmt)})
    for tenant, reserved in _reserved_steps(session, tenant_id, start, end):
        used[tenant] += reserved
    return dict(used)


def _reserved_steps(
    session: Session, tenant_id: str | None, start: datetime, end: datetime
) -> list[tuple[str, int]]:
    stmt = select(Workflow).where(
        Workflow.status == "running", Workflow.created_at >= start, Workflow.created_at < end
    )
    if tenant_id is not None:
        stmt = stmt.where(Workflow.tenant_id == tenant_id)
    return [(wf.tenant_id, wf.jobs_not_created()) for wf in session.scalars(stmt)]


def sql_compute_ms(session: Session, tenant_id: str | None, period: str) -> dict[str, int]:
    start, end = period_bounds(period)
    stmt = (
        select(UsageEvent.tenant_id, func.coalesce(func.sum(UsageEvent.quantity), 0))
        .where(
            UsageEvent.metric == "compute_ms", UsageEvent.occurred_at >= start, UsageEvent.occurred_at < end
        )
        .group_by(UsageEvent.tenant_id)
    )
    if tenant_id is not None:
        stmt = stmt.where(UsageEvent.tenant_id == tenant_id)
    return {t: int(n) for t, n in session.execute(stmt)}


def ensure_counters(client: redis.Redis, session: Session, tenant_id: str, period: str) -> None:
    """Seed missing counters from SQL (first use in a period, or after Redis lost them). Called before
    the caller adds the jobs it is admitting, which the admission counts itself."""
    jk, ck = quota_jobs_key(tenant_id, period), quota_compute_key(tenant_id, period)
    pipe = client.pipeline(transaction=False)
    pipe.exists(jk)
    pipe.exists(ck)
    have_jobs, have_cpu = pipe.execute()
    with session.no_autoflush:
        if not have_jobs:
            client.set(
                jk, sql_jobs_used(session, tenant_id, period).get(tenant_id, 0), nx=True, ex=COUNTER_TTL_S
            )
            # Remember who has counters this period, so the periodic sync needs no keyspace scan.
            client.sadd(quota_tenants_key(period), tenant_id)
            client.expire(quota_tenants_key(period), COUNTER_TTL_S)
        if not have_cpu:
            client.set(
                ck, sql_compute_ms(session, tenant_id, period).get(tenant_id, 0), nx=True, ex=COUNTER_TTL_S
            )


def resets_at(period: str) -> str:
    return period_bounds(period)[1].isoformat().replace("+00:00", "Z")


def check_quota(session: Session, tenant: Tenant, count: int) -> None:
    """Admission check: count ``count`` new jobs against the period's quota, or refuse with 402."""
    limits = quota_limits(session, tenant)
    period = current_period()
    client = get_redis()
    admit = client.register_script(_ADMIT)
    counters = [quota_jobs_key(tenant.id, period), quota_compute_key(tenant.id, period)]
    args = [count, limits.jobs, limits.compute_seconds * 1000, 1 if limits.hard else 0, COUNTER_TTL_S]
    try:
        ok, quota, used = admit(keys=counters, args=args)
        if int(ok) == -1:
            ensure_counters(client, session, tenant.id, period)
            ok, quota, used = admit(keys=counters, args=args)
            if int(ok) == -1:  # gone again at once (evicted): as good as unreadable
                raise redis.RedisError("quota counters missing after seeding")
    except redis.RedisError:
        # Redis is the queue's store too: one code for "Redis is away" on every submission path, as
        # docs/operations.md lists it (a Redis restart answered quota_unavailable or queue_unavailable
        # depending on which call it hit first).
        raise ServiceUnavailable(
            "The queue is unavailable (its quota counters could not be read); the job was not accepted. "
            "Retry later.",
            code="queue_unavailable",
            headers={"Retry-After": "1"},
        ) from None
    if int(ok) == 1:
        return
    quota = quota.decode() if isinstance(quota, bytes) else quota
    if quota == "jobs":
        remaining = max(0, limits.jobs - int(used))
        details = {
            "quota": "jobs",
            "used": int(used),
            "limit": limits.jobs,
            "requested": count,
            "remaining": remaining,
            "resets_at": resets_at(period),
        }
        if count > 1:
            message = (
                f"{count} jobs requested, but only {remaining} remain of the plan's {limits.jobs} jobs "
                f"for {period}; nothing was accepted."
            )
        else:
            message = f"The plan's {limits.jobs} jobs for {period} are used up."
    else:
        details = {
            "quota": "compute_seconds",
            "used": round(int(used) / 1000, 3),
            "limit": limits.compute_seconds,
            "resets_at": resets_at(period),
        }
        message = f"The plan's {limits.compute_seconds} compute seconds for {period} are used up."
    raise PaymentRequired(
        message + " Upgrade the plan or wait for the next period.", code="quota_exceeded", details=details
    )


def release_jobs(tenant_id: str, count: int, counted_at: datetime, client: redis.Redis | None = None) -> None:
    """Give back ``count`` jobs to the counter of ``counted_at``'s period (jobs that will never run).
    Best effort: if Redis is away the periodic sync corrects the counter from SQL."""
    if count <= 0:
        return
    try:
        client = client or get_redis()
        client.register_script(ADD_IF_EXISTS)(
            keys=[quota_jobs_key(tenant_id, period_of(counted_at))], args=[-count]
        )
    except redis.RedisError as exc:
        log.warning("quota: could not give back %s job(s) of tenant %s: %s", count, tenant_id, exc)


def sync_counters_from_sql(client: redis.Redis | None = None, period: str | None = None) -> int:
    """Reset every counter of ``period`` (default: current) from SQL. Returns counters written."""
    client = client or get_redis()
    period = period or current_period()
    with unscoped_session() as session:
        jobs = sql_jobs_used(session, None, period)
        cpu = sql_compute_ms(session, None, period)
    # Counters of tenants with nothing in SQL any more (e.g. their only jobs were refused) go back to 0.
    # The clients decode responses to str, which redis-py's bytes | str return types cannot express.
    known = cast(set[str], client.smembers(quota_tenants_key(period)))
    tenants = set(jobs) | set(cpu) | known
    pipe = client.pipeline(transaction=False)
    for tenant_id in tenants:
        pipe.set(quota_jobs_key(tenant_id, period), jobs.get(tenant_id, 0), ex=COUNTER_TTL_S)
        pipe.set(quota_compute_key(tenant_id, period), cpu.get(tenant_id, 0), ex=COUNTER_TTL_S)
    pipe.execute()
    return 2 * len(tenants)
