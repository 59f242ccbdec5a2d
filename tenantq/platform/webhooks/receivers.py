"""Worker side of completion webhooks: a ``task_postrun`` receiver, connected from ``tenantq.worker``.

It runs after :mod:`tenantq.worker.signals` (connected first), so the job's final status is already
committed when this reads it. It records the deliveries, commits, and only then enqueues
``webhooks.deliver`` tasks. It never raises: webhooks must not disturb job execution.
When the status transaction that just finished the attempt in this process saw no enabled endpoint
for the tenant (``lifecycle.webhooks_possible``), there is nothing to record and it skips the SQL.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from tenantq.core.db import unscoped_session
from tenantq.platform.jobs.registry import REGISTRY
from tenantq.platform.webhooks.service import record_job_finished
from tenantq.platform.webhooks.tasks import enqueue_delivery

log = logging.getLogger("tenantq.webhooks")


@signals.task_postrun.connect
def on_job_finished(
    task_id: str, task: Any, kwargs: dict | None = None, state: str | None = None, **_: Any
) -> None:
    # Only tenant jobs (registered task types), and only final outcomes: RETRY is not an event.
    if getattr(task, "name", None) not in REGISTRY or state not in ("SUCCESS", "FAILURE"):
        return
    job = (kwargs or {}).get("job")
    if not isinstance(job, dict) or "id" not in job:
        return
    from tenantq.platform.jobs.lifecycle import webhooks_possible

    if not webhooks_possible(job):
        return  # the status transaction just saw no enabled endpoint for this tenant: nothing to record
    try:
        with unscoped_session() as session:
            delivery_ids = record_job_finished(session, job["id"])
        for delivery_id in delivery_ids:
            enqueue_delivery(delivery_id)
    except Exception:  # webhooks must never disturb job execution
        log.exception("webhooks: could not record/enqueue events for job %s", job.get("id"))
