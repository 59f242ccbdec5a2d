"""Dashboard sessions: short-lived JWTs (python-jose) exchanged for an API key.

Tokens are always decoded with one explicit algorithm, audience and issuer, and ``exp`` required:
never let the token choose its algorithm (python-jose accepts forged HS256-with-public-key tokens
when ``algorithms`` is omitted). The ``kid`` header names the signing secret so it can rotate:
``TENANTQ_SECRET_KEY`` signs new tokens; ``TENANTQ_PREVIOUS_SECRET_KEYS`` still verify old ones.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta

from jose import JWTError, jwt

from tenantq.core.db import utcnow
from tenantq.core.errors import Unauthorized
from tenantq.core.settings import get_settings

ALGORITHM = "HS256"
ISSUER = "tenantq"
TENANT_AUDIENCE = "tenantq:dashboard"
OPERATOR_AUDIENCE = "tenantq:operator"
SESSION_COOKIE = "tq_session"  # a tenant session (the dashboard and the API)
ADMIN_SESSION_COOKIE = "tq_admin_session"  # an operator session (the operator dashboard and the API)
DEFAULT_TTL = timedelta(hours=1)
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


@dataclass(frozen=True)
class SessionClaims:
    subject: str  # tenant id, or "operator"
    key_id: str | None
    scopes: frozenset[str]
    audience: str
    expires_at: int


def issue_token(
    *,
    subject: str,
    audience: str = TENANT_AUDIENCE,
    scopes: list[str] | None = None,
    api_key_id: str | None = None,
    ttl: timedelta = DEFAULT_TTL,
) -> tuple[str, int]:
    settings = get_settings()
    now = utcnow()
    exp = int((now + ttl).timestamp())
    claims = {
        "iss": ISSUER,
        "aud": audience,
        "sub": subject,
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()),
        "exp": exp,
        "scopes": sorted(scopes or []),
    }
    if api_key_id:
        claims["kid_api"] = api_key_id
    token = jwt.encode(
        claims,
        _signing_secret(settings.secret_key),
        algorithm=ALGORITHM,
        headers={"kid": key_id(settings.secret_key)},
    )
    return token, exp


def decode_token(token: str, *, audience: str = TENANT_AUDIENCE) -> SessionClaims:
    """Verify signature, ``alg`` (HS256 only), ``kid`` (a known secret), ``iss``, ``aud``, ``exp``,
    ``iat``, ``sub``; anything else answers 401 ``invalid_session`` (``expired_session`` if only
    expired). Never lets the token choose its algorithm or key."""
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
    if (
        not isinstance(claims.get("sub"), str)
        or not isinstance(scopes, list)
        or not all(isinstance(x, str) for x in scopes)
        or (api_key_id is not None and not isinstance(api_key_id, str))
        or not isinstance(claims.get("exp"), int)
    ):
        raise Unauthorized("Invalid session token.", code="invalid_session")
    return SessionClaims(
        subject=claims["sub"],
        key_id=api_key_id,
        scopes=frozenset(scopes),
        audience=audience,
        expires_at=int(claims["exp"]),
    )


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
