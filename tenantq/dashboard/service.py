"""Data behind the dashboards that no other area serves: API feature discovery, the operator overview
and the Celery workers view.

The operator functions here read across tenants on purpose (the operator sees everyone); they are only
reachable through routes guarded by the ``Operator`` dependency. Tenant pages never call them: tenant
data reaches the browser through the tenant-scoped ``/v1`` API only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import redis
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tenantq.billing.usage.models import UsageEvent
from tenantq.core.db import utcnow
from tenantq.core.settings import get_settings
from tenantq.platform.jobs.models import Job
from tenantq.tenants.accounts.models import Plan, Tenant

# Which optional API areas the pages use, as (method, path with parameters blanked). A page asks
# ``features()`` and shows a "not available on this server" state for an area that is not mounted,
# so the dashboard ships before (and independently of) the endpoints it draws.
FEATURE_ROUTES: dict[str, tuple[str, str]] = {
    "jobs": ("GET", "/v1/jobs"),
    "cancel": ("POST", "/v1/jobs/{}/cancel"),
    "retry": ("POST", "/v1/jobs/{}/retry"),
    "keys": ("GET", "/v1/keys"),
    "keys_create": ("POST", "/v1/keys"),
    "keys_revoke": ("DELETE", "/v1/keys/{}"),
    "usage": ("GET", "/v1/usage"),
    "usage_report": ("GET", "/v1/usage/report"),
    "queue": ("GET", "/v1/queue"),
    "invoices": ("GET", "/v1/invoices"),
    "invoice": ("GET", "/v1/invoices/{}"),
    "schedules": ("GET", "/v1/schedules"),
    "schedules_delete": ("DELETE", "/v1/schedules/{}"),
    "webhooks": ("GET", "/v1/webhooks"),
    "webhooks_create": ("POST", "/v1/webhooks"),
    "webhooks_delete": ("DELETE", "/v1/webhooks/{}"),
    "webhook_deliveries": ("GET", "/v1/webhooks/{}/deliveries"),
    "admin_tenants": ("GET", "/admin/v1/tenants"),
    "admin_tenant_patch": ("PATCH", "/admin/v1/tenants/{}"),
    "admin_suspend": ("POST", "/admin/v1/tenants/{}/suspend"),
    "admin_reactivate": ("POST", "/admin/v1/tenants/{}/reactivate"),
    "admin_plans": ("GET", "/admin/v1/plans"),
    "admin_plan_patch": ("PATCH", "/admin/v1/plans/{}"),
    "admin_queues": ("GET", "/admin/v1/queues"),
    "admin_queue_pause": ("POST", "/admin/v1/tenants/{}/queue/pause"),
    "admin_queue_resume": ("POST", "/admin/v1/tenants/{}/queue/resume"),
    "admin_usage_report": ("GET", "/admin/v1/reports/usage"),
}

_PARAM = re.compile(r"\{[^}]*\}")


def _walk_routes(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for route in routes:
        # FastAPI >= 0.16x keeps included routers as lazy branches (``original_router`` plus an include
        # context carrying the prefix) instead of copying their routes into the parent: walk both shapes.
        original = getattr(route, "original_router", None)
        if original is not None:
            context = getattr(route, "include_context", None)
            yield from _walk_routes(list(original.routes), prefix + (getattr(context, "prefix", "") or ""))
            continue
        methods = getattr(route, "methods", None)
        path = getattr(route, "path", None)
        if methods and path is not None:
            for method in methods:
                yield method, prefix + path


def route_signatures(app: FastAPI) -> frozenset[tuple[str, str]]:
    """Every (METHOD, path) the app serves, path parameters blanked to ``{}``."""
    return frozenset((method, _PARAM.sub("{}", path)) for method, path in _walk_routes(list(app.routes)))


def has_route(app: FastAPI, method: str, path: str) -> bool:
    return (method.upper(), _PARAM.sub("{}", path)) in route_signatures(app)


def features(app: FastAPI) -> dict[str, bool]:
    # Routes are fixed once the app is built, so compute the map once per app.
    cached = getattr(app.state, "dashboard_features", None)
    if cached is None:
        sigs = route_signatures(app)
        cached = {name: sig in sigs for name, sig in FEATURE_ROUTES.items()}
        app.state.dashboard_features = cached
    return cached


def period_start(now: datetime) -> datetime:
    """Start of the calendar month (UTC) containing ``now``: the billing period."""
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_period_start(start: datetime) -> datetime:
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1)


def exec_queue_depths(client: redis.Redis) -> list[dict[str, Any]]:
    from tenantq.core.celery import SYSTEM_QUEUE
    from tenantq.platform.dispatch.dispatcher import exec_queue_depth

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
    start = period_start(now)
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
        pipe.zcard(f"tq:q:{tenant.id}")
    depths = pipe.execute() if tenants else []
    paused = client.smembers("tq:paused")
    paused_why = client.hgetall("tq:paused:why") or {}

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
        "period": {"start": start, "end": next_period_start(start)},
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
    from tenantq.core.celery import app as celery_app

    try:
        inspector = celery_app.control.inspect(timeout=timeout)
        stats = inspector.stats() or {}
        active = inspector.active() or {}
        queues = inspector.active_queues() or {}
    except Exception as exc:  # noqa: BLE001 - any broker failure becomes a visible state, never a 500
        return {"workers": [], "error": f"Cannot reach the broker: {type(exc).__name__}"}
    workers = []
    for name in sorted(set(stats) | set(active)):
        s = stats.get(name) or {}
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
