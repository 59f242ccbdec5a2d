"""HTTP routes for per-tenant schedules: parse, call the service, return a schema."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from tenantq.core.dependencies import CursorQuery, SessionDep
from tenantq.core.openapi import errors
from tenantq.platform.schedules import service
from tenantq.platform.schedules.repository import ScheduleRepository
from tenantq.platform.schedules.schemas import ScheduleCreate, ScheduleList, ScheduleOut, ScheduleUpdate
from tenantq.tenants.access.dependencies import JobsRead, JobsWrite

router = APIRouter(prefix="/v1", tags=["schedules"])

LIMIT_ERRORS = errors(
    422,
    429,
    s422="Invalid task/arguments, cron expression or time zone, or an interval below the plan's minimum "
    "(code schedule_interval_too_short).",
    s429="The plan's number of schedules is reached (code schedule_limit_reached).",
)


@router.post(
    "/schedules",
    response_model=ScheduleOut,
    status_code=201,
    summary="Create a schedule",
    description="A job template (task, args, priority) fired by beat on a cron expression in a time zone or "
    "every interval_seconds. Each firing creates a normal job (rate limits, quotas and billing apply).",
    responses=LIMIT_ERRORS,
)
def create_schedule(body: ScheduleCreate, ctx: JobsWrite, session: SessionDep) -> ScheduleOut:
    return ScheduleOut.model_validate(service.create_schedule(session, ctx.tenant, body))


@router.get("/schedules", response_model=ScheduleList, summary="List schedules, newest first")
def list_schedules(
    ctx: JobsRead,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: CursorQuery = None,
) -> ScheduleList:
    items, next_cursor = ScheduleRepository(session, ctx.tenant_id).list(limit=limit, cursor=cursor)
    return ScheduleList(items=[ScheduleOut.model_validate(s) for s in items], next_cursor=next_cursor)


@router.get("/schedules/{schedule_id}", response_model=ScheduleOut, summary="Get a schedule")
def get_schedule(schedule_id: str, ctx: JobsRead, session: SessionDep) -> ScheduleOut:
    return ScheduleOut.model_validate(ScheduleRepository(session, ctx.tenant_id).get(schedule_id))


@router.patch(
    "/schedules/{schedule_id}",
    response_model=ScheduleOut,
    summary="Change a schedule",
    description="Only the given fields change; beat applies the change at its next read (about a second). "
    "Changing the timing or re-enabling recomputes next_run_at from now.",
    responses=LIMIT_ERRORS,
)
def update_schedule(
    schedule_id: str, body: ScheduleUpdate, ctx: JobsWrite, session: SessionDep
) -> ScheduleOut:
    return ScheduleOut.model_validate(service.update_schedule(session, ctx.tenant, schedule_id, body))


@router.delete("/schedules/{schedule_id}", status_code=204, summary="Delete a schedule")
def delete_schedule(schedule_id: str, ctx: JobsWrite, session: SessionDep) -> Response:
    service.delete_schedule(session, ctx.tenant, schedule_id)
    return Response(status_code=204)
