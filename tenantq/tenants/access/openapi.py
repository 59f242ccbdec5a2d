"""The credentials of the API as the OpenAPI document describes them (``core.openapi.Credential``).

Tenant routes (``/v1``) take an API key or a session JWT as bearer token, or the dashboard's session
cookie; operator routes (``/admin/v1``) take the admin token or an operator JWT as bearer token, or the
operator dashboard's session cookie. ``tenantq.app`` hands these to ``install_openapi``, which sets each
operation's security from the dependency it runs.
"""

from __future__ import annotations

from typing import Any

from tenantq.core.openapi import Credential
from tenantq.tenants.access.dependencies import (
    RequireScope,
    RequireScopeReleased,
    current_operator,
    current_tenant,
)
from tenantq.tenants.access.sessions import ADMIN_SESSION_COOKIE, SESSION_COOKIE

API_KEY = "ApiKey"
SESSION_COOKIE_SCHEME = "SessionCookie"
OPERATOR_TOKEN = "OperatorToken"
OPERATOR_COOKIE_SCHEME = "OperatorSessionCookie"

TENANT_SCHEMES: dict[str, dict[str, Any]] = {
    API_KEY: {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "tq_live_<id>_<secret>",
        "description": "`Authorization: Bearer <API key>` (or a session token from `POST /v1/auth/session`). "
        "The scopes listed on an operation are the ones the key needs.",
    },
    SESSION_COOKIE_SCHEME: {
        "type": "apiKey",
        "in": "cookie",
        "name": SESSION_COOKIE,
        "description": "The dashboard's session cookie, set by `POST /v1/auth/session`. State-changing "
        "requests with it must come from the dashboard's own origin.",
    },
}

OPERATOR_SCHEMES: dict[str, dict[str, Any]] = {
    OPERATOR_TOKEN: {
        "type": "http",
        "scheme": "bearer",
        "description": "`Authorization: Bearer $TENANTQ_ADMIN_TOKEN`, or an operator session token. While "
        "`TENANTQ_ADMIN_TOKEN` is unset every operator route answers 403 `operator_disabled`.",
    },
    OPERATOR_COOKIE_SCHEME: {
        "type": "apiKey",
        "in": "cookie",
        "name": ADMIN_SESSION_COOKIE,
        "description": "The operator dashboard's session cookie.",
    },
}


def _scope(call: Any) -> str | None:
    return call.scope if isinstance(call, RequireScope | RequireScopeReleased) else None


TENANT_CREDENTIAL = Credential(dependency=current_tenant, schemes=TENANT_SCHEMES, scope_of=_scope)
OPERATOR_CREDENTIAL = Credential(dependency=current_operator, schemes=OPERATOR_SCHEMES)
CREDENTIALS = (TENANT_CREDENTIAL, OPERATOR_CREDENTIAL)

# POST /v1/auth/session takes an API key (as bearer token or in the body) rather than a session.
KEY_LOGIN_SECURITY: list[dict[str, list[str]]] = [{API_KEY: []}, {}]
