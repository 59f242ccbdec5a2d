"""FastAPI dependencies: who is calling (checked by ``auth``), and may they (scopes, tenant status)?

A suspended tenant keeps read access (its jobs, usage and invoices) but changes nothing: every tenant
request other than GET/HEAD/OPTIONS answers 403 ``tenant_suspended``. The check sits in
``current_tenant``, which every tenant route depends on (directly or through ``RequireScope``), so a
new write route cannot forget it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from tenantq.core.dependencies import SessionDep
from tenantq.core.errors import Forbidden
from tenantq.tenants.access import auth
from tenantq.tenants.access.auth import OperatorContext, TenantContext
from tenantq.tenants.accounts.models import Tenant

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def refuse_suspended(tenant: Tenant) -> None:
    """403 ``tenant_suspended`` unless the tenant is active: the one rule for tenant writes."""
    if tenant.status != "active":
        raise Forbidden(
            f"Tenant is {tenant.status}: it can read but not change anything.",
            code="tenant_suspended",
            details={"status": tenant.status},
        )


def current_tenant(request: Request, session: SessionDep) -> TenantContext:
    """An API key or a session JWT as bearer token, or the dashboard's session cookie."""
    ctx = auth.tenant_credential(request, session)
    request.state.tenant_id = ctx.tenant_id  # for request logs and rejection metrics
    if request.method not in READ_METHODS:
        refuse_suspended(ctx.tenant)
    return ctx


CurrentTenant = Annotated[TenantContext, Depends(current_tenant)]


class RequireScope:
    """Dependency factory: ``Depends(RequireScope("jobs:write"))`` -> TenantContext."""

    def __init__(self, scope: str) -> None:
        self.scope = scope

    def __call__(self, ctx: CurrentTenant) -> TenantContext:
        if self.scope not in ctx.scopes:
            raise Forbidden(
                f"This key lacks the '{self.scope}' scope.",
                code="missing_scope",
                details={"required": self.scope},
            )
        return ctx


class RequireScopeReleased:
    """``RequireScope`` for routes that wait (long-polls, event streams): authenticates, checks the scope
    and ends the transaction in one thread call. Their later reads run in other thread calls, and a
    connection held from here to there could deadlock the process under load (every worker thread
    authenticating, waiting for a connection, while the connections wait for a thread)."""

    # What authenticates the caller, for the OpenAPI document's security requirement (core/openapi.py).
    authenticates_with = staticmethod(current_tenant)

    def __init__(self, scope: str) -> None:
        self.scope = scope

    def __call__(self, request: Request, session: SessionDep) -> TenantContext:
        ctx = RequireScope(self.scope)(current_tenant(request, session))
        session.commit()
        return ctx


JobsWrite = Annotated[TenantContext, Depends(RequireScope("jobs:write"))]
JobsRead = Annotated[TenantContext, Depends(RequireScope("jobs:read"))]


def current_operator(request: Request) -> OperatorContext:
    """The operator credential: ``Bearer $TENANTQ_ADMIN_TOKEN`` or an operator-audience JWT. Names the
    caller for the audit log in ``request.state.actor``."""
    context = auth.operator_credential(request)
    request.state.actor = f"operator:{context.subject}"
    return context


Operator = Annotated[OperatorContext, Depends(current_operator)]
UsageRead = Annotated[TenantContext, Depends(RequireScope("usage:read"))]
BillingRead = Annotated[TenantContext, Depends(RequireScope("billing:read"))]
KeysManage = Annotated[TenantContext, Depends(RequireScope("keys:manage"))]
