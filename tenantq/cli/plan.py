"""``tenantq plan``: list and change plans (limits and prices)."""

from __future__ import annotations

import json
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
    from tenantq.tenants.accounts.models import Plan

app = typer.Typer(help="List and change plans (limits and prices).", no_args_is_help=True)


def _plan_payload(p: Plan) -> dict[str, Any]:
    from tenantq.tenants.accounts.schemas import PlanOut

    return PlanOut.model_validate(p).model_dump(mode="json")


@app.command("list")
def plan_list(as_json: JsonOut = False, data_dir: DataDir = None) -> None:
    """List plans and their limits."""
    from decimal import Decimal

    from tenantq.billing.invoicing.pricing import format_amount
    from tenantq.tenants.accounts.service import list_plans

    with cli_session(data_dir, as_json) as session:
        rows = [_plan_payload(p) for p in list_plans(session)]
    note_if_empty(rows, "plans")
    if as_json:
        typer.echo(json.dumps({"items": rows}))
    else:
        for r in rows:
            typer.echo(
                f"{r['name']}  submit {r['submit_rate']:g}/s burst {r['submit_burst']}"
                f"  exec {r['exec_rate']:g}/s  concurrency {r['concurrency']}  max_queued {r['max_queued']}"
                f"  weight {r['weight']}  priority {r['priority_min']}-{r['priority_max']}"
                f"  base fee {format_amount(Decimal(r['base_fee']), r['currency'])} {r['currency']}"
            )


@app.command("update")
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

    from tenantq.core.errors import InvalidInput
    from tenantq.tenants.accounts.schemas import PlanUpdate
    from tenantq.tenants.accounts.service import get_plan, update_plan

    with cli_session(data_dir, as_json) as session:
        changes = parse_assignments(set_)
        try:
            data = PlanUpdate.model_validate(changes)
        except ValidationError as exc:
            raise InvalidInput(
                "Invalid plan change.",
                details=[{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()],
            ) from None
        row = update_plan(session, get_plan(session, plan), data, actor="cli")
        payload = _plan_payload(row)
    emit(as_json, payload, json.dumps(payload, indent=2))
