"""Tenant-facing auth routes: API keys (``/v1/keys``) and dashboard sessions (``/v1/auth/session``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Request, Response

from tenantq.core.db import utcnow
from tenantq.core.dependencies import SessionDep
from tenantq.core.errors import Forbidden, Unauthorized
from tenantq.tenants.access.dependencies import (
    KeysManage,
    TenantContext,
    _bearer,
    _throttled,
    authenticate_key,
)
from tenantq.tenants.access.sessions import (
    DEFAULT_TTL,
    SESSION_COOKIE,
    TENANT_AUDIENCE,
    clear_session_cookie,
    issue_token,
    looks_like_jwt,
    set_session_cookie,
)
from tenantq.tenants.accounts import service
from tenantq.tenants.accounts.repository import ApiKeyRepository
from tenantq.tenants.accounts.schemas import (
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyOut,
    KeyRotate,
    SessionCreate,
    SessionOut,
)

router = APIRouter(prefix="/v1", tags=["auth"])


def _ensure_within_caller(ctx: TenantContext, scopes: list[str] | set[str]) -> None:
    # A key may only hand out what it holds: keys:manage alone must not mint a billing:read key.
    missing = sorted(set(scopes) - set(ctx.scopes))
    if missing:
        raise Forbidden(
            "A key cannot grant scopes it does not hold itself.",
            code="scope_escalation",
            details={"missing": missing},
        )


def _created(row, full: str) -> KeyCreated:
    return KeyCreated(**KeyOut.model_validate(row).model_dump(), key=full)


@router.get("/keys", response_model=KeyList, summary="List the tenant's API keys (never their secrets)")
def list_keys(ctx: KeysManage, session: SessionDep) -> KeyList:
    return KeyList(items=[KeyOut.model_validate(k) for k in ApiKeyRepository(session, ctx.tenant_id).list()])


@router.post(
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


@router.delete(
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


@router.post(
    "/keys/{key_id}/rotate",
    response_model=KeyCreated,
    status_code=201,
    summary="Rotate an API key",
    description="Creates a replacement with the same name, scopes and expiry and lets the old key "
    "work for `grace_seconds` more (its `expires_at` becomes now + grace; 0 stops it now).",
)
def rotate_key(key_id: str, body: KeyRotate, ctx: KeysManage, session: SessionDep) -> KeyCreated:
    old = ApiKeyRepository(session, ctx.tenant_id).get(key_id)
    _ensure_within_caller(ctx, old.scopes or [])
    row, full = service.rotate_key(session, old, grace_seconds=body.grace_seconds)
    session.flush()
    return _created(row, full)


@router.post(
    "/auth/session",
    response_model=SessionOut,
    summary="Exchange an API key for a dashboard session",
    description="Send the API key as bearer token (or as `api_key` in the body). Answers a short-lived "
    "JWT and sets it as the HttpOnly, SameSite=Lax cookie `tq_session` (Secure over https). The session "
    "carries the key's scopes and dies with the key (revocation, expiry). A session token cannot be "
    "exchanged for another one.",
)
def create_session(
    request: Request, response: Response, session: SessionDep, body: SessionCreate | None = None
) -> SessionOut:
    raw = _bearer(request) or (body.api_key if body else None)
    if not raw:
        raise Unauthorized(
            "Send an API key as 'Authorization: Bearer <api key>' or as 'api_key'.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if looks_like_jwt(raw):
        # Otherwise a stolen session could be extended forever by exchanging it for fresh ones.
        raise Unauthorized(
            "A session is opened with an API key, not with another session.", code="api_key_required"
        )
    ctx = _throttled(request, lambda: authenticate_key(session, raw))
    now = utcnow()
    key = ApiKeyRepository(session, ctx.tenant_id).get(ctx.key_id)
    ttl = DEFAULT_TTL
    if key.expires_at is not None:
        ttl = min(ttl, key.expires_at - now)
    ttl = max(ttl, timedelta(seconds=1))
    token, exp = issue_token(
        subject=ctx.tenant_id,
        audience=TENANT_AUDIENCE,
        scopes=sorted(ctx.scopes),
        api_key_id=ctx.key_id,
        ttl=ttl,
    )
    set_session_cookie(response, request, SESSION_COOKIE, token, ttl)
    return SessionOut(token=token, expires_at=datetime.fromtimestamp(exp, UTC))


@router.delete(
    "/auth/session",
    status_code=204,
    response_class=Response,
    summary="End the dashboard session",
    description="Clears the `tq_session` cookie. Needs no credential, so an expired session can "
    "always log out. The JWT itself stays valid until it expires; revoke the key to kill it sooner.",
)
def delete_session(request: Request) -> Response:
    response = Response(status_code=204)
    clear_session_cookie(response, request, SESSION_COOKIE)
    return response
