"""HTTP routes for jobs, task types and the operator's queue purge: parse, call the service, return a
schema."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from tenantq.core.db import session_factory
from tenantq.core.dependencies import CursorQuery, SessionDep
from tenantq.core.openapi import errors
from tenantq.platform.jobs import service
from tenantq.platform.jobs.models import TERMINAL_STATUSES
from tenantq.platform.jobs.registry import all_task_types
from tenantq.platform.jobs.repository import JobRepository
from tenantq.platform.jobs.schemas import (
    EVENTS_KEEPALIVE_SECONDS,
    MAX_BATCH,
    WAIT_MAX_SECONDS,
    BatchCreate,
    BatchOut,
    CancelOut,
    JobCreate,
    JobList,
    JobOut,
    JobProgressEvent,
    JobStatus,
    JobStatusEvent,
    PurgeOut,
    TaskTypeOut,
)
from tenantq.platform.jobs.views import job_views
from tenantq.platform.jobs.waiters import get_hub
from tenantq.tenants.access.auth import TenantContext
from tenantq.tenants.access.dependencies import (
    CurrentTenant,
    JobsRead,
    JobsWrite,
    Operator,
    RequireScopeReleased,
)
from tenantq.tenants.accounts.service import get_tenant

# No prefix: the operator's queue purge (under /admin/v1) is served here too, because it cancels jobs.
router = APIRouter()

# What admission answers for new work (a submission, a batch, a re-run).
SUBMIT_ERRORS = errors(
    402,
    429,
    503,
    s429="The submission rate limit (code `rate_limited`) or the queue's size (code `queue_full`) is "
    "reached, or too many failed credentials (code `too_many_auth_failures`). `Retry-After` says when to "
    "retry.",
    s503="The queue or the rate limiter is unavailable (code `queue_unavailable`); the job was not "
    "accepted. Retry after `Retry-After` seconds.",
)


@router.post(
    "/v1/jobs",
    tags=["jobs"],
    response_model=JobOut,
    status_code=202,
    summary="Submit a job",
    description="Validates the arguments against the task type's schema and queues the job on the tenant's "
    "own queue. Answers 202 with the new job, or 200 with the existing job when the idempotency key was "
    "already used with the same parameters (409 if the parameters differ).",
    responses={
        200: {
            "model": JobOut,
            "description": "The existing job of this idempotency key (nothing new queued).",
        },
        **SUBMIT_ERRORS,
        **errors(
            409, s409="The idempotency key was used with other parameters (code `idempotency_conflict`)."
        ),
    },
)
def create_job(body: JobCreate, ctx: JobsWrite, session: SessionDep, response: Response) -> JobOut:
    result = service.submit_job(session, ctx.tenant, body)
    if not result.created:
        response.status_code = 200
    return JobOut.model_validate(result.job)


@router.post(
    "/v1/jobs/batch",
    tags=["jobs"],
    response_model=BatchOut,
    summary="Submit up to 1,000 jobs in one call",
    description=f"Each of up to {MAX_BATCH} jobs is validated like POST /v1/jobs and gets its own answer "
    "(`index`, `status_code` 202/200/4xx, `job` or `error`). Accepted jobs are stored in one transaction and "
    "queued in one Redis call. Admission applies to the accepted jobs as a whole, all or nothing: if they "
    "do not fit the tenant's queue the whole call answers 429 `queue_full`, and if they do not fit the "
    "jobs quota 402 `quota_exceeded` (details `requested` and `remaining`: how many jobs are left this "
    "period); nothing is stored then.",
    responses=SUBMIT_ERRORS,
)
def submit_batch(body: BatchCreate, ctx: JobsWrite, session: SessionDep) -> BatchOut:
    return BatchOut(items=service.submit_batch(session, ctx.tenant, body.jobs))


JobsReadReleased = Annotated[TenantContext, Depends(RequireScopeReleased("jobs:read"))]


def _read_job(session: Session, tenant_id: str, job_id: str) -> JobOut:
    """The job (404 if it is not this tenant's), then the transaction ends: a waiting request holds no
    database connection between two reads."""
    try:
        return job_views([JobRepository(session, tenant_id).get(job_id)])[0]
    finally:
        session.commit()
        # Sessions keep loaded rows across commits (expire_on_commit=False): the next read must load
        # the job afresh, not find this copy in the identity map.
        session.expunge_all()


def _read_job_apart(tenant_id: str, job_id: str) -> JobOut:
    """The same read in a session of its own (an event stream outlives the request's session)."""
    with session_factory()() as session:
        return _read_job(session, tenant_id, job_id)


def _is_news(message: dict[str, Any]) -> bool:
    """Does a hub message call for a re-read of the job? A status change or a resync does; progress
    carries all it says."""
    return message.get("kind") != "progress"


@router.get(
    "/v1/jobs/{job_id}",
    tags=["jobs"],
    response_model=JobOut,
    summary="Get a job, or wait for it to finish",
    description="With `wait=SECONDS` (at most "
    f"{WAIT_MAX_SECONDS}) the answer is held until the job is finished (succeeded, failed, cancelled, "
    "rejected) or the time is up, whichever comes first; either way it is the job as it is then. A "
    "client waits longer by calling again. Waiting costs the server no database connection and no "
    "polling: the API process is told when the job changes.",
)
async def get_job(
    job_id: str,
    ctx: JobsReadReleased,
    session: SessionDep,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=WAIT_MAX_SECONDS,
            description=f"Seconds (0-{WAIT_MAX_SECONDS}) to wait for the job to finish before answering.",
        ),
    ] = 0,
) -> JobOut:
    if not wait:
        return await run_in_threadpool(_read_job, session, ctx.tenant_id, job_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    # Registered before the first read: a change between that read and the wait is still heard.
    with get_hub().watch(job_id) as queue:
        job = await run_in_threadpool(_read_job, session, ctx.tenant_id, job_id)
        while job.status not in TERMINAL_STATUSES:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                message = await asyncio.wait_for(queue.get(), remaining)
            except TimeoutError:
                # Pub/sub may have lost a message (a reconnect): one last look at the deadline.
                return await run_in_threadpool(_read_job, session, ctx.tenant_id, job_id)
            if _is_news(message):
                job = await run_in_threadpool(_read_job, session, ctx.tenant_id, job_id)
    return job


class EventStream(StreamingResponse):
    media_type = "text/event-stream"


def _sse(event: str, data: Any) -> str:
    payload = data.model_dump_json() if hasattr(data, "model_dump_json") else json.dumps(data)
    return f"event: {event}\ndata: {payload}\n\n"


def _changes(before: JobOut, after: JobOut) -> list[str]:
    """The status and attempt events that lead from one read of a job to the next."""
    events = []
    if (before.status, before.attempts) != (after.status, after.attempts):
        events.append(
            _sse("status", JobStatusEvent(id=after.id, status=after.status, attempts=after.attempts))
        )
    seen = {a.attempt: a for a in before.attempt_log}
    events.extend(_sse("attempt", a) for a in after.attempt_log if seen.get(a.attempt) != a)
    return events


async def _job_events(tenant_id: str, job_id: str) -> AsyncIterator[str]:
    with get_hub().watch(job_id) as queue:
        job = await run_in_threadpool(_read_job_apart, tenant_id, job_id)
        yield _sse("job", job)
        while job.status not in TERMINAL_STATUSES:
            try:
                message = await asyncio.wait_for(queue.get(), EVENTS_KEEPALIVE_SECONDS)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if not _is_news(message):
                if message.get("tenant") == tenant_id:
                    data = {k: message.get(k) for k in ("attempt", "fraction", "message", "at")}
                    yield _sse("progress", JobProgressEvent.model_validate({"id": job_id, **data}))
                continue
            later = await run_in_threadpool(_read_job_apart, tenant_id, job_id)
            for event in _changes(job, later):
                yield event
            job = later
            if job.status in TERMINAL_STATUSES:
                yield _sse("job", job)


EVENTS_DESCRIPTION = f"""Server-Sent Events (`text/event-stream`) about one job, until it finishes:

- `event: job`: the whole job (as `GET /v1/jobs/{{id}}`), first when the stream opens and last when the
  job has finished; the stream then ends;
- `event: status`: `{{"id", "status", "attempts"}}` when the status or the attempt number changes;
- `event: attempt`: an entry of the job's `attempt_log` that appeared or changed;
- `event: progress`: `{{"id", "attempt", "fraction", "message", "at"}}` when the task reports progress.

A comment line (`: keep-alive`) every {EVENTS_KEEPALIVE_SECONDS} s keeps idle connections open through
proxies. A client that reconnects gets the whole job again as its first event, so it misses nothing.
"""


@router.get(
    "/v1/jobs/{job_id}/events",
    tags=["jobs"],
    response_class=EventStream,
    summary="Stream a job's status changes, attempts and progress (Server-Sent Events)",
    description=EVENTS_DESCRIPTION,
    responses={
        200: {
            "description": "The event stream.",
            "content": {
                "text/event-stream": {
                    # One SSE event, as a client parses it off the stream (the fields of the format).
                    "schema": {
                        "type": "object",
                        "description": "One Server-Sent Event (see above); `data` is JSON.",
                        "properties": {
                            "event": {"type": "string", "enum": ["job", "status", "attempt", "progress"]},
                            "data": {"type": "string"},
                            "id": {"type": "string"},
                            "retry": {"type": "integer"},
                        },
                        "required": ["data"],
                    },
                    "example": 'event: job\ndata: {"id": "4f0c...", "status": "running", ...}\n\n'
                    'event: progress\ndata: {"id": "4f0c...", "attempt": 1, "fraction": 0.4, '
                    '"message": "resized 4 of 10", "at": "2026-11-30T12:00:00Z"}\n\n',
                }
            },
        }
    },
)
async def job_events(job_id: str, ctx: JobsReadReleased, session: SessionDep) -> EventStream:
    # 404 (in the one error shape) before the stream starts; the stream reads in sessions of its own.
    await run_in_threadpool(_read_job, session, ctx.tenant_id, job_id)
    return EventStream(
        _job_events(ctx.tenant_id, job_id),
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.post(
    "/v1/jobs/{job_id}/cancel",
    tags=["jobs"],
    response_model=CancelOut,
    summary="Cancel a job",
    description="A queued, scheduled or retrying job is taken off the queue and never starts (`dequeued`). "
    "A running job is killed if its task type allows it (`terminated`), else it is marked for cancellation "
    "(`requested`): it finishes but is not retried. A finished job is left as it is (`already_finished`, "
    "still 200, so cancelling twice is harmless).",
    responses=errors(409, s409="The job changed state while being cancelled; retry (code `cancel_race`)."),
)
def cancel_job(job_id: str, ctx: JobsWrite, session: SessionDep) -> CancelOut:
    job, outcome = service.cancel_job(session, ctx.tenant_id, job_id)
    return CancelOut(id=job.id, status=job.status, cancellation=outcome)


@router.post(
    "/v1/jobs/{job_id}/retry",
    tags=["jobs"],
    response_model=JobOut,
    status_code=202,
    summary="Re-run a failed or cancelled job",
    description="Queues the job again as a new attempt of the same job (attempt numbers continue; the "
    "automatic retry budget starts afresh). 409 if the job is not failed or cancelled. Admission checks "
    "(quotas, rate limits) apply as for a new job, but the jobs quota counts a job once: a job that ran "
    "before is not counted again; one cancelled before it ever started counts now, and is billed as a "
    "job when its first attempt runs.",
    responses={
        **SUBMIT_ERRORS,
        **errors(409, s409="The job is not failed or cancelled (code `not_rerunnable`)."),
    },
)
def retry_job(job_id: str, ctx: JobsWrite, session: SessionDep) -> JobOut:
    job = service.rerun_job(session, ctx.tenant, job_id)
    return JobOut.model_validate(JobRepository(session, ctx.tenant_id).get(job.id))


@router.get(
    "/v1/jobs",
    tags=["jobs"],
    response_model=JobList,
    summary="List jobs, newest first",
    description="`status=failed` is the dead-letter view: jobs that failed for good (retries exhausted or a "
    "non-retryable error); re-run one with `POST /v1/jobs/{id}/retry`.",
)
def list_jobs(
    ctx: JobsRead,
    session: SessionDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
    task: Annotated[str | None, Query(max_length=128, description="Only jobs of this task type.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: CursorQuery = None,
) -> JobList:
    items, next_cursor = JobRepository(session, ctx.tenant_id).list(
        status=status, task=task, limit=limit, cursor=cursor
    )
    return JobList(items=job_views(items), next_cursor=next_cursor)


@router.get(
    "/v1/task-types",
    tags=["jobs"],
    response_model=list[TaskTypeOut],
    summary="Registered task types and their argument schemas",
)
def list_task_types(ctx: CurrentTenant) -> list[TaskTypeOut]:
    return [
        TaskTypeOut(name=t.name, description=t.description, args_schema=t.json_schema())
        for t in all_task_types()
    ]


@router.post(
    "/admin/v1/tenants/{tenant_id}/queue/purge",
    response_model=PurgeOut,
    tags=["queue"],
    summary="Drop every waiting job of the tenant (they become cancelled)",
)
def purge_queue(tenant_id: str, _op: Operator, session: SessionDep) -> PurgeOut:
    tenant = get_tenant(session, tenant_id)
    return PurgeOut(tenant_id=tenant.id, purged=service.purge_queue(session, tenant))
