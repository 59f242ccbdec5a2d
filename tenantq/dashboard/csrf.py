"""CSRF protection for cookie-authenticated requests.

The dashboard authenticates to the JSON API with cookies (``tq_session`` for tenants,
``tq_admin_session`` for the operator), so a browser would attach them to requests another site
makes. Two layers stop that:

1. Both cookies are ``SameSite=Lax``: browsers do not send them on cross-site POST/PATCH/DELETE.
2. This guard: a state-changing API request (anything but GET/HEAD/OPTIONS under ``/v1`` or
   ``/admin/v1``) that carries one of those cookies and no ``Authorization`` header must also carry
   ``X-Requested-With`` or a JSON ``Content-Type``. A plain HTML form cannot set either, and a
   cross-origin ``fetch`` that sets either needs a CORS preflight, which tenantq never grants.
   The dashboard's script always sends ``X-Requested-With: tenantq-dashboard``.

Requests with an ``Authorization`` header (API clients with a key) are untouched: browsers never add
that header on their own. The dashboard's own HTML form posts (``/dashboard/login`` ...) are not
under ``/v1`` and check ``Origin`` themselves (see ``router.same_origin``).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from tenantq.core.errors import error_body
from tenantq.tenants.access.sessions import ADMIN_SESSION_COOKIE, SESSION_COOKIE

CSRF_HEADER = "x-requested-with"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
GUARDED_PREFIXES = ("/v1/", "/admin/v1/")
# Exchanging a key for a session is itself how the cookie is obtained; it needs the key, not the cookie.
EXEMPT_PATHS = frozenset({"/v1/auth/session"})


def needs_csrf_proof(request: Request) -> bool:
    if request.method in SAFE_METHODS or request.headers.get("authorization"):
        return False
    path = request.url.path
    if not path.startswith(GUARDED_PREFIXES) or path in EXEMPT_PATHS:
        return False
    return SESSION_COOKIE in request.cookies or ADMIN_SESSION_COOKIE in request.cookies


def has_csrf_proof(request: Request) -> bool:
    if request.headers.get(CSRF_HEADER):
        return True
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return content_type == "application/json"


class CsrfGuard:
    """Pure ASGI: a ``@app.middleware("http")`` function (BaseHTTPMiddleware) runs the rest of every
    request in a task of its own behind memory streams, which cost each request several event loop
    rounds; under load every round waits behind the other connections' work."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("method") not in SAFE_METHODS:
            request = Request(scope)
            if needs_csrf_proof(request) and not has_csrf_proof(request):
                refusal = JSONResponse(
                    error_body(
                        "csrf_check_failed",
                        "Cookie-authenticated requests that change state must send an "
                        "'X-Requested-With' header or a JSON body.",
                        {"header": "X-Requested-With"},
                    ),
                    status_code=403,
                )
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def install_csrf_guard(app: FastAPI) -> None:
    app.add_middleware(CsrfGuard)
