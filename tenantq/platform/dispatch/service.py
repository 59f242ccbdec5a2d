"""Queue operations: per-tenant queue figures, operator pause/resume/pools.

The operator's purge also cancels the purged jobs' rows, so it lives with the jobs
(``platform.jobs.service.purge_queue``).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from tenantq.core import keys
from tenantq.core.errors import Conflict
from tenantq.core.periods import current_period, period_bounds
from tenantq.core.redis import get_redis
from tenantq.core.settings import get_settings
from tenantq.platform.dispatch import routing
from tenantq.platform.dispatch.dispatcher import LEADER_KEY, exec_queue_depth
from tenantq.platform.dispatch.limits import TenantLimits, limits_for, percentile, recent_waits
from tenantq.platform.dispatch.repository import PAUSED_WHY, TenantQueues
from tenantq.platform.dispatch.schemas import AdminQueueOut, HeldOut, QueueOut, WaitStats
from tenantq.tenants.accounts.models import Tenant

log = logging.getLogger("tenantq.queue")

OPERATOR_PAUSE = "operator_pause"


def held(client: redis.Redis, tenant_id: str, limits: TenantLimits) -> HeldOut | None:
    """Why the dispatcher holds the tenant's queue, if it does: the hard compute quota of the period
    is used up (the same counter and limit the dispatcher's release step compares)."""
    if limits.compute_limit_ms is None:
        return None
    period = current_period()
    used_ms = int(client.get(keys.quota_compute_key(tenant_id, period)) or 0)
    if used_ms < limits.compute_limit_ms:
        return None
    resets_at = period_bounds(period)[1].isoformat().replace("+00:00", "Z")
    return HeldOut(
        reason="compute_quota",
        message=(
            f"The plan's {limits.compute_limit_ms / 1000:g} compute seconds for {period} are used up: "
            f"waiting jobs are held until {resets_at} or until the limit is raised."
        ),
        used=used_ms / 1000,
        limit=limits.compute_limit_ms / 1000,
        resets_at=resets_at,
    )


def _figures(client: redis.Redis, tenant_id: str, limits: TenantLimits, paused: bool) -> dict[str, Any]:
    queues = TenantQueues(client)
    waits = recent_waits(client, tenant_id)
    return {
        "held": held(client, tenant_id, limits),
        "depth": queues.depth(tenant_id),
        "running": queues.running(tenant_id),
        "concurrency_limit": limits.concurrency or None,
        "rate_limit": limits.exec_rate or None,
        "paused": paused,
        "recent_wait_ms": WaitStats(p50=percentile(waits, 50), p95=percentile(waits, 95)),
    }


def queue_stats(session: Session, tenant: Tenant, *, client: redis.Redis | None = None) -> QueueOut:
    client = client or get_redis()
    paused = bool(client.sismember(keys.PAUSED, tenant.id))
    return QueueOut(**_figures(client, tenant.id, limits_for(session, tenant), paused))


def admin_queues(session: Session, *, client: redis.Redis | None = None) -> dict[str, Any]:
    """Every tenant that has something queued, running or paused."""
    client = client or get_redis()
    queues = TenantQueues(client)
    paused = queues.paused()
    why = client.hgetall(PAUSED_WHY)
    routes = routing.routes(client)
    running = {
        k.removeprefix(keys.LEASE_PREFIX) for k in client.scan_iter(match=keys.LEASE_PREFIX + "*", count=1000)
    }
    ids = set(queues.active_tenants()) | paused | running
    items: list[AdminQueueOut] = []
    if ids:
        tenants = session.scalars(
            select(Tenant).where(Tenant.id.in_(sorted(ids))).order_by(Tenant.name)
        ).all()
        for tenant in tenants:
            limits = limits_for(session, tenant)
            figures = _figures(client, tenant.id, limits, tenant.id in paused)
            items.append(
                AdminQueueOut(
                    tenant_id=tenant.id,
                    tenant_name=tenant.name,
                    paused_reason=why.get(tenant.id),
                    weight=limits.weight,
                    max_queued=limits.max_queued or None,
                    pool=routes.get(tenant.id, "shared"),
                    **figures,
                )
            )
    exec_queues = {get_settings().exec_queue, *routes.values()}
    return {
        "items": items,
        "leader": client.get(LEADER_KEY),
        "exec_queue_depth": {q: exec_queue_depth(client, q) for q in sorted(exec_queues)},
    }


def pause(tenant: Tenant, *, client: redis.Redis | None = None) -> None:
    TenantQueues(client or get_redis()).pause(tenant.id, OPERATOR_PAUSE)


def resume(tenant: Tenant, *, client: redis.Redis | None = None) -> None:
    if tenant.status != "active":
        raise Conflict(
            f"The tenant is {tenant.status}; reactivate it to resume its queue.",
            code="tenant_not_active",
            details={"status": tenant.status},
        )
    TenantQueues(client or get_redis()).resume(tenant.id)
