"""Queue operations: batch submission, per-tenant queue figures, operator pause/resume/purge/pools."""

from __future__ import annotations

import logging
from typing import Any

import redis
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tenantq.core import keys
from tenantq.core.db import utcnow
from tenantq.core.errors import Conflict, ServiceUnavailable, TenantqError
from tenantq.core.redis import get_redis
from tenantq.platform.dispatch import routing
from tenantq.platform.dispatch.dispatcher import LEADER_KEY, exec_queue_depth
from tenantq.platform.dispatch.limits import TenantLimits, limits_for, percentile, recent_waits
from tenantq.platform.dispatch.queues import PAUSED_WHY, TenantQueues
from tenantq.platform.dispatch.schemas import AdminQueueOut, BatchItem, BatchItemError, QueueOut, WaitStats
from tenantq.platform.jobs.admission import admit
from tenantq.platform.jobs.models import Job
from tenantq.platform.jobs.repository import JobRepository
from tenantq.platform.jobs.schemas import JobCreate, JobOut
from tenantq.platform.jobs.service import _same_request, job_message, new_job, submit_job
from tenantq.tenants.accounts.models import Tenant

log = logging.getLogger("tenantq.queue")

OPERATOR_PAUSE = "operator_pause"


def _error_item(index: int, exc: TenantqError) -> BatchItem:
    return BatchItem(
        index=index,
        status_code=exc.status_code,
        error=BatchItemError(code=exc.code, message=exc.message, details=exc.details),
    )


def submit_batch(
    session: Session, tenant: Tenant, raw_jobs: list[dict[str, Any]], *, client: redis.Redis | None = None
) -> list[BatchItem]:
    """Validate each job on its own, insert the accepted ones in one transaction and enqueue them in one
    Redis call. Admission (suspension, queue bound, quotas) applies to the batch as a whole: a batch that
    would overflow the queue is refused entirely rather than cut at an arbitrary index."""
    repo = JobRepository(session, tenant.id)
    answers: dict[int, BatchItem] = {}
    accepted: list[tuple[int, JobCreate, Job]] = []
    now = utcnow()
    seen_keys: dict[str, int] = {}
    for index, raw in enumerate(raw_jobs):
        try:
            data = JobCreate.model_validate(raw)
        except ValidationError as exc:
            details = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
            answers[index] = BatchItem(
                index=index,
                status_code=422,
                error=BatchItemError(
                    code="validation_error",
                    message="The job does not match the JobCreate schema.",
                    details=details,
                ),
            )
            continue
        try:
            if data.idempotency_key:
                if data.idempotency_key in seen_keys:
                    raise Conflict(
                        "This idempotency key appears twice in the batch.",
                        code="idempotency_conflict",
                        details={"first_index": seen_keys[data.idempotency_key]},
                    )
                seen_keys[data.idempotency_key] = index
                existing = repo.by_idempotency_key(data.idempotency_key)
                if existing is not None:
                    if not _same_request(existing, data):
                        raise Conflict(
                            "This idempotency key was used with different parameters.",
                            code="idempotency_conflict",
                            details={"job_id": existing.id},
                        )
                    answers[index] = BatchItem(
                        index=index, status_code=200, job=JobOut.model_validate(existing)
                    )
                    continue
            # The same validation and row as POST /v1/jobs (retry policy, time limits, countdown).
            job = new_job(session, tenant, data, now=now)
        except TenantqError as exc:
            answers[index] = _error_item(index, exc)
            continue
        accepted.append((index, data, job))
    if accepted:
        admit(session, tenant, len(accepted))
        rows: list[tuple[int, Job]] = []
        for index, _data, job in accepted:
            repo.add(job)
            rows.append((index, job))
        try:
            session.commit()
        except IntegrityError:
            # A concurrent request took one of the idempotency keys: fall back to one by one, which
            # answers each item exactly as POST /v1/jobs would.
            session.rollback()
            for index, data, _job in accepted:
                try:
                    result = submit_job(session, tenant, data, client=client)
                    answers[index] = BatchItem(
                        index=index,
                        status_code=202 if result.created else 200,
                        job=JobOut.model_validate(result.job),
                    )
                except TenantqError as exc:
                    answers[index] = _error_item(index, exc)
            return [answers[i] for i in sorted(answers)]
        try:
            enqueue_jobs([job for _, job in rows], client=client)
        except redis.RedisError as exc:
            log.error("batch enqueue failed for tenant %s: %s", tenant.id, exc)
            for _, job in rows:
                session.delete(job)
            session.commit()
            raise ServiceUnavailable(
                "The queue is unavailable; no job of the batch was accepted. Retry later.",
                code="queue_unavailable",
                headers={"Retry-After": "1"},
            ) from None
        for index, job in rows:
            answers[index] = BatchItem(index=index, status_code=202, job=JobOut.model_validate(job))
    return [answers[i] for i in sorted(answers)]


def enqueue_jobs(jobs: list[Job], *, client: redis.Redis | None = None) -> None:
    """Make committed jobs runnable: immediate ones in one Lua call per tenant, delayed ones pipelined."""
    queues = TenantQueues(client or get_redis())
    by_tenant: dict[str, list[tuple[str, int, dict[str, Any]]]] = {}
    for job in jobs:
        if job.status == "scheduled" and job.run_at is not None:
            queues.schedule(job.tenant_id, job.id, job.priority, job_message(job), job.run_at.timestamp())
        else:
            by_tenant.setdefault(job.tenant_id, []).append((job.id, job.priority, job_message(job)))
    for tenant_id, items in by_tenant.items():
        queues.enqueue_many(tenant_id, items)


def _figures(client: redis.Redis, tenant_id: str, limits: TenantLimits, paused: bool) -> dict[str, Any]:
    queues = TenantQueues(client)
    waits = recent_waits(client, tenant_id)
    return dict(
        depth=queues.depth(tenant_id),
        running=queues.running(tenant_id),
        concurrency_limit=limits.concurrency or None,
        rate_limit=limits.exec_rate or None,
        paused=paused,
        recent_wait_ms=WaitStats(p50=percentile(waits, 50), p95=percentile(waits, 95)),
    )


def queue_stats(session: Session, tenant: Tenant, *, client: redis.Redis | None = None) -> QueueOut:
    client = client or get_redis()
    paused = bool(client.sismember(keys.PAUSED, tenant.id))
    return QueueOut(**_figures(client, tenant.id, limits_for(session, tenant), paused))


def admin_queues(session: Session, *, client: redis.Redis | None = None) -> dict[str, Any]:
    """Every tenant that has something queued, running or paused."""
    client = client or get_redis()
    queues = TenantQueues(client)
    paused = queues.paused()
    why = client.hgetall(PAUSED_WHY)
    routes = routing.routes(client)
    running = {
        k.removeprefix(keys.LEASE_PREFIX) for k in client.scan_iter(match=keys.LEASE_PREFIX + "*", count=1000)
    }
    ids = set(queues.active_tenants()) | paused | running
    items: list[AdminQueueOut] = []
    if ids:
        tenants = session.scalars(
            select(Tenant).where(Tenant.id.in_(sorted(ids))).order_by(Tenant.name)
        ).all()
        for tenant in tenants:
            limits = limits_for(session, tenant)
            figures = _figures(client, tenant.id, limits, tenant.id in paused)
            items.append(
                AdminQueueOut(
                    tenant_id=tenant.id,
                    tenant_name=tenant.name,
                    paused_reason=why.get(tenant.id),
                    weight=limits.weight,
                    max_queued=limits.max_queued or None,
                    pool=routes.get(tenant.id, "shared"),
                    **figures,
                )
            )
    from tenantq.core.settings import get_settings

    exec_queues = {get_settings().exec_queue, *routes.values()}
    return {
        "items": items,
        "leader": client.get(LEADER_KEY),
        "exec_queue_depth": {q: exec_queue_depth(client, q) for q in sorted(exec_queues)},
    }


def pause(tenant: Tenant, *, client: redis.Redis | None = None) -> None:
    TenantQueues(client or get_redis()).pause(tenant.id, OPERATOR_PAUSE)


def resume(tenant: Tenant, *, client: redis.Redis | None = None) -> None:
    if tenant.status != "active":
        raise Conflict(
            f"The tenant is {tenant.status}; reactivate it to resume its queue.",
            code="tenant_not_active",
            details={"status": tenant.status},
        )
    TenantQueues(client or get_redis()).resume(tenant.id)


def purge(session: Session, tenant: Tenant, *, client: redis.Redis | None = None) -> int:
    """Drop every waiting job of the tenant; the SQL rows become ``cancelled`` (nothing silently vanishes)."""
    ids = TenantQueues(client or get_redis()).purge(tenant.id)
    now = utcnow()
    for i in range(0, len(ids), 500):
        session.execute(
            update(Job)
            .where(Job.tenant_id == tenant.id, Job.id.in_(ids[i : i + 500]), Job.status == "queued")
            .values(status="cancelled", finished_at=now, error="Purged from the queue by the operator.")
        )
    session.commit()
    return len(ids)
