"""HTTP routes for jobs, task types and the operator's queue purge: parse, call the service, return a
schema."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from tenantq.core.dependencies import SessionDep
from tenantq.platform.jobs import service
from tenantq.platform.jobs.registry import all_task_types
from tenantq.platform.jobs.repository import JobRepository
from tenantq.platform.jobs.schemas import (
    MAX_BATCH,
    BatchCreate,
    BatchOut,
    CancelOut,
    JobCreate,
    JobList,
    JobOut,
    JobStatus,
    PurgeOut,
    TaskTypeOut,
)
from tenantq.tenants.access.dependencies import CurrentTenant, JobsRead, JobsWrite, Operator
from tenantq.tenants.accounts.service import get_tenant

# No prefix: the operator's queue purge (under /admin/v1) is served here too, because it cancels jobs.
router = APIRouter()


@router.post(
    "/v1/jobs",
    tags=["jobs"],
    response_model=JobOut,
    status_code=202,
    summary="Submit a job",
    description="Validates the arguments against the task type's schema and queues the job on the tenant's "
    "own queue. Answers 202 with the new job, or 200 with the existing job when the idempotency key was "
    "already used with the same parameters (409 if the parameters differ).",
    responses={200: {"description": "Existing job for this idempotency key"}},
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
)
def submit_batch(body: BatchCreate, ctx: JobsWrite, session: SessionDep) -> BatchOut:
    return BatchOut(items=service.submit_batch(session, ctx.tenant, body.jobs))


@router.get("/v1/jobs/{job_id}", tags=["jobs"], response_model=JobOut, summary="Get a job")
def get_job(job_id: str, ctx: JobsRead, session: SessionDep) -> JobOut:
    return JobOut.model_validate(JobRepository(session, ctx.tenant_id).get(job_id))


@router.post(
    "/v1/jobs/{job_id}/cancel",
    tags=["jobs"],
    response_model=CancelOut,
    summary="Cancel a job",
    description="A queued, scheduled or retrying job is taken off the queue and never starts (`dequeued`). "
    "A running job is killed if its task type allows it (`terminated`), else it is marked for cancellation "
    "(`requested`): it finishes but is not retried. A finished job is left as it is (`already_finished`, "
    "still 200, so cancelling twice is harmless).",
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
    cursor: Annotated[
        str | None, Query(max_length=512, description="next_cursor of the previous page.")
    ] = None,
) -> JobList:
    items, next_cursor = JobRepository(session, ctx.tenant_id).list(
        status=status, task=task, limit=limit, cursor=cursor
    )
    return JobList(items=[JobOut.model_validate(j) for j in items], next_cursor=next_cursor)


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
