"""Authentication dependencies: who is calling, and may they?"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from tenantq.platform.dependencies import SessionDep
from tenantq.platform.db import utcnow
from tenantq.platform.errors import Forbidden, Unauthorized
from tenantq.platform.settings import get_settings
from tenantq.tenants.keys import parse_key, verify_hash
from tenantq.tenants.models import ApiKey, Tenant

# last_used_at is written at most this often per key, so authentication stays a read.
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class TenantContext:
    tenant_id: str
    key_id: str | None
    scopes: frozenset[str] = field(default_factory=frozenset)
    tenant: Tenant | None = None


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authenticate_key(session: Session, raw: str) -> TenantContext:
    parsed = parse_key(raw)
    if parsed is None:
        raise Unauthorized("Malformed API key.", code="invalid_api_key")
    key = session.get(ApiKey, parsed.kid)
    settings = get_settings()
    if key is None or not verify_hash(parsed.full, key.secret_hash, settings.secret_key):
        raise Unauthorized("Unknown API key.", code="invalid_api_key")
    now = utcnow()
    if key.revoked_at is not None and key.revoked_at <= now:
        raise Unauthorized("This API key has been revoked.", code="revoked_api_key")
    if key.expires_at is not None and key.expires_at <= now:
        raise Unauthorized("This API key has expired.", code="expired_api_key")
    tenant = session.get(Tenant, key.tenant_id)
    if tenant is None:
        raise Unauthorized("Unknown API key.", code="invalid_api_key")
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        key.last_used_at = now
        session.commit()
    return TenantContext(tenant_id=tenant.id, key_id=key.id, scopes=frozenset(key.scopes or ()), tenant=tenant)


def current_tenant(request: Request, session: SessionDep) -> TenantContext:
    token = _bearer(request)
    if token is None:
        raise Unauthorized(
            "Missing credentials: send 'Authorization: Bearer <api key>'.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return authenticate_key(session, token)


CurrentTenant = Annotated[TenantContext, Depends(current_tenant)]


class RequireScope:
    """Dependency factory: ``Depends(RequireScope("jobs:write"))`` -> TenantContext."""

    def __init__(self, scope: str) -> None:
        self.scope = scope

    def __call__(self, ctx: CurrentTenant) -> TenantContext:
        if self.scope not in ctx.scopes:
            raise Forbidden(f"This key lacks the '{self.scope}' scope.", code="missing_scope",
                            details={"required": self.scope})
        return ctx


JobsWrite = Annotated[TenantContext, Depends(RequireScope("jobs:write"))]
JobsRead = Annotated[TenantContext, Depends(RequireScope("jobs:read"))]
