"""Data behind the dashboards that no other area serves: the operator overview and the Celery workers
view.

The operator functions here read across tenants on purpose (the operator sees everyone); they are only
reachable through routes guarded by the ``Operator`` dependency. Tenant pages never call them: tenant
data reaches the browser through the tenant-scoped ``/v1`` API only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import redis
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tenantq.billing.usage.models import UsageEvent
from tenantq.core import keys
from tenantq.core.celery import SYSTEM_QUEUE
from tenantq.core.celery import app as celery_app
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


@dataclass(frozen=True)
class WorkerInfo:
    name: str
    active: int
    concurrency: int | None
    processed: int
    pid: int | None
    uptime_s: int | None
    queues: list[str]


INSPECT_TIMEOUT_S = 1.0


def inspect_workers(timeout: float = INSPECT_TIMEOUT_S) -> dict[str, Any]:
    """Workers online, from Celery's own remote-control replies (``stats``, ``active``, ``active_queues``).

    A broadcast waits ``timeout`` seconds for replies; workers that do not answer in time are simply
    not listed. Broker errors are reported in the body, not raised: the page says "cannot reach the
    broker" instead of failing.
    """
    try:
        inspector = celery_app.control.inspect(timeout=timeout)
        stats = inspector.stats() or {}
        active = inspector.active() or {}
        queues = inspector.active_queues() or {}
    except Exception as exc:  # noqa: BLE001 - any broker failure becomes a visible state, never a 500
        return {"workers": [], "error": f"Cannot reach the broker: {type(exc).__name__}"}
    workers: list[dict[str, Any]] = []
    for name in sorted(set(stats) | set(active)):
        s = stats.get(name) or dict[str, Any]()
        pool = s.get("pool") or {}
        total = s.get("total") or {}
        workers.append(
            WorkerInfo(
                name=name,
                active=len(active.get(name) or []),
                concurrency=pool.get("max-concurrency"),
                processed=int(sum(v for v in total.values() if isinstance(v, int))),
                pid=s.get("pid"),
                uptime_s=s.get("uptime"),
                queues=sorted(q.get("name", "") for q in (queues.get(name) or [])),
            ).__dict__
        )
    return {"workers": workers, "error": None}
