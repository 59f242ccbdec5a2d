"""Usage read by the tenant: the current period's usage against every quota of its plan (``GET /v1/usage``).

Enforcement (the admission check, the Redis counters and their reconciliation with SQL) is in
``quotas``; this module only reads.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import redis
from sqlalchemy.orm import Session

from tenantq.billing.usage import quotas
from tenantq.billing.usage.repository import UsageRepository
from tenantq.core.keys import quota_compute_key, quota_jobs_key
from tenantq.core.periods import current_period, period_bounds
from tenantq.core.redis import get_redis
from tenantq.platform.jobs.models import Job
from tenantq.platform.jobs.repository import JobRepository
from tenantq.tenants.accounts.models import Tenant


def usage_summary(session: Session, tenant: Tenant, now: datetime | None = None) -> dict[str, Any]:
    """The current period's usage against every quota of the tenant's plan."""
    period = current_period(now)
    start, end = period_bounds(period)
    limits = quotas.quota_limits(session, tenant)
    resets_at = quotas.resets_at(period)
    try:
        client = get_redis()
        quotas.ensure_counters(client, session, tenant.id, period)
        raw_jobs, raw_cpu = client.mget(
            [quota_jobs_key(tenant.id, period), quota_compute_key(tenant.id, period)]
        )
        jobs_used, cpu_ms = int(raw_jobs or 0), int(raw_cpu or 0)
    except redis.RedisError:  # Redis is a cache of SQL here: answer from SQL
        jobs_used = quotas.sql_jobs_used(session, tenant.id, period).get(tenant.id, 0)
        cpu_ms = UsageRepository(session, tenant.id).metric_total("compute_ms", start, end)
    tenant_jobs = JobRepository(session, tenant.id)
    running = tenant_jobs.count(Job.status == "running")
    queued = tenant_jobs.count(Job.status.in_(("queued", "scheduled")))
    return {
        "period": {
            "start": start.isoformat().replace("+00:00", "Z"),
            "end": end.isoformat().replace("+00:00", "Z"),
        },
        "quotas": [
            {
                "name": "jobs",
                "used": jobs_used,
                "limit": limits.jobs,
                "unit": "jobs",
                "hard": limits.hard,
                "resets_at": resets_at,
            },
            {
                "name": "compute_seconds",
                "used": float(Decimal(cpu_ms) / 1000),
                "limit": limits.compute_seconds,
                "unit": "seconds",
                "hard": limits.hard,
                "resets_at": resets_at,
            },
            {
                "name": "concurrent_jobs",
                "used": int(running),
                "limit": limits.concurrency,
                "unit": "jobs",
                "hard": True,
                "resets_at": None,
            },
            {
                "name": "queued_jobs",
                "used": int(queued),
                "limit": limits.max_queued,
                "unit": "jobs",
                "hard": True,
                "resets_at": None,
            },
        ],
    }
