"""The FastAPI application."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Literal

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

import tenantq
import tenantq.worker  # registers the task types that submissions are validated against
from tenantq.assembly import assemble
from tenantq.billing.invoicing.admin_router import router as invoicing_admin_router
from tenantq.billing.invoicing.router import router as invoicing_router
from tenantq.billing.usage.router import router as usage_router
from tenantq.core.db import get_engine
from tenantq.core.http_errors import ErrorTrap, install_error_handlers
from tenantq.core.load_shedding import LoadShedder
from tenantq.core.logging import install_request_logging
from tenantq.core.metrics import observe_request
from tenantq.core.openapi import install_openapi
from tenantq.core.redis import get_redis
from tenantq.core.request_guard import RequestGuard
from tenantq.core.response_headers import SecurityHeaders
from tenantq.core.settings import check_server_settings, get_settings
from tenantq.dashboard.csrf import install_csrf_guard
from tenantq.dashboard.router import router as dashboard_router
from tenantq.ops.metrics import METRICS_SCHEMES
from tenantq.ops.metrics import router as metrics_router
from tenantq.platform.dispatch.router import router as queue_router
from tenantq.platform.jobs.router import router as jobs_router
from tenantq.platform.jobs.waiters import close_hub
from tenantq.platform.schedules.router import router as schedules_router
from tenantq.platform.webhooks.router import router as webhooks_router
from tenantq.platform.workflows.router import router as workflows_router
from tenantq.tenants.access.openapi import CREDENTIALS
from tenantq.tenants.access.router import router as access_router

DESCRIPTION = """
tenantq runs background jobs for many tenants on Celery.

Authenticate every `/v1` call with `Authorization: Bearer <api key>`. Errors always have the shape
`{"error": {"code": ..., "message": ..., "details": ...}}`; an unexpected failure answers 500
`internal_error` with `details.request_id`, the id also sent as the `X-Request-ID` response header and
written on the server's log lines. Priorities run from 0 (least urgent) to 9 (most urgent).

An infrastructure failure answers 503 with `Retry-After`: `database_unavailable`, `queue_unavailable`,
or `overloaded` when the server sheds load. Retry after the delay; send an `idempotency_key` with every
submission, so that a retry after a lost answer (or an ambiguous failure) never creates a second job.
"""


class Liveness(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(
        description="`ok`, or `error: <exception type>`, per dependency (`database`, `redis`)."
    )


# Every router the app serves, in one list, so the reader sees every route in one place.
ROUTERS: list[APIRouter] = [
    jobs_router,
    invoicing_router,
    access_router,
    workflows_router,
    dashboard_router,
    metrics_router,
    schedules_router,
    webhooks_router,
    usage_router,
    invoicing_admin_router,
    queue_router,
]


# Swagger UI and ReDoc from the fastapi-offline package (MIT), which ships swagger-ui-dist's bundle
# (Apache-2.0) and ReDoc's standalone bundle (MIT): FastAPI's own pages load them from a CDN, which
# leaves /docs blank on a machine without internet access. The files are served as they ship.
DOCS_ASSETS_URL = "/docs-assets"
DOCS_ASSETS_DIR = files("fastapi_offline") / "static"


def install_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc, every asset served by this app itself."""
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=str(DOCS_ASSETS_DIR)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=oauth2_redirect_url,
            swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png",
        )

    @app.get(oauth2_redirect_url, include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )


def operation_id(route: APIRoute) -> str:
    return route.name


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    # The job event subscriber (started by the first waiting request) ends with the app.
    await close_hub()


# /readyz answers within this, whatever hangs (a blackholed database, a stalled Redis).
READY_TIMEOUT_S = 1.5
# Its checks run on threads of their own, not the request thread pool: under load (every pool thread
# busy) readiness must still answer, and a check stuck on a dead socket must not take a request's thread.
_READY_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="tq-readyz")


def _check_database() -> None:
    # A connection of its own, outside the pool: a pool exhausted by requests is not a dead database,
    # and this check must not wait for (nor take) one of their connections.
    engine = get_engine()
    cargs, cparams = engine.dialect.create_connect_args(engine.url)
    if engine.dialect.name == "postgresql":  # bounded, so a stalled database never piles up threads
        cparams.setdefault("connect_timeout", get_settings().db_connect_timeout_seconds)
    dbapi_conn = engine.dialect.connect(*cargs, **cparams)
    try:
        cursor = dbapi_conn.cursor()
        cursor.execute("SELECT 1")
        cursor.close()
    finally:
        dbapi_conn.close()


def _check_redis() -> None:
    get_redis().ping()


async def run_ready_checks() -> dict[str, str]:
    loop = asyncio.get_running_loop()
    futures = {
        "database": loop.run_in_executor(_READY_POOL, _check_database),
        "redis": loop.run_in_executor(_READY_POOL, _check_redis),
    }
    await asyncio.wait(futures.values(), timeout=READY_TIMEOUT_S)
    checks: dict[str, str] = {}
    for name, future in futures.items():
        if not future.done():
            checks[name] = "error: timeout"
            continue
        exc = future.exception()
        checks[name] = "ok" if exc is None else f"error: {type(exc).__name__}"
    return checks


def create_app() -> FastAPI:
    # Also here, not only in `tenantq api`: uvicorn can load this factory directly.
    check_server_settings(get_settings())
    assemble()
    app = FastAPI(
        title="tenantq",
        version=tenantq.__version__,
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        # operationId = the route function's name (`create_job`, `list_jobs`): what a generated client
        # names its functions. tests/contract checks they are unique.
        generate_unique_id_function=operation_id,
        lifespan=lifespan,
    )
    install_error_handlers(app)
    install_docs(app)
    # Dashboard cookies must not let another site make state-changing API calls (see the module).
    install_csrf_guard(app)

    # Body size (also for chunked bodies) and NUL/surrogate/NaN/depth checks on every JSON body.
    app.add_middleware(RequestGuard)

    # Outside the guard: an overloaded process refuses a request (503 overloaded) before reading its body
    # or touching the database. Inside the request log, so refusals are logged and counted.
    settings = get_settings()
    app.add_middleware(
        LoadShedder,
        max_inflight=settings.api_max_inflight,
        max_waits=settings.api_max_waits,
        wait_seconds=settings.api_overload_wait_seconds,
    )

    # Outside the guard, so it also logs 413s and timings include everything.
    install_request_logging(app, observe=observe_request)
    # Outside the request log: the request id it binds is on the log line, and an exception that
    # escapes everything inside still answers a JSON 500 (and is logged as status 500).
    app.add_middleware(ErrorTrap)
    # Outermost: nosniff, no-store and HSTS also on the answers of the middlewares above.
    app.add_middleware(SecurityHeaders)

    @app.get("/healthz", tags=["ops"], response_model=Liveness, summary="Liveness: the process answers")
    def healthz() -> Liveness:
        return Liveness(status="ok")

    @app.get(
        "/readyz",
        tags=["ops"],
        response_model=Readiness,
        summary="Readiness: database and Redis reachable",
        description=f"Answers within {READY_TIMEOUT_S:g} s whatever hangs: a check that has not answered "
        "by then counts as failed (`timeout`). Exempt from load shedding.",
        responses={503: {"model": Readiness, "description": "The database or Redis is unreachable."}},
    )
    async def readyz() -> JSONResponse:
        checks = await run_ready_checks()
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "checks": checks},
            status_code=200 if ok else 503,
            headers={} if ok else {"Retry-After": "5"},
        )

    for router in ROUTERS:
        app.include_router(router)
    # Security, every operation's error answers and the one error model (see core.openapi).
    install_openapi(app, CREDENTIALS, METRICS_SCHEMES)
    return app
