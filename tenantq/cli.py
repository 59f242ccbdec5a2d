"""The ``tenantq`` command line: run the platform and operate it."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="tenantq: a multi-tenant background job platform on Celery.", no_args_is_help=True,
                  add_completion=False,
                  pretty_exceptions_enable=False)
db_app = typer.Typer(help="Database schema management.", no_args_is_help=True)
tenant_app = typer.Typer(help="Create and inspect tenants.", no_args_is_help=True)
key_app = typer.Typer(help="Create API keys for tenants.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(tenant_app, name="tenant")
app.add_typer(key_app, name="key")

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory for the embedded SQLite/Redis (default ./.tenantq, or "
                 "$TENANTQ_DATA_DIR).", show_default=False),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]


def _settings(data_dir: Path | None = None):
    from tenantq.platform.settings import get_settings, reset_settings_cache

    if data_dir is not None:
        os.environ["TENANTQ_DATA_DIR"] = str(data_dir)
    reset_settings_cache()
    return get_settings()


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _emit(as_json: bool, payload: dict, text: str) -> None:
    typer.echo(json.dumps(payload) if as_json else text)


def _fail(as_json: bool, exc: Exception) -> None:
    from tenantq.platform.errors import TenantqError

    if isinstance(exc, TenantqError):
        payload = {"error": {"code": exc.code, "message": exc.message, "details": exc.details}}
        msg = exc.message
    else:
        payload = {"error": {"code": "error", "message": str(exc), "details": None}}
        msg = str(exc)
    if as_json:
        typer.echo(json.dumps(payload))
    else:
        typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(1)


def _ensure_db(settings) -> None:
    """CLI commands on the embedded default migrate it first so they work before `tenantq up` ran."""
    if settings.database_url is None:
        from tenantq.platform.migrate import upgrade

        upgrade(settings.effective_database_url)


@app.command()
def up(
    host: Annotated[str, typer.Option(help="API bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port.")] = 8000,
    concurrency: Annotated[int, typer.Option(help="Worker pool processes.")] = 2,
    migrate: Annotated[bool, typer.Option(help="Apply database migrations before starting.")] = True,
    data_dir: DataDir = None,
) -> None:
    """Run API, dispatcher, worker and beat (and an embedded Redis unless TENANTQ_REDIS_URL is set) in
    the foreground. Ctrl-C or SIGTERM stops every process."""
    from tenantq.platform.supervisor import Supervisor

    settings = _settings(data_dir)
    raise typer.Exit(Supervisor(settings, host=host, port=port, concurrency=concurrency, migrate=migrate).run())


@app.command()
def api(
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes.")] = 1,
    data_dir: DataDir = None,
) -> None:
    """Run only the HTTP API (uvicorn)."""
    import uvicorn

    _settings(data_dir)
    _setup_logging()
    uvicorn.run("tenantq.platform.app:create_app", factory=True, host=host, port=port, workers=workers,
                log_level="info", access_log=False)


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(help="Pool processes.")] = 2,
    queues: Annotated[str | None, typer.Option(help="Comma-separated Celery queues (default: execution + system).")] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
    tenant: Annotated[str | None, typer.Option(
        help="Run a dedicated pool for this tenant (id or name): routes its jobs to tq.exec.t.<id> and consumes "
        "only that queue. The tenant submits exactly as before.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Run a Celery worker (same as `celery -A tenantq.worker worker`)."""
    settings = _settings(data_dir)
    from tenantq.worker import app as celery_app
    from tenantq.worker.celery_app import SYSTEM_QUEUE

    q = queues or f"{settings.exec_queue},{SYSTEM_QUEUE}"
    if tenant:
        from tenantq.platform.db import system_session
        from tenantq.platform.redis import get_redis
        from tenantq.tenants.service import get_tenant_by_ref
        from tenantq.worker import routing

        with system_session() as session:
            tenant_id = get_tenant_by_ref(session, tenant).id
        q = routing.assign(get_redis(), tenant_id)
    celery_app.worker_main(["worker", f"--concurrency={concurrency}", f"--queues={q}", f"--loglevel={loglevel}",
                            f"--hostname=tenantq-{os.getpid()}@%h"])


@app.command()
def beat(
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
    data_dir: DataDir = None,
) -> None:
    """Run Celery beat (periodic and per-tenant scheduled jobs)."""
    settings = _settings(data_dir)
    settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    from tenantq.worker import app as celery_app

    celery_app.start(["beat", f"--loglevel={loglevel}",
                      f"--schedule={settings.resolved_data_dir / 'celerybeat-schedule'}"])


@app.command()
def dispatcher(data_dir: DataDir = None) -> None:
    """Run the dispatcher that releases jobs from per-tenant queues to the workers.

    Run several for high availability: one leads (a lock in Redis), the others take over if it dies.
    """
    _settings(data_dir)
    _setup_logging()
    import tenantq.worker  # noqa: F401
    from tenantq.worker.dispatcher import main

    main()


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    data_dir: DataDir = None,
) -> None:
    """Apply migrations up to REVISION (default: head) and seed the default plans."""
    from tenantq.platform.migrate import upgrade

    settings = _settings(data_dir)
    upgrade(settings.effective_database_url, revision)
    typer.echo(f"database at {revision}")


@db_app.command("check")
def db_check(data_dir: DataDir = None) -> None:
    """Fail if the models and the migrations disagree (alembic check)."""
    from tenantq.platform.migrate import check

    settings = _settings(data_dir)
    check(settings.effective_database_url)
    typer.echo("no drift between models and migrations")


@tenant_app.command("create")
def tenant_create(
    name: Annotated[str, typer.Argument(help="Unique tenant name.")],
    plan: Annotated[str, typer.Option(help="Plan name (free, pro, enterprise or one you added).")] = "free",
    as_json: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Create a tenant and print its id."""
    from tenantq.platform.db import system_session
    from tenantq.tenants.service import create_tenant

    settings = _settings(data_dir)
    try:
        _ensure_db(settings)
        with system_session() as session:
            tenant = create_tenant(session, name=name, plan=plan)
            payload = {"id": tenant.id, "name": tenant.name, "plan": tenant.plan_name}
    except Exception as exc:  # noqa: BLE001
        _fail(as_json, exc)
    _emit(as_json, payload, f"{payload['id']}  {payload['name']}  (plan {payload['plan']})")


@tenant_app.command("list")
def tenant_list(as_json: JsonOut = False, data_dir: DataDir = None) -> None:
    """List tenants."""
    from sqlalchemy import select

    from tenantq.platform.db import system_session
    from tenantq.tenants.models import Tenant

    settings = _settings(data_dir)
    _ensure_db(settings)
    with system_session() as session:
        rows = [{"id": t.id, "name": t.name, "plan": t.plan_name, "status": t.status}
                for t in session.scalars(select(Tenant).order_by(Tenant.name))]
    if as_json:
        typer.echo(json.dumps({"items": rows}))
    else:
        for r in rows:
            typer.echo(f"{r['id']}  {r['name']}  {r['plan']}  {r['status']}")


@key_app.command("create")
def key_create(
    tenant: Annotated[str, typer.Argument(help="Tenant id or name.")],
    scopes: Annotated[str | None, typer.Option(help="Comma-separated scopes (default: all).")] = None,
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    as_json: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Create an API key for TENANT and print it once (only its hash is stored)."""
    from tenantq.platform.db import system_session
    from tenantq.tenants.service import create_api_key, get_tenant_by_ref

    settings = _settings(data_dir)
    try:
        _ensure_db(settings)
        with system_session() as session:
            t = get_tenant_by_ref(session, tenant)
            scope_list = [s.strip() for s in scopes.split(",") if s.strip()] if scopes else None
            row, full = create_api_key(session, tenant=t, scopes=scope_list, name=name)
            payload = {"id": row.id, "key": full, "tenant_id": t.id, "scopes": row.scopes}
    except Exception as exc:  # noqa: BLE001
        _fail(as_json, exc)
    _emit(as_json, payload, f"{payload['key']}\n(key id {payload['id']}; shown once, store it now)")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
