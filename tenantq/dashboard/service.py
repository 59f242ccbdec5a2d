"""Data behind the dashboards that no other area serves: the operator overview and the workers
view (from the workers' heartbeats in Redis).

The operator functions here read across tenants on purpose (the operator sees everyone); they are only
reachable through routes guarded by the ``Operator`` dependency. Tenant pages never call them: tenant
data reaches the browser through the tenant-scoped ``/v1`` API only.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tenantq.billing.usage.models import UsageEvent
from tenantq.core import keys, metrics
from tenantq.core.celery import SYSTEM_QUEUE
from tenantq.core.db import utcnow
from tenantq.core.periods import Period
from tenantq.core.settings import get_settings
from tenantq.platform.dispatch.dispatcher import exec_queue_depth
from tenantq.platform.jobs.models import Job
from tenantq.tenants.accounts.models import Plan, Tenant


def exec_queue_depths(client: redis.Redis) -> list[dict[str, Any]]:
    queues = [get_settings().exec_queue, SYSTEM_QUEUE]
    return [{"name": q, "depth": exec_queue_depth(client, q)} for q in queues]


def _counts_by_tenant(session: Session, *conditions: Any) -> dict[str, int]:
    rows = session.execute(select(Job.tenant_id, func.count()).where(*conditions).group_by(Job.tenant_id))
    return {tenant_id: int(n) for tenant_id, n in rows}


# Operator overview of at most this many tenants per call; beyond that the operator API lists them.
MAX_OVERVIEW_TENANTS = 1000
THROUGHPUT_MINUTES = 30


def operator_overview(session: Session, client: redis.Redis, now: datetime | None = None) -> dict[str, Any]:
    now = now or utcnow()
    period = Period.containing(now)
    start = period.start
    tenants = list(
        session.scalars(select(Tenant).order_by(Tenant.created_at, Tenant.id).limit(MAX_OVERVIEW_TENANTS))
    )
    running = _counts_by_tenant(session, Job.status == "running")
    period_jobs = _counts_by_tenant(session, Job.created_at >= start)
    period_failed = _counts_by_tenant(session, Job.created_at >= start, Job.status == "failed")
    recent_window = timedelta(minutes=5)
    recent_finished = _counts_by_tenant(session, Job.finished_at >= now - recent_window)
    compute_ms = {
        tenant_id: int(total or 0)
        for tenant_id, total in session.execute(
            select(UsageEvent.tenant_id, func.sum(UsageEvent.quantity))
            .where(UsageEvent.metric == "compute_ms", UsageEvent.occurred_at >= start)
            .group_by(UsageEvent.tenant_id)
        )
    }

    pipe = client.pipeline(transaction=False)
    for tenant in tenants:
        pipe.zcard(keys.queue_key(tenant.id))
    depths = pipe.execute() if tenants else []
    paused = client.smembers(keys.PAUSED)
    paused_why = client.hgetall(keys.PAUSED_WHY) or {}

    rows = []
    for tenant, depth in zip(tenants, depths, strict=True):
        rows.append(
            {
                "id": tenant.id,
                "name": tenant.name,
                "plan": tenant.plan_name,
                "status": tenant.status,
                "paused": tenant.id in paused,
                "paused_reason": paused_why.get(tenant.id),
                "queue_depth": int(depth),
                "running": running.get(tenant.id, 0),
                "jobs_per_min": round(
                    recent_finished.get(tenant.id, 0) / (recent_window.total_seconds() / 60), 2
                ),
                "jobs_this_period": period_jobs.get(tenant.id, 0),
                "failed_this_period": period_failed.get(tenant.id, 0),
                "compute_seconds_this_period": round(compute_ms.get(tenant.id, 0) / 1000, 3),
                "created_at": tenant.created_at,
            }
        )

    plans = [
        {"name": p.name, "display_name": p.display_name or p.name}
        for p in session.scalars(select(Plan).order_by(Plan.name))
    ]
    return {
        "generated_at": now,
        "period": {"start": start, "end": period.end},
        "tenants": rows,
        "truncated": len(tenants) == MAX_OVERVIEW_TENANTS,
        "plans": plans,
        "exec_queues": exec_queue_depths(client),
        "throughput": throughput(session, now),
    }


def throughput(session: Session, now: datetime, minutes: int = THROUGHPUT_MINUTES) -> list[dict[str, Any]]:
    """Jobs finished per minute over the last ``minutes`` minutes, split succeeded / failed."""
    end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    begin = end - timedelta(minutes=minutes)
    buckets = {begin + timedelta(minutes=i): {"succeeded": 0, "failed": 0} for i in range(minutes)}
    rows = session.execute(
        select(Job.finished_at, Job.status).where(
            Job.finished_at >= begin, Job.finished_at < end, Job.status.in_(("succeeded", "failed"))
        )
    )
    for finished_at, status in rows:
        assert finished_at is not None  # the range condition above leaves out unfinished jobs
        minute = finished_at.replace(second=0, microsecond=0)
        if minute in buckets:
            buckets[minute][status] += 1
    return [{"minute": minute, **counts} for minute, counts in sorted(buckets.items())]


# A worker whose heartbeat is older than this is listed as "not responding" (it refreshes every few
# seconds; the same threshold as the tenantq_workers metric).
WORKER_STALE_AFTER_S = 30.0


def heartbeat_workers(client: redis.Redis, now: float | None = None) -> dict[str, Any]:
    """Workers online, from the heartbeats each worker writes to Redis (``tq:workers``): one ZRANGE,
    answered in milliseconds, instead of a Celery broadcast that waits its whole timeout for replies.

    A Redis error is reported in the body, not raised: the page says "cannot reach Redis" instead of
    failing."""
    now = time.time() if now is None else now
    try:
        # withscores=True: (member, score) pairs; redis-py's annotation covers every mode at once.
        entries = cast(
            list[tuple[str | bytes, float]],
            client.zrangebyscore(keys.WORKERS, now - 86_400, "+inf", withscores=True),
        )
        running = client.hlen(metrics.RUNNING_KEY)
    except redis.RedisError as exc:
        return {"workers": [], "running": 0, "error": f"Cannot reach Redis: {type(exc).__name__}"}
    workers = []
    for raw, seen in sorted(entries, key=lambda e: str(e[0])):
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        age = max(0.0, now - float(seen))
        workers.append(
            {
                "name": name,
                "last_heartbeat": datetime.fromtimestamp(float(seen), UTC),
                "heartbeat_age_s": round(age, 1),
                "online": age <= WORKER_STALE_AFTER_S,
            }
        )
    return {"workers": workers, "running": int(running), "error": None}
