"""System work for jobs: result expiry (a Celery task on the system queue), the SQL side of the
dispatcher's lost-job reconciler, and the dispatcher's chores: settling outcomes kept in Redis during a
database outage (``outcomes``) and sweeping the submission outbox (``outbox``)."""

from __future__ import annotations

import logging
import time
from datetime import datetime

from sqlalchemy import select

from tenantq.core.celery import SYSTEM_QUEUE, app
from tenantq.core.db import unscoped_session
from tenantq.core.redis import get_redis
from tenantq.platform.dispatch.dispatcher import Chore, QueuedJob
from tenantq.platform.dispatch.repository import DISPATCHED_AT, TenantQueues
from tenantq.platform.jobs import outbox
from tenantq.platform.jobs.models import Job
from tenantq.platform.jobs.outcomes import Settler
from tenantq.platform.jobs.service import enqueue, job_message, next_attempt, purge_expired_results

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
    reconciler checks against Redis (``Dispatcher.requeue_lost_sql_jobs``). Each message is for the
    job's next attempt as a re-run or the outbox sweep numbers it (``next_attempt``): a re-run of a job
    cancelled before it started must step past the cancelled attempt's marker, or it never runs."""
    client = get_redis()
    with unscoped_session() as session:
        jobs = session.scalars(
            select(Job)
            .where(Job.status == "queued", Job.created_at < cutoff)
            .order_by(Job.created_at)
            .limit(limit)
        )
        found = []
        for job in jobs:
            attempt, first_run = next_attempt(job, client)
            message = job_message(job, attempt=attempt, first_attempt=attempt, first_run=first_run)
            found.append(QueuedJob(job.tenant_id, job.id, job.priority, message))
        return found


def dispatcher_chores() -> list[Chore]:
    """The jobs layer's periodic work, run by the leading dispatcher (``tenantq dispatcher``)."""
    return [
        Chore("settle_outcomes", 1.0, Settler()),
        Chore("sweep_outbox", outbox.SWEEP_EVERY_S, sweep_outbox),
    ]


def sweep_outbox(limit: int = 500) -> int:
    """Queue the jobs a creator committed but never enqueued (see ``outbox``). Returns how many."""
    client = get_redis()
    notes = outbox.due(client, limit)
    if not notes:
        return 0
    ids = [job_id for job_id, _ in notes]
    with unscoped_session() as session:
        jobs = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(ids)))}
    queues = TenantQueues(client)
    published = client.hmget(DISPATCHED_AT, ids)
    now = time.time()
    done: list[str] = []
    queued = 0
    for (job_id, noted_at), dispatched in zip(notes, published, strict=True):
        job = jobs.get(job_id)
        if job is None:
            if now - noted_at > outbox.ABANDON_AFTER_S:
                done.append(job_id)  # never committed (rolled back, or a lost idempotency race)
            continue
        done.append(job_id)
        if job.status not in ("queued", "scheduled"):
            continue  # running or finished
        if dispatched is not None and float(dispatched) >= noted_at:
            # Published since the note: waiting in an execution queue. A publish from before the note
            # is a previous attempt's (a re-run of a job cancelled while it waited in Celery).
            continue
        if queues.is_pending(job.tenant_id, job.id):
            continue  # the enqueue happened (it takes the note away; the sweep read the note first)
        attempt, first_run = next_attempt(job, client)
        enqueue(job, client=client, attempt=attempt, first_attempt=attempt, first_run=first_run)
        queued += 1
        log.warning("outbox: job %s was committed but never enqueued; queued now", job.id)
    outbox.clear(client, done)
    return queued
