"""The FastAPI application."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

import tenantq
from tenantq.platform.db import get_engine
from tenantq.platform.errors import error_body, install_error_handlers
from tenantq.platform.redis import get_redis
from tenantq.platform.settings import get_settings

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
    "tenantq.platform.queue.router",
]


def create_app() -> FastAPI:
    import importlib

    import tenantq.worker  # noqa: F401  (registers task types)

    app = FastAPI(title="tenantq", version=tenantq.__version__, description=DESCRIPTION)
    install_error_handlers(app)

    @app.middleware("http")
    async def limit_body_size(request: Request, call_next):
        length = request.headers.get("content-length")
        limit = get_settings().max_body_bytes
        if length is not None:
            try:
                too_big = int(length) > limit
            except ValueError:
                return JSONResponse(error_body("bad_request", "Invalid Content-Length header."), 400)
            if too_big:
                return JSONResponse(
                    error_body("payload_too_large", f"Request body exceeds {limit} bytes.", {"limit": limit}), 413
                )
        return await call_next(request)

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
        return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)

    for module in ROUTER_MODULES:
        app.include_router(importlib.import_module(module).router)
    return app
