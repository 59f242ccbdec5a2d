"""``tenantq billing``: flush usage, reports, close periods into invoices, sync to Stripe."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from tenantq.cli.common import (
    DataDir,
    JsonOut,
    cli_session,
    emit,
    ensure_db,
    fail,
    load_settings,
    setup_logging,
)

app = typer.Typer(
    help="Usage and billing: flush usage, reports, close periods into invoices, sync to Stripe.",
    no_args_is_help=True,
)


@app.command("close")
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
    """Close a billing period: one invoice per tenant. Earlier months still open are closed first
    (oldest first); closing a closed period changes nothing."""
    from tenantq.billing.invoicing.pricing import format_amount
    from tenantq.billing.invoicing.service import close_due_periods, close_period
    from tenantq.core.db import unscoped_session

    settings = load_settings(data_dir)
    try:
        ensure_db(settings)
        payload: dict[str, Any]
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
                payload = {
                    "period": result.period.period,
                    "created": result.created,
                    "also_closed": result.also_closed,
                    "invoices": invoices,
                }
            verb = "closed" if result.created else "already closed"
            first = f"closed {', '.join(result.also_closed)} first; " if result.also_closed else ""
            text = f"{period}: {first}{verb}, {len(invoices)} invoice(s)" + "".join(
                f"\n  {i['tenant_id']}  {i['total']} {i['currency']}  {i['status']}" for i in invoices
            )
    except Exception as exc:  # noqa: BLE001
        fail(as_json, exc)
    emit(as_json, payload, text)


@app.command("stripe-sync")
def billing_stripe_sync(
    period: Annotated[str, typer.Option(help="Closed calendar month whose invoices to push, YYYY-MM.")],
    as_json: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Push a closed period's invoices to Stripe (customer, items, invoice); a re-run creates nothing twice."""  # noqa: E501  (typer keeps the docstring's line breaks in --help)
    from tenantq.billing.invoicing.stripe_sync import sync_period

    with cli_session(data_dir, as_json) as session:
        results = [r.as_dict() for r in sync_period(session, period)]
    payload = {"period": period, "invoices": results}
    text = "\n".join(
        f"{r['invoice_id']}  {r['stripe_invoice_id'] or '-'}  "
        f"{r['skipped'] or ('created' if r['invoice_created'] else 'linked')}"
        for r in results
    )
    emit(as_json, payload, text or f"{period}: no invoices")


@app.command("flush")
def billing_flush(
    once: Annotated[bool, typer.Option("--once", help="Write what is buffered now, then exit.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Write buffered usage (Redis stream tq:usage) to SQL, close lost attempts, resync quotas.

    Runs until stopped; several flushers may run at once (writes are idempotent)."""
    from tenantq.cli.run import load_server_settings

    settings = load_server_settings(data_dir)
    setup_logging()
    from tenantq.billing.usage.buffer import main as flush_main

    try:
        ensure_db(settings)
        written = flush_main(once=once)
    except Exception as exc:  # noqa: BLE001
        fail(False, exc)
    if once:
        typer.echo(f"{written} usage events written")


@app.command("report")
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

    settings = load_settings(data_dir)
    try:
        if fmt not in ("json", "csv"):
            raise InvalidInput("--format must be json or csv.", details={"format": fmt})
        ensure_db(settings)
        with unscoped_session() as session:
            if tenant:
                report = reports.tenant_report(session, get_tenant_by_ref(session, tenant), period, group_by)
                text = reports.tenant_report_csv(report) if fmt == "csv" else json.dumps(report, indent=2)
            else:
                report = reports.operator_report(session, period)
                text = reports.operator_report_csv(report) if fmt == "csv" else json.dumps(report, indent=2)
    except Exception as exc:  # noqa: BLE001
        fail(fmt == "json", exc)
    typer.echo(text, nl=not text.endswith("\n"))


def _invoice_payload(invoice: Any) -> dict[str, Any]:
    from tenantq.billing.invoicing.pricing import format_amount

    return {
        "id": invoice.id,
        "tenant_id": invoice.tenant_id,
        "period": invoice.period,
        "revision": invoice.revision,
        "status": invoice.status,
        "currency": invoice.currency,
        "total": format_amount(invoice.total, invoice.currency),
        "stripe_invoice_id": invoice.stripe_invoice_id,
        "stripe_status": invoice.stripe_status,
    }


@app.command("void")
def billing_void(
    invoice: Annotated[str, typer.Argument(help="Invoice id.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded in the audit log).")],
    reissue: Annotated[
        bool,
        typer.Option(
            "--reissue", help="Issue the next revision, re-rated with the prices and plan in force now."
        ),
    ] = False,
    as_json: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Void an open invoice (and optionally reissue it); the void is pushed to Stripe when configured."""
    from tenantq.billing.invoicing import corrections, stripe_sync

    with cli_session(data_dir, as_json) as session:
        row = corrections.get_invoice(session, invoice)
        new = corrections.void_invoice(session, row, reason=reason, reissue=reissue, actor="cli")
        session.commit()
        stripe: dict[str, Any] = {"configured": stripe_sync.stripe_configured()}
        if stripe["configured"]:
            client = stripe_sync.stripe_client()
            stripe["status"] = stripe_sync.void_stripe_invoice(session, client, row)
            if new is not None:
                stripe["reissued_stripe_invoice_id"] = stripe_sync.sync_invoice(
                    session, client, new
                ).stripe_invoice_id
        payload = {
            "voided": _invoice_payload(row),
            "reissued": _invoice_payload(new) if new is not None else None,
            "stripe": stripe,
        }
    text = f"{row.id}: void"
    if new is not None:
        r = _invoice_payload(new)
        text += f"; reissued as {r['id']} (revision {r['revision']}) {r['total']} {r['currency']}"
    emit(as_json, payload, text)


@app.command("credit-note")
def billing_credit_note(
    invoice: Annotated[str, typer.Argument(help="Invoice id.")],
    amount: Annotated[str, typer.Option("--amount", help="Amount to credit, in the invoice's currency.")],
    reason: Annotated[
        str, typer.Option("--reason", help="Shown on the credit note; recorded in the audit log.")
    ],
    as_json: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """Credit part or all of an invoice; created in Stripe too when configured and the invoice was pushed."""
    from tenantq.billing.invoicing import corrections, stripe_sync
    from tenantq.billing.invoicing.pricing import format_amount

    with cli_session(data_dir, as_json) as session:
        row = corrections.get_invoice(session, invoice)
        note = corrections.issue_credit_note(session, row, amount=amount, reason=reason, actor="cli")
        session.commit()
        if stripe_sync.stripe_configured():
            stripe_sync.sync_credit_note(session, stripe_sync.stripe_client(), note)
        payload: dict[str, Any] = {
            "id": note.id,
            "invoice": _invoice_payload(row),
            "amount": format_amount(note.amount, note.currency),
            "currency": note.currency,
            "credited": format_amount(corrections.credited(session, row.id), row.currency),
            "stripe_credit_note_id": note.stripe_credit_note_id,
        }
    emit(
        as_json,
        payload,
        f"{payload['id']}: credited {payload['amount']} {payload['currency']} on {row.id} "
        f"(credited in all {payload['credited']}, invoice {payload['invoice']['status']})",
    )


@app.command("audit")
def billing_audit(
    entity_type: Annotated[
        str | None, typer.Option("--type", help="plan, price, tenant, invoice or billing_period.")
    ] = None,
    entity_id: Annotated[
        str | None, typer.Option("--id", help="Only this plan, price, tenant or invoice.")
    ] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only entries about this tenant id.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="Newest N entries.")] = 50,
    as_json: JsonOut = False,
    data_dir: DataDir = None,
) -> None:
    """The audit log, newest first: who changed which plan, price, tenant or invoice, before and after."""
    from tenantq.core import audit

    with cli_session(data_dir, as_json) as session:
        rows = [
            {
                "at": e.at.isoformat(),
                "actor": e.actor,
                "action": e.action,
                "entity_type": e.entity_type,
                "entity_id": e.entity_id,
                "tenant_id": e.tenant_id,
                "before": e.before,
                "after": e.after,
            }
            for e in audit.entries(
                session, entity_type=entity_type, entity_id=entity_id, tenant_id=tenant, limit=limit
            )
        ]
    emit(
        as_json,
        {"items": rows},
        "\n".join(
            f"{r['at']}  {r['actor']}  {r['action']}  {r['entity_id']}  "
            f"{json.dumps(r['before'])} -> {json.dumps(r['after'])}"
            for r in rows
        )
        or "no audit entries",
    )
