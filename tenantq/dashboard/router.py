"""HTML routes of the tenant dashboard (``/dashboard``) and the operator dashboard (``/admin``), plus
the two operator JSON endpoints only the dashboard needs (``/admin/v1/overview``, ``/admin/v1/workers``).

Pages are shells: they authenticate from the cookie, render the layout, and let ``dashboard.js`` fetch
the data from the JSON API with the same cookie. Anything a page must decide before rendering (is this
job yours? is the session valid?) is decided here, server side, with the same rules as the API.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from tenantq.core.dependencies import SessionDep
from tenantq.core.errors import NotFound, TenantqError
from tenantq.core.redis import get_redis
from tenantq.core.settings import get_settings
from tenantq.dashboard import service
from tenantq.dashboard.schemas import Overview, WorkersOut
from tenantq.platform.jobs.repository import JobRepository
from tenantq.tenants.access import auth
from tenantq.tenants.access.auth import TenantContext
from tenantq.tenants.access.dependencies import Operator
from tenantq.tenants.access.keys import ALL_SCOPES
from tenantq.tenants.access.sessions import (
    ADMIN_SESSION_COOKIE,
    SESSION_COOKIE,
    clear_session_cookie,
    set_session_cookie,
)

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
STATIC_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}

templates = Jinja2Templates(directory=str(HERE / "templates"))

pages = APIRouter(include_in_schema=False)
# The operator JSON endpoints are part of the documented operator API.
admin_api = APIRouter(prefix="/admin/v1", tags=["operator"])

# Everything the pages load comes from here (no CDN); 'self' only, no inline script or style.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

TENANT_NAV = [
    ("jobs", "Jobs", "/dashboard/jobs"),
    ("usage", "Usage", "/dashboard/usage"),
    ("queue", "Queue", "/dashboard/queue"),
    ("billing", "Billing", "/dashboard/billing"),
    ("settings", "Settings", "/dashboard/settings"),
]
ADMIN_NAV = [
    ("tenants", "Tenants", "/admin"),
    ("workers", "Workers & queues", "/admin/workers"),
    ("plans", "Plans", "/admin/plans"),
    ("billing", "Billing", "/admin/billing"),
]


@lru_cache
def static_version(name: str) -> str:
    """Content hash in asset URLs so a new release is never served from a stale browser cache."""
    return hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:12]


def asset_url(name: str) -> str:
    return f"/dashboard/static/{name}?v={static_version(name)}"


templates.env.globals["asset_url"] = asset_url


def same_origin(request: Request) -> bool:
    """Form posts must come from our own pages. Browsers send ``Origin`` on POST; when it is absent
    (non-browser client) the SameSite=Lax cookies are the remaining protection."""
    origin = request.headers.get("origin")
    if origin is None:
        referer = request.headers.get("referer")
        if referer is None:
            return True
        origin = referer
    return urlsplit(origin).netloc == request.headers.get("host", "")


def _safe_next(value: str | None, prefix: str) -> str:
    # Only local paths inside the same dashboard: never an open redirect ("//evil", "/\\evil", "http:").
    if value and value.startswith(prefix) and not value.startswith("//") and "\\" not in value:
        return value
    return prefix if prefix == "/admin" else f"{prefix}/jobs"


def render(request: Request, template: str, *, status_code: int = 200, **context: Any) -> HTMLResponse:
    response = templates.TemplateResponse(request, template, context, status_code=status_code)
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


def _tenant_page(
    request: Request,
    template: str,
    ctx: TenantContext,
    page: str,
    title: str,
    status_code: int = 200,
    **extra: Any,
) -> HTMLResponse:
    tenant = ctx.tenant
    return render(
        request,
        template,
        status_code=status_code,
        area="tenant",
        page=page,
        title=title,
        nav=TENANT_NAV,
        tenant={
            "id": ctx.tenant_id,
            "name": tenant.name,
            "plan": tenant.plan_name,
            "status": tenant.status,
        },
        scopes=sorted(ctx.scopes),
        session_key_id=ctx.key_id,
        **extra,
    )


def _admin_page(request: Request, template: str, page: str, title: str, **extra: Any) -> HTMLResponse:
    return render(
        request,
        template,
        area="admin",
        page=page,
        title=title,
        nav=ADMIN_NAV,
        **extra,
    )


def tenant_from_cookie(request: Request, session: SessionDep) -> TenantContext | None:
    try:
        return auth.tenant_cookie(request, session)
    except TenantqError:
        return None


def operator_from_cookie(request: Request) -> bool:
    try:
        return auth.operator_cookie(request) is not None
    except TenantqError:
        return False


def _to_login(request: Request, login_path: str) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{login_path}?next={quote(target, safe='/')}", status_code=303)


# ---------------------------------------------------------------------------------------------------
# Static assets: an explicit allow-list of files, so no path from the URL ever reaches the filesystem.


@pages.get("/dashboard/static/{name}")
def static_asset(name: str) -> Response:
    path = STATIC_DIR / name
    if path.suffix not in STATIC_TYPES or path.parent != STATIC_DIR or not path.is_file():
        raise NotFound("No such asset.", details={"name": name})
    return FileResponse(
        path,
        media_type=STATIC_TYPES[path.suffix],
        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )


# ---------------------------------------------------------------------------------------------------
# Tenant dashboard


@pages.get("/dashboard/login")
def login_form(request: Request, session: SessionDep, next: str | None = None) -> Response:
    if tenant_from_cookie(request, session) is not None:
        return RedirectResponse(_safe_next(next, "/dashboard"), status_code=303)
    return render(
        request,
        "dashboard/login.html",
        area="tenant",
        page="login",
        title="Sign in",
        next=_safe_next(next, "/dashboard"),
        error=None,
    )


@pages.post("/dashboard/login")
def login(
    request: Request,
    session: SessionDep,
    api_key: Annotated[str, Form(max_length=512)] = "",
    next: Annotated[str | None, Form(max_length=2048)] = None,
) -> Response:
    target = _safe_next(next, "/dashboard")
    if not same_origin(request):
        return render(
            request,
            "dashboard/login.html",
            status_code=403,
            area="tenant",
            page="login",
            title="Sign in",
            next=target,
            error="This sign-in form was posted from another site.",
        )
    try:
        issued = auth.key_login(request, session, api_key.strip())
    except TenantqError as exc:
        page = render(
            request,
            "dashboard/login.html",
            status_code=exc.status_code,
            area="tenant",
            page="login",
            title="Sign in",
            next=target,
            error=exc.message,
        )
        page.headers.update(exc.headers)  # Retry-After when the address is throttled
        return page
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(response, request, SESSION_COOKIE, issued.token, issued.ttl)
    return response


@pages.post("/dashboard/logout")
def logout(request: Request) -> Response:
    if not same_origin(request):
        return Response("Cross-site sign-out refused.", status_code=403, media_type="text/plain")
    auth.end_tenant_session(request)
    response = RedirectResponse("/dashboard/login", status_code=303)
    clear_session_cookie(response, request, SESSION_COOKIE)
    return response


@pages.get("/dashboard")
def dashboard_home() -> RedirectResponse:
    return RedirectResponse("/dashboard/jobs", status_code=303)


_TENANT_PAGES = {
    "jobs": ("dashboard/jobs.html", "Jobs"),
    "usage": ("dashboard/usage.html", "Usage"),
    "queue": ("dashboard/queue.html", "Queue"),
    "billing": ("dashboard/billing.html", "Billing"),
    "settings": ("dashboard/settings.html", "Settings"),
}


def _tenant_page_route(page: str):
    template, title = _TENANT_PAGES[page]

    def handler(request: Request, session: SessionDep) -> Response:
        ctx = tenant_from_cookie(request, session)
        if ctx is None:
            return _to_login(request, "/dashboard/login")
        return _tenant_page(request, template, ctx, page, title, all_scopes=ALL_SCOPES)

    handler.__name__ = f"dashboard_{page}"
    return handler


for _page in _TENANT_PAGES:
    pages.add_api_route(f"/dashboard/{_page}", _tenant_page_route(_page), methods=["GET"])


@pages.get("/dashboard/jobs/{job_id}")
def job_page(job_id: str, request: Request, session: SessionDep) -> Response:
    ctx = tenant_from_cookie(request, session)
    if ctx is None:
        return _to_login(request, "/dashboard/login")
    if "jobs:read" not in ctx.scopes:
        return _tenant_page(
            request,
            "error.html",
            ctx,
            "error",
            "Not allowed",
            status_code=403,
            nav_page="jobs",
            message="The key you signed in with lacks the 'jobs:read' scope.",
        )
    try:
        # Same repository as the API: another tenant's job is "not found", never "forbidden".
        JobRepository(session, ctx.tenant_id).get(job_id)
    except NotFound:
        return _tenant_page(
            request,
            "error.html",
            ctx,
            "error",
            "Job not found",
            status_code=404,
            nav_page="jobs",
            message="There is no job with this id in your account.",
        )
    return _tenant_page(request, "dashboard/job.html", ctx, "jobs", "Job", job_id=job_id)


# ---------------------------------------------------------------------------------------------------
# Operator dashboard


def _admin_login_page(
    request: Request, *, error: str | None, next: str, status_code: int = 200
) -> HTMLResponse:
    return render(
        request,
        "admin/login.html",
        status_code=status_code,
        area="admin",
        page="login",
        title="Operator sign in",
        error=error,
        next=next,
        enabled=bool(get_settings().admin_token),
    )


@pages.get("/admin/login")
def admin_login_form(request: Request, next: str | None = None) -> Response:
    if operator_from_cookie(request):
        return RedirectResponse(_safe_next(next, "/admin"), status_code=303)
    return _admin_login_page(request, error=None, next=_safe_next(next, "/admin"))


@pages.post("/admin/login")
def admin_login(
    request: Request,
    token: Annotated[str, Form(max_length=1024)] = "",
    next: Annotated[str | None, Form(max_length=2048)] = None,
) -> Response:
    target = _safe_next(next, "/admin")
    if not same_origin(request):
        return _admin_login_page(
            request, error="This sign-in form was posted from another site.", next=target, status_code=403
        )
    try:
        issued = auth.operator_login(request, token.strip())
    except TenantqError as exc:
        page = _admin_login_page(request, error=exc.message, next=target, status_code=exc.status_code)
        page.headers.update(exc.headers)  # Retry-After when the address is throttled
        return page
    # The cookie holds a short-lived operator JWT, never the admin token itself.
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(response, request, ADMIN_SESSION_COOKIE, issued.token, issued.ttl)
    return response


@pages.post("/admin/logout")
def admin_logout(request: Request) -> Response:
    if not same_origin(request):
        return Response("Cross-site sign-out refused.", status_code=403, media_type="text/plain")
    auth.end_operator_session(request)
    response = RedirectResponse("/admin/login", status_code=303)
    clear_session_cookie(response, request, ADMIN_SESSION_COOKIE)
    return response


_ADMIN_PAGES = {
    "tenants": ("/admin", "admin/tenants.html", "Tenants"),
    "workers": ("/admin/workers", "admin/workers.html", "Workers & queues"),
    "plans": ("/admin/plans", "admin/plans.html", "Plans"),
    "billing": ("/admin/billing", "admin/billing.html", "Billing"),
}


def _admin_page_route(page: str):
    _path, template, title = _ADMIN_PAGES[page]

    def handler(request: Request) -> Response:
        if not operator_from_cookie(request):
            return _to_login(request, "/admin/login")
        return _admin_page(request, template, page, title)

    handler.__name__ = f"admin_{page}"
    return handler


for _page, (_path, _template, _title) in _ADMIN_PAGES.items():
    pages.add_api_route(_path, _admin_page_route(_page), methods=["GET"])


@admin_api.get(
    "/overview",
    response_model=Overview,
    summary="Operator overview: tenants, queues, throughput",
    description="Every tenant with plan, status, queue depth, running jobs, jobs/min (last 5 "
    "minutes), jobs and compute seconds this period; execution queue depths; jobs finished per "
    "minute over the last 30 minutes. Used by the operator dashboard.",
)
def overview(_op: Operator, session: SessionDep) -> dict[str, Any]:
    return service.operator_overview(session, get_redis())


@admin_api.get(
    "/workers",
    response_model=WorkersOut,
    summary="Workers and their heartbeats",
    description="Every worker that sent a heartbeat to Redis in the last day, with its age; 'online' "
    f"is false after {service.WORKER_STALE_AFTER_S:g} s without one. 'running' counts attempts running "
    "now on all workers. A Redis error is reported in 'error', not as a 5xx.",
)
def workers(_op: Operator) -> dict[str, Any]:
    return service.heartbeat_workers(get_redis())


# Last: any other /dashboard path is a friendly HTML 404, not the API's JSON one.
@pages.get("/dashboard/{rest:path}")
def dashboard_not_found(rest: str, request: Request, session: SessionDep) -> Response:
    ctx = tenant_from_cookie(request, session)
    if ctx is None:
        return render(
            request,
            "error.html",
            status_code=404,
            area="tenant",
            page="error",
            title="Page not found",
            message="This page does not exist.",
            nav=[],
            tenant=None,
        )
    return _tenant_page(
        request,
        "error.html",
        ctx,
        "error",
        "Page not found",
        status_code=404,
        message="This page does not exist.",
    )


router = APIRouter()
router.include_router(admin_api)
router.include_router(pages)
