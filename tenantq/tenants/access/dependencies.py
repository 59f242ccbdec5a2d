"""Authentication dependencies: who is calling, and may they?"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from tenantq.core.db import utcnow
from tenantq.core.dependencies import SessionDep
from tenantq.core.errors import Forbidden, Unauthorized
from tenantq.core.settings import get_settings
from tenantq.tenants.access.keys import parse_key, verify_hash
from tenantq.tenants.access.limits import AuthFailureLimiter
from tenantq.tenants.access.sessions import (
    OPERATOR_AUDIENCE,
    SESSION_COOKIE,
    TENANT_AUDIENCE,
    decode_token,
    looks_like_jwt,
)
from tenantq.tenants.accounts.models import ApiKey, Tenant

# last_used_at is written at most this often per key, so authentication stays a read.
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class TenantContext:
    """Who is calling: the tenant row (loaded in the request's session), the key behind the credential
    and its scopes. Routes take the tenant from here instead of loading it again."""

    tenant_id: str
    key_id: str | None
    tenant: Tenant
    scopes: frozenset[str] = field(default_factory=frozenset)


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
    # Previous secrets still verify, so rotating TENANTQ_SECRET_KEY does not lock every tenant out.
    secrets = [settings.secret_key, *settings.previous_secret_keys]
    if key is None or not any(verify_hash(parsed.full, key.secret_hash, s) for s in secrets if s):
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
        # A conditional UPDATE: of many concurrent requests (on many processes) at most one writes
        # per minute, and nothing else pending in the session gets committed by accident.
        stale = now - LAST_USED_RESOLUTION
        session.execute(
            update(ApiKey)
            .where(ApiKey.id == key.id, or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < stale))
            .values(last_used_at=now)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        key.last_used_at = now
    return TenantContext(
        tenant_id=tenant.id, key_id=key.id, scopes=frozenset(key.scopes or ()), tenant=tenant
    )


def authenticate_session(session: Session, token: str) -> TenantContext:
    claims = decode_token(token, audience=TENANT_AUDIENCE)
    tenant = session.get(Tenant, claims.subject)
    if tenant is None:
        raise Unauthorized("Invalid session.", code="invalid_session")
    if claims.key_id:
        # A session dies with the key it was exchanged for.
        key = session.get(ApiKey, claims.key_id)
        now = utcnow()
        if (
            key is None
            or key.tenant_id != tenant.id
            or (key.revoked_at is not None and key.revoked_at <= now)
        ):
            raise Unauthorized("The API key behind this session was revoked.", code="revoked_session")
        if key.expires_at is not None and key.expires_at <= now:
            raise Unauthorized("The API key behind this session has expired.", code="revoked_session")
    return TenantContext(tenant_id=tenant.id, key_id=claims.key_id, scopes=claims.scopes, tenant=tenant)


def client_address(request: Request) -> str:
    # uvicorn rewrites request.client from X-Forwarded-For only for trusted proxies
    # (--forwarded-allow-ips), so this cannot be spoofed by a client header.
    return request.client.host if request.client else "unknown"


# Failures that look like guessing. Not counted: no credential at all, and genuine but stale
# credentials (revoked/expired key, expired session: their signature or hash verified), so a
# dashboard with an old cookie or a client with a rotated-out key does not get its address blocked.
GUESS_CODES = frozenset(
    {"invalid_api_key", "invalid_session", "invalid_operator_credential", "api_key_required"}
)


def _throttled(request: Request, authenticate):
    """Run ``authenticate``; count wrong credentials per client address and refuse (429) an address
    over its allowance before even looking at its credential."""
    limiter = AuthFailureLimiter()
    address = client_address(request)
    limiter.check(address)
    try:
        return authenticate()
    except Unauthorized as exc:
        if exc.code in GUESS_CODES:
            limiter.record_failure(address)
        raise


def current_tenant(request: Request, session: SessionDep) -> TenantContext:
    """An API key or a session JWT as bearer token, or the dashboard's session cookie."""
    ctx = _throttled(request, lambda: _current_tenant(request, session))
    request.state.tenant_id = ctx.tenant_id  # for request logs and rejection metrics
    return ctx


def _current_tenant(request: Request, session: Session) -> TenantContext:
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
            raise Forbidden(
                f"This key lacks the '{self.scope}' scope.",
                code="missing_scope",
                details={"required": self.scope},
            )
        return ctx


JobsWrite = Annotated[TenantContext, Depends(RequireScope("jobs:write"))]
JobsRead = Annotated[TenantContext, Depends(RequireScope("jobs:read"))]


@dataclass(frozen=True)
class OperatorContext:
    subject: str


def current_operator(request: Request) -> OperatorContext:
    """The operator credential: ``Bearer $TENANTQ_ADMIN_TOKEN`` or an operator-audience JWT."""
    return _throttled(request, lambda: _current_operator(request))


def _current_operator(request: Request) -> OperatorContext:
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
