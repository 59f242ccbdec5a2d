"""The ``tenantq`` command line: run the platform and operate it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

app = typer.Typer(
    help="tenantq: a multi-tenant background job platform on Celery.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema management.", no_args_is_help=True)
tenant_app = typer.Typer(
    help="Create, inspect, change, suspend and reactivate tenants.", no_args_is_help=True
)
key_app = typer.Typer(help="Create, list and revoke tenants' API keys.", no_args_is_help=True)
plan_app = typer.Typer(help="List and change plans (limits and prices).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(tenant_app, name="tenant")
app.add_typer(key_app, name="key")
billing_app = typer.Typer(
    help="Usage and billing: flush usage, reports, close periods into invoices, sync to Stripe.",
    no_args_is_help=True,
)
app.add_typer(billing_app, name="billing")
app.add_typer(plan_app, name="plan")

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Data directory for the embedded SQLite/Redis (default ./.tenantq, or $TENANTQ_DATA_DIR).",
        show_default=False,
    ),
]
# Beat's scheduler class: reads per-tenant schedules from SQL at runtime.
TENANT_SCHEDULER = "tenantq.platform.schedules.beat:TenantScheduler"
JsonOut = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]


def _settings(data_dir: Path | None = None):
    from tenantq.core.settings import get_settings, reset_settings_cache

    if data_dir is not None:
        os.environ["TENANTQ_DATA_DIR"] = str(data_dir)
    reset_settings_cache()
    return get_settings()


def _setup_logging(level: str = "INFO") -> None:
    """Structured logs (JSON unless a terminal; TENANTQ_LOG_JSON decides) and the shared metrics directory
    for a long-running role (api, worker, beat, dispatcher)."""
    from tenantq.core import logging as tq_logging
    from tenantq.ops.metrics import ensure_multiproc_dir

    tq_logging.configure(level.upper())
    ensure_multiproc_dir()


def _emit(as_json: bool, payload: dict, text: str) -> None:
    typer.echo(json.dumps(payload) if as_json else text)


def _fail(as_json: bool, exc: Exception) -> None:
    from tenantq.core.errors import TenantqError

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
        from tenantq.ops.migrate import upgrade

        upgrade(settings.effective_database_url)


@contextmanager
def _cli_session(data_dir: Path | None, as_json: bool) -> Iterator[Session]:
    """What every operator command needs: settings, an up-to-date embedded database and a system
    session (committed on success). Any failure is reported once, in the command's output format."""
    from tenantq.core.db import unscoped_session

    settings = _settings(data_dir)
    try:
        _ensure_db(settings)
        with unscoped_session() as session:
            yield session
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001
        _fail(as_json, exc)


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
    from tenantq.ops.supervisor import Supervisor

    settings = _settings(data_dir)
    raise typer.Exit(
        Supervisor(settings, host=host, port=port, concurrency=concurrency, migrate=migrate).run()
    )


@app.command()
def api(
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes.")] = 1,
    data_dir: DataDir = None,
) -> None:
    """Run only the HTTP API (uvicorn)."""
    import uvicorn

    from tenantq.core.logging import uvicorn_log_config

    _settings(data_dir)
    _setup_logging()
    # log_config is applied in every uvicorn worker process; tenantq's middleware writes the request log.
    uvicorn.run(
        "tenantq.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        access_log=False,
        log_config=uvicorn_log_config(),
    )


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(help="Pool processes.")] = 2,
    queues: Annotated[
        str | None, typer.Option(help="Comma-separated Celery queues (default: execution + system).")
    ] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
    autoscale: Annotated[
        str | None,
        typer.Option(
            help="MAX,MIN: grow the pool up to MAX processes under load "
            "and shrink to MIN when idle (replaces --concurrency)."
        ),
    ] = None,
    hostname: Annotated[
        str | None,
        typer.Option(help="Celery node name, e.g. worker@$POD_NAME (default: tenantq-<pid>@<host>)."),
    ] = None,
    tenant: Annotated[
        str | None,
        typer.Option(
            help="Run a dedicated pool for this tenant (id or name): routes its jobs to tq.exec.t.<id> and consumes "
            "only that queue. The tenant submits exactly as before."
        ),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Run a Celery worker (same as `celery -A tenantq.worker worker`). Scale out by running more of them,
    on more machines; --autoscale sizes one worker's pool with the load."""
    settings = _settings(data_dir)
    _setup_logging(loglevel)
    from tenantq.core.celery import SYSTEM_QUEUE
    from tenantq.worker import app as celery_app

    q = queues or f"{settings.exec_queue},{SYSTEM_QUEUE}"
    if tenant:
        from tenantq.core.db import unscoped_session
        from tenantq.core.redis import get_redis
        from tenantq.platform.dispatch import routing
        from tenantq.tenants.accounts.service import get_tenant_by_ref

        with unscoped_session() as session:
            tenant_id = get_tenant_by_ref(session, tenant).id
        q = routing.assign(get_redis(), tenant_id)
    pool = [f"--autoscale={autoscale}"] if autoscale else [f"--concurrency={concurrency}"]
    celery_app.worker_main(
        [
            "worker",
            *pool,
            f"--queues={q}",
            f"--loglevel={loglevel}",
            f"--hostname={hostname or f'tenantq-{os.getpid()}@%h'}",
        ]
    )


@app.command()
def beat(
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
    data_dir: DataDir = None,
) -> None:
    """Run Celery beat: the operator's periodic tasks and the tenants' schedules (read from SQL, so edits
    apply without a restart; with two beats running, each schedule's due time still fires once)."""
    settings = _settings(data_dir)
    settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    _setup_logging(loglevel)
    from tenantq.worker import app as celery_app

    celery_app.start(
        [
            "beat",
            f"--loglevel={loglevel}",
            f"--scheduler={TENANT_SCHEDULER}",
            f"--schedule={settings.resolved_data_dir / 'celerybeat-schedule'}",
        ]
    )


@app.command()
def dispatcher(data_dir: DataDir = None) -> None:
    """Run the dispatcher that releases jobs from per-tenant queues to the workers.

    Run several for high availability: one leads (a lock in Redis), the others take over if it dies.
    """
    _settings(data_dir)
    _setup_logging()
    import tenantq.worker  # noqa: F401
    from tenantq.platform.dispatch.dispatcher import main

    main()


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    data_dir: DataDir = None,
) -> None:
    """Apply migrations up to REVISION (default: head) and seed the default plans."""
    from tenantq.ops.migrate import upgrade

    settings = _settings(data_dir)
    upgrade(settings.effective_database_url, revision)
    typer.echo(f"database at {revision}")


@db_app.command("check")
def db_check(data_dir: DataDir = None) -> None:
    """Fail if the models and the migrations disagree (alembic check)."""
    from tenantq.ops.migrate import check

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
    from tenantq.tenants.accounts.service import create_tenant

    with _cli_session(data_dir, as_json) as session:
        tenant = create_tenant(session, name=name, plan=plan)
        payload = {"id": tenant.id, "name": tenant.name, "plan": tenant.plan_name}
    _emit(as_json, payload, f"{payload['id']}  {payload['name']}  (plan {payload['plan']})")


def _tenant_payload(t) -> dict:
    return {
        "id": t.id,
        "name": t.name,
        "plan": t.plan_name,
        "status": t.status,
        "overrides": t.overrides or {},
    }


def _tenant_text(p: dict) -> str:
    extra = f"  overrides {json.dumps(p['overrides'])}" if p["overrides"] else ""
    return f"{p['id']}  {p['name']}  {p['plan']}  {p['status']}{extra}"


# Money stays text all the way to Decimal: 19.90 must never pass through a float.
_TEXT_FIELDS = {"base_fee", "currency", "display_name"}


def _parse_assignments(items: list[str] | None) -> dict:
    """``field=value`` pairs; the value is read as JSON when it parses (numbers, true/false, null),
    except for text and money fields, which are kept verbatim."""
    out: dict = {}
    for item in items or []:
        field, sep, raw = item.partition("=")
        field = field.strip()
        if not sep or not field:
            raise typer.BadParameter(f"expected FIELD=VALUE, got {item!r}")
        if field in _TEXT_FIELDS:
            out[field] = raw
            continue
        try:
            out[field] = json.loads(raw)
        except ValueError:
            out[field] = raw
    return out


@tenant_app.command("list")
def tenant_list(
    status: Annotated[
        str | None, typer.Option(help="Only tenants in this status (active, suspended).")
    ] = None,
    as_json: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """List tenants with plan, status and overrides."""
    from tenantq.core.db import unscoped_session
    from tenantq.tenants.accounts.service import list_tenants

    settings = _settings(data_dir)
    _ensure_db(settings)
    with unscoped_session() as session:
        rows = [_tenant_payload(t) for t in list_tenants(session, status=status)]
    if as_json:
        typer.echo(json.dumps({"items": rows}))
    else:
        for r in rows:
            typer.echo(_tenant_text(r))


@tenant_app.command("update")
def tenant_update(
    tenant: Annotated[str, typer.Argument(help="Tenant id or name.")],
    plan: Annotated[str | None, typer.Option(help="Move the tenant to this plan.")] = None,
    name: Annotated[str | None, typer.Option(help="Rename the tenant.")] = None,
    override: Annotated[
        list[str] | None,
        typer.Option(
            "--override",
            help="Set a limit override FIELD=VALUE (repeatable), e.g. --override submit_rate=20. "
            "VALUE null removes that override.",
        ),
    ] = None,
    clear_overrides: Annotated[
        bool, typer.Option("--clear-overrides", help="Remove all overrides first.")
    ] = False,
    as_json: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Change a tenant's plan, name or limit overrides (validated against the plan)."""
    from tenantq.core.db import unscoped_session
    from tenantq.tenants.accounts.service import get_tenant_by_ref, update_tenant

    settings = _settings(data_dir)
    try:
        _ensure_db(settings)
        changes = _parse_assignments(override)
        with unscoped_session() as session:
            t = get_tenant_by_ref(session, tenant)
            overrides = {} if clear_overrides else dict(t.overrides or {})
            for field, value in changes.items():
                if value is None:
                    overrides.pop(field, None)
                else:
                    overrides[field] = value
            update_tenant(session, t, name=name, plan=plan, overrides=overrides)
            payload = _tenant_payload(t)
    except Exception as exc:  # noqa: BLE001
        _fail(as_json, exc)
    _emit(as_json, payload, _tenant_text(payload))


def _set_status(tenant: str, suspend: bool, as_json: bool, data_dir: Path | None) -> None:
    from tenantq.core.redis import get_redis
    from tenantq.tenants.accounts.service import get_tenant_by_ref, reactivate_tenant, suspend_tenant

    with _cli_session(data_dir, as_json) as session:
        t = get_tenant_by_ref(session, tenant)
        (suspend_tenant if suspend else reactivate_tenant)(session, t, get_redis())
        payload = _tenant_payload(t)
    _emit(as_json, payload, _tenant_text(payload))


@tenant_app.command("suspend")
def tenant_suspend(
    tenant: Annotated[str, typer.Argument(help="Tenant id or name.")],
    as_json: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Suspend TENANT: submissions answer 403, queued jobs stay queued (paused) until reactivation.
    Needs the platform's Redis (TENANTQ_REDIS_URL, or the embedded one while `tenantq up` runs)."""
    _set_status(tenant, True, as_json, data_dir)


@tenant_app.command("reactivate")
def tenant_reactivate(
    tenant: Annotated[str, typer.Argument(help="Tenant id or name.")],
    as_json: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Reactivate TENANT: submissions are accepted and its queued jobs run again (unless the operator
    paused its queue separately)."""
    _set_status(tenant, False, as_json, data_dir)


def _plan_payload(p) -> dict:
    from tenantq.tenants.accounts.schemas import PlanOut

    return PlanOut.model_validate(p).model_dump(mode="json")


@plan_app.command("list")
def plan_list(as_json: JsonOut = False, data_dir: DataDir = None) -> None:
    """List plans and their limits."""
    from tenantq.core.db import unscoped_session
    from tenantq.tenants.accounts.service import list_plans

    settings = _settings(data_dir)
    _ensure_db(settings)
    with unscoped_session() as session:
        rows = [_plan_payload(p) for p in list_plans(session)]
    if as_json:
        typer.echo(json.dumps({"items": rows}))
    else:
        for r in rows:
            typer.echo(
                f"{r['name']}  submit {r['submit_rate']:g}/s burst {r['submit_burst']}  exec {r['exec_rate']:g}/s"
                f"  concurrency {r['concurrency']}  max_queued {r['max_queued']}  weight {r['weight']}"
                f"  priority {r['priority_min']}-{r['priority_max']}  base fee {r['base_fee']} {r['currency']}"
            )


@plan_app.command("update")
def plan_update(
    plan: Annotated[str, typer.Argument(help="Plan name.")],
    set_: Annotated[
        list[str],
        typer.Option(
            "--set",
            help="FIELD=VALUE to change (repeatable), e.g. --set submit_rate=20 --set base_fee=19.00.",
        ),
    ],
    as_json: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Change a plan's limits or prices; every tenant on it is affected from its next request."""
    from pydantic import ValidationError

    from tenantq.core.db import unscoped_session
    from tenantq.core.errors import InvalidInput
    from tenantq.tenants.accounts.schemas import PlanUpdate
    from tenantq.tenants.accounts.service import get_plan, update_plan

    settings = _settings(data_dir)
    try:
        _ensure_db(settings)
        changes = _parse_assignments(set_)
        try:
            data = PlanUpdate.model_validate(changes)
        except ValidationError as exc:
            raise InvalidInput(
                "Invalid plan change.",
                details=[{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()],
            ) from None
        with unscoped_session() as session:
            row = update_plan(session, get_plan(session, plan), data)
            payload = _plan_payload(row)
    except Exception as exc:  # noqa: BLE001
        _fail(as_json, exc)
    _emit(as_json, payload, json.dumps(payload, indent=2))


@key_app.command("list")
def key_list(
    tenant: Annotated[str, typer.Argument(help="Tenant id or name.")],
    as_json: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """List TENANT's API keys (ids, names, scopes, timestamps; never the secrets)."""
    from tenantq.tenants.access.repository import ApiKeyRepository
    from tenantq.tenants.access.schemas import KeyOut
    from tenantq.tenants.accounts.service import get_tenant_by_ref

    with _cli_session(data_dir, as_json) as session:
        t = get_tenant_by_ref(session, tenant)
        rows = [
            KeyOut.model_validate(k).model_dump(mode="json") for k in ApiKeyRepository(session, t.id).list()
        ]
    if as_json:
        typer.echo(json.dumps({"items": rows}))
    else:
        for r in rows:
            state = (
                "revoked"
                if r["revoked_at"]
                else (f"expires {r['expires_at']}" if r["expires_at"] else "active")
            )
            typer.echo(
                f"{r['id']}  {r['name'] or '-'}  {','.join(r['scopes'])}  {state}"
                f"  last used {r['last_used_at'] or 'never'}"
            )


@key_app.command("revoke")
def key_revoke(
    key_id: Annotated[str, typer.Argument(help="Key id (the part after tq_live_/tq_test_).")],
    as_json: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Revoke an API key now: every API process rejects it from its next request."""
    from tenantq.core.errors import NotFound
    from tenantq.tenants.access.models import ApiKey
    from tenantq.tenants.access.service import revoke_key

    with _cli_session(data_dir, as_json) as session:
        key = session.get(ApiKey, key_id)
        if key is None:
            raise NotFound(f"No API key with id {key_id!r}.")
        revoke_key(session, key)
        payload = {"id": key.id, "tenant_id": key.tenant_id, "revoked_at": key.revoked_at.isoformat()}
    _emit(as_json, payload, f"revoked {payload['id']} at {payload['revoked_at']}")


@key_app.command("create")
def key_create(
    tenant: Annotated[str, typer.Argument(help="Tenant id or name.")],
    scopes: Annotated[str | None, typer.Option(help="Comma-separated scopes (default: all).")] = None,
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    as_json: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Create an API key for TENANT and print it once (only its hash is stored)."""
    from tenantq.tenants.access.service import create_api_key
    from tenantq.tenants.accounts.service import get_tenant_by_ref

    with _cli_session(data_dir, as_json) as session:
        t = get_tenant_by_ref(session, tenant)
        scope_list = [s.strip() for s in scopes.split(",") if s.strip()] if scopes else None
        row, full = create_api_key(session, tenant=t, scopes=scope_list, name=name)
        payload = {"id": row.id, "key": full, "tenant_id": t.id, "scopes": row.scopes}
    _emit(as_json, payload, f"{payload['key']}\n(key id {payload['id']}; shown once, store it now)")


@billing_app.command("close")
def billing_close(
    period: Annotated[
        str | None,
        typer.Option(
            help="Calendar month (UTC) to close, YYYY-MM. Default: every month whose grace window has passed."
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Close PERIOD even inside its grace window (it must have ended).")
    ] = False,
    as_json: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Close a billing period: one invoice per tenant. Closing a closed period changes nothing."""
    from tenantq.billing.invoicing.pricing import format_amount
    from tenantq.billing.invoicing.service import close_due_periods, close_period
    from tenantq.core.db import unscoped_session

    settings = _settings(data_dir)
    try:
        _ensure_db(settings)
        if period is None:
            closed = close_due_periods()
            payload = {"closed": closed}
            text = "closed " + ", ".join(closed) if closed else "no period is due"
        else:
            with unscoped_session() as session:
                result = close_period(session, period, force=force, closed_by="cli")
                invoices = [
                    {
                        "id": i.id,
                        "tenant_id": i.tenant_id,
                        "currency": i.currency,
                        "total": format_amount(i.total, i.currency),
                        "status": i.status,
                    }
                    for i in result.invoices
                ]
                payload = {"period": result.period.period, "created": result.created, "invoices": invoices}
            verb = "closed" if result.created else "already closed"
            text = f"{period}: {verb}, {len(invoices)} invoice(s)" + "".join(
                f"\n  {i['tenant_id']}  {i['total']} {i['currency']}  {i['status']}" for i in invoices
            )
    except Exception as exc:  # noqa: BLE001
        _fail(as_json, exc)
    _emit(as_json, payload, text)


@billing_app.command("stripe-sync")
def billing_stripe_sync(
    period: Annotated[str, typer.Option(help="Closed calendar month whose invoices to push, YYYY-MM.")],
    as_json: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Push a closed period's invoices to Stripe (customer, items, invoice); a re-run creates nothing twice."""
    from tenantq.billing.invoicing.stripe_sync import sync_period

    with _cli_session(data_dir, as_json) as session:
        results = [r.as_dict() for r in sync_period(session, period)]
    payload = {"period": period, "invoices": results}
    text = "\n".join(
        f"{r['invoice_id']}  {r['stripe_invoice_id'] or '-'}  "
        f"{r['skipped'] or ('created' if r['invoice_created'] else 'linked')}"
        for r in results
    )
    _emit(as_json, payload, text or f"{period}: no invoices")


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
    from tenantq.billing.usage.buffer import main as flush_main

    written = flush_main(once=once)
    if once:
        typer.echo(f"{written} usage events written")


@billing_app.command("report")
def billing_report(
    period: Annotated[str, typer.Option("--period", help="Calendar month, UTC: YYYY-MM.")],
    tenant: Annotated[
        str | None,
        typer.Option("--tenant", help="Tenant id or name (default: every tenant, with revenue per plan)."),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="json or csv.")] = "json",
    group_by: Annotated[str, typer.Option("--group-by", help="With --tenant: rows by task or day.")] = "task",
    data_dir: DataDir = None,
) -> None:
    """Print a usage report for PERIOD: one tenant's usage by task type or day, or all tenants."""
    from tenantq.billing.invoicing import reports
    from tenantq.core.db import unscoped_session
    from tenantq.core.errors import InvalidInput
    from tenantq.tenants.accounts.service import get_tenant_by_ref

    settings = _settings(data_dir)
    try:
        if fmt not in ("json", "csv"):
            raise InvalidInput("--format must be json or csv.", details={"format": fmt})
        _ensure_db(settings)
        with unscoped_session() as session:
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
