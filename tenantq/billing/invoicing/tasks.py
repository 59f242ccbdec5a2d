"""Celery tasks for invoicing and Stripe (system queue). Tasks take ids and open their own session.

- ``billing.close_due_periods`` (beat, hourly): closes every month whose grace window has passed, then
  queues a Stripe sync per new invoice when Stripe is configured.
- ``billing.stripe_sync_invoice``: pushes one invoice to Stripe; retried with backoff on Stripe errors
  (safe: the sync is idempotent).
- ``billing.stripe_event``: applies one stored webhook event (idempotent).
- ``billing.stripe_event_sweep`` (beat, every 5 minutes): applies events whose task was never queued
  (broker down when the webhook arrived) so a delivery Stripe saw acknowledged is never lost.
- ``billing.stripe_meter_events`` (beat, every minute): streams usage as Billing Meter events when
  ``TENANTQ_STRIPE_METERS`` is set; a no-op otherwise.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from celery.schedules import crontab
from sqlalchemy import select

from tenantq.billing.invoicing.models import Invoice, StripeEvent
from tenantq.billing.invoicing.service import close_due_periods
from tenantq.billing.invoicing.stripe_sync import (
    StripeSyncError,
    process_event,
    stream_meter_events,
    stripe_client,
    stripe_configured,
    sync_invoice,
)
from tenantq.core.celery import SYSTEM_QUEUE, app
from tenantq.core.db import unscoped_session, utcnow
from tenantq.core.settings import get_settings

log = logging.getLogger("tenantq.billing")

SWEEP_AFTER = timedelta(minutes=2)


@app.task(name="billing.close_due_periods")
def close_due_periods_task() -> list[str]:
    closed = close_due_periods()
    if closed and stripe_configured():
        with unscoped_session() as session:
            ids = list(
                session.scalars(
                    select(Invoice.id).where(
                        Invoice.period.in_(closed), Invoice.stripe_invoice_id.is_(None), Invoice.total > 0
                    )
                )
            )
        for invoice_id in ids:
            stripe_sync_invoice.apply_async(args=(invoice_id,), queue=SYSTEM_QUEUE)
    if closed:
        log.info("closed billing periods %s", ", ".join(closed))
    return closed


@app.task(name="billing.stripe_sync_invoice", bind=True, max_retries=8)
def stripe_sync_invoice(self, invoice_id: str) -> dict:
    try:
        with unscoped_session() as session:
            invoice = session.get(Invoice, invoice_id)
            if invoice is None:
                return {"invoice_id": invoice_id, "skipped": "unknown_invoice"}
            return sync_invoice(session, stripe_client(), invoice).as_dict()
    except StripeSyncError as exc:
        raise self.retry(exc=exc, countdown=min(3600, 30 * 2**self.request.retries)) from None


@app.task(name="billing.stripe_event")
def stripe_event(event_id: str) -> str:
    with unscoped_session() as session:
        return process_event(session, event_id)


@app.task(name="billing.stripe_event_sweep")
def stripe_event_sweep() -> int:
    with unscoped_session() as session:
        ids = list(
            session.scalars(
                select(StripeEvent.id)
                .where(StripeEvent.processed_at.is_(None), StripeEvent.received_at < utcnow() - SWEEP_AFTER)
                .order_by(StripeEvent.received_at)
                .limit(500)
            )
        )
    for event_id in ids:
        with unscoped_session() as session:
            process_event(session, event_id)
    return len(ids)


@app.task(name="billing.stripe_meter_events")
def stripe_meter_events() -> dict:
    if not (stripe_configured() and get_settings().stripe_meters):
        return {"skipped": "not_configured"}
    with unscoped_session() as session:
        return stream_meter_events(session, stripe_client()).as_dict()


app.conf.beat_schedule.update(
    {
        "billing.close_due_periods": {
            "task": "billing.close_due_periods",
            "schedule": crontab(minute=7),
            "options": {"queue": SYSTEM_QUEUE},
        },
        "billing.stripe_event_sweep": {
            "task": "billing.stripe_event_sweep",
            "schedule": 300.0,
            "options": {"queue": SYSTEM_QUEUE},
        },
        "billing.stripe_meter_events": {
            "task": "billing.stripe_meter_events",
            "schedule": 60.0,
            "options": {"queue": SYSTEM_QUEUE},
        },
    }
)
