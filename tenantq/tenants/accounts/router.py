"""Operator API ``/admin/v1``: tenants and plans.

Every route needs the operator credential (``Bearer $TENANTQ_ADMIN_TOKEN`` or an operator-audience
JWT; a tenant's key answers 401). The check is not declared here: credentials live in
``tenants.access``, a layer above accounts, and ``tenants.access.router`` mounts this router behind
the operator dependency (``tests/test_isolation.py`` proves every ``/admin/v1`` route refuses a
tenant's key).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from tenantq.core.dependencies import SessionDep
from tenantq.core.openapi import errors
from tenantq.core.redis import get_redis
from tenantq.tenants.accounts import service, suspension
from tenantq.tenants.accounts.schemas import (
    PlanCreate,
    PlanList,
    PlanOut,
    PlanUpdate,
    TenantCreate,
    TenantList,
    TenantOut,
    TenantUpdate,
)

router = APIRouter(prefix="/admin/v1", tags=["operator"])


def _actor(request: Request) -> str:
    """Who is calling, for the audit log (set by the operator dependency that guards this router)."""
    return getattr(request.state, "actor", "operator")


@router.get("/tenants", response_model=TenantList, summary="List tenants")
def list_tenants(
    session: SessionDep,
    status: Annotated[
        Literal["active", "suspended"] | None, Query(description="Only tenants in this status.")
    ] = None,
) -> TenantList:
    return TenantList(
        items=[TenantOut.model_validate(t) for t in service.list_tenants(session, status=status)]
    )


@router.post(
    "/tenants",
    response_model=TenantOut,
    status_code=201,
    summary="Create a tenant",
    responses=errors(409, s409="A tenant with this name exists (code `tenant_exists`)."),
)
def create_tenant(body: TenantCreate, session: SessionDep) -> TenantOut:
    tenant = service.create_tenant(session, name=body.name, plan=body.plan, overrides=body.overrides)
    session.commit()
    return TenantOut.model_validate(tenant)


@router.get("/tenants/{tenant_id}", response_model=TenantOut, summary="Get a tenant")
def get_tenant(tenant_id: str, session: SessionDep) -> TenantOut:
    return TenantOut.model_validate(service.get_tenant(session, tenant_id))


@router.patch(
    "/tenants/{tenant_id}",
    response_model=TenantOut,
    summary="Change a tenant's name, plan, overrides or billing email",
    description="`overrides` replaces all overrides (`{}` clears them); only limit fields are accepted "
    "and the result must be coherent with the plan (e.g. priority_min <= priority_max). `billing_email` "
    "is where invoices are emailed (422 `invalid_billing_email` if it is not an address; null clears it). "
    "Plan, override and billing email changes are recorded in the audit log (`GET /admin/v1/audit`).",
    responses=errors(409, s409="A tenant with this name exists (code `tenant_exists`)."),
)
def update_tenant(tenant_id: str, body: TenantUpdate, session: SessionDep, request: Request) -> TenantOut:
    tenant = service.get_tenant(session, tenant_id)
    kwargs: dict = {}
    if "overrides" in body.model_fields_set:
        kwargs["overrides"] = body.overrides or {}
    if "billing_email" in body.model_fields_set:
        kwargs["billing_email"] = body.billing_email
    service.update_tenant(session, tenant, name=body.name, plan=body.plan, actor=_actor(request), **kwargs)
    session.commit()
    return TenantOut.model_validate(tenant)


@router.post(
    "/tenants/{tenant_id}/suspend",
    response_model=TenantOut,
    summary="Suspend a tenant",
    description="The tenant keeps read access; its writes (jobs, workflows, schedules, webhooks, keys, "
    "sessions) answer 403 `tenant_suspended`. Queued jobs stay queued (the queue is "
    "paused, nothing is dropped) and resume on reactivation.",
    responses=errors(503, s503="Redis is unavailable; nothing changed (code `queue_unavailable`)."),
)
def suspend_tenant(tenant_id: str, session: SessionDep) -> TenantOut:
    tenant = suspension.suspend_tenant(session, service.get_tenant(session, tenant_id), get_redis())
    return TenantOut.model_validate(tenant)


@router.post(
    "/tenants/{tenant_id}/reactivate",
    response_model=TenantOut,
    summary="Reactivate a tenant",
    description="Accepts submissions again and resumes the queue, unless the operator paused the "
    "queue separately.",
    responses=errors(503, s503="Redis is unavailable; nothing changed (code `queue_unavailable`)."),
)
def reactivate_tenant(tenant_id: str, session: SessionDep) -> TenantOut:
    tenant = suspension.reactivate_tenant(session, service.get_tenant(session, tenant_id), get_redis())
    return TenantOut.model_validate(tenant)


@router.get("/plans", response_model=PlanList, summary="List plans")
def list_plans(session: SessionDep) -> PlanList:
    return PlanList(items=[PlanOut.model_validate(p) for p in service.list_plans(session)])


@router.post(
    "/plans",
    response_model=PlanOut,
    status_code=201,
    summary="Create a plan",
    description="Unspecified fields take the defaults. Rates > 0, 0 <= priority_min <= priority_max <= 9.",
    responses=errors(409, s409="A plan with this name exists (code `plan_exists`)."),
)
def create_plan(body: PlanCreate, session: SessionDep) -> PlanOut:
    plan = service.create_plan(session, body)
    session.commit()
    return PlanOut.model_validate(plan)


@router.patch(
    "/plans/{plan_name}",
    response_model=PlanOut,
    summary="Change a plan's limits or prices",
    description="Applies to every tenant on the plan from their next request. 409 if a tenant's "
    "overrides would become incoherent.",
    responses=errors(409, s409="A tenant's overrides would become incoherent (code `override_conflict`)."),
)
def update_plan(plan_name: str, body: PlanUpdate, session: SessionDep, request: Request) -> PlanOut:
    plan = service.update_plan(session, service.get_plan(session, plan_name), body, actor=_actor(request))
    session.commit()
    return PlanOut.model_validate(plan)
