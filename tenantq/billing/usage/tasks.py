"""Periodic usage upkeep, run by beat on the system queue.

The flusher process runs the same two jobs in its loop; beat runs them too so usage stays correct when
flushers are scaled to zero or only the Celery side is deployed. Both are idempotent.
"""

from __future__ import annotations

from tenantq.billing.usage.metering import Meter
from tenantq.billing.usage.quotas import sync_counters_from_sql
from tenantq.core.celery import SYSTEM_QUEUE, app

RECONCILE_EVERY_S = 30.0
QUOTA_SYNC_EVERY_S = 300.0


@app.task(name="billing.reconcile_usage")
def reconcile_usage() -> int:
    """Close attempts whose worker died without reporting (billed as ``lost``)."""
    return Meter().reconcile()


@app.task(name="billing.sync_quota_counters")
def sync_quota_counters() -> int:
    """Reset the current period's Redis quota counters from SQL."""
    return sync_counters_from_sql()


app.conf.beat_schedule.update(
    {
        "billing.reconcile_usage": {
            "task": "billing.reconcile_usage",
            "schedule": RECONCILE_EVERY_S,
            "options": {"queue": SYSTEM_QUEUE, "expires": RECONCILE_EVERY_S},
        },
        "billing.sync_quota_counters": {
            "task": "billing.sync_quota_counters",
            "schedule": QUOTA_SYNC_EVERY_S,
            "options": {"queue": SYSTEM_QUEUE, "expires": QUOTA_SYNC_EVERY_S},
        },
    }
)
