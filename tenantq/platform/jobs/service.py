"""Job submission and queries. Routes call these; they take the session and tenant explicitly."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import redis
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tenantq.platform import metrics
from tenantq.platform.db import utcnow
from tenantq.platform.errors import Conflict, InvalidInput, ServiceUnavailable
from tenantq.platform.jobs.admission import admit
from tenantq.platform.jobs.models import Job
from tenantq.platform.jobs.repository import JobRepository
from tenantq.platform.jobs.schemas import JobCreate
from tenantq.platform.redis import get_redis
from tenantq.tenants.models import Plan, Tenant
from tenantq.worker.queues import TenantQueues
from tenantq.worker.registry import get_task_type

log = logging.getLogger("tenantq.jobs")


@dataclass
class SubmitResult:
    job: Job
    created: bool


def job_message(job: Job) -> dict[str, Any]:
    """What the dispatcher publishes to Celery: JSON only, the job's own id as the task id."""
    return {
        "task": job.task,
        "args": job.args,
        "task_id": job.id,
        "job": {
            "id": job.id,
            "tenant_id": job.tenant_id,
            "priority": job.priority,
            "max_retries": job.max_retries,
            "attempt_base": job.attempts,
            # Unix times for the worker's wait-time metric (start minus when the job became runnable).
            "submitted_at": job.created_at.timestamp() if job.created_at else None,
            "run_at": job.run_at.timestamp() if job.run_at else None,
        },
    }


def _same_request(job: Job, data: JobCreate) -> bool:
    return job.task == data.task and job.args == data.args and job.priority == data.priority


def validate_submission(session: Session, tenant: Tenant, data: JobCreate) -> tuple[dict[str, Any], int]:
    """Check the request against the registry and the plan; returns (normalised args, max_retries)."""
    spec = get_task_type(data.task)
    if spec is None:
        raise InvalidInput(f"Unknown task type {data.task!r}.", code="unknown_task", details={"task": data.task})
    try:
        model = spec.validate(data.args)
    except ValidationError as exc:
        details = [{"loc": ["args", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        raise InvalidInput(f"Arguments do not match the schema of {data.task!r}.", code="invalid_args",
                           details=details) from None
    plan = session.get(Plan, tenant.plan_name)
    if plan is not None and not (plan.priority_min <= data.priority <= plan.priority_max):
        raise InvalidInput(
            f"Priority {data.priority} is outside the plan's range {plan.priority_min}-{plan.priority_max}.",
            code="priority_not_allowed",
            details={"min": plan.priority_min, "max": plan.priority_max},
        )
    max_retries = data.max_retries if data.max_retries is not None else 0
    if plan is not None and max_retries > plan.max_retries:
        raise InvalidInput(f"max_retries {max_retries} exceeds the plan's {plan.max_retries}.",
                           code="max_retries_not_allowed", details={"max": plan.max_retries})
    return model.model_dump(mode="json", exclude_unset=False), max_retries


def submit_job(session: Session, tenant: Tenant, data: JobCreate, *, client: redis.Redis | None = None) -> SubmitResult:
    repo = JobRepository(session, tenant.id)
    if data.idempotency_key:
        existing = repo.by_idempotency_key(data.idempotency_key)
        if existing is not None:
            if not _same_request(existing, data):
                raise Conflict("This idempotency key was used with different parameters.",
                               code="idempotency_conflict", details={"job_id": existing.id})
            return SubmitResult(existing, created=False)
    args, max_retries = validate_submission(session, tenant, data)
    admit(session, tenant, 1)
    now = utcnow()
    job = Job(
        task=data.task,
        args=data.args,
        priority=data.priority,
        status="scheduled" if data.countdown else "queued",
        idempotency_key=data.idempotency_key,
        max_retries=max_retries,
        created_at=now,
        run_at=now + timedelta(seconds=data.countdown) if data.countdown else None,
    )
    repo.add(job)
    try:
        session.commit()
    except IntegrityError:
        # A concurrent request with the same idempotency key won the race: answer with its job.
        session.rollback()
        if data.idempotency_key:
            existing = repo.by_idempotency_key(data.idempotency_key)
            if existing is not None:
                if not _same_request(existing, data):
                    raise Conflict("This idempotency key was used with different parameters.",
                                   code="idempotency_conflict", details={"job_id": existing.id}) from None
                return SubmitResult(existing, created=False)
        raise
    try:
        enqueue(job, client=client)
    except redis.RedisError as exc:
        # Compensate: the job was never runnable, so it must not exist either.
        log.error("enqueue failed for job %s: %s", job.id, exc)
        session.delete(job)
        session.commit()
        raise ServiceUnavailable("The queue is unavailable; the job was not accepted. Retry later.",
                                 code="queue_unavailable", headers={"Retry-After": "1"}) from None
    return SubmitResult(job, created=True)


def enqueue(job: Job, *, client: redis.Redis | None = None) -> None:
    queues = TenantQueues(client or get_redis())
    message = job_message(job)
    if job.status == "scheduled" and job.run_at is not None:
        queues.schedule(job.tenant_id, job.id, job.priority, message, job.run_at.timestamp())
    else:
        queues.enqueue(job.tenant_id, job.id, job.priority, message)
    metrics.job_submitted(job.tenant_id, job.task, client=queues.r)
