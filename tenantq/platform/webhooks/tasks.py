"""``webhooks.deliver``: one Celery task per delivery, on the system queue, retried with backoff."""

from __future__ import annotations

from typing import Any

from tenantq.platform.db import system_session
from tenantq.platform.webhooks import service
from tenantq.worker.celery_app import SYSTEM_QUEUE, app

DELIVER_TASK = "webhooks.deliver"


@app.task(name=DELIVER_TASK, bind=True, max_retries=None, acks_late=True)
def deliver(self: Any, delivery_id: str) -> dict[str, Any]:
    """Attempt a delivery; schedule the next attempt after the backoff when it failed and may retry.

    The attempt budget lives in the delivery row (``attempts`` vs ``TENANTQ_WEBHOOK_MAX_ATTEMPTS``), not in
    Celery's retry counter, so a redelivered message cannot exceed it.
    """
    with system_session() as session:
        outcome = service.attempt_delivery(session, delivery_id)
    if outcome.outcome == "retry":
        raise self.retry(countdown=outcome.retry_in, max_retries=None)
    return {"delivery_id": delivery_id, "outcome": outcome.outcome, "attempts": outcome.attempt}


def enqueue_delivery(delivery_id: str) -> None:
    app.send_task(DELIVER_TASK, args=[delivery_id], queue=SYSTEM_QUEUE)
