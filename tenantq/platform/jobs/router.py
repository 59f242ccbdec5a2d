"""HTTP routes for jobs and task types: parse, call the service, return a schema."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from tenantq.platform.dependencies import SessionDep
from tenantq.platform.jobs import service
from tenantq.platform.jobs.repository import JobRepository
from tenantq.platform.jobs.schemas import JobCreate, JobList, JobOut, JobStatus, TaskTypeOut
from tenantq.tenants.dependencies import CurrentTenant, JobsRead, JobsWrite
from tenantq.tenants.models import Tenant
from tenantq.worker.registry import all_task_types

router = APIRouter(prefix="/v1", tags=["jobs"])


@router.post(
    "/jobs",
    response_model=JobOut,
    status_code=202,
    summary="Submit a job",
    description="Validates the arguments against the task type's schema and queues the job on the tenant's "
    "own queue. Answers 202 with the new job, or 200 with the existing job when the idempotency key was "
    "already used with the same parameters (409 if the parameters differ).",
    responses={200: {"description": "Existing job for this idempotency key"}},
)
def create_job(body: JobCreate, ctx: JobsWrite, session: SessionDep, response: Response) -> JobOut:
    tenant = session.get(Tenant, ctx.tenant_id)
    result = service.submit_job(session, tenant, body)
    if not result.created:
        response.status_code = 200
    return JobOut.model_validate(result.job)


@router.get("/jobs/{job_id}", response_model=JobOut, summary="Get a job")
def get_job(job_id: str, ctx: JobsRead, session: SessionDep) -> JobOut:
    return JobOut.model_validate(JobRepository(session, ctx.tenant_id).get(job_id))


@router.get("/jobs", response_model=JobList, summary="List jobs, newest first")
def list_jobs(
    ctx: JobsRead,
    session: SessionDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
    task: Annotated[str | None, Query(max_length=128, description="Only jobs of this task type.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=512, description="next_cursor of the previous page.")] = None,
) -> JobList:
    items, next_cursor = JobRepository(session, ctx.tenant_id).list(
        status=status, task=task, limit=limit, cursor=cursor
    )
    return JobList(items=[JobOut.model_validate(j) for j in items], next_cursor=next_cursor)


@router.get("/task-types", response_model=list[TaskTypeOut], summary="Registered task types and their argument schemas")
def list_task_types(ctx: CurrentTenant) -> list[TaskTypeOut]:
    return [TaskTypeOut(name=t.name, description=t.description, args_schema=t.json_schema()) for t in all_task_types()]
