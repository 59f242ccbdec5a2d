"""The FastAPI application."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text

from tenantq.core.db import get_engine
from tenantq.core.errors import install_error_handlers
from tenantq.core.logging import install_request_logging
from tenantq.core.redis import get_redis
from tenantq.core.request_guard import RequestGuard
from tenantq.ops.metrics import observe_request

DESCRIPTION = """
tenantq runs background jobs for many tenants on Celery.

Authenticate every `/v1` call with `Authorization: Bearer <api key>`. Errors always have the shape
`{"error": {"code": ..., "message": ..., "details": ...}}`. Priorities run from 0 (least urgent) to
9 (most urgent).
"""


# Every router the app serves, by module (each exposes ``router``). One list, so the tenant-isolation
# test matrix and the reader both see every route.
ROUTER_MODULES = [
    "tenantq.platform.jobs.router",
    "tenantq.billing.invoicing.router",
    "tenantq.tenants.access.router",  # includes tenants.accounts.router, behind the operator credential
    "tenantq.platform.workflows.router",
    "tenantq.dashboard.router",
    "tenantq.ops.metrics",
    "tenantq.platform.schedules.router",
    "tenantq.platform.webhooks.router",
    "tenantq.billing.usage.router",
    "tenantq.billing.invoicing.admin_router",
    "tenantq.platform.dispatch.router",
]


def create_app() -> FastAPI:
    import importlib

    import tenantq.worker  # noqa: F401  (registers task types)

    app = FastAPI(title="tenantq", version=tenantq.__version__, description=DESCRIPTION)
    install_error_handlers(app)
    # Dashboard cookies must not let another site make state-changing API calls (see the module).
    from tenantq.dashboard.csrf import install_csrf_guard

    install_csrf_guard(app)

    # Body size (also for chunked bodies) and NUL/surrogate/NaN/depth checks on every JSON body.
    app.add_middleware(RequestGuard)

    # Added last: outermost, so it also logs 413s and timings include everything.
    install_request_logging(app, observe=observe_request)

    @app.get("/healthz", tags=["ops"], summary="Liveness: the process answers")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], summary="Readiness: database and Redis reachable")
    def readyz() -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            with get_engine().connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks["database"] = f"error: {type(exc).__name__}"
        try:
            get_redis().ping()
            checks["redis"] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks["redis"] = f"error: {type(exc).__name__}"
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503
        )

    for module in ROUTER_MODULES:
        app.include_router(importlib.import_module(module).router)
    return app
