"""Data shapes of the per-tenant queues (Redis, no SQL tables): what a release hands the dispatcher."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Released:
    """A job the release step took off its tenant's queue: publish ``message`` to Celery."""

    job_id: str
    token: str
    message: dict[str, Any]


# Outcomes of TenantQueues.release() other than a Released job.
EMPTY, AT_CAP, NOT_LEADER, PAUSED_CODE, RATE_LIMITED, STALE = -1, -2, -3, -4, -5, 0
# The tenant used up its hard compute quota: its queued jobs are held (not released) until the period
# ends or the limit is raised.
HELD = -6
