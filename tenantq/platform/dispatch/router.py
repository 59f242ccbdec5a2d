"""HTTP routes for the tenant's queue figures and the operator's queue controls.

The operator's purge, which also cancels the purged jobs, is served by the jobs router.
"""

from __future__ import annotations

from fastapi import APIRouter

from tenantq.core.dependencies import SessionDep
from tenantq.core.openapi import errors
from tenantq.core.redis import get_redis
from tenantq.platform.dispatch import routing, service
from tenantq.platform.dispatch.schemas import (
    AdminQueueList,
    PauseOut,
    PoolOut,
    QueueOut,
)
from tenantq.tenants.access.dependencies import JobsRead, Operator
from tenantq.tenants.accounts.service import get_tenant

router = APIRouter(tags=["queue"])


@router.get(
    "/v1/queue", response_model=QueueOut, summary="Your queue: depth, running jobs, limits, recent waits"
)
def get_queue(ctx: JobsRead, session: SessionDep) -> QueueOut:
    return service.queue_stats(session, ctx.tenant)


@router.get(
    "/admin/v1/queues", response_model=AdminQueueList, summary="Every tenant queue with work or a pause"
)
def admin_queues(_op: Operator, session: SessionDep) -> AdminQueueList:
    return AdminQueueList(**service.admin_queues(session))


@router.post(
    "/admin/v1/tenants/{tenant_id}/queue/pause",
    response_model=PauseOut,
    summary="Pause a tenant's queue: jobs stay queued, none is released until resumed",
)
def pause_queue(tenant_id: str, _op: Operator, session: SessionDep) -> PauseOut:
    tenant = get_tenant(session, tenant_id)
    service.pause(tenant)
    return PauseOut(tenant_id=tenant.id, paused=True, paused_reason=service.OPERATOR_PAUSE)


@router.post(
    "/admin/v1/tenants/{tenant_id}/queue/resume",
    response_model=PauseOut,
    summary="Resume a paused queue (409 while the tenant is suspended)",
    responses=errors(409, s409="The tenant is suspended (code `tenant_not_active`)."),
)
def resume_queue(tenant_id: str, _op: Operator, session: SessionDep) -> PauseOut:
    tenant = get_tenant(session, tenant_id)
    service.resume(tenant)
    return PauseOut(tenant_id=tenant.id, paused=False)


@router.put(
    "/admin/v1/tenants/{tenant_id}/queue/pool",
    response_model=PoolOut,
    summary="Route the tenant's jobs to its dedicated worker pool (run `tenantq worker --tenant`)",
)
def assign_pool(tenant_id: str, _op: Operator, session: SessionDep) -> PoolOut:
    tenant = get_tenant(session, tenant_id)
    return PoolOut(tenant_id=tenant.id, pool=routing.assign(get_redis(), tenant.id))


@router.delete(
    "/admin/v1/tenants/{tenant_id}/queue/pool",
    response_model=PoolOut,
    summary="Send the tenant's jobs back to the shared pool",
)
def remove_pool(tenant_id: str, _op: Operator, session: SessionDep) -> PoolOut:
    tenant = get_tenant(session, tenant_id)
    routing.unassign(get_redis(), tenant.id)
    return PoolOut(tenant_id=tenant.id, pool="shared")
