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
billing_app = typer.Typer(help="Usage metering and billing: flush usage, reports.", no_args_is_help=True)
app.add_typer(billing_app, name="billing")

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
    """Run API, dispatcher, worker, beat and the usage flusher (and an embedded Redis unless
    TENANTQ_REDIS_URL is set) in the foreground. Ctrl-C or SIGTERM stops every process."""
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
    data_dir: DataDir = None,
) -> None:
    """Run a Celery worker (same as `celery -A tenantq.worker worker`)."""
    settings = _settings(data_dir)
    from tenantq.worker import app as celery_app
    from tenantq.worker.celery_app import SYSTEM_QUEUE

    q = queues or f"{settings.exec_queue},{SYSTEM_QUEUE}"
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
    """Run the dispatcher that releases jobs from per-tenant queues to the workers."""
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


@billing_app.command("flush")
def billing_flush(
    once: Annotated[bool, typer.Option("--once", help="Write what is buffered now, then exit.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Write buffered usage (Redis stream tq:usage) to SQL, close lost attempts, resync quotas.

    Runs until stopped; several flushers may run at once (writes are idempotent)."""
    settings = _settings(data_dir)
    _setup_logging()
    _ensure_db(settings)
    from tenantq.billing.buffer import main as flush_main

    written = flush_main(once=once)
    if once:
        typer.echo(f"{written} usage events written")


@billing_app.command("report")
def billing_report(
    period: Annotated[str, typer.Option("--period", help="Calendar month, UTC: YYYY-MM.")],
    tenant: Annotated[str | None, typer.Option("--tenant", help="Tenant id or name (default: every tenant, "
                                               "with revenue per plan).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="json or csv.")] = "json",
    group_by: Annotated[str, typer.Option("--group-by", help="With --tenant: rows by task or day.")] = "task",
    data_dir: DataDir = None,
) -> None:
    """Print a usage report for PERIOD: one tenant's usage by task type or day, or all tenants."""
    from tenantq.billing import reports
    from tenantq.platform.db import system_session
    from tenantq.platform.errors import InvalidInput
    from tenantq.tenants.service import get_tenant_by_ref

    settings = _settings(data_dir)
    try:
        if fmt not in ("json", "csv"):
            raise InvalidInput("--format must be json or csv.", details={"format": fmt})
        _ensure_db(settings)
        with system_session() as session:
            if tenant:
                report = reports.tenant_report(session, get_tenant_by_ref(session, tenant), period, group_by)
                text = reports.tenant_report_csv(report) if fmt == "csv" else json.dumps(report, indent=2)
            else:
                report = reports.operator_report(session, period)
                text = reports.operator_report_csv(report) if fmt == "csv" else json.dumps(report, indent=2)
    except Exception as exc:  # noqa: BLE001
        _fail(fmt == "json", exc)
    typer.echo(text, nl=not text.endswith("\n"))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
