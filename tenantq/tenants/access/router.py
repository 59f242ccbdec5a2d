"""Routes of the access area.

- ``/v1/keys`` and ``/v1/auth/session``: a tenant's API keys and dashboard sessions;
- ``/admin/v1/tenants/{id}/keys``: a tenant's keys, for the operator (onboarding);
- the operator API of ``tenants.accounts`` (tenants and plans), mounted here behind the operator
  credential because accounts, the layer below, cannot name it.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from tenantq.core.dependencies import SessionDep
from tenantq.core.errors import Forbidden
from tenantq.core.openapi import errors
from tenantq.tenants.access import auth, service
from tenantq.tenants.access.auth import TenantContext
from tenantq.tenants.access.dependencies import KeysManage, Operator, current_operator, refuse_suspended
from tenantq.tenants.access.keys import parse_key
from tenantq.tenants.access.models import ApiKey
from tenantq.tenants.access.openapi import KEY_LOGIN_SECURITY
from tenantq.tenants.access.repository import ApiKeyRepository
from tenantq.tenants.access.schemas import (
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyOut,
    KeyRotate,
    SessionCreate,
    SessionOut,
)
from tenantq.tenants.access.sessions import SESSION_COOKIE, clear_session_cookie, set_session_cookie
from tenantq.tenants.accounts import router as accounts_router
from tenantq.tenants.accounts.service import get_tenant

tenant_api = APIRouter(prefix="/v1", tags=["auth"])
operator_api = APIRouter(prefix="/admin/v1", tags=["operator"])


def _ensure_within_caller(ctx: TenantContext, scopes: list[str] | set[str]) -> None:
    # A key may only hand out what it holds: keys:manage alone must not mint a billing:read key.
    missing = sorted(set(scopes) - set(ctx.scopes))
    if missing:
        raise Forbidden(
            "A key cannot grant scopes it does not hold itself.",
            code="scope_escalation",
            details={"missing": missing},
        )


def _created(row: ApiKey, full: str) -> KeyCreated:
    return KeyCreated(**KeyOut.model_validate(row).model_dump(), key=full)


@tenant_api.get("/keys", response_model=KeyList, summary="List the tenant's API keys (never their secrets)")
def list_keys(ctx: KeysManage, session: SessionDep) -> KeyList:
    return KeyList(items=[KeyOut.model_validate(k) for k in ApiKeyRepository(session, ctx.tenant_id).list()])


@tenant_api.post(
    "/keys",
    response_model=KeyCreated,
    status_code=201,
    summary="Create an API key",
    description="The full key is in the response once; only its keyed hash is stored. The new key's "
    "scopes must be a subset of the calling key's scopes (403 `scope_escalation` otherwise).",
)
def create_key(body: KeyCreate, ctx: KeysManage, session: SessionDep) -> KeyCreated:
    _ensure_within_caller(ctx, body.scopes)
    row, full = service.create_api_key(
        session, tenant=ctx.tenant, scopes=body.scopes, name=body.name, expires_at=body.expires_at
    )
    session.flush()
    return _created(row, full)


@tenant_api.delete(
    "/keys/{key_id}",
    status_code=204,
    response_class=Response,
    summary="Revoke an API key",
    description="Effective on every API process from the next request (keys are not cached). "
    "Sessions opened with the key stop working too. Revoking twice is harmless.",
)
def revoke_key(key_id: str, ctx: KeysManage, session: SessionDep) -> Response:
    service.revoke_key(session, ApiKeyRepository(session, ctx.tenant_id).get(key_id))
    session.flush()
    return Response(status_code=204)


@tenant_api.post(
    "/keys/{key_id}/rotate",
    response_model=KeyCreated,
    status_code=201,
    summary="Rotate an API key",
    description="Creates a replacement with the same name, scopes and expiry and lets the old key "
    "work for `grace_seconds` more (its `expires_at` becomes now + grace; 0 stops it now).",
    responses=errors(409, s409="The key is revoked or expired (codes `key_revoked`, `key_expired`)."),
)
def rotate_key(key_id: str, body: KeyRotate, ctx: KeysManage, session: SessionDep) -> KeyCreated:
    old = ApiKeyRepository(session, ctx.tenant_id).get(key_id)
    _ensure_within_caller(ctx, old.scopes or [])
    row, full = service.rotate_key(session, old, grace_seconds=body.grace_seconds)
    session.flush()
    return _created(row, full)


@tenant_api.post(
    "/auth/session",
    response_model=SessionOut,
    summary="Exchange an API key for a dashboard session",
    description="Send the API key as bearer token (or as `api_key` in the body). Answers a short-lived "
    "JWT and sets it as the HttpOnly, SameSite=Lax cookie `tq_session` (Secure over https). The session "
    "carries the key's scopes and dies with the key (revocation, expiry). A session token cannot be "
    "exchanged for another one. A suspended tenant gets 403 `tenant_suspended` (its keys still read).",
    openapi_extra={"security": KEY_LOGIN_SECURITY},
    responses=errors(
        401,
        403,
        429,
        s401="No API key, or one that is unknown, revoked or expired (a session token is refused too).",
        s403="The tenant is suspended (code `tenant_suspended`).",
        s429="Too many failed credentials from this address (code `too_many_auth_failures`).",
    ),
)
def create_session(
    request: Request, response: Response, session: SessionDep, body: SessionCreate | None = None
) -> SessionOut:
    raw = auth.bearer_token(request) or (body.api_key if body else None)
    issued = auth.key_login(request, session, raw)
    # key_login verified the key, so it parses and its row exists; a session is a new credential,
    # which a suspended tenant may not create (its keys still read).
    parsed = parse_key(raw or "")
    key = session.get(ApiKey, parsed.kid) if parsed else None
    if key is not None:
        refuse_suspended(key.tenant)
    set_session_cookie(response, request, SESSION_COOKIE, issued.token, issued.ttl)
    return SessionOut(token=issued.token, expires_at=issued.expires_at)


@tenant_api.delete(
    "/auth/session",
    status_code=204,
    response_class=Response,
    summary="End the dashboard session",
    description="Ends the session sent as bearer token or `tq_session` cookie: the JWT is revoked "
    "server-side (refused from now on, even if a copy was kept) and the cookie is cleared. Needs no "
    "valid credential, so an expired session can always log out.",
)
def delete_session(request: Request) -> Response:
    auth.end_tenant_session(request)
    response = Response(status_code=204)
    clear_session_cookie(response, request, SESSION_COOKIE)
    return response


@operator_api.get("/tenants/{tenant_id}/keys", response_model=KeyList, summary="List a tenant's API keys")
def list_tenant_keys(tenant_id: str, op: Operator, session: SessionDep) -> KeyList:
    tenant = get_tenant(session, tenant_id)
    return KeyList(items=[KeyOut.model_validate(k) for k in ApiKeyRepository(session, tenant.id).list()])


@operator_api.post(
    "/tenants/{tenant_id}/keys",
    response_model=KeyCreated,
    status_code=201,
    summary="Create an API key for a tenant (onboarding)",
    description="The full key is in the response once; hand it to the tenant.",
)
def create_tenant_key(tenant_id: str, body: KeyCreate, op: Operator, session: SessionDep) -> KeyCreated:
    tenant = get_tenant(session, tenant_id)
    row, full = service.create_api_key(
        session, tenant=tenant, scopes=body.scopes, name=body.name, expires_at=body.expires_at
    )
    session.commit()
    return _created(row, full)


router = APIRouter()
router.include_router(tenant_api)
router.include_router(accounts_router.router, dependencies=[Depends(current_operator)])
router.include_router(operator_api)
