"""System work for jobs: result expiry (a Celery task on the system queue) and the SQL side of the
dispatcher's lost-job reconciler."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select

from tenantq.core.celery import SYSTEM_QUEUE, app
from tenantq.core.db import unscoped_session
from tenantq.platform.dispatch.dispatcher import Chore, QueuedJob
from tenantq.platform.jobs.models import Job
from tenantq.platform.jobs.outcomes import Settler
from tenantq.platform.jobs.service import job_message, purge_expired_results

log = logging.getLogger("tenantq.jobs")

PURGE_EVERY_SECONDS = 3600.0


@app.task(name="jobs.purge_expired_results")
def purge_expired_results_task() -> int:
    """Null results past their plan's expiry. The API hides them already; this frees the space."""
    with unscoped_session() as session:
        count = purge_expired_results(session)
    if count:
        log.info("purged %s expired job results", count)
    return count


# Beat runs it hourly; a static entry, merged by any scheduler that honours app.conf.beat_schedule.
app.conf.beat_schedule.setdefault(
    "jobs.purge_expired_results",
    {
        "task": "jobs.purge_expired_results",
        "schedule": PURGE_EVERY_SECONDS,
        "options": {"queue": SYSTEM_QUEUE},
    },
)


def queued_before(cutoff: datetime, limit: int) -> list[QueuedJob]:
    """Jobs SQL holds as ``queued`` since before ``cutoff``, oldest first: what the dispatcher's
    reconciler checks against Redis (``Dispatcher.requeue_lost_sql_jobs``)."""
    with unscoped_session() as session:
        jobs = session.scalars(
            select(Job)
            .where(Job.status == "queued", Job.created_at < cutoff)
            .order_by(Job.created_at)
            .limit(limit)
        )
        return [QueuedJob(job.tenant_id, job.id, job.priority, job_message(job)) for job in jobs]


def dispatcher_chores() -> list[Chore]:
    """The jobs layer's periodic work, run by the leading dispatcher (``tenantq dispatcher``)."""
    return [Chore("settle_outcomes", 1.0, Settler())]
