"""FastAPI dependencies: who is calling (checked by ``auth``), and may they (scopes)?"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from tenantq.core.dependencies import SessionDep
from tenantq.core.errors import Forbidden
from tenantq.tenants.access import auth
from tenantq.tenants.access.auth import OperatorContext, TenantContext


def current_tenant(request: Request, session: SessionDep) -> TenantContext:
    """An API key or a session JWT as bearer token, or the dashboard's session cookie."""
    ctx = auth.tenant_credential(request, session)
    request.state.tenant_id = ctx.tenant_id  # for request logs and rejection metrics
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


JobsWrite = Annotated[TenantContext, Depends(RequireScope("jobs:write"))]
JobsRead = Annotated[TenantContext, Depends(RequireScope("jobs:read"))]


def current_operator(request: Request) -> OperatorContext:
    """The operator credential: ``Bearer $TENANTQ_ADMIN_TOKEN`` or an operator-audience JWT."""
    return auth.operator_credential(request)


Operator = Annotated[OperatorContext, Depends(current_operator)]
UsageRead = Annotated[TenantContext, Depends(RequireScope("usage:read"))]
BillingRead = Annotated[TenantContext, Depends(RequireScope("billing:read"))]
KeysManage = Annotated[TenantContext, Depends(RequireScope("keys:manage"))]
