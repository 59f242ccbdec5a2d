"""Dashboard sessions: short-lived JWTs (python-jose) exchanged for an API key.

Tokens are always decoded with one explicit algorithm, audience and issuer, and ``exp`` required:
never let the token choose its algorithm (python-jose accepts forged HS256-with-public-key tokens
when ``algorithms`` is omitted). The ``kid`` header names the signing secret so it can rotate:
``TENANTQ_SECRET_KEY`` signs new tokens; ``TENANTQ_PREVIOUS_SECRET_KEYS`` still verify old ones.

Even a correctly signed token is refused unless it has the shape only ``issue_token`` makes: a lifetime
(``exp - iat``) within its audience's maximum, a token id (``jti``, so logout can revoke it in a Redis
denylist until its ``exp``), and its binding: a tenant session names the API key it was exchanged for
(and dies with it), an operator session carries a fingerprint of the admin token it was opened with (and
dies when that token is rotated or removed).
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

from jose import JWTError, jwt

from tenantq.core.db import utcnow
from tenantq.core.errors import Unauthorized
from tenantq.core.keys import revoked_session_key
from tenantq.core.redis import get_redis
from tenantq.core.settings import get_settings

ALGORITHM = "HS256"
ISSUER = "tenantq"
TENANT_AUDIENCE = "tenantq:dashboard"
OPERATOR_AUDIENCE = "tenantq:operator"
SESSION_COOKIE = "tq_session"  # a tenant session (the dashboard and the API)
ADMIN_SESSION_COOKIE = "tq_admin_session"  # an operator session (the operator dashboard and the API)
DEFAULT_TTL = timedelta(hours=1)
# The operator's session is shorter than a tenant's: it can change every tenant.
OPERATOR_SESSION_TTL = timedelta(minutes=30)
# Hard maximum lifetime (exp - iat) per audience, checked on every decode: a token claiming a longer
# life was not made here, whatever its signature.
MAX_LIFETIME = {TENANT_AUDIENCE: DEFAULT_TTL, OPERATOR_AUDIENCE: OPERATOR_SESSION_TTL}
MAX_TOKEN_LENGTH = 4096


def _signing_secret(secret: str) -> str:
    # Derive a dedicated key so the API-key HMAC secret and the JWT key are never the same bytes.
    return hashlib.sha256(b"tenantq-session:" + secret.encode()).hexdigest()


def key_id(secret: str) -> str:
    return hashlib.sha256(b"kid:" + secret.encode()).hexdigest()[:16]


def _secrets_by_kid() -> dict[str, str]:
    settings = get_settings()
    secrets = [settings.secret_key, *settings.previous_secret_keys]
    return {key_id(s): _signing_secret(s) for s in secrets if s}


def admin_token_fingerprint(admin_token: str) -> str:
    """What an operator session remembers of the admin token: enough to tell it changed, nothing that
    helps guess it (keyed by the token itself, so equal only for the same token)."""
    return hmac.new(admin_token.encode(), b"tenantq-operator-session", hashlib.sha256).hexdigest()[:32]


def _current_admin_fingerprint() -> str | None:
    token = get_settings().admin_token
    return admin_token_fingerprint(token) if token else None


@dataclass(frozen=True)
class SessionClaims:
    subject: str  # tenant id, or "operator"
    key_id: str | None  # always set on a tenant session; None on an operator session
    scopes: frozenset[str]
    audience: str
    expires_at: int
    token_id: str


def issue_token(
    *,
    subject: str,
    audience: str = TENANT_AUDIENCE,
    scopes: list[str] | None = None,
    api_key_id: str | None = None,
    ttl: timedelta | None = None,
) -> tuple[str, int]:
    """A signed session, living ``ttl`` (default: the audience's maximum). A tenant session needs
    ``api_key_id``; an operator session is bound to the current admin token (``ValueError`` without
    one, or with a ``ttl`` over the audience's maximum)."""
    settings = get_settings()
    ttl = MAX_LIFETIME[audience] if ttl is None else ttl
    if ttl > MAX_LIFETIME[audience]:
        raise ValueError(f"session lifetime {ttl} exceeds the maximum {MAX_LIFETIME[audience]}")
    now = utcnow()
    exp = int((now + ttl).timestamp())
    claims: dict[str, object] = {
        "iss": ISSUER,
        "aud": audience,
        "sub": subject,
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()),
        "exp": exp,
        "jti": uuid.uuid4().hex,
        "scopes": sorted(scopes or []),
    }
    if api_key_id:
        claims["kid_api"] = api_key_id
    if audience == OPERATOR_AUDIENCE:
        fingerprint = _current_admin_fingerprint()
        if fingerprint is None:
            raise ValueError("no operator session without TENANTQ_ADMIN_TOKEN")
        claims["adm"] = fingerprint
    token = jwt.encode(
        claims,
        _signing_secret(settings.secret_key),
        algorithm=ALGORITHM,
        headers={"kid": key_id(settings.secret_key)},
    )
    return token, exp


def decode_token(token: str, *, audience: str = TENANT_AUDIENCE) -> SessionClaims:
    """Verify signature, ``alg`` (HS256 only), ``kid`` (a known secret), ``iss``, ``aud``, ``exp``,
    ``iat``, ``sub``, ``jti``, the lifetime and the binding (see the module); anything else answers 401
    ``invalid_session`` (``expired_session`` if only expired, ``revoked_session`` if logged out or its
    admin token changed). Never lets the token choose its algorithm or key."""
    claims = _verified_claims(token, audience)
    if get_redis().exists(revoked_session_key(claims.token_id)):
        raise Unauthorized("This session was ended.", code="revoked_session")
    return claims


def _verified_claims(token: str, audience: str) -> SessionClaims:
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        raise Unauthorized("Malformed session token.", code="invalid_session")
    try:
        header = jwt.get_unverified_header(token)
    except Exception:  # noqa: BLE001 - any parsing problem (bad base64, non-object JSON) is a bad token
        raise Unauthorized("Malformed session token.", code="invalid_session") from None
    if not isinstance(header, dict) or header.get("alg") != ALGORITHM:
        raise Unauthorized("Unsupported session token algorithm.", code="invalid_session")
    secret = _secrets_by_kid().get(str(header.get("kid")))
    if secret is None:
        raise Unauthorized("Unknown session signing key.", code="invalid_session")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=ISSUER,
            options={
                "require_exp": True,
                "require_iat": True,
                "require_sub": True,
                "require_aud": True,
                "require_iss": True,
                "verify_exp": True,
                "verify_signature": True,
                "verify_aud": True,
                "verify_iss": True,
                "verify_iat": True,
                "verify_nbf": True,
                "verify_sub": True,
            },
        )
    except JWTError as exc:
        code = "expired_session" if "expired" in str(exc).lower() else "invalid_session"
        raise Unauthorized("Invalid or expired session token.", code=code) from None
    except Exception:  # noqa: BLE001 - e.g. a claim of an unexpected type inside a validly signed token
        raise Unauthorized("Invalid session token.", code="invalid_session") from None
    scopes = claims.get("scopes") or []
    api_key_id = claims.get("kid_api")
    exp, iat, jti = claims.get("exp"), claims.get("iat"), claims.get("jti")
    if (
        not isinstance(claims.get("sub"), str)
        or not isinstance(scopes, list)
        or not all(isinstance(x, str) for x in scopes)
        or (api_key_id is not None and not isinstance(api_key_id, str))
        or not isinstance(exp, int)
        or not isinstance(iat, int)
        or not isinstance(jti, str)
        or not jti
    ):
        raise Unauthorized("Invalid session token.", code="invalid_session")
    if exp - iat > MAX_LIFETIME[audience].total_seconds():
        raise Unauthorized("Session lifetime exceeds the maximum.", code="invalid_session")
    if audience == TENANT_AUDIENCE and not api_key_id:
        raise Unauthorized("Session is bound to no API key.", code="invalid_session")
    if audience == OPERATOR_AUDIENCE:
        fingerprint = claims.get("adm")
        if not isinstance(fingerprint, str):
            raise Unauthorized("Invalid session token.", code="invalid_session")
        current = _current_admin_fingerprint()
        if current is None or not hmac.compare_digest(fingerprint, current):
            raise Unauthorized("The operator token changed: this session has ended.", code="revoked_session")
    return SessionClaims(
        subject=claims["sub"],
        key_id=api_key_id,
        scopes=frozenset(scopes),
        audience=audience,
        expires_at=exp,
        token_id=jti,
    )


def revoke_token(token: str, *, audience: str) -> bool:
    """Logout: deny ``token`` until its ``exp`` (so the denylist never outgrows the live sessions).
    A token that does not verify, or already expired, needs no revoking: ``False``."""
    try:
        claims = _verified_claims(token, audience)
    except Unauthorized:
        return False
    ttl = claims.expires_at - int(time.time())
    if ttl <= 0:
        return False
    get_redis().set(revoked_session_key(claims.token_id), "1", ex=ttl + 1)
    return True


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and not token.startswith("tq_")


# -- cookies ------------------------------------------------------------------------------------------
# One place decides the cookie attributes of every session (API, tenant dashboard, operator dashboard):
# HttpOnly (scripts never read it), SameSite=Lax (no cross-site writes), Secure whenever served over https.


def set_session_cookie(response, request, name: str, token: str, ttl: timedelta) -> None:
    response.set_cookie(
        name,
        token,
        max_age=int(ttl.total_seconds()),
        path="/",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )


def clear_session_cookie(response, request, name: str) -> None:
    response.delete_cookie(
        name, path="/", httponly=True, samesite="lax", secure=request.url.scheme == "https"
    )
