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
from tenantq.tenants.sessions import (OPERATOR_AUDIENCE, SESSION_COOKIE, TENANT_AUDIENCE, decode_token,
                                      looks_like_jwt)

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


def authenticate_session(session: Session, token: str) -> TenantContext:
    claims = decode_token(token, audience=TENANT_AUDIENCE)
    tenant = session.get(Tenant, claims.subject)
    if tenant is None:
        raise Unauthorized("Invalid session.", code="invalid_session")
    if claims.key_id:
        # A session dies with the key it was exchanged for.
        key = session.get(ApiKey, claims.key_id)
        now = utcnow()
        if key is None or key.tenant_id != tenant.id or (key.revoked_at is not None and key.revoked_at <= now):
            raise Unauthorized("The API key behind this session was revoked.", code="invalid_session")
    return TenantContext(tenant_id=tenant.id, key_id=claims.key_id, scopes=claims.scopes, tenant=tenant)


def current_tenant(request: Request, session: SessionDep) -> TenantContext:
    """An API key or a session JWT as bearer token, or the dashboard's session cookie."""
    ctx = _authenticate(request, session)
    request.state.tenant_id = ctx.tenant_id  # for request logs and rejection metrics
    return ctx


def _authenticate(request: Request, session: Session) -> TenantContext:
    token = _bearer(request)
    if token is None:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            return authenticate_session(session, cookie)
        raise Unauthorized(
            "Missing credentials: send 'Authorization: Bearer <api key>'.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if looks_like_jwt(token):
        return authenticate_session(session, token)
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


@dataclass(frozen=True)
class OperatorContext:
    subject: str


def current_operator(request: Request) -> OperatorContext:
    """The operator credential: ``Bearer $TENANTQ_ADMIN_TOKEN`` or an operator-audience JWT."""
    import hmac

    settings = get_settings()
    token = _bearer(request) or request.cookies.get("tq_admin_session")
    if not token:
        raise Unauthorized("Operator credential required.", headers={"WWW-Authenticate": "Bearer"})
    if settings.admin_token and hmac.compare_digest(token.encode(), settings.admin_token.encode()):
        return OperatorContext(subject="operator")
    if looks_like_jwt(token):
        claims = decode_token(token, audience=OPERATOR_AUDIENCE)
        return OperatorContext(subject=claims.subject)
    raise Unauthorized("Invalid operator credential.", code="invalid_operator_credential")


Operator = Annotated[OperatorContext, Depends(current_operator)]
UsageRead = Annotated[TenantContext, Depends(RequireScope("usage:read"))]
BillingRead = Annotated[TenantContext, Depends(RequireScope("billing:read"))]
KeysManage = Annotated[TenantContext, Depends(RequireScope("keys:manage"))]
