"""Every credential check, behind one failed-login limiter.

Entry points (each one runs through ``_guarded``):
- ``tenant_credential``: a ``/v1`` request (an API key or a session JWT as bearer token, or the
  session cookie);
- ``tenant_cookie``: a tenant dashboard page (the session cookie);
- ``key_login``: an API key exchanged for a session (``POST /v1/auth/session`` and the dashboard's
  sign-in form);
- ``operator_credential``: an ``/admin/v1`` request (the admin token or an operator JWT, as bearer
  token or cookie);
- ``operator_cookie``: an operator dashboard page (the operator session cookie);
- ``operator_login``: the operator dashboard's sign-in form (the admin token).

While ``TENANTQ_ADMIN_TOKEN`` is unset no operator credential works, not even a session opened before
it was removed (403 ``operator_disabled``). Logout (``end_tenant_session``, ``end_operator_session``)
revokes the session server-side, not only its cookie.

The limiter counts wrong credentials per client address and credential (an API key's id, or
``operator``) across all of them: a wrong secret for one key on the sign-in form and on ``/v1`` spend
the same allowance, so a guesser gains nothing by moving to another door. A credential over its
allowance from an address is refused (429) before it is looked at; a credential that verifies is never
refused for failures of other credentials (see ``AuthFailureLimiter``). The unguarded checks are
private to this module so that no caller can skip the limiter.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from fastapi import Request
from jose import JWTError, jwt
from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, contains_eager, lazyload

from tenantq.core.db import utcnow
from tenantq.core.errors import Forbidden, Unauthorized
from tenantq.core.settings import get_settings
from tenantq.tenants.access.keys import KID_LEN, parse_key, verify_hash
from tenantq.tenants.access.limits import AuthFailureLimiter
from tenantq.tenants.access.models import ApiKey
from tenantq.tenants.access.sessions import (
    ADMIN_SESSION_COOKIE,
    DEFAULT_TTL,
    OPERATOR_AUDIENCE,
    OPERATOR_SESSION_TTL,
    SESSION_COOKIE,
    TENANT_AUDIENCE,
    decode_token,
    issue_token,
    looks_like_jwt,
    revoke_token,
)
from tenantq.tenants.accounts.models import Tenant

T = TypeVar("T")

# last_used_at is written at most this often per key, so authentication stays a read.
LAST_USED_RESOLUTION = timedelta(minutes=1)

# Failures that look like guessing. Not counted: no credential at all, and genuine but stale
# credentials (revoked/expired key, expired session: their signature or hash verified), so a
# dashboard with an old cookie or a client with a rotated-out key does not get its address blocked.
GUESS_CODES = frozenset(
    {"invalid_api_key", "invalid_session", "invalid_operator_credential", "api_key_required"}
)


@dataclass(frozen=True)
class TenantContext:
    """Who is calling: the tenant row (loaded in the request's session), the key behind the credential
    and its scopes. Routes take the tenant from here instead of loading it again."""

    tenant_id: str
    key_id: str | None
    tenant: Tenant
    scopes: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class OperatorContext:
    subject: str


@dataclass(frozen=True)
class IssuedSession:
    """A session JWT handed out at login, to be set as a cookie (and, by the API, returned)."""

    token: str
    ttl: timedelta
    expires_at: datetime


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def client_address(request: Request) -> str:
    # uvicorn rewrites request.client from X-Forwarded-For only for trusted proxies
    # (--forwarded-allow-ips), so this cannot be spoofed by a client header.
    return request.client.host if request.client else "unknown"


OPERATOR_CREDENTIAL = "operator"


def tenant_credential_label(raw: str | None) -> str:
    """Which credential a tenant token claims to be, for the limiter: ``key:<kid>`` for an API key or
    a session bound to one (read without verifying: it only names a bucket), else its kind."""
    if not raw:
        return "none"
    if looks_like_jwt(raw):
        try:
            kid = jwt.get_unverified_claims(raw).get("kid_api")
        except (JWTError, AttributeError):
            kid = None
        # The claim is the caller's text: only a well-formed key id names a bucket.
        if isinstance(kid, str) and len(kid) == KID_LEN and kid.isalnum() and kid.isascii():
            return f"key:{kid}"
        return "session"
    parsed = parse_key(raw)
    return f"key:{parsed.kid}" if parsed else "malformed"


def _guarded(request: Request, credential: str, check: Callable[[], T]) -> T:
    """Run ``check``; refuse (429) ``credential`` from an address where it is over its allowance
    before even looking at it, and count a wrong one against the address and the credential."""
    limiter = AuthFailureLimiter()
    address = client_address(request)
    limiter.check(address, credential)
    try:
        return check()
    except Unauthorized as exc:
        if exc.code in GUESS_CODES:
            throttled = limiter.record_failure(address, credential)
            if throttled is not None:
                raise throttled from None
        raise


# ------------------------------------------------------------------------------------------ tenants
def tenant_credential(request: Request, session: Session) -> TenantContext:
    """An API key or a session JWT as bearer token, or the dashboard's session cookie."""
    token = bearer_token(request) or request.cookies.get(SESSION_COOKIE)
    return _guarded(request, tenant_credential_label(token), lambda: _tenant_credential(request, session))


def tenant_cookie(request: Request, session: Session) -> TenantContext | None:
    """The tenant dashboard's session cookie; ``None`` without one."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    return _guarded(request, tenant_credential_label(token), lambda: _authenticate_session(session, token))


def key_login(request: Request, session: Session, raw: str | None) -> IssuedSession:
    """Exchange an API key for a tenant session. The session carries the key's scopes, never
    outlives the key, and dies with it (``_authenticate_session`` checks the key on every use)."""
    key, tenant = _guarded(request, tenant_credential_label(raw), lambda: _login_key(session, raw))
    ttl = DEFAULT_TTL
    if key.expires_at is not None:
        ttl = min(ttl, key.expires_at - utcnow())
    ttl = max(ttl, timedelta(seconds=1))
    token, exp = issue_token(
        subject=tenant.id,
        audience=TENANT_AUDIENCE,
        scopes=sorted(key.scopes or ()),
        api_key_id=key.id,
        ttl=ttl,
    )
    return IssuedSession(token=token, ttl=ttl, expires_at=datetime.fromtimestamp(exp, UTC))


def _tenant_credential(request: Request, session: Session) -> TenantContext:
    token = bearer_token(request)
    if token is None:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            return _authenticate_session(session, cookie)
        raise Unauthorized(
            "Missing credentials: send 'Authorization: Bearer <api key>'.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if looks_like_jwt(token):
        return _authenticate_session(session, token)
    key, tenant = _verify_key(session, token)
    return TenantContext(
        tenant_id=tenant.id, key_id=key.id, scopes=frozenset(key.scopes or ()), tenant=tenant
    )


def _login_key(session: Session, raw: str | None) -> tuple[ApiKey, Tenant]:
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
    return _verify_key(session, raw)


def _key_with_tenant(session: Session, kid: str) -> ApiKey | None:
    """The key with its tenant loaded, in one query (an inner join: a key without a tenant is no key)."""
    return session.execute(
        select(ApiKey).join(ApiKey.tenant).options(contains_eager(ApiKey.tenant)).where(ApiKey.id == kid)
    ).scalar_one_or_none()


def _session_tenant_and_key(
    session: Session, tenant_id: str, key_id: str | None
) -> tuple[Tenant | None, ApiKey | None]:
    """A session's tenant and the key it was opened with, in one query. An outer join: the tenant may
    be there without the key (revoked and deleted, or another tenant's), which is a different refusal."""
    row = session.execute(
        select(Tenant, ApiKey)
        .outerjoin(ApiKey, and_(ApiKey.id == key_id, ApiKey.tenant_id == Tenant.id))
        # key.tenant is the row selected beside it (the relationship's own join would repeat it).
        .options(lazyload(ApiKey.tenant))
        .where(Tenant.id == tenant_id)
    ).first()
    return (row[0], row[1]) if row is not None else (None, None)


def _verify_key(session: Session, raw: str) -> tuple[ApiKey, Tenant]:
    parsed = parse_key(raw)
    if parsed is None:
        raise Unauthorized("Malformed API key.", code="invalid_api_key")
    key = _key_with_tenant(session, parsed.kid)
    settings = get_settings()
    # Previous secrets still verify, so rotating TENANTQ_SECRET_KEY does not lock every tenant out.
    secrets = [settings.secret_key, *settings.previous_secret_keys]
    if key is None or not any(verify_hash(parsed.full, key.secret_hash, s) for s in secrets if s):
        raise Unauthorized("Unknown API key.", code="invalid_api_key")
    tenant = key.tenant
    now = utcnow()
    if key.revoked_at is not None and key.revoked_at <= now:
        raise Unauthorized("This API key has been revoked.", code="revoked_api_key")
    if key.expires_at is not None and key.expires_at <= now:
        raise Unauthorized("This API key has expired.", code="expired_api_key")
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
    return key, tenant


def _authenticate_session(session: Session, token: str) -> TenantContext:
    claims = decode_token(token, audience=TENANT_AUDIENCE)  # refuses a session bound to no key
    tenant, key = _session_tenant_and_key(session, claims.subject, claims.key_id)
    if tenant is None:
        raise Unauthorized("Invalid session.", code="invalid_session")
    # A session dies with the key it was exchanged for (the join finds no key of another tenant).
    now = utcnow()
    if key is None or (key.revoked_at is not None and key.revoked_at <= now):
        raise Unauthorized("The API key behind this session was revoked.", code="revoked_session")
    if key.expires_at is not None and key.expires_at <= now:
        raise Unauthorized("The API key behind this session has expired.", code="revoked_session")
    return TenantContext(tenant_id=tenant.id, key_id=claims.key_id, scopes=claims.scopes, tenant=tenant)


# ---------------------------------------------------------------------------------------- operator
def operator_credential(request: Request) -> OperatorContext:
    """``Bearer $TENANTQ_ADMIN_TOKEN`` or an operator-audience JWT, as bearer token or cookie."""
    _require_operator_access()
    return _guarded(request, OPERATOR_CREDENTIAL, lambda: _operator_credential(request))


def operator_cookie(request: Request) -> OperatorContext | None:
    """The operator dashboard's session cookie (an operator JWT, never the admin token); ``None``
    without one."""
    token = request.cookies.get(ADMIN_SESSION_COOKIE)
    if not token:
        return None
    _require_operator_access()
    return _guarded(request, OPERATOR_CREDENTIAL, lambda: _operator_session(token))


def end_tenant_session(request: Request) -> None:
    """Logout: revoke the tenant session sent as bearer token or cookie (if any verifies)."""
    for token in (bearer_token(request), request.cookies.get(SESSION_COOKIE)):
        if token and looks_like_jwt(token):
            revoke_token(token, audience=TENANT_AUDIENCE)


def end_operator_session(request: Request) -> None:
    """Logout: revoke the operator session sent as bearer token or cookie (if any verifies)."""
    for token in (bearer_token(request), request.cookies.get(ADMIN_SESSION_COOKIE)):
        if token and looks_like_jwt(token):
            revoke_token(token, audience=OPERATOR_AUDIENCE)


def _require_operator_access() -> None:
    if not get_settings().admin_token:
        raise Forbidden(
            "Operator access is disabled: TENANTQ_ADMIN_TOKEN is not set.", code="operator_disabled"
        )


def operator_login(request: Request, token: str) -> IssuedSession:
    """Check the admin token typed into the operator sign-in form and open an operator session.
    The session is a short-lived operator JWT, so the admin token itself never sits in a cookie."""
    context = _guarded(request, OPERATOR_CREDENTIAL, lambda: _login_operator(token))
    jwt, exp = issue_token(subject=context.subject, audience=OPERATOR_AUDIENCE, ttl=OPERATOR_SESSION_TTL)
    return IssuedSession(token=jwt, ttl=OPERATOR_SESSION_TTL, expires_at=datetime.fromtimestamp(exp, UTC))


def _is_admin_token(token: str) -> bool:
    expected = get_settings().admin_token
    if not expected:
        return False  # operator access is disabled, so no token matches
    return hmac.compare_digest(token.encode(), expected.encode())


def _operator_credential(request: Request) -> OperatorContext:
    token = bearer_token(request) or request.cookies.get(ADMIN_SESSION_COOKIE)
    if not token:
        raise Unauthorized("Operator credential required.", headers={"WWW-Authenticate": "Bearer"})
    if _is_admin_token(token):
        return OperatorContext(subject="operator")
    if looks_like_jwt(token):
        return _operator_session(token)
    raise Unauthorized("Invalid operator credential.", code="invalid_operator_credential")


def _operator_session(token: str) -> OperatorContext:
    return OperatorContext(subject=decode_token(token, audience=OPERATOR_AUDIENCE).subject)


def _login_operator(token: str) -> OperatorContext:
    _require_operator_access()
    if not token:
        raise Unauthorized("Operator credential required.")
    if not _is_admin_token(token):
        raise Unauthorized("Wrong operator token.", code="invalid_operator_credential")
    return OperatorContext(subject="operator")
