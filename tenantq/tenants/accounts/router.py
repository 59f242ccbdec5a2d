"""Operator API ``/admin/v1``: tenants, plans and a tenant's keys. Needs the operator credential
(``Bearer $TENANTQ_ADMIN_TOKEN`` or an operator-audience JWT); a tenant's key answers 401."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from tenantq.core.dependencies import SessionDep
from tenantq.core.redis import get_redis
from tenantq.tenants.access.dependencies import Operator
from tenantq.tenants.accounts import service
from tenantq.tenants.accounts.repository import ApiKeyRepository
from tenantq.tenants.accounts.schemas import (
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyOut,
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


@router.get("/tenants", response_model=TenantList, summary="List tenants")
def list_tenants(
    op: Operator,
    session: SessionDep,
    status: Annotated[
        Literal["active", "suspended"] | None, Query(description="Only tenants in this status.")
    ] = None,
) -> TenantList:
    return TenantList(
        items=[TenantOut.model_validate(t) for t in service.list_tenants(session, status=status)]
    )


@router.post("/tenants", response_model=TenantOut, status_code=201, summary="Create a tenant")
def create_tenant(body: TenantCreate, op: Operator, session: SessionDep) -> TenantOut:
    tenant = service.create_tenant(session, name=body.name, plan=body.plan, overrides=body.overrides)
    session.flush()
    return TenantOut.model_validate(tenant)


@router.get("/tenants/{tenant_id}", response_model=TenantOut, summary="Get a tenant")
def get_tenant(tenant_id: str, op: Operator, session: SessionDep) -> TenantOut:
    return TenantOut.model_validate(service.get_tenant(session, tenant_id))


@router.patch(
    "/tenants/{tenant_id}",
    response_model=TenantOut,
    summary="Change a tenant's name, plan or overrides",
    description="`overrides` replaces all overrides (`{}` clears them); only limit fields are accepted "
    "and the result must be coherent with the plan (e.g. priority_min <= priority_max).",
)
def update_tenant(tenant_id: str, body: TenantUpdate, op: Operator, session: SessionDep) -> TenantOut:
    tenant = service.get_tenant(session, tenant_id)
    kwargs = {}
    if "overrides" in body.model_fields_set:
        kwargs["overrides"] = body.overrides or {}
    service.update_tenant(session, tenant, name=body.name, plan=body.plan, **kwargs)
    session.flush()
    return TenantOut.model_validate(tenant)


@router.post(
    "/tenants/{tenant_id}/suspend",
    response_model=TenantOut,
    summary="Suspend a tenant",
    description="New submissions answer 403 `tenant_suspended`; queued jobs stay queued (the queue is "
    "paused, nothing is dropped) and resume on reactivation.",
)
def suspend_tenant(tenant_id: str, op: Operator, session: SessionDep) -> TenantOut:
    tenant = service.suspend_tenant(session, service.get_tenant(session, tenant_id), get_redis())
    return TenantOut.model_validate(tenant)


@router.post(
    "/tenants/{tenant_id}/reactivate",
    response_model=TenantOut,
    summary="Reactivate a tenant",
    description="Accepts submissions again and resumes the queue, unless the operator paused the "
    "queue separately.",
)
def reactivate_tenant(tenant_id: str, op: Operator, session: SessionDep) -> TenantOut:
    tenant = service.reactivate_tenant(session, service.get_tenant(session, tenant_id), get_redis())
    return TenantOut.model_validate(tenant)


@router.get("/tenants/{tenant_id}/keys", response_model=KeyList, summary="List a tenant's API keys")
def list_tenant_keys(tenant_id: str, op: Operator, session: SessionDep) -> KeyList:
    tenant = service.get_tenant(session, tenant_id)
    return KeyList(items=[KeyOut.model_validate(k) for k in ApiKeyRepository(session, tenant.id).list()])


@router.post(
    "/tenants/{tenant_id}/keys",
    response_model=KeyCreated,
    status_code=201,
    summary="Create an API key for a tenant (onboarding)",
    description="The full key is in the response once; hand it to the tenant.",
)
def create_tenant_key(tenant_id: str, body: KeyCreate, op: Operator, session: SessionDep) -> KeyCreated:
    tenant = service.get_tenant(session, tenant_id)
    row, full = service.create_api_key(
        session, tenant=tenant, scopes=body.scopes, name=body.name, expires_at=body.expires_at
    )
    session.flush()
    return KeyCreated(**KeyOut.model_validate(row).model_dump(), key=full)


@router.get("/plans", response_model=PlanList, summary="List plans")
def list_plans(op: Operator, session: SessionDep) -> PlanList:
    return PlanList(items=[PlanOut.model_validate(p) for p in service.list_plans(session)])


@router.post(
    "/plans",
    response_model=PlanOut,
    status_code=201,
    summary="Create a plan",
    description="Unspecified fields take the defaults. Rates > 0, 0 <= priority_min <= priority_max <= 9.",
)
def create_plan(body: PlanCreate, op: Operator, session: SessionDep) -> PlanOut:
    plan = service.create_plan(session, body)
    session.flush()
    return PlanOut.model_validate(plan)


@router.patch(
    "/plans/{plan_name}",
    response_model=PlanOut,
    summary="Change a plan's limits or prices",
    description="Applies to every tenant on the plan from their next request. 409 if a tenant's "
    "overrides would become incoherent.",
)
def update_plan(plan_name: str, body: PlanUpdate, op: Operator, session: SessionDep) -> PlanOut:
    plan = service.update_plan(session, service.get_plan(session, plan_name), body)
    session.flush()
    return PlanOut.model_validate(plan)
