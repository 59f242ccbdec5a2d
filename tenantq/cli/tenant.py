"""``tenantq tenant``: create, inspect, change, suspend and reactivate tenants."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tenantq.cli.common import (
    DataDir,
    JsonOut,
    cli_session,
    emit,
    note_if_empty,
    parse_assignments,
)

if TYPE_CHECKING:
    from tenantq.tenants.accounts.models import Tenant

app = typer.Typer(help="Create, inspect, change, suspend and reactivate tenants.", no_args_is_help=True)


@app.command("create")
def tenant_create(
    name: Annotated[str, typer.Argument(help="Unique tenant name.")],
    plan: Annotated[str, typer.Option(help="Plan name (free, pro, enterprise or one you added).")] = "free",
    as_json: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Create a tenant and print its id."""
    from tenantq.tenants.accounts.service import create_tenant

    with cli_session(data_dir, as_json) as session:
        tenant = create_tenant(session, name=name, plan=plan)
        payload = {"id": tenant.id, "name": tenant.name, "plan": tenant.plan_name}
    emit(as_json, payload, f"{payload['id']}  {payload['name']}  (plan {payload['plan']})")


def _tenant_payload(t: Tenant) -> dict[str, Any]:
    return {
        "id": t.id,
        "name": t.name,
        "plan": t.plan_name,
        "status": t.status,
        "overrides": t.overrides or {},
        "billing_email": t.billing_email,
    }


def _tenant_text(p: dict[str, Any]) -> str:
    extra = f"  overrides {json.dumps(p['overrides'])}" if p["overrides"] else ""
    if p.get("billing_email"):
        extra += f"  billing email {p['billing_email']}"
    return f"{p['id']}  {p['name']}  {p['plan']}  {p['status']}{extra}"


@app.command("list")
def tenant_list(
    status: Annotated[
        str | None, typer.Option(help="Only tenants in this status (active, suspended).")
    ] = None,
    as_json: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """List tenants with plan, status and overrides."""
    from tenantq.tenants.accounts.service import list_tenants

    with cli_session(data_dir, as_json) as session:
        rows = [_tenant_payload(t) for t in list_tenants(session, status=status)]
    note_if_empty(rows, f"{status} tenants" if status else "tenants")
    if as_json:
        typer.echo(json.dumps({"items": rows}))
    else:
        for r in rows:
            typer.echo(_tenant_text(r))


@app.command("update")
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
    billing_email: Annotated[
        str | None,
        typer.Option(
            "--billing-email",
            help='Where invoices are emailed (copied to the Stripe customer at the next sync); "" clears it.',
        ),
    ] = None,
    as_json: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Change a tenant's plan, name, limit overrides (validated against the plan) or billing email.
    Plan, override and billing email changes are recorded in the audit log."""
    from tenantq.tenants.accounts.service import get_tenant_by_ref, update_tenant

    with cli_session(data_dir, as_json) as session:
        changes = parse_assignments(override)
        t = get_tenant_by_ref(session, tenant)
        overrides = {} if clear_overrides else dict(t.overrides or {})
        for field, value in changes.items():
            if value is None:
                overrides.pop(field, None)
            else:
                overrides[field] = value
        extra: dict[str, Any] = {} if billing_email is None else {"billing_email": billing_email}
        update_tenant(session, t, name=name, plan=plan, overrides=overrides, actor="cli", **extra)
        payload = _tenant_payload(t)
    emit(as_json, payload, _tenant_text(payload))


def _set_status(tenant: str, suspend: bool, as_json: bool, data_dir: Path | None) -> None:
    from tenantq.core.redis import get_redis
    from tenantq.tenants.accounts.service import get_tenant_by_ref
    from tenantq.tenants.accounts.suspension import reactivate_tenant, suspend_tenant

    with cli_session(data_dir, as_json) as session:
        t = get_tenant_by_ref(session, tenant)
        (suspend_tenant if suspend else reactivate_tenant)(session, t, get_redis())
        payload = _tenant_payload(t)
    emit(as_json, payload, _tenant_text(payload))


@app.command("suspend")
def tenant_suspend(
    tenant: Annotated[str, typer.Argument(help="Tenant id or name.")],
    as_json: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Suspend TENANT: submissions answer 403, queued jobs stay queued (paused) until reactivation.
    Needs the platform's Redis (TENANTQ_REDIS_URL, or the embedded one while `tenantq up` runs)."""
    _set_status(tenant, True, as_json, data_dir)


@app.command("reactivate")
def tenant_reactivate(
    tenant: Annotated[str, typer.Argument(help="Tenant id or name.")],
    as_json: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Reactivate TENANT: submissions are accepted and its queued jobs run again (unless the operator
    paused its queue separately)."""
    _set_status(tenant, False, as_json, data_dir)
