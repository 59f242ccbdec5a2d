"""``webhooks.deliver``: one Celery task per delivery, on the system queue, retried with backoff; and the
finish hook that records a finished job's deliveries (``FINISH_HOOK``, subscribed by the worker).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import exists

from tenantq.core.celery import SYSTEM_QUEUE, app
from tenantq.core.db import unscoped_session
from tenantq.platform.jobs.hooks import AttemptOutcome, FinishHook
from tenantq.platform.webhooks import service
from tenantq.platform.webhooks.models import WebhookEndpoint

DELIVER_TASK = "webhooks.deliver"
SWEEP_TASK = "webhooks.sweep"
SWEEP_EVERY_S = 60.0


@app.task(name=DELIVER_TASK, bind=True, max_retries=None, acks_late=True)
def deliver(self: Any, delivery_id: str) -> dict[str, Any]:
    """Attempt a delivery; schedule the next attempt after the backoff when it failed and may retry.

    The attempt budget lives in the delivery row (``attempts`` vs ``TENANTQ_WEBHOOK_MAX_ATTEMPTS``), not in
    Celery's retry counter, so a redelivered message cannot exceed it.
    """
    with unscoped_session() as session:
        outcome = service.attempt_delivery(session, delivery_id)
    if outcome.outcome == "retry":
        raise self.retry(countdown=outcome.retry_in, max_retries=None)
    return {"delivery_id": delivery_id, "outcome": outcome.outcome, "attempts": outcome.attempt}


def enqueue_delivery(delivery_id: str) -> None:
    app.send_task(DELIVER_TASK, args=[delivery_id], queue=SYSTEM_QUEUE)


@app.task(name=SWEEP_TASK, acks_late=True)
def sweep() -> dict[str, Any]:
    """Re-enqueue deliveries whose task was lost (e.g. Redis was away when the job finished). Safe to run
    from several beats at once: a delivery attempt is claimed in SQL, so duplicates do nothing."""
    with unscoped_session() as session:
        ids = service.stale_deliveries(session)
    for delivery_id in ids:
        enqueue_delivery(delivery_id)
    return {"requeued": len(ids)}


# Run by beat (any scheduler) like any static periodic task of the operator.
app.conf.beat_schedule = {
    **(app.conf.beat_schedule or {}),
    SWEEP_TASK: {"task": SWEEP_TASK, "schedule": SWEEP_EVERY_S, "options": {"queue": SYSTEM_QUEUE}},
}


def _has_endpoints(tenant_id: Any) -> Any:
    """Evaluated in the job's status statement: most tenants have no webhooks, and without this
    hint each finished job would cost a connection check-out and two queries here."""
    return exists().where(WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.enabled.is_(True))


def record_finished_job(outcome: AttemptOutcome) -> None:
    """After the job's final status is committed: record its deliveries, commit, then enqueue them."""
    if not outcome.concerns(FINISH_HOOK.name):
        return
    with unscoped_session() as session:
        delivery_ids = service.record_job_finished(session, outcome.message.id)
    for delivery_id in delivery_ids:
        enqueue_delivery(delivery_id)


FINISH_HOOK = FinishHook(name="webhooks", probe=_has_endpoints, after_commit=record_finished_job)
