"""Completion webhooks: endpoints, events, signed deliveries with retries.

Flow: a worker finishes a job -> the job's status is committed -> our finish hook (``tasks.py``)
creates one ``WebhookDelivery`` per subscribed endpoint, commits, and only then enqueues
``webhooks.deliver`` on the system queue -> the task POSTs the event and records an ``WebhookAttempt``;
a failure or non-2xx answer is retried with exponential backoff (jittered, capped)
up to ``TENANTQ_WEBHOOK_MAX_ATTEMPTS``.

Signing (like Stripe's): header ``tenantq-signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
f"{t}.{body}")>``, plus ``tenantq-event-id`` (the same on every attempt, for deduplication) and
``tenantq-event-type``. Receivers check it with :func:`verify_signature`. Redirects are not followed
(a 3xx counts as a failure) and the URL must pass the operator's network policy at registration and
at every attempt.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import httpx
from sqlalchemy import CursorResult, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tenantq.core.db import new_id, utcnow
from tenantq.core.errors import InvalidInput, TooManyRequests
from tenantq.core.outbound import BlockedDestination, check_url, guarded_client
from tenantq.core.settings import get_settings
from tenantq.platform.jobs.models import Job
from tenantq.platform.jobs.schemas import JobOut
from tenantq.platform.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from tenantq.platform.webhooks.repository import WebhookRepository
from tenantq.platform.webhooks.schemas import URL_PATTERN, WebhookCreate
from tenantq.tenants.accounts.models import Tenant

log = logging.getLogger("tenantq.webhooks")

SIGNATURE_HEADER = "tenantq-signature"
EVENT_ID_HEADER = "tenantq-event-id"
EVENT_TYPE_HEADER = "tenantq-event-type"
MAX_ENDPOINTS_PER_TENANT = 20
MAX_ERROR_CHARS = 2000
JOB_EVENTS = {"succeeded": "job.succeeded", "failed": "job.failed"}
# A task copy may run this much ahead of the planned retry time (clock skew, eta rounding).
EARLY_SLACK = timedelta(seconds=1)
# A pending delivery this far past its planned attempt has lost its task (enqueue failed, message lost):
# the sweeper enqueues it again.
STALE_AFTER = timedelta(minutes=5)


# --- signatures ----------------------------------------------------------------------------------------


def sign(secret: str, body: str | bytes, timestamp: int | None = None) -> str:
    """The ``tenantq-signature`` header value for ``body`` at ``timestamp``."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    raw = body.encode() if isinstance(body, str) else body
    mac = hmac.new(secret.encode(), f"{t}.".encode() + raw, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify_signature(
    secret: str, header: str | None, body: str | bytes, tolerance: float = 300, now: float | None = None
) -> bool:
    """True if ``header`` signs ``body`` (the raw request body) with ``secret`` within ``tolerance`` seconds.

    The timestamp bound stops replays of old requests; several ``v1=`` values are accepted (any match).
    """
    if not header:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    raw = body.encode() if isinstance(body, str) else body
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + raw, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, c) for c in candidates)


# --- endpoints (tenant-scoped, through WebhookRepository) ----------------------------------------------


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def create_endpoint(session: Session, tenant: Tenant, data: WebhookCreate) -> tuple[WebhookEndpoint, str]:
    if not re.fullmatch(URL_PATTERN, data.url):
        raise InvalidInput(
            "Webhook URL not allowed: give an http:// or https:// URL with a host, without credentials "
            "or white space.",
            code="webhook_url_not_allowed",
            details={"url": data.url},
        )
    try:
        check_url(data.url)
    except (ValueError, BlockedDestination) as exc:
        raise InvalidInput(
            f"Webhook URL not allowed: {exc}", code="webhook_url_not_allowed", details={"url": data.url}
        ) from None
    repo = WebhookRepository(session, tenant.id)
    if len(repo.list()) >= MAX_ENDPOINTS_PER_TENANT:
        raise TooManyRequests(
            f"A tenant may register at most {MAX_ENDPOINTS_PER_TENANT} webhooks.",
            code="webhook_limit_reached",
            details={"max": MAX_ENDPOINTS_PER_TENANT},
        )
    secret = new_secret()
    endpoint = WebhookEndpoint(
        url=data.url,
        events=sorted(set(data.events)),
        description=data.description,
        secret=secret,
        enabled=True,
        created_at=utcnow(),
    )
    repo.add(endpoint)
    session.flush()
    return endpoint, secret


def delete_endpoint(session: Session, tenant: Tenant, endpoint_id: str) -> None:
    endpoint = WebhookRepository(session, tenant.id).get(endpoint_id)
    session.delete(endpoint)
    session.flush()


# --- events (system side: worker) ------------------------------------------------------------------------


def event_id_for(job: Job, event_type: str) -> str:
    # Deterministic: the same finish of the same attempt always has the same id (duplicate signals and
    # redeliveries dedupe on it); a re-run of the job that finishes again is a new event.
    digest = hashlib.sha256(f"{job.id}:{event_type}:{job.attempts}".encode()).hexdigest()[:24]
    return f"evt_{digest}"


def job_event(job: Job, event_type: str) -> tuple[str, str]:
    """(event id, JSON body) for a finished job."""
    event_id = event_id_for(job, event_type)
    payload = {
        "id": event_id,
        "type": event_type,
        "created_at": (job.finished_at or utcnow()).isoformat(),
        "data": {"job": JobOut.model_validate(job).model_dump(mode="json")},
    }
    return event_id, json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str)


def record_job_finished(session: Session, job_id: str) -> list[str]:
    """Create the deliveries for a finished job and commit; returns the ids to enqueue (new ones only)."""
    job = session.get(Job, job_id)
    if job is None or job.status not in JOB_EVENTS:
        return []
    event_type = JOB_EVENTS[job.status]
    endpoints = [
        e
        for e in session.scalars(
            select(WebhookEndpoint).where(
                WebhookEndpoint.tenant_id == job.tenant_id, WebhookEndpoint.enabled.is_(True)
            )
        )
        if event_type in e.events
    ]
    if not endpoints:
        return []
    event_id, body = job_event(job, event_type)
    seen = set(
        session.scalars(
            select(WebhookDelivery.endpoint_id).where(
                WebhookDelivery.event_id == event_id,
                WebhookDelivery.endpoint_id.in_([e.id for e in endpoints]),
            )
        )
    )
    created: list[str] = []
    now = utcnow()
    for endpoint in endpoints:
        if endpoint.id in seen:
            continue  # this event was already recorded for this endpoint (duplicate signal)
        delivery = WebhookDelivery(
            id=new_id(),
            tenant_id=job.tenant_id,
            endpoint_id=endpoint.id,
            event_id=event_id,
            event_type=event_type,
            job_id=job.id,
            body=body,
            status="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
        session.add(delivery)
        created.append(delivery.id)
    try:
        session.commit()
    except IntegrityError:
        # A concurrent duplicate signal recorded the same event first; it enqueues the deliveries.
        session.rollback()
        return []
    return created


# --- delivery (system side: webhooks.deliver task) -------------------------------------------------------


@dataclass
class AttemptOutcome:
    outcome: str  # "succeeded" | "retry" | "failed" | "gone" | "not_due"
    attempt: int
    retry_in: float | None = None


def backoff(attempt: int) -> float:
    """Delay after failed attempt number ``attempt`` (1-based): base * 2**(attempt-1), capped, jittered
    within [50%, 100%] so that a receiver's outage does not end in a synchronized stampede."""
    settings = get_settings()
    ceiling = min(
        settings.webhook_backoff_max_seconds, settings.webhook_backoff_base_seconds * 2 ** (attempt - 1)
    )
    return ceiling * random.uniform(0.5, 1.0)


def attempt_delivery(session: Session, delivery_id: str) -> AttemptOutcome:
    """Make one attempt of a delivery and record it."""
    settings = get_settings()
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None or delivery.status != "pending":
        return AttemptOutcome("gone", 0)
    endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
    if endpoint is None:
        return AttemptOutcome("gone", delivery.attempts)
    now = utcnow()
    if delivery.next_attempt_at is not None and delivery.next_attempt_at - now > EARLY_SLACK:
        # A duplicate message (re-enqueued by the sweeper, or redelivered) ahead of the planned retry.
        return AttemptOutcome("not_due", delivery.attempts)
    number = delivery.attempts + 1
    # Claim this attempt number before sending, so two copies of the task never make the same attempt;
    # while it is in flight, next_attempt_at keeps the sweeper away.
    # An UPDATE's result is a CursorResult (with rowcount); Session.execute is typed as returning Result.
    claimed = cast(
        CursorResult[Any],
        session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery.id,
                WebhookDelivery.attempts == delivery.attempts,
                WebhookDelivery.status == "pending",
            )
            .values(
                attempts=number,
                next_attempt_at=now + timedelta(seconds=settings.webhook_timeout_seconds) + STALE_AFTER,
            )
            .execution_options(synchronize_session=False)
        ),
    )
    session.commit()
    if claimed.rowcount != 1:
        return AttemptOutcome("not_due", delivery.attempts)
    session.refresh(delivery)
    status_code: int | None = None
    error: str | None = None
    final = False
    started = time.monotonic()
    headers = {
        "content-type": "application/json",
        "user-agent": "tenantq-webhooks/1",
        SIGNATURE_HEADER: sign(endpoint.secret, delivery.body),
        EVENT_ID_HEADER: delivery.event_id,
        EVENT_TYPE_HEADER: delivery.event_type,
    }
    try:
        # Streamed: only the start of the answer is kept, however much the receiver sends.
        with (
            guarded_client(timeout=settings.webhook_timeout_seconds, follow_redirects=False) as client,
            client.stream("POST", endpoint.url, content=delivery.body.encode(), headers=headers) as response,
        ):
            status_code = response.status_code
            if not 200 <= status_code < 300:
                head = b""
                for chunk in response.iter_bytes():
                    head += chunk
                    if len(head) >= 500:
                        break
                error = f"HTTP {status_code}: {head[:500].decode(errors='replace')}"
    except BlockedDestination as exc:
        error, final = str(exc), True  # the policy refuses this address: retrying cannot help
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc or 'request failed'}"
    duration_ms = round((time.monotonic() - started) * 1000, 1)
    now = utcnow()
    session.add(
        WebhookAttempt(
            delivery_id=delivery.id,
            attempt=number,
            status_code=status_code,
            error=error[:MAX_ERROR_CHARS] if error else None,
            duration_ms=duration_ms,
            created_at=now,
        )
    )
    if error is None:
        delivery.status, delivery.finished_at, delivery.next_attempt_at = "succeeded", now, None
        result = AttemptOutcome("succeeded", number)
    elif final or number >= settings.webhook_max_attempts:
        delivery.status, delivery.finished_at, delivery.next_attempt_at = "failed", now, None
        result = AttemptOutcome("failed", number)
    else:
        delay = backoff(number)
        delivery.next_attempt_at = now + timedelta(seconds=delay)
        result = AttemptOutcome("retry", number, delay)
    session.commit()
    log.info(
        "webhook delivery %s attempt %s -> %s (%s)",
        delivery.id,
        number,
        result.outcome,
        status_code if status_code is not None else error,
    )
    return result


def stale_deliveries(session: Session, now: datetime | None = None, limit: int = 500) -> list[str]:
    """Pending deliveries whose planned attempt is overdue by ``STALE_AFTER``: their task was lost."""
    cutoff = (now or utcnow()) - STALE_AFTER
    return list(
        session.scalars(
            select(WebhookDelivery.id)
            .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at < cutoff)
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
        )
    )
